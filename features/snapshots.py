"""Features for many snapshot dates in one pass over the events: the training frame.

``build_contact_features`` answers "as of this moment"; training needs the same features as of
many dates (weekly snapshots, say), and scanning the events once per date would cost one full
pass each. Instead:

1. One pass over the events groups them by contact and UTC day into *daily partials*: per
   filter of the spec, the day's count, value sum, session starts and first/last timestamp.
2. Running totals per contact (cumulative sums in contact-then-day order) turn every windowed
   count or sum into a difference of two running totals: the one at the last day before the
   snapshot, minus the one at the last day before the window starts.
3. Each snapshot then only gathers, per eligible contact, the rows of the boundaries it needs
   (vectorised, no group-by), so a snapshot costs about the size of its output.

Snapshots are at midnight UTC, so "events strictly before as_of" is exactly "days before the
snapshot day", and windows of whole days line up with day boundaries. The values equal
``build_contact_features`` at each date; tests hold the two equal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.engine import (
    ANY_EVENT,
    EventsInput,
    finish_features,
    matches,
    scan_events,
    with_internal_aggregates,
    with_listed_contacts,
)
from features.errors import InputError
from features.settings import RulesSettings, load_rules_settings
from features.spec import MICROS_PER_DAY, Aggregate, FeatureSpec

_Filter = tuple[frozenset[str] | None, frozenset[str] | None, frozenset[str], frozenset[str]]


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
    (training samples and narrows them there), so the frame never holds more than it keeps."""
    days = _snapshot_days(as_of_dates)
    rules = rules or load_rules_settings()
    aggregates = with_internal_aggregates(spec, rules)
    series = _series_of(aggregates)
    last_moment = _moment(days[-1])
    events_before = scan_events(events).filter(pl.col("timestamp") < last_moment)
    running = _running_totals(events_before, series, spec)
    cache: dict[int, pl.DataFrame] = {}
    frames = []
    for day in days:
        rows = _snapshot(running, series, aggregates, day, contacts, cache, spec=spec, rules=rules)
        frames.append(rows if each is None else each(_moment(day), rows))
    # each snapshot is sorted by contact, and they come in date order
    return pl.concat(frames, how="vertical", rechunk=False)


# --- the series: what the daily partials hold -------------------------------------------------


@dataclass(frozen=True)
class _Series:
    """One daily partial column: a kind of per-day aggregate over the events of one filter."""

    kind: str  # n: count, v: value sum, d: active day (0/1), st: session starts, last, first
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
    "days_since_last": ("n", "last"),
    "days_since_first": ("first",),
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

    rows: pl.DataFrame  # contact_id, day, _row, _contact, _next_contact, _next_day, totals
    contacts: pl.DataFrame  # _contact, contact_id, totals before its first day, first times


_BATCH = 16  # series computed at a time over all events: bounds the memory of the running sums


def _running_totals(
    events: pl.LazyFrame, series: dict[tuple[str, _Filter], _Series], spec: FeatureSpec
) -> _Running:
    """Sort the events by contact and time once, run every series' total along them, and keep
    the row that ends each contact's day: the totals as they stand at that day's midnight.

    Integer totals (counts, session starts, active days) run across contacts, so a contact's
    amount between two days is an exact difference; value sums restart per contact so no other
    contact's money enters a float difference; last-event times carry forward."""
    frame = (
        events.select(
            "contact_id",
            "event_type",
            "channel",
            "value",
            _us=pl.col("timestamp").dt.epoch("us"),
        )
        .sort("contact_id", "_us")
        .with_columns(
            _contact=pl.col("contact_id").rle_id(),
            day=(pl.col("_us") // MICROS_PER_DAY).cast(pl.Int32),
        )
        .collect()
    )
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
    along = [s for s in series.values() if s.kind in ("n", "st", "v", "last")]
    for start in range(0, len(along), _BATCH):
        batch = along[start : start + _BATCH]
        running.append(frame.select([_running(s) for s in batch]).filter(day_ends))
    rows = pl.concat(running, how="horizontal")
    # active days: a day counts when the day's count (a difference of totals) is positive
    rows = rows.with_columns(
        [
            (pl.col(n := series[("n", s.filter)].column).diff().fill_null(pl.col(n)) > 0)
            .cast(pl.Int64)
            .cum_sum()
            .alias(s.column)
            for s in series.values()
            if s.kind == "d"
        ]
    ).with_row_index("_row")
    integer = [s.column for s in series.values() if s.kind in ("n", "st", "d")]
    first_days = pl.col("_contact") != pl.col("_contact").shift(1)
    contacts = rows.select(
        "_contact",
        "contact_id",
        # what the integer totals stood at just before each contact's first day
        *[pl.col(c).shift(1, fill_value=0).alias(f"{c}__base") for c in integer],
    ).filter(first_days.fill_null(True))
    firsts = [s for s in series.values() if s.kind == "first"]
    if firsts:
        first_times = frame.group_by("_contact").agg(
            [pl.col("_us").filter(_mask(s.filter)).min().alias(s.column) for s in firsts]
        )
        contacts = contacts.join(first_times, on="_contact", how="left")
    rows = rows.with_columns(
        _next_contact=pl.col("_contact").shift(-1), _next_day=pl.col("day").shift(-1)
    )
    return _Running(rows=rows, contacts=contacts)


def _running(item: _Series) -> pl.Expr:
    mask = _mask(item.filter)
    if item.kind == "n":
        return mask.cast(pl.Int64).cum_sum().alias(item.column)
    if item.kind == "st":
        return pl.col(item.column).cast(pl.Int64).cum_sum()
    if item.kind == "v":
        amount = pl.when(mask).then(pl.col("value")).fill_null(0.0)
        return amount.cum_sum().over("_contact").alias(item.column)
    return pl.when(mask).then(pl.col("_us")).forward_fill().alias(item.column)  # last


def _mask(filter_: _Filter) -> pl.Expr:
    event_types, channels, exclude_types, exclude_channels = filter_
    return matches(event_types, channels, exclude_types, exclude_channels)


def _session_start(filter_: _Filter, spec: FeatureSpec) -> pl.Expr:
    """Whether each event (sorted by contact and time) starts a session of the filter: it
    matches, and no matching event of the same contact lies within the gap before it. Starts
    depend only on earlier events, so one flag serves every snapshot after the event."""
    gap_us = int(spec.session_gap_minutes * 60 * 1_000_000)
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
    cache: dict[int, pl.DataFrame],
    *,
    spec: FeatureSpec,
    rules: RulesSettings,
) -> pl.DataFrame:
    """The features as of midnight of ``day``, gathered from the running totals."""
    as_of = _moment(day)
    everyone = _Lookup(running, day, running.contacts, cache)
    any_event = next(a for a in aggregates if a.name == ANY_EVENT)
    active = everyone.amount(series[("n", _filter_of(any_event))], any_event.window_days) > 0
    eligible = running.contacts.filter(active).select("contact_id")
    lookup = everyone.restricted_to(with_listed_contacts(eligible, contacts))
    frame = pl.DataFrame([lookup.contact_ids, *(lookup.aggregate(a, series) for a in aggregates)])
    return finish_features(frame, aggregates, contacts, as_of=as_of, spec=spec, rules=rules)


class _Lookup:
    """Gathers running totals at day boundaries for a set of contacts (the targets)."""

    def __init__(
        self, running: _Running, day: int, targets: pl.DataFrame, cache: dict[int, pl.DataFrame]
    ) -> None:
        self._running = running
        self._day = day
        self._targets = targets  # _contact (null: no events at all), contact_id, bases, firsts
        self._cache = cache  # boundary day -> (_contact, _row) of the last row before it
        self._aligned: dict[int, pl.Series] = {}

    def restricted_to(self, eligible: pl.DataFrame) -> _Lookup:
        targets = eligible.select("contact_id").join(
            self._running.contacts, on="contact_id", how="left", maintain_order="left"
        )
        return _Lookup(self._running, self._day, targets, self._cache)

    @property
    def contact_ids(self) -> pl.Series:
        return self._targets.get_column("contact_id")

    def _rows_before(self, boundary: int) -> pl.Series:
        """Per target, the row of its last day before ``boundary`` (null: none)."""
        if boundary not in self._aligned:
            if boundary not in self._cache:
                rows = self._running.rows
                is_last = (pl.col("day") < boundary) & (
                    (pl.col("_next_contact") != pl.col("_contact"))
                    | pl.col("_next_contact").is_null()
                    | (pl.col("_next_day") >= boundary)
                )
                self._cache[boundary] = rows.filter(is_last).select("_contact", "_row")
            self._aligned[boundary] = (
                self._targets.select("_contact")
                .join(self._cache[boundary], on="_contact", how="left", maintain_order="left")
                .get_column("_row")
            )
        return self._aligned[boundary]

    def _total(self, item: _Series, boundary: int) -> pl.Series:
        gathered = self._running.rows.get_column(item.column).gather(self._rows_before(boundary))
        if item.kind == "v":  # restarts per contact: nothing before its first day is 0
            return gathered.fill_null(0.0)
        return gathered.fill_null(self._targets.get_column(f"{item.column}__base"))

    def amount(self, item: _Series, window_days: int | None) -> pl.Series:
        """The series' amount in [day - window, day), or in all history before day."""
        now = self._total(item, self._day)
        if window_days is not None:
            return now - self._total(item, self._day - window_days)
        if item.kind == "v":
            return now
        return now - self._targets.get_column(f"{item.column}__base")

    def aggregate(
        self, aggregate: Aggregate, series: dict[tuple[str, _Filter], _Series]
    ) -> pl.Series:
        filter_ = _filter_of(aggregate)
        kind = aggregate.kind
        if kind in ("count", "sum", "distinct_days", "sessions"):
            code = {"count": "n", "sum": "v", "distinct_days": "d", "sessions": "st"}[kind]
            amount = self.amount(series[(code, filter_)], aggregate.window_days)
            return amount.cast(pl.Float64 if kind == "sum" else pl.Int64).alias(aggregate.name)
        now_us = self._day * MICROS_PER_DAY
        if kind == "days_since_last":
            seen = self.amount(series[("n", filter_)], None) > 0
            last = self._running.rows.get_column(series[("last", filter_)].column).gather(
                self._rows_before(self._day)
            )
            moment = pl.select(pl.when(seen).then(last)).to_series()
        else:  # days_since_first: the first-ever matching event, if it is before the snapshot
            first = self._targets.get_column(series[("first", filter_)].column)
            moment = pl.select(pl.when(first < now_us).then(first)).to_series()
        return ((now_us - moment).cast(pl.Float64) / MICROS_PER_DAY).alias(aggregate.name)


def _snapshot_days(as_of_dates: Sequence[dt.date]) -> list[int]:
    """Snapshot dates as days since the epoch, sorted and unique; a datetime must be midnight
    UTC (a date is taken as midnight UTC)."""
    if not as_of_dates:
        raise InputError("as_of_dates is empty; give at least one snapshot date")
    days: set[int] = set()
    for value in as_of_dates:
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
    return sorted(days)


def _moment(day: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)
