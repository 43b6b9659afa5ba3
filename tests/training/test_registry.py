"""Training through MLflow: the logged run, the pyfunc model round trip through the registry by
alias, and the promotion gate both ways. MLflow's store is SQLite in a temporary folder."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from features.consent import restrict_to_consented
from features.engine import build_contact_features
from features.settings import RulesSettings, load_rules_settings
from features.simulator import load_simulator_settings, simulate
from features.spec import load_feature_spec, shipped_spec_text
from features.vocabulary import STAGE_CTA, STAGES
from training.bootstrap import Predictions
from training.evaluation import propensity_metrics, stage_metrics
from training.frame import model_matrix
from training.pipeline import CONTACT_GROUP, RFM_PROPENSITY, TrainingResult, train_models
from training.pyfunc import OUTPUT_COLUMNS
from training.registry import beats, incomparable, load_model, promote, resolve, score
from training.settings import TrainingSettings, load_training_settings
from training.tracking import (
    configure_tracking,
    data_fingerprint,
    git_tags,
    log_training,
    training_run,
)

pytestmark = pytest.mark.slow
NAME = "funnelcast"


@pytest.fixture(scope="module")
def simulation() -> object:
    return simulate(
        load_simulator_settings(), contacts=6000, days=120, seed=11, start=dt.date(2026, 1, 1)
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlruns")
    uri = f"sqlite:///{folder}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    yield configure_tracking(uri)
    mlflow.set_tracking_uri(previous)


def _train(sim: object, settings: TrainingSettings) -> tuple[TrainingResult, str]:
    spec, rules = load_feature_spec(), load_rules_settings()
    result = train_models(sim.events, sim.contacts, spec=spec, rules=rules, settings=settings)  # type: ignore[attr-defined]
    with training_run():
        version = log_training(
            result,
            spec=spec,
            spec_text=shipped_spec_text(),
            rules=rules,
            settings=settings,
            fingerprint=data_fingerprint(sim.events),  # type: ignore[attr-defined]
        )
    assert version is not None
    return result, version


def _setting_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Each setting's name as a run logs it (``lightgbm.class_weight_power``) and its value;
    the LightGBM parameters have their own names (``lightgbm.num_leaves``)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _setting_fields(value, f"{prefix}{name}.")
        elif name != "params":
            yield f"{prefix}{name}", value


def _weak() -> TrainingSettings:
    """A model that cannot learn: no leaf may hold fewer rows than there are, so every tree is
    a single leaf and every contact gets the same scores."""
    base = load_training_settings()
    lightgbm = base.lightgbm.model_copy(
        update={
            "num_boost_round": 2,
            "params": {**base.lightgbm.params, "min_data_in_leaf": 10**7},
        }
    )
    return base.model_copy(update={"lightgbm": lightgbm})


@pytest.fixture(scope="module")
def trained(simulation: object, store: str) -> dict[str, tuple[TrainingResult, str]]:
    return {
        "weak": _train(simulation, _weak()),
        "normal": _train(simulation, load_training_settings()),
    }


def test_a_training_run_logs_params_metrics_spec_and_report_without_contact_ids(
    trained: dict, simulation: object, tmp_path: Path
) -> None:
    _, version = trained["normal"]
    ref = resolve(NAME, version=version)
    run = MlflowClient().get_run(ref.run_id)
    assert run.data.params["horizon_days"] == "14"
    assert run.data.params["spec_fingerprint"] == load_feature_spec().fingerprint
    lightgbm = load_training_settings().lightgbm
    for model in ("stage", "propensity"):
        assert run.data.params[f"{model}.early_stopping_rounds"] == str(lightgbm.patience(model))
    result, _ = trained["normal"]
    assert run.data.params["propensity.blend_rfm"] == str(lightgbm.blend_rfm)
    weight = float(run.data.params["propensity.lightgbm_weight"])
    assert weight == result.propensity_model.lightgbm_weight_
    # the evaluation's RFM baseline is the blend's own line, not a second fit
    assert result.rfm_model is result.propensity_model.rfm_
    for key in (
        "test.stage.lightgbm.macro_f1",
        "test.stage.rules.macro_f1",
        "test.propensity.lightgbm.auc_pr",
        "test.propensity.rfm_logistic.auc_pr",
    ):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    # every setting, so the run can be redone from what it logged; the code and the libraries
    for key, value in _setting_fields(load_training_settings()):
        assert run.data.params[key] == str(value), key
    for key in ("validation_snapshots", "max_training_rows", "lightgbm.class_weight_power"):
        assert key in run.data.params
    assert run.data.params["lightgbm.num_leaves"] == str(lightgbm.params["num_leaves"])
    for package in ("lightgbm", "polars", "numpy", "pandas", "scikit-learn", "mlflow", "pyarrow"):
        assert run.data.tags[f"version.{package}"] == metadata.version(package)
    # tagged in a git checkout, and no tag (and no failure) in a copy outside one
    assert run.data.tags.get("funnelcast.git_commit") == git_tags().get("funnelcast.git_commit")
    artifacts = {a.path for a in MlflowClient().list_artifacts(ref.run_id, "evaluation")}
    assert "evaluation/test_set.parquet" in artifacts
    assert "evaluation/metrics.json" in artifacts
    # no contact identifier anywhere in the params or the test set
    ids = set(pl.from_arrow(simulation.contacts)["contact_id"].head(200).to_list())  # type: ignore[attr-defined]
    assert not ids & set(run.data.params.values())
    path = mlflow.artifacts.download_artifacts(
        run_id=ref.run_id, artifact_path="evaluation/test_set.parquet", dst_path=str(tmp_path)
    )  # into the test's folder: without one, MLflow leaves a folder in /tmp each run
    logged = pl.read_parquet(path)
    assert "contact_id" not in logged.columns
    # the gate's columns: a contact's number, one row per contact and week, as many numbers as
    # contacts (the number itself is a random one of this run: tests/training/test_bootstrap)
    assert logged.group_by(CONTACT_GROUP, "as_of").len()["len"].max() == 1
    assert logged[CONTACT_GROUP].n_unique() == logged[CONTACT_GROUP].max() + 1  # type: ignore[operator]
    assert logged[CONTACT_GROUP].n_unique() >= logged.group_by("as_of").len()["len"].max()  # type: ignore[operator]
    # the RFM baseline's propensities, whose AUC-PR is the one the run logged
    rfm = propensity_metrics(logged["purchase_label"].to_numpy(), logged[RFM_PROPENSITY].to_numpy())
    assert rfm["auc_pr"] == pytest.approx(run.data.metrics["test.propensity.rfm_logistic.auc_pr"])
    # neither disturbs the model's scoring of the test set: its logged scores, from this file
    scored = score(load_model(ref), logged)
    assert scored["macro_f1"] == pytest.approx(run.data.metrics["test.stage.lightgbm.macro_f1"])
    assert scored["auc_pr"] == pytest.approx(run.data.metrics["test.propensity.lightgbm.auc_pr"])
    # nor is a row's place its contact's: the rows are not in contact order (privacy review)
    first = logged["as_of"].min()
    features = build_contact_features(
        simulation.events,  # type: ignore[attr-defined]
        simulation.contacts,  # type: ignore[attr-defined]
        as_of=first,
        spec=load_feature_spec(),
        rules=load_rules_settings(),
    )
    consented = restrict_to_consented(features, simulation.contacts).kept  # type: ignore[attr-defined]
    in_order = consented.sort("contact_id")["days_since_last_event"].cast(pl.Float32)
    week = logged.filter(pl.col("as_of") == first)["days_since_last_event"]
    assert week.sort().equals(in_order.sort())  # the same rows
    assert not week.equals(in_order)  # in another order


def test_the_registered_model_loads_by_alias_and_predicts_like_the_trained_one(
    trained: dict, simulation: object
) -> None:
    result, version = trained["normal"]
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "roundtrip", version)
    model = load_model(resolve(NAME, alias="roundtrip"))
    as_of = dt.datetime(2026, 4, 20, tzinfo=dt.UTC)
    features = build_contact_features(
        simulation.events,
        simulation.contacts,
        as_of=as_of,
        spec=load_feature_spec(),  # type: ignore[attr-defined]
    ).head(300)
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@roundtrip")
    out = loaded.predict(features.to_pandas())
    assert list(out.columns) == ["contact_id", "as_of", *OUTPUT_COLUMNS]
    probabilities = out[[f"p_{s}" for s in STAGES]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert set(out["stage"]) <= set(STAGES)
    assert ((out["propensity"] >= 0) & (out["propensity"] <= 1)).all()
    assert (out["cta"] == out["stage"].map(STAGE_CTA)).all()
    assert out["reason_1"].notna().any()
    # the same numbers as the models in memory
    direct = result.propensity_model.predict_proba(model_matrix(features, result.feature_names))
    assert np.allclose(out["propensity"].to_numpy(), direct)
    assert model.feature_names == result.feature_names


def test_the_gate_refuses_a_worse_challenger_and_says_by_how_much(trained: dict) -> None:
    _, weak = trained["weak"]
    _, normal = trained["normal"]
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)
    decision = promote(NAME, version=weak)
    assert not decision.promoted
    assert decision.champion is not None
    assert decision.champion.version == normal
    assert any("below" in reason for reason in decision.reasons)
    # a model of one leaf per tree is worse than a real one beyond noise, and it is said so
    assert any("beyond noise" in reason for reason in decision.reasons)
    assert any(interval.wholly_below_zero for interval in decision.intervals.values())
    assert min(decision.deltas.values()) < 0
    assert resolve(NAME, alias="champion").version == normal


def test_the_gate_promotes_a_better_challenger(trained: dict) -> None:
    _, weak = trained["weak"]
    _, normal = trained["normal"]
    MlflowClient().set_registered_model_alias(NAME, "champion", weak)
    decision = promote(NAME, version=normal)
    assert decision.promoted
    assert not decision.forced
    assert resolve(NAME, alias="champion").version == normal
    tags = MlflowClient().get_model_version(NAME, normal).tags
    assert tags["promoted_over"] == weak
    assert tags["forced"] == "false"


def test_force_promotes_a_loser_and_records_it(trained: dict) -> None:
    _, weak = trained["weak"]
    _, normal = trained["normal"]
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)
    decision = promote(NAME, version=weak, force=True)
    assert decision.promoted
    assert decision.forced
    assert MlflowClient().get_model_version(NAME, weak).tags["forced"] == "true"
    assert resolve(NAME, alias="champion").version == weak


def test_ctrl_c_while_a_promotion_is_recorded_leaves_it_whole_with_its_record(
    trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after the alias moved left a forced champion without its `forced` tag
    and the gate's (concurrency review): the record is written first, the alias moved last,
    and an interrupt waits until both are done."""
    import signal

    _, weak = trained["weak"]
    _, normal = trained["normal"]
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", normal)
    real_tag = MlflowClient.set_model_version_tag
    calls: list[str] = []

    def tag_then_ctrl_c(self: MlflowClient, name: str, version: str, key: str, value: str) -> None:
        real_tag(self, name, version, key, value)
        if not calls:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after the first tag
        calls.append(key)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", tag_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        promote(NAME, version=weak, force=True)
    assert resolve(NAME, alias="champion").version == weak
    tags = client.get_model_version(NAME, weak).tags
    assert tags["forced"] == "true"
    assert {"promoted_at", "promoted_over", "gate.resamples"} <= set(tags)
    assert len(calls) > 3


def _versions_of_two_specs(
    simulation: object, settings: TrainingSettings, text: str
) -> tuple[str, str]:
    """Two versions trained and logged with the same settings: one with the spec ``text``,
    then one with the shipped spec."""
    from features.spec import parse_feature_spec

    versions: list[str] = []
    for spec, spec_text in ((parse_feature_spec(text), text), (load_feature_spec(), None)):
        result = train_models(
            simulation.events,  # type: ignore[attr-defined]
            simulation.contacts,  # type: ignore[attr-defined]
            spec=spec,
            rules=load_rules_settings(),
            settings=settings,
        )
        with training_run():
            version = log_training(
                result,
                spec=spec,
                spec_text=spec_text or shipped_spec_text(),
                rules=load_rules_settings(),
                settings=settings,
                fingerprint=data_fingerprint(simulation.events),  # type: ignore[attr-defined]
            )
        assert version is not None
        versions.append(version)
    return versions[0], versions[1]


def test_force_replaces_a_champion_that_cannot_score_the_challengers_features(
    simulation: object, store: str
) -> None:
    """A champion trained with another spec (a feature added without Python, as the README
    shows) cannot score the challenger's test window: the gate says so and points to
    --force, which used to fail the same way."""
    import yaml

    from training.registry import RegistryError

    name = "funnelcast-respec"
    base = _weak()
    settings = base.model_copy(
        update={"registry": base.registry.model_copy(update={"model_name": name})}
    )
    extended = yaml.safe_load(shipped_spec_text())
    extended["derived"].append(
        {"name": "clicks_per_open_28d", "expr": "email_click_count_28d / email_open_count_28d"}
    )
    text = yaml.safe_dump(extended, sort_keys=False)
    extended_version, plain = _versions_of_two_specs(simulation, settings, text)
    MlflowClient().set_registered_model_alias(name, "champion", extended_version)
    with pytest.raises(RegistryError) as refused:
        promote(name, version=plain)
    told = " ".join(str(refused.value).split())
    # in words a promote can act on, not the model's "build features with the model's spec"
    assert "reads 1 feature(s) the challenger's feature spec does not make" in told
    assert "(clicks_per_open_28d)" in told
    assert "`funnelcast evaluate`" in told
    assert "--force" in told
    assert "build features" not in told
    assert resolve(name, alias="champion").version == extended_version
    decision = promote(name, version=plain, force=True)
    assert (decision.promoted, decision.forced, decision.judged) == (True, True, False)
    assert decision.deltas == {}
    assert "cannot score" in decision.reasons[0]
    assert resolve(name, alias="champion").version == plain
    tags = MlflowClient().get_model_version(name, plain).tags
    assert tags["forced"] == "true"
    # nothing was compared: not tagged as a strict comparison (review)
    assert tags["gate.judged"] == "false"
    assert "gate.resamples" not in tags
    assert "gate.resampled" not in tags


def test_the_gate_refuses_a_champion_whose_features_of_the_same_names_count_otherwise(
    simulation: object, store: str
) -> None:
    """A spec that changes what `{channel}_event_count_{window}` leaves out keeps the names: the
    champion was scored on the challenger's values under its own names, lost for that alone,
    and the challenger was promoted 'beyond noise' (retraining review). Refused, naming the
    features; --force replaces it, and a forced promotion leaves no earlier promotion's
    intervals on the version's record."""
    import yaml

    from training.registry import RegistryError

    name = "funnelcast-redefined"
    base = _weak()
    # the learning rate by its alias: logged under its main name, as training reads it (the
    # run logged lightgbm.eta, a column of its own in MLflow's comparison; review)
    aliased = {("eta" if k == "learning_rate" else k): v for k, v in base.lightgbm.params.items()}
    settings = base.model_copy(
        update={
            "registry": base.registry.model_copy(update={"model_name": name}),
            "lightgbm": base.lightgbm.model_copy(update={"params": aliased}),
        }
    )
    redefined = yaml.safe_load(shipped_spec_text())
    # (not an RFM feature's entry: training refuses those redefined)
    [entry] = [a for a in redefined["aggregates"] if a["name"] == "{channel}_event_count_{window}"]
    entry["where_not"] = {"event_type": ["message_send", "impression"]}
    text = yaml.safe_dump(redefined, sort_keys=False)
    other, plain = _versions_of_two_specs(simulation, settings, text)
    params = MlflowClient().get_run(resolve(name, version=plain).run_id).data.params
    assert params["lightgbm.learning_rate"] == str(aliased["eta"])
    assert "lightgbm.eta" not in params
    first = promote(name, version=other, force=True)  # over the rules: judged, with intervals
    assert first.intervals
    client = MlflowClient()
    assert "gate.auc_pr.low" in client.get_model_version(name, other).tags
    with pytest.raises(
        RegistryError,
        match=r"of the features it reads are defined otherwise in the challenger's feature spec "
        r"\(email_event_count_28d, .*--force",
    ):
        promote(name, version=plain)
    assert resolve(name, alias="champion").version == other
    decision = promote(name, version=plain, force=True)
    assert (decision.promoted, decision.forced, decision.deltas) == (True, True, {})
    assert "defined otherwise" in decision.reasons[0]
    back = promote(name, version=other, force=True)  # a rollback, forced: judged on nothing
    assert (back.promoted, back.forced, back.intervals) == (True, True, {})
    tags = client.get_model_version(name, other).tags
    assert (tags["forced"], tags["gate.judged"]) == ("true", "false")
    # the first promotion's record of how it was judged is gone with its intervals
    assert not [key for key in tags if key.endswith((".low", ".high", "resamples", "resampled"))]


def test_with_no_champion_the_gate_compares_with_the_rules_and_the_rfm_baseline(
    trained: dict,
) -> None:
    """The first promotion: the challenger against the rules' macro-F1 and the RFM baseline's
    AUC-PR on its own test window, as its training run logged them."""
    from training.registry import RegistryError

    client = MlflowClient()

    def logged(version: str) -> dict[str, float]:
        return dict(client.get_run(resolve(NAME, version=version).run_id).data.metrics)

    _, weak = trained["weak"]
    client.set_registered_model_alias(NAME, "champion", weak)  # another alias: not "first"'s
    decision = promote(NAME, alias="first", version=weak)
    metrics = logged(weak)
    assert decision.champion is None
    assert decision.champion_scores["macro_f1"] == pytest.approx(
        metrics["test.stage.rules.macro_f1"], abs=1e-9
    )
    assert decision.champion_scores["auc_pr"] == metrics["test.propensity.rfm_logistic.auc_pr"]
    assert not decision.promoted  # one leaf per tree: worse than the rules on the stage
    assert any(r.startswith("stage macro-F1") and "below" in r for r in decision.reasons)
    with pytest.raises(RegistryError, match="no alias 'first'"):
        resolve(NAME, alias="first")
    # a real model, judged with the paired bootstrap on its test window's contacts, the RFM
    # baseline's per-row propensities included. The strict gate refused it for 0.0014 of
    # AUC-PR (Linux x86-64), too close to count on on every platform; on this window that is
    # well within noise (an interval about +-0.02 wide), and its stage macro-F1 is 0.005
    # above the rules' (within noise too): promoted unforced, the shortfall said as a note.
    # Promoting it again decides the same (the draws are the run's seed's)
    _, normal = trained["normal"]
    metrics = logged(normal)
    decision = promote(NAME, alias="first", version=normal)
    assert decision.champion is None
    assert decision.champion_scores["auc_pr"] == pytest.approx(
        metrics["test.propensity.rfm_logistic.auc_pr"], abs=1e-12
    )
    assert set(decision.intervals) == {"macro_f1", "macro_f1_labelled", "auc_pr"}
    assert re.fullmatch(
        r"a paired bootstrap of 500 resamples of the test window, drawing its [\d,]+ contacts",
        decision.method,
    )
    assert not any(i.wholly_below_zero for i in decision.intervals.values())
    assert decision.deltas["macro_f1"] > 0
    assert (decision.promoted, decision.forced) == (True, False)
    below = [k for k, delta in decision.deltas.items() if delta < 0]
    assert len(decision.reasons) == len(below)  # each shortfall a note, none a refusal
    assert all("within noise" in reason for reason in decision.reasons)
    client.delete_registered_model_alias(NAME, "first")
    again = promote(NAME, alias="first", version=normal)
    assert (again.intervals, again.reasons) == (decision.intervals, decision.reasons)
    assert resolve(NAME, alias="first").version == normal
    tags = client.get_model_version(NAME, normal).tags
    assert tags["promoted_over"] == "rules"
    assert tags["forced"] == "false"
    assert (tags["gate.resamples"], tags["gate.resampled"]) == ("500", "contacts")
    for key, interval in decision.intervals.items():
        assert tags[f"gate.{key}.low"] == f"{interval.low:.6f}"
        assert tags[f"gate.{key}.high"] == f"{interval.high:.6f}"
    # only the alias given moved (mutation review: promote setting "champion" survived)
    assert resolve(NAME, alias="champion").version == weak


def test_a_run_logged_before_the_gates_columns_is_judged_by_row_and_strictly_on_auc_pr(
    trained: dict,
) -> None:
    """A version whose test set has no contact numbers and no RFM propensities (logged before
    they were): its rows are drawn one by one, its AUC-PR is compared with the one the run
    logged, strictly, and the decision says both."""
    result, _ = trained["normal"]
    older = dataclasses.replace(
        result, test_set=result.test_set.drop(CONTACT_GROUP, RFM_PROPENSITY)
    )
    version = _log_variant(older, load_training_settings())
    decision = promote(NAME, alias="older", version=version, force=True)
    assert decision.champion is None
    assert "drawing its" in decision.method
    assert f"{result.test_set.height:,} rows one by one" in decision.method
    assert "before contacts were numbered" in decision.method
    assert "AUC-PR compared point to point" in decision.method
    assert set(decision.intervals) == {"macro_f1", "macro_f1_labelled"}
    metrics = MlflowClient().get_run(resolve(NAME, version=version).run_id).data.metrics
    assert decision.champion_scores["auc_pr"] == metrics["test.propensity.rfm_logistic.auc_pr"]
    # a shortfall on AUC-PR, however small, is then a refusal, as before (forced here)
    if decision.deltas["auc_pr"] < 0:
        assert decision.forced
        assert any(r.startswith("purchase AUC-PR") and "noise" not in r for r in decision.reasons)
    tags = MlflowClient().get_model_version(NAME, version).tags
    assert (tags["gate.resamples"], tags["gate.resampled"]) == ("500", "rows")
    assert "gate.auc_pr.low" not in tags


def test_promote_judges_and_moves_the_alias_it_is_given_only(trained: dict) -> None:
    """A second line (`promote --alias staging`) is judged against its own alias's version,
    not the champion, and moves that alias alone. (Mutation review: promote setting
    "champion" whatever the alias survived.) The champion is the version promoted, so that
    judging against it would be refused as "already 'champion'"."""
    _, weak = trained["weak"]
    _, normal = trained["normal"]
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", normal)
    client.set_registered_model_alias(NAME, "staging", weak)
    decision = promote(NAME, alias="staging", version=normal)
    assert (decision.promoted, decision.forced) == (True, False)
    assert decision.champion is not None
    assert decision.champion.version == weak
    assert resolve(NAME, alias="staging").version == normal
    assert resolve(NAME, alias="champion").version == normal
    assert client.get_model_version(NAME, normal).tags["promoted_over"] == weak


def test_the_gate_needs_both_metrics_at_least_equal_and_one_better() -> None:
    assert beats({"macro_f1": 0.5, "auc_pr": 0.3}, {"macro_f1": 0.4, "auc_pr": 0.3})[0]
    assert not beats({"macro_f1": 0.5, "auc_pr": 0.2}, {"macro_f1": 0.4, "auc_pr": 0.3})[0]
    assert not beats({"macro_f1": 0.4, "auc_pr": 0.3}, {"macro_f1": 0.4, "auc_pr": 0.3})[0]
    assert beats({"macro_f1": 0.5, "auc_pr": 0.3}, {"macro_f1": 0.4, "auc_pr": float("nan")})[0]


def test_a_challenger_whose_auc_pr_is_nan_does_not_beat_a_champion_that_has_one() -> None:
    """An AUC-PR that could not be computed is not at least as good as 0.3, however high the
    stage scores: NaN compared with a number is neither below nor above it, and the gate let
    it through. (Mutation review: skipping a metric whose challenger score is NaN survived.)
    NaN on both sides (a test window with one class) still does not block."""
    nan = float("nan")
    challenger = {"macro_f1": 0.9, "macro_f1_labelled": 0.9, "auc_pr": nan}
    champion = {"macro_f1": 0.4, "macro_f1_labelled": 0.4, "auc_pr": 0.3}
    promoted, reasons = beats(challenger, champion)
    assert not promoted
    assert reasons == ["purchase AUC-PR could not be computed (NaN), against 0.3000"]
    assert beats(challenger, {**champion, "auc_pr": nan}) == (True, [])


def test_the_gate_also_reads_macro_f1_over_the_labels_stages() -> None:
    """A diff review's case: truth 50 awareness + 50 intent; the rules call 10 awareness
    contacts `consideration`, a stage the labels never hold, the model 15 of them `intent`.
    The standard macro-F1 has the model ahead (0.847 against 0.630, the rules' mean taking an
    F1 of 0 for consideration), over the labels' stages the rules are (0.944): not promoted."""
    truth = ["awareness"] * 50 + ["intent"] * 50
    rules = ["consideration"] * 10 + ["awareness"] * 40 + ["intent"] * 50
    model = ["intent"] * 15 + ["awareness"] * 35 + ["intent"] * 50

    def gate_scores(predicted: list[str]) -> dict[str, float]:
        metrics = stage_metrics(truth, predicted)
        return {k: metrics[k] for k in ("macro_f1", "macro_f1_labelled")} | {"auc_pr": 0.3}

    ours, theirs = gate_scores(model), gate_scores(rules)
    assert ours["macro_f1"] > theirs["macro_f1"]
    promoted, reasons = beats(ours, theirs)
    assert not promoted
    assert reasons[0].startswith("stage macro-F1 over the labels' stages 0.8")


def test_an_unknown_alias_is_a_clear_error(trained: dict) -> None:
    from training.registry import RegistryError

    _, normal = trained["normal"]
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)
    with pytest.raises(RegistryError, match="no alias 'nope'") as caught:
        resolve(NAME, alias="nope")
    # versions exist (the module's trainings): name one or promote one, not "train one"
    assert "registered versions are" in str(caught.value)
    assert "promote --version N" in str(caught.value)
    # a mistyped alias shows beside the ones there are (the rules fallback logs this message)
    assert f"its aliases are champion (version {normal})" in str(caught.value)
    # another name than the store's: they are listed (`run --source olist` registers
    # funnelcast-olist, and `evaluate` without --model-name said only "train one")
    with pytest.raises(RegistryError, match="no version is registered under this name") as caught:
        resolve("no-such-model", alias="champion")
    assert re.search(rf"registered models are [^:]*\b{NAME}\b", str(caught.value))
    assert "--model-name" in str(caught.value)
    # without an alias (`promote`'s latest version), the same list: it said only "train one"
    with pytest.raises(RegistryError, match="'no-such-model' has no version in") as caught:
        resolve("no-such-model")
    assert re.search(rf"registered models are [^:]*\b{NAME}\b", str(caught.value))
    # `promote` has no --alias: its missing version is told the option it has (review)
    with pytest.raises(RegistryError, match="has no version 999") as caught:
        promote(NAME, version="999")
    assert "name one (--version N) or make one the champion" in str(caught.value)
    with pytest.raises(RegistryError) as caught:
        resolve(NAME, version="999")
    assert "name one (--version N, --alias NAME)" in str(caught.value)


def _log_variant(
    result: TrainingResult,
    settings: TrainingSettings,
    fingerprint: dict[str, Any] | None = None,
    rules: RulesSettings | None = None,
    **summary: str,
) -> str:
    """The trained model logged again as a new version, its run saying other windows (and,
    given ``fingerprint``, other data; given ``rules``, other rules settings)."""
    variant = dataclasses.replace(result, data_summary={**result.data_summary, **summary})
    spec, rules = load_feature_spec(), rules or load_rules_settings()
    with training_run():
        version = log_training(
            variant,
            spec=spec,
            spec_text=shipped_spec_text(),
            rules=rules,
            settings=settings,
            fingerprint=fingerprint or {},
        )
    assert version is not None
    return version


def test_the_gate_refuses_a_champion_that_has_seen_the_challengers_test_weeks(
    trained: dict,
) -> None:
    """The champion was scored on the challenger's test rows though those weeks were among
    its own validation weeks (early stopping, calibration, decision weights) or inside its
    labels' horizon, and it won unfairly (training review). --force still replaces it."""
    from training.registry import RegistryError

    result, normal = trained["normal"]
    summary = result.data_summary
    # the challenger's test window starts at the champion's last validation snapshot
    older = _log_variant(result, load_training_settings(), test_from=summary["validation_to"])
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)
    reach = dt.date.fromisoformat(summary["validation_to"]) + dt.timedelta(days=14)
    with pytest.raises(RegistryError, match=f"labels reach {reach}.*has seen those weeks"):
        promote(NAME, version=older)
    assert resolve(NAME, alias="champion").version == normal
    decision = promote(NAME, version=older, force=True)
    assert (decision.promoted, decision.forced) == (True, True)
    assert "cannot be judged" in decision.reasons[0]
    assert resolve(NAME, alias="champion").version == older
    # the same windows compare (what every other gate test does)
    assert incomparable(resolve(NAME, version=normal), resolve(NAME, version=normal)) == []
    # a challenger observed up to an earlier day (observe_until) is told why, and the way out
    cut = load_training_settings(observe_until=dt.date.fromisoformat(summary["test_to"]))
    backtest = _log_variant(result, cut, test_from=summary["validation_to"])
    (why,) = incomparable(resolve(NAME, version=backtest), resolve(NAME, version=normal))
    assert why.endswith(
        f"has seen those weeks (the challenger observed its data only up to "
        f"{summary['test_to']}, its observe_until; the champion to its end): a model of an "
        "earlier cut is kept under its own --model-name"
    )
    # a challenger observed up to a later day than the champion is not told it observed less
    later = load_training_settings(
        observe_until=dt.date.fromisoformat(summary["test_to"]) + dt.timedelta(days=30)
    )
    ahead = _log_variant(result, later, test_from=summary["validation_to"])
    (why,) = incomparable(resolve(NAME, version=ahead), resolve(NAME, version=backtest))
    assert why.endswith("has seen those weeks")
    # the other gate tests start from the normal champion (--force above moved it)
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)


def test_the_gate_refuses_a_champion_with_another_label_horizon(trained: dict) -> None:
    """A 7-day model replaced a 14-day one with no word: the served propensity changed its
    meaning silently (training review)."""
    from training.registry import RegistryError

    result, normal = trained["normal"]
    week = load_training_settings(horizon_days=7)
    shorter = _log_variant(result, week)
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)
    with pytest.raises(
        RegistryError, match=r"label horizon \(14 days\) is not the challenger's \(7 days\)"
    ):
        promote(NAME, version=shorter)
    assert resolve(NAME, alias="champion").version == normal


def test_the_gate_refuses_a_champion_with_other_rules_settings(trained: dict) -> None:
    """The rules settings define the revealed stage labels, the rules baseline and the
    rules_stage feature: a champion of a 28-day lookback was re-scored on a 7-day challenger's
    labels and the gate answered as if the two meant the same (review)."""
    from training.registry import RegistryError

    result, normal = trained["normal"]
    other = load_rules_settings().model_copy(
        update={"lookback_days": 7, "repeat_visit_min_days": 4}
    )
    challenger = _log_variant(result, load_training_settings(), rules=other)
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)
    with pytest.raises(RegistryError) as caught:
        promote(NAME, version=challenger)
    assert (
        "its rules settings (lookback_days 28, repeat_visit_min_days 2) are not the "
        "challenger's (lookback_days 7, repeat_visit_min_days 4)"
    ) in str(caught.value)
    assert "same horizon, labels and rules settings" in str(caught.value)
    assert resolve(NAME, alias="champion").version == normal
    # one setting apart: only that one is named
    longer = load_rules_settings().model_copy(update={"lookback_days": 56})
    (why,) = incomparable(
        resolve(NAME, version=_log_variant(result, load_training_settings(), rules=longer)),
        resolve(NAME, version=normal),
    )
    assert why.startswith("its rules settings (lookback_days 28) are not the challenger's")


def _logged_params(monkeypatch: pytest.MonkeyPatch, params: dict[str, dict[str, str]]) -> None:
    """The registry's MLflow client made to answer each run id's params from ``params``."""
    import types

    import training.registry

    class Client:
        def get_run(self, run_id: str) -> Any:
            return types.SimpleNamespace(data=types.SimpleNamespace(params=params[run_id]))

    monkeypatch.setattr(training.registry, "MlflowClient", Client)


def test_rules_settings_an_older_champion_did_not_log_are_not_judged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As for a missing horizon: what a run did not log cannot be told apart, so a champion
    of before these params is compared as it was, and a setting added since (absent from the
    champion's run) is left out while the ones both logged are judged."""
    from training.registry import ModelRef

    new = {"rules.lookback_days": "7", "rules.repeat_visit_min_days": "2", "rules.later": "3"}
    _logged_params(
        monkeypatch,
        {
            "new": new,
            "before-rules": {"horizon_days": "14"},
            "before-later": {"rules.lookback_days": "28", "rules.repeat_visit_min_days": "2"},
            "same": {"rules.lookback_days": "7", "rules.repeat_visit_min_days": "2"},
        },
    )
    challenger = ModelRef(NAME, "9", "new")
    assert incomparable(challenger, ModelRef(NAME, "1", "before-rules")) == []
    assert incomparable(challenger, ModelRef(NAME, "2", "same")) == []
    (why,) = incomparable(challenger, ModelRef(NAME, "3", "before-later"))
    assert why.startswith(
        "its rules settings (lookback_days 28) are not the challenger's (lookback_days 7)"
    )


def test_promote_refuses_a_version_whose_training_run_did_not_finish(trained: dict) -> None:
    """A Ctrl-C after the version was registered and before its run ended left a READY
    version of a KILLED run, and `promote` (the latest version) promoted it silently (review).
    --force does not override it: it overrides the comparison, not a training that did not
    complete."""
    from training.registry import RegistryError

    result, normal = trained["normal"]
    logged: list[tuple[str, str]] = []

    def register_then_ctrl_c(run_id: str) -> None:
        version = log_training(
            result,
            spec=load_feature_spec(),
            spec_text=shipped_spec_text(),
            rules=load_rules_settings(),
            settings=load_training_settings(),
            fingerprint={},
        )
        assert version is not None
        logged.append((run_id, version))
        raise KeyboardInterrupt  # after the version was registered, before the run ended

    with pytest.raises(KeyboardInterrupt), training_run() as started:
        register_then_ctrl_c(started)
    ((run_id, version),) = logged
    client = MlflowClient()
    assert client.get_model_version(NAME, version).status == "READY"
    assert client.get_model_version(NAME, version).tags["run_id"] == run_id  # registered whole
    assert client.get_run(run_id).info.status == "KILLED"
    client.set_registered_model_alias(NAME, "champion", normal)
    for force in (False, True):
        with pytest.raises(RegistryError) as caught:
            promote(NAME, force=force)  # the latest version: the one of the stopped run
        said = str(caught.value)
        assert f"version {version} of '{NAME}' is from a training run that did not finish" in said
        assert f"(run {run_id} is KILLED)" in said
        assert f"train again, or delete version {version}" in said
        assert "\n" not in said
    assert resolve(NAME, alias="champion").version == normal
    assert "promoted_at" not in client.get_model_version(NAME, version).tags
    # a run still RUNNING: a training under way (or a process killed outright)
    client.update_run(run_id, status="RUNNING")
    with pytest.raises(RegistryError, match=r"is RUNNING\), .*promote once it ends; otherwise"):
        promote(NAME, version=version)
    client.set_terminated(run_id, "KILLED")


def test_the_gate_says_when_the_champion_was_trained_on_other_data(trained: dict) -> None:
    """After `make demo`, a model of CDNOW's 1997 purchases was refused because the simulated
    champion's labels "reach 2026-11-14, past the start of the challenger's test window
    (1998-06-10): it has seen those weeks", which it never had: it is another data set, and
    the way out is another registered name."""
    from training.registry import RegistryError

    result, normal = trained["normal"]
    settings = load_training_settings()
    span = {"events_from": "2026-06-01 00:00:00", "events_to": "2026-11-30 23:00:00"}
    champion = _log_variant(result, settings, span, test_from="2026-11-02")
    old = {"events_from": "1997-01-01 05:00:00", "events_to": "1998-06-30 04:00:00"}
    challenger = _log_variant(result, settings, old, test_from="1998-03-03")
    MlflowClient().set_registered_model_alias(NAME, "champion", champion)
    with pytest.raises(RegistryError) as caught:
        promote(NAME, version=challenger)
    said = str(caught.value)
    assert (
        "trained on later data than all of the challenger's (events of 2026-06-01..2026-11-30; "
        "the challenger's are of 1997-01-01..1998-06-30)"
    ) in said
    assert "has seen those weeks" not in said
    assert "--model-name" in said
    assert resolve(NAME, alias="champion").version == champion
    # overlapping periods are the same data, judged as before
    assert incomparable(resolve(NAME, version=champion), resolve(NAME, version=champion)) == []
    # a champion of earlier data (a rolling export, retrained on the next months) is judged
    # too, the day the champion's events end and the challenger's begin included (review)
    earlier = {"events_from": "2026-01-01 00:00:00", "events_to": "2026-05-31 23:00:00"}
    newer = {"events_from": "2026-05-31 23:30:00", "events_to": "2026-10-31 00:00:00"}
    old_champion = _log_variant(
        result, settings, earlier, train_to="2026-05-03", validation_to="2026-05-10"
    )
    new_challenger = _log_variant(result, settings, newer, test_from="2026-10-01")
    assert (
        incomparable(resolve(NAME, version=new_challenger), resolve(NAME, version=old_champion))
        == []
    )
    MlflowClient().set_registered_model_alias(NAME, "champion", normal)


def test_a_champion_moved_while_comparing_stops_the_promotion(
    trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two promotions at once both said "promoted over version 1"; the last one won the alias
    without being compared with the other (training review)."""
    import training.registry
    from training.registry import RegistryError

    _, weak = trained["weak"]
    _, normal = trained["normal"]
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", weak)
    real_predict = training.registry.predict

    def predict_while_another_promotes(model: Any, test_set: pl.DataFrame) -> Predictions:
        client.set_registered_model_alias(NAME, "champion", normal)  # the other promotion
        return real_predict(model, test_set)

    monkeypatch.setattr(training.registry, "predict", predict_while_another_promotes)
    before = client.get_model_version(NAME, normal).tags
    with pytest.raises(RegistryError, match=f"'champion' moved to version {normal}"):
        promote(NAME, version=normal)  # compared with weak, which is no longer champion
    assert client.get_model_version(NAME, normal).tags == before  # nothing recorded


def test_a_version_whose_run_was_garbage_collected_is_said_as_such(tmp_path: Any) -> None:
    """A run deleted and removed by `mlflow gc` made `evaluate` and `promote` say "check the
    tracking URI", as if the store could not be reached (review)."""
    import subprocess
    import sys

    from training.registry import RegistryError, load_test_set, require_finished, run_metrics

    uri = f"sqlite:///{tmp_path}/gc.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient()
        with mlflow.start_run() as run:
            pass
        client.create_registered_model("collected")
        client.create_model_version("collected", source=str(tmp_path), run_id=run.info.run_id)
        client.delete_run(run.info.run_id)
        subprocess.run(
            [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri],
            check=True,
            capture_output=True,
        )
        ref = resolve("collected")
        for reading in (run_metrics, load_test_set, require_finished):
            with pytest.raises(RegistryError, match="no longer holds") as caught:
                reading(ref)
            assert f"run {run.info.run_id}" in str(caught.value)
            assert "--version N" in str(caught.value)
    finally:
        mlflow.set_tracking_uri(previous)


def test_reading_a_test_set_leaves_no_temporary_copy_behind(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow, given no folder to download into, made a temporary one it never removed: each
    promote and evaluate left a copy of the test set in /tmp (install review)."""
    import tempfile

    from training.registry import load_test_set
    from training.tracking import TEST_SET_ARTIFACT

    uri = f"sqlite:///{tmp_path}/store.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        frame = pl.DataFrame({"a": [1, 2, 3]})
        written = tmp_path / "upload" / "test_set.parquet"
        written.parent.mkdir()
        frame.write_parquet(written)
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(written), artifact_path=TEST_SET_ARTIFACT.rsplit("/", 1)[0])
        client = MlflowClient()
        client.create_registered_model("kept")
        client.create_model_version("kept", source=str(tmp_path), run_id=run.info.run_id)
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        assert load_test_set(resolve("kept")).equals(frame)
        assert list(scratch.iterdir()) == []
    finally:
        mlflow.set_tracking_uri(previous)
