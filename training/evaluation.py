"""Quality metrics for the stage and propensity models, and the report artifacts MLflow logs.

* Stage models (the rules baseline, LightGBM) are scored by macro-F1 (every stage counts the
  same, as the funnel report does), accuracy, per-stage precision/recall/F1 and the confusion
  matrix; ``disagreement_table`` shows where two of them differ and who was right.
* Propensity models (the RFM logistic baseline, LightGBM) are scored by ranking (ROC AUC,
  average precision), by probability quality (Brier score, log loss) and by calibration
  (expected calibration error); the tables behind the ROC, precision-recall, calibration and
  lift/gains curves are plain polars frames.
* ``write_evaluation_artifacts`` writes all of it as JSON, CSV and PNG into one folder.

Everything here is a pure function of arrays. Input is checked at the boundary: a length
mismatch, an empty input, an unknown stage or a probability outside [0, 1] is a ``ValueError``
that says which argument is wrong. A metric that is undefined on the data (an AUC when the test
set has one class) is ``nan``, never an exception, and ``null`` in ``metrics.json``.

matplotlib is imported only when a plot is drawn, and figures are drawn on the Agg canvas
without pyplot, so no global figure state is created or left open.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from features.vocabulary import STAGES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
StrArray = npt.NDArray[np.str_]

FEATURE_IMPORTANCE_BARS = 30

_CALIBRATION_SCHEMA = pl.Schema(
    {
        "bin_lower": pl.Float64(),
        "bin_upper": pl.Float64(),
        "rows": pl.Int64(),
        "mean_predicted": pl.Float64(),
        "observed_rate": pl.Float64(),
    }
)
_LIFT_SCHEMA = pl.Schema(
    {
        "decile": pl.Int64(),
        "rows": pl.Int64(),
        "positives": pl.Int64(),
        "positive_rate": pl.Float64(),
        "lift": pl.Float64(),
        "cumulative_gain": pl.Float64(),
    }
)
_ROC_SCHEMA = pl.Schema(
    {
        "threshold": pl.Float64(),
        "false_positive_rate": pl.Float64(),
        "true_positive_rate": pl.Float64(),
    }
)
_PR_SCHEMA = pl.Schema(
    {
        "threshold": pl.Float64(),
        "recall": pl.Float64(),
        "precision": pl.Float64(),
    }
)
_DISAGREEMENT_SCHEMA = pl.Schema(
    {
        "rules_stage": pl.String(),
        "model_stage": pl.String(),
        "contacts": pl.Int64(),
        "rules_right": pl.Int64(),
        "model_right": pl.Int64(),
        "neither_right": pl.Int64(),
    }
)


# --- input checks -------------------------------------------------------------------------------


def _positive_int(value: int, *, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}; got {value!r}")
    return int(value)


def _one_per_row(values: Any, *, name: str) -> npt.NDArray[Any]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must hold one value per row (1-D); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; evaluation needs at least one row")
    return array


def _same_length(**arrays: Sized) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"inputs differ in length ({described} rows); pass one value per row")


def _text(values: Any, *, name: str) -> pl.Series:
    """One label per row as text; a missing label becomes the visible label "None", not a
    silent blank. Numpy text arrays go to Polars directly (no Python object per row)."""
    array = _one_per_row(values, name=name)
    if array.dtype.kind != "U":
        array = array.astype(object).astype(str)
    return pl.Series(name, array, dtype=pl.String)


def _stage_codes(values: Any, *, name: str, stages: Sequence[str]) -> npt.NDArray[np.int64]:
    """Each row's position in ``stages``; a label that is not a stage is an error naming it."""
    labels = _text(values, name=name)
    codes = labels.cast(pl.Enum(list(stages)), strict=False)
    unknown = labels.filter(codes.is_null()).unique().sort().to_list()
    if unknown:
        raise ValueError(
            f"{name} has labels that are not stages: {unknown[:5]}; "
            f"expected one of {', '.join(stages)}"
        )
    return codes.to_physical().to_numpy().astype(np.int64)


def _check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    ordered = tuple(str(s) for s in stages)
    if not ordered:
        raise ValueError("stages is empty; pass the stage vocabulary, e.g. features.STAGES")
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"stages has duplicates: {list(ordered)}")
    return ordered


def _binary_labels(values: Any, *, name: str = "y_true") -> BoolArray:
    labels = _one_per_row(values, name=name)
    if labels.dtype == np.bool_:
        return labels
    if labels.dtype.kind in "iuf":
        valid = np.isin(labels, (0, 1))
        if not valid.all():
            found = np.unique(labels[~valid])[:5].tolist()
            raise ValueError(f"{name} must be bool or 0/1 per row; found {found}")
        return labels.astype(bool)
    raise ValueError(
        f"{name} must be bool or 0/1 per row; got dtype {labels.dtype} "
        "(missing labels? fill or drop them before evaluating)"
    )


def _binary_inputs(y_true: Any, p: Any, *, name: str = "p") -> tuple[BoolArray, FloatArray]:
    """The labels as bools and the probabilities as floats, one each per row, p in [0, 1]."""
    labels = _binary_labels(y_true)
    try:
        scores = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric probabilities: {exc}") from exc
    if scores.ndim != 1:
        raise ValueError(
            f"{name} must be one probability per row (1-D); got shape {scores.shape} "
            "(for a two-column predict_proba pass column 1)"
        )
    _same_length(y_true=labels, **{name: scores})
    not_finite = ~np.isfinite(scores)
    if not_finite.any():
        raise ValueError(
            f"{name} has {int(not_finite.sum())} non-finite values (NaN or inf); "
            "probabilities must be finite numbers in [0, 1]"
        )
    outside = (scores < 0.0) | (scores > 1.0)
    if outside.any():
        raise ValueError(
            f"{name} must be within [0, 1]; {int(outside.sum())} values are outside "
            f"(min {scores.min():g}, max {scores.max():g}); pass probabilities, not raw scores"
        )
    return labels, scores


def _both_classes(labels: BoolArray) -> bool:
    return bool(labels.any()) and not bool(labels.all())


# --- stage metrics ------------------------------------------------------------------------------


def stage_metrics(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    *,
    stages: Sequence[str] = STAGES,
) -> dict[str, Any]:
    """Macro-F1, accuracy, per-stage precision/recall/F1/support and the confusion matrix.

    ``macro_f1`` is the unweighted mean F1 over the stages that occur in ``y_true`` or in
    ``y_pred`` (scikit-learn's ``f1_score(labels=those stages, average="macro",
    zero_division=0)``): a stage that neither the truth nor the model mentions is left out
    rather than counted as an F1 of 0, while a stage that is only predicted, or only true,
    counts with F1 0. ``macro_f1_labelled`` averages over the stages that occur in ``y_true``
    only (scikit-learn's ``labels=`` those): two models that predict different stages the
    truth never holds are then averaged over the same stages (a review found the rules'
    calls of a stage Olist's labels cannot hold tripled funnelcast's lead in ``macro_f1``).
    ``per_stage`` lists every stage in ``stages``; an absent stage has zeros.
    ``confusion_matrix`` has one row per true stage and one column per predicted stage, both in
    ``stages`` order.

    Raises ``ValueError`` when the two differ in length, are empty, or hold a label that is not
    in ``stages``.
    """
    vocabulary = _check_stages(stages)
    truth = _stage_codes(y_true, name="y_true", stages=vocabulary)
    predicted = _stage_codes(y_pred, name="y_pred", stages=vocabulary)
    _same_length(y_true=truth, y_pred=predicted)

    # everything from one confusion matrix (scikit-learn's definitions, zero_division=0):
    # precision tp / predicted, recall tp / true, F1 2 tp / (true + predicted)
    matrix = confusion_counts(truth, predicted, len(vocabulary))
    hits = np.diag(matrix).astype(np.float64)
    support, called = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = _share(hits, called)
    recall = _share(hits, support)
    f1 = f1_by_class(matrix)
    present = (support + called) > 0
    return {
        "macro_f1": float(f1[present].mean()),
        "macro_f1_labelled": float(f1[support > 0].mean()),
        "accuracy": float(hits.sum() / len(truth)),
        "rows": len(truth),
        "per_stage": {
            stage: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, stage in enumerate(vocabulary)
        },
        "confusion_matrix": [[int(n) for n in row] for row in matrix],
    }


def confusion_counts(
    truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], n_classes: int
) -> npt.NDArray[np.int64]:
    """Rows: true class, columns: predicted class, from class codes 0 .. n_classes - 1."""
    counts = np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def f1_by_class(matrix: npt.NDArray[np.int64] | FloatArray) -> FloatArray:
    """Each class's F1 from a confusion matrix (of counts, or of weighted counts): 2 tp /
    (true + predicted), 0 when both are 0 (scikit-learn's ``zero_division=0``)."""
    hits = np.diag(matrix).astype(np.float64)
    return _share(2 * hits, matrix.sum(axis=1) + matrix.sum(axis=0))


def _share(part: FloatArray, whole: npt.NDArray[Any]) -> FloatArray:
    """part / whole, 0 where whole is 0."""
    return np.divide(part, whole, out=np.zeros(len(part)), where=whole > 0)


def disagreement_table(
    y_true: Sequence[str] | np.ndarray,
    rules_pred: Sequence[str] | np.ndarray,
    model_pred: Sequence[str] | np.ndarray,
) -> pl.DataFrame:
    """Where the rules and the model predict different stages, and who was right.

    One row per (rules_stage, model_stage) pair that occurs among the disagreeing rows:
    ``contacts`` in the pair, how many of them the rules got right, the model got right, and
    neither got right (the two cannot both be right when they differ). Sorted by ``contacts``
    descending, then by the two stages. Rows where the two agree are left out; an empty frame
    means they agree everywhere.
    """
    truth = _text(y_true, name="y_true")
    rules = _text(rules_pred, name="rules_pred")
    model = _text(model_pred, name="model_pred")
    _same_length(y_true=truth, rules_pred=rules, model_pred=model)

    rows = pl.DataFrame({"truth": truth, "rules_stage": rules, "model_stage": model}).filter(
        pl.col("rules_stage") != pl.col("model_stage")
    )
    rows = rows.select(
        "rules_stage",
        "model_stage",
        rules_right=pl.col("rules_stage") == pl.col("truth"),
        model_right=pl.col("model_stage") == pl.col("truth"),
    )
    table = (
        rows.group_by("rules_stage", "model_stage")
        .agg(
            pl.len().alias("contacts"),
            pl.col("rules_right").sum().alias("rules_right"),
            pl.col("model_right").sum().alias("model_right"),
        )
        .with_columns(
            neither_right=pl.col("contacts") - pl.col("rules_right") - pl.col("model_right")
        )
        .select(list(_DISAGREEMENT_SCHEMA))
        .cast(_DISAGREEMENT_SCHEMA)
    )
    return table.sort(["contacts", "rules_stage", "model_stage"], descending=[True, False, False])


# --- propensity metrics -------------------------------------------------------------------------


def _bin_of(scores: FloatArray, bins: int) -> npt.NDArray[np.int64]:
    # bin k holds [k/bins, (k+1)/bins); the last bin also holds p == 1
    return np.minimum(np.floor(scores * bins).astype(np.int64), bins - 1)


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, *, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins on [0, 1].

    For each non-empty bin, |mean predicted probability - observed positive rate|, weighted by
    the bin's share of all rows. Bin k holds ``k/bins <= p < (k+1)/bins``; the last bin also
    holds ``p == 1``.
    """
    table = calibration_table(y_true, p, bins=bins)
    shares = table["rows"].to_numpy() / table["rows"].sum()
    gaps = np.abs(table["mean_predicted"].to_numpy() - table["observed_rate"].to_numpy())
    return float(np.sum(shares * gaps))


def calibration_table(y_true: np.ndarray, p: np.ndarray, *, bins: int = 10) -> pl.DataFrame:
    """The reliability diagram's points: per equal-width bin of ``p`` (empty bins omitted),
    its bounds, row count, mean predicted probability and observed positive rate."""
    bins = _positive_int(bins, name="bins")
    labels, scores = _binary_inputs(y_true, p)
    index = _bin_of(scores, bins)
    rows = np.bincount(index, minlength=bins)
    predicted_sum = np.bincount(index, weights=scores, minlength=bins)
    positives = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    filled = np.flatnonzero(rows)
    return pl.DataFrame(
        {
            "bin_lower": filled / bins,
            "bin_upper": (filled + 1) / bins,
            "rows": rows[filled],
            "mean_predicted": predicted_sum[filled] / rows[filled],
            "observed_rate": positives[filled] / rows[filled],
        },
        schema=_CALIBRATION_SCHEMA,
    )


def propensity_metrics(
    y_true: np.ndarray, p: np.ndarray, *, bins: int = 10
) -> dict[str, float | int]:
    """Ranking, probability and calibration quality of purchase probabilities.

    ``auc_roc`` (ROC AUC) and ``auc_pr`` (average precision) rank positives against negatives,
    so they are ``nan`` when ``y_true`` has only one class. ``brier`` is the mean squared error
    of ``p``; ``log_loss`` the mean negative log-likelihood with ``p`` clipped to
    ``[eps, 1 - eps]`` (float64 eps, as scikit-learn does) so a confident miss is large but
    finite; ``ece`` is ``expected_calibration_error`` over ``bins`` bins. ``base_rate`` is the
    share of positives.

    Raises ``ValueError`` when ``p`` is not finite or outside [0, 1], when the two differ in
    length or are empty, or when ``y_true`` is not bool or 0/1.
    """
    labels, scores = _binary_inputs(y_true, p)
    outcome = labels.astype(np.float64)
    if _both_classes(labels):
        auc_roc = float(roc_auc_score(labels, scores))
        auc_pr = float(average_precision_score(labels, scores))
    else:
        auc_roc = auc_pr = math.nan
    eps = float(np.finfo(np.float64).eps)
    clipped = np.clip(scores, eps, 1.0 - eps)
    log_loss = -np.mean(outcome * np.log(clipped) + (1.0 - outcome) * np.log1p(-clipped))
    positives = int(labels.sum())
    return {
        "auc_roc": auc_roc,
        "auc_pr": auc_pr,
        "brier": float(np.mean((scores - outcome) ** 2)),
        "log_loss": float(log_loss),
        "ece": expected_calibration_error(labels, scores, bins=bins),
        "rows": len(labels),
        "positives": positives,
        "base_rate": positives / len(labels),
    }


# --- weighted metrics (the promotion gate's bootstrap) ------------------------------------------


class WeightedStageF1:
    """``stage_metrics``' ``macro_f1`` and ``macro_f1_labelled`` with each row counted as often
    as its weight says (a bootstrap resample's draw counts): the labels are read once, and
    each call is one weighted ``np.bincount`` into the confusion matrix. A stage counts in
    the mean as ``stage_metrics`` counts it, by the weighted rows: one whose rows all weigh
    0 is absent. At unit weights both are ``stage_metrics``' own, bit for bit.

    Raises ``ValueError`` as ``stage_metrics`` does.
    """

    def __init__(
        self,
        y_true: Sequence[str] | np.ndarray,
        y_pred: Sequence[str] | np.ndarray,
        *,
        stages: Sequence[str] = STAGES,
    ) -> None:
        vocabulary = _check_stages(stages)
        truth = _stage_codes(y_true, name="y_true", stages=vocabulary)
        predicted = _stage_codes(y_pred, name="y_pred", stages=vocabulary)
        _same_length(y_true=truth, y_pred=predicted)
        self.classes = len(vocabulary)
        self.cells = truth * self.classes + predicted  # each row's cell of the matrix

    def __call__(self, weights: FloatArray) -> tuple[float, float]:
        """``(macro_f1, macro_f1_labelled)`` at these row weights."""
        n = self.classes
        matrix = np.bincount(self.cells, weights=weights, minlength=n * n).reshape(n, n)
        f1 = f1_by_class(matrix)
        support, called = matrix.sum(axis=1), matrix.sum(axis=0)
        present, labelled = (support + called) > 0, support > 0
        return (
            float(f1[present].mean()) if present.any() else math.nan,
            float(f1[labelled].mean()) if labelled.any() else math.nan,
        )


class WeightedAveragePrecision:
    """Average precision (``propensity_metrics``' ``auc_pr``) with row weights: scikit-learn's
    ``average_precision_score(y_true, p, sample_weight=weights)``. The rows are ranked once;
    each call is two cumulative sums over them. Tied scores are one threshold, as
    scikit-learn groups them: precision and recall change only where the score does.
    ``nan`` when the weighted positives are none (no positive drawn, or none there).

    Raises ``ValueError`` as ``propensity_metrics`` does.
    """

    def __init__(self, y_true: np.ndarray, p: np.ndarray) -> None:
        labels, scores = _binary_inputs(y_true, p)
        self.order = np.argsort(-scores, kind="stable")
        self.positive = labels[self.order]
        ranked = scores[self.order]
        # the last row of each run of equal scores: the thresholds
        self.ends = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]

    def __call__(self, weights: FloatArray) -> float:
        ranked = weights[self.order]
        flagged = np.cumsum(ranked)[self.ends]  # weight at or above each threshold
        hits = np.cumsum(np.where(self.positive, ranked, 0.0))[self.ends]
        if hits[-1] <= 0:
            return math.nan
        precision = _share(hits, flagged)
        recall_step = np.diff(hits, prepend=0.0)
        return float(max(0.0, np.sum(recall_step * precision) / hits[-1]))


def weighted_stage_f1(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    sample_weight: np.ndarray,
    *,
    stages: Sequence[str] = STAGES,
) -> tuple[float, float]:
    """``(macro_f1, macro_f1_labelled)`` of ``stage_metrics`` with row weights (one call of
    ``WeightedStageF1``)."""
    scorer = WeightedStageF1(y_true, y_pred, stages=stages)
    return scorer(_row_weights(sample_weight, len(scorer.cells)))


def weighted_average_precision(
    y_true: np.ndarray, p: np.ndarray, sample_weight: np.ndarray
) -> float:
    """scikit-learn's ``average_precision_score`` with ``sample_weight`` (one call of
    ``WeightedAveragePrecision``)."""
    scorer = WeightedAveragePrecision(y_true, p)
    return scorer(_row_weights(sample_weight, len(scorer.order)))


def _row_weights(values: Any, rows: int) -> FloatArray:
    weights = np.asarray(_one_per_row(values, name="sample_weight"), dtype=np.float64)
    _same_length(rows=np.empty(rows), sample_weight=weights)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must be finite and at least 0 per row")
    return weights


def lift_table(y_true: np.ndarray, p: np.ndarray, *, groups: int = 10) -> pl.DataFrame:
    """Lift and cumulative gains by score group: rows ranked by ``p`` (highest first) and cut
    into ``groups`` groups as equal in size as the rows allow (the first groups take one extra
    row when the count does not divide). ``decile`` 1 holds the highest scores.

    ``lift`` is the group's positive rate over the overall rate; ``cumulative_gain`` the share
    of all positives found in groups 1..k. Both are ``nan`` when there are no positives. Tied
    scores keep their input order, so a tie across a group boundary is split by position.
    With fewer rows than groups, each row is its own group.
    """
    groups = _positive_int(groups, name="groups")
    labels, scores = _binary_inputs(y_true, p)
    order = np.argsort(-scores, kind="stable")
    parts = [part for part in np.array_split(labels[order], groups) if part.size]
    rows = np.array([part.size for part in parts], dtype=np.int64)
    positives = np.array([int(part.sum()) for part in parts], dtype=np.int64)
    rate = positives / rows
    total = int(positives.sum())
    overall = total / len(labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = rate / overall if total else np.full(len(parts), np.nan)
        gain = np.cumsum(positives) / total if total else np.full(len(parts), np.nan)
    return pl.DataFrame(
        {
            "decile": np.arange(1, len(parts) + 1),
            "rows": rows,
            "positives": positives,
            "positive_rate": rate,
            "lift": lift,
            "cumulative_gain": gain,
        },
        schema=_LIFT_SCHEMA,
    )


def _thinned(count: int, max_points: int) -> npt.NDArray[np.int64]:
    """At most ``max_points`` evenly spread indices into ``count`` points, first and last kept."""
    if count <= max_points:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, count - 1, max_points)).astype(np.int64))


def roc_table(y_true: np.ndarray, p: np.ndarray, *, max_points: int = 200) -> pl.DataFrame:
    """The ROC curve, from the strictest threshold (``inf``: nothing flagged, at 0, 0) to the
    loosest (everything flagged, at 1, 1), thinned to at most ``max_points`` points with both
    ends kept. Empty when ``y_true`` has one class: the curve is undefined."""
    max_points = _positive_int(max_points, name="max_points", minimum=2)
    labels, scores = _binary_inputs(y_true, p)
    if not _both_classes(labels):
        return pl.DataFrame(schema=_ROC_SCHEMA)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    keep = _thinned(len(thresholds), max_points)
    return pl.DataFrame(
        {
            "threshold": thresholds[keep],
            "false_positive_rate": fpr[keep],
            "true_positive_rate": tpr[keep],
        },
        schema=_ROC_SCHEMA,
    )


def pr_table(y_true: np.ndarray, p: np.ndarray, *, max_points: int = 200) -> pl.DataFrame:
    """The precision-recall curve in the same order as ``roc_table``: from threshold ``inf``
    (nothing flagged: recall 0, precision 1 by convention) down to the lowest score, thinned to
    at most ``max_points`` points with both ends kept. Empty when ``y_true`` has one class."""
    max_points = _positive_int(max_points, name="max_points", minimum=2)
    labels, scores = _binary_inputs(y_true, p)
    if not _both_classes(labels):
        return pl.DataFrame(schema=_PR_SCHEMA)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # scikit-learn goes from the lowest threshold up and ends with the point that has no
    # threshold (nothing flagged); give that point ``inf`` and turn the curve round
    thresholds = np.append(thresholds, np.inf)[::-1]
    precision, recall = precision[::-1], recall[::-1]
    keep = _thinned(len(thresholds), max_points)
    return pl.DataFrame(
        {"threshold": thresholds[keep], "recall": recall[keep], "precision": precision[keep]},
        schema=_PR_SCHEMA,
    )


# --- the whole evaluation -----------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationInputs:
    """Every model's predictions on the same test rows, in the same row order."""

    stage_true: np.ndarray  # str labels, one per test row
    stage_pred: Mapping[str, np.ndarray]  # model name -> predicted stage per row
    purchase_true: np.ndarray  # bool per row
    propensity: Mapping[str, np.ndarray]  # model name -> P(purchase) per row
    feature_importance: Mapping[str, float]  # feature name -> total gain (may be empty)
    stages: tuple[str, ...] = STAGES


def evaluate(inputs: EvaluationInputs) -> dict[str, Any]:
    """``{"stage": {model: stage_metrics}, "propensity": {model: propensity_metrics}}``; a
    section is left out when it has no models."""
    out: dict[str, Any] = {}
    if inputs.stage_pred:
        out["stage"] = {
            model: stage_metrics(inputs.stage_true, predicted, stages=inputs.stages)
            for model, predicted in inputs.stage_pred.items()
        }
    if inputs.propensity:
        out["propensity"] = {
            model: propensity_metrics(inputs.purchase_true, p)
            for model, p in inputs.propensity.items()
        }
    return out


@dataclass(frozen=True)
class QualityRow:
    """One row of the test window's quality table: a metric for the rules, the RFM
    baseline and funnelcast's LightGBM models (None where one has no such figure)."""

    label: str
    rules: float | None
    rfm: float | None
    funnelcast: float | None


def quality_rows(metrics: Mapping[str, float]) -> list[QualityRow]:
    """The test window's quality from a run's flat metrics (``flat_metrics``), as
    ``funnelcast train`` prints it and the notebook shows it: the stages' macro-F1 over
    every stage and over the labels' stages (a stage only one side calls is no class of the
    other's average, and an F1 of 0 in the first), stage accuracy, and the purchase metrics
    beside the RFM baseline."""
    rows = [
        QualityRow(
            label,
            metrics.get(f"test.stage.rules.{key}"),
            None,
            metrics.get(f"test.stage.lightgbm.{key}"),
        )
        for key, label in (
            ("macro_f1", "stage macro-F1"),
            ("macro_f1_labelled", "  over the labels' stages"),
            ("accuracy", "stage accuracy"),
        )
    ]
    rows += [
        QualityRow(
            label,
            None,
            metrics.get(f"test.propensity.rfm_logistic.{key}"),
            metrics.get(f"test.propensity.lightgbm.{key}"),
        )
        for key, label in (
            ("auc_roc", "purchase AUC-ROC"),
            ("auc_pr", "purchase AUC-PR"),
            ("ece", "purchase ECE (calibration)"),
        )
    ]
    return rows


def buyers_line(metrics: Mapping[str, float]) -> str:
    """How many contacts bought in the test window (what the purchase metrics rest on), said
    under the quality table (``quality_rows``)."""
    buyers = metrics.get("test.propensity.lightgbm.positives")
    return "" if buyers is None else f"{int(buyers):,} buyers in the test window."


def write_evaluation_artifacts(
    inputs: EvaluationInputs,
    out_dir: Path,
    *,
    model: str = "lightgbm",
    baseline: str = "rules",
    metrics: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the evaluation report into ``out_dir`` (created if missing); returns the paths.

    * ``metrics.json``: ``metrics``, or ``evaluate(inputs)`` when not given, strict JSON with
      undefined values as ``null``;
    * stage models: ``per_stage_metrics.csv`` and ``confusion_matrix_<model>.csv/.png``;
    * propensity models, all in one file each with a ``model`` column and one line per model
      in each plot: ``roc_curve``, ``pr_curve``, ``calibration_curve``, ``lift_gains``
      (``.csv`` and ``.png``);
    * ``feature_importance.csv`` (every feature) and ``.png`` (the top 30), unless empty;
    * ``disagreement_<baseline>_vs_<model>.csv`` when both are stage models.

    Files of a section without models are not written. Model names are made safe for file
    names (anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(inputs) if metrics is None else metrics
    written: list[Path] = []

    def save_csv(frame: pl.DataFrame, name: str) -> None:
        path = out_dir / name
        frame.write_csv(path)
        written.append(path)

    def save_plot(draw: Callable[[Figure], None], name: str) -> None:
        path = out_dir / name
        _save_figure(draw, path)
        written.append(path)

    path = out_dir / "metrics.json"
    path.write_text(json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + "\n")
    written.append(path)

    if inputs.stage_pred:
        save_csv(_per_stage_frame(metrics["stage"]), "per_stage_metrics.csv")
        for name, values in metrics["stage"].items():
            matrix = values["confusion_matrix"]
            stem = f"confusion_matrix_{_file_safe(name)}"
            save_csv(_confusion_frame(matrix, inputs.stages), f"{stem}.csv")
            save_plot(_confusion_plotter(matrix, inputs.stages, name), f"{stem}.png")

    if inputs.propensity:
        truth = inputs.purchase_true
        curves = {
            "roc_curve": _by_model(inputs.propensity, lambda p: roc_table(truth, p)),
            "pr_curve": _by_model(inputs.propensity, lambda p: pr_table(truth, p)),
            "calibration_curve": _by_model(
                inputs.propensity, lambda p: calibration_table(truth, p)
            ),
            "lift_gains": _by_model(inputs.propensity, lambda p: lift_table(truth, p)),
        }
        scores = metrics["propensity"]
        plotters = {
            "roc_curve": _roc_plotter(curves["roc_curve"], scores),
            "pr_curve": _pr_plotter(curves["pr_curve"], scores),
            "calibration_curve": _calibration_plotter(curves["calibration_curve"], scores),
            "lift_gains": _lift_plotter(curves["lift_gains"]),
        }
        for name, frame in curves.items():
            save_csv(frame, f"{name}.csv")
            save_plot(plotters[name], f"{name}.png")

    if inputs.feature_importance:
        importance = pl.DataFrame(
            {
                "feature": list(inputs.feature_importance),
                "gain": [float(g) for g in inputs.feature_importance.values()],
            },
            schema={"feature": pl.String, "gain": pl.Float64},
        ).sort(["gain", "feature"], descending=[True, False])
        save_csv(importance, "feature_importance.csv")
        save_plot(
            _importance_plotter(importance.head(FEATURE_IMPORTANCE_BARS)),
            "feature_importance.png",
        )

    if baseline in inputs.stage_pred and model in inputs.stage_pred:
        table = disagreement_table(
            inputs.stage_true, inputs.stage_pred[baseline], inputs.stage_pred[model]
        )
        save_csv(table, f"disagreement_{_file_safe(baseline)}_vs_{_file_safe(model)}.csv")
    return written


# --- artifact helpers ---------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become None (``null``), numpy scalars Python's."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _per_stage_frame(stage: Mapping[str, Any]) -> pl.DataFrame:
    rows = [
        {"model": model, "stage": name, **scores}
        for model, values in stage.items()
        for name, scores in values["per_stage"].items()
    ]
    return pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "stage": pl.String,
            "precision": pl.Float64,
            "recall": pl.Float64,
            "f1": pl.Float64,
            "support": pl.Int64,
        },
    )


def _confusion_frame(matrix: list[list[int]], stages: Sequence[str]) -> pl.DataFrame:
    # one row per true stage, one column per predicted stage, named so that the file says so
    columns: dict[str, list[Any]] = {"true_stage": list(stages)}
    for j, stage in enumerate(stages):
        columns[f"predicted_{stage}"] = [row[j] for row in matrix]
    return pl.DataFrame(columns)


def _by_model(
    propensity: Mapping[str, np.ndarray], table: Callable[[np.ndarray], pl.DataFrame]
) -> pl.DataFrame:
    frames = [
        table(p).select(pl.lit(name, dtype=pl.String).alias("model"), pl.all())
        for name, p in propensity.items()
    ]
    return pl.concat(frames, how="vertical")


# --- plots --------------------------------------------------------------------------------------


def _save_figure(draw: Callable[[Figure], None], path: Path) -> None:
    """Draw on a fresh Agg-backed figure and save it as PNG. The figure never touches pyplot,
    so there is no global figure to close and nothing is left open between calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    try:
        draw(figure)
        figure.savefig(path, dpi=120)
    finally:
        figure.clear()


def _models_in(frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    return [(str(key[0]), part) for key, part in frame.group_by("model", maintain_order=True)]


def _score_label(name: str, value: Any, metric: str) -> str:
    number = float(value) if value is not None else math.nan
    return f"{name} ({metric} {number:.3f})" if math.isfinite(number) else f"{name} ({metric} n/a)"


def _note_if_empty(axes: Axes, frame: pl.DataFrame) -> None:
    if frame.is_empty():
        axes.text(
            0.5,
            0.5,
            "undefined: the test set has one class",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )


def _confusion_plotter(
    matrix: list[list[int]], stages: Sequence[str], model: str
) -> Callable[[Figure], None]:
    def draw(figure: Figure) -> None:
        counts = np.asarray(matrix, dtype=np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        # colour by share of the true stage, so rare stages are as visible as common ones
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        figure.set_size_inches(8.0, 7.0)
        axes = figure.add_subplot()
        image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        ticks = np.arange(len(stages))
        axes.set_xticks(ticks, labels=list(stages), rotation=45, ha="right")
        axes.set_yticks(ticks, labels=list(stages))
        for i in range(len(stages)):
            for j in range(len(stages)):
                axes.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if shares[i, j] > 0.5 else "black",
                    fontsize=8,
                )
        axes.set_xlabel("Predicted stage")
        axes.set_ylabel("True stage")
        axes.set_title(f"Stage confusion matrix: {model} (counts; colour = share of true stage)")
        figure.colorbar(image, ax=axes, label="Share of the true stage's contacts")

    return draw


def _roc_plotter(curves: pl.DataFrame, scores: Mapping[str, Any]) -> Callable[[Figure], None]:
    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        for name, part in _models_in(curves):
            axes.plot(
                part["false_positive_rate"],
                part["true_positive_rate"],
                label=_score_label(name, scores[name]["auc_roc"], "AUC"),
            )
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        _note_if_empty(axes, curves)
        axes.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="False positive rate (non-buyers flagged)",
            ylabel="True positive rate (buyers flagged)",
            title="Purchase propensity: ROC curve",
        )
        axes.legend(loc="lower right")

    return draw


def _pr_plotter(curves: pl.DataFrame, scores: Mapping[str, Any]) -> Callable[[Figure], None]:
    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        for name, part in _models_in(curves):
            axes.plot(
                part["recall"],
                part["precision"],
                label=_score_label(name, scores[name]["auc_pr"], "AP"),
            )
        base_rate = next(iter(scores.values()))["base_rate"]
        axes.axhline(base_rate, linestyle="--", color="grey", label=f"base rate {base_rate:.3f}")
        _note_if_empty(axes, curves)
        axes.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="Recall (share of buyers flagged)",
            ylabel="Precision (share of flagged who buy)",
            title="Purchase propensity: precision-recall curve",
        )
        axes.legend(loc="upper right")

    return draw


def _calibration_plotter(
    curves: pl.DataFrame, scores: Mapping[str, Any]
) -> Callable[[Figure], None]:
    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
        for name, part in _models_in(curves):
            axes.plot(
                part["mean_predicted"],
                part["observed_rate"],
                marker="o",
                label=_score_label(name, scores[name]["ece"], "ECE"),
            )
        axes.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="Mean predicted probability (per bin)",
            ylabel="Observed purchase rate (per bin)",
            title="Purchase propensity: calibration",
        )
        axes.legend(loc="upper left")

    return draw


def _lift_plotter(curves: pl.DataFrame) -> Callable[[Figure], None]:
    def draw(figure: Figure) -> None:
        figure.set_size_inches(11.0, 5.0)
        lift_axes, gain_axes = figure.subplots(1, 2)
        for name, part in _models_in(curves):
            lift_axes.plot(part["decile"], part["lift"], marker="o", label=name)
            share = np.concatenate([[0.0], np.cumsum(part["rows"].to_numpy())])
            share = share / share[-1]
            gain = np.concatenate([[0.0], part["cumulative_gain"].to_numpy()])
            gain_axes.plot(share, gain, marker="o", label=name)
        lift_axes.axhline(1.0, linestyle="--", color="grey", label="random")
        lift_axes.set(
            xlabel="Decile (1 = highest scores)",
            ylabel="Lift (purchase rate / overall rate)",
            title="Lift by decile",
        )
        lift_axes.legend(loc="upper right")
        gain_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
        gain_axes.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="Share of contacts targeted (highest scores first)",
            ylabel="Share of all buyers captured",
            title="Cumulative gains",
        )
        gain_axes.legend(loc="lower right")
        figure.suptitle("Purchase propensity: lift and gains")

    return draw


def _importance_plotter(top: pl.DataFrame) -> Callable[[Figure], None]:
    def draw(figure: Figure) -> None:
        figure.set_size_inches(8.0, max(3.0, 0.3 * top.height + 1.5))
        axes = figure.add_subplot()
        # largest at the top
        axes.barh(top["feature"].to_list()[::-1], top["gain"].to_list()[::-1])
        axes.set(
            xlabel="Total gain",
            ylabel="Feature",
            title=f"Feature importance: total gain, top {top.height}",
        )

    return draw
