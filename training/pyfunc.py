"""The model as MLflow logs and serves it: both models, the feature spec and the stage names in
one ``mlflow.pyfunc.PythonModel``.

MLflow's own flavours return class labels only; this class returns what the CRM needs per
contact: every stage probability, the stage, the purchase propensity, the top three reasons in
the CRM's words, and the call to action for the stage.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from mlflow.pyfunc import PythonModel as _MlflowPythonModel

from features.errors import InputError
from features.settings import RulesSettings
from features.spec import FeatureSpec, parse_feature_spec
from features.vocabulary import STAGE_CTA, STAGES
from training.frame import model_matrix
from training.models import LightGBMPropensityModel, LightGBMStageModel
from training.reasons import contributions_for_class, top_reasons

PROBABILITY_COLUMNS = tuple(f"p_{stage}" for stage in STAGES)
OUTPUT_COLUMNS = (
    "stage",
    *PROBABILITY_COLUMNS,
    "propensity",
    "reason_1",
    "reason_2",
    "reason_3",
    "cta",
)


class _PythonModel(_MlflowPythonModel):
    """MLflow's PythonModel, minus its warning at subclass time that ``predict`` has no type
    hints: the input is a feature table whose columns the spec decides, checked by the model."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # MLflow wraps its check in its own "show once" filter, so a filter cannot silence
        # it; not showing warnings for the length of this one call does (restored on exit)
        with warnings.catch_warnings():
            warnings.showwarning = _shown_nowhere
            super().__init_subclass__(**kwargs)


def _shown_nowhere(*args: Any, **kwargs: Any) -> None:
    del args, kwargs


class FunnelcastModel(_PythonModel):
    """Stage and propensity for each row of a feature table (``build_contact_features``'s
    columns; contact_id and as_of are passed through when present)."""

    def __init__(
        self,
        *,
        stage_model: LightGBMStageModel,
        propensity_model: LightGBMPropensityModel,
        spec_text: str,
        rules: RulesSettings,
        feature_names: list[str],
        horizon_days: int,
    ) -> None:
        self.stage_model = stage_model
        self.propensity_model = propensity_model
        self.spec_text = spec_text
        self.rules = rules
        self.feature_names = feature_names
        self.horizon_days = horizon_days
        self.stages = STAGES
        self.ctas = dict(STAGE_CTA)
        self._spec: FeatureSpec | None = None

    @property
    def spec(self) -> FeatureSpec:
        if self._spec is None:
            self._spec = parse_feature_spec(self.spec_text, origin="the model's feature spec")
        return self._spec

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_spec"] = None  # parsed again after loading; the text is the source of truth
        return state

    # model_input is left unannotated on purpose: MLflow reads the annotation as a schema and
    # warns on anything but list[...]; the input is a feature table (pandas or Polars)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """MLflow's entry point: a pandas feature table in, a pandas prediction table out."""
        return self.predict_frame(model_input).to_pandas()

    def predict_frame(
        self, features: pd.DataFrame | pl.DataFrame, *, reasons: bool = True
    ) -> pl.DataFrame:
        """The predictions for a feature table, as a Polars frame (the batch path's form).
        ``reasons=False`` leaves the reason columns empty and skips their cost (per-feature
        contributions of every tree), for evaluation."""
        frame = features if isinstance(features, pl.DataFrame) else pl.from_pandas(features)
        if frame.height == 0:
            raise InputError("no rows to predict; give at least one contact's features")
        X = model_matrix(frame, self.feature_names)
        proba = self.stage_model.predict_proba(X)
        codes = self.stage_model.decide(proba)
        propensity = self.propensity_model.predict_proba(X)
        phrases: list[list[str]] = [[] for _ in range(frame.height)]
        if reasons:
            contributions = contributions_for_class(
                self.stage_model.contributions(X), len(self.feature_names), codes
            )
            values = frame.select(self.feature_names).to_dicts()
            phrases = top_reasons(contributions, self.feature_names, values, self.spec, k=3)
        stage = np.asarray(self.stages)[codes]
        out: dict[str, Any] = {}
        for key in ("contact_id", "as_of"):
            if key in frame.columns:
                out[key] = frame[key]
        out["stage"] = stage.tolist()
        for k, name in enumerate(PROBABILITY_COLUMNS):
            out[name] = proba[:, k]
        out["propensity"] = propensity
        for k in range(3):
            out[f"reason_{k + 1}"] = [r[k] if len(r) > k else None for r in phrases]
        out["cta"] = [self.ctas[s] for s in stage]
        return pl.DataFrame(out, schema_overrides={f"reason_{k}": pl.String for k in (1, 2, 3)})
