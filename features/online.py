"""The online path: one contact's features from the raw events passed in a request, in
process, with no database round trip and no DataFrame (a one-row DataFrame alone costs more
than the whole computation).

It compiles the same ``FeatureSpec`` as the batch engine and gives the same values; tests hold
the two equal on many random contacts and dates.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import numbers
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from features.errors import NOT_FINITE_VALUE, InputError
from features.schema import as_utc
from features.settings import RulesSettings, load_rules_settings
from features.spec import MICROS_PER_DAY, Aggregate, FeatureSpec, evaluate
from features.stages import stage_from_signals
from features.vocabulary import (
    ADVOCACY_EVENTS,
    CHANNELS,
    EVENT_SIGNALS,
    EVENT_TYPES,
    PURCHASE_EVENTS,
    stage_rank,
    unknown_vocabulary_message,
)

_EVENT_TYPES = frozenset(EVENT_TYPES)
_CHANNELS = frozenset(CHANNELS)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class _Group:
    """The events of one (event_type, channel), ascending in time."""

    times: list[int] = field(default_factory=list)  # microseconds since the epoch
    values: list[float | None] = field(default_factory=list)


def build_online_features(
    events: Iterable[Mapping[str, Any]],
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    contact: Mapping[str, Any] | None = None,
    rules: RulesSettings | None = None,
    dates: Collection[str] = (),
) -> dict[str, Any]:
    """Features of one contact as of ``as_of`` from its events (mappings with ``timestamp``
    (aware datetime), ``event_type``, ``channel`` and optionally ``value``). Events at or after
    ``as_of`` are ignored. ``contact`` holds its attributes, as in the contacts table;
    ``dates`` names its date attributes, so that a missing one is a missing ``days_since_``
    feature, as in the batch engines, which read the kind from the table's column."""
    as_of = as_utc(as_of, "as_of")
    now_us = _micros(as_of)
    groups = _group(events, now_us, refuse_non_finite=spec.sums_values)
    values: dict[str, Any] = {}
    plan = _matching_plan(spec, frozenset(groups))
    for aggregate, keys in zip(spec.aggregates, plan, strict=True):
        values[aggregate.name] = _aggregate(aggregate, keys, groups, now_us, spec)
    for derived in spec.derived:
        values[derived.name] = evaluate(derived.tree, lambda name: _number(values[name]))
    if spec.rules_stage:
        values["rules_stage"] = _rules_stage(groups, now_us, rules or load_rules_settings())
    if contact is not None:
        values.update(_attributes(contact, as_of=as_of, spec=spec, dates=dates))
    return values


def _micros(moment: dt.datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _group(
    events: Iterable[Mapping[str, Any]], now_us: int, *, refuse_non_finite: bool
) -> dict[tuple[str, str], _Group]:
    rows = []
    for event in events:
        moment = event["timestamp"]
        if moment.tzinfo is None:
            raise ValueError("event timestamps must be timezone-aware (UTC)")
        at = _micros(moment)
        if at < now_us:  # strictly before as_of: the future is never seen
            value = event.get("value")
            if value is not None:
                value = float(value)
                if refuse_non_finite and not math.isfinite(value):
                    raise InputError(NOT_FINITE_VALUE)  # as every builder does
            rows.append((at, event["event_type"], event["channel"], value))
    rows.sort(key=lambda row: row[0])
    groups: dict[tuple[str, str], _Group] = {}
    for at, event_type, channel, value in rows:
        group = groups.setdefault((event_type, channel), _Group())
        group.times.append(at)
        group.values.append(value)
    return groups


Keys = tuple[tuple[str, str], ...]
# (spec fingerprint, the (event_type, channel) pairs of a request) -> per aggregate of the spec,
# the pairs it counts. Bounded: the pairs are the world's to choose; contacts share few mixes
_PLANS: dict[tuple[str, frozenset[tuple[str, str]]], tuple[Keys, ...]] = {}
_MAX_PLANS = 8192


def _matching_plan(spec: FeatureSpec, pairs: frozenset[tuple[str, str]]) -> tuple[Keys, ...]:
    """Which of a contact's (event_type, channel) pairs each aggregate reads, in the spec's
    order: one look-up per request instead of a filter per aggregate."""
    key = (spec.fingerprint, pairs)
    plan = _PLANS.get(key)
    if plan is None:
        _check_vocabulary(pairs)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = tuple(
            tuple(sorted(k for k in pairs if a.matches(*k))) for a in spec.aggregates
        )
    return plan


def _check_vocabulary(pairs: Iterable[tuple[str, str]]) -> None:
    """Every builder refuses an event type or channel outside the contract (the batch engines
    as well), so that none counts an event another would not; checked once per new mix."""
    for event_type, channel in pairs:
        for what, value, vocabulary in (
            ("event_type", event_type, _EVENT_TYPES),
            ("channel", channel, _CHANNELS),
        ):
            if value not in vocabulary:
                raise InputError(unknown_vocabulary_message(what, [value]))


def _aggregate(
    aggregate: Aggregate,
    keys: Keys,
    groups: dict[tuple[str, str], _Group],
    now_us: int,
    spec: FeatureSpec,
) -> float | int | None:
    """One aggregate over the groups ``keys`` names (those it matches)."""
    start = (
        None if aggregate.window_days is None else now_us - aggregate.window_days * MICROS_PER_DAY
    )
    kind = aggregate.kind
    if kind == "count":
        return sum(len(groups[k].times) - _first_at(groups[k].times, start) for k in keys)
    if kind == "sum":
        total = 0.0
        for k in keys:
            group = groups[k]
            for value in group.values[_first_at(group.times, start) :]:
                if value is not None:
                    total += value
        return total
    if kind == "distinct_days":
        days = {
            at // MICROS_PER_DAY
            for k in keys
            for at in groups[k].times[_first_at(groups[k].times, start) :]
        }
        return len(days)
    if kind == "sessions":
        times = sorted(at for k in keys for at in groups[k].times)
        gap = spec.session_gap_us
        sessions, previous = 0, None
        for at in times:
            if (previous is None or at - previous > gap) and (start is None or at >= start):
                sessions += 1
            previous = at
        return sessions
    if not keys:
        return None
    if kind == "days_since_last":
        return (now_us - max(groups[k].times[-1] for k in keys)) / MICROS_PER_DAY
    return (now_us - min(groups[k].times[0] for k in keys)) / MICROS_PER_DAY  # days_since_first


def _first_at(times: list[int], start: int | None) -> int:
    return 0 if start is None else bisect.bisect_left(times, start)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _rules_stage(groups: dict[tuple[str, str], _Group], now_us: int, rules: RulesSettings) -> str:
    start = now_us - rules.lookback_days * MICROS_PER_DAY
    base_rank = -1
    visit_days: set[int] = set()
    purchases_ever = purchases_in_window = 0
    advocacy_in_window = False
    for (event_type, _), group in groups.items():
        in_window = len(group.times) - _first_at(group.times, start)
        if event_type in PURCHASE_EVENTS:
            purchases_ever += len(group.times)
            purchases_in_window += in_window
        elif event_type in ADVOCACY_EVENTS:
            advocacy_in_window = advocacy_in_window or in_window > 0
        elif in_window and EVENT_SIGNALS.get(event_type) is not None:
            base_rank = max(base_rank, stage_rank(EVENT_SIGNALS[event_type] or "dormant"))
        if event_type == "page_view":
            visit_days.update(
                at // MICROS_PER_DAY for at in group.times[_first_at(group.times, start) :]
            )
    return stage_from_signals(
        base_rank=base_rank,
        visit_days=len(visit_days),
        purchases_ever=purchases_ever,
        purchases_in_window=purchases_in_window,
        advocacy_in_window=advocacy_in_window,
        settings=rules,
    )


# values of the kinds the batch engines leave out of the attributes (lists, structs, binary,
# times of day, durations): not features
_NOT_FEATURE_KINDS = (
    list,
    tuple,
    set,
    frozenset,
    Mapping,
    bytes,
    bytearray,
    memoryview,
    dt.time,
    dt.timedelta,
)


def _attributes(
    contact: Mapping[str, Any], *, as_of: dt.datetime, spec: FeatureSpec, dates: Collection[str]
) -> dict[str, Any]:
    """The attribute features of one contacts-table row, as the batch engines make them from
    the table's columns: a date as days since it (missing when at or after ``as_of``, or when the
    value of a name in ``dates`` is missing), a number (a decimal too) or boolean as a float,
    other scalars as text; lists, mappings, bytes, times of day and durations are not
    features and are left out (so are names starting with '_': ``attribute_names``)."""
    named: list[tuple[str, str, Any]] = []
    for name in spec.attribute_names(contact):
        value = contact.get(name)
        if isinstance(value, dt.datetime | dt.date):
            moment = (
                value
                if isinstance(value, dt.datetime)
                else dt.datetime.combine(value, dt.time(), tzinfo=dt.UTC)
            )
            moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
            days = (as_of - moment).total_seconds() / 86_400
            named.append((f"days_since_{name}", name, days if days > 0 else None))
        elif value is None and name in dates:
            named.append((f"days_since_{name}", name, None))
        elif isinstance(value, bool | numbers.Real | Decimal):  # numpy's numbers too
            named.append((name, name, float(value)))
        elif isinstance(value, _NOT_FEATURE_KINDS):
            continue  # as the batch engines leave these columns out
        else:
            named.append((name, name, None if value is None else str(value)))
    out = {output: value for output, _, value in named}
    # a name taken twice, or a feature's, but for case: refused as the batch engines refuse
    # it (the names looked at, without case, only then, as this runs for every request)
    without_case = {output.lower() for output in out}
    if len(without_case) < len(named) or not without_case.isdisjoint(spec.taken_without_case):
        spec.check_attribute_columns((output, name) for output, name, _ in named)
    return out
