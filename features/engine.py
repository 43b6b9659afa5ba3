"""The embedded feature engine (Polars, lazy): per-contact features as of a moment, from the
declarative spec, using only events strictly before that moment.

One ``group_by`` over the events computes every aggregate of the spec as a filtered expression;
derived features are arithmetic on the result; contact attributes and the rules stage are joined
last. The online path (``features.online``) computes the same spec for one contact in plain
Python; tests hold the two equal.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, TypeAlias

import polars as pl
import pyarrow as pa

from features.schema import as_utc
from features.settings import RulesSettings, load_rules_settings
from features.spec import MICROS_PER_DAY, Aggregate, FeatureSpec, SpecError, compile_expression
from features.stages import rules_stage_as_of
from features.vocabulary import STAGES

EventsInput: TypeAlias = pa.Table | pl.DataFrame | pl.LazyFrame | Path | str
STAGE_TYPE = pl.Enum(STAGES)


def build_contact_features(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None = None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    rules: RulesSettings | None = None,
) -> pl.DataFrame:
    """One row per eligible contact: any event in the longest window before ``as_of``, or
    listed in ``contacts``. Columns: contact_id, as_of, the spec's features, the attributes,
    and rules_stage. Events at or after ``as_of`` are never read."""
    as_of = as_utc(as_of, "as_of")
    past = scan_events(events).filter(pl.col("timestamp") < as_of)
    aggregated = (
        past.group_by("contact_id")
        .agg([_aggregate_expression(a, as_of, spec) for a in spec.aggregates])
        .collect()
    )
    eligible = _eligible_contacts(past, contacts, as_of=as_of, spec=spec)
    frame = eligible.join(aggregated, on="contact_id", how="left")
    frame = fill_absent(frame, spec)
    frame = frame.with_columns([derived_expression(d.tree).alias(d.name) for d in spec.derived])
    frame = frame.with_columns(as_of=pl.lit(as_of, pl.Datetime("us", "UTC")))
    if spec.rules_stage:
        stages = rules_stage_as_of(past, as_of=as_of, settings=rules or load_rules_settings())
        frame = frame.join(stages.rename({"stage": "rules_stage"}), on="contact_id", how="left")
        frame = frame.with_columns(
            rules_stage=pl.col("rules_stage").fill_null("dormant").cast(STAGE_TYPE)
        )
    frame = join_attributes(frame, contacts, as_of=as_of, spec=spec)
    return frame.select("contact_id", "as_of", *feature_columns(frame)).sort("contact_id")


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The feature columns of a feature frame (everything but the keys)."""
    return [c for c in frame.columns if c not in ("contact_id", "as_of")]


def scan_events(events: EventsInput) -> pl.LazyFrame:
    """Events as a lazy frame; a Parquet path (file, folder or glob) is scanned, not loaded, so
    larger-than-memory inputs stream."""
    if isinstance(events, pl.LazyFrame):
        return events
    if isinstance(events, pl.DataFrame):
        return events.lazy()
    if isinstance(events, pa.Table):
        frame = pl.from_arrow(events)
        assert isinstance(frame, pl.DataFrame)
        return frame.lazy()
    path = Path(events)
    if path.is_dir():
        path = path / "events.parquet" if (path / "events.parquet").exists() else path / "*.parquet"
    elif not path.exists() and "*" not in str(path):
        raise FileNotFoundError(f"{path} does not exist; give events Parquet written by ingest")
    return pl.scan_parquet(path)


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


def _in_window(aggregate: Aggregate, as_of: dt.datetime) -> pl.Expr:
    if aggregate.window_days is None:
        return pl.lit(True)
    return pl.col("timestamp") >= as_of - dt.timedelta(days=aggregate.window_days)


def _aggregate_expression(aggregate: Aggregate, as_of: dt.datetime, spec: FeatureSpec) -> pl.Expr:
    matching = _matches(aggregate)
    selected = matching & _in_window(aggregate, as_of)
    timestamp = pl.col("timestamp")
    if aggregate.kind == "count":
        expression = selected.sum().cast(pl.Int64)
    elif aggregate.kind == "sum":
        expression = pl.col("value").filter(selected).sum().cast(pl.Float64)
    elif aggregate.kind == "distinct_days":
        expression = timestamp.filter(selected).dt.date().n_unique().cast(pl.Int64)
    elif aggregate.kind == "sessions":
        # a session starts at a matching event with no matching event in the gap before it,
        # looking at all history (so a session begun before the window is not counted twice)
        times = timestamp.filter(matching).sort()
        gap = dt.timedelta(minutes=spec.session_gap_minutes)
        starts = (times.diff() > gap).fill_null(True)
        window_start = (
            as_of - dt.timedelta(days=aggregate.window_days)
            if aggregate.window_days is not None
            else dt.datetime.min.replace(tzinfo=dt.UTC)
        )
        expression = (starts & (times >= window_start)).sum().cast(pl.Int64)
    elif aggregate.kind == "days_since_last":
        expression = _days_before(as_of, timestamp.filter(matching).max())
    else:  # days_since_first
        expression = _days_before(as_of, timestamp.filter(matching).min())
    return expression.alias(aggregate.name)


def _days_before(as_of: dt.datetime, moment: pl.Expr) -> pl.Expr:
    return (pl.lit(as_of) - moment).dt.total_microseconds().cast(pl.Float64) / MICROS_PER_DAY


def fill_absent(frame: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Counts and sums of contacts with no events before as_of are zero (the truth), while
    recency stays missing (undefined)."""
    zero_kinds = {"count", "sum", "distinct_days", "sessions"}
    return frame.with_columns(
        [
            pl.col(a.name).fill_null(0.0 if a.kind == "sum" else 0)
            for a in spec.aggregates
            if a.kind in zero_kinds
        ]
    )


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
        return _null_if_any_null(args, pl.max_horizontal(args))

    @staticmethod
    def min(args: list[pl.Expr]) -> pl.Expr:
        return _null_if_any_null(args, pl.min_horizontal(args))


def _null_if_any_null(args: list[pl.Expr], combined: pl.Expr) -> pl.Expr:
    # Polars' max/min_horizontal skip nulls; the spec says a missing input gives a missing value
    return pl.when(pl.any_horizontal([a.is_null() for a in args])).then(None).otherwise(combined)


def derived_expression(tree: Any) -> pl.Expr:
    expression: pl.Expr = compile_expression(
        tree, leaf=lambda name: pl.col(name).cast(pl.Float64), ops=_PolarsOps
    )
    return expression.cast(pl.Float64)


# --- contacts ---------------------------------------------------------------------------------


def _eligible_contacts(
    past: pl.LazyFrame,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
) -> pl.DataFrame:
    longest = dt.timedelta(days=spec.longest_window_days)
    recent = (
        past.filter(pl.col("timestamp") >= as_of - longest).select("contact_id").unique().collect()
    )
    listed = _contacts_frame(contacts)
    if listed is None:
        return recent
    return pl.concat([recent, listed.select("contact_id")]).unique()


def _contacts_frame(contacts: pa.Table | pl.DataFrame | None) -> pl.DataFrame | None:
    if contacts is None or isinstance(contacts, pl.DataFrame):
        return contacts
    frame = pl.from_arrow(contacts)
    assert isinstance(frame, pl.DataFrame)
    return frame


def join_attributes(
    frame: pl.DataFrame,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
) -> pl.DataFrame:
    """Join contact attributes: text as categorical, dates as days before as_of (a date after
    as_of is in the future of the snapshot and so missing)."""
    listed = _contacts_frame(contacts)
    if listed is None:
        return frame
    wanted = spec.attribute_names(listed.columns)
    missing = [c for c in wanted if c not in listed.columns]
    if missing:
        raise SpecError(
            f"the feature spec lists attributes {missing} that the contacts table lacks; remove "
            "them from `attributes:` or add them to the contacts"
        )
    columns: list[pl.Expr] = []
    for name in wanted:
        dtype = listed[name].dtype
        if dtype in (pl.String, pl.Categorical):
            columns.append(pl.col(name).cast(pl.String).cast(pl.Categorical).alias(name))
        elif dtype == pl.Date or isinstance(dtype, pl.Datetime):
            moment = pl.col(name).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
                moment = pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
            days = _days_before(as_of, moment)
            columns.append(
                pl.when(days >= 0).then(days).otherwise(None).alias(f"days_since_{name}")
            )
        elif dtype == pl.Boolean or dtype.is_numeric():
            columns.append(pl.col(name).cast(pl.Float64).alias(name))
        # other types (lists, structs) are not features; they are left out on purpose
    attributes = listed.select("contact_id", *columns)
    return frame.join(attributes, on="contact_id", how="left")
