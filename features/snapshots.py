"""Features for many snapshot dates in one pass over the events: the training frame.

``build_contact_features`` answers "as of this moment"; training needs the same features as of
many dates (weekly snapshots, say), and scanning the events once per date would cost one full
pass each. Instead:

1. One pass over the events groups them by contact and UTC day into *daily partials*: per
   filter of the spec, the day's count, value sum and session starts.
2. Running totals per contact (cumulative sums in contact-then-day order) turn every windowed
   count or sum into a difference of two running totals: the one at the last day before the
   snapshot, minus the one at the last day before the window starts.
3. Each snapshot then only gathers, per eligible contact, the rows of the boundaries it needs
   (vectorised, no group-by), so a snapshot costs about the size of its output. Every feature
   is one expression gathering its totals and taking their difference, all in one parallel
   select; the rows found for a day boundary are kept for the later snapshots that share it
   (a weekly snapshot's 7-day window starts at the one before). Integer totals are 32-bit
   while the events number fewer than 2^31, which halves what the gathers read.
4. Recency needs no running column: counts run across contacts, so a contact's last matching
   event before a boundary is the matching event numbered by the count there, and its first
   is the one numbered by the count before its first day; each filter keeps the times of its
   matching events, in the same order, and the snapshot gathers from them.

Snapshots are at midnight UTC, so "events strictly before as_of" is exactly "days before the
snapshot day", and windows of whole days line up with day boundaries. The values equal
``build_contact_features`` at each date; tests hold the two equal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from features.consent import check_contact_ids, refuse_unusable_ids
from features.engine import (
    ANY_EVENT,
    NOT_FINITE_VALUE,
    EventsInput,
    check_listed_attributes,
    column_names,
    finish_features,
    matches,
    raise_unknown_vocabulary,
    scan_events,
    unreadable_parquet_named,
    with_internal_aggregates,
    with_listed_contacts,
)
from features.errors import InputError
from features.settings import RulesSettings, load_rules_settings
from features.spec import MICROS_PER_DAY, Aggregate, FeatureSpec
from features.vocabulary import CHANNELS, EVENT_TYPES

_Filter = tuple[frozenset[str] | None, frozenset[str] | None, frozenset[str], frozenset[str]]


@unreadable_parquet_named()
def build_training_frame(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None = None,
    *,
    as_of_dates: Sequence[dt.date],
    spec: FeatureSpec,
    rules: RulesSettings | None = None,
    each: Callable[[dt.datetime, pl.DataFrame], pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Rows for every snapshot date (midnight UTC) and every contact eligible on it, with the
    columns of ``build_contact_features``; events are read once, whatever the number of dates.

    ``each(as_of, rows)``, when given, replaces each snapshot's rows as soon as they are built
    (training samples and narrows them there), so the frame never holds more than it keeps.
    Every contact is built, whatever its consent: ``training.pipeline`` keeps the consenting
    ones (``features.consent.restrict_to_consented``)."""
    days = _snapshot_days(as_of_dates)
    rules = rules or load_rules_settings()
    if contacts is not None:
        check_contact_ids(contacts)  # once, not at every snapshot that reads the table
        check_listed_attributes(column_names(contacts), spec)  # before the build, not after
    aggregates = with_internal_aggregates(spec, rules)
    series = _series_of(aggregates)
    last_moment = _moment(days[-1])
    events_before = scan_events(events).filter(pl.col("timestamp") < last_moment)
    running = _running_totals(events_before, series, spec)
    refuse_unusable_ids(running.contacts.get_column("contact_id"), "the events", rows=False)
    frames = []
    for day in days:
        rows = _snapshot(running, series, aggregates, day, contacts, spec=spec, rules=rules)
        frames.append(rows if each is None else each(_moment(day), rows))
    # each snapshot is sorted by contact, and they come in date order
    return pl.concat(frames, how="vertical", rechunk=False)


# --- the series: what the daily partials hold -------------------------------------------------


@dataclass(frozen=True)
class _Series:
    """One daily partial column: a kind of per-day aggregate over the events of one filter."""

    kind: str  # n: count, v: value sum, d: active day (0/1), st: session starts, t: times
    filter: _Filter

    @property
    def column(self) -> str:
        canonical = repr([None if part is None else sorted(part) for part in self.filter])
        return f"{self.kind}__{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def _filter_of(aggregate: Aggregate) -> _Filter:
    return (
        aggregate.event_types,
        aggregate.channels,
        aggregate.exclude_event_types,
        aggregate.exclude_channels,
    )


_KIND_SERIES = {
    "count": ("n",),
    "sum": ("v",),
    "distinct_days": ("n", "d"),
    "sessions": ("st",),
    "days_since_last": ("n", "t"),
    "days_since_first": ("n", "t"),
}


def _series_of(aggregates: Iterable[Aggregate]) -> dict[tuple[str, _Filter], _Series]:
    series: dict[tuple[str, _Filter], _Series] = {}
    for aggregate in aggregates:
        for kind in _KIND_SERIES[aggregate.kind]:
            key = (kind, _filter_of(aggregate))
            series.setdefault(key, _Series(kind, key[1]))
    return series


# --- steps 1 and 2: one pass to running totals at the end of each contact's day ---------------


@dataclass(frozen=True)
class _Running:
    """Running totals at the last event of each contact's day, and what is fixed per contact."""

    rows: pl.DataFrame  # contact_id, day, _contact, totals; sorted by _contact, day
    contacts: pl.DataFrame  # _contact (its row here), contact_id, _before_first
    # per "t" series, the times of the filter's matching events in contact-then-time order: the
    # k-th (from 0) is the event that brings the filter's running count to k + 1
    times: dict[str, pl.Series]
    # per day boundary (None: before the first day), each contact's row before it: weekly
    # snapshots share most of their boundaries (one's 7-day window starts at the previous one)
    before: dict[int | None, pl.Series] = field(default_factory=dict)

    def rows_before(self, boundary: int | None) -> pl.Series:
        """Per contact, the row holding its totals just before ``boundary`` (None: before its
        first day): its last day before it or, with none, the row before its first day, whose
        integer totals are what the contact's stood at then. Null where no such row exists
        (the first contact's first day): the totals there are zero.

        Each contact's rows are a run starting at its first row; a running count of the rows
        before ``boundary``, read at the ends of the runs, says how many of each run's rows
        come before it (one pass over the rows: half the time of a binary search per
        contact)."""
        if boundary not in self.before:
            before = self.contacts.get_column("_before_first")
            if boundary is not None:
                first = before + 1
                end = first.shift(-1, fill_value=self.rows.height)
                dtype = pl.Int32 if self.rows.height < 2**31 else pl.Int64
                earlier = pl.concat(
                    [
                        pl.Series([0], dtype=dtype),
                        self.rows.select(
                            (pl.col("day") < boundary).cast(dtype).cum_sum()
                        ).to_series(),
                    ]
                )
                before = before + (earlier.gather(end) - earlier.gather(first)).cast(pl.Int64)
            self.before[boundary] = pl.select(
                pl.when(before >= 0).then(before).cast(pl.UInt32)
            ).to_series()
        return self.before[boundary]

    def forget_before(self, day: int) -> None:
        """Drop the rows found for boundaries before ``day`` (no later snapshot reads them)."""
        for boundary in [b for b in self.before if b is not None and b < day]:
            del self.before[boundary]


_INT32_EVENTS = 2**31  # below this many events, integer totals are 32-bit
_BATCH = 16  # series computed at a time over all events: bounds the memory of the running sums


def _running_totals(
    events: pl.LazyFrame, series: dict[tuple[str, _Filter], _Series], spec: FeatureSpec
) -> _Running:
    """Sort the events by contact and time once, run every series' total along them, and keep
    the row that ends each contact's day: the totals as they stand at that day's midnight.

    Integer totals (counts, session starts, active days) run across contacts, so a contact's
    amount between two days is an exact difference; value sums restart per contact so no other
    contact's money enters a float difference."""
    sorted_events = (
        events.select(
            "contact_id",
            # enums: each series' filter tests codes, not strings, along every event; a name
            # outside the contract becomes null, and is refused below
            pl.col("event_type").cast(pl.Enum(EVENT_TYPES), strict=False),
            pl.col("channel").cast(pl.Enum(CHANNELS), strict=False),
            "value",
            _us=pl.col("timestamp").dt.epoch("us"),
        )
        .sort("contact_id", "_us")
        .with_columns(
            _contact=pl.col("contact_id").rle_id(),
            day=(pl.col("_us") // MICROS_PER_DAY).cast(pl.Int32),
        )
    )
    frame = sorted_events.collect()
    if frame.get_column("event_type").null_count() or frame.get_column("channel").null_count():
        raise_unknown_vocabulary(events)  # as every builder does
    if (
        any(s.kind == "v" for s in series.values())
        and not frame.select(pl.col("value").is_finite().fill_null(True).all()).item()
    ):
        raise InputError(NOT_FINITE_VALUE)  # as every builder does
    # integer totals run across every event, so they stay below the number of events: 32 bits
    # when that allows it, which halves the memory the snapshots' gathers read
    counts = pl.Int32 if frame.height < _INT32_EVENTS else pl.Int64
    sessions = [s for s in series.values() if s.kind == "st"]
    if sessions:
        frame = frame.with_columns(
            [_session_start(s.filter, spec).alias(s.column) for s in sessions]
        )
    day_ends = frame.select(
        (
            (pl.col("_contact") != pl.col("_contact").shift(-1))
            | (pl.col("day") != pl.col("day").shift(-1))
        ).fill_null(True)
    ).to_series()
    running = [frame.filter(day_ends).select("contact_id", "_contact", "day")]
    along = [s for s in series.values() if s.kind in ("n", "st", "v")]
    for start in range(0, len(along), _BATCH):
        batch = along[start : start + _BATCH]
        running.append(frame.select([_running(s, counts) for s in batch]).filter(day_ends))
    rows = pl.concat(running, how="horizontal")
    # active days: a day counts when the day's count (a difference of totals) is positive
    rows = rows.with_columns(
        [
            (pl.col(n := series[("n", s.filter)].column).diff().fill_null(pl.col(n)) > 0)
            .cast(counts)
            .cum_sum()
            .alias(s.column)
            for s in series.values()
            if s.kind == "d"
        ]
    )
    first_days = pl.col("_contact") != pl.col("_contact").shift(1)
    contacts = rows.select(
        "_contact",
        "contact_id",
        # the row before the contact's first day (-1 for the first contact): its integer
        # totals are what the contact's stood at before its first event
        (pl.int_range(pl.len(), dtype=pl.Int64) - 1).alias("_before_first"),
    ).filter(first_days.fill_null(True))
    timed = [s for s in series.values() if s.kind == "t"]
    times = pl.collect_all(
        [frame.lazy().select(pl.col("_us").filter(_mask(s.filter)).alias(s.column)) for s in timed]
    )
    return _Running(
        rows=rows,
        contacts=contacts,
        times={s.column: t.to_series() for s, t in zip(timed, times, strict=True)},
    )


def _running(item: _Series, counts: type[pl.DataType]) -> pl.Expr:
    mask = _mask(item.filter)
    if item.kind == "n":
        return mask.cast(counts).cum_sum().alias(item.column)
    if item.kind == "st":
        return pl.col(item.column).cast(counts).cum_sum()
    amount = pl.when(mask).then(pl.col("value")).fill_null(0.0)  # v
    return amount.cum_sum().over("_contact").alias(item.column)


def _mask(filter_: _Filter) -> pl.Expr:
    """Whether each event passes the filter; an event without a type or channel passes none
    (as in the engine), and is never null: a null would leave its day's running total null,
    which reads as zero and would hand the next contact this one's events."""
    event_types, channels, exclude_types, exclude_channels = filter_
    return matches(event_types, channels, exclude_types, exclude_channels).fill_null(False)


def _session_start(filter_: _Filter, spec: FeatureSpec) -> pl.Expr:
    """Whether each event (sorted by contact and time) starts a session of the filter: it
    matches, and no matching event of the same contact lies within the gap before it. Starts
    depend only on earlier events, so one flag serves every snapshot after the event."""
    gap_us = spec.session_gap_us
    mask = _mask(filter_)
    # the previous matching event's contact and time, carried forward over other events
    previous_us = pl.when(mask).then(pl.col("_us")).shift(1).forward_fill()
    previous_contact = pl.when(mask).then(pl.col("_contact")).shift(1).forward_fill()
    new_session = (
        previous_us.is_null()
        | (previous_contact != pl.col("_contact"))
        | ((pl.col("_us") - previous_us) > gap_us)
    )
    return mask & new_session


# --- step 3: one snapshot ----------------------------------------------------------------------


def _snapshot(
    running: _Running,
    series: dict[tuple[str, _Filter], _Series],
    aggregates: list[Aggregate],
    day: int,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    spec: FeatureSpec,
    rules: RulesSettings,
) -> pl.DataFrame:
    """The features as of midnight of ``day``, gathered from the running totals."""
    as_of = _moment(day)
    running.forget_before(day - max((a.window_days or 0) for a in aggregates))
    everyone = _Lookup(running, day, running.contacts)
    any_event = next(a for a in aggregates if a.name == ANY_EVENT)
    active = everyone.features([any_event], series).get_column(any_event.name) > 0
    lookup = everyone.restricted_to(active, contacts)
    frame = lookup.features(aggregates, series)
    return finish_features(frame, aggregates, contacts, as_of=as_of, spec=spec, rules=rules)


class _Lookup:
    """Gathers running totals at day boundaries for a set of contacts (the targets)."""

    def __init__(self, running: _Running, day: int, targets: pl.DataFrame) -> None:
        self._running = running
        self._day = day
        # _contact (null: no events at all), contact_id, _before_first
        self._targets = targets
        self._aligned: dict[int | None, pl.Series] = {}

    def restricted_to(self, active: pl.Series, contacts: pa.Table | pl.DataFrame | None) -> _Lookup:
        """The contacts with ``active`` true and those listed in ``contacts`` (if any), in
        contact_id order: the order of the running rows, so the gathers read them forwards,
        and the order of the output, so it needs no sort."""
        everyone = self._running.contacts
        targets = everyone.filter(active)
        if contacts is not None:
            ids = with_listed_contacts(targets.select("contact_id"), contacts)
            listed = ids.slice(targets.height).join(
                everyone, on="contact_id", how="left", maintain_order="left"
            )
            if listed.height:
                targets = pl.concat([targets, listed.select(targets.columns)]).sort("contact_id")
        return _Lookup(self._running, self._day, targets)

    def rows_before(self, boundary: int | None) -> pl.Series:
        """Per target, ``_Running.rows_before``; null for targets with no events at all."""
        if boundary not in self._aligned:
            everyone = self._running.rows_before(boundary)
            if self._targets is self._running.contacts:
                self._aligned[boundary] = everyone
            else:
                self._aligned[boundary] = everyone.gather(self._targets.get_column("_contact"))
        return self._aligned[boundary]

    def times(self, item: _Series) -> pl.Series:
        """The times of the matching events of a "t" series, numbered by its running count."""
        return self._running.times[item.column]

    def target_column(self, name: str) -> pl.Series:
        """A per-contact column of the targets (``_before_first``)."""
        return self._targets.get_column(name)

    def features(
        self, aggregates: Sequence[Aggregate], series: dict[tuple[str, _Filter], _Series]
    ) -> pl.DataFrame:
        """``contact_id`` and every aggregate for the targets, in one select over the running
        rows: each feature gathers the totals at its boundaries and takes their difference, so
        no table of gathered totals is built first (Polars runs the features in parallel)."""
        formulas = _Formulas(self._day, series, self)
        columns = [formulas.aggregate(a) for a in aggregates]
        return (
            self._running.rows.lazy()
            .select(pl.lit(self._targets.get_column("contact_id")), *columns)
            # gathers over whole columns: not for streaming; and no common subexpressions, which
            # Polars 2.1 would evaluate as columns of the running rows (whose length differs)
            .collect(engine="in-memory", optimizations=_NO_CSE)
        )


_NO_CSE = pl.QueryOptFlags(comm_subexpr_elim=False)


class _Formulas:
    """Each aggregate as an expression over the running rows: the totals gathered at its
    boundaries (the rows of a ``_Lookup``), one for each target."""

    def __init__(
        self, day: int, series: dict[tuple[str, _Filter], _Series], lookup: _Lookup
    ) -> None:
        self._day = day
        self._series = series
        self._lookup = lookup

    def _total(self, item: _Series, boundary: int | None) -> pl.Expr:
        """The series' running total just before ``boundary`` (None: before the first day)."""
        at = self._lookup.rows_before(boundary)
        gathered = pl.col(item.column).gather(at)
        if item.kind == "v":  # restarts per contact: only the contact's own rows count
            first = self._lookup.target_column("_before_first")
            return pl.when(pl.lit(at) > pl.lit(first)).then(gathered).otherwise(0.0)
        return gathered.fill_null(0) if at.null_count() else gathered

    def _amount(self, item: _Series, window_days: int | None) -> pl.Expr:
        """The series' amount in [day - window, day), or in all history before day (value sums
        restart per contact, so theirs is the total at day itself)."""
        start = None if window_days is None else self._day - window_days
        now = self._total(item, self._day)
        if window_days is None and item.kind == "v":
            return now
        return now - self._total(item, start)

    def aggregate(self, aggregate: Aggregate) -> pl.Expr:
        filter_ = _filter_of(aggregate)
        kind = aggregate.kind
        if kind in ("count", "sum", "distinct_days", "sessions"):
            code = {"count": "n", "sum": "v", "distinct_days": "d", "sessions": "st"}[kind]
            amount = self._amount(self._series[(code, filter_)], aggregate.window_days)
            return amount.cast(pl.Float64 if kind == "sum" else pl.Int32).alias(aggregate.name)
        # recency: the matching event numbered by the running count, when the contact has one
        # before the snapshot (the count before its first day is below the count now)
        counted = self._series[("n", filter_)]
        now, before_first = self._total(counted, self._day), self._total(counted, None)
        number = now - 1 if kind == "days_since_last" else before_first
        times = self._lookup.times(self._series[("t", filter_)])
        moment = pl.lit(times).gather(pl.when(now > before_first).then(number))
        now_us = self._day * MICROS_PER_DAY
        return ((now_us - moment).cast(pl.Float64) / MICROS_PER_DAY).alias(aggregate.name)


def _snapshot_days(as_of_dates: Iterable[dt.date]) -> list[int]:
    """Snapshot dates as days since the epoch, sorted and unique; a datetime must be midnight
    UTC (a date is taken as midnight UTC)."""
    days: set[int] = set()
    for value in as_of_dates:  # any iterable: a list, a generator, a pandas or Polars series
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise InputError(f"as_of {value} has no time zone; give a date or a UTC datetime")
            value = value.astimezone(dt.UTC)
            if value.time() != dt.time(0):
                raise InputError(
                    f"snapshot {value.isoformat()} is not at midnight UTC; training snapshots "
                    "are whole days (build_contact_features takes any moment)"
                )
            value = value.date()
        days.add((value - dt.date(1970, 1, 1)).days)
    if not days:
        raise InputError("as_of_dates is empty; give at least one snapshot date")
    return sorted(days)


def _moment(day: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)
