"""Training settings: the ``training`` section of ``features/config/default.yaml``."""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from pydantic import Field, field_validator

from features.errors import InputError
from features.settings import CalendarDay, FrozenSettings, config_section, section_settings
from training.models import ReasonsMethod, lightgbm_main_names, main_parameter_names


class LightGBMSettings(FrozenSettings):
    num_boost_round: int = Field(gt=0)
    early_stopping_rounds: int = Field(gt=0)
    # the stage model stops on multi_logloss over the validation rows, a smooth curve that
    # needs less patience than the propensity model's AUC-PR; None: early_stopping_rounds
    stage_early_stopping_rounds: int | None = Field(default=None, gt=0)
    class_weight_power: float = Field(ge=0, le=1)
    # the propensity model blends LightGBM with the RFM logistic line in log-odds, with the
    # weight that ranks the validation buyers best (1: LightGBM alone)
    blend_rfm: bool = True
    params: dict[str, Any]

    @field_validator("params")
    @classmethod
    def _lightgbm_reads_them(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Checked when the settings load, not after the snapshots are built: a misspelt name
        was ignored by LightGBM without a word (its warnings are off) yet logged as if used,
        and a value out of range was a LightGBM traceback after minutes of work."""
        unknown = sorted(set(params) - set(lightgbm_main_names()))
        if unknown:
            raise ValueError(
                f"{unknown} are no LightGBM parameters; see "
                "https://lightgbm.readthedocs.io/en/stable/Parameters.html for the names"
            )
        problem = _lightgbm_refusal(params)
        if problem:
            raise ValueError(f"LightGBM refuses these values: {problem}")
        return params

    def patience(self, model: str) -> int:
        """Rounds without improvement on validation before ``model`` ("stage" or
        "propensity") stops boosting."""
        if model == "stage" and self.stage_early_stopping_rounds is not None:
            return self.stage_early_stopping_rounds
        return self.early_stopping_rounds


# the promotion gate's resamples when a settings file (or a run, for promote) predates them
DEFAULT_GATE_RESAMPLES = 500


class RegistrySettings(FrozenSettings):
    model_name: str = Field(min_length=1)
    champion_alias: str = Field(min_length=1)
    # the promotion gate's paired bootstrap (training.bootstrap): a metric refuses the
    # challenger only when it is worse beyond noise; 0 is the strict point comparison
    gate_resamples: int = Field(default=DEFAULT_GATE_RESAMPLES, ge=0, le=100_000)

    @field_validator("gate_resamples")
    @classmethod
    def _enough_resamples(cls, resamples: int) -> int:
        """A 95 % interval from a few resamples is mostly noise itself: its ends are the
        second-smallest and second-largest of 40 differences, or worse."""
        if 0 < resamples < 100:
            raise ValueError(
                f"{resamples} resamples are too few for a 95 % interval; give 100 or more "
                "(500 by default), or 0 for the strict point comparison"
            )
        return resamples

    @field_validator("model_name")
    @classmethod
    def _a_registry_name(cls, name: str) -> str:
        """MLflow's rules for a registered model's name (it refused one only at registration,
        after the whole training), and no quotes: the registry is searched by name."""
        bad = sorted({c for c in name if c in "/:'\""})
        normal = posixpath.normpath(name)
        if not name.strip() or bad or normal != name or normal.startswith((".", "/")):
            shown = f" (it holds {' '.join(bad)})" if bad else ""
            raise ValueError(
                f"{name!r} cannot name a registered model{shown}: no '/', ':' or quotes, not "
                "blank, and not a path that resolves to another ('.', '..', 'a/../b'); e.g. "
                "funnelcast-emea"
            )
        return name

    @field_validator("champion_alias")
    @classmethod
    def _a_registry_alias(cls, alias: str) -> str:
        """MLflow's rules for an alias, checked before training, not when promoting."""
        if not re.fullmatch(r"[\w\-]{1,255}", alias):
            raise ValueError(
                f"{alias!r} cannot be an alias: letters, digits, '_' and '-' only, at most 255"
            )
        if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise ValueError(
                f"{alias!r} is reserved by MLflow ('latest' and v<number> name versions); "
                "e.g. champion or production"
            )
        return alias


class TrainingSettings(FrozenSettings):
    horizon_days: int = Field(gt=0)
    snapshot_every_days: int = Field(gt=0)
    snapshots: int = Field(ge=3)
    min_history_days: int = Field(ge=0)
    validation_snapshots: int = Field(ge=1)
    test_snapshots: int = Field(ge=1)
    # train on the events before this day (UTC midnight) only, as if the log had been exported
    # then: the later ones are not trained on (counted in the report); None: all of them
    observe_until: CalendarDay | None = None
    seed: int = Field(ge=0, le=2**31 - 1)  # LightGBM's and scikit-learn's range
    min_train_positives: int = Field(ge=1)
    min_eval_positives: int = Field(ge=1)
    min_stage_rows: int = Field(ge=1)
    # large logs: the training snapshots keep every contact the rules see as active and a
    # weighted sample of the dormant ones, the validation snapshots a uniform sample
    # (training.frame.SnapshotSampler)
    max_training_rows: int = Field(default=1_000_000, ge=1)
    max_validation_rows: int = Field(default=250_000, ge=1)
    min_dormant_sample_rate: float = Field(default=0.02, gt=0, le=1)
    # how the reasons share a stage prediction among the features: "path" (a leaf lookup per
    # tree; training.models.PathTable) or "treeshap" (exact Shapley values, several times the
    # cost: benchmarks/reasons.py)
    reasons: ReasonsMethod = "path"
    lightgbm: LightGBMSettings
    registry: RegistrySettings


def for_training(settings: TrainingSettings) -> TrainingSettings:
    """``settings`` with ``lightgbm.params`` as training reads them: under LightGBM's main
    names (``eta`` as ``learning_rate``: merged over the defaults, an alias was overridden by
    them), with no parameter funnelcast sets itself and no parameter named twice, otherwise an
    ``InputError`` saying which and where it is set. Checked as training starts, before the
    features are built, not as the settings load: `score`, `serve` and the other commands that
    only read a model must not refuse the config that trained it (late review: a `verbose: -1`
    stopped the weekly scoring job)."""
    params = settings.lightgbm.params
    managed = _managed_parameters(params)
    if managed:
        raise InputError(
            f"lightgbm.params: {sorted(managed)} are set by funnelcast itself: "
            + "; ".join(sorted(set(managed.values())))
            + " (remove them from `lightgbm.params`)"
        )
    try:
        main = main_parameter_names(params)
    except ValueError as error:
        raise InputError(f"lightgbm.params: {error}") from None
    return settings.model_copy(
        update={"lightgbm": settings.lightgbm.model_copy(update={"params": main})}
    )


def load_training_settings(
    path: Path | None = None, *, model_name: str | None = None, **overrides: Any
) -> TrainingSettings:
    """The shipped (or a user's) training settings, with keyword overrides from the CLI or a
    source's mapping (None: not overridden); ``model_name`` is the registry's."""
    section = config_section(path, "training")
    given = {k: v for k, v in overrides.items() if v is not None}
    section.update(given)
    if model_name is not None:
        section["registry"] = {**section.get("registry", {}), "model_name": model_name}
        given["registry.model_name"] = model_name
    return section_settings(TrainingSettings, section, path, "training", given=list(given))


def source_training(source: str | None, *, model_name: str | None = None) -> dict[str, Any]:
    """The training settings a source's mapping gives (its ``training:``, by
    ``load_training_settings``' keywords), ``model_name`` over the mapping's name; none for no
    source. What `funnelcast run --source`, `train --source` and the notebook train with."""
    from features.sources import load_mapping

    training = load_mapping(source).training if source else None
    given = training.settings() if training is not None else {}
    if model_name is not None:
        given["model_name"] = model_name
    return given


@dataclass(frozen=True)
class UnusedTraining:
    """A source mapping's ``training:`` that a settings file given beside it replaces whole
    (`train --config`, the notebook's ``config``): what to copy to keep it."""

    mapping: str  # the mapping's name
    keys: list[str]  # its settings other than the model name, to copy into the file's
    model_name: str | None  # its model name to give, None when one is given or it has none


def unused_source_training(source: str, model_name: str | None) -> UnusedTraining | None:
    """What a source's mapping gives that a settings file beside it leaves unused, for the
    command and the notebook to say in their words; None when the mapping gives nothing."""
    from features.sources import load_mapping

    mapping = load_mapping(source)
    given = mapping.training.settings() if mapping.training else {}
    if not given:
        return None
    name = given.pop("model_name", None)
    return UnusedTraining(mapping.name, list(given), None if model_name else name)


# LightGBM parameters funnelcast sets itself (each with its aliases), and where a user says
# what they set: given in `lightgbm.params` they were overridden without a word, or, for a
# categorical feature list, trained and then failed (a JSON error reading the model back,
# after the whole training: README review)
_MANAGED_PARAMETERS: dict[str, str] = {
    "objective": "each model's objective is its own (multiclass stages, binary purchase)",
    "num_class": "each model's objective is its own (multiclass stages, binary purchase)",
    "metric": "the validation metrics are the models' own (multi_logloss, average precision)",
    "categorical_feature": "categorical features are the spec's attributes and the rules stage",
    "label_column": "the data is given to LightGBM as tables, never as files",
    "weight_column": "the data is given to LightGBM as tables, never as files",
    "group_column": "the data is given to LightGBM as tables, never as files",
    "ignore_column": "the data is given to LightGBM as tables, never as files",
    "header": "the data is given to LightGBM as tables, never as files",
    "data": "the data is given to LightGBM as tables, never as files",
    "valid": "the data is given to LightGBM as tables, never as files",
    "input_model": "models are read and written through MLflow",
    "output_model": "models are read and written through MLflow",
    "task": "models are read and written through MLflow",
    "num_iterations": "rounds are `lightgbm.num_boost_round`",
    "early_stopping_round": "early stopping is `lightgbm.early_stopping_rounds`",
    "seed": "the seed is `training.seed`",
    "deterministic": "training is deterministic and row-wise, so that a seed repeats a model",
    "force_row_wise": "training is deterministic and row-wise, so that a seed repeats a model",
    "force_col_wise": "training is deterministic and row-wise, so that a seed repeats a model",
    "verbosity": "LightGBM's own output is kept quiet (funnelcast says what it does)",
}


def _managed_parameters(params: dict[str, Any]) -> dict[str, str]:
    """The names in ``params`` that funnelcast sets itself, with where that is said."""
    main = lightgbm_main_names()
    return {
        name: _MANAGED_PARAMETERS[main[name]]
        for name in params
        if main.get(name) in _MANAGED_PARAMETERS
    }


def _lightgbm_refusal(params: dict[str, Any]) -> str | None:
    """LightGBM's own check of the values (a booster built on 20 rows: a few ms), or None."""
    rows = np.arange(40, dtype=np.float64).reshape(20, 2)
    quiet = {"verbosity": -1}
    try:
        with _stderr_silenced():  # its "[LightGBM] [Fatal] ..." line; the message is ours
            data = lgb.Dataset(rows, label=np.arange(20) % 2, params=quiet)
            lgb.Booster(params={**params, **quiet, "objective": "binary"}, train_set=data)
    except lgb.basic.LightGBMError as exc:
        return str(exc).split(" at /")[0].strip()
    return None


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment: LightGBM's C++ writes there itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
