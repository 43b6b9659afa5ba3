"""The shipped spec's event features in idiomatic pandas: what a competent analyst writes, with
vectorised ``groupby`` and ``unstack`` and no Python loop over contacts.

The contact ids are factorised once into integer codes, and every ``groupby`` uses them (a
categorical or text key costs a recoding or a hashing in each ``groupby``, and aligning frames
on a categorical index is slow). Counts per event type come from one
``groupby([contact, event type]).size().unstack()`` per window; the other features from boolean
columns summed per contact, a ``max`` per contact and event type for recency, one row per contact
and day for active days, and a time-sorted ``groupby().diff()`` for sessions. Every part is put
on the eligible contacts' index before the parts are joined.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
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

_ONE_DAY = pd.Timedelta(microseconds=MICROS_PER_DAY)


def build(events_path: Path, as_of: dt.datetime) -> pa.Table:
    """One row per contact with an event in the 90 days before ``as_of``: contact_id, as_of and
    the 144 features."""
    # pandas 3's defaults, switched on for pandas 2: Arrow-backed strings (much faster to read
    # than Python objects) and copy-on-write (no copy of every column in each join)
    with pd.option_context("future.infer_string", True, "mode.copy_on_write", True):
        return _build(events_path, as_of)


def _build(events_path: Path, as_of: dt.datetime) -> pa.Table:
    now = pd.Timestamp(as_of)
    events, contact_ids = _read_events(events_path, now)
    eligible = events.loc[events["timestamp"] >= now - pd.Timedelta(days=ELIGIBLE_DAYS)]
    contacts = pd.Index(np.sort(eligible["contact"].unique()), name="contact")
    done = events.loc[events["event_type"] != SEND]
    purchases = events.loc[events["event_type"] == "purchase"]
    counts: list[pd.DataFrame | pd.Series] = [
        _counts_by_type(events, now),
        _channel_counts(done, now),
        _event_counts(done, now),
        purchases.groupby("contact").size().rename("purchase_count_all"),
        _active_days(done, now),
        _sessions(events, now),
    ]
    # a contact with no such event has a count of 0 (a value sum of 0.0), not a missing one;
    # every part on the same index, the joins are cheap
    parts = [part.reindex(contacts, fill_value=0) for part in counts]
    parts.append(_purchase_values(purchases, now).reindex(contacts, fill_value=0.0))
    parts.append(_recency(events, done, now).reindex(contacts))
    features = parts[0].join(parts[1:])
    features = features.join(_derived(features))
    features.insert(0, "contact_id", contact_ids[features.index])
    features["as_of"] = now
    return pa.Table.from_pandas(features, preserve_index=False)


def _read_events(events_path: Path, now: pd.Timestamp) -> tuple[pd.DataFrame, pd.Index]:
    """The events with the contact as an integer code, and the contact id of each code; event
    type and channel become categoricals."""
    events = pd.read_parquet(
        events_path,
        columns=["contact_id", "timestamp", "event_type", "channel", "value"],
        filters=[("timestamp", "<", now)],
    )
    codes, contact_ids = pd.factorize(events.pop("contact_id"))
    events["contact"] = codes
    return events.astype({"event_type": "category", "channel": "category"}), contact_ids


def _counts_by_type(events: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    parts = []
    for days in COUNT_WINDOWS:
        recent = events.loc[events["timestamp"] >= now - pd.Timedelta(days=days)]
        counts = (
            recent.groupby(["contact", "event_type"], observed=True)
            .size()
            .unstack(fill_value=0)
            .reindex(columns=list(EVENT_TYPES), fill_value=0)
        )
        parts.append(counts.add_suffix(f"_count_{days}d"))
    # the 90-day window holds every contact of the shorter ones
    longest = parts[-1]
    return longest.join([part.reindex(longest.index, fill_value=0) for part in parts[:-1]])


def _days_before(now: pd.Timestamp, moments: pd.Series) -> pd.Series:
    """Fractional days, as microseconds over a day's microseconds."""
    return (now - moments) / _ONE_DAY  # type: ignore[operator]  # pandas-stubs lack it


def _recency(events: pd.DataFrame, done: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    tracked = events.loc[events["event_type"].isin(RECENCY_TYPES)]
    last = tracked.groupby(["contact", "event_type"], observed=True)["timestamp"].max()
    days_since = (
        _days_before(now, last)
        .unstack()
        .reindex(columns=list(RECENCY_TYPES))
        .add_prefix("days_since_last_")
    )
    span = done.groupby("contact")["timestamp"].agg(["max", "min"])
    first_and_last = pd.DataFrame(
        {
            "days_since_last_event": _days_before(now, span["max"]),
            "days_since_first_event": _days_before(now, span["min"]),
        }
    )
    return pd.concat([days_since, first_and_last], axis=1)


def _channel_counts(done: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    recent = done.loc[done["timestamp"] >= now - pd.Timedelta(days=28)]
    counts = (
        recent.groupby(["contact", "channel"], observed=True)
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(SHARE_CHANNELS), fill_value=0)
    )
    return counts.add_suffix("_event_count_28d")


def _event_counts(done: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    flags = pd.DataFrame(
        {
            f"event_count_{days}d": done["timestamp"] >= now - pd.Timedelta(days=days)
            for days in EVENT_COUNT_WINDOWS
        }
    )
    return flags.groupby(done["contact"]).sum()


def _purchase_values(purchases: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    values = pd.DataFrame(
        {
            f"purchase_value_sum_{days}d": purchases["value"].where(
                purchases["timestamp"] >= now - pd.Timedelta(days=days)
            )
            for days in (28, 90)
        }
    )
    values["purchase_value_sum_all"] = purchases["value"]
    return values.groupby(purchases["contact"]).sum().astype("float64")


def _active_days(done: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """Distinct UTC dates with an event; a date counts in a window when its last event does."""
    recent = done.loc[done["timestamp"] >= now - pd.Timedelta(days=max(ACTIVE_DAYS_WINDOWS))]
    last_of_day = recent.groupby([recent["contact"], recent["timestamp"].dt.floor("D")])[
        "timestamp"
    ].max()
    flags = pd.DataFrame(
        {
            f"active_days_{days}d": last_of_day >= now - pd.Timedelta(days=days)
            for days in ACTIVE_DAYS_WINDOWS
        }
    )
    return flags.groupby(level="contact").sum()


def _sessions(events: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """A session starts when the previous such event of the contact is more than 30 minutes
    earlier, or there is none. Older events only matter as the previous event of one inside the
    28-day window, so only those within the gap of its start are looked at."""
    window_start = now - pd.Timedelta(days=max(SESSION_WINDOWS))
    visits = events.loc[
        ~events["event_type"].isin(NOT_IN_SESSIONS)
        & (events["timestamp"] >= window_start - SESSION_GAP)
    ].sort_values("timestamp")
    gap = visits.groupby("contact")["timestamp"].diff()
    starts = visits.loc[(gap.isna() | (gap > SESSION_GAP)) & (visits["timestamp"] >= window_start)]
    flags = pd.DataFrame(
        {
            f"session_count_{days}d": starts["timestamp"] >= now - pd.Timedelta(days=days)
            for days in SESSION_WINDOWS
        }
    )
    return flags.groupby(starts["contact"]).sum()


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """Missing on a zero denominator: a ratio with nothing to divide by is undefined."""
    return numerator / denominator.where(denominator != 0)


def _derived(f: pd.DataFrame) -> pd.DataFrame:
    derived = {}
    for w in (7, 28):
        opens = f[f"email_open_count_{w}d"]
        derived[f"open_without_click_ratio_{w}d"] = _ratio(
            (opens - f[f"email_click_count_{w}d"]).clip(lower=0), opens
        )
    for w in COUNT_WINDOWS:
        clicks = (
            f[f"email_click_count_{w}d"] + f[f"push_click_count_{w}d"] + f[f"sms_click_count_{w}d"]
        )
        derived[f"click_through_ratio_{w}d"] = _ratio(clicks, f[f"message_send_count_{w}d"])
    for w in (28, 90):
        derived[f"cart_to_purchase_ratio_{w}d"] = _ratio(
            f[f"purchase_count_{w}d"], f[f"add_to_cart_count_{w}d"]
        )
        derived[f"average_order_value_{w}d"] = _ratio(
            f[f"purchase_value_sum_{w}d"], f[f"purchase_count_{w}d"]
        )
    derived["average_order_value_all"] = _ratio(
        f["purchase_value_sum_all"], f["purchase_count_all"]
    )
    derived["activity_trend_7d_vs_prior_28d"] = _ratio(
        f["event_count_7d"] / 7, (f["event_count_35d"] - f["event_count_7d"]) / 28
    )
    for channel in SHARE_CHANNELS:
        derived[f"{channel}_share_28d"] = _ratio(
            f[f"{channel}_event_count_28d"], f["event_count_28d"]
        )
    return pd.DataFrame(derived).astype("float64")
