"""The funnel report: how many consented contacts sit in each stage as of a date.

Until the models exist the stage is the rules stage; on simulated data the hidden true stage is
shown beside it, which is how far the rules are from the truth.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.consent import restrict_to_consented
from features.settings import RulesSettings
from features.stages import rules_stage_as_of
from features.vocabulary import STAGES


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
    rules_accuracy: float | None  # share of contacts whose rules stage is the true stage
    event_mix: dict[str, int]


def summarise_funnel(
    events: pa.Table,
    contacts: pa.Table | None,
    *,
    as_of: dt.datetime,
    settings: RulesSettings,
    true_stages: pl.DataFrame | None = None,
    assume_consent: bool = False,
) -> FunnelSummary:
    """Stage counts as of ``as_of`` for consented contacts; ``true_stages`` (contact_id, stage)
    adds the simulator's hidden stage on that day for comparison."""
    frame = pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    active = rules_stage_as_of(frame, as_of=as_of, settings=settings)
    known_later = frame.select("contact_id").unique().join(active, on="contact_id", how="anti")
    stages = _with_silent_contacts(active, contacts, known_later)
    consent = restrict_to_consented(stages, contacts, assume_consent=assume_consent)
    past = frame.filter(pl.col("timestamp") < as_of)
    scored = consent.kept
    true_counts = rules_accuracy = None
    if true_stages is not None:
        joined = scored.join(
            true_stages.rename({"stage": "true_stage"}), on="contact_id", how="left"
        )
        true_counts = _counts(joined["true_stage"].drop_nulls())
        matches = (joined["stage"] == joined["true_stage"]).fill_null(False)
        rules_accuracy = int(matches.sum()) / max(matches.len(), 1)
    timestamps = past["timestamp"]
    return FunnelSummary(
        as_of=as_of,
        events=past.height,
        first_event=timestamps.min() if past.height else None,  # type: ignore[arg-type]
        last_event=timestamps.max() if past.height else None,  # type: ignore[arg-type]
        contacts_scored=scored.height,
        contacts_without_consent=consent.contacts_without_consent,
        contacts_not_yet_active=known_later.height,
        rules_counts=_counts(scored["stage"]),
        true_counts=true_counts,
        rules_accuracy=rules_accuracy,
        event_mix={
            str(name): int(count)
            for name, count in past["event_type"].value_counts(sort=True).iter_rows()
        },
    )


def _with_silent_contacts(
    stages: pl.DataFrame, contacts: pa.Table | None, known_later: pl.DataFrame
) -> pl.DataFrame:
    """Contacts listed in the contacts table with no event at all are dormant, not absent:
    a funnel that leaves them out would hide the quietest part of the base. Contacts whose
    events all come at or after as_of stay out: as of then, nothing was known of them."""
    if contacts is None:
        return stages
    listed = pl.from_arrow(contacts.select(["contact_id"]))
    assert isinstance(listed, pl.DataFrame)
    silent = (
        listed.join(stages, on="contact_id", how="anti")
        .join(known_later, on="contact_id", how="anti")
        .with_columns(stage=pl.lit("dormant"))
    )
    return pl.concat([stages, silent])


def _counts(stages: pl.Series) -> dict[str, int]:
    counts = dict(stages.value_counts().iter_rows())
    return {stage: int(counts.get(stage, 0)) for stage in STAGES}
