"""The embedded feature engine (Polars, lazy): per-contact features as of a moment, from the
declarative spec, using only events strictly before that moment.

A large Parquet input is done in parts, each a range of contact ids. In each part, a streaming
group-by reduces the events to one row per contact, event type and channel (an "atom"); the
atoms of the eligible contacts, sorted by contact, become one group per contact, and every
count, sum and recency of the spec is a filtered aggregation over a contact's few atoms (the
counts of up to three windows of one filter packed into one sum). Active
days and sessions take their own passes over the events. Derived features are arithmetic on the
result; contact attributes and the rules stage are joined last. The online path
(``features.online``) computes the same spec for one contact in plain Python; tests hold the
two equal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import glob
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeAlias

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from features.consent import TEXT_TYPES, check_contact_ids, refuse_unusable_ids
from features.errors import NOT_FINITE_VALUE, InputError
from features.schema import (
    INT96_CAST,
    as_utc,
    cast_unreadable_zones_to_utc,
    int96_columns,
    parquet_schema,
    polars_schema_reading_int96,
    utc_for_unreadable_zones,
)
from features.settings import RulesSettings, load_rules_settings
from features.spec import MICROS_PER_DAY, Aggregate, FeatureSpec, SpecError, compile_expression
from features.stages import BASE_RANK, stage_from_signal_columns
from features.vocabulary import (
    ADVOCACY_EVENTS,
    CHANNELS,
    EVENT_TYPES,
    PURCHASE_EVENTS,
    STAGES,
    unknown_vocabulary_message,
)

EventsInput: TypeAlias = pa.Table | pl.DataFrame | pl.LazyFrame | Path | str
# events per part of a Parquet input. Each part decodes the columns it needs in full (unless the
# file is grouped by contact, when Parquet statistics let it skip row groups) and keeps only its
# contacts' rows, yet parts cost no measurable time, as decoding is cheap next to grouping: on
# the simulator's data, 10 M events took 5.1-5.3 s in one part or two, with a peak of 2.0-2.2
# GiB in one and 1.7 GiB in two; 30 M events 16.8 s and 4.2 GiB in parts of 15 M, 16.4 s and
# 3.5 GiB in parts of 5 M (profiling script, 2026-12-03)
PARTITION_ROWS = 5_000_000
STAGE_TYPE = pl.Enum(STAGES)


@contextlib.contextmanager
def unreadable_parquet_named() -> Iterator[None]:
    """A Parquet file damaged past its footer (which ``events_path`` has read) fails only as
    its pages are read: that failure becomes an ``InputError`` saying so. A decorator of the
    builders, too."""
    try:
        yield
    except pl.exceptions.ComputeError as error:
        if not str(error).startswith("parquet:"):
            raise
        raise InputError(damaged_parquet_message(str(error))) from None


def damaged_parquet_message(reason: str) -> str:
    """The refusal of events Parquet whose pages do not read, for every engine (``reason``:
    the reader's own words)."""
    shown = " ".join(reason.split())[:200]
    return (
        f"the events Parquet is damaged ({shown}); write the events again, e.g. with "
        "`funnelcast ingest`"
    )


@unreadable_parquet_named()
def events_time_span(events: EventsInput) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The first and the last event's timestamp, in UTC (None and None: no events), from one
    read of the timestamps; damaged pages are an ``InputError``, as in the builders."""
    timestamp = pl.col("timestamp")
    span = scan_events(events).select(timestamp.min().alias("first"), timestamp.max().alias("last"))
    first, last = span.collect().row(0)
    return first, last


# --- who was known as of a date ------------------------------------------------------------------
# A contact is known from its first event on. Before it, the contacts table may list it (a CRM
# export lists today's contacts), but as of then nobody knew it: the funnel report does not
# count it, training makes it no row, and score and features write no row for it. One
# definition for all of them, here. A contact listed without any event is another case: it is
# known by its listing alone, dormant, at every date.


def first_event_times(events: EventsInput) -> pl.DataFrame:
    """Each contact's first event in the whole log (``contact_id`` as text, ``first_event``),
    events at or after any snapshot included: they say who was not known yet then."""
    return _collect(
        scan_events(events)
        .group_by(pl.col("contact_id").cast(pl.String))
        .agg(pl.col("timestamp").min().alias("first_event"))
    )


def unsubscribed_before(events: EventsInput, *, as_of: dt.datetime) -> pl.Series:
    """The contacts (``contact_id`` as text) with an ``unsubscribe`` event before ``as_of``."""
    return _collect(
        scan_events(events)
        .filter((pl.col("event_type") == "unsubscribe") & (pl.col("timestamp") < as_of))
        .select(pl.col("contact_id").cast(pl.String))
        .unique()
    ).get_column("contact_id")


def contacts_not_yet_active(first_events: pl.DataFrame, *, as_of: dt.datetime) -> pl.DataFrame:
    """The contacts (``contact_id``) of ``first_events`` (``first_event_times``) whose first
    event comes at or after ``as_of``: unknown as of then."""
    return first_events.filter(pl.col("first_event") >= as_of).select("contact_id")


def leave_out_not_yet_active(
    rows: pl.DataFrame, first_events: pl.DataFrame, *, as_of: dt.datetime
) -> pl.DataFrame:
    """``rows`` (as of ``as_of``; any number per contact) without those of contacts whose first
    event comes at or after ``as_of``, in their order. A contact without any event stays."""
    later = contacts_not_yet_active(first_events, as_of=as_of)["contact_id"]
    if later.is_empty():  # as of the data's end, nobody: no copy of a wide table
        return rows
    return rows.filter(~pl.col("contact_id").cast(pl.String).is_in(later.implode()))


@unreadable_parquet_named()
def build_contact_features(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None = None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    rules: RulesSettings | None = None,
    partition_rows: int = PARTITION_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """One row per eligible contact: any event in the longest window before ``as_of``, or
    listed in ``contacts``. Columns: contact_id, as_of, the spec's features, the attributes,
    and rules_stage. Events at or after ``as_of`` are never read. Every contact is built,
    whatever its consent: ``features.consent.restrict_to_consented`` keeps the rows to score
    or export, as the commands do.

    A Parquet input of more than ``partition_rows`` events is done in parts, each a range of
    contact ids, so memory is bounded by a part, not the input; the parts' rows come out in
    contact order, so their concatenation needs no sort. ``progress(done, parts)`` is called
    once the parts are known and after each part."""
    as_of = as_utc(as_of, "as_of")
    rules = rules or load_rules_settings()
    if contacts is not None:
        check_contact_ids(contacts)  # once, here: the steps below read the table several times
        check_listed_attributes(column_names(contacts), spec)  # before the build, not after
    scanned = scan_events(events)  # the files' footers are read and checked once
    past = scanned.filter(pl.col("timestamp") < as_of)
    aggregates = with_internal_aggregates(spec, rules)
    bounds = _part_bounds(events, scanned, partition_rows)
    listed = _listed_ids(contacts)
    # eligible: any event in the longest window, or listed in the contacts table; each part
    # keeps only its eligible rows, so the parts never sit in memory whole
    parts = len(bounds) + 1
    done: list[pl.DataFrame] = []
    for part in range(parts):
        if progress is not None:
            progress(part, parts)
        done.append(
            _aggregate_part(
                _part(past, part, bounds), aggregates, as_of=as_of, spec=spec, listed=listed
            )
        )
    if progress is not None:
        progress(parts, parts)
    frame = pl.concat(done, rechunk=False)
    del done
    if listed is not None:  # listed contacts without any event before as_of: a row of nulls
        frame = _with_absent(frame, listed)
    # picking columns by name never copies them; an eager select would make every column of
    # the parts' many-chunked wide table one chunk (a copy of it)
    frame = frame[["contact_id", *(a.name for a in aggregates)]]
    return finish_features(frame, aggregates, contacts, as_of=as_of, spec=spec, rules=rules)


def _with_absent(frame: pl.DataFrame, listed: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``frame`` (in contact order, as the parts are built) and a row of nulls for
    each listed contact it lacks, merged in order rather than appended and the whole wide table
    sorted again (8.3-9.7 -> 7.1-7.5 s at 10 M events with 100 k absent contacts)."""
    absent = listed.join(frame.select("contact_id"), on="contact_id", how="anti")
    if absent.is_empty():
        return frame
    nulls = absent.sort("contact_id").select(
        pl.col("contact_id").cast(frame.schema["contact_id"]),
        *(
            pl.lit(None, dtype).alias(name)
            for name, dtype in frame.schema.items()
            if name != "contact_id"
        ),
    )
    return frame.merge_sorted(nulls, key="contact_id")


def finish_features(
    frame: pl.DataFrame,
    aggregates: list[Aggregate],
    contacts: pa.Table | pl.DataFrame | None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    rules: RulesSettings,
) -> pl.DataFrame:
    """From one row per eligible contact with every aggregate (internal ones included) to the
    feature table, sorted by contact: absent counts as 0, derived features, as_of, the rules
    stage, attributes. One lazy query, so the steps do not each hold a copy of the table."""
    query = frame.lazy().with_columns(_absent_as_zero(aggregates))
    for batch in _derived_batches(spec, set(frame.columns)):
        query = query.with_columns(batch)
    query = query.with_columns(as_of=pl.lit(as_of, pl.Datetime("us", "UTC")))
    if spec.rules_stage:
        query = with_rules_stage(query, rules)
    query = query.select(pl.exclude(f"^{INTERNAL_PREFIX}.*$"))
    query = join_attributes(query, contacts, as_of=as_of, spec=spec)
    names = query.collect_schema().names()
    # the spec's order (derived features that use others are computed later), then the rules
    # stage and the attributes
    ordered = [n for n in spec.names if n in names]
    placed = {"contact_id", "as_of", *ordered}
    rest = [c for c in names if c not in placed]
    query = query.select("contact_id", "as_of", *ordered, *rest)
    if not frame.get_column("contact_id").is_sorted():  # training snapshots come sorted
        query = query.sort("contact_id")
    return query.collect()


# kinds computed in the main pass; distinct days and sessions need their own (streaming) shape
_ONE_PASS_KINDS = ("count", "sum", "days_since_last", "days_since_first")


def _aggregate_part(
    past: pl.LazyFrame,
    aggregates: list[Aggregate],
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    listed: pl.DataFrame | None,
) -> pl.DataFrame:
    """Every aggregate, for the eligible contacts in ``past`` (any event in the longest window,
    or listed): one row per contact, in contact order."""
    one_pass = [a for a in aggregates if a.kind in _ONE_PASS_KINDS]
    queries = [_atoms(past, one_pass, as_of)]
    days = [a for a in aggregates if a.kind == "distinct_days"]
    if days:
        queries.append(_distinct_days(past, days, as_of=as_of))
    # the independent passes over the events run together, sharing the cores
    atoms, *others = pl.collect_all(queries, engine="streaming")
    # an event type or channel outside the contract has no code: refuse it, as every builder
    # does, rather than count the event in some features and not in others (a look at the
    # atoms, not the events)
    if atoms.select(pl.col("_type").is_null().any() | pl.col("_channel").is_null().any()).item():
        raise_unknown_vocabulary(past)
    # a NaN or infinite money value makes its atom's sums NaN or infinite in every window
    # (0 x NaN is NaN): refused, as Spark refuses it, rather than leaked into other windows.
    # Finite values whose sum is beyond the largest double (two of 1e308) are no such value:
    # their sum is infinite, as in every other builder
    sums = [name for name in atoms.columns if name.startswith("_v")]
    if (
        sums
        and atoms.select(pl.any_horizontal(~pl.col(sums).is_finite()).any()).item()
        and _collect(past.select((~pl.col("value").is_finite()).any())).item()
    ):
        raise InputError(NOT_FINITE_VALUE)
    # an id with whitespace around it would split its contact, in all-history features too,
    # and one holding a control character would be read back from a CSV as another's: every
    # contact's atoms are looked at, before the ineligible ones are left out
    refuse_unusable_ids(atoms.get_column("contact_id"), "the events", rows=False)
    atoms = _eligible_runs(atoms, one_pass, listed)  # the unsorted atoms are freed here
    aggregated = _per_contact(atoms, one_pass, as_of)
    del atoms
    sessions = [a for a in aggregates if a.kind == "sessions"]
    if sessions:
        others.append(_sessions(past, sessions, as_of=as_of, spec=spec))
    # the other passes' columns in the aggregated rows' order, found by a join on the contact
    # ids alone and then placed beside the wide table, which is never copied
    contacts = aggregated.select("contact_id")
    for other in others:
        aligned = contacts.join(other, on="contact_id", how="left", maintain_order="left")
        aggregated = aggregated.hstack(aligned.drop("contact_id").get_columns())
    return aggregated


# sampled contact ids per part when choosing the parts' bounds: the parts' sizes in events are
# then within a few percent of each other
_SAMPLES_PER_PART = 10_000


def _part_bounds(events: EventsInput, scan: pl.LazyFrame, partition_rows: int) -> pl.Series:
    """The contact ids that split a Parquet input into parts of about ``partition_rows``
    events (none: one part; frames in memory are done whole). Part i holds the contacts from
    bound i-1 (inclusive) to bound i (exclusive), so a contact's events all land in one part
    and the parts, each in contact order, concatenate in contact order. The bounds are
    quantiles of the contact ids of evenly spaced events, so each part gets a like share of
    the events whatever the ids look like; reading the one column costs about 0.3 s at 30 M
    events. They are in Polars' order of the ids, the order the parts' filters compare in (an
    Enum's is its categories', not the text's). ``scan``: the events as ``scan_events`` read
    them."""
    if partition_rows < 1:
        raise ValueError("partition_rows must be positive")
    whole = pl.Series("contact_id", [], pl.String)  # no bounds: one part
    if not isinstance(events, Path | str):
        return whole
    rows = scan.select(pl.len()).collect().item()  # from Parquet metadata
    parts = -(-rows // partition_rows)
    if parts <= 1:
        return whole
    step = max(1, rows // (parts * _SAMPLES_PER_PART))
    sample = _collect(scan.select("contact_id").gather_every(step).drop_nulls())["contact_id"]
    if sample.dtype.is_float():  # NaN sorts last; as a bound it would only confuse
        sample = sample.filter(sample.is_not_nan())
    if sample.is_empty():
        return whole
    sample = sample.sort()
    # equal bounds would make empty parts; dropping them leaves fewer, still exact, parts
    quantiles = [len(sample) * part // parts for part in range(1, parts)]
    return sample.gather(quantiles).unique(maintain_order=True)


def _part(past: pl.LazyFrame, part: int, bounds: pl.Series) -> pl.LazyFrame:
    if bounds.is_empty():
        return past
    contact = pl.col("contact_id")

    def bound(index: int) -> pl.Expr:
        return pl.lit(bounds[index], dtype=bounds.dtype)

    if part == 0:  # missing ids sort first, so they belong to the first part
        return past.filter(contact.is_null() | (contact < bound(0)))
    if part == len(bounds):
        return past.filter(contact >= bound(-1))
    return past.filter((contact >= bound(part - 1)) & (contact < bound(part)))


def raise_unknown_vocabulary(events: pl.LazyFrame) -> NoReturn:
    """Name the event types or channels of ``events`` outside the contract (null among them)."""
    for column, vocabulary in (("event_type", EVENT_TYPES), ("channel", CHANNELS)):
        values = pl.col(column).cast(pl.String)
        unknown = (
            events.select(values.filter(~values.is_in(vocabulary) | values.is_null()).unique())
            .collect(engine="streaming")
            .get_column(column)
            .sort(nulls_last=True)
            .to_list()
        )
        if unknown:
            raise InputError(unknown_vocabulary_message(column, unknown))
    raise AssertionError("no event type or channel outside the contract was found")


def _collect(query: pl.LazyFrame) -> pl.DataFrame:
    """Run a query on Polars' streaming engine: the events are read in batches, never whole,
    so a Parquet input larger than memory works; only per-contact results are held."""
    return query.collect(engine="streaming")


# --- internal aggregates: eligibility and the rules stage's signals -----------------------------

INTERNAL_PREFIX = "__"
ANY_EVENT = f"{INTERNAL_PREFIX}any_event"


def _internal(
    name: str, kind: str, window: int | None, event_types: Iterable[str] | None = None
) -> Aggregate:
    return Aggregate(
        name=f"{INTERNAL_PREFIX}{name}",
        kind=kind,  # type: ignore[arg-type]
        event_types=None if event_types is None else frozenset(event_types),
        channels=None,
        exclude_event_types=frozenset(),
        exclude_channels=frozenset(),
        window_days=window,
    )


def with_internal_aggregates(spec: FeatureSpec, rules: RulesSettings) -> list[Aggregate]:
    """The spec's aggregates plus the signals eligibility and the rules stage need, computed in
    the same pass (their names start with ``__`` and never reach the output)."""
    internal = [_internal("any_event", "count", spec.longest_window_days)]
    if spec.rules_stage:
        lookback = rules.lookback_days
        for rank in sorted(set(BASE_RANK.values())):
            types = [e for e, r in BASE_RANK.items() if r == rank]
            internal.append(_internal(f"rank_{rank}", "count", lookback, types))
        internal += [
            _internal("visit_days", "distinct_days", lookback, ["page_view"]),
            _internal("purchases_ever", "count", None, PURCHASE_EVENTS),
            _internal("purchases_in_window", "count", lookback, PURCHASE_EVENTS),
            _internal("advocacy", "count", lookback, ADVOCACY_EVENTS),
        ]
    return [*spec.aggregates, *internal]


def with_rules_stage(query: pl.LazyFrame, rules: RulesSettings) -> pl.LazyFrame:
    """The rules stage from the internal signal columns, by the rules of ``features.stages``."""
    ranks = sorted(set(BASE_RANK.values()))
    signals = query.with_columns(
        pl.max_horizontal(
            [pl.when(pl.col(f"{INTERNAL_PREFIX}rank_{r}") > 0).then(r).otherwise(-1) for r in ranks]
        ).alias(f"{INTERNAL_PREFIX}base_rank"),
        (pl.col(f"{INTERNAL_PREFIX}advocacy") > 0).alias(f"{INTERNAL_PREFIX}advocacy_in_window"),
    )
    # the internal aggregates visit_days, purchases_ever and purchases_in_window are named
    # as the rules read them
    stage = stage_from_signal_columns(rules, prefix=INTERNAL_PREFIX)
    return signals.with_columns(rules_stage=stage.cast(STAGE_TYPE))


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The feature columns of a feature frame (everything but the keys)."""
    return [c for c in frame.columns if c not in ("contact_id", "as_of")]


def scan_events(events: EventsInput) -> pl.LazyFrame:
    """Events as a lazy frame; a Parquet path (file, folder or glob) is scanned, not loaded, so
    larger-than-memory inputs stream."""
    if isinstance(events, pa.Table):
        table = pl.from_arrow(cast_unreadable_zones_to_utc(events))
        assert isinstance(table, pl.DataFrame)
        events = table
    if isinstance(events, pl.DataFrame | pl.LazyFrame):
        checked = in_utc(events.lazy())  # the columns first: then their values
        present = [n for n in _REQUIRED_VALUES if n in events.collect_schema()]
        counts = events.lazy().select(pl.col(present).null_count()).collect()
        _refuse_missing(counts.row(0, named=True))
        return checked
    return in_utc(_scan_parquet(*_events_files(events)))


def _scan_parquet(files: list[Path], schemas: list[pa.Schema]) -> pl.LazyFrame:
    """Parquet files (``schemas``: their Arrow schemas, from ``parquet_schema``) as one lazy
    frame: Polars' own scan, unless a file holds a timestamp in a zone Polars cannot read
    (``polars_reads_zone``; its reader panics on the file's schema), when Arrow reads the files
    instead, in batches. Timestamps stored as INT96 (Spark's) are read as the UTC instants they
    are, as Spark reads them."""
    if any(utc_for_unreadable_zones(schema) is not None for schema in schemas):
        return _scan_with_utc(files, utc_for_unreadable_zones(schemas[0]) or schemas[0])
    # columns beyond the contract may differ between files: they are not read
    if not any("timestamp" in int96_columns(schema) for schema in schemas):
        # the files are found already (a glob expanded): a name's [ or * is no glob here
        return pl.scan_parquet(_path_of(files), extra_columns="ignore", glob=False)
    # Polars would read INT96 as naive times, which every builder refuses: told the files'
    # schema (the first file's, its timestamp in UTC), it reads them as instants
    return pl.scan_parquet(
        _path_of(files),
        schema=polars_schema_reading_int96(str(files[0]), ["timestamp"]),
        cast_options=INT96_CAST,
        extra_columns="ignore",
        glob=False,
    )


# rows per batch when Arrow reads the events for Polars (Polars' own hint when it gives one),
# and the batches read ahead, of one file at a time: Arrow's default of four files ahead, 16
# batches each, peaked at 1.1 GB where Polars' own reader took 0.7 GB (a group-by of 37 M
# events in six files, 2026-12-06); this 0.8-0.9 GB, as fast
_BATCH_ROWS = 100_000
_BATCHES_AHEAD = 4


def _scan_with_utc(files: list[Path], schema: pa.Schema) -> pl.LazyFrame:
    """The files as a lazy frame of ``schema`` (the first file's, its timestamps in UTC):
    Arrow reads them batch by batch, casting each timestamp to UTC (the same instants: an
    Arrow timestamp holds UTC instants, its zone only labels them), and Polars' streaming
    engine takes the batches as they come, so the events are never held whole. Slower than
    Polars' own reader, so taken only for such files. Columns of ``schema`` a file lacks are
    missing values; a file's columns beyond it are not read."""
    # INT96 (Spark's times) in microseconds, as ``schema`` has them: in nanoseconds they wrap
    # outside the years 1677-2262
    parquet = ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us")
    )
    dataset = ds.dataset([str(file) for file in files], schema=schema, format=parquet)

    def batches(
        columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, size: int | None
    ) -> Iterator[pl.DataFrame]:
        left = n_rows
        for batch in dataset.to_batches(
            columns=columns,
            batch_size=size or _BATCH_ROWS,
            batch_readahead=_BATCHES_AHEAD,
            fragment_readahead=1,
        ):
            frame = pl.DataFrame(pl.from_arrow(batch))
            if predicate is not None:
                frame = frame.filter(predicate)
            if left is not None:  # Polars leaves a head() to the source
                frame = frame.head(left)
                left -= frame.height
            yield frame
            if left == 0:
                return

    return register_io_source(
        batches, schema=pl.DataFrame(pl.from_arrow(schema.empty_table())).schema
    )


# the other tables ingest and simulate write beside the events: never read as events
SIBLING_TABLES = frozenset(
    {"contacts.parquet", "stage_history.parquet", "rejects.parquet", "labels.parquet"}
)


def events_path(events: Path | str) -> str | list[str]:
    """The Parquet an events path means, for every engine: a file, a folder's events.parquet
    (else its other Parquet files, the contacts and the other tables written beside the events
    left out), or a glob. Checked before anything is read: every file readable, all agreeing
    on the contract's columns, no contact_id or timestamp missing."""
    return _path_of(_events_files(events)[0])


def is_glob(path: Path | str) -> bool:
    """Whether an events path is a glob (``*``, ``?`` or ``[...]`` anywhere in it, ``**``
    for any depth), read as the files it matches; a path that exists as written (a folder
    named ``exports [2026]``) is that path."""
    return glob.has_magic(str(path)) and not Path(path).exists()


def glob_base(path: Path | str) -> tuple[Path, str]:
    """A glob as the folder it starts from (the longest leading part that is a folder as
    written, whatever characters its name holds: ``exports [2024]/*.parquet``) and the pattern
    under it."""
    parts = Path(path).parts
    for cut in range(len(parts) - 1, 0, -1):
        if Path(*parts[:cut]).is_dir():
            return Path(*parts[:cut]), str(Path(*parts[cut:]))
    return Path("."), str(path)


def matches_glob(path: Path | str, pattern: Path | str) -> bool:
    """Whether ``path`` (existing or not) is one a glob reads as ``_events_files`` expands
    it: ``*`` within one name, ``**`` for any number of folders."""
    base, rest = glob_base(pattern)
    try:
        under = Path(os.path.abspath(path)).relative_to(os.path.abspath(base))
    except ValueError:
        return False

    def match(names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
        if not patterns:
            return not names
        if patterns[0] == "**":
            return any(match(names[i:], patterns[1:]) for i in range(len(names) + 1))
        return (
            bool(names)
            and fnmatch.fnmatchcase(names[0], patterns[0])
            and match(names[1:], patterns[1:])
        )

    return match(under.parts, Path(rest).parts)


def _path_of(files: list[Path]) -> str | list[str]:
    return str(files[0]) if len(files) == 1 else [str(f) for f in files]


def _events_files(events: Path | str) -> tuple[list[Path], list[pa.Schema]]:
    """The files of ``events_path``, checked, with their Arrow schemas (from their footers)."""
    files = events_files(events)
    return files, _check_files(files)


def events_files(events: Path | str) -> list[Path]:
    """The files an events path (file, folder or glob) means, as ``events_path`` reads them,
    not yet checked; a path that means none is a ``FileNotFoundError`` saying what to give."""
    path = Path(events)
    files: list[Path]
    if path.is_dir():
        if (path / "events.parquet").exists():
            files = [path / "events.parquet"]
        else:
            files = [f for f in sorted(path.glob("*.parquet")) if f.name not in SIBLING_TABLES]
        if not files:
            raise FileNotFoundError(
                f"{path} holds no events Parquet files (its subfolders are not read); give the "
                "events folder written by ingest or simulate (with its events.parquet), an "
                "events Parquet file, or a glob such as DIR/*/*.parquet for a folder of "
                "partitions"
            )
    elif is_glob(path):
        base, pattern = glob_base(path)
        matched = sorted(base / f for f in glob.glob(pattern, root_dir=base, recursive=True))
        # the tables written beside the events are left out, as from a folder: a glob over
        # the folder read contacts.parquet as events, refused as a file of another schema
        files = [f for f in matched if f.is_file() and f.name not in SIBLING_TABLES]
        if not files:
            beside = " but the tables written beside the events" if matched else ""
            raise FileNotFoundError(f"{path} matches no file{beside}; give events Parquet")
    elif not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give events Parquet written by ingest")
    else:
        files = [path]
    return files


def _check_files(files: list[Path]) -> list[pa.Schema]:
    """Every Parquet file is readable, they agree on the contract's columns, and no event
    lacks a contact_id or a timestamp (counted from the files' statistics, without reading
    the rows); otherwise an ``InputError`` naming the file. Their Arrow schemas."""
    fix = "write the events again, e.g. with `funnelcast ingest`"
    first: tuple[Path, dict[str, pa.DataType | None]] | None = None
    schemas = []
    for file in files:
        try:
            metadata = pq.read_metadata(file)  # the footer: schema and statistics
            schema = parquet_schema(metadata)  # INT96 (Spark's times) as UTC instants
        except Exception as error:  # Arrow's and the OS's errors alike: the file is unusable
            reason = " ".join(str(error).split())[:160]
            raise InputError(f"{file} is not a readable Parquet file ({reason}); {fix}") from None
        contract = {
            name: _same_text(schema.field(name).type) if name in schema.names else None
            for name in ("timestamp", *EVENT_KINDS)
        }
        if first is None:
            first = (file, contract)
        for name, dtype in contract.items():
            if dtype != first[1][name]:
                raise InputError(
                    f"the events files disagree on `{name}`: {dtype or 'missing'} in {file}, "
                    f"{first[1][name] or 'missing'} in {first[0]}; give files of one schema "
                    "(funnelcast ingest writes them so)"
                )
        _refuse_missing(_missing_in_file(file, metadata, schema), f" in {file}")
        schemas.append(schema)
    return schemas


def _same_text(dtype: pa.DataType) -> pa.DataType:
    """Arrow's kinds of text as one: Polars writes large_string, pyarrow string, and every
    engine reads them alike (a folder of both was refused)."""
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    return dtype


_REQUIRED_VALUES = ("contact_id", "timestamp")


def _missing_in_file(file: Path, metadata: pq.FileMetaData, schema: pa.Schema) -> dict[str, int]:
    """Per required column, how many of the file's rows lack a value: from the row groups'
    statistics (the footer), or, where a writer left them out, from the column itself."""
    positions = {metadata.schema.column(i).name: i for i in range(metadata.num_columns)}
    missing: dict[str, int] = {}
    for name in _REQUIRED_VALUES:
        if name not in positions:
            continue  # no such column: the schema check names it
        total = 0
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(positions[name]).statistics
            if stats is None or not stats.has_null_count:
                scan = _scan_parquet([file], [schema])
                total = scan.select(pl.col(name).null_count()).collect().item()
                break
            total += stats.null_count
        missing[name] = total
    return missing


def _refuse_missing(missing: Mapping[str, int], where: str = "") -> None:
    for name, count in missing.items():
        if count:
            raise InputError(missing_message(name, count, where))


def missing_message(name: str, count: int | None, where: str = "") -> str:
    """Events without a contact_id or a timestamp, refused by every engine (Spark's says no
    count: its query stops at the first)."""
    reason = "missing_contact_id" if name == "contact_id" else "unparseable_timestamp"
    how_many = "" if count is None else f"{count:,} "
    return (
        f"{how_many}event(s){where} have no {name}; they cannot be counted for anyone "
        f"or at any time: run the events through `funnelcast ingest`, which sets such "
        f"rows aside and counts them ({reason}), or drop them"
    )


# what is wrong with the events' timestamps, for every engine
NO_TIMESTAMP = (
    "the events have no `timestamp` column; give events in the event contract (funnelcast "
    "ingest or simulate writes them)"
)
NAIVE_TIMESTAMP = (
    "the events' `timestamp` has no time zone, so its instants would be a guess; give "
    "timezone-aware timestamps (funnelcast ingest converts a source's local times with the "
    "zone its mapping declares)"
)


def not_a_datetime(dtype: object) -> str:
    return (
        f"the events' `timestamp` is {dtype}, not a datetime; give timezone-aware timestamps "
        "(funnelcast ingest parses and converts them to UTC)"
    )


# the event contract's other columns the builders read, and the kind of value each holds
# (``value`` may be absent: no money values at all)
EVENT_KINDS = {"contact_id": "text", "event_type": "text", "channel": "text", "value": "a number"}


def check_event_kinds(kinds: Mapping[str, str], types: Mapping[str, str]) -> None:
    """Every column of ``EVENT_KINDS`` present with its kind, for every engine: ``kinds`` maps
    each present column to "text", "a number" or "other", ``types`` to the engine's name of its
    type. Otherwise an ``InputError`` naming the column, its type and the fix."""
    fix = "give events in the event contract (funnelcast ingest or simulate writes them)"
    for name, kind in EVENT_KINDS.items():
        if name == "value" and name not in kinds:
            continue  # no money values at all: the builders read it as all missing
        if name not in kinds:
            raise InputError(f"the events have no `{name}` column; {fix}")
        if kinds[name] != kind:
            raise InputError(f"the events' `{name}` is {types[name]}, not {kind}; {fix}")


def _polars_kind(dtype: pl.DataType) -> str:
    if isinstance(dtype, TEXT_TYPES):
        return "text"
    if dtype.is_float() or dtype.is_integer() or dtype.is_decimal() or dtype == pl.Null:
        return "a number"
    return "other"


def in_utc(events: pl.LazyFrame) -> pl.LazyFrame:
    """The events with their timestamps in UTC: another zone is converted (the same instants),
    naive or non-datetime timestamps are an error, as their instants would be a guess; so is
    any other column of the contract that is missing or of the wrong kind."""
    schema = events.collect_schema()
    check_event_kinds(
        {name: _polars_kind(dtype) for name, dtype in schema.items()},
        {name: str(dtype) for name, dtype in schema.items()},
    )
    if "value" not in schema:  # events without money values: every value missing
        events = events.with_columns(pl.lit(None, pl.Float64).alias("value"))
    elif schema["value"] != pl.Float64:
        # a column of nulls only (no type): every value missing; integers (cents, say) and
        # float32 are summed as doubles, as every other builder sums them: in their own type
        # two purchases of 2e9 in an Int32 column summed to -294,967,296
        events = events.with_columns(pl.col("value").cast(pl.Float64))
    if isinstance(schema.get("contact_id"), pl.Categorical | pl.Enum):
        # ids as text, whatever the categories: the contacts table's may be plain text (or
        # other categories), and ids are joined, concatenated and sorted as text
        events = events.with_columns(pl.col("contact_id").cast(pl.String))
    dtype = schema.get("timestamp")
    if dtype is None:
        raise InputError(NO_TIMESTAMP)
    if not isinstance(dtype, pl.Datetime):
        raise InputError(not_a_datetime(dtype))
    if dtype.time_zone is None:
        raise InputError(NAIVE_TIMESTAMP)
    if dtype.time_unit == "ms":
        # compared with as_of and the windows' starts in microseconds, as every other builder
        # compares them: in milliseconds, Polars cut those down to the millisecond, and an
        # event in the last millisecond before an as_of of 12:00:00.000005 was left out
        events = events.with_columns(pl.col("timestamp").dt.cast_time_unit("us"))
    if dtype.time_zone != "UTC":
        return events.with_columns(pl.col("timestamp").dt.convert_time_zone("UTC"))
    return events


# --- aggregates -------------------------------------------------------------------------------


def matches(
    event_types: frozenset[str] | None,
    channels: frozenset[str] | None,
    exclude_event_types: frozenset[str],
    exclude_channels: frozenset[str],
) -> pl.Expr:
    """Whether an event passes an aggregate's filter (None: any type or channel). Always a
    column of the events' length, never a scalar literal, so running sums over it work."""
    conditions = []
    if event_types is not None:
        conditions.append(pl.col("event_type").is_in(sorted(event_types)))
    if channels is not None:
        conditions.append(pl.col("channel").is_in(sorted(channels)))
    if exclude_event_types:
        conditions.append(~pl.col("event_type").is_in(sorted(exclude_event_types)))
    if exclude_channels:
        conditions.append(~pl.col("channel").is_in(sorted(exclude_channels)))
    if not conditions:
        return pl.col("event_type").is_not_null()
    return pl.all_horizontal(conditions)


def _matches(aggregate: Aggregate) -> pl.Expr:
    return matches(
        aggregate.event_types,
        aggregate.channels,
        aggregate.exclude_event_types,
        aggregate.exclude_channels,
    )


def _atoms(past: pl.LazyFrame, aggregates: list[Aggregate], as_of: dt.datetime) -> pl.LazyFrame:
    """Counts, sums and recency, step 1. Every filter is on event type and channel only, so
    the events first reduce to one row per contact, event type and channel (an "atom": its
    count and value sum in each window, first and last time); ``_per_contact`` then makes each
    feature a filtered sum, max or min over a contact's few atoms instead of all its events."""
    timestamp = pl.col("timestamp")
    counted = {a.window_days for a in aggregates if a.kind == "count"}
    summed = {a.window_days for a in aggregates if a.kind == "sum"}
    windows = [days for days in _windows([*counted, *summed]) if days is not None]
    # window flags as columns and types as small integer codes: the group-by then only sums,
    # takes extremes and compares integers, Polars' fast paths
    flagged = past.select(
        "contact_id",
        "timestamp",
        "value",
        _type=pl.col("event_type").cast(pl.Enum(EVENT_TYPES), strict=False).to_physical(),
        _channel=pl.col("channel").cast(pl.Enum(CHANNELS), strict=False).to_physical(),
        **{f"_in{days}": _in_window_days(days, as_of) for days in windows},
    )

    def in_window(days: int | None, value: pl.Expr | None = None) -> pl.Expr:
        """The count (or value sum) of an atom's events in a window; all history needs no
        flag (every row is before as_of), which saves a column and a product per event."""
        if days is None:
            return pl.len() if value is None else value.sum()
        flag = pl.col(f"_in{days}")
        return flag.sum() if value is None else (value * flag).sum()

    # only what some feature reads: each column costs a sum or an extreme per atom
    atom_columns: list[pl.Expr] = [timestamp.min().alias("_first"), timestamp.max().alias("_last")]
    # all history's count (a plain length) always: it bounds the packed counts' fields
    atom_columns += [in_window(days).alias(f"_n{days}") for days in _windows([*counted, None])]
    atom_columns += [
        in_window(days, pl.col("value")).alias(f"_v{days}") for days in _windows(summed)
    ]
    return flagged.group_by("contact_id", "_type", "_channel").agg(atom_columns)


def _windows(windows: Iterable[int | None]) -> list[int | None]:
    """Window lengths in days, shortest first, all history (None) last."""
    return sorted(set(windows), key=lambda days: (days is None, days or 0))


def _eligible_runs(
    atoms: pl.DataFrame, aggregates: list[Aggregate], listed: pl.DataFrame | None
) -> pl.DataFrame:
    """Counts, sums and recency, step 2: the atoms of the eligible contacts (an event in the
    longest window, or listed), in contact order, each contact's atoms a run numbered in
    ``_run``. Filtering the narrow atoms, not the wide result, spares a copy of the result.

    A group-by whose groups are runs of a sorted key takes each group as a slice, twice as
    fast here as gathering the rows of groups scattered by a hash table. The atoms are sorted
    by contact id (and type: Polars sorts two keys faster than the text alone) and each run of
    one id becomes a group, so the rows come out in contact order and the finished table needs
    no sort of its own: at 10 M events the text sort costs 0.4 s more than sorting by a hash
    of the id did, and saves the 0.6 s of sorting the 146-column result."""
    contact = pl.col("contact_id")
    any_event = next(a for a in aggregates if a.name == ANY_EVENT)
    active = (pl.col(f"_n{any_event.window_days}") > 0) & _matches_codes(any_event)
    eligible = active.any().over("_run")
    if listed is not None:
        eligible = eligible | contact.is_in(listed.get_column("contact_id").implode())
    return (
        atoms.lazy()
        .sort("contact_id", "_type")
        .with_columns(_run=(contact != contact.shift()).fill_null(True).cum_sum())
        .filter(eligible)
        .collect()
        .set_sorted("_run")
    )


def _run_sums(runs: pl.DataFrame, values: pl.Expr) -> pl.Series:
    """Per run of ``runs`` (in order), the sum of ``values`` over its rows (unsigned integers):
    the running sum at each run's last row minus that at the last row of the run before. Flat
    column operations, not a group-by (a plain sum over slice groups is slow in Polars 2.1)."""
    run = pl.col("_run")
    last = (run != run.shift(-1)).fill_null(True)
    at_ends = runs.select(values.cast(pl.UInt64).cum_sum().filter(last)).to_series()
    return at_ends - at_ends.shift(1, fill_value=0)


# Counts of several windows with the same filter are summed as one: each count gets a field of
# _PACK_BITS bits in an unsigned 64-bit integer (7, 28 and 90 days, say), so a filter needs one
# filtered sum per contact instead of three, and the sum of the packed values holds each
# window's count in its field. Exact while no contact has 2^21 events in a part, which is
# checked; the filtered sums are most of the per-contact step (126 -> 61 of them in the shipped
# spec: 0.83 -> 0.55 s per part of 5 M events in a whole build, profiling script).
_PACK_BITS = 21
_PACK_FIELDS = 64 // _PACK_BITS


def _count_packs(aggregates: list[Aggregate]) -> list[tuple[int | None, ...]]:
    """The count windows packed together, most used first, up to _PACK_FIELDS a pack."""
    uses: dict[int | None, int] = {}
    for aggregate in aggregates:
        if aggregate.kind == "count":
            uses[aggregate.window_days] = uses.get(aggregate.window_days, 0) + 1
    ranked = sorted(uses, key=lambda days: (-uses[days], days is None, days or 0))
    return [
        tuple(ranked[start : start + _PACK_FIELDS])
        for start in range(0, len(ranked), _PACK_FIELDS)
        if len(ranked[start : start + _PACK_FIELDS]) > 1
    ]


def _packs_for(runs: pl.DataFrame, aggregates: list[Aggregate]) -> list[tuple[int | None, ...]]:
    """The packs of count windows (``_count_packs``), or none when a contact of ``runs`` has
    too many events for a field: a contact's count in any window is at most its events."""
    packs = _count_packs(aggregates)
    if packs and (_run_sums(runs, pl.col("_nNone")).max() or 0) >= 2**_PACK_BITS:
        return []  # each window summed alone
    return packs


def _per_contact(
    runs: pl.DataFrame, aggregates: list[Aggregate], as_of: dt.datetime
) -> pl.DataFrame:
    """Counts, sums and recency, step 3: every feature from a contact's run of atoms, one
    filtered sum (or extreme) per filter and kind, with counts of several windows packed."""
    packs = _packs_for(runs, aggregates)
    features: list[pl.Expr] = []
    unpacked: list[pl.Expr] = []
    totals: list[str] = []  # the packed sums, dropped once unpacked
    used: set[int] = set()
    by_filter: dict[tuple[object, ...], list[Aggregate]] = {}
    for aggregate in aggregates:
        by_filter.setdefault(_filter_key(aggregate), []).append(aggregate)
    for members in by_filter.values():
        matching = _matches_codes(members[0])
        counted = {a.window_days for a in members if a.kind == "count"}
        done: set[str] = set()
        for number, pack in enumerate(packs):
            if len(counted.intersection(pack)) < 2:
                continue
            used.add(number)
            total = f"_packed{len(totals)}"
            totals.append(total)
            features.append(pl.col(f"_pack{number}").filter(matching).sum().alias(total))
            for aggregate in members:
                if aggregate.kind == "count" and aggregate.window_days in pack:
                    place = 2 ** (_PACK_BITS * pack.index(aggregate.window_days))
                    field = pl.col(total) // place % 2**_PACK_BITS
                    unpacked.append(field.cast(pl.Int32).alias(aggregate.name))
                    done.add(aggregate.name)
        for aggregate in members:
            if aggregate.name not in done:
                features.append(_aggregate(aggregate, matching, as_of).alias(aggregate.name))
    packed = [
        pl.sum_horizontal(
            pl.col(f"_n{days}").cast(pl.UInt64) * 2 ** (_PACK_BITS * field)
            for field, days in enumerate(packs[number])
        ).alias(f"_pack{number}")
        for number in sorted(used)
    ]
    return (
        runs.lazy()
        .with_columns(packed)
        .group_by("_run", maintain_order=True)
        .agg(pl.col("contact_id").first(), *features)
        .with_columns(unpacked)
        # the same columns in the same order whether packed or not: the parts are stacked
        .select("contact_id", *(a.name for a in aggregates))
        .collect()
    )


def _aggregate(aggregate: Aggregate, matching: pl.Expr, as_of: dt.datetime) -> pl.Expr:
    """One count, sum or recency of a contact's atoms that pass ``matching``."""
    days = aggregate.window_days
    if aggregate.kind == "count":
        return pl.col(f"_n{days}").filter(matching).sum().cast(pl.Int32)
    if aggregate.kind == "sum":
        return pl.col(f"_v{days}").filter(matching).sum().cast(pl.Float64)
    if aggregate.kind == "days_since_last":
        return _days_before(as_of, pl.col("_last").filter(matching).max())
    return _days_before(as_of, pl.col("_first").filter(matching).min())  # days_since_first


def _matches_codes(aggregate: Aggregate) -> pl.Expr:
    """``matches`` on the integer codes of event type and channel (the atoms' columns)."""
    conditions = [pl.col("_type").is_not_null()]
    for column, vocabulary, included, excluded in (
        ("_type", EVENT_TYPES, aggregate.event_types, aggregate.exclude_event_types),
        ("_channel", CHANNELS, aggregate.channels, aggregate.exclude_channels),
    ):
        codes = {name: code for code, name in enumerate(vocabulary)}
        if included is not None:
            conditions.append(pl.col(column).is_in(sorted(codes[n] for n in included)))
        if excluded:
            conditions.append(~pl.col(column).is_in(sorted(codes[n] for n in excluded)))
    return pl.all_horizontal(conditions)


def _in_window_days(days: int | None, as_of: dt.datetime) -> pl.Expr:
    if days is None:
        return pl.col("timestamp").is_not_null()
    return pl.col("timestamp") >= _moment(_epoch_us(as_of) - days * MICROS_PER_DAY)


def _distinct_days(
    past: pl.LazyFrame, aggregates: list[Aggregate], *, as_of: dt.datetime
) -> pl.LazyFrame:
    """Distinct UTC days with a matching event in each window. First per contact and day the
    latest matching time (streaming: one row per contact-day, whatever the events per day);
    a day is in a window when that latest time is, since every time is before as_of. Only the
    events of the longest window are read."""
    filters = _distinct_filters(aggregates)
    earliest = _earliest(_window_start(a, as_of) for a in aggregates)
    masks = list(filters.values())
    # events no filter keeps (sends, a third of the simulated events, in the shipped spec) are
    # dropped before the group-by; with one filter, each day's latest time is a plain max
    # (0.7-0.86 -> 0.4 s at 10 M events, profiling script)
    anywhere = masks[0] if len(masks) == 1 else pl.any_horizontal(masks)
    if earliest is not None:
        anywhere = (pl.col("timestamp") >= _moment(earliest)) & anywhere
    past = past.filter(anywhere)
    timestamp = pl.col("timestamp")
    per_day = past.group_by("contact_id", timestamp.dt.date().alias("_day")).agg(
        [
            (timestamp if len(masks) == 1 else timestamp.filter(mask)).max().alias(f"_f{i}")
            for i, mask in enumerate(masks)
        ]
    )
    index = {key: i for i, key in enumerate(filters)}
    return per_day.group_by("contact_id").agg(
        [
            _since(pl.col(f"_f{index[_filter_key(a)]}"), _window_start(a, as_of), _moment)
            .sum()
            .cast(pl.Int32)
            .alias(a.name)
            for a in aggregates
        ]
    )


def _sessions(
    past: pl.LazyFrame, aggregates: list[Aggregate], *, as_of: dt.datetime, spec: FeatureSpec
) -> pl.DataFrame:
    """Session starts in each window: a matching event with no matching event of the contact
    in the gap before it, judged over all history (so a session begun before the window is not
    counted again). Events in one gap-wide time bucket are always one session, so the events
    first collapse (streaming) to each bucket's first and last time; a bucket's first event
    starts a session when the previous bucket's last event is more than the gap before it."""
    gap_us = spec.session_gap_us
    us = pl.col("timestamp").dt.epoch("us")
    results = []
    for key, mask in _distinct_filters(aggregates).items():
        chosen = [a for a in aggregates if _filter_key(a) == key]
        # whether an event in the window starts a session depends on the gap before it only
        earliest = _earliest(_window_start(a, as_of) for a in chosen)
        if earliest is not None:
            mask = mask & (pl.col("timestamp") >= _moment(earliest - gap_us))
        buckets = _collect(
            past.filter(mask)
            .group_by("contact_id", (us // gap_us).alias("_bucket"))
            .agg(_first=us.min(), _last=us.max())
        ).sort("contact_id", "_bucket")
        previous_last = pl.col("_last").shift(1)
        starts = buckets.filter(
            (pl.col("contact_id") != pl.col("contact_id").shift(1)).fill_null(True)
            | ((pl.col("_first") - previous_last) > gap_us)
        )
        results.append(
            starts.group_by("contact_id").agg(
                [
                    _since(pl.col("_first"), _window_start(a, as_of), int)
                    .sum()
                    .cast(pl.Int32)
                    .alias(a.name)
                    for a in chosen
                ]
            )
        )
    combined = results[0]
    for other in results[1:]:
        combined = combined.join(other, on="contact_id", how="full", coalesce=True)
    return combined


def _filter_key(aggregate: Aggregate) -> tuple[object, ...]:
    return (
        aggregate.event_types,
        aggregate.channels,
        aggregate.exclude_event_types,
        aggregate.exclude_channels,
    )


def _distinct_filters(aggregates: list[Aggregate]) -> dict[tuple[object, ...], pl.Expr]:
    filters: dict[tuple[object, ...], pl.Expr] = {}
    for aggregate in aggregates:
        filters.setdefault(_filter_key(aggregate), _matches(aggregate))
    return filters


def _window_start(aggregate: Aggregate, as_of: dt.datetime) -> int | None:
    """The window's first moment in microseconds since 1970; None: all history. Microseconds,
    not a datetime: a window reaching back past year 1 has no datetime (as_of in year 50 and
    100 years back), and all history is no filter at all (a datetime of year 1 left out the
    events before it from active days and sessions, which Parquet can hold)."""
    if aggregate.window_days is None:
        return None
    return _epoch_us(as_of) - aggregate.window_days * MICROS_PER_DAY


def _earliest(starts: Iterable[int | None]) -> int | None:
    """The earliest of some windows' starts; None when one of them is all history."""
    known = list(starts)
    return None if None in known else min(s for s in known if s is not None)


def _moment(us: int) -> pl.Expr:
    """A moment in microseconds since 1970 as a UTC datetime literal (any year Polars holds)."""
    return pl.lit(us, pl.Int64).cast(pl.Datetime("us", "UTC"))


def _since(column: pl.Expr, start: int | None, literal: Callable[[int], Any]) -> pl.Expr:
    """Whether ``column`` is at or after ``start`` (``literal`` makes its value a literal of
    the column's kind); with no start (all history), whether it has a value."""
    return column.is_not_null() if start is None else column >= literal(start)


def _epoch_us(moment: dt.datetime) -> int:
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _days_before(as_of: dt.datetime, moment: pl.Expr) -> pl.Expr:
    return (pl.lit(as_of) - moment).dt.total_microseconds().cast(pl.Float64) / MICROS_PER_DAY


def _absent_as_zero(aggregates: Iterable[Aggregate]) -> list[pl.Expr]:
    """Counts and sums of contacts with no events before as_of are zero (the truth), while
    recency stays missing (undefined)."""
    zero_kinds = {"count", "sum", "distinct_days", "sessions"}
    return [
        pl.col(a.name).fill_null(0.0 if a.kind == "sum" else 0)
        for a in aggregates
        if a.kind in zero_kinds
    ]


class _PolarsOps:
    """How the spec's arithmetic becomes Polars expressions (null on a zero division)."""

    @staticmethod
    def constant(value: float) -> pl.Expr:
        return pl.lit(value, pl.Float64)

    @staticmethod
    def neg(a: pl.Expr) -> pl.Expr:
        return -a

    @staticmethod
    def add(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return a + b

    @staticmethod
    def sub(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return a - b

    @staticmethod
    def mul(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return a * b

    @staticmethod
    def div(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return pl.when(b == 0).then(None).otherwise(a / b)

    @staticmethod
    def max(args: list[pl.Expr]) -> pl.Expr:
        return _null_if_any_null(args, _nan_if_any_nan(args, pl.max_horizontal(args)))

    @staticmethod
    def min(args: list[pl.Expr]) -> pl.Expr:
        return _null_if_any_null(args, _nan_if_any_nan(args, pl.min_horizontal(args)))


def _null_if_any_null(args: list[pl.Expr], combined: pl.Expr) -> pl.Expr:
    # Polars' max/min_horizontal skip nulls; the spec says a missing input gives a missing value
    return pl.when(pl.any_horizontal([a.is_null() for a in args])).then(None).otherwise(combined)


def _nan_if_any_nan(args: list[pl.Expr], combined: pl.Expr) -> pl.Expr:
    # max/min_horizontal skip a NaN (an overflowing sum less itself) too; every engine gives NaN
    nan = pl.any_horizontal([a.cast(pl.Float64).is_nan() for a in args])
    return pl.when(nan).then(float("nan")).otherwise(combined)


def _derived_batches(spec: FeatureSpec, columns: set[str]) -> list[list[pl.Expr]]:
    """The derived features in batches: each the largest whose inputs are columns by then."""
    return [
        [derived_expression(d.tree).alias(d.name) for d in batch]
        for batch in spec.derived_in_batches(columns)
    ]


def derived_expression(tree: Any) -> pl.Expr:
    expression: pl.Expr = compile_expression(
        tree, leaf=lambda name: pl.col(name).cast(pl.Float64), ops=_PolarsOps
    )
    return expression.cast(pl.Float64)


# --- contacts ---------------------------------------------------------------------------------


def _listed_ids(contacts: pa.Table | pl.DataFrame | None) -> pl.DataFrame | None:
    """The contact ids the contacts table lists, once each."""
    listed = _contacts_frame(contacts)
    return None if listed is None else listed.select("contact_id").unique()


def with_listed_contacts(
    eligible: pl.DataFrame, contacts: pa.Table | pl.DataFrame | None
) -> pl.DataFrame:
    """The eligible contact ids plus every contact the contacts table lists."""
    listed = _contacts_frame(contacts)
    if listed is None:
        return eligible
    return pl.concat([eligible, listed.select("contact_id")]).unique(maintain_order=True)


def _contacts_frame(contacts: pa.Table | pl.DataFrame | None) -> pl.DataFrame | None:
    """The contacts table as a frame (the builders check its ids once, on entry)."""
    if contacts is None:
        return None
    if isinstance(contacts, pl.DataFrame):
        frame = contacts
    else:  # a time attribute in a zone Polars cannot read: in UTC, the same instants
        frame = pl.DataFrame(pl.from_arrow(cast_unreadable_zones_to_utc(contacts)))
    if isinstance(frame.schema.get("contact_id"), pl.Categorical | pl.Enum):  # as the events'
        frame = frame.with_columns(pl.col("contact_id").cast(pl.String))
    return frame


def date_attributes(contacts: pa.Table | pl.DataFrame | None, spec: FeatureSpec) -> list[str]:
    """The contacts-table columns the spec reads as dates (each the feature ``days_since_``
    its name). A model records them: a number column may itself be named ``days_since_...``,
    so the feature's name does not say which kind its attribute is."""
    listed = _contacts_frame(contacts)
    if listed is None:
        return []
    return [
        name
        for name in spec.attribute_names(listed.columns)
        if name in listed.columns and _is_date(listed[name].dtype)
    ]


# a text attribute with at least this many distinct values, over more than this share of the
# contacts that have one, names contacts (an e-mail, a phone number, a CRM id) rather than
# describing them: as a categorical feature LightGBM would store every value in the model. A
# sparse column counts too: 20 values each held by one of 20 contacts name those contacts
IDENTIFYING_MIN_VALUES = 20
IDENTIFYING_SHARE = 0.5
# text that is mostly e-mail addresses or international phone numbers names people however
# few its values (a referrer's address filled for a few contacts, a shared company address).
# Only the international form (+ and 7 digits or more) is told from codes, postcodes, dates
# and amounts written as text; a column of other phone numbers is caught by its many values
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_PHONE = r"^\+\d[\d\s().\-/]{6,}$"
_PHONE_DIGITS = 7
# a number names contacts when it is a whole number nearly every contact has its own of, packed
# in a range not much wider than their count: a CRM customer number handed out in turn (an id
# a pandas export made a double too). A measure in whole units can be as distinct (spend in
# cents, revenue, a signup time in seconds) but spreads over a range far wider than the
# contacts; a phone number as a number does too, and is not told from them. A sparse number
# column is no such sign: a measure filled for a few contacts is as distinct and as packed
IDENTIFYING_NUMBER_MIN_VALUES = 100
IDENTIFYING_NUMBER_SHARE = 0.9
IDENTIFYING_NUMBER_SPREAD = 10  # the range's width over the values, at most


class IdentifyingColumn(NamedTuple):
    """A contacts column that names contacts: its distinct values among the contacts that have
    one, and why (``many values``, ``e-mail addresses`` or ``phone numbers``)."""

    name: str
    distinct: int
    rows: int
    why: str


def identifying_attributes(
    contacts: pa.Table | pl.DataFrame | None, spec: FeatureSpec
) -> list[IdentifyingColumn]:
    """The attributes the spec would make features that identify contacts: text with
    ``IDENTIFYING_MIN_VALUES`` distinct values over more than ``IDENTIFYING_SHARE`` of the
    contacts that have one, or that is mostly e-mail addresses or international phone numbers
    (``_addresses``), and whole numbers with ``IDENTIFYING_NUMBER_MIN_VALUES`` over more than
    ``IDENTIFYING_NUMBER_SHARE`` in a range at most ``IDENTIFYING_NUMBER_SPREAD`` times as wide
    as their count. A number is binned by the model, but it is still memorised, and it is a
    column of the test set logged to MLflow, which joins back to every contact."""
    listed = _contacts_frame(contacts)
    if listed is None:
        return []
    found = []
    for name in spec.attribute_names(listed.columns):
        if name not in listed.columns:
            continue  # check_listed_attributes names it
        dtype = listed[name].dtype
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
            share, least = IDENTIFYING_SHARE, IDENTIFYING_MIN_VALUES
        elif dtype.is_numeric():
            share, least = IDENTIFYING_NUMBER_SHARE, IDENTIFYING_NUMBER_MIN_VALUES
        else:
            continue  # booleans, dates and the kinds that are no features
        values = listed[name].drop_nulls()
        if "contact_id" in listed.columns and _mostly_own_ids(listed[name], listed["contact_id"]):
            why = "the contacts' own ids"  # however spread (privacy review: Taobao's user ids)
            found.append(IdentifyingColumn(name, values.n_unique(), len(values), why))
            continue
        if dtype.is_numeric():
            numbers = values.cast(pl.Float64)
            values, numbers = (
                values.filter(numbers.is_finite()),
                numbers.filter(numbers.is_finite()),
            )
            if not dtype.is_integer() and not (numbers == numbers.round(0)).all():
                continue  # fractions: a measure, not a number anyone is known by
            width = float(numbers.max() - numbers.min()) if len(numbers) else 0.0  # type: ignore[operator,arg-type]
            if width >= IDENTIFYING_NUMBER_SPREAD * len(numbers):
                continue  # spread wide: a measure (or a number not handed out in turn)
        distinct = values.n_unique()  # decimals as they are: a double merges ids above 2^53
        shaped = None if dtype.is_numeric() else _addresses(values)
        if shaped is not None:
            found.append(IdentifyingColumn(name, distinct, len(values), shaped))
        elif distinct >= least and distinct > share * len(values):
            found.append(IdentifyingColumn(name, distinct, len(values), "many values"))
    return found


def _mostly_own_ids(column: pl.Series, ids: pl.Series) -> bool:
    """More than half of the column's values, and at least ``IDENTIFYING_MIN_VALUES``, are
    their contact's own id, compared as text (a whole number as its digits: 1001891.0 is the
    id 1001891). A copy of the id is as identifying when the ids are spread wide, as a CRM's or
    a shop's user numbers are, which the other tests take for a measure."""
    text = column.cast(pl.String).str.strip_chars()
    if column.dtype.is_float() or column.dtype == pl.Decimal:
        text = text.str.replace(r"\.0*$", "")
    same = int((text == ids.cast(pl.String).str.strip_chars()).sum())
    return same >= IDENTIFYING_MIN_VALUES and same * 2 > len(text) - text.null_count()


def _addresses(values: pl.Series) -> str | None:
    """``e-mail addresses`` or ``phone numbers`` when more than half of a text column's values
    are such (a phone number in the international form, with at least ``_PHONE_DIGITS``
    digits); None otherwise."""
    text = values.cast(pl.String).str.strip_chars()
    if not len(text):
        return None
    if text.str.contains(_EMAIL).sum() * 2 > len(text):
        return "e-mail addresses"
    phones = text.str.contains(_PHONE) & (text.str.count_matches(r"\d") >= _PHONE_DIGITS)
    return "phone numbers" if phones.sum() * 2 > len(text) else None


def column_names(contacts: pa.Table | pl.DataFrame) -> list[str]:
    return list(contacts.column_names if isinstance(contacts, pa.Table) else contacts.columns)


def _is_date(dtype: pl.DataType) -> bool:
    """A contacts column the attributes read as a date: days before the snapshot."""
    return dtype == pl.Date or isinstance(dtype, pl.Datetime)


def check_listed_attributes(columns: Sequence[str], spec: FeatureSpec) -> None:
    """The attributes the spec lists are columns of the contacts table (``columns``): checked
    when the table is joined, and by the builders before they start (a typo found only after
    a whole build)."""
    missing = [c for c in spec.attribute_names(columns) if c not in columns]
    if missing:
        raise SpecError(
            f"the feature spec lists attributes {missing} that the contacts table lacks; remove "
            "them from `attributes:` or add them to the contacts"
        )


def join_attributes(
    frame: pl.LazyFrame,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
) -> pl.LazyFrame:
    """Join contact attributes: text as categorical, dates as days before as_of (a date at or
    after as_of is not strictly before the snapshot, and so missing)."""
    listed = _contacts_frame(contacts)
    if listed is None:
        return frame
    check_listed_attributes(listed.columns, spec)
    wanted = spec.attribute_names(listed.columns)
    columns: list[pl.Expr] = []
    for name in wanted:
        dtype = listed[name].dtype
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
            columns.append(pl.col(name).cast(pl.String).cast(pl.Categorical).alias(name))
        elif _is_date(dtype):
            moment = pl.col(name).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
                moment = pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
            days = _days_before(as_of, moment)
            columns.append(pl.when(days > 0).then(days).otherwise(None).alias(f"days_since_{name}"))
        elif dtype == pl.Boolean or dtype.is_numeric():
            columns.append(pl.col(name).cast(pl.Float64).alias(name))
        elif dtype == pl.Null and spec.attributes != "all":
            # a listed column with no value at all (so no type: this week's export left it
            # empty): every contact's value is missing, as the online path has it
            columns.append(pl.col(name).cast(pl.Float64).alias(name))
        # other types (lists, structs) are not features; they are left out on purpose, and so
        # is a column of no type under `all` (its kind is unknown)
    spec.check_attribute_columns(
        (column.meta.output_name(), column.meta.root_names()[0]) for column in columns
    )
    attributes = listed.lazy().select("contact_id", *columns)
    return frame.join(attributes, on="contact_id", how="left", maintain_order="left")
