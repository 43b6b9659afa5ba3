"""Point-in-time labels: what a contact does *after* a snapshot, never before it.

Features as of a snapshot use events strictly before ``as_of``; labels use only the events in
the horizon ``[as_of, as_of + horizon_days)``, so the two never share an event. A snapshot
whose horizon reaches past the end of the observed data cannot be labelled and is refused.

* Purchase label: did the contact purchase (or start a subscription) in the horizon.
* Revealed stage: the stage that the contact's behaviour in the horizon shows, by the same
  rules as the baseline (``features.stages``): the deepest signal, a purchase by someone who had
  bought before is retention, a review/referral/share by a customer is advocacy, nothing is
  dormant.
* Provided labels: a labels table (contact_id, label_date, outcome), e.g. CRM lifecycle history
  or a won/lost flag; see ``label_from_provided``.
* Simulator truth: the hidden stage on the snapshot date (``features.simulator.true_stage_on``),
  for evaluation only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import polars as pl
import pyarrow as pa

from features.consent import refuse_unusable_ids
from features.engine import STAGE_TYPE, EventsInput, scan_events
from features.errors import InputError
from features.schema import refuse_events_after_now
from features.settings import RulesSettings
from features.stages import signal_aggregations, stage_from_signal_columns
from features.vocabulary import PURCHASE_EVENTS, STAGES

LABEL_COLUMNS = ("contact_id", "as_of", "purchased", "revealed_stage")
# outcomes of a provided labels table that count as a conversion (case-insensitive)
POSITIVE_OUTCOMES = frozenset({"converted", "won", "purchase", "purchased", "1", "true", "yes"})
# the words a provided outcome may use for "not converted": any other word is refused, so that a
# typo or a CRM's own word ("closed_won") is not read as a negative silently
NEGATIVE_OUTCOMES = frozenset(
    {"not_converted", "not_won", "lost", "closed_lost", "not_purchased", "0", "false", "no"}
)


class NoEventsError(InputError):
    """No events at all: nothing to snapshot or label (training says too little data)."""


def observed_until(events: EventsInput, *, now: dt.datetime | None = None) -> dt.datetime:
    """The end of the observed data: midnight (UTC) after the day of the last event. Logs are
    taken to be complete up to the end of their last day, but never past today's midnight: a
    log that runs into today has not seen the rest of it, and a label horizon ending later
    would count its unseen purchases as none. Events more than the clock skew after ``now``
    (default: the current time) are a clock or time-zone error, refused as every command and
    the service refuse them: the snapshots would be counted back from them."""
    last = scan_events(events).select(pl.col("timestamp").max()).collect().item()
    if last is None:
        raise NoEventsError(
            "there are no events, and the models learn from each contact's events before a "
            "snapshot and its outcome after it"
        )
    last = last.astimezone(dt.UTC)
    now = dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)
    refuse_events_after_now(
        last,
        "the event log",
        fix="correct the timestamps, or train on the events before them with --observe-until "
        "(observe_until)",
        now=now,
    )
    day = min(last.date() + dt.timedelta(days=1), now.date())
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def label_events(
    events: EventsInput,
    *,
    as_of_dates: Sequence[dt.datetime],
    horizon_days: int,
    rules: RulesSettings,
    until: dt.datetime | None = None,
) -> pl.DataFrame:
    """Per snapshot and contact with any event in its horizon: ``purchased`` and
    ``revealed_stage``. Contacts absent from a snapshot's rows did nothing in its horizon: not
    purchased, dormant (``with_default_labels`` fills them in).

    Only events in ``[as_of, as_of + horizon_days)`` are read for the signals, plus the
    purchases before ``as_of`` to know who was already a customer."""
    if horizon_days < 1:
        raise InputError(f"horizon_days must be at least 1, got {horizon_days}")
    until = until or observed_until(events)
    horizon = dt.timedelta(days=horizon_days)
    late = [d for d in as_of_dates if d + horizon > until]
    if late:
        raise InputError(
            f"snapshot {late[0]:%Y-%m-%d} cannot be labelled: its {horizon_days}-day horizon "
            f"ends after the data does ({until:%Y-%m-%d}); use snapshots up to "
            f"{until - horizon:%Y-%m-%d}"
        )
    scanned = scan_events(events).select("contact_id", "timestamp", "event_type")
    queries = [_label_one_snapshot(scanned, as_of, as_of + horizon, rules) for as_of in as_of_dates]
    if not queries:
        return _empty_labels()
    labels = pl.concat(pl.collect_all(queries))
    # a padded id's events in a horizon would label another contact than the features' (the
    # builders refuse such ids in the events before the snapshots)
    refuse_unusable_ids(labels.get_column("contact_id"), "the events", rows=False)
    return labels.sort("as_of", "contact_id")


def _label_one_snapshot(
    events: pl.LazyFrame, as_of: dt.datetime, end: dt.datetime, rules: RulesSettings
) -> pl.LazyFrame:
    in_horizon = pl.col("timestamp") >= as_of
    is_purchase = pl.col("event_type").is_in(PURCHASE_EVENTS)
    # only the horizon's events, plus earlier purchases (who was a customer before)
    relevant = events.filter((pl.col("timestamp") < end) & (in_horizon | is_purchase))
    signals = relevant.group_by("contact_id").agg(
        **signal_aggregations(in_horizon), any_in_horizon=in_horizon.any()
    )
    return signals.filter(pl.col("any_in_horizon")).select(
        "contact_id",
        as_of=pl.lit(as_of, pl.Datetime("us", "UTC")),
        purchased=pl.col("purchases_in_window") > 0,
        # a horizon with events but no stage signal (only sends) reveals nothing: dormant
        revealed_stage=stage_from_signal_columns(rules).cast(STAGE_TYPE),
    )


def with_default_labels(frame: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Join labels onto a feature frame (contact_id, as_of): a contact with no event in the
    horizon did not purchase and is dormant; that is the truth, not a missing value."""
    joined = frame.join(labels, on=["contact_id", "as_of"], how="left")
    return joined.with_columns(
        pl.col("purchased").fill_null(False),
        pl.col("revealed_stage").fill_null(pl.lit("dormant", STAGE_TYPE)),
    )


def _empty_labels() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "contact_id": pl.String,
            "as_of": pl.Datetime("us", "UTC"),
            "purchased": pl.Boolean,
            "revealed_stage": STAGE_TYPE,
        }
    )


# --- provided labels --------------------------------------------------------------------------


def label_from_provided(
    labels: pa.Table | pl.DataFrame,
    *,
    as_of_dates: Sequence[dt.datetime],
    horizon_days: int,
    positive_outcomes: Iterable[str] = POSITIVE_OUTCOMES,
    set_aside: dict[str, int] | None = None,
) -> pl.DataFrame:
    """Labels from a provided table (contact_id, label_date, outcome) for each snapshot.

    * An outcome that is a stage name is a stage label: the stage recorded last before the
      horizon's end, as_of + horizon (a lifecycle history holds until it changes; of two at
      the same moment, the later row); contacts with no record by then are not labelled.
    * Any other outcome is a conversion flag (``positive_outcomes``, case-insensitive): at a
      snapshot, positive when a positive outcome is dated in the horizon; a contact whose
      positive outcome is before the snapshot has already converted and is not labelled
      again; every other listed contact is negative.
    * A negative outcome without a date (a lead never won, as many CRMs export it) is negative
      at every snapshot. A positive outcome or a stage without a date cannot be placed in
      time: it would label every snapshot, those long before it happened too (a model trained
      so learns from the future: test AUC-ROC 0.995 on Olist with its won dates removed). They
      are set aside, with every outcome of a contact converted at an unknown date, and counted
      in ``set_aside`` (``labels_without_date``); when no outcome is left, an ``InputError``.

    Returns contact_id, as_of, and ``purchased`` (conversion) and/or ``provided_stage``.
    """
    frame = labels if isinstance(labels, pl.DataFrame) else pl.from_arrow(labels)
    assert isinstance(frame, pl.DataFrame)
    missing = {"contact_id", "label_date", "outcome"} - set(frame.columns)
    if missing:
        raise InputError(
            f"the labels table lacks columns {sorted(missing)}; it needs contact_id, label_date "
            "(may be empty) and outcome, as `funnelcast ingest` writes it"
        )
    if frame.height == 0:
        raise InputError("the labels table is empty; give labelled contacts or drop --labels")
    frame = _typed_labels(frame)
    positive = {o.lower() for o in positive_outcomes}
    known = positive | NEGATIVE_OUTCOMES | set(STAGES)
    unknown = (
        frame.filter(pl.col("outcome").is_null() | ~pl.col("outcome").is_in(sorted(known)))
        .select(pl.col("outcome").fill_null("(empty)"))["outcome"]
        .value_counts(sort=True)
        .head(5)
    )
    if unknown.height:
        listed = ", ".join(f"{word!r} ({count:,})" for word, count in unknown.iter_rows())
        raise InputError(
            f"labels with outcomes {listed} that are neither a stage name, a conversion "
            f"({', '.join(sorted(positive))}) nor a non-conversion "
            f"({', '.join(sorted(NEGATIVE_OUTCOMES))}); rename them to one of these (a "
            "mapping's outcome takes `values: {closed_won: won}`)"
        )
    is_stage = pl.col("outcome").is_in(STAGES)
    is_positive = ~is_stage & pl.col("outcome").is_in(positive)
    undated = pl.col("label_date").is_null()
    unplaced = frame.filter(undated & is_positive)["contact_id"].unique()
    usable = frame.filter(~(undated & is_stage) & ~pl.col("contact_id").is_in(unplaced.implode()))
    if set_aside is not None:
        set_aside["labels_without_date"] = frame.height - usable.height
    if usable.height == 0:
        raise InputError(
            f"none of the {frame.height:,} labels can be placed in time: a positive outcome or "
            "a stage needs its label_date (when it happened), or it would label every "
            "snapshot, those before it happened too; map the date column of your CRM export "
            "to label_date, or leave out --labels to learn from the events"
        )
    frame = usable
    stages = frame.filter(is_stage)
    outcomes = frame.filter(~is_stage).with_columns(positive=is_positive)
    horizon = dt.timedelta(days=horizon_days)
    parts = []
    for as_of in as_of_dates:
        snapshot = pl.lit(as_of, pl.Datetime("us", "UTC"))
        part = _conversion_at(outcomes, as_of, as_of + horizon) if outcomes.height else None
        if stages.height:
            staged = _stage_at(stages, as_of + horizon)
            part = (
                staged
                if part is None
                else part.join(staged, on="contact_id", how="full", coalesce=True)
            )
        assert part is not None
        parts.append(part.with_columns(as_of=snapshot))
    result = pl.concat(parts, how="diagonal")
    return result.select("contact_id", "as_of", pl.exclude("contact_id", "as_of")).sort(
        "as_of", "contact_id"
    )


def _typed_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """The labels table with text ids and outcomes (outcomes trimmed and lower-cased, so that
    'Intent' is the stage intent) and label dates in UTC; a column of another kind is an
    ``InputError`` naming it."""
    dates = frame.schema["label_date"]
    if isinstance(dates, pl.Datetime) and dates.time_zone is None:
        raise InputError(
            "the labels' label_date holds times without a time zone; give them in UTC (or "
            "with their zone), as `funnelcast ingest` writes them, reading local times in the "
            "zone a mapping's `timezone:` names"
        )
    if not isinstance(dates, pl.Datetime | pl.Null):
        raise InputError(
            f"the labels' label_date is {dates}, not a timestamp; give timestamps with a time "
            "zone (empty where unknown), as `funnelcast ingest` writes them"
        )
    for name in ("contact_id", "outcome"):
        kind = frame.schema[name]
        if not (kind == pl.String or isinstance(kind, pl.Categorical | pl.Enum | pl.Null)):
            raise InputError(f"the labels' {name} is {kind}, not text; give it as text")
    return frame.with_columns(
        pl.col("contact_id").cast(pl.String),
        pl.col("outcome").cast(pl.String).str.strip_chars().str.to_lowercase(),
        pl.col("label_date").cast(pl.Datetime("us", "UTC")),
    )


def _conversion_at(outcomes: pl.DataFrame, as_of: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    date = pl.col("label_date")
    per_contact = outcomes.group_by("contact_id").agg(  # every positive here has its date
        converted_before=(pl.col("positive") & (date < as_of)).any(),
        in_horizon=(pl.col("positive") & (date >= as_of) & (date < end)).any(),
    )
    return per_contact.filter(~pl.col("converted_before")).select(
        "contact_id", purchased=pl.col("in_horizon")
    )


def _stage_at(stages: pl.DataFrame, end: dt.datetime) -> pl.DataFrame:
    date = pl.col("label_date")
    known = stages.filter(date < end)  # every stage here has its date
    return (
        # two stages of one contact at the same moment: the later row of the table is the
        # later record (a stable sort: Polars' default does not promise to keep equal dates' order)
        known.sort(date, maintain_order=True)
        .group_by("contact_id")
        .agg(provided_stage=pl.col("outcome").last())
        .with_columns(pl.col("provided_stage").cast(STAGE_TYPE))
    )
