"""The journey simulator: synthetic contacts whose true funnel stage is known every day.

It is funnelcast's only ground truth for stages. Every contact carries a hidden daily stage
(``features.vocabulary.STAGES``) and a hidden "is customer" flag; the stage moves by a daily Markov
chain with one transition matrix for prospects and one for customers, both read from the
``simulator:`` section of ``features/config/default.yaml``. The chain is deliberately not a
funnel: contacts skip stages, go backwards, prospects lapse into dormancy and customers re-enter
awareness/consideration for a cross-sell. Conversion is the day of a purchase; the chain then
moves the (now) customer on to retention.

What a contact does on a day depends on its stage:

* **Marketing** sends e-mail, SMS and push (``message_send``) to consented, reachable contacts,
  each with a call to action (soft / deepen / act) chosen from a fixed mix: marketing does not
  see the hidden stage, so every send is a small randomised experiment. The campaign id names
  channel, CTA and day (``email-act-d017``) and every response carries it. A CTA that fits the
  stage gives the most clicks and, on a click, a nudge one stage forward; a CTA that asks too
  much too early (``act`` to an awareness contact) gets fewer opens and clicks, more unsubscribes
  and may push the contact into dormancy; one that asks too little too late (``soft`` to an
  intent contact) wastes the intent: fewer clicks, no nudge.
* **Organic** events come from the stage with noise: ad/social impressions for everyone, and on
  an "active day" (probability by stage, times a per-contact activity level) a web/app session
  of page views plus stage-typical events - an awareness contact sometimes views a product, an
  intent contact sometimes only browses. A conversion day always has a session and a purchase.
* **Order history**: contacts who are customers on day 0 bought before the period; their
  purchases (at least one each, after their signup) are dated before the start, so the data
  itself says who is a customer, as a CRM's order history would.

The measured rates (``measure_rates``) are defined as:

* open rate  = (email_open + push_open) / message_send on e-mail and push (SMS has no opens);
* click rate = (email_click + push_click + sms_click) / every message_send;
* conversion = contact-days with a purchase / contact-days with a page_view (a visit): the
  visit-to-purchase conversion rate of web analytics. It holds for any period length;
* buying mode = share of all contacts in intent or conversion on a day; its maximum over days.

Outputs (``Simulation``): ``events`` in the canonical ``EVENTS_SCHEMA``; ``contacts`` with
``contact_id``, ``marketing_consent`` (as at the end of the period: contacts who unsubscribed
during it are False, and have an ``unsubscribe`` event after their last send) and attributes
``signup_date``, ``acquisition_source``, ``segment``; ``stage_history`` as a change log: one
row per contact on the first day, then one row on each day its stage changes - **the stage holds
until the contact's next row**. ``true_stage_on`` reads a stage on any date from it.

Everything is vectorised over contacts (the only Python loop is over days) and drawn from one
``np.random.default_rng(seed)``: the same seed gives the same tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from features.errors import InputError
from features.io import DATA_TABLES, write_tables_atomic
from features.schema import EVENTS_SCHEMA
from features.settings import FrozenSettings, config_section, section_settings
from features.vocabulary import CHANNELS, EVENT_TYPES, STAGES

MARKETING_CHANNELS: Final[tuple[str, ...]] = ("email", "sms", "push")
CTAS: Final[tuple[str, ...]] = ("soft", "deepen", "act")
PROSPECT_STAGES: Final[tuple[str, ...]] = ("dormant", "awareness", "consideration", "intent")

# Event types the simulator draws itself (not from ``organic.per_active_day``).
_MARKETING_EVENTS: Final = frozenset(
    {"message_send", "email_open", "push_open", "email_click", "push_click", "sms_click"}
)
_OPEN_EVENT: Final = {"email": "email_open", "push": "push_open"}  # SMS has no open tracking
_CLICK_EVENT: Final = {"email": "email_click", "push": "push_click", "sms": "sms_click"}
# Where a click on a fitting CTA nudges a contact: one stage forward, and a customer's
# cross-sell interest (retention/advocacy) into consideration of the new offer.
_NUDGE: Final = {
    "dormant": "awareness",
    "awareness": "consideration",
    "consideration": "intent",
    "intent": "conversion",
    "retention": "consideration",
    "advocacy": "consideration",
}

SECONDS_PER_DAY: Final = 86_400
_STAGE: Final = {stage: code for code, stage in enumerate(STAGES)}
_EVENT: Final = {event: code for code, event in enumerate(EVENT_TYPES)}
_CHANNEL: Final = {channel: code for code, channel in enumerate(CHANNELS)}
_DORMANT: Final = _STAGE["dormant"]
_CONVERSION: Final = _STAGE["conversion"]
_N_STAGES: Final = len(STAGES)

STAGE_HISTORY_SCHEMA: Final = pa.schema(
    [
        pa.field("contact_id", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("is_customer", pa.bool_(), nullable=False),
    ]
)
SIMULATED_CONTACTS_SCHEMA: Final = pa.schema(
    [
        pa.field("contact_id", pa.string(), nullable=False),
        pa.field("marketing_consent", pa.bool_(), nullable=False),
        pa.field("signup_date", pa.date32(), nullable=False),
        pa.field("acquisition_source", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
    ]
)

# --- settings ----------------------------------------------------------------------------------


def _check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; use one of {sorted(allowed)}")


def _check_probabilities(mapping: Mapping[str, float], what: str) -> None:
    for key, p in mapping.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{what} '{key}' is {p}; a probability lies in [0, 1]")


def _check_weights(mapping: Mapping[str, float], what: str) -> None:
    if not mapping or any(w < 0 for w in mapping.values()) or sum(mapping.values()) <= 0:
        raise ValueError(f"{what} must be non-negative weights with a positive sum")


def _by_stage(mapping: Mapping[str, float], what: str, *, complete: bool) -> None:
    _check_keys(mapping, STAGES, f"stage in {what}:")
    if complete and set(mapping) != set(STAGES):
        raise ValueError(
            f"{what} must give every stage; missing {sorted(set(STAGES) - set(mapping))}"
        )


class ContactSettings(FrozenSettings):
    """Who the contacts are (drawn once, before day 0)."""

    marketing_consent_share: float = Field(ge=0, le=1)
    initial_customer_share: float = Field(ge=0, le=1)
    sms_reachable_share: float = Field(ge=0, le=1)
    push_reachable_share: float = Field(ge=0, le=1)
    activity_sigma: float = Field(ge=0, le=3)
    signup_mean_days_before_start: float = Field(gt=0)
    prior_purchases_mean: float = Field(ge=1)
    prior_history_days: int = Field(gt=0)
    acquisition_sources: dict[str, float]
    segments: dict[str, float]
    segment_value_factor: dict[str, float]

    @model_validator(mode="after")
    def _weights(self) -> ContactSettings:
        _check_weights(self.acquisition_sources, "contacts.acquisition_sources")
        _check_weights(self.segments, "contacts.segments")
        if set(self.segment_value_factor) != set(self.segments):
            raise ValueError("contacts.segment_value_factor must name exactly the segments")
        return self


class TransitionSettings(FrozenSettings):
    """Daily move probabilities, from stage -> {to stage: p}; staying takes the rest."""

    prospect: dict[str, dict[str, float]]
    customer: dict[str, dict[str, float]]

    @model_validator(mode="after")
    def _rows(self) -> TransitionSettings:
        for kind, matrix, sources in (
            ("prospect", self.prospect, PROSPECT_STAGES),
            ("customer", self.customer, STAGES),
        ):
            _check_keys(matrix, sources, f"{kind} stage")
            if set(matrix) != set(sources):
                raise ValueError(f"transitions.{kind} must give a row for each of {sources}")
            for source, row in matrix.items():
                _check_keys(row, STAGES, f"target stage in transitions.{kind}.{source}:")
                _check_probabilities(row, f"transitions.{kind}.{source}")
                if source in row:
                    raise ValueError(
                        f"transitions.{kind}.{source} lists itself; staying is 1 - the moves"
                    )
                if sum(row.values()) > 1.0 + 1e-9:
                    raise ValueError(f"transitions.{kind}.{source} moves sum to more than 1")
                if kind == "prospect" and {"retention", "advocacy"} & set(row):
                    raise ValueError(
                        f"transitions.prospect.{source} moves a prospect into a customer stage; "
                        "a prospect becomes a customer only through conversion"
                    )
        return self


class CtaSettings(FrozenSettings):
    """How a CTA's fit to the hidden stage changes the response (gap = CTA depth - stage depth)."""

    cta_depth: dict[str, int]
    stage_depth: dict[str, int]
    hard_open_factor: float = Field(gt=0, le=1)
    hard_click_factor: float = Field(gt=0, le=1)
    soft_click_factor: float = Field(gt=0, le=1)
    hard_unsubscribe_factor: float = Field(ge=1)
    hard_dormant_probability: float = Field(ge=0, le=1)
    matched_nudge_probability: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _keys(self) -> CtaSettings:
        if set(self.cta_depth) != set(CTAS):
            raise ValueError(f"marketing.cta.cta_depth must name exactly {CTAS}")
        _by_stage(self.stage_depth, "marketing.cta.stage_depth", complete=True)
        return self


class MarketingSettings(FrozenSettings):
    send_probability: dict[str, float]
    cta_mix: dict[str, float]
    open_probability: dict[str, float]
    click_given_open: dict[str, float]
    channel_open_factor: dict[str, float]
    channel_click_factor: dict[str, float]
    landing_page_view_probability: float = Field(ge=0, le=1)
    unsubscribe_probability: float = Field(ge=0, le=1)
    cta: CtaSettings

    @model_validator(mode="after")
    def _keys(self) -> MarketingSettings:
        for name in ("send_probability", "channel_open_factor", "channel_click_factor"):
            mapping = getattr(self, name)
            if set(mapping) != set(MARKETING_CHANNELS):
                raise ValueError(f"marketing.{name} must name exactly {MARKETING_CHANNELS}")
        _check_probabilities(self.send_probability, "marketing.send_probability")
        if set(self.cta_mix) != set(CTAS):
            raise ValueError(f"marketing.cta_mix must name exactly {CTAS}")
        _check_weights(self.cta_mix, "marketing.cta_mix")
        for name in ("open_probability", "click_given_open"):
            _by_stage(getattr(self, name), f"marketing.{name}", complete=True)
            _check_probabilities(getattr(self, name), f"marketing.{name}")
        return self


class OrganicSettings(FrozenSettings):
    active_probability: dict[str, float]
    impressions_per_day: dict[str, float]
    per_active_day: dict[str, dict[str, float]]
    customer_per_day: dict[str, float]
    channels: dict[str, dict[str, float]]
    repeat_purchase_probability: float = Field(ge=0, le=1)
    purchase_value_median: float = Field(gt=0)
    purchase_value_sigma: float = Field(ge=0, le=3)

    @model_validator(mode="after")
    def _consistent(self) -> OrganicSettings:
        _by_stage(self.active_probability, "organic.active_probability", complete=True)
        _check_probabilities(self.active_probability, "organic.active_probability")
        _by_stage(self.impressions_per_day, "organic.impressions_per_day", complete=True)
        for name in ("per_active_day", "customer_per_day", "channels"):
            _check_keys(getattr(self, name), EVENT_TYPES, f"event type in organic.{name}:")
        reserved = sorted(
            (_MARKETING_EVENTS | {"purchase", "impression"}) & set(self.per_active_day)
        )
        if reserved:
            raise ValueError(
                f"organic.per_active_day lists {reserved}; those are drawn by the simulator itself"
            )
        for event, by_stage in self.per_active_day.items():
            _by_stage(by_stage, f"organic.per_active_day.{event}", complete=False)
        drawn = {*self.per_active_day, *self.customer_per_day, "impression", "purchase"}
        for event in sorted(drawn | {"page_view"}):
            if event not in self.channels:
                raise ValueError(f"organic.channels has no channel mix for '{event}'")
        for event, mix in self.channels.items():
            _check_keys(mix, CHANNELS, f"channel in organic.channels.{event}:")
            _check_weights(mix, f"organic.channels.{event}")
        return self


class SimulatorSettings(FrozenSettings):
    """The ``simulator:`` section of the defaults; see ``features/config/default.yaml``."""

    start_date: dt.date | None = None  # None: the simulated days end yesterday (UTC)
    contacts: ContactSettings
    transitions: TransitionSettings
    marketing: MarketingSettings
    organic: OrganicSettings


def load_simulator_settings(path: Path | None = None) -> SimulatorSettings:
    """The simulator settings from the shipped defaults or a user's copy of them."""
    return section_settings(SimulatorSettings, config_section(path, "simulator"), path, "simulator")


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    """Simulated tables. ``stage_history`` is a change log: the stage holds until the next row."""

    events: pa.Table
    contacts: pa.Table
    stage_history: pa.Table
    start: dt.date
    days: int


def simulate(
    settings: SimulatorSettings,
    *,
    contacts: int,
    days: int,
    seed: int,
    start: dt.date | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Simulation:
    """Simulate ``contacts`` contacts for ``days`` days from ``start`` (UTC days).

    ``start`` defaults to ``settings.start_date``, or when that is unset, to the day that makes
    the period end yesterday, so the events are never in the future (``validate`` rejects those).
    The same seed gives the same tables for the same start; another start only moves the dates.
    ``progress(done_days, total_days)`` is called once per simulated day.
    """
    if contacts < 1:
        raise InputError(f"contacts must be at least 1, got {contacts}")
    if days < 1:
        raise InputError(f"days must be at least 1, got {days}")
    today = dt.datetime.now(dt.UTC).date()
    if start is None:
        start = settings.start_date or (today - dt.timedelta(days=days))
    if start + dt.timedelta(days=days) > today:
        last = start + dt.timedelta(days=days - 1)
        raise InputError(
            f"the simulated days {start}..{last} reach today or later, and events may not be in "
            "the future; choose an earlier start or fewer days"
        )
    rng = np.random.default_rng(seed)
    tables = _Tables.from_settings(settings)
    population = _draw_population(settings.contacts, tables, contacts, rng)
    events = _EventBuffer()
    history = _HistoryBuffer()
    history.add(0, np.arange(contacts, dtype=np.int32), population.stage, population.customer)
    _past_purchases(population, settings.contacts, tables, rng, events)
    for day in range(days):
        members = _members_by_stage(population.stage)
        nudged, frictions = _send_messages(day, population, tables, rng, events)
        _organic_events(day, population, members, tables, rng, events)
        if day + 1 < days:
            changed = _advance_stages(population, tables, rng, nudged, frictions)
            history.add(day + 1, changed, population.stage[changed], population.customer[changed])
        if progress is not None:
            progress(day + 1, days)
    ids = _contact_ids(contacts)
    return Simulation(
        events=events.to_table(ids, start, _campaign_ids(days)),
        contacts=_contacts_table(ids, population, settings.contacts, start),
        stage_history=history.to_table(ids, start),
        start=start,
        days=days,
    )


def write_simulation(
    sim: Simulation,
    out_dir: Path,
    *,
    removed: Callable[[Path], None] | None = None,
    set_aside: Callable[[Path, Path], None] | None = None,
) -> dict[str, Path]:
    """Write events, contacts and stage_history as Parquet into ``out_dir``, all or nothing;
    an earlier run's other tables there (labels, rejects) are removed (``removed(path)``), or
    renamed aside when funnelcast did not mark them (``set_aside(path, new_path)``)."""
    return write_tables_atomic(
        {"events": sim.events, "contacts": sim.contacts, "stage_history": sim.stage_history},
        out_dir,
        replaces=DATA_TABLES,
        removed=removed,
        set_aside=set_aside,
    )


def true_stage_on(
    stage_history: pa.Table | pl.DataFrame, on: dt.date | Iterable[dt.date]
) -> pl.DataFrame:
    """Each contact's true stage on a date (or on each of several dates).

    Reads the change log: a contact's stage on a date is the one of its last row on or before
    that date. Returns (contact_id, date, stage, is_customer) sorted by date then contact; a date
    before a contact's first row gives a null stage.
    """
    dates = [on] if isinstance(on, dt.date) else list(on)
    dates = [d.date() if isinstance(d, dt.datetime) else d for d in dates]
    history = (
        stage_history if isinstance(stage_history, pl.DataFrame) else pl.from_arrow(stage_history)
    )
    assert isinstance(history, pl.DataFrame)
    query = (
        history.select(pl.col("contact_id").unique())
        .join(pl.DataFrame({"date": dates}, schema={"date": pl.Date}), how="cross")
        .sort("date", "contact_id")
    )
    # join_asof needs both sides sorted by the date; "backward" takes the last row on or before
    found = query.join_asof(
        history.sort("date"),
        on="date",
        by="contact_id",
        strategy="backward",
        check_sortedness=False,  # both sides are sorted just above
    )
    return found.select("contact_id", "date", "stage", "is_customer")


def count_stages_by_day(stage_history: pa.Table | pl.DataFrame, *, days: int) -> pl.DataFrame:
    """Contacts in each stage on each of ``days`` days from the first date of the change log.

    One row per day: ``date`` and one count column per stage (in ``STAGES`` order).
    """
    history = (
        stage_history if isinstance(stage_history, pl.DataFrame) else pl.from_arrow(stage_history)
    )
    assert isinstance(history, pl.DataFrame)
    if days < 1 or history.height == 0:
        raise ValueError("count_stages_by_day needs a non-empty change log and days >= 1")
    first = history["date"].min()
    assert isinstance(first, dt.date)
    code = pl.col("stage").replace_strict(_STAGE, return_dtype=pl.Int64)
    same_contact = pl.col("contact_id") == pl.col("contact_id").shift(1)
    coded = (
        history.sort("contact_id", "date")
        .select(
            day=(pl.col("date") - pl.lit(first)).dt.total_days().cast(pl.Int64),
            stage=code,
            # the row before, if it is the same contact's (a sort and a shift beat .over())
            previous=pl.when(same_contact).then(code.shift(1)).otherwise(-1),
        )
        .filter(pl.col("day") < days)
    )
    day, stage, previous = (coded[name].to_numpy() for name in ("day", "stage", "previous"))
    size = days * _N_STAGES
    # each row enters its stage on its day and leaves the contact's previous stage that day
    delta = np.bincount(day * _N_STAGES + stage, minlength=size).astype(np.int64)
    left = previous >= 0
    delta -= np.bincount(day[left] * _N_STAGES + previous[left], minlength=size)
    counts = np.cumsum(delta.reshape(days, _N_STAGES), axis=0)
    return pl.DataFrame(
        {
            "date": pl.date_range(first, first + dt.timedelta(days=days - 1), eager=True),
            **{stage: counts[:, code] for code, stage in enumerate(STAGES)},
        }
    )


def measure_rates(
    events: pa.Table | pl.DataFrame, *, since: dt.date | None = None
) -> dict[str, float]:
    """Open rate, click rate and visit-to-purchase conversion, measured from the events alone
    (definitions in the module docstring); ``since`` (the simulation's start) leaves out the
    order history that precedes the simulated period."""
    frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    if since is not None:
        frame = frame.filter(pl.col("timestamp").dt.date() >= since)
    sends = frame.filter(pl.col("event_type") == "message_send")["channel"].value_counts()
    by_channel = dict(sends.iter_rows())
    counts = dict(frame["event_type"].value_counts().iter_rows())

    def _n(name: str) -> int:
        return int(counts.get(name, 0))

    openable = by_channel.get("email", 0) + by_channel.get("push", 0)
    all_sends = sum(by_channel.values())
    days_with = (
        frame.filter(pl.col("event_type").is_in(["page_view", "purchase"]))
        .select("contact_id", "event_type", day=pl.col("timestamp").dt.date())
        .unique()["event_type"]
        .value_counts()
    )
    day_counts = dict(days_with.iter_rows())
    visits = int(day_counts.get("page_view", 0))
    return {
        "open_rate": (_n("email_open") + _n("push_open")) / max(openable, 1),
        "click_rate": (_n("email_click") + _n("push_click") + _n("sms_click")) / max(all_sends, 1),
        "conversion_rate": int(day_counts.get("purchase", 0)) / max(visits, 1),
    }


# --- settings as lookup tables -----------------------------------------------------------------


@dataclass(frozen=True)
class _Tables:
    """The settings as NumPy lookup tables, by stage code (state = stage + 7 * customer)."""

    stay: npt.NDArray[np.float32]  # (14,) probability of staying, by state
    move_cdf: npt.NDArray[np.float64]  # (14, 7) cumulative move distribution, self excluded
    initial: npt.NDArray[np.float64]  # (14,) day-0 distribution over states
    nudge: npt.NDArray[np.int8]  # (7,) target of a nudge, -1 for none
    send_probability: npt.NDArray[np.float32]  # (3,) by marketing channel
    cta_mix: npt.NDArray[np.float64]  # (3,)
    open_p: npt.NDArray[np.float32]  # (3, 7, 3) channel, stage, cta
    click_p: npt.NDArray[np.float32]  # (3, 7, 3) click given open
    unsubscribe_p: npt.NDArray[np.float32]  # (7, 3)
    friction_p: npt.NDArray[np.float32]  # (7, 3) an opened too-hard CTA sends to dormant
    matched: npt.NDArray[np.bool_]  # (7, 3)
    nudge_p: float
    landing_page_view_p: float
    active_p: npt.NDArray[np.float32]  # (7,)
    impressions: npt.NDArray[np.float64]  # (7,)
    per_active_day: dict[int, npt.NDArray[np.float64]]  # event code -> (7,) mean per active day
    customer_per_day: dict[int, float]
    channels: dict[int, tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]]
    repeat_purchase_p: float
    value_mu: npt.NDArray[np.float64]  # (segments,) log-median purchase value by segment
    value_sigma: float

    @staticmethod
    def from_settings(settings: SimulatorSettings) -> _Tables:
        transitions, marketing, organic = (
            settings.transitions,
            settings.marketing,
            settings.organic,
        )
        cta = marketing.cta
        n = _N_STAGES
        moves = np.zeros((2 * n, n))
        for customer, matrix in ((0, transitions.prospect), (1, transitions.customer)):
            for source, row in matrix.items():
                for target, p in row.items():
                    moves[customer * n + _STAGE[source], _STAGE[target]] = p
        stay = 1.0 - moves.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cdf = np.cumsum(moves, axis=1) / moves.sum(axis=1, keepdims=True)
        cdf = np.nan_to_num(cdf, nan=1.0)
        cdf[:, -1] = 2.0  # a draw in [0, 1) never falls past the last stage

        stage_depth = np.array([cta.stage_depth[s] for s in STAGES])
        cta_depth = np.array([cta.cta_depth[c] for c in CTAS])
        gap = cta_depth[None, :] - stage_depth[:, None]  # (7, 3)
        too_hard, too_soft = np.maximum(gap, 0), np.maximum(-gap, 0)
        open_by_stage = np.array([marketing.open_probability[s] for s in STAGES])
        click_by_stage = np.array([marketing.click_given_open[s] for s in STAGES])
        open_p = np.stack(
            [
                open_by_stage[:, None]
                * marketing.channel_open_factor[c]
                * cta.hard_open_factor**too_hard
                for c in MARKETING_CHANNELS
            ]
        )
        click_p = np.stack(
            [
                click_by_stage[:, None]
                * marketing.channel_click_factor[c]
                * cta.hard_click_factor**too_hard
                * cta.soft_click_factor**too_soft
                for c in MARKETING_CHANNELS
            ]
        )
        nudge = np.full(n, -1, dtype=np.int8)
        for source, target in _NUDGE.items():
            nudge[_STAGE[source]] = _STAGE[target]
        friction = np.minimum(cta.hard_dormant_probability * too_hard, 1.0)
        friction[_DORMANT, :] = 0.0

        segments = list(settings.contacts.segments)
        factor = settings.contacts.segment_value_factor
        return _Tables(
            stay=stay.astype(np.float32),
            move_cdf=cdf,
            initial=_initial_distribution(moves, settings.contacts.initial_customer_share),
            nudge=nudge,
            send_probability=np.array(
                [marketing.send_probability[c] for c in MARKETING_CHANNELS], dtype=np.float32
            ),
            cta_mix=_normalised(marketing.cta_mix, CTAS),
            open_p=np.clip(open_p, 0, 1).astype(np.float32),
            click_p=np.clip(click_p, 0, 1).astype(np.float32),
            unsubscribe_p=np.clip(
                marketing.unsubscribe_probability * cta.hard_unsubscribe_factor**too_hard, 0, 1
            ).astype(np.float32),
            friction_p=friction.astype(np.float32),
            matched=gap == 0,
            nudge_p=cta.matched_nudge_probability,
            landing_page_view_p=marketing.landing_page_view_probability,
            active_p=np.array([organic.active_probability[s] for s in STAGES], dtype=np.float32),
            impressions=np.array([organic.impressions_per_day[s] for s in STAGES]),
            per_active_day={
                _EVENT[event]: np.array([by_stage.get(s, 0.0) for s in STAGES])
                for event, by_stage in organic.per_active_day.items()
            },
            customer_per_day={_EVENT[e]: r for e, r in organic.customer_per_day.items()},
            channels={
                _EVENT[event]: (
                    np.array([_CHANNEL[c] for c in mix], dtype=np.int8),
                    _normalised(mix, tuple(mix)),
                )
                for event, mix in organic.channels.items()
            },
            repeat_purchase_p=organic.repeat_purchase_probability,
            value_mu=np.log(
                organic.purchase_value_median * np.array([factor[s] for s in segments])
            ),
            value_sigma=organic.purchase_value_sigma,
        )


def _normalised(weights: Mapping[str, float], keys: tuple[str, ...]) -> npt.NDArray[np.float64]:
    values = np.array([weights[k] for k in keys], dtype=np.float64)
    return values / values.sum()


def _initial_distribution(
    moves: npt.NDArray[np.float64], customer_share: float
) -> npt.NDArray[np.float64]:
    """Day-0 states: each class (prospect / customer) in the stage mix its own chain settles
    into, so the rates do not drift in the first weeks.

    Prospects leak out of their class through conversion, so theirs is the quasi-stationary
    mix (the chain restricted to prospect stages, renormalised every step); customers never
    leave theirs, so theirs is the stationary mix.
    """
    n = _N_STAGES
    full = moves.copy()  # (14, 7): rows by state, with the probability of staying added
    full[np.arange(2 * n), np.arange(2 * n) % n] += 1.0 - moves.sum(axis=1)
    prospect = full[:n, :].copy()
    prospect[:, [_CONVERSION, _STAGE["retention"], _STAGE["advocacy"]]] = 0.0
    customer = full[n:, :]
    out = np.zeros(2 * n)
    for offset, matrix, share in ((0, prospect, 1 - customer_share), (n, customer, customer_share)):
        mix = np.full(n, 1.0 / n)
        if offset == 0:
            mix[[_CONVERSION, _STAGE["retention"], _STAGE["advocacy"]]] = 0.0
            mix /= mix.sum()
        for _ in range(5000):
            mix = mix @ matrix
            mix /= mix.sum()
        out[offset : offset + n] = share * mix
    # the prospects who convert on day 0 are customers in conversion that day
    out[n + _CONVERSION] += out[:n] @ moves[:n, _CONVERSION]
    return out / out.sum()


# --- the hidden population ---------------------------------------------------------------------


@dataclass
class _Population:
    """Hidden per-contact state, one array entry per contact (mutated day by day)."""

    stage: npt.NDArray[np.int8]
    customer: npt.NDArray[np.bool_]
    consent: npt.NDArray[np.bool_]
    reachable: npt.NDArray[np.bool_]  # (3, n) by marketing channel
    activity: npt.NDArray[np.float32]
    segment: npt.NDArray[np.int8]
    acquisition: npt.NDArray[np.int8]
    signup_days_before: npt.NDArray[np.int32]
    new_conversions: npt.NDArray[np.int32]  # entered conversion today: a purchase is due


def _draw_population(
    settings: ContactSettings, tables: _Tables, n: int, rng: np.random.Generator
) -> _Population:
    state = rng.choice(2 * _N_STAGES, size=n, p=tables.initial).astype(np.int8)
    sigma = settings.activity_sigma
    # lognormal with mean 1: most contacts are quiet, a few are very active
    activity = rng.lognormal(-(sigma**2) / 2, sigma, n).astype(np.float32)
    reachable = np.stack(
        [
            np.ones(n, dtype=bool),
            rng.random(n) < settings.sms_reachable_share,
            rng.random(n) < settings.push_reachable_share,
        ]
    )
    sources = tuple(settings.acquisition_sources)
    segments = tuple(settings.segments)
    stage = (state % _N_STAGES).astype(np.int8)
    return _Population(
        stage=stage,
        customer=state >= _N_STAGES,
        consent=rng.random(n) < settings.marketing_consent_share,
        reachable=reachable,
        activity=activity,
        segment=rng.choice(
            len(segments), size=n, p=_normalised(settings.segments, segments)
        ).astype(np.int8),
        acquisition=rng.choice(
            len(sources), size=n, p=_normalised(settings.acquisition_sources, sources)
        ).astype(np.int8),
        signup_days_before=(1 + rng.exponential(settings.signup_mean_days_before_start, n)).astype(
            np.int32
        ),
        new_conversions=np.flatnonzero(stage == _CONVERSION).astype(np.int32),
    )


def _members_by_stage(stage: npt.NDArray[np.int8]) -> list[npt.NDArray[np.int32]]:
    """Contact indices in each stage (a stable counting sort: ascending within each stage)."""
    order = np.argsort(stage, kind="stable").astype(np.int32)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(stage, minlength=_N_STAGES))])
    return [order[bounds[s] : bounds[s + 1]] for s in range(_N_STAGES)]


# --- one day -----------------------------------------------------------------------------------


def _send_messages(
    day: int,
    population: _Population,
    tables: _Tables,
    rng: np.random.Generator,
    events: _EventBuffer,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Marketing sends and their responses. Returns (contacts nudged forward by a fitting CTA,
    contacts pushed toward dormancy by a too-hard one); both act on tomorrow's stage."""
    n = population.stage.size
    nudged: list[npt.NDArray[np.int32]] = []
    frictions: list[npt.NDArray[np.int32]] = []
    # each contact's latest send of the day, and the day's unsubscribes: written once every
    # channel has sent, each after the contact's last send (an SMS unsubscribe at 13:45 came
    # before the e-mail the contact was sent at 20:28 the same day)
    last_sent = np.full(n, -1, dtype=np.int32)
    unsubscribes: list[
        tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], int, npt.NDArray[np.int32]]
    ] = []
    for c, channel in enumerate(MARKETING_CHANNELS):
        eligible = population.consent & population.reachable[c]
        drawn = rng.random(n, dtype=np.float32) < tables.send_probability[c]
        recipients = np.flatnonzero(eligible & drawn).astype(np.int32)
        k = recipients.size
        if k == 0:
            continue
        cta = rng.choice(len(CTAS), size=k, p=tables.cta_mix).astype(np.int8)
        stage = population.stage[recipients]
        campaign = (day * len(MARKETING_CHANNELS) + c) * len(CTAS) + cta.astype(np.int32)
        channel_code = _CHANNEL[channel]
        sent_at = rng.integers(0, SECONDS_PER_DAY, k, dtype=np.int32)
        events.add(day, recipients, sent_at, _EVENT["message_send"], channel_code, campaign)
        last_sent[recipients] = np.maximum(last_sent[recipients], sent_at)  # one send a channel

        opened = rng.random(k, dtype=np.float32) < tables.open_p[c, stage, cta]
        clicked = opened & (rng.random(k, dtype=np.float32) < tables.click_p[c, stage, cta])
        opened_at = _later(sent_at, rng)
        if channel in _OPEN_EVENT:
            events.add(
                day,
                recipients[opened],
                opened_at[opened],
                _EVENT[_OPEN_EVENT[channel]],
                channel_code,
                campaign[opened],
            )
        clicked_at = _later(opened_at[clicked], rng)
        events.add(
            day,
            recipients[clicked],
            clicked_at,
            _EVENT[_CLICK_EVENT[channel]],
            channel_code,
            campaign[clicked],
        )
        # the landing page of the click, tagged with the campaign (utm)
        landed = rng.random(clicked_at.size, dtype=np.float32) < tables.landing_page_view_p
        events.add(
            day,
            recipients[clicked][landed],
            _later(clicked_at[landed], rng),
            _EVENT["page_view"],
            _CHANNEL["web"],
            campaign[clicked][landed],
        )

        unsubscribed = rng.random(k, dtype=np.float32) < tables.unsubscribe_p[stage, cta]
        unsubscribes.append(
            (
                recipients[unsubscribed],
                _later(sent_at[unsubscribed], rng),
                channel_code,
                campaign[unsubscribed],
            )
        )
        population.consent[recipients[unsubscribed]] = False  # from every channel, from now on

        annoyed = opened & (rng.random(k, dtype=np.float32) < tables.friction_p[stage, cta])
        frictions.append(recipients[annoyed])
        fits = clicked & tables.matched[stage, cta]
        fits &= rng.random(k, dtype=np.float32) < tables.nudge_p
        nudged.append(recipients[fits])
    for who, at, channel_code, campaign in unsubscribes:
        after_last_send = np.minimum(last_sent[who] + 1, SECONDS_PER_DAY - 1)
        events.add(
            day, who, np.maximum(at, after_last_send), _EVENT["unsubscribe"], channel_code, campaign
        )
    return _concat(nudged), _concat(frictions)


def _past_purchases(
    population: _Population,
    settings: ContactSettings,
    tables: _Tables,
    rng: np.random.Generator,
    events: _EventBuffer,
) -> None:
    """The order history of the day-0 customers: purchases dated before the period, after their
    signup. Without it nothing in the data says who is a customer, and the rules (and features)
    would take every existing customer for a prospect."""
    customers = np.flatnonzero(population.customer).astype(np.int32)
    if customers.size == 0:
        return
    counts = 1 + rng.poisson(settings.prior_purchases_mean - 1, customers.size)
    idx = np.repeat(customers, counts).astype(np.int32)
    tenure = np.minimum(population.signup_days_before[idx], settings.prior_history_days)
    days_before = rng.integers(1, tenure + 1)
    codes, weights = tables.channels[_EVENT["purchase"]]
    channel = codes[rng.choice(codes.size, size=idx.size, p=weights)]
    value = rng.lognormal(tables.value_mu[population.segment[idx]], tables.value_sigma)
    seconds = rng.integers(0, SECONDS_PER_DAY, idx.size, dtype=np.int32)
    events.add(
        -days_before, idx, seconds, _EVENT["purchase"], channel, -1, value.astype(np.float32)
    )


def _later(seconds: npt.NDArray[np.int32], rng: np.random.Generator) -> npt.NDArray[np.int32]:
    """A random second after each given one, still within the same day."""
    room = SECONDS_PER_DAY - seconds
    return (seconds + (rng.random(seconds.size) * room).astype(np.int32)).astype(np.int32)


def _concat(parts: list[npt.NDArray[np.int32]]) -> npt.NDArray[np.int32]:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


def _organic_events(
    day: int,
    population: _Population,
    members: list[npt.NDArray[np.int32]],
    tables: _Tables,
    rng: np.random.Generator,
    events: _EventBuffer,
) -> None:
    """What contacts do of their own accord today, by their hidden stage."""
    n = population.stage.size
    picks: dict[int, list[npt.NDArray[np.int32]]] = {}

    def _pick(event: int, pool: npt.NDArray[np.int32], mean: float) -> None:
        # Poisson(len(pool) * mean) events spread uniformly over the pool gives each contact
        # an independent Poisson(mean) count, at a cost that grows with events, not contacts
        if mean > 0 and pool.size:
            k = rng.poisson(pool.size * mean)
            picks.setdefault(event, []).append(pool[rng.integers(0, pool.size, k)])

    # ads and social reach everyone, whatever they do
    for s in range(_N_STAGES):
        _pick(_EVENT["impression"], members[s], float(tables.impressions[s]))

    # an active day: a web/app session of at least one page view plus stage-typical events
    chance = tables.active_p[population.stage] * population.activity
    active_mask = rng.random(n, dtype=np.float32) < chance
    active_mask[members[_CONVERSION]] = True  # a purchase day is always a session
    active = np.flatnonzero(active_mask).astype(np.int32)
    active_stage = population.stage[active]
    by_stage = [active[active_stage == s] for s in range(_N_STAGES)]
    picks.setdefault(_EVENT["page_view"], []).append(active)
    for event, means in tables.per_active_day.items():
        for s in range(_N_STAGES):
            _pick(event, by_stage[s], float(means[s]))

    customers = np.flatnonzero(population.customer).astype(np.int32)
    for event, rate in tables.customer_per_day.items():
        _pick(event, customers, rate)

    # a purchase on the day a contact enters conversion; a further one on a later day of it
    converting = members[_CONVERSION]
    later_day = converting[~np.isin(converting, population.new_conversions)]
    buyers = np.concatenate(
        [
            population.new_conversions,
            later_day[rng.random(later_day.size) < tables.repeat_purchase_p],
        ]
    ).astype(np.int32)
    picks.setdefault(_EVENT["purchase"], []).append(buyers)

    idx_parts, type_parts, channel_parts = [], [], []
    for event in sorted(picks):
        idx = _concat(picks[event])
        if idx.size == 0:
            continue
        codes, weights = tables.channels[event]
        channel = (
            codes[rng.choice(codes.size, size=idx.size, p=weights)]
            if codes.size > 1
            else np.full(idx.size, codes[0], dtype=np.int8)
        )
        idx_parts.append(idx)
        type_parts.append(np.full(idx.size, event, dtype=np.int8))
        channel_parts.append(channel)
    if not idx_parts:
        return
    idx = _concat(idx_parts)
    event_type = np.concatenate(type_parts)
    channel = np.concatenate(channel_parts)
    seconds = _distinct_seconds(
        idx, event_type, channel, rng.integers(0, SECONDS_PER_DAY, idx.size, dtype=np.int32)
    )
    value = np.full(idx.size, np.nan, dtype=np.float32)
    is_purchase = event_type == _EVENT["purchase"]
    buyer_segment = population.segment[idx[is_purchase]]
    value[is_purchase] = rng.lognormal(tables.value_mu[buyer_segment], tables.value_sigma)
    events.add(day, idx, seconds, event_type, channel, -1, value)


def _distinct_seconds(
    idx: npt.NDArray[np.int32],
    event_type: npt.NDArray[np.int8],
    channel: npt.NDArray[np.int8],
    seconds: npt.NDArray[np.int32],
) -> npt.NDArray[np.int32]:
    """Seconds moved on until no contact has two events of one type and channel in the same
    second: validation would reject the second copy as a duplicate row."""
    base = (idx.astype(np.int64) * len(EVENT_TYPES) + event_type) * len(CHANNELS) + channel
    while True:
        key = base * SECONDS_PER_DAY + seconds
        ordered = np.sort(key)
        if not (ordered[1:] == ordered[:-1]).any():
            return seconds
        _, first = np.unique(key, return_index=True)
        repeat = np.ones(key.size, dtype=bool)
        repeat[first] = False
        seconds = seconds.copy()
        seconds[repeat] = (seconds[repeat] + 1) % SECONDS_PER_DAY


def _advance_stages(
    population: _Population,
    tables: _Tables,
    rng: np.random.Generator,
    nudged: npt.NDArray[np.int32],
    frictions: npt.NDArray[np.int32],
) -> npt.NDArray[np.int32]:
    """Tomorrow's stages: the Markov step, then today's marketing effects. Returns who changed."""
    stage = population.stage
    state = stage + population.customer.astype(np.int8) * np.int8(_N_STAGES)
    # most contacts stay; only movers draw where to go, from their row without the diagonal
    movers = np.flatnonzero(rng.random(stage.size, dtype=np.float32) >= tables.stay[state])
    draw = rng.random(movers.size)
    target = (draw[:, None] >= tables.move_cdf[state[movers]]).sum(axis=1)
    tomorrow = stage.copy()
    tomorrow[movers] = target
    tomorrow[frictions] = _DORMANT
    nudge_to = tables.nudge[stage[nudged]]
    tomorrow[nudged[nudge_to >= 0]] = nudge_to[nudge_to >= 0]
    changed = np.flatnonzero(tomorrow != stage).astype(np.int32)
    entered = changed[tomorrow[changed] == _CONVERSION]
    population.customer[entered] = True
    population.new_conversions = entered
    population.stage = tomorrow
    return changed


# --- buffers and tables ------------------------------------------------------------------------


class _EventBuffer:
    """Compact per-day chunks (int32 contact index and second, int8 codes, float32 value);
    Arrow is built once, at the end. A scalar stands for a whole chunk's column."""

    def __init__(self) -> None:
        self._chunks: list[tuple[Any, Any, Any, Any, Any, Any, Any]] = []
        self.size = 0

    def add(
        self,
        day: int | npt.NDArray[np.int64],  # days from the start; before it when negative
        idx: npt.NDArray[np.int32],
        seconds: npt.NDArray[np.int32],
        event_type: int | npt.NDArray[np.int8],
        channel: int | npt.NDArray[np.int8],
        campaign: int | npt.NDArray[np.int32] = -1,
        value: npt.NDArray[np.float32] | None = None,
    ) -> None:
        if idx.size:
            self._chunks.append((day, idx, seconds, event_type, channel, campaign, value))
            self.size += idx.size

    def to_table(self, ids: pa.Array, start: dt.date, campaign_ids: pa.Array) -> pa.Table:
        n = self.size
        idx = np.empty(n, dtype=np.int32)
        micros = np.empty(n, dtype=np.int64)
        event_type = np.empty(n, dtype=np.int8)
        channel = np.empty(n, dtype=np.int8)
        campaign = np.empty(n, dtype=np.int32)
        value = np.full(n, np.nan, dtype=np.float64)
        first_second = (start - dt.date(1970, 1, 1)).days * SECONDS_PER_DAY
        offset = 0
        self._chunks.reverse()
        while self._chunks:  # freed as copied, so the chunks and the arrays never both peak
            day, i, s, e, c, k, v = self._chunks.pop()
            end = offset + i.size
            idx[offset:end] = i
            micros[offset:end] = (
                first_second
                + np.asarray(day, dtype=np.int64) * SECONDS_PER_DAY
                + s.astype(np.int64)
            ) * 1_000_000
            event_type[offset:end] = e
            channel[offset:end] = c
            campaign[offset:end] = k
            if v is not None:
                value[offset:end] = v
            offset = end
        self.size = 0
        no_campaign = campaign < 0
        campaign[no_campaign] = 0
        no_value = np.isnan(value)
        return pa.Table.from_arrays(
            [
                pc.take(ids, pa.array(idx)),
                pa.array(micros, type=pa.timestamp("us", tz="UTC")),
                pc.take(pa.array(CHANNELS, pa.string()), pa.array(channel)),
                pc.take(pa.array(EVENT_TYPES, pa.string()), pa.array(event_type)),
                pa.array(np.round(value, 2), mask=no_value),
                pc.take(campaign_ids, pa.array(campaign, mask=no_campaign)),
                pa.nulls(n, pa.string()),
            ],
            schema=EVENTS_SCHEMA,
        )


class _HistoryBuffer:
    """The stage change log as compact chunks: (day, contact indices, stage codes, customer)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[int, Any, Any, Any]] = []

    def add(
        self,
        day: int,
        idx: npt.NDArray[np.int32],
        stage: npt.NDArray[np.int8],
        customer: npt.NDArray[np.bool_],
    ) -> None:
        self._chunks.append((day, idx.copy(), stage.copy(), customer.copy()))

    def to_table(self, ids: pa.Array, start: dt.date) -> pa.Table:
        first_day = (start - dt.date(1970, 1, 1)).days
        days = np.concatenate(
            [np.full(idx.size, first_day + day, dtype=np.int32) for day, idx, _, _ in self._chunks]
        )
        idx = np.concatenate([chunk[1] for chunk in self._chunks])
        stage = np.concatenate([chunk[2] for chunk in self._chunks])
        customer = np.concatenate([chunk[3] for chunk in self._chunks])
        return pa.Table.from_arrays(
            [
                pc.take(ids, pa.array(idx)),
                pa.array(days).view(pa.date32()),
                pc.take(pa.array(STAGES, pa.string()), pa.array(stage)),
                pa.array(customer),
            ],
            schema=STAGE_HISTORY_SCHEMA,
        )


def _contact_ids(n: int) -> pa.Array:
    """``sim-0000001``-style ids, zero-padded so they sort as they count, built as Arrow buffers
    (a million Python strings would cost more than a simulated day)."""
    width = max(7, len(str(n)))
    length = 4 + width
    digits = (np.arange(n, dtype=np.int64)[:, None] // 10 ** np.arange(width - 1, -1, -1)) % 10
    text = np.empty((n, length), dtype=np.uint8)
    text[:, :4] = np.frombuffer(b"sim-", dtype=np.uint8)
    text[:, 4:] = digits + ord("0")
    offsets = np.arange(0, (n + 1) * length, length, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())]
    )


def _campaign_ids(days: int) -> pa.Array:
    """Campaign ids by code ``(day * channels + channel) * ctas + cta``: ``email-act-d017``."""
    return pa.array(
        [
            f"{channel}-{cta}-d{day:03d}"
            for day in range(days)
            for channel in MARKETING_CHANNELS
            for cta in CTAS
        ],
        pa.string(),
    )


def _contacts_table(
    ids: pa.Array, population: _Population, settings: ContactSettings, start: dt.date
) -> pa.Table:
    first_day = (start - dt.date(1970, 1, 1)).days
    return pa.Table.from_arrays(
        [
            ids,
            pa.array(population.consent),
            pa.array((first_day - population.signup_days_before).astype(np.int32)).view(
                pa.date32()
            ),
            pc.take(pa.array(list(settings.acquisition_sources)), pa.array(population.acquisition)),
            pc.take(pa.array(list(settings.segments)), pa.array(population.segment)),
        ],
        schema=SIMULATED_CONTACTS_SCHEMA,
    )
