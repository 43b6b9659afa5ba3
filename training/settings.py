"""Training settings: the ``training`` section of ``features/config/default.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from features.settings import CalendarDay, FrozenSettings, config_section, section_settings
from training.models import ReasonsMethod


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

    def patience(self, model: str) -> int:
        """Rounds without improvement on validation before ``model`` ("stage" or
        "propensity") stops boosting."""
        if model == "stage" and self.stage_early_stopping_rounds is not None:
            return self.stage_early_stopping_rounds
        return self.early_stopping_rounds


class RegistrySettings(FrozenSettings):
    model_name: str = Field(min_length=1)
    champion_alias: str = Field(min_length=1)


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
    seed: int
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
