"""Real data sources, declared in YAML mappings and read into the canonical tables.

A source mapping (``features/mappings/NAME.yaml``, or a user's own file) says how to read a data
set's file(s) and which of its columns and values become the canonical ``contact_id``,
``timestamp``, ``channel``, ``event_type``, ``value``, ``campaign_id`` and ``properties``; how its
contacts table and consent are read; and, optionally, which outcomes it provides as labels and
the training settings it needs (``training:``, e.g. a longer horizon for slow deals). Adding a
source is writing a YAML file, never editing this module.

``read_source`` applies a mapping and returns the raw canonical tables, *not yet validated*:
source event names the mapping does not list are passed through unchanged, so validation
rejects and counts them as ``unknown_event_type``. ``ingest`` reads and validates in one call.

Row numbers in the rejects of an ingested source count the rows of ``RawSource.events`` first,
then the rows the mapping set aside (``drop_contacts``), which are reported with the reason
``excluded_by_mapping``. Every reject of an ingested source also says where in the source it
came from: ``source`` is the mapping key and file (``"events[1] olist/deals.csv"``) and
``source_row`` the line of that file as an editor shows it (the header is line 1); for Parquet
or data inside a package it is the 0-based row index, and for an aggregated row (one basket from
its line items) the first input row of its group. A contact made from the events (a mapping
without a contacts file) points at its first event.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import importlib.util
import io
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import IO, Any, Final, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from features.errors import InputError
from features.schema import (
    CLOCK_SKEW,
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    REJECTS_SCHEMA,
    ControlCharacterIdsError,
    SchemaError,
    UnplacedZoneError,
    Validated,
    any_int96,
    as_utc,
    blank_as_null,
    cast_unreadable_zones_to_utc,
    control_ids_message,
    localise_to_utc,
    parquet_schema,
    parse_timestamps,  # validation's reader of times: label dates are read by it too
    read_int96_times,
    refuse_control_ids,
    rejects_table,
    utc_for_unreadable_zones,
    validate,
)
from features.settings import CalendarDay, FrozenSettings, parse_yaml_model
from features.vocabulary import CHANNELS, EVENT_TYPES

DATA_DIR_ENV: Final = "FUNNELCAST_DATA_DIR"
EXCLUDED_REASON: Final = "excluded_by_mapping"
MISSING_FIELDS: Final = "missing_fields"  # a CSV line with fewer fields than its header

LABELS_SCHEMA: Final = pa.schema(
    [
        pa.field("contact_id", pa.string(), nullable=False),
        pa.field("label_date", pa.timestamp("us", tz="UTC")),  # null: outcome has no date
        pa.field("outcome", pa.string(), nullable=False),
    ]
)

_TIMESTAMP_KEYWORDS: Final = frozenset({"unix_s", "unix_ms", "iso8601", "native"})
_AGGREGATE: Final = re.compile(r"^\s*(sum|min|max|first|count)\(\s*([^()]+?)\s*\)\s*$")
_DTYPES: Final[dict[str, pl.DataType]] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
}
_DATA_DIR_FIX: Final = (
    f"pass --data-dir or set {DATA_DIR_ENV} to the folder that holds the data sets"
)
# Internal columns carried through reading: which file a row came from (an index into
# `Origins.files`) and its 0-based row in that file. Never passed to validation.
_ORIGIN: Final = "__funnelcast_origin"
_ORIGIN_ROW: Final = "__funnelcast_origin_row"
_ORIGIN_COLUMNS: Final = (_ORIGIN, _ORIGIN_ROW)


class MappingError(InputError):
    """A source mapping file is not valid: the message names the file and the key to fix."""


# --- the mapping format ------------------------------------------------------------------------


class ReadSpec(FrozenSettings):
    """How to read one file. CSV and whitespace columns are read as text unless `dtypes` says
    otherwise, so ids keep their leading zeros and a stray word never changes a column's type."""

    path: str  # relative to the data directory (or to `package`)
    format: Literal["csv", "whitespace", "parquet"] = "csv"
    header: bool = True
    columns: list[str] | None = None  # names of the columns, in order (required without header)
    delimiter: str = ","
    # "date": an ISO date (YYYY-MM-DD), so a date attribute becomes days before each snapshot
    dtypes: dict[str, Literal["str", "int", "float", "date"]] = Field(default_factory=dict)
    null_values: list[str] = Field(default_factory=list)  # placeholders that mean "no value"
    package: str | None = None  # read `path` from inside this installed Python package
    install_hint: str | None = None  # how to install `package` when it is missing

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        # the CSV reader takes one single-byte character; a quote or a line break cannot
        # separate columns, as it already means something else in a CSV file
        if len(value) != 1 or not value.isascii() or value in {'"', "\n", "\r"}:
            raise ValueError(
                f"delimiter {value!r} is not one ASCII character; give exactly one, other "
                "than a quote or a line break: e.g. ',' or ';' or '\\t' (a tab)"
            )
        return value

    @model_validator(mode="after")
    def _names_when_no_header(self) -> ReadSpec:
        if not self.header and self.columns is None and self.format != "parquet":
            raise ValueError("a file without a header line needs `columns:` (its column names)")
        return self


class JoinSpec(FrozenSettings):
    """Columns looked up in a second file. Always a left join: a row without a match keeps its
    place with blanks, so validation counts it instead of the join dropping it."""

    read: ReadSpec
    # `key`, not `on`: YAML 1.1 reads a bare `on:` as the boolean true
    key: str  # key column of the table joined into
    right_key: str | None = None  # key column of the joined file (default: same as `key`)
    columns: list[str]  # columns taken from the joined file


class AggregateSpec(FrozenSettings):
    """One output row per group, e.g. one purchase per basket from its line items."""

    by: list[str]
    columns: dict[str, str]  # output column -> "sum(col)" | "min(col)" | "max(col)" | ...

    @field_validator("columns")
    @classmethod
    def _known_functions(cls, value: dict[str, str]) -> dict[str, str]:
        for name, expression in value.items():
            if not _AGGREGATE.match(expression):
                raise ValueError(
                    f"aggregate column {name!r}: {expression!r} is not one of sum(col), "
                    "min(col), max(col), first(col), count(col)"
                )
        return value


class TimestampSpec(FrozenSettings):
    column: str
    # unix_s | unix_ms | iso8601 (text, zone optional) | native (already a date/time type) |
    # a strftime pattern such as "%Y%m%d"
    format: str

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in _TIMESTAMP_KEYWORDS and "%" not in value:
            raise ValueError(
                f"timestamp format {value!r} is neither one of {sorted(_TIMESTAMP_KEYWORDS)} "
                "nor a strftime pattern (e.g. '%Y-%m-%d %H:%M:%S')"
            )
        return value


class ValueMap(FrozenSettings):
    """A canonical value: fixed for the whole stream, or read from a column through `values`.
    Column values not listed in `values` pass through unchanged (validation judges them)."""

    fixed: str | None = None
    column: str | None = None
    values: dict[str, str] = Field(default_factory=dict)
    missing: str | None = None  # used where the column is empty

    @model_validator(mode="after")
    def _fixed_or_column(self) -> ValueMap:
        if (self.fixed is None) == (self.column is None):
            raise ValueError("give exactly one of `fixed:` or `column:`")
        if self.fixed is not None and (self.values or self.missing is not None):
            raise ValueError("`values:` and `missing:` apply only to `column:`")
        trimmed: dict[str, str] = {}
        for source in self.values:  # the column's values are trimmed before the lookup
            if (other := trimmed.setdefault(source.strip(), source)) != source:
                raise ValueError(
                    f"`values:` lists {other!r} and {source!r}, one value once spaces around "
                    "it are trimmed (as the column's values are); keep one"
                )
        return self


class EventStreamSpec(FrozenSettings):
    """One kind of event read from one file (a source may declare several)."""

    name: str
    read: ReadSpec
    join: JoinSpec | None = None
    aggregate: AggregateSpec | None = None  # applied after the join
    contact_id: str
    timestamp: TimestampSpec
    event_type: ValueMap
    channel: ValueMap
    value: str | None = None
    campaign_id: str | None = None
    properties: list[str] = Field(default_factory=list)  # columns folded into the JSON
    # Puts the 0-based row of the file into properties under this key, so rows that repeat
    # every column are kept as separate events. Only for sources whose identical rows are real.
    row_number_property: str | None = None

    @model_validator(mode="after")
    def _targets_in_the_contract(self) -> EventStreamSpec:
        """What the mapping itself writes (``fixed:``, the right side of ``values:``,
        ``missing:``) is an event type or channel of the contract: a typo there
        (``order: purchse``) set aside every row it maps, all the purchases, with exit 0."""
        for key, given, vocabulary in (
            ("event_type", self.event_type, EVENT_TYPES),
            ("channel", self.channel, CHANNELS),
        ):
            targets = [given.fixed, given.missing, *given.values.values()]
            # as validation reads them: trimmed and lower-cased ("Purchase" is purchase)
            unknown = sorted(
                {t for t in targets if t is not None and t.strip().lower() not in vocabulary}
            )
            if unknown:
                raise ValueError(
                    f"{key} maps to {unknown}, outside the event contract; use one of "
                    f"{list(vocabulary)}"
                )
        return self


class ConsentSpec(FrozenSettings):
    column: str
    values: dict[str, bool]  # source value -> marketing consent


class ContactsSpec(FrozenSettings):
    """The contacts table: read from a file, or (no `read:`) one row per contact in the events."""

    read: ReadSpec | None = None
    join: JoinSpec | None = None
    contact_id: str = "contact_id"
    attributes: dict[str, str] = Field(default_factory=dict)  # source column -> attribute name
    consent: ConsentSpec | None = None
    consent_default: bool | None = None  # the data set records no consent: state it
    leaks_outcome: list[str] = Field(default_factory=list)  # never allowed as attributes

    @model_validator(mode="after")
    def _consent_stated_and_no_leaks(self) -> ContactsSpec:
        if (self.consent is None) == (self.consent_default is None):
            raise ValueError("give exactly one of `consent:` (a column) or `consent_default:`")
        leaking = sorted(set(self.attributes) & set(self.leaks_outcome))
        if leaking:
            raise ValueError(f"attributes {leaking} are listed in `leaks_outcome`; remove them")
        columns_of: dict[str, list[str]] = {}
        for column, name in self.attributes.items():
            columns_of.setdefault(name, []).append(column)
            if name in ("contact_id", "marketing_consent") or name.startswith("_"):
                raise ValueError(
                    f"`attributes` names column {column!r} {name!r}, a name the contacts "
                    "table keeps for itself (contact_id, marketing_consent, and any name "
                    "starting with _); give the attribute another name"
                )
        for name, columns in columns_of.items():
            if len(columns) > 1:  # one would silently replace the other
                raise ValueError(
                    f"`attributes` gives columns {columns} the same name {name!r}; give each "
                    "its own name"
                )
        return self


class OutcomeSpec(FrozenSettings):
    """The outcome label: a column's values mapped, or whether a column is filled."""

    column: str
    values: dict[str, str] | None = None
    when_present: str | None = None
    when_missing: str | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> OutcomeSpec:
        by_presence = self.when_present is not None and self.when_missing is not None
        if (self.values is not None) == by_presence:
            raise ValueError("give either `values:` or both `when_present:` and `when_missing:`")
        return self


class LabelsSpec(FrozenSettings):
    read: ReadSpec
    join: JoinSpec | None = None
    contact_id: str
    outcome: OutcomeSpec
    label_date: TimestampSpec | None = None  # None: outcomes without a date


class SourceTraining(FrozenSettings):
    """The training settings a source needs where the shipped ones do not fit it (``training:``
    of features/config/default.yaml): ``funnelcast run --source`` trains with them unless a
    ``--config`` gives the settings (theirs then, whole) and ``--model-name`` the name.
    ``model_name``: the registered model's name, so a sample source's models are never judged
    against (or served as) another data set's champion."""

    horizon_days: int | None = Field(default=None, gt=0)
    snapshot_every_days: int | None = Field(default=None, gt=0)
    snapshots: int | None = Field(default=None, ge=3)
    min_history_days: int | None = Field(default=None, ge=0)
    validation_snapshots: int | None = Field(default=None, ge=1)
    test_snapshots: int | None = Field(default=None, ge=1)
    observe_until: CalendarDay | None = None
    model_name: str | None = Field(default=None, min_length=1)

    def settings(self) -> dict[str, Any]:
        """The settings given, by name (``load_training_settings``' keywords)."""
        return self.model_dump(exclude_none=True)


class SourceMapping(FrozenSettings):
    name: str
    description: str
    timezone: str | None = None  # IANA zone of naive times in the files
    drop_contacts: list[str] = Field(default_factory=list)  # set aside and counted, with a why
    events: list[EventStreamSpec] = Field(default_factory=list)  # empty: a source without events
    contacts: ContactsSpec | None = None
    labels: LabelsSpec | None = None
    training: SourceTraining | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


# --- results -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """A file whose rows become rows of a canonical table, and how it was read."""

    label: str  # the mapping key and file: "events[1] olist-marketing-funnel/deals.csv"
    path: Path
    spec: ReadSpec
    rows: int  # rows read from it

    def source_rows(self, rows: pl.Series) -> pl.Series:
        """0-based rows of the file as read -> what `source_row` shows: the line in an editor
        (header = line 1) for text files; the row index itself for Parquet and package data.
        Null where the lines cannot be matched to the rows read."""
        rows = rows.cast(pl.Int64)
        if self.spec.format == "parquet" or self.spec.package is not None:
            return rows
        header = 1 if self.spec.header else 0
        if _count_lines(self.path) == self.rows + header:  # one line per row: no need to scan
            return rows + header + 1
        # a quoted value spans lines, or (whitespace files) blank lines were skipped
        starts = _record_lines(self.path, self.spec)
        if len(starts) != self.rows:
            return pl.repeat(None, rows.len(), eager=True, dtype=pl.Int64)
        return pl.Series(starts, dtype=pl.Int64).gather(rows)


@dataclasses.dataclass(frozen=True)
class Origins:
    """Where each row of the raw tables came from: per table ("events", "contacts", "labels"),
    a frame aligned row for row with it, holding the file (an index into `files`) and the
    0-based row in that file."""

    files: tuple[SourceFile, ...]
    rows: dict[str, pl.DataFrame]


@dataclasses.dataclass(frozen=True)
class RawSource:
    """A source read through its mapping, with canonical column names, not yet validated.

    ``events`` and ``contacts`` go to ``features.schema.validate``; ``labels`` follows
    ``LABELS_SCHEMA`` (contact_id, label_date as UTC or null, outcome); ``excluded`` holds the
    rows the mapping set aside (``drop_contacts``) in the rejects layout, so they are counted;
    ``origins`` says where in the files each row of the three tables came from.
    """

    events: pl.DataFrame
    contacts: pl.DataFrame | None
    labels: pa.Table | None
    timezone: str | None
    excluded: pa.Table
    origins: Origins
    notes: tuple[str, ...] = ()  # what reading did that the report must say


@dataclasses.dataclass(frozen=True)
class Ingested:
    """A validated source: the canonical tables and rejects, its labels, and its mapping."""

    validated: Validated
    labels: pa.Table | None
    mapping: SourceMapping
    notes: tuple[str, ...] = ()  # what reading did that the report says (RawSource.notes)

    def reject_counts(self) -> dict[tuple[str, str], int]:
        """Rejected rows per (table, reason), the mapping's exclusions included (zero too)."""
        counts = self.validated.reject_counts()
        for table in self.validated.rows_in:
            counts.setdefault((table, EXCLUDED_REASON), 0)
        return counts


# --- public API --------------------------------------------------------------------------------


def list_sources() -> list[str]:
    """Names of the mappings shipped in ``features/mappings``."""
    folder = resources.files("features").joinpath("mappings")
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def load_mapping(name_or_path: str | Path) -> SourceMapping:
    """A shipped mapping by name (``"taobao"``) or a user's mapping by path."""
    if (
        isinstance(name_or_path, Path)
        or name_or_path.endswith((".yaml", ".yml"))
        or (os.sep in name_or_path)
    ):
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"source mapping {path} does not exist")
        if not path.is_file():
            raise MappingError(f"source mapping {path} is not a file; give the YAML file itself")
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError as exc:
            raise MappingError(
                f"source mapping {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "save it as UTF-8"
            ) from None
        return _parse_mapping(text, origin=str(path))
    shipped = list_sources()
    if name_or_path not in shipped:
        raise MappingError(
            f"no shipped source mapping named {name_or_path!r}; shipped: {', '.join(shipped)} "
            "(or pass the path of your own YAML mapping)"
        )
    text = resources.files("features").joinpath(f"mappings/{name_or_path}.yaml").read_text("utf-8")
    return _parse_mapping(text, origin=f"shipped mapping {name_or_path!r}")


def default_data_dir() -> Path:
    """``$FUNNELCAST_DATA_DIR``, else ``../shared/data`` beside the repository."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        path = Path(configured)
        if not path.is_dir():
            raise FileNotFoundError(f"{DATA_DIR_ENV}={configured} is not a folder; {_DATA_DIR_FIX}")
        return path
    repository = Path(__file__).resolve().parent.parent
    beside = repository.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    raise FileNotFoundError(f"no data folder at {beside}; {_DATA_DIR_FIX}")


def read_source(mapping: SourceMapping, *, data_dir: Path) -> RawSource:
    """Read a source's files through its mapping into canonical (unvalidated) tables."""
    files = _FileCache(mapping, Path(data_dir))
    streams = [
        _read_event_stream(stream, files, key=f"events[{i}]", timezone=mapping.timezone)
        for i, stream in enumerate(mapping.events)
    ]
    events = _concat_streams(streams) if streams else _empty_events()
    # drop_contacts rows are set aside here and reported by ingest, never lost
    drop = pl.Series(mapping.drop_contacts, dtype=pl.String)
    events, excluded_events = _set_aside("events", events, drop, files)
    excluded = [excluded_events]
    origins = {"events": events.select(_ORIGIN_COLUMNS)}

    contacts = None
    if mapping.contacts is not None:
        contact_frame, excluded_contacts = _set_aside(
            "contacts", _read_contacts(mapping.contacts, files, events), drop, files
        )
        excluded.append(excluded_contacts)
        origins["contacts"] = contact_frame.select(_ORIGIN_COLUMNS)
        contacts = contact_frame.drop(_ORIGIN_COLUMNS)

    labels = None
    if mapping.labels is not None:
        label_frame, excluded_labels = _set_aside(
            "labels",
            _read_labels(mapping.labels, files, timezone=mapping.timezone),
            drop,
            files,
        )
        excluded.append(excluded_labels)
        origins["labels"] = label_frame.select(_ORIGIN_COLUMNS)
        # checked row by row, and typed, by ingest
        labels = label_frame.drop(_ORIGIN_COLUMNS).to_arrow()

    return RawSource(
        events=events.drop(_ORIGIN_COLUMNS),
        contacts=contacts,
        labels=labels,
        timezone=mapping.timezone,
        excluded=pa.concat_tables(excluded),
        origins=Origins(files=tuple(files.sources), rows=origins),
        notes=tuple(files.notes),
    )


def ingest(source: str | Path, *, data_dir: Path, now: datetime | None = None) -> Ingested:
    """Read a source (shipped name or mapping path) and validate it against the contract."""
    mapping = load_mapping(source)
    raw = read_source(mapping, data_dir=data_dir)
    try:
        validated = validate(raw.events, raw.contacts, timezone=raw.timezone, now=now)
        labels, label_rejects = _validate_labels(raw.labels, now=now)
    except ControlCharacterIdsError as error:
        raise _in_its_file(error, raw.origins) from None
    if mapping.contacts is not None and mapping.contacts.read is None:
        validated = _contacts_with_kept_events(validated)
    validated = dataclasses.replace(
        validated, rejects=_with_sources(validated.rejects, raw.origins)
    )
    set_aside = pa.concat_tables([raw.excluded, _with_sources(label_rejects, raw.origins)])
    return Ingested(
        validated=_with_excluded(validated, set_aside, labels=labels),
        labels=labels,
        mapping=mapping,
        notes=raw.notes,
    )


def _contacts_with_kept_events(validated: Validated) -> Validated:
    """The contacts a mapping with no contacts file makes from the events: those with an event
    validation kept. An id whose every row was set aside (a header line read as data, rows of
    an event type the mapping leaves out) became a consented contact with no events, scored
    and exported as dormant, trained on at every snapshot, and counted by the funnel before
    its first event (real-data review). Its rows are counted as the events' rejects; it was
    never a row of a file, so it leaves the contacts' count of rows in too."""
    assert validated.contacts is not None
    contacts = pl.from_arrow(validated.contacts)
    events = pl.from_arrow(validated.events.select(["contact_id"]))
    assert isinstance(contacts, pl.DataFrame)
    assert isinstance(events, pl.DataFrame)
    seen = contacts["contact_id"].is_in(events["contact_id"].unique())
    if seen.all():
        return validated
    rows_in = dict(validated.rows_in)
    rows_in["contacts"] -= int((~seen).sum())
    return dataclasses.replace(
        validated, contacts=validated.contacts.filter(seen.to_arrow()), rows_in=rows_in
    )


def _validate_labels(
    labels: pa.Table | None, *, now: datetime | None
) -> tuple[pa.Table | None, pa.Table]:
    """Label rows without a contact, with a date that does not read, or dated in the future
    are set aside and counted."""
    if labels is None:
        return None, REJECTS_SCHEMA.empty_table()
    cut_off = as_utc(now or datetime.now(UTC))
    frame = pl.from_arrow(labels)
    assert isinstance(frame, pl.DataFrame)
    # a label of an id no event or contact can have: refused, as in the other tables
    refuse_control_ids(frame["contact_id"], "labels")
    date = pl.col("label_date")
    if frame.schema["label_date"] == pl.String:  # some dates did not read (_label_dates)
        unread = date.str.starts_with("not ").fill_null(False)
        typed = pl.when(unread).then(None).otherwise(date).str.to_datetime(time_zone="UTC")
    else:
        unread, typed = pl.lit(False), date
    checked = frame.with_row_index("_row").with_columns(
        _reason=pl.when(pl.col("contact_id").is_null())
        .then(pl.lit("missing_contact_id"))
        .when(unread)
        .then(pl.lit("unparseable_label_date"))
        .when(typed > cut_off + CLOCK_SKEW)
        .then(pl.lit("future_label_date"))
        .otherwise(pl.lit(None, pl.String)),
        _date=typed.dt.cast_time_unit("us"),
    )
    bad = checked.filter(pl.col("_reason").is_not_null()).select("_row", "_reason", "contact_id")
    kept = checked.filter(pl.col("_reason").is_null()).select(
        "contact_id", label_date="_date", outcome="outcome"
    )
    return kept.to_arrow().cast(LABELS_SCHEMA), rejects_table("labels", frame, bad)


# --- mapping files -----------------------------------------------------------------------------


def _parse_mapping(text: str, *, origin: str) -> SourceMapping:
    return parse_yaml_model(text, SourceMapping, origin=origin, error=MappingError)


# --- reading files -----------------------------------------------------------------------------


class _FileCache:
    """Reads each file once per `read_source` call: one file may feed events, contacts and
    labels (Olist's leads, X Education's one table)."""

    def __init__(self, mapping: SourceMapping, data_dir: Path) -> None:
        self._source = mapping.name
        self._data_dir = data_dir
        self._frames: dict[str, tuple[pl.DataFrame, Path]] = {}
        self._short: dict[str, _ShortLines | None] = {}
        self.sources: list[SourceFile] = []  # files read by `read_rows`, in order
        # (_ORIGIN, _ORIGIN_ROW) of the rows of lines with fewer fields than the header
        self.short_rows: list[pl.DataFrame] = []
        self.notes: list[str] = []  # what reading changed that the report says

    def read(self, spec: ReadSpec, key: str) -> pl.DataFrame:
        """A file whose rows are not a canonical table's own (a joined file): a short line
        in it is refused."""
        frame, path = self._read(spec, key)
        if (short := self.short_lines(spec)) is not None:
            raise short.refusal(str(path), key)
        return frame

    def short_lines(self, spec: ReadSpec) -> _ShortLines | None:
        """The file's lines with fewer fields than its header (read already)."""
        return self._short[spec.model_dump_json()]

    def read_rows(self, spec: ReadSpec, key: str) -> pl.DataFrame:
        """The file, for rows of a canonical table (`key`: "events[1]", "contacts", ...), with
        the internal columns that say where each row came from."""
        frame, path = self._read(spec, f"{key}.read")
        shown = spec.path if spec.package is None else f"{spec.package}:{spec.path}"
        self.sources.append(SourceFile(f"{key} {shown}", path, spec, frame.height))
        if (short := self.short_lines(spec)) is not None:
            self.short_rows.append(
                pl.DataFrame(
                    {
                        _ORIGIN: pl.repeat(
                            len(self.sources) - 1, short.rows.len(), dtype=pl.UInt16, eager=True
                        ),
                        _ORIGIN_ROW: short.rows,
                    }
                )
            )
        return frame.with_columns(
            pl.lit(len(self.sources) - 1, pl.UInt16).alias(_ORIGIN),
            pl.int_range(frame.height, dtype=pl.Int64).alias(_ORIGIN_ROW),
        )

    def _read(self, spec: ReadSpec, key: str) -> tuple[pl.DataFrame, Path]:
        cache_key = spec.model_dump_json()
        if cache_key not in self._frames:
            path = self._locate(spec, key)
            frame = _read_file(spec, path, key)
            self._frames[cache_key] = (frame, path)
            self._short[cache_key] = _short_lines(frame, path, spec)
        return self._frames[cache_key]

    def _locate(self, spec: ReadSpec, key: str) -> Path:
        if spec.package is not None:
            if importlib.util.find_spec(spec.package) is None:
                hint = spec.install_hint or f"install the package {spec.package!r}"
                raise ModuleNotFoundError(
                    f"source {self._source!r} reads its data from the Python package "
                    f"{spec.package!r}, which is not installed; {hint}"
                )
            path = Path(str(resources.files(spec.package))) / spec.path
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} does not exist in package {spec.package!r} (source "
                    f"{self._source!r}, `{key}.path`); reinstall the package or fix the path"
                )
            return path
        path = self._data_dir / spec.path
        if not path.exists() and any(mark in spec.path for mark in "*?["):
            raise FileNotFoundError(
                f"{path}: `{key}.path` names one file, not a pattern (source {self._source!r}); "
                "give each file its own entry, or join the parts into one file"
            )
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist (source {self._source!r}, `{key}.path`); {_DATA_DIR_FIX}"
            )
        return path


def _read_file(spec: ReadSpec, path: Path, key: str) -> pl.DataFrame:
    """The file as the mapping declares it. A file the readers cannot read is a `SchemaError`
    naming the file, the mapping entry and what to check, never the reader's traceback."""
    where = f"{path} (`{key}`)"
    if path.is_dir():
        raise SchemaError(f"{where} is a folder; give the path of the file itself in `{key}.path`")
    if path.stat().st_size == 0:
        # no header line either: an export that failed looks the same, so it is refused, not
        # read as a table without rows
        raise SchemaError(
            f"{where} is empty (0 bytes, not even a header line), as a broken export is; "
            "re-export it (a file without rows still has its header line)"
        )
    try:
        if spec.format != "parquet" and _is_parquet(path):
            # read as text, its bytes make one long header line and a confusing error later
            raise SchemaError(f"{where} is a Parquet file; declare `format: parquet` in `{key}`")
        if spec.format != "parquet":
            _refuse_utf16(path, where)
        if spec.format == "csv":
            _check_line_endings(path, where)
        frame = _read_table(spec, path)
    except (
        pl.exceptions.PolarsError,
        pa.ArrowInvalid,  # Arrow reads a file with a time Polars cannot read (_read_parquet)
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
    ) as exc:
        raise SchemaError(f"{where} cannot be read: {_reading_fix(spec, path, exc)}") from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{where} cannot be read: {_encoding_fix(path)}") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # cut or damaged compression
        raise SchemaError(
            f"{where} cannot be read: it is a damaged gzip file ({exc}); compress it again, or "
            "give it uncompressed"
        ) from exc
    except OSError as exc:  # permission denied, a device error
        raise SchemaError(f"{where} cannot be read ({exc.strerror or exc})") from exc
    return _apply_dtypes(frame, spec, path, key)


def _read_table(spec: ReadSpec, path: Path) -> pl.DataFrame:
    if spec.format == "parquet":
        return _read_parquet(path)
    if spec.format == "csv":
        return pl.read_csv(
            path,
            has_header=spec.header,
            new_columns=spec.columns,
            separator=spec.delimiter,
            infer_schema=False,  # all text: ids keep leading zeros, types come from `dtypes`
            null_values=spec.null_values or None,
        )
    # runs of spaces separate columns (CDNOW); Polars has no regex separator, pandas does
    table = pd.read_csv(
        path,
        sep=r"\s+",
        header=0 if spec.header else None,
        names=spec.columns,
        dtype=str,
        keep_default_na=False,
        na_values=spec.null_values,
        compression="gzip" if _is_gzip(path) else "infer",  # by its bytes, as Polars does
    )
    return pl.from_pandas(table)


def _read_parquet(path: Path) -> pl.DataFrame:
    """A Parquet file as Polars reads it, but one with a time in a zone Polars cannot read
    ('+05:30', as pandas writes India's times), on which Polars' reader panics, or with times
    stored as INT96 (Spark's), which Polars reads as naive times: Arrow reads it, and those
    times are in UTC, the same instants (a `native` time keeps its instant, and an INT96 one is
    never placed in the mapping's `timezone:`, as Spark reads it as an instant)."""
    try:
        metadata = pq.read_metadata(path)
        schema = parquet_schema(metadata)
    except (pa.ArrowException, OSError):
        return pl.read_parquet(path)  # no Parquet footer: Polars' error says so
    if utc_for_unreadable_zones(schema) is None and not any_int96(metadata):
        return pl.read_parquet(path)
    # INT96 in microseconds, cast to the UTC of ``schema``: in nanoseconds they wrap outside
    # the years 1677-2262
    table = read_int96_times(str(path), schema)
    return pl.DataFrame(pl.from_arrow(cast_unreadable_zones_to_utc(table)))


def _reading_fix(spec: ReadSpec, path: Path, exc: Exception) -> str:
    """What a reader's error means for this file, and what to check in the mapping."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if spec.format == "parquet":
        return f"it is not a Parquet file ({message}); check `format:` (csv, whitespace, parquet)"
    if isinstance(exc, pl.exceptions.NoDataError | pd.errors.EmptyDataError):
        return "it holds no data, not even a header line; re-export it"
    if "utf-8" in message.lower() or "utf8" in message.lower():
        return _encoding_fix(path)
    if spec.format == "whitespace":
        # pandas names the line: "Expected 4 fields in line 7, saw 5"
        return (
            f"{message}; a value holding a space splits into two columns, so this file needs "
            "another `format:` (csv with its `delimiter:`)"
        )
    if spec.columns is not None and "new_columns" in message:
        with _open_text(path) as handle:
            first = next(csv.reader(handle, delimiter=spec.delimiter), [])
        return (
            f"`columns:` names {len(spec.columns)} columns but its first line has {len(first)} "
            f"fields; name each column, or check `delimiter:` (now {spec.delimiter!r})"
        )
    ragged = _first_ragged_line(path, spec)
    if ragged is not None:
        line, found, first = ragged
        # a semicolon file with decimal commas: its header is one field, its rows two or more
        return (
            f"line {line} has {found} fields where the first line has {len(first)}; check "
            f"`delimiter:` (now {spec.delimiter!r}) and that values holding it are quoted"
            f"{_one_column_hint(first)}"
        )
    stray = _stray_quote_line(path, spec)
    if stray is not None:
        return (
            f"line {stray} has a quote inside a value that does not start with one (as in "
            '27" monitor), which opens a quoted value that never closes; quote the whole '
            'value and double the quote in it ("27"" monitor"), or re-export with quoting on'
        )
    return (
        f"{message}; check `format:` (now csv), `delimiter:` (now {spec.delimiter!r}), that it "
        "is UTF-8 text and that every quote is closed"
    )


_SNIFF_BYTES = 1 << 16


_TWICE = "_duplicated_0"  # how the CSV reader renames a column the header names again


def _check_line_endings(path: Path, where: str) -> None:
    """Lines ended by a carriage return alone (Excel for Mac's "CSV (Macintosh)"): the CSV
    reader reads them as one header line and no rows, without a word (a review)."""
    with _open_bytes(path) as handle:
        head = handle.read(_SNIFF_BYTES)
    if b"\r" in head and b"\n" not in head:
        raise SchemaError(
            f"{where}: its lines end with a carriage return alone (old Mac line endings, as "
            "Excel for Mac's 'CSV (Macintosh)' writes), which reads as one line; save it as "
            f"'CSV UTF-8', or convert them: `tr '\\r' '\\n' < {path.name} > "
            f"{path.stem}.lf{path.suffix}`"
        )


# the CSV reader decompresses gzip by itself, so every look at the lines decompresses too
_GZIP = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP


def _open_bytes(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (as the CSV reader reads it)."""
    if _is_gzip(path):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    """The file as text for the csv module (lines counted as the reader counts rows)."""
    return io.TextIOWrapper(_open_bytes(path), encoding="utf-8", errors="replace", newline="")


def _refuse_utf16(path: Path, where: str) -> None:
    """UTF-16 text (Excel's "Unicode Text" export) reads as names with NUL bytes between the
    letters, and the error then blamed the mapping's column names (a review)."""
    with _open_bytes(path) as handle:
        head = handle.read(2)
    if head in (b"\xff\xfe", b"\xfe\xff"):
        raise SchemaError(
            f"{where} is UTF-16 text (as Excel's 'Unicode Text' saves), not UTF-8; save it as "
            f"'CSV UTF-8', or convert it: `iconv -f utf-16 -t utf-8 {path.name} > "
            f"{path.stem}.utf8{path.suffix}`"
        )


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def _encoding_fix(path: Path) -> str:
    return (
        "it is not UTF-8 text (e.g. Latin-1 or Windows-1252); save it as UTF-8, e.g. "
        f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`"
    )


@dataclasses.dataclass(frozen=True)
class _ShortLines:
    """Lines of a CSV file with fewer fields than its header: the CSV reader fills their
    missing values with nulls, as if they were empty (a cut line's purchase lost its amount,
    a review). Their rows are set aside as ``missing_fields``."""

    rows: pl.Series  # 0-based rows of the frame read
    first_line: int  # as an editor numbers it
    fields: int
    expected: int

    def refusal(self, where: str, key: str) -> SchemaError:
        """For a file whose rows cannot be set aside one by one (a joined file, baskets)."""
        more = f" (and {self.rows.len() - 1:,} more lines)" if self.rows.len() > 1 else ""
        return SchemaError(
            f"{where}: line {self.first_line} has {self.fields} fields where the header has "
            f"{self.expected}{more}, so its last values are missing, not empty, and `{key}` "
            "cannot set its rows aside one by one; re-export the file whole, or write each "
            "empty value between its delimiters (`a,,`)"
        )


def _short_lines(frame: pl.DataFrame, path: Path, spec: ReadSpec) -> _ShortLines | None:
    """The lines of a CSV file with fewer named fields than its header, if any. A short line
    leaves the last column null, so only a file with nulls there is read again, by the csv
    module (one pass in C), and its short lines count only when its records are as many as
    the rows read (a bare carriage return is a line break to the csv module and not to the
    CSV reader): nothing is set aside by a number that could point at another row."""
    if spec.format != "csv" or not frame.width or not frame.height:
        return None
    if not frame.get_column(frame.columns[-1]).null_count():
        return None
    short = _Shortness(spec)
    with _large_csv_fields(), _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=spec.delimiter)
        header = 1 if spec.header else 0
        if spec.header:
            if (names := next(reader, None)) is None:
                return None
            short.see(0, 1, names)
        expected, ended = short.expected, reader.line_num  # the line before each record
        records = header
        for records, record in enumerate(reader, start=header + 1):
            if len(record) < expected:  # only these cost a call
                short.see(records - 1, ended + 1, record)
            ended = reader.line_num
    if records != frame.height + header:
        return None
    return short.found()


class _Shortness:
    """Collects the records with fewer named fields than the header (or `columns:`)."""

    def __init__(self, spec: ReadSpec) -> None:
        self._header = spec.header
        self._expected = None if spec.header else len(spec.columns or ())
        self._rows: list[int] = []
        self._first: tuple[int, int] | None = None

    @property
    def expected(self) -> int:
        """The fields a line must have: the header's named ones, or `columns:`."""
        return self._expected or 0

    def see(self, index: int, line: int, fields: list[str]) -> None:
        """Record ``index`` (0-based, the header included) starting on ``line``."""
        if index == 0 and self._header:
            names = list(fields)
            while names and not names[-1].strip():  # a trailing delimiter names no column
                names.pop()
            self._expected = len(names)
        elif any(field.strip() for field in fields) and len(fields) < (self._expected or 0):
            # (a blank or whitespace-only line is a row without an id, not a short one)
            self._rows.append(index - (1 if self._header else 0))
            self._first = self._first or (line, len(fields))

    def found(self) -> _ShortLines | None:
        if self._first is None or self._expected is None:
            return None
        first_line, fields = self._first
        return _ShortLines(
            pl.Series(self._rows, dtype=pl.Int64), first_line, fields, self._expected
        )


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    """The csv module refuses a field over 128 KiB (an e-mail body, a JSON blob) that the
    CSV reader read: lifted for the block."""
    previous = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _stray_quote_line(path: Path, spec: ReadSpec) -> int | None:
    """The first line with a quote in the middle of an unquoted value (the CSV reader takes it
    for the start of a quoted value that runs on to the end of the file), as an editor
    numbers lines; None when there is none."""
    delimiter, inside = spec.delimiter, False
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if '"' not in line:
                continue
            position = 0
            while position < len(line):
                char = line[position]
                if char == '"' and inside:
                    if line[position + 1 : position + 2] == '"':  # a doubled quote in the value
                        position += 1
                    else:
                        inside = False
                elif char == '"':
                    if position and line[position - 1] != delimiter:
                        return number
                    inside = True
                position += 1
    return None


def _first_ragged_line(path: Path, spec: ReadSpec) -> tuple[int, int, list[str]] | None:
    """(line, fields, the first record) of the first CSV record with more fields than the
    first one, as the CSV reader counts them; None when there is none."""
    with _open_text(path) as handle, _large_csv_fields():
        reader = csv.reader(handle, delimiter=spec.delimiter)
        first: list[str] | None = None
        line = 1
        for record in reader:
            if first is None:
                first = record
            elif len(record) > len(first):
                return line, len(record), first
            line = reader.line_num + 1
    return None


def _one_column_hint(header: list[str]) -> str:
    """When a header read as one name holds another usual delimiter, the mapping's
    `delimiter:` to set (a review), starting with "; "; else ""."""
    if len(header) == 1 and (found := next((d for d in ";\t|," if d in header[0]), None)):
        return (
            f"; its header reads as one column holding {found!r}: if that separates the "
            f"columns, set `delimiter: {json.dumps(found)}` in the mapping's `read:`"
        )
    return ""


def _apply_dtypes(frame: pl.DataFrame, spec: ReadSpec, path: Path, key: str) -> pl.DataFrame:
    for name, dtype in spec.dtypes.items():
        _require(frame, name, f"{key}.dtypes", str(path))
        column = frame[name]
        if column.dtype == pl.String and dtype != "str":
            column = column.str.strip_chars()
        try:
            if dtype == "date":
                converted = column.cast(pl.String).str.to_date("%Y-%m-%d", strict=False)
            else:
                converted = column.cast(_DTYPES[dtype], strict=False)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            # a column of a kind that has no such reading at all (categorical, binary, list)
            raise SchemaError(
                f"{path}: column '{name}' holds {column.dtype} values, which do not read as "
                f"{dtype}; fix `{key}.dtypes`, or write the column as text or numbers"
            ) from exc
        unread = column.filter(column.is_not_null() & converted.is_null())
        if unread.len():
            # said here, in the mapping's terms: Polars' own message advises options of its
            # API (strict=False, str.strptime) that no mapping has
            shown = ", ".join(repr(str(value)) for value in unread.unique(maintain_order=True)[:3])
            form = " (YYYY-MM-DD)" if dtype == "date" else ""
            raise SchemaError(
                f"{path}: column '{name}' does not read as {dtype}{form}: {unread.len():,} of "
                f"{column.is_not_null().sum():,} values, such as {shown}; fix the file, or "
                f"`{key}.dtypes`"
            )
        frame = frame.with_columns(converted.alias(name))
    return frame


def _require(frame: pl.DataFrame, column: str, key: str, where: str) -> None:
    if f"{column}{_TWICE}" in frame.columns:
        # the CSV reader keeps the first under its name and renames the other: which one the
        # mapping reads is not said (a review's contact was kept with the first's consent)
        raise SchemaError(
            f"{where}: its header names the column '{column}' twice or more, and `{key}` reads "
            "it; rename one in the file, or name every column, in order, with `columns:` in "
            "the mapping's `read:` (the header line is then read as names no more)"
        )
    if column not in frame.columns:
        names = [name for name in frame.columns if name not in _ORIGIN_COLUMNS]
        raise SchemaError(
            f"{where} has no column '{column}' (it has: {', '.join(names)}); "
            f"fix `{key}` in the source mapping{_one_column_hint(names)}"
        )
    if frame[column].dtype == pl.Binary:  # a UUID as 16 bytes, as Spark or BigQuery write it
        raise SchemaError(
            f"{where}: column '{column}', which `{key}` reads, holds bytes (binary), not text or "
            "numbers; store it as text (a UUID in its 36-character form, e.g. "
            "str(uuid.UUID(bytes=...)) or Spark's `uuid` as a string), or leave it out of the "
            "source mapping"
        )


def _join(
    left: pl.DataFrame, join: JoinSpec, files: _FileCache, *, key: str, where: str
) -> pl.DataFrame:
    right = files.read(join.read, f"{key}.read")
    right_key = join.right_key or join.key
    _require(left, join.key, f"{key}.key", where)
    _require(right, right_key, f"{key}.right_key", join.read.path)
    for column in join.columns:
        _require(right, column, f"{key}.columns", join.read.path)
        if column in left.columns and column != join.key:
            raise SchemaError(
                f"{where} already has a column '{column}'; drop it from `{key}.columns`"
            )
    right = right.select(pl.col(right_key).alias(join.key), *join.columns)
    if right[join.key].is_duplicated().any():
        # a repeated key would copy left rows, inventing events or contacts
        raise SchemaError(
            f"{join.read.path}: key '{right_key}' repeats, so the join in `{key}` would copy "
            "rows; join on a column that is unique in that file"
        )
    if left[join.key].dtype != right[join.key].dtype:
        # ids read as text on one side and as integers on the other still match as text
        left = left.with_columns(pl.col(join.key).cast(pl.String))
        right = right.with_columns(pl.col(join.key).cast(pl.String))
    return left.join(right, on=join.key, how="left", maintain_order="left")


def _aggregate(
    frame: pl.DataFrame,
    spec: AggregateSpec,
    *,
    key: str,
    where: str,
    timestamp: TimestampSpec,
    timezone: str | None,
    timestamp_key: str,
    value: str | None,
    contact_id: str | None = None,
    line_of: Callable[[pl.Series], pl.Series] | None = None,
) -> tuple[pl.DataFrame, int]:
    """The groups' rows, and how many of them had lines without an amount among others.
    ``line_of``: the file's 0-based rows -> their lines as `source_row` shows them."""
    for column in spec.by:
        _require(frame, column, f"{key}.by", where)
    # a line without a group key is a group of its own: Polars groups the nulls together, and
    # a review's blank basket ids merged lines of other contacts into one event, their
    # contacts left with none; and a group's lines that name other contacts are each
    # contact's own event (`first()` gave them all to the first line's contact)
    groups: dict[str, pl.Expr] = {
        _ALONE: pl.when(pl.any_horizontal(pl.col(c).is_null() for c in spec.by))
        .then(pl.int_range(pl.len(), dtype=pl.Int64))
        .otherwise(None)
    }
    named = _AGGREGATE.match(spec.columns.get(contact_id or "", ""))
    if named is not None and named.group(1) == "first":
        # as validation reads ids: " h1" and "h1" are one contact, whose basket stays one
        groups[_GROUP_CONTACT] = pl.col(named.group(2)).cast(pl.String).str.strip_chars()
    expressions = []
    helpers: dict[str, pl.Series] = {}  # columns that sum text amounts, order text times
    for output, text in spec.columns.items():
        match = _AGGREGATE.match(text)
        assert match is not None  # checked when the mapping was loaded
        function, column = match.groups()
        _require(frame, column, f"{key}.columns.{output}", where)
        source = pl.col(column)
        missing = f"__funnelcast_missing_{output}"
        if function == "sum":
            # a line without a number (an empty or blank field) adds nothing to its group's
            # sum, and a group with none at all has no sum, as a plain row with an empty value
            # has none, not 0; the event's value said and counted when partly given
            lines = frame[column]
            if lines.dtype == pl.String:
                lines = blank_as_null(lines)
                numbers = lines.cast(pl.Float64, strict=False)
                readable = numbers.is_not_null() | lines.is_null()
                if output == value:
                    # the event's value: a line whose amount does not read is its group's
                    # value, as text, so that the group is set aside as unparseable_value, as a
                    # plain event row's would be, showing that text (review: a NaN showed as
                    # null), and counted (it stopped the whole ingest); a sum without that
                    # line would understate the basket
                    unread_value = f"__funnelcast_unread_{output}"
                    helpers[unread_value] = lines.zip_with(~readable, _NO_TEXT)
                elif not readable.all():  # another sum (a property) has no reason to set it aside
                    raise SchemaError(
                        f"{where}: column '{column}' has values that are not numbers "
                        f"({_first_unread(frame, readable, column, line_of)}) and cannot be "
                        f"summed; fix `{key}.columns.{output}` or the file"
                    )
                summed = f"__funnelcast_number_{output}"
                helpers[summed] = numbers
                source = pl.col(summed)
            helpers[missing] = lines.is_null()
            if output == value:
                helpers[_UNPRICED] = helpers[missing]
        summed_value = pl.when(pl.col(missing).all()).then(None).otherwise(source.sum())
        if function == "sum" and output == value and frame[column].dtype == pl.String:
            unread_line = pl.col(f"__funnelcast_unread_{output}")
            summed_value = (
                pl.when(unread_line.is_not_null().any())
                .then(unread_line.drop_nulls().first())
                .otherwise(summed_value.cast(pl.String))  # exact: the shortest round trip
            )
        aggregated = {
            "sum": summed_value,
            "min": source.min(),
            "max": source.max(),
            "first": source.first(),
            "count": source.count(),
        }[function]
        by_time = function in ("min", "max") and output == timestamp.column
        if by_time and frame[column].dtype == pl.String:
            # as text "1/15/2024" comes before "1/5/2024": take the text of the line whose
            # time comes first (last), read with the declared format
            order, unread = f"__funnelcast_order_{output}", f"__funnelcast_unread_{output}"
            instants = _instants(frame[column], timestamp, key=timestamp_key, timezone=timezone)
            helpers[order] = instants
            helpers[unread] = instants.is_null() & frame[column].is_not_null()
            # a line whose time does not read wins, so that its basket is rejected as
            # unparseable_timestamp showing that text, not given another line's time
            aggregated = source.sort_by(
                unread, order, descending=[True, function == "max"], nulls_last=True
            ).first()
        expressions.append(aggregated.alias(output))
    if _ORIGIN_ROW in frame.columns:  # a group comes from its first input row
        expressions += [pl.col(_ORIGIN).first(), pl.col(_ORIGIN_ROW).min()]
    if _UNPRICED in helpers:
        unpriced = pl.col(_UNPRICED)
        expressions.append((unpriced.any() & ~unpriced.all()).alias(_UNPRICED))
    grouped = (
        frame.with_columns(**helpers, **groups)
        .group_by([*spec.by, *groups], maintain_order=True)
        .agg(expressions)
        .drop(list(groups))
    )
    if _UNPRICED not in grouped.columns:
        return grouped, 0
    return grouped.drop(_UNPRICED), int(grouped[_UNPRICED].sum())


def _first_unread(
    frame: pl.DataFrame,
    readable: pl.Series,
    column: str,
    line_of: Callable[[pl.Series], pl.Series] | None,
) -> str:
    """The first value of ``column`` that does not read, and its line, for an error."""
    unread = frame.filter(~readable)
    text = f"e.g. {unread[column][0]!r}"
    if line_of is None or _ORIGIN_ROW not in unread.columns:
        return text
    line = line_of(unread[_ORIGIN_ROW].head(1))[0]
    return text if line is None else f"{text} at line {line}"


_ALONE = "__funnelcast_alone"  # a line's own group: its group key is missing
_NO_TEXT = pl.Series([None], dtype=pl.String)
_UNPRICED = "__funnelcast_unpriced"  # a line without an amount (its group: partly priced)
_GROUP_CONTACT = "__funnelcast_group_contact"  # the contact of a group's lines


# --- events ------------------------------------------------------------------------------------


def _read_event_stream(
    stream: EventStreamSpec, files: _FileCache, *, key: str, timezone: str | None
) -> pl.DataFrame:
    where = f"{stream.read.path} (events {stream.name!r})"
    frame = files.read_rows(stream.read, key)
    properties = list(stream.properties)
    if stream.row_number_property is not None:
        frame = frame.with_row_index(stream.row_number_property)
        properties.append(stream.row_number_property)
    if stream.join is not None:
        frame = _join(frame, stream.join, files, key=f"{key}.join", where=where)
    if stream.aggregate is not None:
        if (short := files.short_lines(stream.read)) is not None:
            # a basket is known by its first line: a short line inside it could not be found
            raise short.refusal(where, f"{key}.aggregate")
        frame, partly_priced = _aggregate(
            frame,
            stream.aggregate,
            key=f"{key}.aggregate",
            where=where,
            timestamp=stream.timestamp,
            timezone=timezone,
            timestamp_key=f"{key}.timestamp",
            value=stream.value,
            contact_id=stream.contact_id,
            line_of=files.sources[-1].source_rows,  # the stream's own file, read last
        )
        if partly_priced:
            files.notes.append(
                f"{key} {stream.name!r}: {partly_priced:,} of the events it read (groups of "
                f"{', '.join(stream.aggregate.by)}; before any was set aside) have lines "
                f"without an amount ('{stream.value}') beside lines with one: their value is "
                "the sum of the lines that have one"
            )

    referenced = [
        (stream.contact_id, f"{key}.contact_id"),
        (stream.timestamp.column, f"{key}.timestamp.column"),
        (stream.event_type.column, f"{key}.event_type.column"),
        (stream.channel.column, f"{key}.channel.column"),
        (stream.value, f"{key}.value"),
        (stream.campaign_id, f"{key}.campaign_id"),
        *[(name, f"{key}.properties") for name in properties],
    ]
    for column, column_key in referenced:
        if column is not None:
            _require(frame, column, column_key, where)

    timestamp = _parse_event_time(
        frame[stream.timestamp.column],
        stream.timestamp.format,
        key=f"{key}.timestamp",
        timezone=timezone,
    )
    return frame.with_columns(_timestamp=timestamp).select(
        contact_id=_contact_ids(frame, stream.contact_id, key=f"{key}.contact_id"),
        timestamp=pl.col("_timestamp"),
        channel=_mapped_value(stream.channel),
        event_type=_mapped_value(stream.event_type),
        value=(pl.col(stream.value) if stream.value is not None else pl.lit(None, pl.Float64)),
        campaign_id=(
            pl.col(stream.campaign_id).cast(pl.String)
            if stream.campaign_id is not None
            else pl.lit(None, pl.String)
        ),
        properties=(
            pl.struct(properties).struct.json_encode() if properties else pl.lit(None, pl.String)
        ),
        **{name: pl.col(name) for name in _ORIGIN_COLUMNS},
    )


def _contact_ids(frame: pl.DataFrame, column: str, *, key: str) -> pl.Expr:
    if frame[column].dtype.is_float():
        raise SchemaError(
            f"column '{column}' ({key}) holds decimal numbers; ids must be text: for a CSV "
            f"file declare `dtypes: {{{column}: str}}` in the source mapping (read as written); "
            "a Parquet file must store them as text or integers (a float such as 1.0 has no "
            "one text)"
        )
    # a blank id is no id: null here, as validation reads it, so that a contact made from the
    # events is not made from it (its events are already counted as missing_contact_id)
    text = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text)


def _mapped_value(spec: ValueMap) -> pl.Expr:
    if spec.fixed is not None:
        return pl.lit(spec.fixed, pl.String)
    assert spec.column is not None  # the model allows exactly one of fixed / column
    # trimmed before the lookup, as ids and consent values are: "view " is the mapping's view
    text = pl.col(spec.column).cast(pl.String).str.strip_chars()
    if spec.values:
        # replace() keeps values the mapping does not list: validation must see and count them
        text = text.replace({source.strip(): name for source, name in spec.values.items()})
    if spec.missing is not None:
        text = text.fill_null(spec.missing)
    return text


def _parse_event_time(column: pl.Series, fmt: str, *, key: str, timezone: str | None) -> pl.Series:
    """Times as the mapping declares them, in UTC where the zone is known. Without a zone, naive
    times stay naive and validation refuses them; ISO text is left to validation, which reads
    a zone per row."""
    if fmt == "iso8601":
        if isinstance(column.dtype, pl.Datetime | pl.Date):
            raise SchemaError(
                f"column '{column.name}' already holds dates or times; declare "
                f"`{key}.format: native`"
            )
        return column.cast(pl.String).str.strip_chars()
    return _typed_or_text(_parse_typed_time(column, fmt, key=key, timezone=timezone), column, fmt)


def _parse_typed_time(column: pl.Series, fmt: str, *, key: str, timezone: str | None) -> pl.Series:
    """Times in any format but ISO text, typed: UTC where the zone is known, null where a row
    does not read."""
    if fmt == "native":
        if isinstance(column.dtype, pl.Datetime):
            parsed = column.dt.cast_time_unit("us")
        elif isinstance(column.dtype, pl.Date):
            parsed = column.cast(pl.Datetime("us"))
        else:
            raise SchemaError(
                f"column '{column.name}' has type {column.dtype}, not dates or times; declare "
                f"its `{key}.format` (unix_s, unix_ms, iso8601 or a strftime pattern)"
            )
    elif isinstance(column.dtype, pl.Datetime | pl.Date):
        raise SchemaError(
            f"column '{column.name}' already holds dates or times; declare `{key}.format: native`"
        )
    elif fmt in ("unix_s", "unix_ms"):
        numbers = column if column.dtype.is_numeric() else column.str.strip_chars()
        given = numbers.cast(pl.Float64, strict=False)
        micros = (
            (given * (1_000_000 if fmt == "unix_s" else 1_000))
            .round()
            .cast(pl.Int64, strict=False)  # out of range -> null -> an unparseable_timestamp reject
        )
        # and so is a time outside years 1-9999 (milliseconds read as seconds, say): no
        # calendar holds it, and the set-aside row's record could not be written (a review's
        # traceback)
        micros = micros.set(~micros.is_between(_FIRST_MICROS, _LAST_MICROS).fill_null(True), None)
        # under 10^11 ms is before March 1973: seconds in a milliseconds column (exports
        # merged from two systems), which would land in January 1970 without a word; and
        # under 10^8 s, the same moment, a placeholder (0 or -1 for "no time") or a count in
        # another unit, which would be an event of 1970 that every all-history feature reads
        # (review: unix_s kept them, unix_ms set them aside)
        seconds = given if fmt == "unix_s" else given / 1_000
        micros = micros.set((seconds.abs() < _BEFORE_UNIX_TIMES).fill_null(False), None)
        parsed = pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")
    else:
        text = column.cast(pl.String).str.strip_chars()
        parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False)
        if _ADJACENT_NUMBERS.search(fmt) and set(_DIRECTIVE.findall(fmt)) <= _FIXED_WIDTH:
            # numbers without a separator between them read only at their full width: Polars
            # read "1997111" with %Y%m%d as 1997-11-01, which could as well be 11 January
            parsed = parsed.set((parsed.dt.strftime(fmt) != text).fill_null(False), None)
    dtype = parsed.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None and timezone is not None:
        parsed = localise_to_utc(parsed, timezone)
    return parsed


def _instants(
    column: pl.Series, spec: TimestampSpec, *, key: str, timezone: str | None
) -> pl.Series:
    """Each row's time, read as the stream's timestamps are, for putting rows in time order;
    null where a row does not read (or is naive and no zone is named)."""
    if spec.format == "iso8601":
        text = _parse_event_time(column, spec.format, key=key, timezone=timezone)
        return parse_timestamps(text, timezone=timezone)[0]
    return _parse_typed_time(column, spec.format, key=key, timezone=timezone)


_DIRECTIVE = re.compile(r"%.")
_FIXED_WIDTH = frozenset({"%Y", "%m", "%d", "%H", "%M", "%S", "%y", "%j", "%%"})
_ADJACENT_NUMBERS = re.compile(r"%[YmdHMSyj]%[YmdHMSyj]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# a unix time under this many seconds (before March 1973) is set aside: 10^11 in a unix_ms
# column is seconds written there, a unix_s value a placeholder (0, -1)
_BEFORE_UNIX_TIMES = 10**8
_FIRST_MICROS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MICROSECOND
_LAST_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _MICROSECOND


def _typed_or_text(parsed: pl.Series, raw: pl.Series, fmt: str) -> pl.Series:
    """Typed times when every row parsed; otherwise text, so that a bad row reaches validation
    as a visible "unparseable_timestamp" reject carrying the source text, not as a blank."""
    failed = parsed.is_null() & raw.is_not_null()
    if not failed.any():
        return parsed.alias("timestamp")
    # the prefix keeps validation's ISO reader from giving the text a meaning `fmt` did not
    shown = pl.lit(f"not {fmt}: ") + pl.lit(raw.cast(pl.String))
    return (
        pl.select(pl.when(pl.lit(failed)).then(shown).otherwise(pl.lit(_iso_text(parsed))))
        .to_series()
        .alias("timestamp")
    )


def _iso_text(times: pl.Series) -> pl.Series:
    dtype = times.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return times.dt.convert_time_zone("UTC").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    return times.dt.to_string("%Y-%m-%dT%H:%M:%S%.6f")


def _concat_streams(frames: list[pl.DataFrame]) -> pl.DataFrame:
    for name in EVENT_COLUMNS:
        if len({frame[name].dtype for frame in frames}) > 1:
            # streams disagree on a column's type (typed times beside text, numbers beside
            # text): text is the common ground that validation reads row by row
            frames = [frame.with_columns(_as_text(frame[name])) for frame in frames]
    return pl.concat(frames, how="vertical")


def _as_text(column: pl.Series) -> pl.Series:
    if isinstance(column.dtype, pl.Datetime):
        return _iso_text(column).alias(column.name)
    return column.cast(pl.String)


def _empty_events() -> pl.DataFrame:
    frame = pl.from_arrow(EVENTS_SCHEMA.empty_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(
        pl.lit(None, pl.UInt16).alias(_ORIGIN), pl.lit(None, pl.Int64).alias(_ORIGIN_ROW)
    )


# --- contacts and labels -----------------------------------------------------------------------


def _read_contacts(spec: ContactsSpec, files: _FileCache, events: pl.DataFrame) -> pl.DataFrame:
    if spec.read is None:
        # one row per contact seen in the events, from its first event; rows without an id
        # (blank ids are null by now) are already counted as missing_contact_id event rejects,
        # so they do not become contacts too
        frame = (
            events.select("contact_id", *_ORIGIN_COLUMNS)
            .filter(pl.col("contact_id").is_not_null())
            .unique("contact_id", keep="first", maintain_order=True)
        )
        where = "the events"
    else:
        frame = files.read_rows(spec.read, "contacts")
        where = spec.read.path
    if spec.join is not None:
        frame = _join(frame, spec.join, files, key="contacts.join", where=where)
    _require(frame, spec.contact_id, "contacts.contact_id", where)
    for column in spec.attributes:
        _require(frame, column, "contacts.attributes", where)
    if spec.consent is not None:
        _require(frame, spec.consent.column, "contacts.consent.column", where)
    return frame.select(
        contact_id=_contact_ids(frame, spec.contact_id, key="contacts.contact_id"),
        marketing_consent=_consent(spec),
        **{name: pl.col(column) for column, name in spec.attributes.items()},
        **{name: pl.col(name) for name in _ORIGIN_COLUMNS},
    )


def _consent(spec: ContactsSpec) -> pl.Expr:
    if spec.consent is None:
        return pl.lit(spec.consent_default, pl.Boolean)
    column = spec.consent.column
    text = pl.col(column).cast(pl.String).str.strip_chars()
    words = {
        source: "true" if consent else "false" for source, consent in spec.consent.values.items()
    }
    # a value the mapping does not list becomes text validation cannot read, so the contact is
    # rejected as unparseable_consent instead of being guessed (a "Yes" in a "Do Not Email"
    # column must never read as consent)
    return (
        pl.when(text.is_in(list(words)))
        .then(text.replace(words))
        .otherwise(pl.lit(f"unmapped {column}: ") + text)
    )


def _read_labels(spec: LabelsSpec, files: _FileCache, *, timezone: str | None) -> pl.DataFrame:
    frame = files.read_rows(spec.read, "labels")
    where = spec.read.path
    if spec.join is not None:
        frame = _join(frame, spec.join, files, key="labels.join", where=where)
    _require(frame, spec.contact_id, "labels.contact_id", where)
    _require(frame, spec.outcome.column, "labels.outcome.column", where)
    if spec.label_date is not None:
        _require(frame, spec.label_date.column, "labels.label_date.column", where)
        label_date = _label_dates(frame[spec.label_date.column], spec.label_date, timezone)
    else:
        label_date = pl.Series("label_date", [None] * frame.height, pl.Datetime("us", "UTC"))
    return frame.with_columns(label_date=label_date).select(
        contact_id=_contact_ids(frame, spec.contact_id, key="labels.contact_id"),
        label_date=pl.col("label_date"),
        outcome=_outcome(frame, spec.outcome),
        **{name: pl.col(name) for name in _ORIGIN_COLUMNS},
    )


def _outcome(frame: pl.DataFrame, spec: OutcomeSpec) -> pl.Expr:
    column = pl.col(spec.column)
    if spec.values is None:
        return (
            pl.when(column.is_null())
            .then(pl.lit(spec.when_missing))
            .otherwise(pl.lit(spec.when_present))
        )
    text = frame[spec.column].cast(pl.String).str.strip_chars()
    unmapped = sorted({str(v) for v in text.filter(~text.is_in(list(spec.values)))})
    if unmapped or text.null_count():
        # labels are not validated row by row: an unknown outcome is a mapping problem
        raise SchemaError(
            f"labels column '{spec.column}' has values {unmapped or ['(empty)']} that "
            "`labels.outcome.values` does not map; map each of them"
        )
    return column.cast(pl.String).str.strip_chars().replace(spec.values)


def _label_dates(column: pl.Series, spec: TimestampSpec, timezone: str | None) -> pl.Series:
    """Label dates in UTC, read exactly as event times are: a time without an offset is in the
    mapping's `timezone:`, and an error without one. A date that does not read is kept as its
    text, marked as an event time's is (``not <format>: <text>``), so that ingest sets that row
    aside as ``unparseable_label_date`` with what the file holds; when not one date reads, the
    format is wrong, not the rows: an error naming a value and its row."""
    key = "labels.label_date"
    if spec.format == "iso8601":
        # read by validation's own reader, as event times are
        text = _parse_event_time(column, spec.format, key=key, timezone=timezone)
        try:
            parsed, naive = parse_timestamps(text, timezone=timezone)
        except UnplacedZoneError as exc:  # a zone in a form not read: said as such
            said = str(exc).replace("events column 'timestamp'", f"labels column '{column.name}'")
            raise SchemaError(said) from exc
        except SchemaError as exc:  # every time is naive and no zone is named
            raise _no_label_zone(column) from exc
        if naive.any():  # some are naive, and no zone is named
            raise _no_label_zone(column)
    else:
        parsed = _parse_typed_time(column, spec.format, key=key, timezone=timezone)
    dtype = parsed.dtype
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is None:
        raise _no_label_zone(column)
    unread = parsed.is_null() & column.is_not_null()
    dates = parsed.dt.convert_time_zone("UTC").dt.cast_time_unit("us").alias("label_date")
    if not unread.any():
        return dates
    rows = unread.arg_true()
    if len(rows) == column.len() - column.null_count():
        raise SchemaError(
            f"labels column '{column.name}': none of its {len(rows):,} date(s) reads as "
            f"{spec.format!r} (e.g. {column[rows[0]]!r} on data row {rows[0] + 1}); set "
            "`labels.label_date.format` to how the file writes them"
        )
    shown = pl.lit(f"not {spec.format}: ") + pl.lit(column.cast(pl.String))
    return (
        pl.select(pl.when(pl.lit(unread)).then(shown).otherwise(pl.lit(_iso_text(dates))))
        .to_series()
        .alias("label_date")
    )


def _no_label_zone(column: pl.Series) -> SchemaError:
    return SchemaError(
        f"labels column '{column.name}' has no time zone; name it in the source mapping "
        "(`timezone: Europe/Stockholm`) or give times with their UTC offset"
    )


# --- rows set aside by the mapping -------------------------------------------------------------


def _excluded_rows(
    table: str, frame: pl.DataFrame, reasons: pl.Series, *, first_row: int, files: list[SourceFile]
) -> pa.Table:
    """Rows set aside while reading (`drop_contacts`, lines with missing fields) in the
    rejects layout, numbered after the rows that were kept."""
    records = [
        json.dumps(row, default=str, sort_keys=True)
        for row in frame.drop(_ORIGIN_COLUMNS).iter_rows(named=True)
    ]
    source, source_row = _locate(frame.select(_ORIGIN_COLUMNS), files)
    return pa.table(
        {
            "table": pa.array([table] * frame.height, pa.string()),
            "row_number": pa.array(range(first_row, first_row + frame.height), pa.int64()),
            "reason": reasons.cast(pl.String).to_arrow(),
            "contact_id": pa.array(frame["contact_id"].cast(pl.String).to_list(), pa.string()),
            "record": pa.array(records, pa.string()),
            "source": source,
            "source_row": source_row,
        },
        schema=REJECTS_SCHEMA,
    )


def _set_aside(
    table: str, frame: pl.DataFrame, drop: pl.Series, files: _FileCache
) -> tuple[pl.DataFrame, pa.Table]:
    """The rows of `drop_contacts` (excluded_by_mapping) and of lines with fewer fields than
    their file's header (missing_fields), taken out and put in the rejects layout."""
    dropped = frame["contact_id"].is_in(drop).fill_null(False)
    short = pl.repeat(False, frame.height, eager=True, dtype=pl.Boolean)
    if files.short_rows:
        cut = pl.concat(files.short_rows).with_columns(_cut=pl.lit(True))
        short = (
            frame.select(_ORIGIN_COLUMNS)
            .join(cut, on=_ORIGIN_COLUMNS, how="left", maintain_order="left")
            .get_column("_cut")
            .fill_null(False)
        )
    aside = dropped | short
    kept = frame.filter(~aside)
    reasons = (
        pl.select(pl.when(dropped).then(pl.lit(EXCLUDED_REASON)).otherwise(pl.lit(MISSING_FIELDS)))
        .to_series()
        .filter(aside)
    )
    excluded = _excluded_rows(
        table, frame.filter(aside), reasons, first_row=kept.height, files=files.sources
    )
    return kept, excluded


# --- where a reject came from ------------------------------------------------------------------


def _with_sources(rejects: pa.Table, origins: Origins) -> pa.Table:
    """Rejects with `source` and `source_row` filled in: `row_number` is the row's position in
    its raw table, whose origins say which file and row it came from."""
    tables = pl.Series("table", rejects.column("table"))
    numbers = pl.Series("row_number", rejects.column("row_number"))
    file_of = pl.repeat(None, rejects.num_rows, eager=True, dtype=pl.UInt16).alias(_ORIGIN)
    row_of = pl.repeat(None, rejects.num_rows, eager=True, dtype=pl.Int64).alias(_ORIGIN_ROW)
    for table, rows in origins.rows.items():
        positions = (tables == table).arg_true()
        if positions.len():
            found = rows.gather(numbers.gather(positions))
            file_of = file_of.scatter(positions, found[_ORIGIN])
            row_of = row_of.scatter(positions, found[_ORIGIN_ROW])
    source, source_row = _locate(pl.DataFrame([file_of, row_of]), origins.files)
    return (
        rejects.drop_columns(["source", "source_row"])
        .append_column(REJECTS_SCHEMA.field("source"), source)
        .append_column(REJECTS_SCHEMA.field("source_row"), source_row)
    )


def _in_its_file(error: ControlCharacterIdsError, origins: Origins) -> SchemaError:
    """Validation's refusal of ids holding control characters, naming the file and the line
    (the row of a Parquet file) of the first one, not its row in the table validated."""
    rows = origins.rows.get(error.table)
    index = None if rows is None else rows[_ORIGIN][error.row]
    if rows is None or index is None:
        return error
    file = origins.files[index]
    number = file.source_rows(rows[_ORIGIN_ROW].slice(error.row, 1))[0]
    text = file.spec.format != "parquet" and file.spec.package is None
    if number is None:  # lines that cannot be matched to the rows read
        place = f"one is in {file.label}"
    else:
        row = f"line {number}" if text else f"row {number} (counting from 0)"
        place = f"{row} of {file.label} is one"
    return SchemaError(
        control_ids_message(error.count, error.where, example=error.example, first=place)
    )


def _locate(
    origin: pl.DataFrame, files: list[SourceFile] | tuple[SourceFile, ...]
) -> tuple[pa.Array, pa.Array]:
    """`source` and `source_row` for rows given as (file index, 0-based row in the file)."""
    labels = pl.Series([file.label for file in files], dtype=pl.String)
    file_of = origin[_ORIGIN]
    source = pl.repeat(None, origin.height, eager=True, dtype=pl.String)
    source_row = pl.repeat(None, origin.height, eager=True, dtype=pl.Int64)
    for index in file_of.drop_nulls().unique().sort().to_list():
        positions = (file_of == index).fill_null(False).arg_true()
        rows = origin[_ORIGIN_ROW].gather(positions)
        source = source.scatter(positions, labels[index])
        source_row = source_row.scatter(positions, files[index].source_rows(rows))
    return source.to_arrow().cast(pa.string()), source_row.to_arrow()


def _count_lines(path: Path) -> int:
    """Lines in a file, a last line without a line break included."""
    count, last = 0, b"\n"
    with _open_bytes(path) as handle:
        while chunk := handle.read(1 << 24):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _record_lines(path: Path, spec: ReadSpec) -> list[int]:
    """The line (1-based) on which each row of a text file starts, as the reader counts rows:
    a quoted CSV value may span lines; blank lines are rows of a CSV (Polars reads them as
    empty rows) but not of a whitespace file (pandas skips them)."""
    starts: list[int] = []
    with _open_text(path) as handle, _large_csv_fields():
        if spec.format == "whitespace":
            starts = [number for number, line in enumerate(handle, start=1) if line.strip()]
        else:
            reader = csv.reader(handle, delimiter=spec.delimiter)
            line = 1
            for _ in reader:
                starts.append(line)
                line = reader.line_num + 1
    return starts[1:] if spec.header else starts


def _with_excluded(
    validated: Validated, excluded: pa.Table, *, labels: pa.Table | None
) -> Validated:
    """Validation's result with the mapping's exclusions added to its rejects, so that rows in
    still equal rows kept plus rows rejected for every table (labels included)."""
    counts = Counter(excluded.column("table").to_pylist())
    rows_in = dict(validated.rows_in)
    if labels is not None:
        rows_in["labels"] = labels.num_rows
    for table, count in counts.items():
        rows_in[table] = rows_in.get(table, 0) + count
    return dataclasses.replace(
        validated, rejects=pa.concat_tables([validated.rejects, excluded]), rows_in=rows_in
    )
