"""The shipped spec's event features, hand-written in Polars (lazy): the yardstick the engine is
measured against.

The counts, sums and recencies come from two group-bys: the events first shrink to one row per
contact and event type (cheap sums and extremes), then the filtered aggregations run on those
rows with the event type as a small integer. Counts per channel, active days and sessions come
from small passes over only the events they can see (the last 28 days without sends; the last
90 days without sends; the last 28 days and 30 minutes without sends and impressions). The parts
are joined on the contact and the ratios computed last.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

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

_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
_WINDOWS = sorted({*COUNT_WINDOWS, *EVENT_COUNT_WINDOWS, *ACTIVE_DAYS_WINDOWS, ELIGIBLE_DAYS})


def build(events_path: Path, as_of: dt.datetime) -> pl.DataFrame:
    """One row per contact with an event in the 90 days before ``as_of``: contact_id, as_of and
    the 144 features."""
    # read and prepared once, in memory: the four parts share it (each lazy part would scan the
    # file and prepare the columns again)
    events = _events(events_path, as_of).collect().lazy()
    per_contact, *others = pl.collect_all(
        [
            _counts_sums_recency(events, as_of),
            _channel_counts(events),
            _active_days(events, as_of),
            _sessions(events, as_of),
        ]
    )
    frame = per_contact
    for other in others:
        frame = frame.join(other, on="contact_id", how="left")
    # contacts without such events in the window have none: 0, not missing
    frame = frame.with_columns(
        pl.col(*[f"{c}_event_count_28d" for c in SHARE_CHANNELS]).fill_null(0),
        pl.col(*_names("active_days", ACTIVE_DAYS_WINDOWS)).fill_null(0),
        pl.col(*_names("session_count", SESSION_WINDOWS)).fill_null(0),
    )
    return frame.with_columns(_derived()).with_columns(
        as_of=pl.lit(as_of, pl.Datetime("us", "UTC"))
    )


def _start(as_of: dt.datetime, days: int) -> dt.datetime:
    return as_of - dt.timedelta(days=days)


def _names(prefix: str, windows: tuple[int, ...]) -> list[str]:
    return [f"{prefix}_{w}d" for w in windows]


def _events(events_path: Path, as_of: dt.datetime) -> pl.LazyFrame:
    """The past events with the event type as a small integer (cheaper to compare than text)
    and one flag per window start."""
    timestamp = pl.col("timestamp")
    return (
        pl.scan_parquet(events_path)
        .select("contact_id", "timestamp", "event_type", "channel", "value")
        .filter(timestamp < as_of)
        .with_columns(
            code=pl.col("event_type").cast(pl.Enum(EVENT_TYPES)).to_physical(),
            **{f"in_{w}d": timestamp >= _start(as_of, w) for w in _WINDOWS},
        )
    )


def _counts_sums_recency(events: pl.LazyFrame, as_of: dt.datetime) -> pl.LazyFrame:
    """Two group-bys: the events first shrink to one row per contact and event type (cheap sums
    and extremes), then the filtered aggregations run over those rows instead of every event."""
    partials = events.group_by("contact_id", "code").agg(
        *[pl.col(f"in_{w}d").sum().alias(f"n_{w}d") for w in _WINDOWS],
        n_all=pl.len(),
        # value is only set on purchases; a flag times a value keeps the value or makes it 0
        **{f"v_{w}d": (pl.col("value") * pl.col(f"in_{w}d")).sum() for w in (28, 90)},
        v_all=pl.col("value").sum(),
        last=pl.col("timestamp").max(),
        first=pl.col("timestamp").min(),
    )
    code = pl.col("code")
    done = code != _CODE[SEND]
    purchase = code == _CODE["purchase"]
    aggregations = [pl.col(f"n_{ELIGIBLE_DAYS}d").sum().alias("eligible")]
    aggregations += [
        pl.col(f"n_{w}d").filter(code == _CODE[name]).sum().alias(f"{name}_count_{w}d")
        for name in EVENT_TYPES
        for w in COUNT_WINDOWS
    ]
    aggregations += [
        pl.col(f"n_{w}d").filter(done).sum().alias(f"event_count_{w}d") for w in EVENT_COUNT_WINDOWS
    ]
    aggregations += [
        pl.col(f"v_{w}").filter(purchase).sum().alias(f"purchase_value_sum_{w}")
        for w in ("28d", "90d", "all")
    ]
    aggregations += [pl.col("n_all").filter(purchase).sum().alias("purchase_count_all")]
    aggregations += [
        pl.col("last").filter(code == _CODE[name]).max().alias(f"days_since_last_{name}")
        for name in RECENCY_TYPES
    ]
    aggregations += [
        pl.col("last").filter(done).max().alias("days_since_last_event"),
        pl.col("first").filter(done).min().alias("days_since_first_event"),
    ]
    days_since = [f"days_since_last_{name}" for name in RECENCY_TYPES]
    days_since += ["days_since_last_event", "days_since_first_event"]
    counts = [f"{name}_count_{w}d" for name in EVENT_TYPES for w in COUNT_WINDOWS]
    counts += [*_names("event_count", EVENT_COUNT_WINDOWS), "purchase_count_all"]
    return (
        partials.group_by("contact_id")
        .agg(aggregations)
        .filter(pl.col("eligible") > 0)
        .drop("eligible")
        .with_columns(
            pl.col(*counts).cast(pl.Int64),
            pl.col(*_names("purchase_value_sum", (28, 90)), "purchase_value_sum_all").cast(
                pl.Float64
            ),
            *[
                ((pl.lit(as_of) - pl.col(name)).dt.total_microseconds() / MICROS_PER_DAY).alias(
                    name
                )
                for name in days_since
            ],
        )
    )


def _channel_counts(events: pl.LazyFrame) -> pl.LazyFrame:
    """What the contact did in the last 28 days on each channel (sends are ours, not theirs)."""
    recent = events.filter(pl.col("in_28d") & (pl.col("code") != _CODE[SEND]))
    return recent.group_by("contact_id").agg(
        [
            (pl.col("channel") == name).sum().cast(pl.Int64).alias(f"{name}_event_count_28d")
            for name in SHARE_CHANNELS
        ]
    )


def _active_days(events: pl.LazyFrame, as_of: dt.datetime) -> pl.LazyFrame:
    """Distinct UTC dates with an event that is not a send. A date counts in a window when its
    last event lies inside it (windows end at as_of, so the last event is the one to test)."""
    last_of_day = (
        events.filter(pl.col(f"in_{max(ACTIVE_DAYS_WINDOWS)}d") & (pl.col("code") != _CODE[SEND]))
        .group_by("contact_id", pl.col("timestamp").dt.date().alias("date"))
        .agg(pl.col("timestamp").max())
    )
    return last_of_day.group_by("contact_id").agg(
        [
            (pl.col("timestamp") >= _start(as_of, w))
            .sum()
            .cast(pl.Int64)
            .alias(f"active_days_{w}d")
            for w in ACTIVE_DAYS_WINDOWS
        ]
    )


def _sessions(events: pl.LazyFrame, as_of: dt.datetime) -> pl.LazyFrame:
    """Session starts in the last 28 and 7 days. An event before the 28-day window matters only
    as the previous event of one inside it, and only when it lies within the gap of the window
    start, so older events are never sorted."""
    horizon = _start(as_of, max(SESSION_WINDOWS)) - SESSION_GAP
    timestamp, contact = pl.col("timestamp"), pl.col("contact_id")
    session_events = (
        events.filter(
            (timestamp >= horizon)
            & ~pl.col("code").is_in([_CODE[name] for name in NOT_IN_SESSIONS])
        )
        .select("contact_id", "timestamp")
        .sort("contact_id", "timestamp")
    )
    starts = (contact != contact.shift()).fill_null(True) | (
        timestamp - timestamp.shift() > SESSION_GAP
    )
    return (
        session_events.filter(starts & (timestamp >= _start(as_of, max(SESSION_WINDOWS))))
        .group_by("contact_id")
        .agg(
            [
                (timestamp >= _start(as_of, w)).sum().cast(pl.Int64).alias(f"session_count_{w}d")
                for w in SESSION_WINDOWS
            ]
        )
    )


def _ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """Missing on a zero denominator: a ratio with nothing to divide by is undefined."""
    return pl.when(denominator != 0).then(numerator.cast(pl.Float64) / denominator)


def _derived() -> list[pl.Expr]:
    col = pl.col
    clicks = {
        w: col(f"email_click_count_{w}d")
        + col(f"push_click_count_{w}d")
        + col(f"sms_click_count_{w}d")
        for w in COUNT_WINDOWS
    }
    derived = [
        _ratio(
            pl.max_horizontal(col(f"email_open_count_{w}d") - col(f"email_click_count_{w}d"), 0),
            col(f"email_open_count_{w}d"),
        ).alias(f"open_without_click_ratio_{w}d")
        for w in (7, 28)
    ]
    derived += [
        _ratio(clicks[w], col(f"message_send_count_{w}d")).alias(f"click_through_ratio_{w}d")
        for w in COUNT_WINDOWS
    ]
    derived += [
        _ratio(col(f"purchase_count_{w}d"), col(f"add_to_cart_count_{w}d")).alias(
            f"cart_to_purchase_ratio_{w}d"
        )
        for w in (28, 90)
    ]
    derived += [
        _ratio(col(f"purchase_value_sum_{w}d"), col(f"purchase_count_{w}d")).alias(
            f"average_order_value_{w}d"
        )
        for w in (28, 90)
    ]
    derived += [
        _ratio(col("purchase_value_sum_all"), col("purchase_count_all")).alias(
            "average_order_value_all"
        ),
        _ratio(
            col("event_count_7d") / 7, (col("event_count_35d") - col("event_count_7d")) / 28
        ).alias("activity_trend_7d_vs_prior_28d"),
    ]
    derived += [
        _ratio(col(f"{name}_event_count_28d"), col("event_count_28d")).alias(f"{name}_share_28d")
        for name in SHARE_CHANNELS
    ]
    return derived
