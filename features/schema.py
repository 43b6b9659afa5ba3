"""The event data contract: canonical schemas and the one validation function.

Every source, real or simulated, ends up as two tables:

* events   - one row per interaction (``EVENTS_SCHEMA``);
* contacts - one row per contact, its attributes and its marketing consent (``CONTACTS_SCHEMA``
  gives the required columns; any other column is an attribute and passes through).

``validate`` turns whatever a source produced (pandas, Polars or Arrow, canonical column names)
into tables that conform exactly, and sets every unusable row aside in a rejects table with one
reason per row. Nothing is dropped silently: ``rows_in == rows_out + rows_rejected`` always holds.
A problem with a whole file (a missing column, a column of the wrong kind, contact ids holding
control characters) is a ``SchemaError`` whose message names the column and the fix.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import InputError
from features.vocabulary import CHANNELS, EVENT_TYPES

EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("contact_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("campaign_id", pa.string()),
        pa.field("properties", pa.string()),  # JSON object as text
    ]
)
EVENT_COLUMNS: Final[tuple[str, ...]] = tuple(EVENTS_SCHEMA.names)
REQUIRED_EVENT_COLUMNS: Final[tuple[str, ...]] = (
    "contact_id",
    "timestamp",
    "channel",
    "event_type",
)

CONTACTS_SCHEMA: Final = pa.schema(
    [
        pa.field("contact_id", pa.string(), nullable=False),
        pa.field("marketing_consent", pa.bool_(), nullable=False),
    ]
)

REJECTS_SCHEMA: Final = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),  # "events" or "contacts"
        pa.field("row_number", pa.int64(), nullable=False),  # 0-based position in the input
        pa.field("reason", pa.string(), nullable=False),
        pa.field("contact_id", pa.string()),
        pa.field("record", pa.string(), nullable=False),  # the input row as JSON text
        # Where the row came from, filled by ``features.sources.ingest`` (null from ``validate``
        # on a frame): the mapping key and file, e.g. "events[1] olist/deals.csv", and the line
        # in that file as an editor shows it (1 = the header line); for Parquet or data inside
        # a package, the 0-based row index; for an aggregated row, its group's first input row.
        pa.field("source", pa.string()),
        pa.field("source_row", pa.int64()),
    ]
)

# Clocks drift: an event this far past the reader's clock is not yet "in the future" (one event
# 2 minutes ahead, a source's clock running fast, stopped a whole weekly job). Every reader of
# events uses it: validation and ingest, the commands, training and the service.
CLOCK_SKEW: Final = dt.timedelta(minutes=5)

# The UTC offset written after a time of day, one rule for every reader of ISO 8601 text
# (validation and ingest here, the service's requests in serving.schemas): Z or z (RFC 3339
# allows either case, as for its T), +HH:MM, +HHMM, or +HH, whole hours (ISO 8601). Ingest
# took +01 and the service refused it; the service took z and ingest set the row aside.
OFFSET_HOURS: Final = r"[+-]\d{2}"
UTC_OFFSET: Final = rf"(?:[Zz]|{OFFSET_HOURS}(?::?\d{{2}})?)"


def refuse_events_after_now(
    last: dt.datetime | None, what: str, *, fix: str, now: dt.datetime | None = None
) -> None:
    """``what`` (the events' source, as the user named it) runs to ``last``: beyond the clock
    skew after ``now`` (default: the current time) that is a clock or time-zone error, refused
    in one line ending in ``fix``, by training as by every command that reads past now."""
    now = dt.datetime.now(dt.UTC) if now is None else now
    if last is not None and last > now + CLOCK_SKEW:
        minutes = int(CLOCK_SKEW.total_seconds() // 60)
        raise InputError(
            f"{what} runs to {last:%Y-%m-%d %H:%M} UTC, more than {minutes} minutes after now: "
            f"events in the future (a clock or time-zone error); {fix}"
        )


# Reasons, in the order they are checked: a row gets the first one that applies.
EVENT_REJECT_REASONS: Final[tuple[str, ...]] = (
    "missing_contact_id",
    "unparseable_timestamp",
    "timestamp_without_time_zone",
    "future_timestamp",
    "unknown_event_type",
    "unknown_channel",
    "unparseable_value",
    "negative_value",
    "unparseable_properties",
    "duplicate",
)
CONTACT_REJECT_REASONS: Final[tuple[str, ...]] = (
    "missing_contact_id",
    "unparseable_consent",
    "duplicate_contact_id",
)

_CONSENT_TRUE: Final = frozenset({"true", "t", "yes", "y", "1", "opt-in", "opted_in", "granted"})
_CONSENT_FALSE: Final = frozenset(
    {"false", "f", "no", "n", "0", "opt-out", "opted_out", "denied", "withdrawn"}
)
_JSON_OBJECT: Final = r"(?s)^\s*\{.*\}\s*$"  # (?s): an object may span lines
# a zone after a time of day: UTC_OFFSET (Z, +02, +0200, +02:00) or " UTC" (a bare date's
# "-01" is no zone); the time either extended (10:00, 10:00:00.5) or ISO 8601's basic form
# after its T (T10, T1000, T100000.5), as in 20240301T100000Z
_TZ_SUFFIX: Final = (
    rf"(\d{{2}}:\d{{2}}(:\d{{2}})?|[T ]\d{{2}}(\d{{2}}){{0,2}})(\.\d+)?\s*({UTC_OFFSET}|UTC)$"
)

Frame: TypeAlias = pd.DataFrame | pl.DataFrame | pa.Table


class SchemaError(InputError):
    """A whole input is unusable: a column is missing or of the wrong kind, or its contact ids
    hold control characters. Names the fix."""


class UnplacedZoneError(SchemaError):
    """Times with a zone written in a form funnelcast does not read as one (``+1``)."""


# a C0 control character (NUL, a line break, ...) or DEL inside a contact id: ids are written
# as they are, and a CSV reader cuts an id at a NUL or splits its row at a line break
# (pandas reads "x\x00y" as "x"), so the id would come back as another contact's. The same
# pattern in Rust's regex (Polars) and Java's (Spark)
CONTROL_IN_ID: Final = r"[\x00-\x1f\x7f]"


def first_control_character(text: str) -> str:
    """The first character of ``text`` that ``CONTROL_IN_ID`` matches."""
    found = re.search(CONTROL_IN_ID, text)
    assert found is not None, "only called on an id that holds one"
    return found.group()


def control_ids_message(
    count: int | None,
    where: str,
    *,
    example: str | None = None,
    first: int | str | None = None,
) -> str:
    """The refusal of ids holding a control character, shared by validation and every
    builder: ``example`` is such a character, shown escaped (never the id); ``first`` where
    the first such id is, a row counting from 0 or a place in a file (``line 5``)."""
    how_many = "contact ids" if count is None else f"{count:,} contact id(s)"
    said = [] if example is None else [f"such as {example!r}"]
    if first is not None:
        said.append(f"row {first}, counting from 0, is one" if isinstance(first, int) else first)
    detail = f" ({'; '.join(said)})" if said else ""
    return (
        f"{how_many} in {where} hold a control character{detail}; ids are written as they "
        'are, and a CSV reader cuts or splits such an id ("x\\x00y" reads as "x"), so its '
        "contact would come back as another. Remove the control characters from the ids "
        "where they are exported"
    )


class ControlCharacterIdsError(SchemaError):
    """Contact ids holding control characters (``control_ids_message``); ``table`` and
    ``row`` (0-based, in the table validated) say where the first one is, so that ingest
    can name its file and line instead."""

    def __init__(self, count: int, table: str, row: int, example: str) -> None:
        self.where = "the contacts table" if table == "contacts" else f"the {table}"
        super().__init__(control_ids_message(count, self.where, example=example, first=row))
        self.count, self.table, self.row, self.example = count, table, row, example


def find_control_ids(ids: pl.Series) -> tuple[int, int, str] | None:
    """Of ids holding a control character: how many distinct ones, the row of the first and
    its first such character; None when no id holds one."""
    held = ids.cast(pl.String).str.contains(CONTROL_IN_ID).fill_null(False)
    if not held.any():
        return None
    first = int(held.arg_true()[0])
    return ids.filter(held).n_unique(), first, first_control_character(str(ids[first]))


def refuse_control_ids(ids: pl.Series, table: str) -> None:
    """Validation's check of a table's contact ids (trimmed, as validation keeps them). A
    control character inside an id is no padding an export added, to be trimmed, but part of
    the id as the CRM holds it: the table is refused, naming the fix, rather than the
    contact's rows set aside, which would leave out a contact the CRM has."""
    found = find_control_ids(ids)
    if found is not None:
        count, first, example = found
        raise ControlCharacterIdsError(count, table, first, example)


@dataclass(frozen=True)
class Validated:
    """What validation kept, what it set aside, and why."""

    events: pa.Table
    contacts: pa.Table | None
    rejects: pa.Table
    rows_in: dict[str, int] = field(default_factory=dict)

    def reject_counts(self) -> dict[tuple[str, str], int]:
        """Rejected rows per (table, reason), every known reason present (zero included)."""
        counts: Counter[tuple[str, str]] = Counter(
            zip(
                self.rejects.column("table").to_pylist(),
                self.rejects.column("reason").to_pylist(),
                strict=True,
            )
        )
        out = {("events", r): counts.get(("events", r), 0) for r in EVENT_REJECT_REASONS}
        if self.contacts is not None:
            out.update(
                {("contacts", r): counts.get(("contacts", r), 0) for r in CONTACT_REJECT_REASONS}
            )
        for key, count in counts.items():
            out.setdefault(key, count)  # reasons added after validation (a mapping's exclusions)
        return out


def validate(
    events: Frame,
    contacts: Frame | None = None,
    *,
    timezone: str | None = None,
    now: dt.datetime | None = None,
) -> Validated:
    """Validate events (and contacts) against the canonical contract.

    ``timezone`` is the IANA zone of naive timestamps (from the source mapping); without it,
    naive timestamps are a ``SchemaError``. ``now`` (UTC, default: the current time) plus the
    clock skew allowed (``CLOCK_SKEW``) is the cut-off for future timestamps.
    """
    now = as_utc(now or dt.datetime.now(dt.UTC))
    # Arrow stays Arrow: it is checked in zero-copy slices and, when it already conforms,
    # returned as it is rather than copied
    source = events if isinstance(events, pa.Table) else _to_polars(events, "events")
    kept_events, event_rejects = _validate_events(source, timezone=timezone, now=now)
    rejects = [event_rejects]
    rows_in = {"events": _height(source)}
    kept_contacts: pa.Table | None = None
    if contacts is not None:
        raw_contacts = _to_polars(contacts, "contacts")
        kept_contacts, contact_rejects = _validate_contacts(raw_contacts)
        rejects.append(contact_rejects)
        rows_in["contacts"] = raw_contacts.height
    return Validated(
        events=kept_events,
        contacts=kept_contacts,
        rejects=pa.concat_tables(rejects),
        rows_in=rows_in,
    )


# --- events ------------------------------------------------------------------------------------


# Rows checked at a time: bounds the memory of the checks' temporaries at any input size.
_CHUNK_ROWS: Final = 2_000_000


def _validate_events(
    source: pa.Table | pl.DataFrame, *, timezone: str | None, now: dt.datetime
) -> tuple[pa.Table, pa.Table]:
    columns = source.column_names if isinstance(source, pa.Table) else source.columns
    _require_columns(columns, REQUIRED_EVENT_COLUMNS, "events", _EVENT_COLUMN_FIXES)
    ids = _to_polars(source.select(["contact_id"]), "events")
    refuse_control_ids(ids.select(_normalise_contact_id(ids, "events")).to_series(), "events")
    conforming = isinstance(source, pa.Table) and source.schema.equals(EVENTS_SCHEMA)
    total = _height(source)
    kept: list[pa.Table] = []
    kept_hashes: list[pl.Series] = []
    kept_masks: list[pl.Series] = []
    rejects: list[pa.Table] = []
    # at least one pass, so an empty input still has its column types checked
    for offset in range(0, max(total, 1), _CHUNK_ROWS):
        raw = _to_polars(_slice(source, offset, _CHUNK_ROWS), "events")
        checked, normalised = _check_events(raw, offset=offset, timezone=timezone, now=now)
        ok = checked["_reason"].is_null()
        all_ok = bool(ok.all())
        good = checked if all_ok else checked.filter(ok)
        kept_hashes.append(_row_hashes(good))
        kept_masks.append(ok)
        if conforming and all_ok and not normalised:
            kept.append(_slice(source, offset, _CHUNK_ROWS))
        else:
            kept.append(good.select(EVENT_COLUMNS).to_arrow().cast(EVENTS_SCHEMA))
        if not all_ok:
            bad = checked.filter(~ok).select("_row", "_reason", "contact_id")
            rejects.append(rejects_table("events", raw, bad, offset=offset))
    events = pa.concat_tables(kept) if kept else EVENTS_SCHEMA.empty_table()
    events, duplicate_rejects = _drop_duplicates(events, kept_hashes, kept_masks, source)
    all_rejects = pa.concat_tables([*rejects, duplicate_rejects]).sort_by("row_number")
    return events, all_rejects


def _check_events(
    raw: pl.DataFrame, *, offset: int, timezone: str | None, now: dt.datetime
) -> tuple[pl.DataFrame, bool]:
    """One slice of events, normalised, with the first failing reason per row (null: fine).
    Also says whether normalising changed any value (trimmed ids, lower-cased names)."""
    frame = raw.with_row_index("_row", offset=offset)
    contact_id = frame.select(_normalise_contact_id(frame, "events")).to_series()
    channel, channel_changed = _vocabulary_text(frame, "channel", CHANNELS)
    event_type, type_changed = _vocabulary_text(frame, "event_type", EVENT_TYPES)
    ids_changed = bool((contact_id != frame["contact_id"].cast(pl.String)).fill_null(False).any())
    frame = frame.with_columns(
        contact_id=contact_id,
        channel=channel,
        event_type=event_type,
        campaign_id=(
            _as_text(frame, "campaign_id")
            if "campaign_id" in frame.columns
            else pl.lit(None, pl.String)
        ),
        properties=_properties_as_json(frame),
    )
    timestamp, naive_rows = parse_timestamps(frame["timestamp"], timezone=timezone)
    value, value_unparseable = _parse_values(frame)
    frame = frame.with_columns(
        timestamp=timestamp, value=value, _value_bad=value_unparseable, _naive=naive_rows
    )
    reason = (
        pl.when(pl.col("contact_id").is_null())
        .then(pl.lit("missing_contact_id"))
        .when(pl.col("timestamp").is_null() & ~pl.col("_naive"))
        .then(pl.lit("unparseable_timestamp"))
        .when(pl.col("_naive"))
        .then(pl.lit("timestamp_without_time_zone"))
        .when(pl.col("timestamp") > pl.lit(now + CLOCK_SKEW))
        .then(pl.lit("future_timestamp"))
        .when(~pl.col("event_type").is_in(EVENT_TYPES) | pl.col("event_type").is_null())
        .then(pl.lit("unknown_event_type"))
        .when(~pl.col("channel").is_in(CHANNELS) | pl.col("channel").is_null())
        .then(pl.lit("unknown_channel"))
        .when(pl.col("_value_bad"))
        .then(pl.lit("unparseable_value"))
        .when(pl.col("value") < 0)
        .then(pl.lit("negative_value"))
        # a cheap shape check that catches plain text; full JSON parsing would cost more than
        # the rest of validation at tens of millions of rows
        .when(pl.col("properties").is_not_null() & ~pl.col("properties").str.contains(_JSON_OBJECT))
        .then(pl.lit("unparseable_properties"))
        .otherwise(pl.lit(None, pl.String))
    )
    checked = frame.select(*EVENT_COLUMNS, "_row", _reason=reason)
    return checked, ids_changed or channel_changed or type_changed


_EVENT_COLUMN_FIXES: Final = {
    "contact_id": "map your customer/user id column as `contact_id` in the source mapping",
    "timestamp": "map your time column as `timestamp` in the source mapping",
    "channel": "map a channel column, or set a fixed `channel:` for the source in its mapping",
    "event_type": (
        "map your event-name column as `event_type` and list its values under `events:` in the "
        "source mapping"
    ),
}


def localise_to_utc(naive: pl.Series, timezone: str) -> pl.Series:
    """Local wall-clock times to UTC microseconds.

    A time in the spring-forward gap moves forward by the gap: read with the offset in force
    before the clocks jumped, so 02:10 and 02:50 on a night Stockholm skips 02:00-03:00 are
    03:10 and 03:50 (a date-only source in Sao Paulo has no midnight on the day DST starts,
    yet the day is real). pandas' "shift_forward" put every such time at 03:00, which made
    distinct events exact repeats that validation then dropped (README review). A time that
    occurs twice takes the earlier instant. Polars can only null or raise on the gap, so
    pandas does this step.
    """
    if naive.len() == 0:
        return naive.cast(pl.Datetime("us", "UTC"))
    wall = naive.to_pandas()
    local = wall.dt.tz_localize(
        timezone, ambiguous=np.ones(naive.len(), dtype=bool), nonexistent="NaT"
    ).copy()  # written to below
    gap = local.isna() & wall.notna()
    if gap.any():
        skipped = wall[gap]
        # the offset of the day before: in force until the clocks jumped (never two changes
        # within a day)
        before = (skipped - pd.Timedelta(days=1)).dt.tz_localize(
            timezone, ambiguous=np.ones(len(skipped), dtype=bool), nonexistent="shift_forward"
        )
        offset = before.dt.tz_localize(None) - before.dt.tz_convert("UTC").dt.tz_localize(None)
        local[gap] = (skipped - offset).dt.tz_localize("UTC").dt.tz_convert(timezone)
    return pl.Series(naive.name, local.dt.tz_convert("UTC")).dt.cast_time_unit("us")


def _row_hashes(frame: pl.DataFrame) -> pl.Series:
    """A 64-bit hash per row of the canonical columns: one hash per column, then one per row,
    which is cheaper than hashing a struct of strings."""
    column_hashes = [pl.col(name).hash(seed=i).alias(name) for i, name in enumerate(EVENT_COLUMNS)]
    return frame.select(pl.struct(column_hashes).hash(seed=7)).to_series()


def _drop_duplicates(
    events: pa.Table,
    hashes: list[pl.Series],
    masks: list[pl.Series],
    source: pa.Table | pl.DataFrame,
) -> tuple[pa.Table, pa.Table]:
    """Remove every later copy of a kept row, across all slices, and reject it as "duplicate".

    Rows are compared by hash first; the few whose hash repeats are then compared value by
    value, so a hash collision never rejects a row.
    """
    row_hash = pl.concat(hashes) if hashes else pl.Series(dtype=pl.UInt64)
    # A sort and a look at neighbours finds repeats several times faster than is_duplicated()
    # on tens of millions of rows; usually there are none and we stop here.
    ordered = row_hash.sort()
    repeated_hashes = ordered.filter(ordered == ordered.shift(1))
    if repeated_hashes.is_empty():
        return events, REJECTS_SCHEMA.empty_table()
    candidates = row_hash.is_in(repeated_hashes.unique().implode()).arg_true()
    values = pl.from_arrow(events.take(candidates.to_arrow()))
    assert isinstance(values, pl.DataFrame)
    later_copy = ~values.select(pl.struct(EVENT_COLUMNS).is_first_distinct()).to_series()
    positions = candidates.filter(later_copy)  # positions among the kept rows
    keep = pl.repeat(True, events.num_rows, eager=True).scatter(positions, False)
    kept_rows = pl.concat(
        [mask.arg_true() + offset for mask, offset in zip(masks, _offsets(masks), strict=True)]
    )
    rows = kept_rows.gather(positions)
    raw = _to_polars(_take(source, rows), "events")
    bad = pl.DataFrame(
        {
            "_row": rows,
            "_reason": pl.repeat("duplicate", rows.len(), eager=True),
            "contact_id": values.filter(later_copy)["contact_id"],
        }
    )
    duplicates = rejects_table("events", raw, bad, offset=None)
    return events.filter(keep.to_arrow()), duplicates


def _offsets(masks: list[pl.Series]) -> list[int]:
    starts, position = [], 0
    for mask in masks:
        starts.append(position)
        position += mask.len()
    return starts


def _vocabulary_text(
    frame: pl.DataFrame, name: str, vocabulary: tuple[str, ...]
) -> tuple[pl.Series, bool]:
    """Text of a vocabulary column, and whether any value had to be normalised. Only values not
    already canonical are trimmed and lowered (normalising ten million clean values would cost
    more than the whole check)."""
    text = frame.select(_as_text(frame, name)).to_series()
    off = ~text.is_in(vocabulary) & text.is_not_null()
    if not off.any():
        return text, False
    fixed = text.filter(off).str.strip_chars().str.to_lowercase()
    changed = bool((fixed != text.filter(off)).any())
    return text.scatter(off.arg_true(), fixed), changed


def parse_timestamps(column: pl.Series, *, timezone: str | None) -> tuple[pl.Series, pl.Series]:
    """Parse to UTC microseconds. Returns (timestamps, rows that were naive with no zone named)."""
    no_naive = pl.repeat(False, column.len(), eager=True, dtype=pl.Boolean).alias("naive")
    dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            if timezone is None:
                raise SchemaError(
                    "events column 'timestamp' has no time zone; name it in the source mapping "
                    "(`timezone: Europe/Stockholm`) or give UTC times"
                )
            return localise_to_utc(column, timezone), no_naive
        return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us"), no_naive
    if isinstance(dtype, pl.Date):
        return parse_timestamps(column.cast(pl.Datetime("us")), timezone=timezone)
    if dtype.is_numeric():
        raise SchemaError(
            "events column 'timestamp' holds numbers; declare `format: unix_s` (or unix_ms) for "
            "it in the source mapping"
        )
    if dtype not in (pl.String, pl.Categorical, pl.Object, pl.Null):
        raise SchemaError(
            f"events column 'timestamp' has type {dtype}; give ISO-8601 text or datetimes"
        )
    text = _upper_t_and_z(column.cast(pl.String).str.strip_chars())
    has_zone = text.str.contains(_TZ_SUFFIX).fill_null(False)
    aware = pd.to_datetime(
        text.str.replace(r"\sUTC$", "+00:00").to_pandas(),
        errors="coerce",
        utc=True,
        format="ISO8601",
    )
    parsed = _beyond_pandas_range(pl.Series("timestamp", aware).dt.cast_time_unit("us"), text)
    parsed = parsed.set(~has_zone, None)
    naive_text = text.set(has_zone, None)
    if naive_text.null_count() < naive_text.len():  # some rows carry no zone
        with warnings.catch_warnings():
            # zones it reads among rows taken for naive (mixed: a FutureWarning) are refused
            warnings.simplefilter("ignore", FutureWarning)
            naive = pd.to_datetime(naive_text.to_pandas(), errors="coerce", format="ISO8601")
        _refuse_unseen_zones(naive, naive_text)
        naive_parsed = _beyond_pandas_range(pl.Series("timestamp", naive), naive_text)
        if timezone is None:
            if not has_zone.any() and naive_parsed.null_count() < naive_parsed.len():
                raise SchemaError(
                    "events column 'timestamp' has no time zone; name it in the source mapping "
                    "(`timezone: Europe/Stockholm`) or give UTC times"
                )
            # rows that parse but carry no zone are rejected as such; the rest are unparseable
            return parsed, naive_parsed.is_not_null()
        naive = naive_parsed.to_pandas()
        local = localise_to_utc(pl.Series("timestamp", naive), timezone)
        parsed = pl.select(pl.coalesce(parsed, local)).to_series()
    return parsed.alias("timestamp"), no_naive


def _upper_t_and_z(text: pl.Series) -> pl.Series:
    """ISO 8601 text with RFC 3339's T and Z in upper case (2026-11-20t09:30:00z read as
    2026-11-20T09:30:00Z), as the service reads them: pandas leaves the lower-case forms
    unread, and such rows were set aside as unparseable. A column without a lower-case t or
    z is left as it is (one scan for the two letters, no copy)."""
    if not text.str.contains_any(["t", "z"]).any():
        return text
    # the T between date and time (extended or basic form), the z ending a time (a space
    # before it, as before Z)
    between = text.str.replace(r"^(\d{4}-?\d{2}-?\d{2})t(\d)", "${1}T${2}")
    return between.str.replace(r"(\d\s*)z$", "${1}Z")


def _refuse_unseen_zones(naive: pd.Series, text: pl.Series) -> None:
    """Text taken for a time without a zone that pandas read with one: a zone written in a
    form ``_TZ_SUFFIX`` does not know. Localising it would raise or shift it by its zone again,
    so it is refused, naming a value, rather than read an hour or two off. The value named is
    the text of a row that holds such a zone: pandas gives the zone it found to every row it
    reads with it, so its reading of the first row was a zoneless time of another file with
    that zone (README review)."""
    if pd.api.types.is_datetime64_dtype(naive) and not isinstance(naive.dtype, pd.DatetimeTZDtype):
        return
    example = _zoned_text(text)
    raise UnplacedZoneError(
        "events column 'timestamp' holds a time whose zone funnelcast cannot place"
        + (f" ({example!r})" if example is not None else "")
        + "; "
        "write zones as Z, +02:00 or +0200 right after the time of day (2024-03-01T10:00:00Z, "
        "20240301T100000+0100), or give times without a zone and name it in the source mapping "
        "(`timezone: Europe/Stockholm`)"
    )


def _zoned_text(text: pl.Series, *, looked_at: int = 100_000) -> str | None:
    """The first of the first ``looked_at`` values that pandas reads, alone, as a time with a
    zone (only on the way to an error: one value at a time)."""
    for value in text.drop_nulls().head(looked_at):
        try:
            moment = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError):
            continue
        if moment.tzinfo is not None:
            return str(value)
    return None


def _beyond_pandas_range(parsed: pl.Series, text: pl.Series) -> pl.Series:
    """pandas cannot hold years past 2262: such rows parse as far-future, not as garbage."""
    year = text.str.extract(r"^(\d{4})-\d{2}-\d{2}").cast(pl.Int32, strict=False)
    far_future = (parsed.is_null() & (year > 2261)).fill_null(False)
    sentinel = dt.datetime(9999, 12, 31, tzinfo=dt.UTC if parsed.dtype.time_zone else None)  # type: ignore[attr-defined]
    return (
        pl.select(pl.when(pl.lit(far_future)).then(pl.lit(sentinel)).otherwise(pl.lit(parsed)))
        .to_series()
        .dt.cast_time_unit("us")
        .alias("timestamp")
    )


def _parse_values(frame: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    if "value" not in frame.columns:
        empty = pl.repeat(None, frame.height, eager=True, dtype=pl.Float64).alias("value")
        return empty, pl.repeat(False, frame.height, eager=True, dtype=pl.Boolean)
    column = frame["value"]
    if column.dtype.is_numeric():
        value = column.cast(pl.Float64)
    elif column.dtype in (pl.String, pl.Null, pl.Categorical):
        # an empty or blank text is no value, as an empty field: `""` of a CSV that quotes
        # every field set its event aside (review)
        column = blank_as_null(column.cast(pl.String))
        value = column.cast(pl.Float64, strict=False)
    else:
        raise SchemaError(
            f"events column 'value' has type {column.dtype}; give numbers (money), or drop the "
            "column from the source mapping"
        )
    bad = (column.is_not_null() & value.is_null()) | value.is_nan() | value.is_infinite()
    return value.alias("value"), bad.fill_null(False)


def blank_as_null(text: pl.Series) -> pl.Series:
    """Text without the spaces around it, an empty or blank one missing."""
    stripped = text.str.strip_chars()
    return stripped.zip_with(stripped != "", pl.Series([None], dtype=pl.String))


def _properties_as_json(frame: pl.DataFrame) -> pl.Expr:
    if "properties" not in frame.columns:
        return pl.lit(None, pl.String)
    dtype = frame["properties"].dtype
    if isinstance(dtype, pl.Struct):
        return pl.col("properties").struct.json_encode()
    if dtype in (pl.String, pl.Null):
        return pl.col("properties").cast(pl.String)
    raise SchemaError(
        f"events column 'properties' has type {dtype}; give a JSON object as text or a dict"
    )


# --- contacts ----------------------------------------------------------------------------------


def _validate_contacts(raw: pl.DataFrame) -> tuple[pa.Table, pa.Table]:
    _require_columns(
        raw.columns,
        ("contact_id", "marketing_consent"),
        "contacts",
        {
            "contact_id": "map your customer id column as `contact_id` in the source mapping",
            "marketing_consent": (
                "map your consent column as `marketing_consent`, or state the data set's consent "
                "with `consent_default:` in the source mapping"
            ),
        },
    )
    frame = raw.with_row_index("_row").with_columns(
        contact_id=_normalise_contact_id(raw.with_row_index("_row"), "contacts")
    )
    refuse_control_ids(frame["contact_id"], "contacts")
    consent, consent_bad = _parse_consent(frame["marketing_consent"])
    frame = frame.with_columns(marketing_consent=consent, _consent_bad=consent_bad)
    reason = (
        pl.when(pl.col("contact_id").is_null())
        .then(pl.lit("missing_contact_id"))
        .when(pl.col("_consent_bad"))
        .then(pl.lit("unparseable_consent"))
        .otherwise(pl.lit(None, pl.String))
    )
    frame = frame.with_columns(_reason=reason)
    # A contact listed twice keeps its first row, but consent only if every copy gives it:
    # a later opt-out must never be lost to a duplicate (an unreadable copy counts as no).
    consent_everywhere = (
        (pl.col("marketing_consent") & ~pl.col("_consent_bad")).all().over("contact_id")
    )
    frame = frame.with_columns(marketing_consent=pl.col("marketing_consent") & consent_everywhere)
    later_copy = pl.col("_reason").is_null() & ~pl.col("contact_id").is_first_distinct().over(
        pl.col("_reason").is_null()
    )
    frame = frame.with_columns(
        _reason=pl.when(later_copy)
        .then(pl.lit("duplicate_contact_id"))
        .otherwise(pl.col("_reason"))
    )
    attributes = [c for c in raw.columns if c not in ("contact_id", "marketing_consent")]
    good = frame.filter(pl.col("_reason").is_null()).select(
        "contact_id", "marketing_consent", *attributes
    )
    bad = frame.filter(pl.col("_reason").is_not_null()).select("_row", "_reason", "contact_id")
    table = good.to_arrow()
    for i, name in enumerate(CONTACTS_SCHEMA.names):
        table = table.set_column(
            i,
            CONTACTS_SCHEMA.field(name),
            table.column(name).cast(CONTACTS_SCHEMA.field(name).type),
        )
    return table, rejects_table("contacts", raw, bad)


def _parse_consent(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Consent as bool. No recorded consent (null) is no consent; unknown words are rejects."""
    if column.dtype == pl.Boolean:
        return column.fill_null(False), pl.repeat(False, column.len(), eager=True, dtype=pl.Boolean)
    if column.dtype.is_integer():
        bad = column.is_not_null() & ~column.is_in([0, 1])
        return (column == 1).fill_null(False), bad
    text = column.cast(pl.String).str.strip_chars().str.to_lowercase()
    yes = text.is_in(list(_CONSENT_TRUE))
    no = text.is_in(list(_CONSENT_FALSE))
    bad = text.is_not_null() & ~yes & ~no
    return yes.fill_null(False), bad.fill_null(False)


# --- shared helpers ----------------------------------------------------------------------------


def _to_polars(data: Frame, table: str) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pa.Table):
        return pl.DataFrame(pl.from_arrow(cast_unreadable_zones_to_utc(data)))
    if isinstance(data, pd.DataFrame):
        data = data.reset_index(drop=True)
        for name in data.columns:
            if isinstance(data[name].dtype, pd.DatetimeTZDtype):
                zone = pa.array(data[name].iloc[:0]).type.tz  # as Arrow, and so Polars, names it
                if not polars_reads_zone(zone):  # '+05:30': UTC, the same instants
                    data = data.assign(**{name: data[name].dt.tz_convert("UTC")})
        if "properties" in data.columns and data["properties"].dtype == object:
            # dicts become JSON text here, so Polars never has to guess a struct type
            data = data.assign(
                properties=data["properties"].map(
                    lambda p: json.dumps(p, sort_keys=True) if isinstance(p, dict) else p
                )
            )
        for name in data.columns:
            if data[name].dtype == object and _mixed_types(data[name]):
                # (mixed-integer too: ids like 17 and "a17" in one column)
                # a column mixing numbers and text is read as text; its rows are judged one by one
                data = data.assign(
                    **{name: data[name].map(lambda v: v if _is_missing(v) else str(v))}
                )
        return pl.from_pandas(data)
    raise TypeError(f"{table} must be a pandas DataFrame, Polars DataFrame or Arrow table")


def _mixed_types(column: pd.Series) -> bool:
    return pd.api.types.infer_dtype(column, skipna=True) in ("mixed", "mixed-integer")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _require_columns(
    columns: list[str], required: tuple[str, ...], table: str, fixes: dict[str, str]
) -> None:
    for name in required:
        if name not in columns:
            raise SchemaError(f"{table} are missing column '{name}'; {fixes[name]}")


def _normalise_contact_id(frame: pl.DataFrame, table: str) -> pl.Expr:
    column = frame["contact_id"]
    dtype = column.dtype
    if dtype.is_float() and (column.drop_nulls().drop_nans() % 1 == 0).all():
        # whole numbers stored as floats only because a missing id made pandas use NaN
        as_int = pl.col("contact_id").fill_nan(None).cast(pl.Int64).cast(pl.String)
        return pl.when(as_int == "").then(None).otherwise(as_int)
    if dtype.is_float():
        raise SchemaError(
            f"{table} column 'contact_id' holds decimal numbers; ids must be text or integers "
            "(read the column as text in the source mapping: `dtype: str`)"
        )
    text = pl.col("contact_id").cast(pl.String).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text)


def _as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    dtype = frame[name].dtype
    if dtype in (pl.String, pl.Null, pl.Categorical, pl.Enum) or dtype.is_integer():
        return pl.col(name).cast(pl.String)
    raise SchemaError(f"events column '{name}' has type {dtype}; give text")


def rejects_table(
    table: str, raw: pl.DataFrame, bad: pl.DataFrame, *, offset: int | None = 0
) -> pa.Table:
    """Rejected rows (``bad``: _row, _reason, contact_id) with their original values as JSON.
    ``raw`` holds the input rows from ``offset`` on; with ``offset=None`` it holds exactly the
    rejected rows, in order."""
    rows = bad["_row"].to_list()
    if offset is None:
        originals = raw
    else:
        originals = raw[[row - offset for row in rows]] if rows else raw.clear()
    records = [
        json.dumps(_jsonable(row), default=str, sort_keys=True)
        for row in originals.iter_rows(named=True)
    ]
    return pa.table(
        {
            "table": pa.array([table] * len(rows), pa.string()),
            "row_number": pa.array(rows, pa.int64()),
            "reason": pa.array(bad["_reason"].to_list(), pa.string()),
            "contact_id": pa.array(bad["contact_id"].to_list(), pa.string()),
            "record": pa.array(records, pa.string()),
            "source": pa.nulls(len(rows), pa.string()),
            "source_row": pa.nulls(len(rows), pa.int64()),
        },
        schema=REJECTS_SCHEMA,
    )


def _height(data: pa.Table | pl.DataFrame) -> int:
    return data.num_rows if isinstance(data, pa.Table) else data.height


def _slice(data: pa.Table | pl.DataFrame, offset: int, length: int) -> pa.Table | pl.DataFrame:
    return data.slice(offset, length)


def _take(data: pa.Table | pl.DataFrame, rows: pl.Series) -> pa.Table | pl.DataFrame:
    if isinstance(data, pa.Table):
        return data.take(rows.to_arrow())
    return data[rows.to_list()]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}


def as_utc(moment: dt.datetime, name: str = "now") -> dt.datetime:
    """A timezone-aware moment in UTC; a naive one is an error (its zone would be a guess),
    and so is a plain date (which midnight, in which zone?)."""
    if not isinstance(moment, dt.datetime):
        raise InputError(
            f"`{name}` must be a datetime with a time zone, not {type(moment).__name__} "
            f"{moment!r}; for a day's start in UTC: datetime(y, m, d, tzinfo=UTC)"
        )
    if moment.tzinfo is None:
        raise InputError(f"`{name}` must be timezone-aware (UTC), e.g. 2024-06-01T00:00:00+00:00")
    return moment.astimezone(dt.UTC)


# --- time zones Polars cannot read -------------------------------------------------------------


@functools.cache
def polars_reads_zone(zone: str) -> bool:
    """Whether Polars reads Arrow timestamps labelled ``zone``. It reads IANA names and offsets
    of whole hours ('-05:00' becomes Etc/GMT+5), but not an offset of other minutes ('+05:30',
    as pandas writes India's times, '+05:45', '-03:30', 'UTC+05:30'): its Parquet reader then
    panics, failing the whole command with a traceback."""
    try:
        pl.from_arrow(pa.array([], pa.timestamp("us", zone)))
    except pl.exceptions.PolarsError:
        return False
    return True


def utc_for_unreadable_zones(schema: pa.Schema) -> pa.Schema | None:
    """``schema`` with every timestamp in a zone Polars cannot read (``polars_reads_zone``),
    nested ones too, in UTC instead; None when it has none. An Arrow timestamp holds UTC
    instants whatever its zone, which only says how to show them, so casting to this schema
    changes no instant: every builder converts timestamps to UTC anyway."""
    fields = [field.with_type(_utc_if_unreadable(field.type)) for field in schema]
    if all(new.type == old.type for new, old in zip(fields, schema, strict=True)):
        return None
    return pa.schema(fields, metadata=schema.metadata)


def cast_unreadable_zones_to_utc(table: pa.Table) -> pa.Table:
    """``table`` with its timestamps in zones Polars cannot read in UTC (the same instants),
    so that Polars can read it; a table without any, as it is."""
    schema = utc_for_unreadable_zones(table.schema)
    return table if schema is None else table.cast(schema)


def _utc_if_unreadable(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(dtype):
        if dtype.tz is None or polars_reads_zone(dtype.tz):
            return dtype
        return pa.timestamp(dtype.unit, "UTC")
    if pa.types.is_struct(dtype):
        return pa.struct([field.with_type(_utc_if_unreadable(field.type)) for field in dtype])
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        item = dtype.value_field.with_type(_utc_if_unreadable(dtype.value_type))
        return pa.list_(item) if pa.types.is_list(dtype) else pa.large_list(item)
    if pa.types.is_fixed_size_list(dtype):
        item = dtype.value_field.with_type(_utc_if_unreadable(dtype.value_type))
        return pa.list_(item, dtype.list_size)
    return dtype


# --- Spark's INT96 timestamps ------------------------------------------------------------------

# Spark writes timestamps to Parquet as INT96 unless told otherwise (the default of
# `spark.sql.parquet.outputTimestampType`): UTC instants, yet the footer names no zone, so
# Polars and Arrow read them as naive times, in nanoseconds that clip or wrap outside the years
# 1677-2262. Spark reads them as UTC instants in microseconds, and so does every reader here
INT96_TIME: Final = pa.timestamp("us", "UTC")
# Polars' reader, told a column is INT96_TIME, reads one whose Arrow schema (pyarrow stores
# it, for pandas' tables) gives another zone or nanoseconds as the same instants
INT96_CAST: Final = pl.ScanCastOptions(datetime_cast=["nanosecond-downcast", "convert-timezone"])
_INT96_MARK: Final = {b"funnelcast.parquet_type": b"INT96"}


def parquet_schema(metadata: pq.FileMetaData) -> pa.Schema:
    """A Parquet file's Arrow schema, from its footer, with each top-level INT96 column
    ``INT96_TIME`` and marked as such (``int96_columns``); a nested one is left as it comes,
    as no builder reads it."""
    schema = metadata.schema.to_arrow_schema()
    columns = (metadata.schema.column(i) for i in range(metadata.num_columns))
    int96 = {column.path for column in columns if column.physical_type == "INT96"}
    if not int96.intersection(schema.names):
        return schema
    fields = [
        field.with_type(INT96_TIME).with_metadata({**(field.metadata or {}), **_INT96_MARK})
        if field.name in int96
        else field
        for field in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


def any_int96(metadata: pq.FileMetaData) -> bool:
    """Whether any column of a Parquet file, a nested one included, is stored as INT96: read
    with ``read_int96_times``, in nanoseconds a nested 9999-12-31 came in as 1816 or 2262, and
    one with a zone Polars cannot read stopped Polars' reader (review)."""
    leaves = (metadata.schema.column(i) for i in range(metadata.num_columns))
    return any(leaf.physical_type == "INT96" for leaf in leaves)


def read_int96_times(path: str, schema: pa.Schema, **options: Any) -> pa.Table:
    """The Parquet file at ``path`` (of ``schema``, from ``parquet_schema``) with its INT96
    times in microseconds, the top-level ones as ``INT96_TIME``: the UTC instants Spark wrote,
    in any year. Nested INT96 values (read by no builder) come in microseconds as they are;
    given ``schema`` to the reader, they were cast back to its nanoseconds, and a 9999-12-31
    among them refused the whole file (review)."""
    table = pq.read_table(path, coerce_int96_timestamp_unit="us", **options)
    for name in int96_columns(schema):
        if name in table.column_names:
            index = table.schema.get_field_index(name)
            field = table.schema.field(index).with_type(INT96_TIME)
            table = table.set_column(index, field, table.column(index).cast(INT96_TIME))
    return table


def int96_columns(schema: pa.Schema) -> list[str]:
    """The columns ``parquet_schema`` marked as INT96."""
    return [
        field.name for field in schema if _INT96_MARK.items() <= dict(field.metadata or {}).items()
    ]


def polars_schema_reading_int96(path: str, names: list[str]) -> pl.Schema:
    """Polars' schema of the Parquet file at ``path`` with the columns ``names`` (INT96) as
    ``INT96_TIME``: given to its reader, with ``INT96_CAST``, Polars reads them as UTC
    instants in microseconds, every year included (a cast after the read would start from the
    clipped nanoseconds)."""
    time = pl.Datetime("us", "UTC")
    return pl.Schema(
        {
            name: time if name in names else dtype
            for name, dtype in pl.read_parquet_schema(path).items()
        }
    )
