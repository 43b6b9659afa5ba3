"""The registry: loading a model by alias or version, and the promotion gate.

A challenger becomes ``champion`` only when it beats the champion on the *same* out-of-time
test window: the challenger's own test snapshots (logged with its run, without contact ids)
are scored by both, and the challenger must be better on stage macro-F1 or on purchase
AUC-PR, and worse on neither beyond noise: a shortfall refuses only when the paired
bootstrap's 95 % interval of the difference (``training.bootstrap``, the test window's
contacts resampled) lies wholly below 0. Without a champion the bar is the rules (stage) and
the RFM baseline (propensity) on that window, so a model that cannot beat the rules is never
served. ``force`` skips the gate and is recorded as a tag.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.errors import InputError
from features.io import interrupts_held, terminate_like_interrupt
from features.spec import redefined_features
from training.bootstrap import Interval, Predictions, paired_intervals
from training.evaluation import propensity_metrics, stage_metrics
from training.pipeline import CONTACT_GROUP, PURCHASE_LABEL, RFM_PROPENSITY, STAGE_LABEL
from training.pyfunc import FunnelcastModel
from training.settings import DEFAULT_GATE_RESAMPLES
from training.tracking import TEST_SET_ARTIFACT, shown_uri


class RegistryError(InputError):
    """The registry does not have what was asked for."""


class DamagedModelError(RegistryError):
    """A model whose files are damaged or missing, so it cannot be loaded: never replaced by
    the rules fallback, which stands in for a model that is not there. ``problem`` is what
    failed, without the fix (which depends on the command)."""

    def __init__(self, what: str, problem: str, fix: str) -> None:
        self.what, self.problem = what, problem
        super().__init__(
            f"{what} cannot be loaded: its model files are damaged or missing, or another "
            f"version of the code wrote them ({problem}); {fix}"
        )


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str


def resolve(
    name: str,
    *,
    alias: str | None = None,
    version: str | None = None,
    options: str = "--version N, --alias NAME",
) -> ModelRef:
    """A registered model version by alias or number (default: the latest version). A store
    that cannot be used or reached is a ``RegistryError`` saying so, not a missing model.
    ``options``: how the command asks for a version, as a missing one's error tells."""
    try:
        client = MlflowClient()
    except MlflowException as exc:  # a file store (refused by MLflow 3), an unknown scheme
        raise RegistryError(
            f"the MLflow tracking URI {shown_uri(mlflow.get_tracking_uri())} cannot hold the "
            f"registry ({shown_uri(_first_line(exc))}); give a SQLite store, e.g. "
            "sqlite:///mlruns/mlflow.db, or an MLflow server's http(s) address"
        ) from exc
    try:
        if version is not None:
            found = client.get_model_version(name, version)
        elif alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        else:
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise RegistryError(
                    f"model '{name}' has no version in "
                    f"{shown_uri(mlflow.get_tracking_uri())}; "
                    + _what_there_is(client, name, options)
                )
            found = max(versions, key=lambda v: int(v.version))
    except MlflowException as exc:
        # no such model, version or alias (a missing alias is an invalid parameter to
        # MLflow); anything else is a registry that could not answer
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(
                f"the MLflow registry at {shown_uri(mlflow.get_tracking_uri())} could not be read "
                f"({shown_uri(_first_line(exc))}); check that it is running and reachable"
            ) from exc
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise RegistryError(
            f"model '{name}' has no {what} in {shown_uri(mlflow.get_tracking_uri())}; "
            + _what_there_is(client, name, options)
        ) from exc
    return ModelRef(name=name, version=str(found.version), run_id=str(found.run_id))


def _what_there_is(client: MlflowClient, name: str, options: str) -> str:
    """The versions that are registered, and what to do with them: "train one" alone was
    wrong when versions exist but none is the champion (a gate that refused to promote)."""
    try:
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        numbers = []
    if not numbers:
        try:  # the names with a version (e.g. `run --source olist` registers funnelcast-olist)
            others = sorted({str(v.name) for v in client.search_model_versions(max_results=1000)})
        except MlflowException:
            others = []
        if others:
            shown = ", ".join(others[:20]) + (
                f" and {len(others) - 20} more" if len(others) > 20 else ""
            )
            return (
                "no version is registered under this name; the store's registered models are "
                f"{shown}: give one with --model-name, or train one"
            )
        return "no version is registered: train one with `funnelcast train`"
    shown = ", ".join(map(str, numbers[-10:]))
    try:  # a mistyped alias shows beside the ones there are
        aliases = dict(client.get_registered_model(name).aliases)
    except MlflowException:
        aliases = {}
    named = (
        "its aliases are "
        + ", ".join(f"{alias} (version {aliases[alias]})" for alias in sorted(aliases)[:10])
        if aliases
        else "it has no alias yet"
    )
    return (
        f"its registered versions are {'..., ' if len(numbers) > 10 else ''}{shown} and "
        f"{named}: name one ({options}) or make one the champion "
        "(`funnelcast promote --version N`)"
    )


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:200] + "..."


def load_model(ref: ModelRef) -> FunnelcastModel:
    """The FunnelcastModel of a registered version, through MLflow's pyfunc loader."""
    return load_funnelcast_model(
        f"models:/{ref.name}/{ref.version}",
        f"version {ref.version} of '{ref.name}'",
        fix="train and register it again, or name another version (--version N)",
    )


def load_funnelcast_model(where: str, what: str, *, fix: str) -> FunnelcastModel:
    """The FunnelcastModel at ``where`` (a models:/ URI or an MLflow model folder), through
    MLflow's pyfunc loader. Files that cannot be loaded (a pickle cut short or overwritten, a
    file removed from the store) are a ``RegistryError`` naming ``what`` and the ``fix``, one
    line: the weekly job's scheduler saw a 70-line traceback and exit 1, as for a bug
    (scoring review). A registry that cannot be reached stays MLflow's error."""
    try:
        loaded = mlflow.pyfunc.load_model(where)
    except MlflowException as exc:
        # a file the store does not hold (MLmodel removed, a folder moved away); any other
        # MLflow error is the store's (an outage), said as such by the command
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise DamagedModelError(what, f"{type(exc).__name__}: {_first_line(exc)}", fix) from exc
    except (InputError, MemoryError):
        raise  # out of memory: this machine's, not the files'
    except Exception as exc:  # unpickling runs whatever the files hold: any error is theirs
        raise DamagedModelError(what, f"{type(exc).__name__}: {_first_line(exc)}", fix) from exc
    model = loaded.unwrap_python_model()
    if not isinstance(model, FunnelcastModel):
        raise RegistryError(f"{what} is not a funnelcast model")
    return model


def load_test_set(ref: ModelRef) -> pl.DataFrame:
    """The out-of-time test snapshots a version was evaluated on (features and labels)."""
    _run_of(ref)  # a run the store no longer holds is said as such
    # into a folder of ours: without dst_path MLflow makes a temporary folder it never
    # removes, and each promote and evaluate left a copy of the test set in it (install review)
    with tempfile.TemporaryDirectory(prefix="funnelcast-test-set-") as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=ref.run_id, artifact_path=TEST_SET_ARTIFACT, dst_path=folder
        )
        return pl.read_parquet(path)


def _run_of(ref: ModelRef) -> Run:
    """The training run of a version; one the store no longer holds (deleted, then removed by
    `mlflow gc`) is a ``RegistryError`` saying so: MLflow's "Run ... not found" was taken for
    a store that could not be reached."""
    try:
        return MlflowClient().get_run(ref.run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RegistryError(
            f"version {ref.version} of '{ref.name}' was trained in run {ref.run_id}, which "
            f"{shown_uri(mlflow.get_tracking_uri())} no longer holds (deleted and removed by "
            "`mlflow gc`): its test set and metrics are gone with it; train again, or name "
            "another version with --version N"
        ) from exc


def predict(model: FunnelcastModel, test_set: pl.DataFrame) -> Predictions:
    """A model's stage and propensity for each test row (it reads its own features: the
    test set's other columns, the labels and the gate's, are left alone)."""
    predicted = model.predict_frame(test_set, reasons=False)
    return Predictions(
        stage=predicted["stage"].cast(pl.String).to_numpy(),
        propensity=predicted["propensity"].cast(pl.Float64).to_numpy(),
    )


def baseline_predictions(test_set: pl.DataFrame) -> Predictions:
    """The rules' stage and the RFM baseline's propensity for each test row; no propensities
    for a test set logged before they were (``RFM_PROPENSITY``)."""
    rfm = test_set[RFM_PROPENSITY].to_numpy() if RFM_PROPENSITY in test_set.columns else None
    return Predictions(stage=test_set["rules_stage"].cast(pl.String).to_numpy(), propensity=rfm)


def scores_of(predictions: Predictions, test_set: pl.DataFrame) -> dict[str, float]:
    """Stage macro-F1 (both ways) and, given propensities, purchase AUC-PR / AUC-ROC."""
    stages = stage_metrics(test_set[STAGE_LABEL].cast(pl.String).to_numpy(), predictions.stage)
    scores = {
        "macro_f1": float(stages["macro_f1"]),
        "macro_f1_labelled": float(stages["macro_f1_labelled"]),
    }
    if predictions.propensity is not None:
        buys = propensity_metrics(test_set[PURCHASE_LABEL].to_numpy(), predictions.propensity)
        scores |= {"auc_pr": float(buys["auc_pr"]), "auc_roc": float(buys["auc_roc"])}
    return scores


def score(model: FunnelcastModel, test_set: pl.DataFrame) -> dict[str, float]:
    """Stage macro-F1 and purchase AUC-PR / AUC-ROC of a model on a test set."""
    return scores_of(predict(model, test_set), test_set)


def baseline_scores(ref: ModelRef, test_set: pl.DataFrame) -> dict[str, float]:
    """The rules' macro-F1 and the RFM baseline's AUC-PR on the test set: from its per-row
    propensities, or, for a run that logged none, the AUC-PR the run logged on that window."""
    scores = scores_of(baseline_predictions(test_set), test_set)
    if "auc_pr" not in scores:
        logged = _run_of(ref).data.metrics
        scores["auc_pr"] = float(logged.get("test.propensity.rfm_logistic.auc_pr", float("nan")))
    scores.pop("auc_roc", None)
    return scores


def gate_intervals(
    test_set: pl.DataFrame,
    challenger: Predictions,
    champion: Predictions,
    *,
    resamples: int,
    seed: int,
) -> tuple[dict[str, Interval], str]:
    """The paired bootstrap's 95 % intervals of challenger - champion on the test rows
    (``training.bootstrap``) and one sentence saying how they were drawn: by contact
    (``CONTACT_GROUP``), or row by row for a test set logged before contacts were numbered;
    AUC-PR has none when the champion has no per-row propensities (the RFM baseline of an
    older run), and is then compared point to point. ``resamples`` 0: no intervals, the
    strict point comparison."""
    if resamples == 0:
        return {}, "the point scores compared strictly (gate_resamples 0: no noise allowed)"
    grouped = CONTACT_GROUP in test_set.columns
    groups = test_set[CONTACT_GROUP].to_numpy() if grouped else None
    intervals = paired_intervals(
        test_set[STAGE_LABEL].cast(pl.String).to_numpy(),
        test_set[PURCHASE_LABEL].to_numpy(),
        challenger,
        champion,
        groups=groups,
        resamples=resamples,
        seed=seed,
    )
    drawn = (
        f"its {test_set[CONTACT_GROUP].n_unique():,} contacts"
        if grouped
        else (
            f"its {test_set.height:,} rows one by one (the run logged its test set before "
            "contacts were numbered, so a contact's weeks are drawn apart and the intervals "
            "are somewhat narrower than they should be)"
        )
    )
    method = f"a paired bootstrap of {resamples} resamples of the test window, drawing {drawn}"
    if champion.propensity is None:
        method += (
            "; purchase AUC-PR compared point to point (the run logged no per-row RFM "
            "propensities: trained before they were)"
        )
    return intervals, method


@dataclass
class Promotion:
    """What the gate decided and why."""

    promoted: bool
    challenger: ModelRef
    champion: ModelRef | None  # None: compared with the rules and the RFM baseline
    challenger_scores: dict[str, float]
    champion_scores: dict[str, float]
    forced: bool = False
    # refusals first, then shortfalls within noise (not held against the challenger)
    reasons: list[str] = field(default_factory=list)
    # the 95 % interval of challenger - champion per gate metric (none: compared strictly)
    intervals: dict[str, Interval] = field(default_factory=dict)
    method: str = ""  # how the intervals were drawn, in a sentence (gate_intervals)
    judged: bool = True  # False: the champion could not be judged (only --force promotes)

    @property
    def deltas(self) -> dict[str, float]:
        return {
            k: self.challenger_scores[k] - self.champion_scores[k]
            for k, _ in GATE_METRICS
            if k in self.champion_scores and k in self.challenger_scores
        }


# the gate: no metric worse beyond noise, better on one. Stage macro-F1 both ways: the standard
# one counts a stage only one of the two calls as an F1 of 0 in its mean alone, and so can
# favour a model for the stages the other calls that the labels never hold (a review); over
# the labels' stages both are averaged alike
GATE_METRICS = (
    ("macro_f1", "stage macro-F1"),
    ("macro_f1_labelled", "stage macro-F1 over the labels' stages"),
    ("auc_pr", "purchase AUC-PR"),
)


def beats(
    challenger: dict[str, float],
    champion: dict[str, float],
    intervals: Mapping[str, Interval] | None = None,
) -> tuple[bool, list[str]]:
    """No gate metric (``GATE_METRICS``) worse and one better. A metric below the champion's
    refuses when it has no interval (the strict comparison), or when its interval of the
    difference lies wholly below 0 (worse beyond noise); a shortfall whose interval reaches
    0 is a note, not a refusal. Better is a point score above the champion's: equal on every
    metric refuses. NaN or absence on the champion's side (no baseline) does not block, NaN
    on the challenger's alone does. The reasons: the refusals, then the notes."""
    refusals: list[str] = []
    notes: list[str] = []
    better = False
    for key, label in GATE_METRICS:
        if key not in challenger:
            continue
        ours, theirs = challenger[key], champion.get(key, float("nan"))
        if np.isnan(theirs):
            continue
        interval = (intervals or {}).get(key)
        if np.isnan(ours):  # neither below nor above a number: it would pass unjudged
            refusals.append(f"{label} could not be computed (NaN), against {theirs:.4f}")
        elif ours < theirs:
            shortfall = f"{label} {ours:.4f} is {theirs - ours:.2g} below {theirs:.4f}"
            if interval is None:
                refusals.append(shortfall)
            elif interval.wholly_below_zero:
                refusals.append(
                    f"{shortfall}, beyond noise (95 % interval of the difference "
                    f"{_shown(interval)}, wholly below 0)"
                )
            else:
                notes.append(
                    f"{shortfall}, within noise (95 % interval of the difference "
                    f"{_shown(interval)}): not held against it"
                )
        elif ours > theirs:
            better = True
    if not refusals and not better:
        refusals.append(
            "it is better on no metric (below within noise on the others)"
            if notes
            else "it is not better on any metric (equal scores)"
        )
    return not refusals, refusals + notes


def _shown(interval: Interval) -> str:
    return f"{interval.low:+.4f} to {interval.high:+.4f}"


def incomparable(challenger: ModelRef, champion: ModelRef) -> list[str]:
    """Why the champion cannot be judged on the challenger's test window, from what each run
    logged: a champion whose training or validation labels reach into that window has seen
    its weeks (early stopping, calibration and decision weights read the validation weeks),
    and one with another label horizon, label source or ``rules:`` settings predicts something
    else. Empty: they compare. A champion whose run logged none of this (older versions) or is
    gone is not judged; of the rules settings, those both runs logged are compared (a setting
    added later is absent from older runs, which are judged on the others)."""
    ours = _run_of(challenger).data.params
    try:
        theirs = _run_of(champion).data.params
    except (MlflowException, RegistryError):  # deleted: nothing says what it saw, as for old
        return []
    reasons = []
    # the events' first and last days ("YYYY-MM-DD HH:MM:SS" texts; "None": no events). A
    # champion whose events all come after the challenger's last day was trained on other
    # data (make demo's simulated weeks, then a 1998 data set), not on an earlier export of
    # these; a champion of earlier data (a rolling export retrained) is judged as ever
    days = [
        run.get(key, "")[:10]
        for run in (theirs, ours)
        for key in ("data.events_from", "data.events_to")
    ]
    other_data = all(day[:4].isdigit() for day in days) and days[0] > days[3]
    if other_data:
        reasons.append(
            f"it was trained on later data than all of the challenger's (events of "
            f"{days[0]}..{days[1]}; the challenger's are of {days[2]}..{days[3]}): another "
            "data set, or a newer export of this one"
        )
    for key, what, unit in (
        ("horizon_days", "label horizon", " days"),
        ("label_source", "labels", ""),
    ):
        if key in ours and key in theirs and ours[key] != theirs[key]:
            reasons.append(
                f"its {what} ({theirs[key]}{unit}) is not the challenger's ({ours[key]}{unit}), "
                "so its scores mean something else"
            )
    # the rules' settings define the revealed stage labels, the rules baseline and its
    # `rules_stage` feature: a champion of other rules was trained to answer another question
    # and, scored on the challenger's labels, loses or wins for that alone
    rules = sorted(k for k in ours.keys() & theirs.keys() if k.startswith("rules."))
    if differ := [k for k in rules if ours[k] != theirs[k]]:

        def shown(params: dict[str, str]) -> str:
            return ", ".join(f"{k.removeprefix('rules.')} {params[k]}" for k in differ)

        reasons.append(
            f"its rules settings ({shown(theirs)}) are not the challenger's ({shown(ours)}): "
            "they define the revealed stage labels, the rules baseline and the rules_stage "
            "feature, so its scores mean something else"
        )
    last = [theirs[k] for k in ("data.train_to", "data.validation_to") if k in theirs]
    if last and "horizon_days" in theirs and "data.test_from" in ours and not other_data:
        seen = dt.date.fromisoformat(max(last)) + dt.timedelta(days=int(theirs["horizon_days"]))
        if seen > dt.date.fromisoformat(ours["data.test_from"]):
            reason = (
                f"its training and validation labels reach {seen} ({max(last)} plus its "
                f"{theirs['horizon_days']}-day horizon), past the start of the challenger's "
                f"test window ({ours['data.test_from']}): it has seen those weeks"
            )
            cuts = [_cut(run) for run in (ours, theirs)]
            if cuts[0] is not None and (cuts[1] is None or cuts[0] < cuts[1]):
                # a backtest, or a log observed up to a day, beside a champion that saw more
                reason += (
                    f" (the challenger observed its data only up to {cuts[0]}, its "
                    f"observe_until; the champion {'up to ' + cuts[1] if cuts[1] else 'to its end'}"
                    "): a model of an earlier cut is kept under its own --model-name"
                )
            reasons.append(reason)
    return reasons


def require_finished(ref: ModelRef) -> None:
    """A ``RegistryError`` unless the version's training run ended FINISHED. A version is
    registered before its run ends, so a Ctrl-C (or a failure, or a killed process) in between
    leaves a READY version of a KILLED (FAILED, RUNNING) run, which `promote` of the latest
    version took up silently. ``force`` does not override this: it overrides the gate's verdict
    on the comparison with the champion, and here no training is known to have completed; a
    RUNNING one may also be a training still under way."""
    status = str(_run_of(ref).info.status)
    if status == "FINISHED":
        return
    fix = (
        f"train again, or delete version {ref.version} (in the MLflow UI, or with "
        "MlflowClient().delete_model_version) and name another with --version N"
    )
    if status == "RUNNING":  # or a process killed outright, which ends nothing
        fix = f"if that training is still under way, promote once it ends; otherwise {fix}"
    raise RegistryError(
        f"version {ref.version} of '{ref.name}' is from a training run that did not finish "
        f"(run {ref.run_id} is {status}), so nothing says it was trained and logged whole; {fix}"
    )


def _cut(params: dict[str, str]) -> str | None:
    """A run's ``observe_until`` param (YYYY-MM-DD), None when it observed all its data."""
    cut = params.get("observe_until")
    return None if cut in (None, "None", "") else cut


def promote(
    name: str,
    *,
    alias: str = "champion",
    version: str | None = None,
    force: bool = False,
) -> Promotion:
    """Move ``alias`` to the challenger (default: the latest version) if it beats the champion
    on the challenger's test window; ``force`` moves it anyway and records that. A challenger
    whose training run did not finish is refused, ``force`` or not (``require_finished``)."""
    challenger = resolve(name, version=version, options="--version N")  # promote has no --alias
    require_finished(challenger)
    try:
        champion: ModelRef | None = resolve(name, alias=alias)
    except RegistryError:
        champion = None
    if champion is not None and champion.version == challenger.version:
        raise RegistryError(
            f"version {challenger.version} is already '{alias}'; train a new version first"
        )
    unscorable: str | None = None
    if champion is not None and (why := incomparable(challenger, champion)):
        unscorable = (
            f"the champion (version {champion.version}) cannot be judged on the challenger's "
            f"test window: {'; and '.join(why)}"
        )
        if not force:
            raise RegistryError(
                f"{unscorable}. Train the challenger on data at least as recent as the "
                "champion's, with the same horizon, labels and rules settings; register a model "
                "of other data under its own name (--model-name); or use --force to replace the "
                "champion anyway (recorded)"
            )
    test_set = load_test_set(challenger)
    challenger_model = load_model(challenger)
    ours = predict(challenger_model, test_set)
    challenger_scores = scores_of(ours, test_set)
    theirs: Predictions | None = None
    champion_model = None
    if champion is not None and unscorable is None:
        try:
            champion_model = load_model(champion)
        except DamagedModelError as exc:
            unscorable = (
                f"the champion (version {champion.version}) cannot be loaded: its model files "
                f"are damaged or missing, or another version of the code wrote them "
                f"({exc.problem})"
            )
            if not force:
                raise RegistryError(
                    f"{unscorable}; use --force to replace it (recorded), or train and register "
                    "it again"
                ) from exc
    if champion_model is not None and champion is not None:
        # features of one name that count other things: the champion would be scored on
        # values it was not trained on, and lose (or win) for that alone (retraining review)
        redefined = redefined_features(challenger_model.spec, champion_model.spec)
        if redefined:
            shown = ", ".join(redefined[:5]) + (", ..." if len(redefined) > 5 else "")
            unscorable = (
                f"the champion (version {champion.version}) cannot be judged on the "
                f"challenger's test window: {len(redefined)} of the features it reads are "
                f"defined otherwise in the challenger's feature spec ({shown}), so it would read "
                "other values under their names"
            )
            if not force:
                raise RegistryError(
                    f"{unscorable}. Judge a spec change by `funnelcast evaluate` of each version "
                    "on its own test window, or use --force to replace the champion (recorded)"
                )
            champion_model = None
    if champion is None:
        theirs = baseline_predictions(test_set)
        champion_scores = baseline_scores(challenger, test_set)
    elif champion_model is None:
        champion_scores = {}  # nothing fair to compare: --force replaces it, and says why
    elif lacking := [n for n in champion_model.feature_names if n not in test_set.columns]:
        # a champion of a spec with features the challenger's has not: the pyfunc's own
        # advice ("build features with the model's spec") said nothing a promote could do
        shown = ", ".join(lacking[:5]) + (", ..." if len(lacking) > 5 else "")
        unscorable = (
            f"the champion (version {champion.version}) cannot score the challenger's test "
            f"window: it reads {len(lacking)} feature(s) the challenger's feature spec does "
            f"not make ({shown})"
        )
        if not force:
            raise RegistryError(
                f"{unscorable}. Judge a spec change by `funnelcast evaluate` of each version on "
                "its own test window, register a model of another spec under its own name "
                "(--model-name), or use --force to replace the champion (recorded)"
            )
        champion_scores = {}  # nothing to compare: --force replaces it, and says why
    else:
        try:
            theirs = predict(champion_model, test_set)
            champion_scores = scores_of(theirs, test_set)
        except InputError as exc:
            unscorable = (
                f"the champion (version {champion.version}) cannot score the challenger's test "
                f"window: {exc}. Its features differ"
            )
            if not force:
                raise RegistryError(f"{unscorable}; use --force to replace it anyway") from exc
            champion_scores = {}  # nothing to compare: --force replaces it, and says why
    intervals: dict[str, Interval] = {}
    method = ""
    resamples, seed = _gate_settings(challenger)
    if unscorable is not None:
        ok, reasons = False, [unscorable]
    else:
        assert theirs is not None  # the champion scored, or the baselines read
        intervals, method = gate_intervals(test_set, ours, theirs, resamples=resamples, seed=seed)
        ok, reasons = beats(challenger_scores, champion_scores, intervals)
    decision = Promotion(
        promoted=ok or force,
        challenger=challenger,
        champion=champion,
        challenger_scores=challenger_scores,
        champion_scores=champion_scores,
        forced=force and not ok,
        reasons=reasons,
        intervals=intervals,
        method=method,
        judged=unscorable is None,
    )
    if decision.promoted:
        _record_and_move(name, alias, decision, challenger_scores, resamples, test_set)
    return decision


def _record_and_move(
    name: str,
    alias: str,
    decision: Promotion,
    challenger_scores: Mapping[str, float],
    resamples: int,
    test_set: pl.DataFrame,
) -> None:
    """Record the decision on the challenger's version, then move the alias to it: the tags
    first, so a champion always carries them (``forced`` above all), and the whole under
    Ctrl-C and SIGTERM held, so a promotion stopped midway is not left a champion without its
    record (a concurrency review stopped one there, and the forced tag was lost)."""
    challenger, champion, intervals = decision.challenger, decision.champion, decision.intervals
    client = MlflowClient()
    with terminate_like_interrupt(), interrupts_held():
        # another promotion may have moved the alias while this one compared: then this
        # decision was about a champion that is gone
        try:
            now: str | None = resolve(name, alias=alias).version
        except RegistryError:
            now = None
        if now != (champion.version if champion else None):
            raise RegistryError(
                f"'{alias}' moved to version {now} while version {challenger.version} was "
                f"compared with {champion.version if champion else 'the rules'}; run promote "
                "again to compare it with the new champion"
            )
        tags = {
            "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "promoted_over": champion.version if champion else "rules",
            "forced": str(decision.forced).lower(),
            **{f"gate.{k}": f"{v:.6f}" for k, v in challenger_scores.items()},
            # how it was judged: the resamples (0: strictly), what was drawn, and each
            # metric's 95 % interval of challenger - champion; or that it was not (a forced
            # promotion over a champion that could not be judged was tagged strict, review)
            **(
                {
                    "gate.resamples": str(resamples if intervals else 0),
                    "gate.resampled": _resampled(test_set) if intervals else "none",
                }
                if decision.judged
                else {"gate.judged": "false"}
            ),
            **{f"gate.{k}.low": f"{v.low:.6f}" for k, v in intervals.items()},
            **{f"gate.{k}.high": f"{v.high:.6f}" for k, v in intervals.items()},
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, challenger.version, key, value)
        # an earlier promotion's figures this one has none of (a forced one has no
        # intervals): left, the record claimed no resampling beside intervals (review)
        earlier = client.get_model_version(name, challenger.version).tags
        for key in earlier:
            if key.startswith("gate.") and key not in tags:
                client.delete_model_version_tag(name, challenger.version, key)
        client.set_registered_model_alias(name, alias, challenger.version)


def _gate_settings(ref: ModelRef) -> tuple[int, int]:
    """The resamples and the seed of the gate's bootstrap: what the version's run logged
    (``registry.gate_resamples``, ``seed``); a run older than the setting, the default."""
    params = _run_of(ref).data.params
    resamples = int(params.get("registry.gate_resamples", DEFAULT_GATE_RESAMPLES))
    return resamples, int(params.get("seed", 0))


def _resampled(test_set: pl.DataFrame) -> str:
    return "contacts" if CONTACT_GROUP in test_set.columns else "rows"


def run_metrics(ref: ModelRef) -> dict[str, Any]:
    """The test metrics a version's run logged (for `funnelcast evaluate`)."""
    return dict(_run_of(ref).data.metrics)
