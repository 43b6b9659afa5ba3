"""The models, side by side behind one scikit-learn-style interface.

* ``RulesStageModel``: the hand-written rules of PRODUCT.md; predicts "the stage stays what the
  lookback shows" (the ``rules_stage`` feature, built with the same rules settings).
* ``RfmPropensityModel``: logistic regression on recency, frequency and monetary value of
  purchases and of engagement: the baseline a careful analyst would build.
* ``LightGBMStageModel`` and ``LightGBMPropensityModel``: gradient-boosted trees with native
  categoricals, early stopping on an out-of-time validation window, and probabilities
  calibrated on that window (isotonic or sigmoid, whichever predicts it better out of fold);
  the propensity model can blend in the RFM line, with a weight chosen on that window.

``__init__`` stores keyword arguments; ``fit`` validates and returns self; learned state ends
in ``_``; every random step takes ``seed``. Inputs are pandas frames from
``training.frame.model_matrix``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from features.errors import InputError
from features.vocabulary import STAGES
from training.evaluation import confusion_counts, f1_by_class
from training.single_row import SingleRowPredictor

FloatArray = npt.NDArray[np.float64]
# how the reasons share a prediction among the features (LightGBMStageModel.class_contributions)
ReasonsMethod = Literal["path", "treeshap"]
REASONS_METHODS: tuple[ReasonsMethod, ...] = ("path", "treeshap")
DEFAULT_LIGHTGBM_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
}
_EPS = 1e-6


@functools.cache
def lightgbm_main_names() -> dict[str, str]:
    """Every LightGBM parameter name and alias, as the library lists them, to its main name
    (``eta``: ``learning_rate``; a main name to itself)."""
    from lightgbm.basic import _ConfigAliases

    return {
        alias: name
        for name, aliases in _ConfigAliases._get_all_param_aliases().items()
        for alias in (name, *aliases)
    }


def main_parameter_names(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` under LightGBM's main names (``eta`` as ``learning_rate``): merged over the
    defaults, which use the main names, an alias was overridden by them, LightGBM taking the
    main name (a config's ``eta: 0.3`` trained at 0.05; diff review). Two names of one
    parameter are a ``ValueError``."""
    main = lightgbm_main_names()
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in params.items():
        to = main.get(name, name)
        if to in given:
            raise ValueError(
                f"{given[to]!r} and {name!r} are two names of LightGBM's {to!r}; give one"
            )
        given[to] = name
        out[to] = value
    return out


# up to this many rows are scored on one thread (the service's requests)
_ONE_THREAD_ROWS = 64
# from this many rows the stage model is scored one stage at a time (its 7 one-stage boosters):
# a seventh of the trees stays in the core's cache as the rows stream past; below it one call
# over every tree costs less
_PER_STAGE_ROWS = 20_000
# rows x trees up to which a table's probabilities and path reasons share one walk of the trees
# (predict_proba_and_leaves): its leaves and their values take about 20 bytes a cell, 40 MB here
_LEAF_WALK_CELLS = 2_000_000
# what a model works out from its booster on first use (never pickled; dropped by a new fit)
_BOOSTER_CACHES = ("_single_rows", "_class_boosters", "_path_tables", "_leaf_table")
# rows whose path credits are gathered at once (PathTable.contributions)
_PATH_CHUNK_ROWS = 4_096


def _stage_codes(y: Any) -> npt.NDArray[np.int64]:
    values = np.asarray(y, dtype=object).astype(str)
    unknown = sorted(set(values) - set(STAGES))
    if unknown:
        raise InputError(f"unknown stage labels {unknown[:5]}; stages are {', '.join(STAGES)}")
    lookup = {stage: i for i, stage in enumerate(STAGES)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def _binary(y: Any) -> npt.NDArray[np.int64]:
    values = np.asarray(y)
    if values.dtype == object:
        values = values.astype(bool)
    return values.astype(np.int64)


def _check_rows(X: pd.DataFrame, y: Any, what: str) -> None:
    if len(X) != len(y):
        raise InputError(f"{what}: {len(X)} feature rows but {len(y)} labels")
    if len(X) == 0:
        raise InputError(f"{what}: no rows to fit on")


# --- the rules ----------------------------------------------------------------------------------


class RulesStageModel:
    """The rules baseline: the stage the lookback window shows, as a model.

    Its thresholds (``lookback_days``, ``repeat_visit_min_days``) are the ``rules`` settings
    with which the features were built; the ``rules_stage`` feature carries their result."""

    def __init__(self, *, column: str = "rules_stage") -> None:
        self.column = column

    def fit(self, X: pd.DataFrame, y: Any = None) -> RulesStageModel:
        if self.column not in X.columns:
            raise InputError(
                f"the rules model needs the `{self.column}` feature; keep `rules_stage: true` "
                "in the feature spec"
            )
        self.classes_ = STAGES
        return self

    def predict(self, X: pd.DataFrame) -> npt.NDArray[np.str_]:
        return np.asarray(X[self.column].astype(str).to_numpy(), dtype=str)

    def predict_proba(self, X: pd.DataFrame) -> FloatArray:
        """One-hot: the rules are certain of what they say."""
        codes = _stage_codes(self.predict(X))
        out = np.zeros((len(X), len(STAGES)))
        out[np.arange(len(X)), codes] = 1.0
        return out


# --- the analyst's baseline ---------------------------------------------------------------------

RFM_COLUMNS = (
    "days_since_last_purchase",
    "purchase_count_all",
    "purchase_value_sum_all",
    "days_since_last_event",
    "event_count_28d",
    "active_days_28d",
)


class RfmPropensityModel:
    """Logistic regression on RFM: recency (capped, with a "never" flag), log frequency and log
    monetary value, of purchases and of engagement."""

    def __init__(
        self,
        *,
        columns: tuple[str, ...] = RFM_COLUMNS,
        recency_cap_days: float = 365.0,
        seed: int = 0,
    ) -> None:
        self.columns = columns
        self.recency_cap_days = recency_cap_days
        self.seed = seed

    def _design(self, X: pd.DataFrame) -> FloatArray:
        self._require(list(X.columns))
        return self._design_of(
            np.column_stack([X[name].to_numpy(dtype=float) for name in self.columns])
        )

    def _design_of(self, values: FloatArray) -> FloatArray:
        """The design matrix from the raw values of ``columns`` (one column each, in order):
        per recency column a "never" flag and the days capped at ``recency_cap_days``, per
        other column the log1p of its value (missing and negative as 0), in column order."""
        recency, others, flags, logs, width = self._layout()
        out = np.empty((len(values), width), dtype=np.float64)
        days = values[:, recency]
        never = np.isnan(days)
        out[:, flags] = never
        out[:, flags + 1] = np.fmin(days, self.recency_cap_days)  # fmin: NaN -> the cap
        out[:, logs] = np.log1p(np.fmax(values[:, others], 0.0))  # fmax: NaN -> 0
        return out

    def _layout(self) -> tuple[Any, ...]:
        """Which columns are recencies and which are not, their places in the design (a
        recency takes two: its flag, then its days) and its width; worked out once."""
        cached: tuple[Any, ...] | None = self.__dict__.get("_layout_cache")
        if cached is not None:
            return cached
        recency = [j for j, name in enumerate(self.columns) if name.startswith("days_since")]
        others = [j for j in range(len(self.columns)) if j not in recency]
        start = np.cumsum([0] + [2 if j in recency else 1 for j in range(len(self.columns))])
        cached = (
            np.asarray(recency, dtype=np.intp),
            np.asarray(others, dtype=np.intp),
            start[recency],
            start[others],
            int(start[-1]),
        )
        self.__dict__["_layout_cache"] = cached
        return cached

    def fit(
        self, X: pd.DataFrame, y: Any, *, sample_weight: FloatArray | None = None
    ) -> RfmPropensityModel:
        """``sample_weight``: each row's weight (a sampled row stands for 1 / its share)."""
        _check_rows(X, y, "RFM baseline")
        target = _binary(y)
        if target.min() == target.max():
            raise InputError("the RFM baseline needs both buyers and non-buyers to fit")
        self.__dict__.pop("_line_cache", None)  # of an earlier fit
        design = self._design(X)
        self.scaler_ = StandardScaler().fit(design)
        self.model_ = LogisticRegression(C=1.0, max_iter=1000, random_state=self.seed)
        self.model_.fit(self.scaler_.transform(design), target, sample_weight=sample_weight)
        return self

    def log_odds(
        self, X: pd.DataFrame | FloatArray, feature_names: list[str] | None = None
    ) -> FloatArray:
        """The fitted line's log-odds of a purchase, per row. ``X`` is a pandas frame, or an
        encoded matrix whose columns are ``feature_names`` (the service's input). Evaluated in
        numpy with the scaling folded into the coefficients, not through scikit-learn: the same
        numbers at a fraction of the cost of a one-row request."""
        if isinstance(X, np.ndarray):
            if feature_names is None:
                raise ValueError("an encoded matrix needs its feature_names")
            design = self._design_of(X[:, self._positions(feature_names)].astype(np.float64))
        else:
            design = self._design(X)
        coef, intercept = self._line()
        return np.asarray(design @ coef + intercept, dtype=np.float64)

    def _positions(self, feature_names: list[str]) -> list[int]:
        """Where ``columns`` are among ``feature_names`` (cached: one model, one order)."""
        key = tuple(feature_names)
        cache: dict[tuple[str, ...], list[int]] = self.__dict__.setdefault("_position_cache", {})
        if key not in cache:
            self._require(feature_names)
            cache[key] = [feature_names.index(name) for name in self.columns]
        return cache[key]

    def _require(self, names: list[str]) -> None:
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise InputError(
                f"the RFM baseline needs features {missing}; keep them in the feature spec"
            )

    def _line(self) -> tuple[FloatArray, float]:
        """The coefficients and intercept on the unscaled design (worked out once a fit)."""
        cached: tuple[FloatArray, float] | None = self.__dict__.get("_line_cache")
        if cached is None:
            coef = self.model_.coef_[0] / self.scaler_.scale_
            cached = (coef, float(self.model_.intercept_[0] - coef @ self.scaler_.mean_))
            self.__dict__["_line_cache"] = cached
        return cached

    def predict_proba(self, X: pd.DataFrame) -> FloatArray:
        """P(purchase in the horizon), one column."""
        return np.asarray(expit(self.log_odds(X)), dtype=np.float64)


# --- calibration ------------------------------------------------------------------------------


class _Calibrator:
    """A monotone map from a raw probability to a calibrated one: isotonic or sigmoid (Platt
    scaling on the log-odds)."""

    def __init__(self, method: str, *, shrink: bool = False) -> None:
        self.method = method
        # isotonic steps shrunk toward the raw scores (_shrunk_steps): the propensity's
        self.shrink = shrink

    def fit(self, p: FloatArray, y: npt.NDArray[np.int64]) -> _Calibrator:
        if y.min() == y.max():  # one class only: the observed rate is the best guess
            self.constant_: float | None = float(y[0])
            return self
        self.constant_ = None
        if self.method == "isotonic":
            self.isotonic_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            self.isotonic_.fit(p, y)
            if self.shrink:
                self.steps_ = _shrunk_steps(self.isotonic_, p, y)
        else:
            self.sigmoid_ = LogisticRegression(C=1e6, max_iter=1000)
            self.sigmoid_.fit(_logit(p)[:, None], y)
        return self

    def transform(self, p: FloatArray) -> FloatArray:
        # the fitted maps evaluated in numpy, not through scikit-learn's predict: the same
        # numbers (linear interpolation between the isotonic steps, clipped at the ends; the
        # logistic of a line in the log-odds) at a fraction of the cost for the one-row
        # requests of the service, and one code path for batch and online scoring
        p = np.asarray(p, dtype=np.float64)
        if self.constant_ is not None:
            return np.full(len(p), self.constant_)
        if self.method == "isotonic":
            iso = self.isotonic_
            # steps_: the shrunk heights (a model pickled before them reads the plain ones)
            x, y = iso.X_thresholds_, getattr(self, "steps_", iso.y_thresholds_)
            if len(x) == 1:
                return np.full(len(p), float(y[0]))
            return np.interp(np.clip(p, iso.X_min_, iso.X_max_), x, y)
        lr = self.sigmoid_
        z = _logit(p) * float(lr.coef_[0, 0]) + float(lr.intercept_[0])
        return np.asarray(expit(z), dtype=np.float64)


# pseudo-rows each isotonic step is shrunk by, toward the raw scores' mean over its rows
ISOTONIC_PRIOR_ROWS = 20.0


def _shrunk_steps(iso: IsotonicRegression, p: FloatArray, y: npt.NDArray[np.int64]) -> FloatArray:
    """The isotonic steps' heights, each shrunk toward the raw scores' mean over its rows as
    if ``ISOTONIC_PRIOR_ROWS`` more rows had that rate. A step's observed rate is trusted in
    proportion to its rows: a top step of one buyer was 1.0, a certainty from a single
    validation row (a review found contacts scored 1.0 who bought nothing), and is now near
    the model's own score there; a step of thousands of rows keeps its rate. A step shrunk
    below the one under it takes that one's height (and a hair more): the steps' order, and
    so the ranking of contacts, stays the isotonic fit's (merging them would tie the top
    contacts with a large step below and cost precision at the top)."""
    fitted = np.interp(p, iso.X_thresholds_, iso.y_thresholds_)  # each row's step
    heights, step, rows = np.unique(fitted, return_inverse=True, return_counts=True)
    buyers = np.bincount(step, weights=y.astype(np.float64))
    raw = np.bincount(step, weights=p) / rows
    shrunk = (buyers + ISOTONIC_PRIOR_ROWS * raw) / (rows + ISOTONIC_PRIOR_ROWS)
    ordered = np.maximum.accumulate(shrunk) + np.arange(len(heights)) * 1e-12
    at = np.clip(np.searchsorted(heights, iso.y_thresholds_), 0, len(heights) - 1)
    return np.asarray(np.clip(ordered[at], 0.0, 1.0), dtype=np.float64)


def _logit(p: FloatArray) -> FloatArray:
    clipped = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(clipped / (1 - clipped)), dtype=float)


def _log_loss(p: FloatArray, y: npt.NDArray[np.int64]) -> float:
    clipped = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))


def _choose_calibration(
    p: FloatArray, y: npt.NDArray[np.int64], seed: int
) -> tuple[str, dict[str, float]]:
    """Isotonic or sigmoid, by out-of-fold log loss on two halves of the validation rows."""
    order = np.random.default_rng(seed).permutation(len(p))
    halves = (order[: len(p) // 2], order[len(p) // 2 :])
    losses: dict[str, float] = {}
    for method in ("isotonic", "sigmoid"):
        total = 0.0
        for fit_rows, score_rows in (halves, halves[::-1]):
            calibrator = _Calibrator(method).fit(p[fit_rows], y[fit_rows])
            total += _log_loss(calibrator.transform(p[score_rows]), y[score_rows]) * len(score_rows)
        losses[method] = total / len(p)
    return min(losses, key=losses.__getitem__), losses


# --- LightGBM ---------------------------------------------------------------------------------


class _BestValidation:
    """Keeps the validation predictions of the best iteration so far, as LightGBM already
    holds them after each round, so that calibration needs no second pass of the validation
    rows through every tree.

    ``metric`` is a custom metric (LightGBM hands it the current predictions; it reports a
    constant, after the early-stopping metric); the callback keeps the latest predictions
    whenever the first metric improves strictly, the rule of ``lgb.early_stopping``."""

    order = 25  # before early stopping (30), which ends training without calling the rest

    def __init__(self) -> None:
        self.iteration = 0  # 1-based, as Booster.best_iteration
        self.predictions: FloatArray | None = None
        self._latest: FloatArray | None = None
        self._best: float | None = None

    def metric(self, preds: FloatArray, data: lgb.Dataset) -> tuple[str, float, bool]:
        self._latest = np.array(preds, dtype=np.float64, copy=True)  # LightGBM reuses it
        return "kept_for_calibration", 0.0, False

    def __call__(self, env: Any) -> None:
        first = env.evaluation_result_list[0]
        score, higher_better = first[2], first[3]
        if self._best is None or (score > self._best if higher_better else score < self._best):
            self._best = score
            self.iteration = env.iteration + 1
            self.predictions = self._latest


class _LightGBMBase:
    booster_: lgb.Booster

    def __init__(
        self,
        *,
        params: dict[str, Any] | None = None,
        num_boost_round: int = 500,
        early_stopping_rounds: int = 30,
        seed: int = 0,
        num_threads: int = 0,
        callbacks: list[Any] | None = None,
    ) -> None:
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.num_threads = num_threads
        self.callbacks = callbacks

    def _train(
        self,
        objective: dict[str, Any],
        X: pd.DataFrame,
        y: npt.NDArray[np.int64],
        weight: FloatArray | None,
        X_val: pd.DataFrame,
        y_val: npt.NDArray[np.int64],
        weight_val: FloatArray | None = None,
    ) -> tuple[lgb.Booster, FloatArray]:
        """The booster, cut at its best iteration, and its predictions of the validation rows
        there (what ``_raw(X_val)`` gives, without a second pass through every tree)."""
        for name in _BOOSTER_CACHES:  # of an earlier fit's booster
            self.__dict__.pop(name, None)
        given = main_parameter_names(self.params or {})
        params = {
            **DEFAULT_LIGHTGBM_PARAMS,
            **given,
            **objective,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            # the configured threads (0: all cores) unless the caller sets them
            "num_threads": self.num_threads or given.get("num_threads", 0),
            "verbosity": -1,
        }
        train = lgb.Dataset(X, label=y, weight=weight, categorical_feature="auto")
        # the validation loss is weighted like the training loss, or early stopping would
        # judge a class-weighted model by unweighted frequencies and stop after a few trees
        valid = lgb.Dataset(X_val, label=y_val, weight=weight_val, reference=train)
        keep = _BestValidation()
        booster = lgb.train(
            params,
            train,
            num_boost_round=self.num_boost_round,
            valid_sets=[valid],
            valid_names=["validation"],
            feval=keep.metric,
            callbacks=[
                keep,
                lgb.early_stopping(
                    self.early_stopping_rounds, first_metric_only=True, verbose=False
                ),
                *(self.callbacks or []),
            ],
        )
        self.feature_names_ = list(X.columns)
        # the categories LightGBM coded each categorical by: the service encodes a request's
        # values with them, without building a pandas frame (pyfunc.FunnelcastModel.encode)
        self.categories_ = {
            str(name): list(X[name].cat.categories)
            for name in X.columns
            if isinstance(X[name].dtype, pd.CategoricalDtype)
        }
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        if keep.iteration == self.best_iteration_ and keep.predictions is not None:
            return booster, keep.predictions
        self.booster_ = booster
        return booster, self._raw(X_val)

    def _raw(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        if isinstance(X, np.ndarray) and len(X) == 1:  # a service request: the fast C call
            row = self._single_row("normal", self.booster_, self.best_iteration_)(
                self._input(X)  # type: ignore[arg-type]
            )
            return row.reshape(1, -1) if row.shape[0] > 1 else row  # as predict shapes it
        return np.asarray(
            self.booster_.predict(
                self._input(X), num_iteration=self.best_iteration_, **self._threads(X)
            ),
            dtype=np.float64,
        )

    def warm(self) -> None:
        """Set up the fast single-row prediction now, not on the first request."""
        self._single_row("normal", self.booster_, self.best_iteration_)

    def _single_row(
        self,
        kind: Literal["normal", "leaf"],
        booster: lgb.Booster,
        num_iteration: int,
        key: int = -1,
    ) -> SingleRowPredictor:
        """LightGBM's fast single-row predictor of ``booster`` (built once per process; not
        pickled)."""
        cache: dict[tuple[str, int, int], SingleRowPredictor] = self.__dict__.setdefault(
            "_single_rows", {}
        )
        predictor = cache.get((kind, key, num_iteration))
        if predictor is None:
            predictor = cache[(kind, key, num_iteration)] = SingleRowPredictor(
                booster, kind=kind, num_iteration=num_iteration
            )
        return predictor

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in _BOOSTER_CACHES:  # C handles of this process; rebuilt on first use
            state.pop(name, None)
        return state

    def _input(self, X: pd.DataFrame | FloatArray) -> pd.DataFrame | FloatArray:
        """A pandas frame (columns picked by name) or an encoded matrix in the model's column
        order (categoricals as their category codes, unknown as NaN)."""
        if isinstance(X, np.ndarray):
            if X.ndim != 2 or X.shape[1] != len(self.feature_names_):
                raise InputError(
                    f"an encoded feature matrix needs {len(self.feature_names_)} columns in the "
                    f"model's order; got shape {X.shape}"
                )
            return X
        self._check_columns(X)
        return X[self.feature_names_]

    @staticmethod
    def _threads(X: pd.DataFrame | FloatArray) -> dict[str, Any]:
        # a handful of rows: one thread; waking OpenMP's pool costs more than the trees
        return {"num_threads": 1} if len(X) <= _ONE_THREAD_ROWS else {}

    def _check_columns(self, X: pd.DataFrame) -> None:
        missing = [c for c in self.feature_names_ if c not in X.columns]
        if missing:
            raise InputError(
                f"the model was trained on features that are missing here: {missing[:5]}; "
                "build features with the model's feature spec"
            )

    def contributions(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """LightGBM ``pred_contrib``: per row, each feature's push on the raw score (and the
        bias last); for the stage model, the blocks of all stages side by side."""
        return np.asarray(
            self.booster_.predict(
                self._input(X),
                num_iteration=self.best_iteration_,
                pred_contrib=True,
                **self._threads(X),
            ),
            dtype=np.float64,
        )

    def feature_importance(self) -> dict[str, float]:
        """Total gain per feature."""
        gains = self.booster_.feature_importance(
            importance_type="gain", iteration=self.best_iteration_
        )
        return {name: float(g) for name, g in zip(self.feature_names_, gains, strict=True)}


class LightGBMPropensityModel(_LightGBMBase):
    """P(purchase in the horizon): binary LightGBM, early stopping on validation AUC-PR,
    calibrated on the validation window.

    With ``blend_rfm``, the RFM logistic baseline is fitted on the same training rows and the
    two are blended in log-odds, ``w * LightGBM + (1 - w) * RFM``, with the weight ``w`` that
    ranks the validation buyers best (AUC-PR; ties go to LightGBM), before calibration. Trees
    learn the interactions of engagement; the logistic line extrapolates recency and frequency
    smoothly into later weeks, which trees fitted on earlier weeks do not. ``w`` is 1 (LightGBM
    alone) when the blend does not help on validation, or when the RFM features are not in
    the feature spec."""

    def __init__(self, *, blend_rfm: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blend_rfm = blend_rfm

    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        *,
        X_val: pd.DataFrame,
        y_val: Any,
        sample_weight: FloatArray | None = None,
    ) -> LightGBMPropensityModel:
        """``sample_weight``: each training row's weight (a sampled row stands for 1 / its
        share); the validation rows are never sampled."""
        _check_rows(X, y, "propensity model (training)")
        _check_rows(X_val, y_val, "propensity model (validation)")
        target, target_val = _binary(y), _binary(y_val)
        if target.min() == target.max() or target_val.min() == target_val.max():
            raise InputError(
                "the propensity model needs buyers and non-buyers in both the training and the "
                "validation snapshots"
            )
        objective = {"objective": "binary", "metric": ["average_precision", "binary_logloss"]}
        self.booster_, raw = self._train(objective, X, target, sample_weight, X_val, target_val)
        self.rfm_: RfmPropensityModel | None = None
        self.lightgbm_weight_ = 1.0
        if self.blend_rfm and all(c in X.columns for c in RFM_COLUMNS):
            self.rfm_ = RfmPropensityModel(seed=self.seed).fit(
                X, target, sample_weight=sample_weight
            )
            trees, line = _logit(raw), self.rfm_.log_odds(X_val)
            w = self.lightgbm_weight_ = _choose_blend(trees, line, target_val)
            if w < 1.0:  # as _blended scores it
                raw = np.asarray(expit(w * trees + (1 - w) * line), dtype=np.float64)
        self.calibration_, self.calibration_losses_ = _choose_calibration(
            raw, target_val, self.seed
        )
        # chosen as before (plain steps), then shrunk: the same ranking, and no propensity of
        # exactly 1.0 from a step of one validation buyer
        self.calibrator_ = _Calibrator(self.calibration_, shrink=True).fit(raw, target_val)
        return self

    def _blended(self, raw: FloatArray, X: pd.DataFrame | FloatArray) -> FloatArray:
        """LightGBM's probabilities blended with the RFM line's, before calibration."""
        # models logged before the blend existed have neither attribute: LightGBM alone
        rfm_model: RfmPropensityModel | None = getattr(self, "rfm_", None)
        w = float(getattr(self, "lightgbm_weight_", 1.0))
        if rfm_model is None or w == 1.0:
            return raw
        rfm = rfm_model.log_odds(X, self.feature_names_)
        return np.asarray(expit(w * _logit(raw) + (1 - w) * rfm), dtype=np.float64)

    def predict_raw(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """The uncalibrated probabilities (LightGBM's, blended with RFM's when it is)."""
        return self._blended(self._raw(X), X)

    def predict_proba(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """Calibrated P(purchase in the horizon), one value per row."""
        return self.calibrator_.transform(self.predict_raw(X))


def _choose_blend(lightgbm: FloatArray, rfm: FloatArray, y: npt.NDArray[np.int64]) -> float:
    """The weight of LightGBM's log-odds (0, 0.1, ..., 1) whose blend with the RFM line's has
    the best validation AUC-PR; ties go to the larger weight."""
    best_weight, best = 1.0, -np.inf
    for tenths in range(10, -1, -1):
        w = tenths / 10
        score = float(average_precision_score(y, w * lightgbm + (1 - w) * rfm))
        if score > best + 1e-12:
            best_weight, best = w, score
    return best_weight


class LightGBMStageModel(_LightGBMBase):
    """The funnel stage: multiclass LightGBM over the seven stages.

    Rare stages weigh more in training (inverse frequency to ``class_weight_power``, 0: none,
    1: fully balanced). Probabilities are calibrated per stage on the validation window and
    renormalised. The predicted stage is the probability times a per-stage decision weight,
    tuned on validation for macro-F1 (every stage counts the same, as the report does)."""

    def __init__(self, *, class_weight_power: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.class_weight_power = class_weight_power

    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        *,
        X_val: pd.DataFrame,
        y_val: Any,
        sample_weight: FloatArray | None = None,
    ) -> LightGBMStageModel:
        """``sample_weight``: each training row's weight (a sampled row stands for 1 / its
        share: the class weights are computed from the weighted counts, the true mix); the
        validation rows are never sampled."""
        _check_rows(X, y, "stage model (training)")
        _check_rows(X_val, y_val, "stage model (validation)")
        target, target_val = _stage_codes(y), _stage_codes(y_val)
        if len(np.unique(target)) < 2:
            raise InputError("the stage model needs at least two stages among the training labels")
        counts = np.bincount(target, weights=sample_weight, minlength=len(STAGES)).astype(float)
        share = counts / counts.sum()
        class_weight = np.where(
            counts > 0,
            (1.0 / (len(STAGES) * np.maximum(share, 1e-12))) ** self.class_weight_power,
            0.0,
        )
        self.class_weight_ = {s: float(w) for s, w in zip(STAGES, class_weight, strict=True)}
        objective = {"objective": "multiclass", "num_class": len(STAGES), "metric": "multi_logloss"}
        weight = class_weight[target]
        if sample_weight is not None:
            weight = weight * np.asarray(sample_weight, dtype=np.float64)
        self.booster_, raw = self._train(
            objective, X, target, weight, X_val, target_val, class_weight[target_val]
        )
        self.calibration_, self.calibration_losses_ = self._choose_multiclass(raw, target_val)
        self.calibrators_ = [
            _Calibrator(self.calibration_).fit(raw[:, k], (target_val == k).astype(np.int64))
            for k in range(len(STAGES))
        ]
        self.decision_weights_ = _tune_decision_weights(self._calibrated(raw), target_val)
        self.classes_ = STAGES
        return self

    def _choose_multiclass(
        self, raw: FloatArray, y: npt.NDArray[np.int64]
    ) -> tuple[str, dict[str, float]]:
        order = np.random.default_rng(self.seed).permutation(len(y))
        halves = (order[: len(y) // 2], order[len(y) // 2 :])
        losses: dict[str, float] = {}
        for method in ("isotonic", "sigmoid"):
            total = 0.0
            for fit_rows, score_rows in (halves, halves[::-1]):
                columns = [
                    _Calibrator(method)
                    .fit(raw[fit_rows, k], (y[fit_rows] == k).astype(np.int64))
                    .transform(raw[score_rows, k])
                    for k in range(len(STAGES))
                ]
                p = _renormalise(np.column_stack(columns), raw[score_rows])
                picked = np.clip(p[np.arange(len(score_rows)), y[score_rows]], _EPS, 1.0)
                total += float(-np.log(picked).sum())
            losses[method] = total / len(y)
        return min(losses, key=losses.__getitem__), losses

    def _calibrated(self, raw: FloatArray) -> FloatArray:
        lines = self._sigmoid_lines()
        if lines is not None:  # every stage's map at once: the same numbers, one numpy pass
            slope, intercept, constant = lines
            p = np.asarray(expit(_logit(raw) * slope + intercept), dtype=np.float64)
            for k, value in constant.items():  # a stage seen in one class only in validation
                p[:, k] = value
        else:
            p = np.column_stack([c.transform(raw[:, k]) for k, c in enumerate(self.calibrators_)])
        return _renormalise(p, raw)

    def _sigmoid_lines(self) -> tuple[FloatArray, FloatArray, dict[int, float]] | None:
        """The stages' sigmoid calibrations as (slopes, intercepts, constants by stage) when
        no stage is isotonic (worked out once a fit); None otherwise."""
        calibrators = tuple(self.calibrators_)  # a calibrator replaced in place: worked out anew
        cached = self.__dict__.get("_lines_cache")
        if cached is not None and cached[0] == calibrators:
            return cached[1]
        lines = None
        if all(c.method == "sigmoid" or c.constant_ is not None for c in calibrators):
            fitted = [
                (0.0, 0.0)
                if c.constant_ is not None
                else (c.sigmoid_.coef_[0, 0], c.sigmoid_.intercept_[0])
                for c in calibrators
            ]
            slope, intercept = np.array(fitted, dtype=np.float64).T
            constant = {
                k: float(c.constant_) for k, c in enumerate(calibrators) if c.constant_ is not None
            }
            lines = (slope, intercept, constant)
        self.__dict__["_lines_cache"] = (calibrators, lines)
        return lines

    def predict_raw(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        return self._raw(X)

    def _raw(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """LightGBM's stage probabilities (softmax of the seven raw scores); many rows are
        scored stage by stage, the same numbers."""
        if len(X) < _PER_STAGE_ROWS:
            return super()._raw(X)
        matrix = self._matrix(X)
        raw = np.column_stack([self._class_booster(k).predict(matrix) for k in range(len(STAGES))])
        return _softmax_as_lightgbm(raw)

    def _matrix(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """``X`` as LightGBM's input matrix, once for the seven boosters: categoricals as their
        codes among the training categories (unknown and missing as NaN), as LightGBM codes
        a pandas frame."""
        frame = self._input(X)
        if isinstance(frame, np.ndarray):
            return frame
        numbers = [n for n in self.feature_names_ if n not in self.categories_]
        # float32 when every number is (model_matrix's frames), as LightGBM would read them
        dtype = np.float32 if all(frame[n].dtype == np.float32 for n in numbers) else np.float64
        matrix = np.empty((len(frame), len(self.feature_names_)), dtype=dtype)
        for j, name in enumerate(self.feature_names_):
            column = frame[name]
            if name in self.categories_:
                codes = column.cat.set_categories(self.categories_[name]).cat.codes.to_numpy()
                matrix[:, j] = np.where(codes < 0, np.nan, codes)
            else:
                matrix[:, j] = column.to_numpy(dtype=dtype, na_value=np.nan)
        return matrix

    def predict_proba(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """Calibrated stage probabilities, columns in ``STAGES`` order, rows summing to 1."""
        return self._calibrated(self._raw(X))

    def predict_proba_and_leaves(
        self, X: FloatArray
    ) -> tuple[FloatArray, npt.NDArray[np.int32] | None]:
        """``predict_proba`` of an encoded matrix, and the leaf each row reaches in every tree
        (``(rows, trees)``, LightGBM's ``pred_leaf``), which path reasons read their credits
        from (``class_contributions(leaves=...)``). From a few rows up to the stage-by-stage
        size, the probabilities come from the leaves (the raw scores are the sums of the
        reached leaves' values in tree order, the same numbers as LightGBM's): one walk of
        the trees serves both, instead of a walk for the scores and one more per stage for
        the reasons. For one row, or more than ``_LEAF_WALK_CELLS`` rows x trees (the
        reasons then walk one stage's trees in chunks of rows), the leaves are None."""
        trees = self.best_iteration_ * len(STAGES)
        if len(X) < 2 or len(X) * trees > _LEAF_WALK_CELLS:
            return self.predict_proba(X), None
        X = self._input(X)  # type: ignore[assignment]
        leaves = np.asarray(
            self.booster_.predict(
                X, num_iteration=self.best_iteration_, pred_leaf=True, **self._threads(X)
            ),
            dtype=np.int32,
        ).reshape(len(X), -1)
        offsets, values = self._leaf_values()
        reached = values[leaves + offsets].reshape(len(X), -1, len(STAGES))
        raw = np.zeros((len(X), len(STAGES)), dtype=np.float64)
        for iteration in range(reached.shape[1]):  # in tree order, as LightGBM adds them
            raw += reached[:, iteration, :]
        return self._calibrated(_softmax_as_lightgbm(raw)), leaves

    def _leaf_values(self) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Every tree's leaf values, all trees' in one array, and each tree's first place in it
        (worked out once per process from the model's dump)."""
        cached: tuple[npt.NDArray[np.int64], FloatArray] | None = self.__dict__.get("_leaf_table")
        if cached is None:
            offsets: list[int] = []
            values: list[float] = []
            for tree in self.booster_.dump_model(num_iteration=self.best_iteration_)["tree_info"]:
                offsets.append(len(values))
                leaf_values = [0.0] * int(tree["num_leaves"])
                stack = [tree["tree_structure"]]
                while stack:
                    node = stack.pop()
                    if "split_feature" in node:
                        stack += [node["left_child"], node["right_child"]]
                    else:  # a one-leaf tree's leaf has no leaf_index
                        leaf_values[int(node.get("leaf_index", 0))] = float(node["leaf_value"])
                values.extend(leaf_values)
            cached = (np.asarray(offsets, dtype=np.int64), np.asarray(values, dtype=np.float64))
            self.__dict__["_leaf_table"] = cached
        return cached

    def decide(self, proba: FloatArray) -> npt.NDArray[np.int64]:
        """Stage index per row from calibrated probabilities."""
        return np.asarray(np.argmax(proba * self.decision_weights_, axis=1), dtype=np.int64)

    def predict(self, X: pd.DataFrame) -> npt.NDArray[np.str_]:
        codes = self.decide(self.predict_proba(X))
        return np.asarray(STAGES, dtype=str)[codes]

    def class_contributions(
        self,
        X: FloatArray,
        classes: npt.NDArray[np.int64],
        *,
        method: ReasonsMethod,
        leaves: npt.NDArray[np.int32] | None = None,
    ) -> FloatArray:
        """Each row's contributions to its own class's raw score (``(rows, features + 1)``, the
        bias last). ``X`` is an encoded matrix.

        ``treeshap``: LightGBM's exact ``pred_contrib`` block for the class, computed from a
        booster holding only that class's trees (a seventh of the work). ``path``: each tree's
        change of expected value along the row's decision path, credited to the feature of
        each split (XGBoost's ``approx_contribs``, Saabas' method): read from a table per leaf,
        so it costs one leaf lookup per tree instead of TreeSHAP's walk over every path. Both
        sum, with the same bias (the expected value over the training rows), to the raw
        score; they differ in how a tree's interactions are shared between its features.

        ``leaves``: the rows' leaves in every tree (``predict_proba_and_leaves``), for path
        credits without walking the trees again; a stage's trees are every seventh."""
        X = self._input(X)  # type: ignore[assignment]
        out = np.empty((len(X), len(self.feature_names_) + 1), dtype=np.float64)
        for k in np.unique(classes):
            rows = classes == k
            booster = self._class_booster(int(k))
            if method == "path":
                reached: Any
                if leaves is not None:
                    reached = leaves[rows, int(k) :: len(STAGES)]
                elif len(X) == 1:
                    reached = self._single_row("leaf", booster, -1, int(k))(X)[None, :]
                else:
                    reached = booster.predict(X[rows], pred_leaf=True, **self._threads(X[rows]))
                out[rows] = self._path_table(int(k)).contributions(reached)
            elif method == "treeshap":
                out[rows] = booster.predict(X[rows], pred_contrib=True, **self._threads(X[rows]))
            else:
                raise ValueError(f"unknown reasons method {method!r}; use 'path' or 'treeshap'")
        return out

    def warm(self, reasons_method: ReasonsMethod | None = None) -> None:
        """Build every stage's one-stage booster (20-40 ms each on first use) and, for path
        reasons, its leaf table (about as long) and single-row leaf predictor now, so that no
        request pays for them."""
        super().warm()
        if reasons_method == "path":
            self._leaf_values()
        for k in range(len(STAGES)):
            booster = self._class_booster(k)
            if reasons_method == "path":
                self._path_table(k)
                self._single_row("leaf", booster, -1, k)

    def _path_table(self, k: int) -> PathTable:
        cache: dict[int, PathTable] = self.__dict__.setdefault("_path_tables", {})
        if k not in cache:
            cache[k] = PathTable.of(self._class_booster(k), len(self.feature_names_))
        return cache[k]

    def _class_booster(self, k: int) -> lgb.Booster:
        cache: dict[int, lgb.Booster] = self.__dict__.setdefault("_class_boosters", {})
        if k not in cache:
            cache[k] = lgb.Booster(
                model_str=_one_class_model(
                    self.booster_.model_to_string(num_iteration=self.best_iteration_),
                    k,
                    len(STAGES),
                )
            )
        return cache[k]


@dataclass(frozen=True)
class PathTable:
    """Per leaf of a one-output booster, what reaching it credits to each feature: for every
    split on the leaf's path, the child's expected value minus the node's, credited to the
    split's feature. Stored sparse (a path holds a few features), in CSR form over the leaves
    of all trees in order; ``offsets[t]`` is tree t's first leaf. Expected values weigh the
    leaves by their training rows, as LightGBM's TreeSHAP does, so the bias is the same."""

    offsets: npt.NDArray[np.int64]
    indptr: npt.NDArray[np.int64]
    features: npt.NDArray[np.int64]
    values: FloatArray
    bias: float
    n_features: int

    @classmethod
    def of(cls, booster: lgb.Booster, n_features: int) -> PathTable:
        offsets: list[int] = []
        indptr: list[int] = [0]
        features: list[int] = []
        values: list[float] = []
        bias = 0.0
        for tree in booster.dump_model()["tree_info"]:
            offsets.append(len(indptr) - 1)
            root = tree["tree_structure"]
            expected = _expected_values(root)
            bias += expected[id(root)][0]
            credits: list[dict[int, float]] = [{} for _ in range(tree["num_leaves"])]
            stack: list[tuple[dict[str, Any], dict[int, float]]] = [(root, {})]
            while stack:
                node, credit = stack.pop()
                if "split_feature" not in node:  # a leaf (a one-leaf tree has no leaf_index)
                    credits[int(node.get("leaf_index", 0))] = credit
                    continue
                feature, here = int(node["split_feature"]), expected[id(node)][0]
                for side in ("left_child", "right_child"):
                    child = node[side]
                    moved = dict(credit)
                    moved[feature] = moved.get(feature, 0.0) + expected[id(child)][0] - here
                    stack.append((child, moved))
            for credit in credits:
                features.extend(credit)
                values.extend(credit.values())
                indptr.append(len(features))
        return cls(
            offsets=np.asarray(offsets, dtype=np.int64),
            indptr=np.asarray(indptr, dtype=np.int64),
            features=np.asarray(features, dtype=np.int64),
            values=np.asarray(values, dtype=np.float64),
            bias=bias,
            n_features=n_features,
        )

    def contributions(self, leaves: Any) -> FloatArray:
        """``(rows, n_features + 1)`` contributions (the bias last) from LightGBM's
        ``pred_leaf`` output (``(rows, trees)`` leaf indices)."""
        leaves = np.asarray(leaves, dtype=np.int64).reshape(len(leaves), len(self.offsets))
        if len(leaves) <= _PATH_CHUNK_ROWS:
            return self._contributions(leaves)
        # the gathered credits take rows x trees x path length: in chunks, a whole table's
        # scoring stays within a few tens of MB
        return np.vstack(
            [
                self._contributions(leaves[i : i + _PATH_CHUNK_ROWS])
                for i in range(0, len(leaves), _PATH_CHUNK_ROWS)
            ]
        )

    def _contributions(self, leaves: npt.NDArray[np.int64]) -> FloatArray:
        rows, trees = leaves.shape
        leaf = (leaves + self.offsets).ravel()
        starts, ends = self.indptr[leaf], self.indptr[leaf + 1]
        lengths = ends - starts
        # the entries of every reached leaf, gathered as one index array
        entry = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        row = np.repeat(np.arange(rows).repeat(trees), lengths)
        width = self.n_features + 1
        sums = np.bincount(
            row * width + self.features[entry], weights=self.values[entry], minlength=rows * width
        )
        out = np.asarray(sums, dtype=np.float64).reshape(rows, width)
        out[:, -1] = self.bias
        return out


def _expected_values(root: dict[str, Any]) -> dict[int, tuple[float, float]]:
    """Each node's (expected value, training rows) by ``id``: a leaf's value, or the mean of
    its leaves' values weighted by their rows."""
    out: dict[int, tuple[float, float]] = {}
    order: list[dict[str, Any]] = []
    stack = [root]
    while stack:  # parents before children; read back to front, children come first
        node = stack.pop()
        order.append(node)
        if "split_feature" in node:
            stack += [node["left_child"], node["right_child"]]
    for node in reversed(order):
        if "split_feature" not in node:
            out[id(node)] = (float(node["leaf_value"]), float(node.get("leaf_count", 0)))
            continue
        (left, n_left), (right, n_right) = (
            out[id(node["left_child"])],
            out[id(node["right_child"])],
        )
        total = n_left + n_right
        mean = (left * n_left + right * n_right) / total if total > 0 else (left + right) / 2
        out[id(node)] = (mean, total)
    return out


def _one_class_model(model: str, k: int, n_classes: int) -> str:
    """A multiclass LightGBM model text cut down to class ``k``'s trees (trees k, k + n, ...),
    as a one-output regression model: its raw score and contributions are class k's."""
    start, end = model.index("\nTree=0\n") + 1, model.index("end of trees")
    header, body, tail = model[:start], model[start:end], model[end:]
    trees = [block for block in body.split("\nTree=") if block.strip()]
    mine = trees[k::n_classes]
    kept = []
    for j, block in enumerate(mine):
        text = block.removeprefix("Tree=")
        kept.append(f"Tree={j}" + text[text.index("\n") :].rstrip("\n") + "\n\n")
    lines = []
    for line in header.splitlines():
        if line.startswith("num_class="):
            line = "num_class=1"
        elif line.startswith("num_tree_per_iteration="):
            line = "num_tree_per_iteration=1"
        elif line.startswith("objective="):
            line = "objective=regression"
        elif line.startswith("tree_sizes="):
            continue  # sizes of the full model's trees; without them LightGBM reads in order
        lines.append(line)
    return "\n".join(lines) + "\n" + "".join(kept) + "\n" + tail


def _softmax_as_lightgbm(raw: FloatArray) -> FloatArray:
    """Each row's softmax, computed as LightGBM's multiclass objective does (the row's maximum
    subtracted, the C library's ``exp`` of each score, summed left to right, each divided by
    the sum): the same numbers as ``Booster.predict``, bit for bit. numpy's vectorised ``exp``
    differed from the C library's in the last bit for about a third of the rows on one VM (its
    SIMD code depends on the CPU), which an isotonic calibration's steep steps can magnify."""
    shifted = raw - raw.max(axis=1, keepdims=True)
    exp = np.fromiter(
        map(math.exp, shifted.ravel().tolist()), dtype=np.float64, count=shifted.size
    ).reshape(shifted.shape)
    total = np.zeros(len(raw), dtype=np.float64)
    for k in range(raw.shape[1]):
        total += exp[:, k]
    return np.asarray(exp / total[:, None], dtype=np.float64)


def _renormalise(p: FloatArray, fallback: FloatArray) -> FloatArray:
    """Rows summing to 1; a row calibrated to all zeros keeps the raw probabilities."""
    totals = p.sum(axis=1, keepdims=True)
    return np.where(totals > _EPS, p / np.maximum(totals, _EPS), fallback)


def _tune_decision_weights(
    p: FloatArray, y: npt.NDArray[np.int64], *, rounds: int = 2
) -> FloatArray:
    """Per-stage weights on the probabilities maximising validation macro-F1 (coordinate
    ascent over a log grid); the stages absent from validation keep weight 1.

    Trying a value for stage k moves only the rows where k's weighted probability crosses the
    best of the other stages, so each trial is one comparison per row against that best,
    computed once per stage, not an argmax over every stage (the same choices as
    ``np.argmax(p * w, axis=1)``, ties to the first stage)."""
    weights = np.ones(p.shape[1])
    grid = np.geomspace(0.25, 8.0, 16)
    labels = np.unique(y)
    best = _macro_f1(y, np.argmax(p * weights, axis=1), labels, p.shape[1])
    for _ in range(rounds):
        for k in labels:
            weighted = p * weights
            weighted[:, k] = -np.inf
            rival = np.argmax(weighted, axis=1)
            rival_score = weighted[np.arange(len(p)), rival]
            for value in grid:
                mine = p[:, k] * value
                # k wins outright, or ties with a rival that comes after it
                wins = (mine > rival_score) | ((mine == rival_score) & (k < rival))
                result = _macro_f1(y, np.where(wins, k, rival), labels, p.shape[1])
                if result > best + 1e-9:
                    best = result
                    weights = weights.copy()
                    weights[k] = value
    return weights


def _macro_f1(
    y: npt.NDArray[np.int64],
    predicted: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    n_classes: int,
) -> float:
    """Macro-F1 over ``labels`` (scikit-learn's ``f1_score(average="macro",
    zero_division=0)``)."""
    return float(f1_by_class(confusion_counts(y, predicted, n_classes))[labels].mean())
