"""The weekly scoring job: every consented contact scored as of a date by a registered model,
with the batch engine's features (the code the model was trained on, and the service's online
path's twin), written where a CRM imports it (Parquet or CSV), and the funnel's movement since
the previous scores: who moved deeper, who moved back, who is new.

The command is `funnelcast score` (``serving.cli``); this module holds what it computes, so
that a notebook can call the same functions."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from features.consent import refuse_unusable_ids, restrict_to_consented
from features.engine import (
    EventsInput,
    first_event_times,
    leave_out_not_yet_active,
    unsubscribed_before,
)
from features.errors import InputError
from features.schema import UTC_OFFSET, cast_unreadable_zones_to_utc, utc_for_unreadable_zones
from features.vocabulary import STAGE_MESSAGE, STAGES
from training.pyfunc import CLOSED_CATEGORIES, PROBABILITY_COLUMNS, value_kind

# contacts scored at a time: a chunk's reasons read its feature values as Python objects
CHUNK_ROWS = 20_000

# what a scores file holds, in this order (rules_stage only when the model's spec has it)
SCORE_COLUMNS = (
    "contact_id",
    "as_of",
    "stage",
    *PROBABILITY_COLUMNS,
    "propensity",
    "horizon_days",
    "reason_1",
    "reason_2",
    "reason_3",
    "cta",
    "message_type",
    "rules_stage",
    "model_name",
    "model_version",
)
SCORE_FORMATS = (".parquet", ".csv")
# the columns of earlier scores that are read (the rest, reasons' text and all, is not)
_READ = ("contact_id", "stage", "as_of", "model_name", "model_version")
# the smallest stage (contacts in the previous scores) whose movement back is named as a leak
MIN_LEAK_CONTACTS = 30


@dataclass(frozen=True)
class Scores:
    """One scoring run: a row per consented contact known as of the run's date, and the
    contacts left out: for consent, and (consented) for first appearing at or after that date."""

    table: pl.DataFrame
    contacts_without_consent: int
    # consented contacts whose first event comes at or after as_of: unknown as of then, so
    # not scored (the funnel report does not count them, training makes them no row)
    contacts_not_yet_active: int = 0
    # the model's contact attributes the contacts table does not hold (or all of them, with no
    # table): scored as missing values, as the service scores an attribute not sent
    missing_attributes: tuple[str, ...] = ()
    # category attributes with values the model never saw in training, scored as missing:
    # (name, contacts with such a value, contacts with a value), as score says them
    unseen_categories: tuple[tuple[str, int, int], ...] = ()
    # scored contacts with an unsubscribe event before as_of: consent is the contacts table's
    # (a lagging CRM export keeps it), so they are scored, and counted for score to say
    unsubscribed: int = 0


def score_features(
    model: Any,
    features: pl.DataFrame,
    contacts: Any,
    *,
    events: EventsInput,
    as_of: dt.datetime,
    model_name: str,
    model_version: str,
    assume_consent: bool = False,
    reasons: bool = True,
    scored: Callable[[int, int], None] | None = None,
) -> Scores:
    """The consented contacts among ``features`` (built from ``events`` as of ``as_of`` with
    the model's spec and rules, by either engine: every contact with an event in the longest
    window, or listed in ``contacts``) scored by ``model`` (a ``FunnelcastModel``) in chunks,
    ``scored`` told (done, total) as each ends. An attribute the model reads that ``features``
    lacks (no contacts table, or one without the column) is a missing value, as in the service.

    A listed contact whose first event in ``events`` comes at or after ``as_of`` is not scored:
    as of then nobody knew it, as the funnel report and training hold (training makes it no
    row, so no model learned from such a contact). A contact listed without any event is
    scored, dormant, as the funnel counts it."""
    consented = restrict_to_consented(features, contacts, assume_consent=assume_consent)
    # consent first, as the funnel counts: a contact without it is counted as such, whenever
    # it first appears
    kept = leave_out_not_yet_active(consented.kept, first_event_times(events), as_of=as_of)
    not_yet_active = consented.kept.height - kept.height  # one row per contact
    if kept.height == 0:
        days = model.spec.longest_window_days
        lookback = f"the {days}-day lookback" if days else "the events before it"
        raise InputError(
            f"no consented contact to score as of {as_of:%Y-%m-%d}: none has an event in "
            f"{lookback} or is listed in the contacts table and known by then "
            f"({consented.contacts_without_consent:,} without marketing consent left out, "
            f"{not_yet_active:,} whose first event comes after it not scored); "
            "give another --as-of, or the contacts table"
        )
    kept, missing = with_missing_attributes(kept, model)
    parts = []
    with _objects_so_far_left_alone():
        for start in range(0, kept.height, CHUNK_ROWS):
            # a value the model refuses is named by its row in the whole table, not the chunk's
            chunk = kept.slice(start, CHUNK_ROWS)
            parts.append(model.predict_frame(chunk, reasons=reasons, first_row=start))
            if scored is not None:
                scored(min(start + CHUNK_ROWS, kept.height), kept.height)
    table = pl.concat(parts, how="vertical")
    extra: list[pl.Expr | pl.Series] = [
        pl.lit(int(model.horizon_days), pl.Int32).alias("horizon_days"),
        pl.col("stage").replace_strict(STAGE_MESSAGE, return_dtype=pl.String).alias("message_type"),
        pl.lit(model_name, pl.String).alias("model_name"),
        pl.lit(model_version, pl.String).alias("model_version"),
    ]
    if "rules_stage" in kept.columns:
        extra.append(kept.get_column("rules_stage").cast(pl.String).alias("rules_stage"))
    table = table.with_columns(extra)
    table = table.with_columns(pl.col("contact_id").cast(pl.String))
    return Scores(
        table=table.select([c for c in SCORE_COLUMNS if c in table.columns]),
        contacts_without_consent=consented.contacts_without_consent,
        contacts_not_yet_active=not_yet_active,
        missing_attributes=missing,
        unseen_categories=unseen_categories(kept, model),
        unsubscribed=int(table["contact_id"].is_in(unsubscribed_before(events, as_of=as_of)).sum()),
    )


def unseen_categories(features: pl.DataFrame, model: Any) -> tuple[tuple[str, int, int], ...]:
    """Per category attribute of ``model`` in ``features``: how many contacts hold a value the
    model never saw in training, and how many hold a value, where any does. Such a value is
    scored as missing, as LightGBM reads it: a contacts export that renamed or re-cased its
    categories (BUDGET for budget) changed every score without a word (scoring review)."""
    found = []
    for name, values in model.categories.items():
        if name in CLOSED_CATEGORIES or name not in features.columns:
            continue  # a closed vocabulary is checked as it is encoded
        column = features.get_column(name).cast(pl.String).drop_nulls()
        unseen = int((~column.is_in([str(value) for value in values])).sum())
        if unseen:
            found.append((name, unseen, len(column)))
    return tuple(found)


@contextlib.contextmanager
def _objects_so_far_left_alone() -> Iterator[None]:
    """Python's cycle collector leaves the objects that exist now (the model, the libraries)
    alone while the chunks are scored, as the service does once its model is loaded: each
    chunk makes millions of objects, and every full collection they set off walked the
    loaded model and libraries again (in process, a third of scoring 335,451 contacts with
    reasons: 6.5 s instead of 8.9-10.4). They are handed back to the collector after. When
    something froze objects before (a server, a notebook), nothing is frozen here: a freeze
    now could not be undone without undoing theirs, and what the chunks made since would
    never be collected."""
    if gc.get_freeze_count() > 0:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def with_missing_attributes(
    features: pl.DataFrame, model: Any
) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """``features`` with every attribute ``model`` reads that they lack (no contacts table, or
    one without the column) as a missing value of its kind, as the service scores an attribute
    not sent; and the names of those attributes, for the caller to say."""
    missing = tuple(name for name in model.attribute_features if name not in features.columns)
    for date in model.attribute_dates:
        # a date exported as text is built as a text attribute of that name, not days_since_
        if f"days_since_{date}" in missing and date in features.columns:
            raise InputError(
                f"the contacts column '{date}' is {value_kind(features.schema[date])}, but the "
                "model reads "
                f"it as a date (its feature days_since_{date}); give it as a date or a "
                "timestamp, as in training (in a CSV export, read it with a date type)"
            )
    if missing:
        categorical = set(model.categories)
        features = features.with_columns(
            pl.lit(None, pl.String if name in categorical else pl.Float64).alias(name)
            for name in missing
        )
    return features, missing


def check_scores_path(path: Path, option: str) -> None:
    """A scores file is Parquet or CSV, told by its name."""
    if path.suffix.lower() not in SCORE_FORMATS:
        raise InputError(
            f"{option} {path}: scores are written as Parquet or CSV; give a file name ending "
            "in .parquet or .csv"
        )


def read_scores(path: Path, option: str = "--previous") -> pl.DataFrame:
    """Earlier scores (a file `funnelcast score` wrote, or one of the same columns): at least
    ``contact_id`` and ``stage``, the stages funnelcast's; ``as_of`` when the file has it. A
    refusal names the column, a count and the first row, never a value: a stage column may
    hold the ids of a file whose columns were swapped."""
    check_scores_path(path, option)
    if path.is_dir():
        raise InputError(
            f"{option} {path} is a folder; give the scores file of a run before (one .parquet "
            "or .csv file)"
        )
    if not path.is_file():
        raise InputError(f"{option} {path} does not exist; give the scores file of a run before")
    csv = path.suffix.lower() == ".csv"
    try:
        if csv:
            names = pl.read_csv(path, infer_schema=False, n_rows=0).columns
        else:
            # Arrow's reading of the schema: Polars' panics on a time zone it cannot read
            schema = pq.read_schema(path)
            names = schema.names
        used = [name for name in _READ if name in names]  # not the reasons' text
        if csv:
            frame = pl.read_csv(path, infer_schema=False, columns=used)
        elif utc_for_unreadable_zones(schema) is None:
            frame = pl.read_parquet(path, columns=used)
        else:  # an as_of of '+05:30' (written by pandas): UTC, the same moment
            table = cast_unreadable_zones_to_utc(pq.read_table(path, columns=used))
            frame = pl.DataFrame(pl.from_arrow(table))
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        # the reader's message may quote the file's lines, contact ids among them
        raise InputError(
            f"{option} {path} cannot be read as a {'CSV' if csv else 'Parquet'} file of scores "
            f"({type(error).__name__}); give a file written by `funnelcast score`"
        ) from None
    missing = [c for c in ("contact_id", "stage") if c not in frame.columns]
    if missing:
        raise InputError(
            f"{option} {path} has no {' or '.join(missing)} column; give a scores file written "
            "by `funnelcast score`"
        )
    if frame.schema["contact_id"].is_float():
        raise InputError(
            f"{option} {path}: contact_id holds decimal numbers (1.0 is not the id 1); give "
            "the ids as text, as `funnelcast score` writes them"
        )
    try:
        frame = frame.with_columns(pl.col("contact_id", "stage").cast(pl.String))
    except pl.exceptions.PolarsError:
        kinds = f"{frame.schema['contact_id']} and {frame.schema['stage']}"
        raise InputError(
            f"{option} {path}: contact_id and stage hold {kinds}, not text; give a scores file "
            "written by `funnelcast score`"
        ) from None
    _refuse_rows(frame, pl.col("contact_id").is_null(), "without a contact_id", path, option)
    refuse_unusable_ids(frame["contact_id"], f"{option} {path}")
    _refuse_rows(frame, pl.col("stage").is_null(), "without a stage", path, option)
    _refuse_rows(
        frame,
        ~pl.col("stage").is_in(STAGES),
        f"whose stage is none of funnelcast's ({', '.join(STAGES)})",
        path,
        option,
    )
    _refuse_rows(
        frame,
        pl.col("contact_id").is_duplicated(),
        "of contacts listed twice or more",
        path,
        option,
    )
    if "as_of" in frame.columns:
        frame = frame.with_columns(_moments(frame["as_of"], path, option).alias("as_of"))
        _refuse_rows(frame, pl.col("as_of").is_null(), "without an as_of", path, option)
        # scores of several runs in one file (each contact once): the movement would mix weeks,
        # and a later week's rows pass for the week before (mutation review)
        _refuse_rows(
            frame,
            pl.col("as_of") != pl.col("as_of").first(),
            "of another as_of than the first row's",
            path,
            option,
        )
    return frame


def _refuse_rows(frame: pl.DataFrame, bad: pl.Expr, what: str, path: Path, option: str) -> None:
    found = frame.select(bad.fill_null(False).arg_true()).to_series()
    if len(found):
        raise InputError(
            f"{option} {path} holds {len(found):,} row(s) {what} (row {found[0]}, counting from "
            "0, is one); give one scores file of one run, as `funnelcast score` writes it"
        )


# the offsets every other reader takes (features.schema.UTC_OFFSET: Z or z, +HH:MM, +HHMM,
# +HH) or " UTC" (as BigQuery and Spark write), and a T or z in either case, as ingest reads
# them (fromisoformat refuses a small z)
_ISO_MOMENT = (
    rf"^\d{{4}}-\d{{2}}-\d{{2}}([Tt ]\d{{2}}:\d{{2}}(:\d{{2}}(\.\d+)?)?(\s*({UTC_OFFSET}|UTC))?)?$"
)


def _moments(column: pl.Series, path: Path, option: str) -> pl.Series:
    """Earlier scores' ``as_of`` as UTC moments: a date or timestamp column, or ISO 8601 text
    (a date, or a date and time, with an offset or Z, else UTC). Anything else is refused:
    a moment misread would let scores that are not earlier pass for the previous week's."""
    why = None
    if column.dtype == pl.Date:
        return column.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if isinstance(column.dtype, pl.Datetime):
        zone = column.dtype.time_zone
        return (
            column.dt.replace_time_zone("UTC")
            if zone is None
            else column.dt.convert_time_zone("UTC")
        )
    if column.dtype == pl.String:
        text = column.str.strip_chars()
        # each distinct text read once (a run's file holds one); its shape, then its values
        # (2026-13-45 has the shape of a date and is none)
        read = {value: _iso(value) for value in text.drop_nulls().unique().to_list()}
        bad = [value for value, moment in read.items() if moment is None]
        rows = (text.is_null() | text.is_in(bad)).arg_true()
        if not len(rows):
            return text.replace_strict(read, return_dtype=pl.Datetime("us", "UTC"))
        # the row, never its value: a file whose columns were swapped holds ids here (review)
        empty = ", empty" if text[rows[0]] is None else ""
        why = (
            f"{len(rows):,} value(s) that are not ISO 8601 dates or moments (the first at row "
            f"{rows[0]}{empty}, counting from 0; write them as 2026-12-07 or "
            "2026-12-07T00:00:00Z)"
        )
    else:
        why = f"values of type {column.dtype}"
    raise InputError(
        f"{option} {path}: its as_of column holds {why}; give the file `funnelcast score` wrote "
        "(as_of: ISO 8601 text in a CSV, a timestamp in Parquet), or drop the column"
    )


def _iso(text: str) -> dt.datetime | None:
    """An ISO 8601 date or moment in UTC; None for anything else."""
    if not re.fullmatch(_ISO_MOMENT, text):
        return None
    # a space before the zone, as ingest reads it (10:00:00 +00:00, 10:00 Z)
    text = re.sub(r"\s+(?=[Zz+-][\d:]*$)", "", text.removesuffix("UTC").rstrip())
    try:
        moment = dt.datetime.fromisoformat(text.upper().replace(" ", "T", 1))
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def previous_as_of(previous: pl.DataFrame) -> dt.datetime | None:
    """The moment earlier scores were for (their ``as_of``, one for every row, as
    ``read_scores`` holds them), when they say it."""
    if "as_of" not in previous.columns or previous.height == 0:
        return None
    moment = previous.get_column("as_of").max()
    return moment if isinstance(moment, dt.datetime) else None


_SHOWN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def other_model(previous: pl.DataFrame | None, name: str, version: str) -> str | None:
    """How to name the model(s) of earlier scores when one is not this run's (by the columns
    they have: ``model_version``, and ``model_name`` when present); None when they are this
    model's or do not say. Values that do not look like a registered name and a version
    number are not shown (a file's columns may be swapped): "another model" then."""
    if previous is None or "model_version" not in previous.columns:
        return None
    columns = ["model_version"] + (["model_name"] if "model_name" in previous.columns else [])
    pairs = previous.select(pl.col(columns).cast(pl.String)).drop_nulls().unique()
    theirs = {
        (row.get("model_name", name), row["model_version"]) for row in pairs.iter_rows(named=True)
    }
    if not theirs or theirs == {(name, version)}:
        return None
    shown = sorted(theirs)[:3]
    if all(_SHOWN_NAME.fullmatch(n) and v.isdigit() for n, v in shown):
        return ", ".join(f"{n} version {v}" for n, v in shown)
    return "another model"


@dataclass(frozen=True)
class StageMovement:
    """The contacts of one stage in the previous scores, and where they are now."""

    stage: str
    then: int
    stayed: int
    deeper: int
    back: int
    not_scored_now: int


@dataclass(frozen=True)
class Movement:
    by_stage: list[StageMovement]
    new: int  # scored now, not before

    def leak(self, min_contacts: int = MIN_LEAK_CONTACTS) -> StageMovement | None:
        """The stage (dormant aside) of at least ``min_contacts`` contacts then that lost the
        largest share of them to a shallower one; none when none of those moved back (a
        stage of a few contacts would name noise)."""
        leaking = [
            m for m in self.by_stage if m.stage != "dormant" and m.back and m.then >= min_contacts
        ]
        return max(leaking, key=lambda m: (m.back / m.then, m.back), default=None)


def movement(current: pl.DataFrame, previous: pl.DataFrame) -> Movement:
    """Where the previous scores' contacts are now, stage by stage (deeper and back by the
    funnel's order, dormant first: a contact who went dormant moved back)."""
    rank = {stage: k for k, stage in enumerate(STAGES)}
    now = current.select(pl.col("contact_id").cast(pl.String), pl.col("stage").alias("now"))
    then = previous.select("contact_id", pl.col("stage").alias("then"))
    joined = then.join(now, on="contact_id", how="left").with_columns(
        pl.col("then").replace_strict(rank, return_dtype=pl.Int32).alias("then_rank"),
        pl.col("now").replace_strict(rank, default=None, return_dtype=pl.Int32).alias("now_rank"),
    )
    counts = joined.group_by("then").agg(
        pl.len().alias("then_count"),
        (pl.col("now_rank") == pl.col("then_rank")).sum().alias("stayed"),
        (pl.col("now_rank") > pl.col("then_rank")).sum().alias("deeper"),
        (pl.col("now_rank") < pl.col("then_rank")).sum().alias("back"),
        pl.col("now").is_null().sum().alias("not_scored_now"),
    )
    found = {row["then"]: row for row in counts.iter_rows(named=True)}
    by_stage = [
        StageMovement(
            stage=stage,
            then=int(found[stage]["then_count"]),
            stayed=int(found[stage]["stayed"]),
            deeper=int(found[stage]["deeper"]),
            back=int(found[stage]["back"]),
            not_scored_now=int(found[stage]["not_scored_now"]),
        )
        for stage in STAGES
        if stage in found
    ]
    new = now.join(then, on="contact_id", how="anti").height
    return Movement(by_stage=by_stage, new=new)
