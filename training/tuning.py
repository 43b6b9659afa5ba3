"""Optuna tuning of both LightGBM models, each trial a nested MLflow run.

Sampler: TPE, seeded per model (``study_seed``): one seed for both made the stage and the
propensity studies try the very same parameters in TPE's random start-up trials. Pruner:
median, fed by LightGBM's pruning callback on the validation window. The first trial of each
study is what a run without tuning trains with (``configured_trial``). Objectives on the
validation snapshots (the test snapshots are never seen):

* propensity: average precision (AUC-PR), maximised;
* stage: class-weighted multi-class log loss, minimised.

Search space (``SEARCH_SPACE``, documented in the README):
learning_rate 0.02-0.2 (log), num_leaves 15-255 (log), min_data_in_leaf 20-500 (log),
feature_fraction 0.5-1.0, bagging_fraction 0.5-1.0, lambda_l2 1e-3-10 (log).
Optuna's ``MLflowCallback`` is deprecated; trials are logged here by hand.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import mlflow
import numpy as np
import optuna
import pandas as pd
from optuna_integration.lightgbm import LightGBMPruningCallback

from training.models import (
    DEFAULT_LIGHTGBM_PARAMS,
    LightGBMPropensityModel,
    LightGBMStageModel,
    main_parameter_names,
)
from training.settings import TrainingSettings
from training.tracking import end_run_after

SEARCH_SPACE: dict[str, tuple[str, float, float]] = {
    "learning_rate": ("log", 0.02, 0.2),
    "num_leaves": ("int_log", 15, 255),
    "min_data_in_leaf": ("int_log", 20, 500),
    "feature_fraction": ("uniform", 0.5, 1.0),
    "bagging_fraction": ("uniform", 0.5, 1.0),
    "lambda_l2": ("log", 1e-3, 10.0),
}


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, (kind, low, high) in SEARCH_SPACE.items():
        if kind == "int_log":
            params[name] = trial.suggest_int(name, int(low), int(high), log=True)
        else:
            params[name] = trial.suggest_float(name, low, high, log=kind == "log")
    return params


def configured_trial(params: dict[str, Any]) -> dict[str, Any]:
    """The LightGBM parameters a run without tuning uses (``params``: the configured ones over
    the defaults, under LightGBM's main names) that lie in the search space, tried as each
    study's first trial: the best trial is then never worse on validation than them (with
    one or two trials, TPE's random start-up alone replaced them, often with worse ones). A
    value outside its range is left to the sampler."""
    first: dict[str, Any] = {}
    for name, (kind, low, high) in SEARCH_SPACE.items():
        value = params.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if kind == "int_log" and value != int(value):
            continue
        if low <= value <= high:
            first[name] = int(value) if kind == "int_log" else float(value)
    return first


def study_seed(seed: int, model: str) -> int:
    """The sampler's seed for ``model``'s study: set by ``seed`` and the model's name, so the
    two studies sample apart and a rerun samples the same. A hash, not Python's ``hash``,
    which changes from one process to the next; 32 bits, as numpy's generator takes."""
    digest = hashlib.sha256(f"{seed}:{model}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def tune_models(
    X: dict[str, pd.DataFrame],
    stage_y: dict[str, np.ndarray],
    buy_y: dict[str, np.ndarray],
    *,
    settings: TrainingSettings,
    trials: int,
    sample_weight: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Best LightGBM parameters for the stage and the propensity model; ``sample_weight`` is
    the training rows' weights (``training.frame.SnapshotSampler``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best: dict[str, dict[str, Any]] = {}
    for model in ("propensity", "stage"):
        sampler = optuna.samplers.TPESampler(seed=study_seed(settings.seed, model))
        direction: Literal["maximize", "minimize"] = (
            "maximize" if model == "propensity" else "minimize"
        )
        study = optuna.create_study(
            direction=direction, sampler=sampler, pruner=optuna.pruners.MedianPruner()
        )
        # what a run without tuning trains with: the configured parameters over the defaults
        configured = configured_trial(
            {**DEFAULT_LIGHTGBM_PARAMS, **main_parameter_names(settings.lightgbm.params)}
        )
        if configured:
            study.enqueue_trial(configured)
        study.optimize(
            lambda trial, m=model: _objective(  # type: ignore[misc]
                trial, m, X, stage_y, buy_y, settings, sample_weight
            ),
            n_trials=trials,
        )
        best[model] = dict(study.best_params)
        if mlflow.active_run() is not None:
            mlflow.log_metric(f"tuning.{model}.best_value", float(study.best_value))
    return best


def _objective(
    trial: optuna.Trial,
    model: str,
    X: dict[str, pd.DataFrame],
    stage_y: dict[str, np.ndarray],
    buy_y: dict[str, np.ndarray],
    settings: TrainingSettings,
    sample_weight: np.ndarray | None = None,
) -> float:
    params = {**main_parameter_names(settings.lightgbm.params), **suggest(trial)}
    common: dict[str, Any] = {
        "params": params,
        "num_boost_round": settings.lightgbm.num_boost_round,
        "early_stopping_rounds": settings.lightgbm.patience(model),
        "seed": settings.seed,
    }
    parent = mlflow.active_run()
    # a Ctrl-C inside start_run can leave the trial's run made in the store but never active,
    # out of reach of the finally below: the training run's end (tracking.end_run_after) ends
    # every run nested in it still RUNNING, this one KILLED
    nested = (
        mlflow.start_run(
            run_name=f"{model}-trial-{trial.number}",
            nested=True,
            experiment_id=parent.info.experiment_id,  # the parent's, not the default one
        )
        if parent is not None
        else None
    )
    error: BaseException | None = None
    try:
        if model == "propensity":
            metric = "average_precision"
            fitted: LightGBMPropensityModel | LightGBMStageModel = LightGBMPropensityModel(
                callbacks=[LightGBMPruningCallback(trial, metric, valid_name="validation")],
                **common,
            ).fit(
                X["train"],
                buy_y["train"],
                X_val=X["validation"],
                y_val=buy_y["validation"],
                sample_weight=sample_weight,
            )
        else:
            metric = "multi_logloss"
            fitted = LightGBMStageModel(
                class_weight_power=settings.lightgbm.class_weight_power,
                callbacks=[LightGBMPruningCallback(trial, metric, valid_name="validation")],
                **common,
            ).fit(
                X["train"],
                stage_y["train"],
                X_val=X["validation"],
                y_val=stage_y["validation"],
                sample_weight=sample_weight,
            )
        value = float(fitted.booster_.best_score["validation"][metric])
        if nested is not None:
            mlflow.log_params(trial.params)
            mlflow.log_metrics(
                {f"validation.{metric}": value, "best_iteration": fitted.best_iteration_}
            )
        return value
    except optuna.TrialPruned:
        if nested is not None:
            mlflow.log_params(trial.params)
            mlflow.set_tag("pruned", "true")
        raise  # pruning is one way a trial ends: its run is FINISHED
    except BaseException as caught:
        # Ctrl-C ends the trial KILLED (it ended FINISHED with no metrics), anything else
        # FAILED with the reason
        error = caught
        raise
    finally:
        if nested is not None:
            end_run_after(nested.info.run_id, error)
