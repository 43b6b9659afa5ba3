"""Training, end to end and without side effects: events in, fitted and evaluated models out.

1. Snapshot dates: weekly (by default), back from the last date whose label horizon fits.
2. The training frame: features at every snapshot in one pass (``features.snapshots``).
3. Labels from the horizon after each snapshot (or a provided labels table).
4. An out-of-time split with embargoes (``training.frame.split_by_time``).
5. A minimum-data check: too few buyers, and training stops with a report; nothing is
   registered, and the served model (the champion, else the rules) is unchanged.
6. The rules, the RFM baseline and both LightGBM models (optionally tuned), fitted and
   evaluated side by side on the test snapshots.

Tracking (MLflow) and the registry are ``training.tracking``'s business; this module returns
everything they log.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from features.consent import ConsentUnknownError, restrict_to_consented
from features.engine import (
    EventsInput,
    date_attributes,
    feature_columns,
    first_event_times,
    identifying_attributes,
    leave_out_not_yet_active,
    scan_events,
    unreadable_parquet_named,
)
from features.errors import InputError
from features.settings import RulesSettings
from features.snapshots import build_training_frame
from features.spec import FeatureSpec, load_feature_spec, redefined_features
from features.vocabulary import PURCHASE_EVENTS
from training.evaluation import EvaluationInputs, evaluate
from training.frame import (
    SAMPLE_WEIGHT,
    SnapshotSampler,
    TimeSplit,
    min_snapshots,
    model_matrix,
    rows_of,
    snapshot_dates,
    split_by_time,
)
from training.labels import (
    NoEventsError,
    label_events,
    label_from_provided,
    observed_until,
    with_default_labels,
)
from training.models import (
    RFM_COLUMNS,
    LightGBMPropensityModel,
    LightGBMStageModel,
    RfmPropensityModel,
    RulesStageModel,
)
from training.settings import TrainingSettings, for_training

STAGE_LABEL = "stage_label"
PURCHASE_LABEL = "purchase_label"
# the test set's columns for the promotion gate's paired bootstrap (training.bootstrap): each
# row's contact as a number of this run alone, and the RFM baseline's propensity. A name that
# starts with "_" is no feature or attribute of any spec (features.spec), so neither shadows one
CONTACT_GROUP = "_contact_group"
RFM_PROPENSITY = "_rfm_propensity"
Progress = Callable[[str], None]


# the end of every InsufficientDataError's message: training never demotes a champion
UNCHANGED = "Nothing was registered: the served model (the champion, else the rules) is unchanged."


class InsufficientDataError(InputError):
    """Too little data to train; ``report`` says what there is and what is needed. Each
    message says once that nothing was registered (``UNCHANGED``)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class TrainingResult:
    """Everything a training run produced: the models, the split, the test set, the metrics."""

    stage_model: LightGBMStageModel
    propensity_model: LightGBMPropensityModel
    rules_model: RulesStageModel
    rfm_model: RfmPropensityModel
    feature_names: list[str]
    split: TimeSplit
    # the test snapshots' features and labels, no contact ids: a number per contact of this
    # run alone (CONTACT_GROUP) and the RFM baseline's propensity (RFM_PROPENSITY)
    test_set: pl.DataFrame
    evaluation: EvaluationInputs
    metrics: dict[str, Any]
    data_summary: dict[str, Any]
    label_source: str
    tuned_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # the contacts columns read as dates (features days_since_<name>), for the online path
    date_attributes: list[str] = field(default_factory=list)


def require_known_consent(
    contacts: pa.Table | pl.DataFrame | None, *, assume_consent: bool = False
) -> None:
    """Training reads only contacts with marketing consent (its test weeks are scored, and
    kept as an artifact): without a contacts table nobody's consent is known."""
    if contacts is None and not assume_consent:
        raise ConsentUnknownError(
            "no contacts table, so no marketing consent is known and no contact may be trained "
            "on or scored; give contacts with a marketing_consent column (contacts.parquet "
            "beside the events, or --contacts), or pass --assume-consent if every contact "
            "opted in"
        )


def require_trainable_spec(spec: FeatureSpec) -> None:
    """Training measures the models against the rules and the RFM baseline, which read
    features of the shipped spec by name: a spec without them fails here, before any work,
    not after both models are fitted. A spec that keeps their names and defines them otherwise
    (other events, another window) would measure the models against another baseline under
    the RFM baseline's name, and the promotion gate with it (spec review)."""
    problems = []
    if not spec.rules_stage:
        problems.append("`rules_stage: true` (the rules baseline's stage)")
    missing = [name for name in RFM_COLUMNS if name not in spec.names]
    if missing:
        problems.append(f"the RFM baseline's features {missing}")
    redefined = [n for n in redefined_features(spec, load_feature_spec()) if n in RFM_COLUMNS]
    if redefined:
        problems.append(
            f"the RFM baseline's features {redefined} as the shipped spec defines them (yours "
            "defines them otherwise)"
        )
    if problems:
        raise InputError(
            f"training compares the models with the rules and the RFM baseline, so the feature "
            f"spec needs {' and '.join(problems)}; keep these entries of the shipped spec "
            "(features/config/feature_spec.yaml), names included, in your copy"
        )


def require_no_identifying_attributes(
    contacts: pa.Table | pl.DataFrame | None, spec: FeatureSpec
) -> None:
    """A contacts column that names contacts (an e-mail, a phone number, a CRM id, as text or
    as a number) is no feature to train on: the model would memorise it, as a categorical
    LightGBM keeps every value in the model, so MLflow, every Bento and the service's
    /metadata would carry them, and the test set logged to MLflow would hold every value
    (``identifying_attributes``). ``attributes: all`` takes every column, so it is checked
    before any work."""
    found = identifying_attributes(contacts, spec)
    if not found:
        return
    named = ", ".join(
        f"'{c.name}' ({c.distinct:,} distinct values among {c.rows:,} contacts"
        + ("" if c.why == "many values" else f", mostly {c.why}")
        + ")"
        for c in found
    )
    how = (
        "`attributes: all` in the feature spec takes every contacts column"
        if spec.attributes == "all"
        else "the feature spec lists them under `attributes:`"
    )
    one = len(found) == 1
    raise InputError(
        f"the contacts column{'' if one else 's'} {named} identif{'ies' if one else 'y'} "
        f"contacts rather than describe{'s' if one else ''} them, and {how}: a model would "
        "memorise the values and carry every one into MLflow and the Bento. List the "
        "attributes to train on under `attributes:` in a copy of the spec "
        "(features/config/feature_spec.yaml, given with --spec), or leave those columns out "
        "of the contacts table"
    )


def build_labelled_frame(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    spec: FeatureSpec,
    rules: RulesSettings,
    settings: TrainingSettings,
    labels: pa.Table | pl.DataFrame | None = None,
    until: dt.datetime | None = None,
    as_of_dates: Sequence[dt.datetime] | None = None,
    each: Callable[[dt.datetime, pl.DataFrame], pl.DataFrame] | None = None,
    assume_consent: bool = False,
    counts: dict[str, int] | None = None,
) -> tuple[pl.DataFrame, list[dt.datetime], str]:
    """The training frame with ``stage_label`` and ``purchase_label``, its snapshot dates and
    where the labels came from. ``events``: the whole log (``observe_until`` is applied here).

    ``as_of_dates``: the snapshots to build (default: ``labelled_snapshot_dates``; training
    leaves out the embargoed ones); ``each`` is applied to each snapshot's rows as they are
    built (``features.snapshots.build_training_frame``). Only contacts with marketing consent
    are rows: without a contacts table nobody's consent is known, and that is a
    ``ConsentUnknownError`` unless ``assume_consent`` (every contact opted in).

    Nor is a contact a row at a snapshot before its first event, though the contacts table
    lists it (as the funnel report leaves it out): back then nobody knew it, no served model
    sees such a contact, and its label would be its arrival (a lead created and won within the
    horizon). ``counts`` (when given) receives how many rows that left out
    (``rows_before_first_event``), how many provided labels had no usable date
    (``labels_without_date``, ``training.labels.label_from_provided``) and how many labelled
    contacts are no row at any snapshot (``labelled_contacts_without_rows``).

    With ``settings.observe_until``, features and labels read only the events before that day
    (``observed_events``), and a contact first seen on or after it is no row: it was unknown
    then, as the log exported that day would show."""
    require_known_consent(contacts, assume_consent=assume_consent)
    seen = events  # who was first seen when: a contact first seen after the cut is no row
    events = observed_events(events, settings)
    until = until or observed_until(events)
    dates = sorted(as_of_dates or labelled_snapshot_dates(events, settings, until))
    firsts = first_event_times(seen)
    left_out = 0

    def known_then(as_of: dt.datetime, rows: pl.DataFrame) -> pl.DataFrame:
        nonlocal left_out
        kept = leave_out_not_yet_active(rows, firsts, as_of=as_of)
        left_out += rows.height - kept.height
        return each(as_of, kept) if each is not None else kept

    frame = build_training_frame(
        events, contacts, as_of_dates=dates, spec=spec, rules=rules, each=known_then
    )
    if counts is not None:
        counts["rows_before_first_event"] = left_out
    if contacts is not None:
        # contacts without marketing consent are never scored, not even on a test week
        frame = restrict_to_consented(frame, contacts).kept
    revealed = label_events(
        events, as_of_dates=dates, horizon_days=settings.horizon_days, rules=rules, until=until
    )
    frame = with_default_labels(frame, revealed).rename(
        {"purchased": PURCHASE_LABEL, "revealed_stage": STAGE_LABEL}
    )
    source = "revealed"
    if labels is not None:
        provided = label_from_provided(
            labels, as_of_dates=dates, horizon_days=settings.horizon_days, set_aside=counts
        )
        # provided labels replace the revealed ones; the rows they do not label are left out
        frame = frame.join(provided, on=["contact_id", "as_of"], how="inner")
        if "purchased" in provided.columns:
            frame = frame.with_columns(pl.col("purchased").alias(PURCHASE_LABEL)).drop("purchased")
        if "provided_stage" in provided.columns:
            frame = frame.with_columns(pl.col("provided_stage").alias(STAGE_LABEL)).drop(
                "provided_stage"
            )
        frame = frame.filter(
            pl.col(PURCHASE_LABEL).is_not_null() & pl.col(STAGE_LABEL).is_not_null()
        )
        source = "provided"
        if counts is not None:
            counts["labelled_contacts_without_rows"] = _labelled_without_rows(labels, frame)
    return frame, dates, source


def _labelled_without_rows(labels: pa.Table | pl.DataFrame, frame: pl.DataFrame) -> int:
    """How many contacts of the provided labels are no training row at any snapshot: not in
    the events before it, without marketing consent, or labelled only outside every horizon.
    Their labels are counted, not silently lost."""
    table = labels if isinstance(labels, pl.DataFrame) else pl.DataFrame(pl.from_arrow(labels))
    labelled = table.select(pl.col("contact_id").cast(pl.String).unique())
    rows = frame.select(pl.col("contact_id").cast(pl.String).unique())
    return labelled.join(rows, on="contact_id", how="anti").height


def observe_cut(settings: TrainingSettings) -> dt.datetime | None:
    """The moment ``observe_until`` sets (midnight UTC of that day); None: no cut."""
    if settings.observe_until is None:
        return None
    return dt.datetime.combine(settings.observe_until, dt.time(), tzinfo=dt.UTC)


def observed_events(events: EventsInput, settings: TrainingSettings) -> EventsInput:
    """The events a training run trains on: those before ``observe_until`` (as if the log had
    been exported then) when it is set, else all of them. ``train_models`` and
    ``build_labelled_frame`` apply it themselves and take the whole log: the later events say
    who was first seen after the day (no row then)."""
    cut = observe_cut(settings)
    if cut is None:
        return events
    return scan_events(events).filter(pl.col("timestamp") < cut)


def labels_after(labels: pa.Table | pl.DataFrame | None, cut: dt.datetime) -> int:
    """How many provided labels are dated at or after ``cut`` (none is trained on: every label
    horizon ends by then). Dates of any zone count; a ``label_date`` that is no zoned
    timestamp counts none here, and ``label_from_provided`` refuses it, naming the fix."""
    if labels is None:
        return 0
    frame = labels if isinstance(labels, pl.DataFrame) else pl.DataFrame(pl.from_arrow(labels))
    dates = frame.schema.get("label_date")
    if not (isinstance(dates, pl.Datetime) and dates.time_zone is not None):
        return 0
    later = pl.col("label_date").dt.convert_time_zone("UTC") >= cut
    return int(frame.select(later.sum()).item() or 0)


def labelled_snapshot_dates(
    events: EventsInput, settings: TrainingSettings, until: dt.datetime | None = None
) -> list[dt.datetime]:
    """The snapshot dates of a training run: weekly (by default) back from the last date whose
    label horizon fits in the data."""
    until = until or observed_until(events)
    # history starts with the first engagement event: a backfill of past orders before the
    # tracking of engagement began (a CRM import, the simulator's prior purchases) is no
    # history to snapshot; purchase-only logs (CDNOW) start with their first purchase
    first, first_engagement = (
        scan_events(events)
        .select(
            pl.col("timestamp").min().alias("first"),
            pl.col("timestamp")
            .filter(~pl.col("event_type").is_in(PURCHASE_EVENTS))
            .min()
            .alias("first_engagement"),
        )
        .collect()
        .row(0)
    )
    first = first_engagement or first
    dates = snapshot_dates(
        first,
        until,
        horizon_days=settings.horizon_days,
        every_days=settings.snapshot_every_days,
        min_history_days=settings.min_history_days,
        count=settings.snapshots,
    )
    if not dates:
        raise InsufficientDataError(
            # `until` is the midnight after the last day observed: the span ends that day
            f"too little data to train: the events span {first:%Y-%m-%d}.."
            f"{until - dt.timedelta(microseconds=1):%Y-%m-%d}, "
            f"too short for one snapshot with {settings.min_history_days} days of history "
            f"and a {settings.horizon_days}-day horizon (those need "
            f"{settings.min_history_days + settings.horizon_days} days, the span is "
            f"{(until - first).days}); give a longer history, a shorter horizon "
            "(`horizon_days:`, or `train --horizon`), or fewer days of history "
            "(`min_history_days:`) under `training:` in your --config or your source mapping. "
            f"{UNCHANGED}",
            _snapshots_report([], settings),
        )
    return dates


def _snapshots_report(dates: Sequence[dt.datetime], settings: TrainingSettings) -> dict[str, Any]:
    """The snapshots that fit the data and how many a training run needs."""
    return {
        "snapshots": [f"{d:%Y-%m-%d}" for d in dates],
        "minimums": {
            "snapshots": min_snapshots(
                horizon_days=settings.horizon_days,
                every_days=settings.snapshot_every_days,
                validation=settings.validation_snapshots,
                test=settings.test_snapshots,
            )
        },
    }


def check_enough_data(
    frame: pl.DataFrame,
    split: TimeSplit,
    settings: TrainingSettings,
    *,
    labels_without_date: int = 0,
    validation_rates: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Counts per split; raises ``InsufficientDataError`` with them when below the minimums.
    ``labels_without_date``: provided labels set aside for want of a date, said with the
    shortfall (every won deal undated left 0 buyers, and the advice was more history).
    Sampled snapshots count the buyers kept: a shortfall there names the row budget to raise
    first (README review: 307 buyers in the training weeks were 104 kept, and the advice was
    only more contacts), with the buyers the whole snapshots held, estimated (each kept one
    weighs 1 / its chance to be kept: its training ``sample_weight``, or 1 / its validation
    snapshot's share in ``validation_rates``). The estimate rests on the few buyers kept, so
    it only informs: more history or contacts are named too (diff review)."""
    report: dict[str, Any] = {
        "minimums": {
            "train_positives": settings.min_train_positives,
            "validation_positives": settings.min_eval_positives,
            "test_positives": settings.min_eval_positives,
            "rows_per_stage_for_two_stages": settings.min_stage_rows,
        }
    }
    budgets = {
        "train": f"max_training_rows ({settings.max_training_rows:,})",
        "validation": f"max_validation_rows ({settings.max_validation_rows:,})",
    }
    problems, short = [], []  # short: the budgets of sampled splits with too few buyers
    for name in ("train", "validation", "test"):
        rows = rows_of(frame, getattr(split, name))
        positives = int(rows[PURCHASE_LABEL].sum())
        stages = rows[STAGE_LABEL].cast(pl.String).value_counts().sort(STAGE_LABEL)
        report[name] = {
            "rows": rows.height,
            "positives": positives,
            "stages": dict(
                zip(stages[STAGE_LABEL].to_list(), stages["count"].to_list(), strict=True)
            ),
        }
        needed = settings.min_train_positives if name == "train" else settings.min_eval_positives
        if positives < needed:
            held = _buyers_before_sampling(rows, validation_rates or {})
            if held > positives:
                problems.append(
                    f"{positives} buyers kept by sampling in the {name} snapshots, of about "
                    f"{held:,} (at least {needed})"
                )
                if name in budgets:  # the estimate is noisy: said whether or not it is short
                    short.append(budgets[name])
            else:
                problems.append(f"{positives} buyers in the {name} snapshots (at least {needed})")
    train_stages = [n for n in report["train"]["stages"].values() if n >= settings.min_stage_rows]
    if len(train_stages) < 2:
        problems.append(
            f"fewer than two stages with {settings.min_stage_rows}+ rows in the training snapshots"
        )
    if problems:
        undated = (
            f"{labels_without_date:,} provided labels were set aside without a label_date (a "
            "conversion or a stage needs the date it happened: map your export's date column "
            "to label_date). "
            if labels_without_date
            else ""
        )
        advice = (
            f"Raise {' and '.join(short)} under `training:` in your --config or your source "
            "mapping (the snapshots were sampled to fit them), or bring a longer history or "
            "more contacts."
            if short
            else "Bring a longer history or more contacts."
        )
        raise InsufficientDataError(
            "too little data to train: " + "; ".join(problems) + f". {undated}{advice} {UNCHANGED}",
            report,
        )
    return report


def _buyers_before_sampling(rows: pl.DataFrame, validation_rates: Mapping[str, float]) -> int:
    """The buyers a split's snapshots held before sampling, estimated (rounded): each kept
    buyer weighs 1 / its chance to be kept, its ``sample_weight`` (training) over its
    snapshot's share kept (validation, by date; 1 where not sampled)."""
    weight = pl.col(SAMPLE_WEIGHT) if SAMPLE_WEIGHT in rows.columns else pl.lit(1.0)
    share = (
        pl.col("as_of")
        .dt.strftime("%Y-%m-%d")
        .replace_strict(dict(validation_rates), default=1.0, return_dtype=pl.Float64)
    )
    held = rows.filter(pl.col(PURCHASE_LABEL)).select((weight / share).sum()).item()
    return round(held or 0)


@unreadable_parquet_named()  # damaged events pages: one line, as the feature builders say it
def train_models(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None = None,
    *,
    spec: FeatureSpec,
    rules: RulesSettings,
    settings: TrainingSettings,
    labels: pa.Table | pl.DataFrame | None = None,
    tune_trials: int = 0,
    tuner: Callable[..., dict[str, dict[str, Any]]] | None = None,
    progress: Progress | None = None,
    assume_consent: bool = False,
) -> TrainingResult:
    """Fit and evaluate the rules, the RFM baseline and both LightGBM models on ``events``.

    ``tuner`` (``training.tuning.tune_models``) searches LightGBM parameters when
    ``tune_trials`` > 0; it is passed in so this module stays free of tracking. Contacts
    without marketing consent are left out (``build_labelled_frame``); without ``contacts``,
    only with ``assume_consent``. ``settings.observe_until`` trains as if the log had been
    exported that day; ``data_summary`` counts the later events and provided labels."""
    require_known_consent(contacts, assume_consent=assume_consent)  # before any work
    require_trainable_spec(spec)
    require_no_identifying_attributes(contacts, spec)
    settings = for_training(settings)  # LightGBM's parameters, as training reads them
    say = progress or (lambda _: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    say("features and labels for every snapshot")
    cut = observe_cut(settings)
    observed = observed_events(events, settings)
    later = later_labels = 0
    if cut is not None:  # counted, never silently dropped
        after = scan_events(events).filter(pl.col("timestamp") >= cut)
        later = int(after.select(pl.len()).collect().item())
        later_labels = labels_after(labels, cut)
    try:
        until = observed_until(observed)
    except NoEventsError as error:
        why = (
            f"there are no events before observe_until {settings.observe_until} ({later:,} "
            "events, all of them later); set observe_until after the data's start"
            if cut is not None and later
            else str(error)
        )
        raise InsufficientDataError(
            f"too little data to train: {why}. {UNCHANGED}",
            _snapshots_report([], settings),
        ) from None
    dates = labelled_snapshot_dates(observed, settings, until)
    try:
        split = split_by_time(
            dates,
            horizon_days=settings.horizon_days,
            validation=settings.validation_snapshots,
            test=settings.test_snapshots,
        )
    except InputError as error:  # too short a history is too little data, with a report
        raise InsufficientDataError(
            f"{error}. {UNCHANGED}", _snapshots_report(dates, settings)
        ) from error
    # the embargoed snapshots are not built; the training and validation ones are sampled
    # when large
    sampler = SnapshotSampler(
        train_dates=frozenset(split.train),
        rows_per_snapshot=max(1, settings.max_training_rows // len(split.train)),
        min_rate=settings.min_dormant_sample_rate,
        seed=settings.seed,
        validation_dates=frozenset(split.validation),
        validation_rows_per_snapshot=max(
            1, settings.max_validation_rows // max(1, len(split.validation))
        ),
    )
    frame_counts: dict[str, int] = {}
    frame, _, label_source = build_labelled_frame(
        events,
        contacts,
        spec=spec,
        rules=rules,
        settings=settings,
        labels=labels,
        until=until,
        as_of_dates=[*split.train, *split.validation, *split.test],
        each=sampler,
        assume_consent=assume_consent,
        counts=frame_counts,
    )
    timings["features_and_labels"] = time.perf_counter() - clock
    if sampler.rates and not sampler.active_rates:
        say(
            f"large log: training snapshots keep every active contact and "
            f"{min(sampler.rates.values()):.1%}-{max(sampler.rates.values()):.1%} of the "
            f"dormant ones, weighted ({sampler.rows_kept:,} of {sampler.rows_built:,} rows kept)"
        )
    elif sampler.active_rates:
        sampled = sorted({s for shares in sampler.active_rates.values() for s in shares})
        say(
            f"large log: the active contacts alone overfill max_training_rows "
            f"({settings.max_training_rows:,}); training snapshots keep a weighted sample of "
            f"the largest stages ({', '.join(sampled)}"
            f"{', dormant' if sampler.rates else ''}) and every contact of the others "
            f"({sampler.rows_kept:,} of {sampler.rows_built:,} rows kept)"
        )
    if sampler.validation_rates:
        say(
            f"large log: validation snapshots keep a random "
            f"{min(sampler.validation_rates.values()):.1%}-"
            f"{max(sampler.validation_rates.values()):.1%} of their contacts "
            f"(max_validation_rows {settings.max_validation_rows:,}); test keeps every contact"
        )
    counts = check_enough_data(
        frame,
        split,
        settings,
        labels_without_date=frame_counts.get("labels_without_date", 0),
        validation_rates=sampler.validation_rates,
    )
    names = [
        c for c in feature_columns(frame) if c not in (STAGE_LABEL, PURCHASE_LABEL, SAMPLE_WEIGHT)
    ]
    # one split at a time, letting go of the Polars rows once they are model inputs: the
    # training frame is the largest thing in memory, and three copies of it do not fit
    X: dict[str, pd.DataFrame] = {}
    train_weight: np.ndarray | None = None  # None: no row was sampled
    stage_y: dict[str, np.ndarray] = {}
    buy_y: dict[str, np.ndarray] = {}
    for name in ("train", "validation", "test"):
        part = rows_of(frame, getattr(split, name))
        X[name] = model_matrix(part, names)
        stage_y[name] = part[STAGE_LABEL].cast(pl.String).to_numpy()
        buy_y[name] = part[PURCHASE_LABEL].to_numpy()
        if name == "train" and sampler.sampled_training:
            train_weight = part[SAMPLE_WEIGHT].to_numpy().astype(np.float64)
        if name == "test":
            # kept for the promotion gate without the contact ids (the artifact is shuffled
            # as it is logged: training.tracking.log_training), but with each row's contact
            # as a number drawn by a seed nobody keeps, so the gate resamples contacts whole
            test_set = part.drop("contact_id", SAMPLE_WEIGHT).with_columns(
                number_contacts(part["contact_id"], seed=secrets.randbits(63))
            )
        del part
    del frame

    tuned: dict[str, dict[str, Any]] = {}
    if tune_trials > 0:
        if tuner is None:
            raise ValueError("tune_trials > 0 needs a tuner")
        say(f"tuning LightGBM: {tune_trials} trials per model")
        clock = time.perf_counter()
        tuned = tuner(
            X, stage_y, buy_y, settings=settings, trials=tune_trials, sample_weight=train_weight
        )
        timings["tuning"] = time.perf_counter() - clock

    lightgbm = settings.lightgbm
    common: dict[str, Any] = {"num_boost_round": lightgbm.num_boost_round, "seed": settings.seed}
    say("stage model")
    clock = time.perf_counter()
    stage_model = LightGBMStageModel(
        params={**lightgbm.params, **tuned.get("stage", {})},
        class_weight_power=lightgbm.class_weight_power,
        early_stopping_rounds=lightgbm.patience("stage"),
        **common,
    ).fit(
        X["train"],
        stage_y["train"],
        X_val=X["validation"],
        y_val=stage_y["validation"],
        sample_weight=train_weight,
    )
    timings["stage_model"] = time.perf_counter() - clock
    say("propensity model")
    clock = time.perf_counter()
    propensity_model = LightGBMPropensityModel(
        params={**lightgbm.params, **tuned.get("propensity", {})},
        early_stopping_rounds=lightgbm.patience("propensity"),
        blend_rfm=lightgbm.blend_rfm,
        **common,
    ).fit(
        X["train"],
        buy_y["train"],
        X_val=X["validation"],
        y_val=buy_y["validation"],
        sample_weight=train_weight,
    )
    timings["propensity_model"] = time.perf_counter() - clock
    say("baselines and evaluation")
    clock = time.perf_counter()
    rules_model = RulesStageModel().fit(X["train"])
    # the blend's RFM line is the baseline itself (the same rows, weights and seed)
    rfm_model = propensity_model.rfm_ or RfmPropensityModel(seed=settings.seed).fit(
        X["train"], buy_y["train"], sample_weight=train_weight
    )
    evaluation = evaluate_on(
        X["test"],
        stage_y["test"],
        buy_y["test"],
        stage_model=stage_model,
        propensity_model=propensity_model,
        rules_model=rules_model,
        rfm_model=rfm_model,
    )
    metrics = evaluate(evaluation)
    # the baseline's own probabilities, row by row: the first promotion (no champion yet)
    # compares the model with them on the same draws of rows, not with a logged AUC-PR
    test_set = test_set.with_columns(
        pl.Series(RFM_PROPENSITY, evaluation.propensity["rfm_logistic"], dtype=pl.Float64)
    )
    timings["evaluation"] = time.perf_counter() - clock
    return TrainingResult(
        stage_model=stage_model,
        propensity_model=propensity_model,
        rules_model=rules_model,
        rfm_model=rfm_model,
        feature_names=names,
        split=split,
        test_set=test_set,
        evaluation=evaluation,
        metrics=metrics,
        data_summary={
            **split.describe(),
            **{f"{k}_rows": v["rows"] for k, v in counts.items() if k != "minimums"},
            **{f"{k}_positives": v["positives"] for k, v in counts.items() if k != "minimums"},
            "label_source": label_source,
            "horizon_days": settings.horizon_days,
            "snapshot_rows_built": sampler.rows_built,
            # listed contacts at snapshots before their first event: not rows
            "rows_before_first_event": frame_counts["rows_before_first_event"],
            # provided positives and stages without a date: set aside, never a label
            "labels_without_date": frame_counts.get("labels_without_date", 0),
            # contacts of the provided labels that are no row at any snapshot
            "labelled_contacts_without_rows": frame_counts.get("labelled_contacts_without_rows", 0),
            # observe_until: the events at or after it, not trained on
            "observed_until": None if cut is None else cut.isoformat(),
            "events_after_observed": later,
            "labels_after_observed": later_labels,  # provided labels dated at or after it
            "dormant_sample_rates": dict(sampler.rates),  # empty: nothing was sampled
            "active_sample_rates": dict(sampler.active_rates),
            "validation_sample_rates": dict(sampler.validation_rates),
        },
        label_source=label_source,
        tuned_params=tuned,
        timings=timings,
        date_attributes=[
            name for name in date_attributes(contacts, spec) if f"days_since_{name}" in names
        ],
    )


def summary_lines(result: TrainingResult, settings: TrainingSettings) -> list[str]:
    """What a training run trained and tested on, and what it left out, in the sentences
    `funnelcast train` and the retraining notebook print (the notebook showed only the raw
    ``data_summary``, and none of what was left out: notebook review)."""
    summary = result.data_summary
    lines = [
        f"Trained on {summary['train_rows']:,} rows ({summary['train_snapshots']} snapshots "
        f"{summary['train_from']}..{summary['train_to']}), validated on "
        f"{summary['validation_from']}..{summary['validation_to']}, tested on "
        f"{summary['test_rows']:,} rows ({summary['test_from']}..{summary['test_to']}); "
        f"labels: {result.label_source}, {settings.horizon_days}-day horizon."
    ]
    if summary.get("observed_until"):
        lines.append(
            f"Observed the events before {settings.observe_until} (observe_until): "
            f"{summary['events_after_observed']:,} later events"
            + (
                f" and {summary['labels_after_observed']:,} later-dated provided labels"
                if summary.get("labels_after_observed")
                else ""
            )
            + " were not trained on."
        )
    if summary.get("rows_before_first_event"):
        lines.append(
            f"Left out {summary['rows_before_first_event']:,} rows of listed contacts at "
            "snapshots before their first event (nobody knew them then; counted before "
            "contacts without consent are left out too)."
        )
    if summary.get("labels_without_date"):
        lines.append(
            f"Set aside {summary['labels_without_date']:,} provided labels without a "
            "label_date (a conversion or stage that cannot be placed in time)."
        )
    if summary.get("labelled_contacts_without_rows"):
        lines.append(
            f"{summary['labelled_contacts_without_rows']:,} contacts of the provided labels "
            "are no row at any snapshot (no events before it, no marketing consent, or "
            "labelled only outside every horizon): their labels were not trained on."
        )
    return lines


@dataclass(frozen=True)
class MinimumData:
    """An ``InsufficientDataError``'s report in words: the snapshots that fit the data (None
    when the report has none), each split's rows, buyers and stages, and the minimums."""

    fitting: str | None
    parts: Sequence[tuple[str, str, str, str]]  # (split, rows, buyers, stages)
    minimums: str


def minimum_data(report: dict[str, Any]) -> MinimumData:
    """The minimum-data report as `funnelcast train` and the notebook show it."""
    fitting = None
    if "snapshots" in report:
        fitting = f"Snapshots that fit the data: {', '.join(report['snapshots']) or 'none'}."
    parts = [
        (
            name,
            f"{report[name]['rows']:,}",
            f"{report[name]['positives']:,}",
            ", ".join(f"{k} {v:,}" for k, v in report[name]["stages"].items()),
        )
        for name in ("train", "validation", "test")
        if name in report
    ]
    listed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["minimums"].items())
    # the snapshots' minimum is the split's, not the `snapshots:` setting (review: "snapshots
    # 33" read as a setting that said 12)
    split = " (an out-of-time split with this horizon)" if "snapshots" in report else ""
    return MinimumData(fitting, parts, f"Minimums: {listed}{split}.")


def number_contacts(contact_ids: pl.Series, *, seed: int) -> pl.Series:
    """Each row's contact as a number from 0 to the contacts less one, the same for every row
    of one contact (``CONTACT_GROUP``). The numbers are a random permutation drawn from
    ``seed``, not a function of the ids: without the seed, a number says nothing of whose
    rows they are, only that they are one contact's."""
    codes = contact_ids.rank("dense").cast(pl.Int64).to_numpy() - 1
    count = int(codes.max()) + 1 if len(codes) else 0
    numbers = np.random.default_rng(seed).permutation(count)
    return pl.Series(CONTACT_GROUP, numbers[codes], dtype=pl.UInt32)


def evaluate_on(
    X: pd.DataFrame,
    stage_y: np.ndarray,
    buy_y: np.ndarray,
    *,
    stage_model: LightGBMStageModel,
    propensity_model: LightGBMPropensityModel,
    rules_model: RulesStageModel,
    rfm_model: RfmPropensityModel | None,
) -> EvaluationInputs:
    """The models side by side on the same rows."""
    propensity = {"lightgbm": propensity_model.predict_proba(X)}
    if rfm_model is not None:
        propensity["rfm_logistic"] = rfm_model.predict_proba(X)
    return EvaluationInputs(
        stage_true=np.asarray(stage_y, dtype=str),
        stage_pred={"rules": rules_model.predict(X), "lightgbm": stage_model.predict(X)},
        purchase_true=np.asarray(buy_y, dtype=bool),
        propensity=propensity,
        feature_importance=stage_model.feature_importance(),
    )
