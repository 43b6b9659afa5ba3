"""Tuning: each trial a nested MLflow run that ends as the trial did (Ctrl-C: KILLED, the
training run with it), and the two studies' samplers seeded apart but the same on a rerun.
A tiny hand-made data set; MLflow's store is SQLite in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from features.vocabulary import STAGES
from training import tuning
from training.models import LightGBMPropensityModel
from training.settings import TrainingSettings, load_training_settings
from training.tracking import ERROR_TAG, configure_tracking, training_run
from training.tuning import tune_models


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A SQLite store of this test's own."""
    previous = mlflow.get_tracking_uri()
    yield configure_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(previous)


Data = tuple[dict[str, pd.DataFrame], dict[str, np.ndarray], dict[str, np.ndarray]]


def _data() -> Data:
    """400 training and 200 validation rows of two features; buying follows the first."""
    rng = np.random.default_rng(3)
    X: dict[str, pd.DataFrame] = {}
    stage_y: dict[str, np.ndarray] = {}
    buy_y: dict[str, np.ndarray] = {}
    for name, rows in (("train", 400), ("validation", 200)):
        signal = rng.normal(size=rows)
        X[name] = pd.DataFrame({"signal": signal, "noise": rng.normal(size=rows)})
        buy_y[name] = (signal + rng.normal(scale=0.5, size=rows) > 0.8).astype(np.int8)
        stage_y[name] = np.asarray(STAGES, dtype=object)[rng.integers(0, 3, size=rows)]
    return X, stage_y, buy_y


def _settings() -> TrainingSettings:
    base = load_training_settings()
    return base.model_copy(
        update={"lightgbm": base.lightgbm.model_copy(update={"num_boost_round": 5})}
    )


def _trials(parent_id: str) -> dict[str, Run]:
    experiment = mlflow.get_run(parent_id).info.experiment_id
    runs = MlflowClient().search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {run.info.run_name: run for run in runs}


def test_ctrl_c_in_a_trial_ends_that_trial_and_the_training_run_killed(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interrupted trial used to end FINISHED with no metrics, as if it had run."""
    real_fit = LightGBMPropensityModel.fit
    fits = []

    def fit_stopped_at_the_second_trial(self: Any, *args: Any, **kwargs: Any) -> Any:
        fits.append(1)
        if len(fits) == 2:
            raise KeyboardInterrupt
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LightGBMPropensityModel, "fit", fit_stopped_at_the_second_trial)
    trials = _tuned_until_ctrl_c_in_the_second_trial()
    assert "validation.average_precision" in trials["propensity-trial-0"].data.metrics


def test_ctrl_c_while_a_trial_s_run_starts_ends_that_run_killed_too(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C inside `mlflow.start_run`, after the trial's run was made in the store and
    before it became the active run, left that run RUNNING for good: the trial's own cleanup
    had not begun, and ending the active runs does not reach it. Here the interrupt lands in
    MLflow's own start_run, right where the made run is wrapped to be pushed as active."""
    import mlflow.tracking.fluent

    real_active_run = mlflow.tracking.fluent.ActiveRun

    def interrupted_once_made(run: Run) -> Any:
        if run.info.run_name == "propensity-trial-1":
            raise KeyboardInterrupt
        return real_active_run(run)

    monkeypatch.setattr(mlflow.tracking.fluent, "ActiveRun", interrupted_once_made)
    _tuned_until_ctrl_c_in_the_second_trial()


def _tuned_until_ctrl_c_in_the_second_trial() -> dict[str, Run]:
    """Tune 3 propensity trials that Ctrl-C stops in the second: the first trial FINISHED,
    the second and the training run KILLED, no run left active. The trials' runs by name."""
    X, stage_y, buy_y = _data()
    with pytest.raises(KeyboardInterrupt), training_run("tuning") as run_id:
        tune_models(X, stage_y, buy_y, settings=_settings(), trials=3)
    trials = _trials(run_id)
    assert set(trials) == {"propensity-trial-0", "propensity-trial-1"}
    assert trials["propensity-trial-0"].info.status == "FINISHED"
    assert trials["propensity-trial-1"].info.status == "KILLED"
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert mlflow.active_run() is None
    return trials


def test_an_error_in_a_trial_fails_the_trial_and_the_training_run_with_the_reason(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(LightGBMPropensityModel, "fit", broken_fit)
    X, stage_y, buy_y = _data()
    with pytest.raises(MemoryError), training_run("tuning") as run_id:
        tune_models(X, stage_y, buy_y, settings=_settings(), trials=2)
    trial = _trials(run_id)["propensity-trial-0"]
    assert trial.info.status == "FAILED"
    assert trial.data.tags[ERROR_TAG] == "MemoryError: std::bad_alloc"
    parent = mlflow.get_run(run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[ERROR_TAG] == "MemoryError: std::bad_alloc"


def _first_trials(
    monkeypatch: pytest.MonkeyPatch, trials: int = 3, settings: TrainingSettings | None = None
) -> dict[str, list[dict]]:
    """Each study's sampled parameters, trial by trial (no model fitted: the objective only
    samples)."""
    sampled: dict[str, list[dict]] = {"propensity": [], "stage": []}

    def sample_only(trial: optuna.Trial, model: str, *args: Any) -> float:
        sampled[model].append(tuning.suggest(trial))
        return 0.5

    monkeypatch.setattr(tuning, "_objective", sample_only)
    X, stage_y, buy_y = _data()
    tune_models(X, stage_y, buy_y, settings=settings or _settings(), trials=trials)
    return sampled


def test_the_two_studies_sample_different_parameters_and_a_rerun_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one seed for both, the stage and propensity studies tried the very same
    parameter sets in the random start-up phase: half the search wasted."""
    first = _first_trials(monkeypatch)
    # (the first trial of each is the configured parameters: below)
    assert first["propensity"][1] != first["stage"][1]
    assert all(p != s for p, s in zip(first["propensity"][1:], first["stage"][1:], strict=True))
    assert _first_trials(monkeypatch) == first


def test_each_study_tries_the_configured_parameters_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one or two trials, TPE's random start-up alone chose the parameters, often worse
    on validation than the ones a run without tuning uses (training review): those are now
    each study's first trial, so the best is never worse than them."""
    configured = {name: _settings().lightgbm.params[name] for name in tuning.SEARCH_SPACE}
    first = _first_trials(monkeypatch)
    assert first["propensity"][0] == configured
    assert first["stage"][0] == configured
    assert first["propensity"][1] != configured

    def defaults_win(trial: optuna.Trial, model: str, *args: Any) -> float:
        params = tuning.suggest(trial)
        is_configured = params == configured
        return float(is_configured if model == "propensity" else not is_configured)

    monkeypatch.setattr(tuning, "_objective", defaults_win)
    X, stage_y, buy_y = _data()
    best = tune_models(X, stage_y, buy_y, settings=_settings(), trials=2)
    assert best == {"propensity": configured, "stage": configured}


def test_the_first_trial_is_what_a_run_without_tuning_trains_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A config without lambda_l2 trains untuned with the built-in default; the first trial
    sampled one instead, and `--tune 1` chose it (diff review: validation AUC-PR 0.030
    against 0.064). An alias counts as its parameter."""
    from training.models import DEFAULT_LIGHTGBM_PARAMS

    base = _settings()
    params = {k: v for k, v in base.lightgbm.params.items() if k != "lambda_l2"}
    params["eta"] = params.pop("learning_rate")
    settings = base.model_copy(
        update={
            "lightgbm": base.lightgbm.model_validate(
                {**base.lightgbm.model_dump(), "params": params}
            )
        }
    )
    sampled = _first_trials(monkeypatch, trials=1, settings=settings)
    for model in ("propensity", "stage"):
        assert sampled[model][0]["lambda_l2"] == DEFAULT_LIGHTGBM_PARAMS["lambda_l2"]
        assert sampled[model][0]["learning_rate"] == base.lightgbm.params["learning_rate"]


def test_a_parameter_given_by_an_alias_is_the_one_trained_with() -> None:
    """Merged over the defaults' main names, `eta: 0.3` trained at 0.05 (diff review)."""
    X, _, buy_y = _data()
    model = LightGBMPropensityModel(
        params={"eta": 0.3, "min_child_samples": 7}, num_boost_round=3, early_stopping_rounds=3
    ).fit(X["train"], buy_y["train"], X_val=X["validation"], y_val=buy_y["validation"])
    text = model.booster_.model_to_string()
    assert "[learning_rate: 0.3]" in text
    assert "[min_data_in_leaf: 7]" in text


def test_a_configured_value_outside_the_search_space_is_left_to_the_sampler() -> None:
    params = {
        "learning_rate": 0.5,  # above 0.2
        "num_leaves": 31,
        "min_data_in_leaf": 20.5,  # not a whole number
        "feature_fraction": True,  # not a number
        "lambda_l2": 1,
        "max_depth": 6,  # not searched
    }
    assert tuning.configured_trial(params) == {"num_leaves": 31, "lambda_l2": 1.0}
    assert tuning.configured_trial({}) == {}
