"""The hand-written stage rules of PRODUCT.md, as a point-in-time function over events.

A contact's rules stage as of a moment is the deepest signal in the lookback window before it:

* a purchase -> conversion, or retention when the contact had bought before;
* a review, referral or share by a customer -> advocacy (by a prospect: consideration);
* cart, checkout, pricing, demo or trial -> intent;
* a click, download, form, favourite, product view, or page views on several days -> consideration;
* only opens, impressions or single visits -> awareness;
* nothing -> dormant.

It lives in ``features`` because it is both a feature and the baseline model; training wraps it
in an estimator, serving shows it in the funnel report.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa

from features.schema import as_utc
from features.settings import RulesSettings
from features.vocabulary import (
    ADVOCACY_EVENTS,
    EVENT_SIGNALS,
    PURCHASE_EVENTS,
    STAGES,
    stage_rank,
)

# Rank of the stage each event type signals on its own; purchases and advocacy events are
# decided with the contact's purchase history below, so they are left out here.
BASE_RANK: dict[str, int] = {
    event: stage_rank(stage)
    for event, stage in EVENT_SIGNALS.items()
    if stage is not None and event not in PURCHASE_EVENTS | ADVOCACY_EVENTS
}


def rules_stage_as_of(
    events: pa.Table | pl.DataFrame | pl.LazyFrame,
    *,
    as_of: dt.datetime,
    settings: RulesSettings,
) -> pl.DataFrame:
    """Each contact's rules stage as of ``as_of``, using only events strictly before it.

    Returns one row per contact with any event before ``as_of`` (contact_id, stage); contacts
    with no event in the lookback window are "dormant".
    """
    as_of = as_utc(as_of, "as_of")
    window_start = as_of - dt.timedelta(days=settings.lookback_days)
    past = _lazy(events).filter(pl.col("timestamp") < as_of)
    in_window = pl.col("timestamp") >= window_start

    per_contact = past.group_by("contact_id").agg(**signal_aggregations(in_window))
    return (
        per_contact.select("contact_id", stage=stage_from_signal_columns(settings))
        .collect()
        .sort("contact_id")
    )


def signal_aggregations(in_window: pl.Expr) -> dict[str, pl.Expr]:
    """Per-contact aggregations of the signals the rules read, over events grouped by contact:
    the window's signals where ``in_window`` holds, purchases over every row given (the rows
    before the window say who is already a customer). Shared by the rules as of a date and by
    the revealed-stage label of a horizon."""
    is_purchase = pl.col("event_type").is_in(PURCHASE_EVENTS)
    return {
        # deepest plain signal in the window (-1: none)
        "base_rank": pl.col("event_type")
        .replace_strict(BASE_RANK, default=-1, return_dtype=pl.Int8)
        .filter(in_window)
        .max(),
        "visit_days": pl.col("timestamp")
        .filter(in_window & (pl.col("event_type") == "page_view"))
        .dt.date()
        .n_unique(),
        "purchases_ever": is_purchase.sum(),
        "purchases_in_window": (is_purchase & in_window).sum(),
        "advocacy_in_window": (pl.col("event_type").is_in(ADVOCACY_EVENTS) & in_window).any(),
    }


def stage_from_signal_columns(settings: RulesSettings, *, prefix: str = "") -> pl.Expr:
    """The rules on columns ``base_rank`` (deepest plain signal's rank, null or -1: none),
    ``visit_days``, ``purchases_ever``, ``purchases_in_window`` and ``advocacy_in_window``
    (each name after ``prefix``), as a String stage expression; every batch engine that
    gathers these signals shares it."""

    def col(name: str) -> pl.Expr:
        return pl.col(f"{prefix}{name}")

    rank = pl.max_horizontal(
        col("base_rank").fill_null(-1),
        pl.when(col("visit_days") >= settings.repeat_visit_min_days)
        .then(stage_rank("consideration"))
        .otherwise(-1),
        # a prospect's review is interest, a customer's is advocacy
        pl.when(col("advocacy_in_window") & (col("purchases_ever") > 0))
        .then(stage_rank("advocacy"))
        .when(col("advocacy_in_window"))
        .then(stage_rank("consideration"))
        .otherwise(-1),
        # a purchase in the window by someone who had bought before is retention
        pl.when((col("purchases_in_window") > 0) & (col("purchases_ever") > 1))
        .then(stage_rank("retention"))
        .when(col("purchases_in_window") > 0)
        .then(stage_rank("conversion"))
        .otherwise(-1),
        pl.lit(stage_rank("dormant")),
    )
    return rank.replace_strict(dict(enumerate(STAGES)), return_dtype=pl.String)


def _lazy(events: pa.Table | pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    if isinstance(events, pl.LazyFrame):
        return events
    if isinstance(events, pl.DataFrame):
        return events.lazy()
    return pl.from_arrow(events).lazy()  # type: ignore[union-attr]


def stage_from_signals(
    *,
    base_rank: int,
    visit_days: int,
    purchases_ever: int,
    purchases_in_window: int,
    advocacy_in_window: bool,
    settings: RulesSettings,
) -> str:
    """The same rules for one contact, on plain numbers (the online path); tests hold it equal
    to ``rules_stage_as_of``."""
    ranks = [base_rank, stage_rank("dormant")]
    if visit_days >= settings.repeat_visit_min_days:
        ranks.append(stage_rank("consideration"))
    if advocacy_in_window:
        ranks.append(stage_rank("advocacy" if purchases_ever > 0 else "consideration"))
    if purchases_in_window > 0:
        ranks.append(stage_rank("retention" if purchases_ever > 1 else "conversion"))
    return STAGES[max(ranks)]
