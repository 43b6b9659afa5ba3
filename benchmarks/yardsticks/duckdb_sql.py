"""The shipped spec's event features, hand-written as one DuckDB SQL query: the yardstick the
engine is measured against.

The counts per event type and channel and the last event of each type come from ``PIVOT``
(DuckDB groups by contact and event type first, then spreads the few rows per contact into
columns), which is faster than one ``count(*) FILTER (...)`` per feature: with a million
contacts, 120 filtered aggregates per group cost about twice as much. The per-contact totals
use ``FILTER``. Active days do not use ``count(DISTINCT ...) FILTER``, which is slower still:
the events are first reduced to one row per contact and UTC date holding the day's last event,
and a date counts in a window when that event lies inside it. Sessions come from ``lag()`` over
only the events that can matter (the last 28 days and 30 minutes). Times are compared as integer
microseconds, so no time zone setting can shift a date.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa

from benchmarks.yardsticks import (
    ACTIVE_DAYS_WINDOWS,
    COUNT_WINDOWS,
    ELIGIBLE_DAYS,
    EVENT_COUNT_WINDOWS,
    EVENT_TYPES,
    MICROS_PER_DAY,
    NOT_IN_SESSIONS,
    RECENCY_TYPES,
    SEND,
    SESSION_GAP,
    SESSION_WINDOWS,
    SHARE_CHANNELS,
)


def build(events_path: Path, as_of: dt.datetime) -> pa.Table:
    """One row per contact with an event in the 90 days before ``as_of``: contact_id, as_of and
    the 144 features."""
    with duckdb.connect() as connection:
        query = connection.sql(_query(as_of), params={"events": str(events_path), "as_of": as_of})
        features = query.to_arrow_table()
    # added here rather than in SQL, where a TIMESTAMPTZ carries the session's time zone name
    moment = pa.scalar(as_of, pa.timestamp("us", tz="UTC"))
    return features.append_column("as_of", pa.repeat(moment, features.num_rows))


def _micros(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _query(as_of: dt.datetime) -> str:
    now = _micros(as_of)

    def start(days: int) -> int:
        return now - days * MICROS_PER_DAY

    def listed(values: tuple[str, ...]) -> str:
        return ", ".join(f"'{v}'" for v in values)

    def joined(columns: list[str]) -> str:
        return ",\n            ".join(columns)

    gap = SESSION_GAP // dt.timedelta(microseconds=1)
    done = f"event_type <> '{SEND}'"
    in_window_flags = [f"(t >= {start(w)})::INTEGER AS in_{w}d" for w in COUNT_WINDOWS]
    by_type_values = [f"sum(in_{w}d) AS count_{w}d" for w in COUNT_WINDOWS] + ["max(t) AS last"]

    per_contact = [
        f"count(*) FILTER (WHERE {done} AND t >= {start(w)}) AS event_count_{w}d"
        for w in EVENT_COUNT_WINDOWS
    ]
    per_contact += [
        f"coalesce(sum(value) FILTER (WHERE event_type = 'purchase' AND t >= {start(w)}), 0)"
        f"::DOUBLE AS purchase_value_sum_{w}d"
        for w in (28, 90)
    ]
    per_contact += [
        "coalesce(sum(value) FILTER (WHERE event_type = 'purchase'), 0)::DOUBLE "
        "AS purchase_value_sum_all",
        "count(*) FILTER (WHERE event_type = 'purchase') AS purchase_count_all",
        f"max(t) FILTER (WHERE {done}) AS last_event",
        f"min(t) FILTER (WHERE {done}) AS first_event",
    ]
    active_days = [
        f"count(*) FILTER (WHERE last_t >= {start(w)}) AS active_days_{w}d"
        for w in ACTIVE_DAYS_WINDOWS
    ]
    sessions = [
        f"count(*) FILTER (WHERE t >= {start(w)}) AS session_count_{w}d" for w in SESSION_WINDOWS
    ]
    # pivoted columns are missing where a contact had no such event: those counts are 0
    filled = [
        f"coalesce({e}_count_{w}d, 0) AS {e}_count_{w}d" for e in EVENT_TYPES for w in COUNT_WINDOWS
    ]
    filled += [f"coalesce({c}_event_count_28d, 0) AS {c}_event_count_28d" for c in SHARE_CHANNELS]
    filled += [f"coalesce(active_days_{w}d, 0) AS active_days_{w}d" for w in ACTIVE_DAYS_WINDOWS]
    filled += [f"coalesce(session_count_{w}d, 0) AS session_count_{w}d" for w in SESSION_WINDOWS]
    filled += [f"event_count_{w}d" for w in EVENT_COUNT_WINDOWS]
    filled += [f"purchase_value_sum_{w}" for w in ("28d", "90d", "all")] + ["purchase_count_all"]
    filled += [
        f"({now} - {e}_last) / {MICROS_PER_DAY}::DOUBLE AS days_since_last_{e}"
        for e in RECENCY_TYPES
    ]
    filled += [
        f"({now} - last_event) / {MICROS_PER_DAY}::DOUBLE AS days_since_last_event",
        f"({now} - first_event) / {MICROS_PER_DAY}::DOUBLE AS days_since_first_event",
    ]

    def ratio(numerator: str, denominator: str) -> str:
        # missing on a zero denominator: a ratio with nothing to divide by is undefined
        return f"CASE WHEN ({denominator}) <> 0 THEN ({numerator})::DOUBLE / ({denominator}) END"

    derived = [
        ratio(
            f"greatest(email_open_count_{w}d - email_click_count_{w}d, 0)",
            f"email_open_count_{w}d",
        )
        + f" AS open_without_click_ratio_{w}d"
        for w in (7, 28)
    ]
    derived += [
        ratio(
            f"email_click_count_{w}d + push_click_count_{w}d + sms_click_count_{w}d",
            f"message_send_count_{w}d",
        )
        + f" AS click_through_ratio_{w}d"
        for w in COUNT_WINDOWS
    ]
    derived += [
        ratio(f"purchase_count_{w}d", f"add_to_cart_count_{w}d")
        + f" AS cart_to_purchase_ratio_{w}d"
        for w in (28, 90)
    ]
    derived += [
        ratio(f"purchase_value_sum_{w}d", f"purchase_count_{w}d") + f" AS average_order_value_{w}d"
        for w in (28, 90)
    ]
    derived += [
        ratio("purchase_value_sum_all", "purchase_count_all") + " AS average_order_value_all",
        ratio("event_count_7d / 7::DOUBLE", "(event_count_35d - event_count_7d) / 28::DOUBLE")
        + " AS activity_trend_7d_vs_prior_28d",
    ]
    derived += [
        ratio(f"{c}_event_count_28d", "event_count_28d") + f" AS {c}_share_28d"
        for c in SHARE_CHANNELS
    ]
    return f"""
        WITH events AS (
            SELECT contact_id, epoch_us("timestamp") AS t, event_type, channel, value
            FROM read_parquet($events)
            WHERE "timestamp" < $as_of
        ),
        per_contact AS (
            SELECT contact_id,
            {joined(per_contact)}
            FROM events
            GROUP BY contact_id
            HAVING count(*) FILTER (WHERE t >= {start(ELIGIBLE_DAYS)}) > 0
        ),
        by_type AS (
            PIVOT (SELECT contact_id, event_type, t, {", ".join(in_window_flags)} FROM events)
            ON event_type IN ({listed(EVENT_TYPES)})
            USING {", ".join(by_type_values)}
            GROUP BY contact_id
        ),
        by_channel AS (
            PIVOT (SELECT contact_id, channel FROM events WHERE {done} AND t >= {start(28)})
            ON channel IN ({listed(SHARE_CHANNELS)})
            USING count(*) AS event_count_28d
            GROUP BY contact_id
        ),
        active_days AS (
            -- one row per contact and UTC date with its last event: the date is in a window
            -- when that event is
            SELECT contact_id,
            {joined(active_days)}
            FROM (
                SELECT contact_id, max(t) AS last_t
                FROM events
                WHERE {done} AND t >= {start(max(ACTIVE_DAYS_WINDOWS))}
                GROUP BY contact_id, t // {MICROS_PER_DAY}
            )
            GROUP BY contact_id
        ),
        sessions AS (
            -- older events matter only as the previous event of one in the window, and only
            -- within the gap of its start
            SELECT contact_id,
            {joined(sessions)}
            FROM (
                SELECT contact_id, t, lag(t) OVER (PARTITION BY contact_id ORDER BY t) AS previous
                FROM events
                WHERE event_type NOT IN ({listed(NOT_IN_SESSIONS)})
                    AND t >= {start(max(SESSION_WINDOWS)) - gap}
            )
            WHERE t >= {start(max(SESSION_WINDOWS))} AND (previous IS NULL OR t - previous > {gap})
            GROUP BY contact_id
        ),
        features AS (
            SELECT contact_id,
            {joined(filled)}
            FROM per_contact
            LEFT JOIN by_type USING (contact_id)
            LEFT JOIN by_channel USING (contact_id)
            LEFT JOIN active_days USING (contact_id)
            LEFT JOIN sessions USING (contact_id)
        )
        SELECT *,
            {joined(derived)}
        FROM features
    """
