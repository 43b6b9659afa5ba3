"""The funnel report: how many consented contacts sit in each stage as of a date.

Until the models exist the stage is the rules stage; on simulated data the hidden true stage is
shown beside it, which is how far the rules are from the truth.

The events are read and checked as the feature builders read and check them (the engine's
reader and refusals, not a copy of them), so the funnel counts what ``features`` and ``score``
would, and refuses what they refuse, with the same words.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.consent import check_contacts, refuse_unusable_ids, restrict_to_consented
from features.engine import (
    EventsInput,
    contacts_not_yet_active,
    first_event_times,
    raise_unknown_vocabulary,
    scan_events,
    with_listed_contacts,
)
from features.schema import as_utc
from features.settings import RulesSettings
from features.stages import rules_stage_as_of
from features.vocabulary import CHANNELS, EVENT_TYPES, STAGES


@dataclass(frozen=True)
class FunnelSummary:
    as_of: dt.datetime
    events: int
    first_event: dt.datetime | None
    last_event: dt.datetime | None
    contacts_scored: int
    contacts_without_consent: int
    contacts_not_yet_active: int  # their first event is at or after as_of: unknown back then
    rules_counts: dict[str, int]
    true_counts: dict[str, int] | None  # simulator only
    # share of contacts whose rules stage is the true stage; None without true stages or
    # without a contact to compare (a share of nobody is no figure)
    rules_accuracy: float | None
    event_mix: dict[str, int]


def default_as_of(last_event: dt.datetime | None, *, today: dt.date | None = None) -> dt.datetime:
    """The snapshot when none is given, as ``score``'s: midnight UTC after the last event, so
    every event is before it. Without any event, the end of today (tomorrow's midnight): every
    listed contact is dormant then, as at any date. Never later than the end of today: an
    event past midnight within the clock skew allowed (``serving.schemas.CLOCK_SKEW``) dated
    the scores the day after tomorrow (diff review); it is after the snapshot, as it is
    after now. ``today`` (UTC) is read from the clock when not given."""
    today = today or dt.datetime.now(dt.UTC).date()
    day = today if last_event is None else min(last_event.date(), today)
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def summarise_funnel(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    as_of: dt.datetime,
    settings: RulesSettings,
    true_stages: pl.DataFrame | None = None,
    assume_consent: bool = False,
) -> FunnelSummary:
    """Stage counts as of ``as_of`` for consented contacts; ``true_stages`` (contact_id, stage)
    adds the simulator's hidden stage on that day for comparison. ``events``: a table, or a
    Parquet path read as ``features`` reads it; whatever ``features`` refuses in the rows the
    funnel counts is refused here, in the same words."""
    as_of = as_utc(as_of, "as_of")
    if contacts is not None:
        check_contacts(contacts)  # before any work, as features and score check them
    scanned = scan_events(events)  # UTC, ids as text, no id or time missing: features' reader
    past = _past_events(scanned, as_of)
    firsts = first_event_times(events)
    # every contact the funnel counts, the ones first seen after as_of too: " c1" would be a
    # contact of its own, without c1's consent
    refuse_unusable_ids(firsts.get_column("contact_id"), "the events", rows=False)
    active = rules_stage_as_of(past, as_of=as_of, settings=settings)
    # unknown as of then, by the definition training, score and features leave out too
    known_later = contacts_not_yet_active(firsts, as_of=as_of)
    stages = _with_silent_contacts(active, contacts, known_later)
    consent = restrict_to_consented(stages, contacts, assume_consent=assume_consent)
    scored = consent.kept
    # those first seen later are counted by consent too: the ones without it were counted as
    # not yet active, in a report of consented contacts, and not among those without consent
    # (export review)
    later = restrict_to_consented(known_later, contacts, assume_consent=assume_consent)
    true_counts = rules_accuracy = None
    if true_stages is not None:
        joined = scored.join(
            true_stages.rename({"stage": "true_stage"}), on="contact_id", how="left"
        )
        true_counts = _counts(joined["true_stage"].drop_nulls())
        matches = (joined["stage"] == joined["true_stage"]).fill_null(False)
        rules_accuracy = int(matches.sum()) / matches.len() if matches.len() else None
    timestamps = past["timestamp"]
    return FunnelSummary(
        as_of=as_of,
        events=past.height,
        first_event=timestamps.min() if past.height else None,  # type: ignore[arg-type]
        last_event=timestamps.max() if past.height else None,  # type: ignore[arg-type]
        contacts_scored=scored.height,
        contacts_without_consent=consent.contacts_without_consent + later.contacts_without_consent,
        contacts_not_yet_active=later.kept.height,
        rules_counts=_counts(scored["stage"]),
        true_counts=true_counts,
        rules_accuracy=rules_accuracy,
        event_mix={
            str(name): int(count)
            for name, count in past["event_type"].value_counts(sort=True).iter_rows()
        },
    )


def _past_events(scanned: pl.LazyFrame, as_of: dt.datetime) -> pl.DataFrame:
    """The events before ``as_of``, the columns the funnel reads, with names as text. An event
    type or channel outside the contract is refused, as every builder refuses it ('Purchase'
    would be no purchase, a missing type no signal at all): found as the builders find it, a
    name without a code in the contract's enums."""
    past = (
        scanned.filter(pl.col("timestamp") < as_of)
        .select("contact_id", "timestamp", "event_type", "channel")
        .collect()
    )
    coded = past.select(
        pl.col("event_type").cast(pl.Enum(EVENT_TYPES), strict=False).is_null().any(),
        pl.col("channel").cast(pl.Enum(CHANNELS), strict=False).is_null().any(),
    )
    if any(coded.row(0)):
        raise_unknown_vocabulary(past.lazy())
    # categories (a pandas export) read as text, as the rules compare names
    return past.with_columns(pl.col("event_type", "channel").cast(pl.String))


def _with_silent_contacts(
    stages: pl.DataFrame, contacts: pa.Table | pl.DataFrame | None, known_later: pl.DataFrame
) -> pl.DataFrame:
    """Contacts listed in the contacts table with no event at all are dormant, not absent:
    a funnel that leaves them out would hide the quietest part of the base. Contacts whose
    events all come at or after as_of stay out: as of then, nothing was known of them."""
    if contacts is None:
        return stages
    # the engine's list of ids: its categories (a pandas export) read as text, as the events'
    listed = with_listed_contacts(stages.select("contact_id"), contacts)
    silent = (
        listed.join(stages, on="contact_id", how="anti")
        .join(known_later, on="contact_id", how="anti")
        .with_columns(stage=pl.lit("dormant"))
    )
    return pl.concat([stages, silent])


def _counts(stages: pl.Series) -> dict[str, int]:
    counts = dict(stages.value_counts().iter_rows())
    return {stage: int(counts.get(stage, 0)) for stage in STAGES}
