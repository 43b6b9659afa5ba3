"""The promotion gate's paired bootstrap: how far two models' scores on one test window may
differ by the luck of which rows the window holds.

Both models are scored on the same rows (the challenger's test window), so the difference is
paired: each resample draws rows with replacement (given groups, whole groups: a contact's
snapshots in the test weeks are not independent, and drawing them apart would make the
interval too narrow) and scores both models on that same draw, as row weights (how often a row
was drawn) through ``training.evaluation``'s weighted metrics. The 2.5th and 97.5th
percentiles of the differences are the 95 % percentile interval. The draws come from
``seed`` alone, so one test set and one seed give one interval: a decision can be redone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features.vocabulary import STAGES
from training.evaluation import WeightedAveragePrecision, WeightedStageF1

FloatArray = npt.NDArray[np.float64]

# the gate's metrics that have a weighted form here (training.registry.GATE_METRICS' keys)
STAGE_KEYS = ("macro_f1", "macro_f1_labelled")
PROPENSITY_KEY = "auc_pr"


@dataclass(frozen=True)
class Predictions:
    """What one model (or the baselines) said for each test row."""

    stage: npt.NDArray[np.str_]
    propensity: FloatArray | None  # None: no per-row probabilities (an older run's RFM baseline)


@dataclass(frozen=True)
class Interval:
    """The 95 % percentile interval of challenger - champion over the resamples."""

    low: float
    high: float
    resamples: int  # those in which both scores were defined (AUC-PR needs a buyer drawn)

    @property
    def wholly_below_zero(self) -> bool:
        """Worse beyond noise: even the interval's top is a loss. An interval that reaches 0
        (a model against itself: every difference is 0) is not."""
        return self.high < 0


def resample_weights(
    rows: int, *, groups: npt.NDArray[np.integer] | None, resamples: int, seed: int
) -> Iterator[FloatArray]:
    """Each resample's row weights: how often each row was drawn. Without groups every row is
    drawn on its own, ``rows`` draws; with them (one number per row) as many groups as there
    are are drawn, and a row weighs what its group drew, so a group's rows move together."""
    if groups is None:
        codes, count = np.arange(rows), rows
    else:
        if len(groups) != rows:
            raise ValueError(f"groups has {len(groups)} values for {rows} rows; give one per row")
        _, codes = np.unique(groups, return_inverse=True)
        count = int(codes.max()) + 1 if rows else 0
    generator = np.random.default_rng(seed)
    for _ in range(resamples):
        drawn = np.bincount(generator.integers(0, count, size=count), minlength=count)
        yield drawn[codes].astype(np.float64)


def paired_intervals(
    stage_true: Sequence[str] | np.ndarray,
    purchase_true: np.ndarray,
    challenger: Predictions,
    champion: Predictions,
    *,
    groups: npt.NDArray[np.integer] | None = None,
    resamples: int,
    seed: int,
    stages: Sequence[str] = STAGES,
) -> dict[str, Interval]:
    """The interval of challenger - champion for each gate metric: both macro-F1s, and AUC-PR
    when both have per-row propensities. A metric undefined in every resample (AUC-PR of a
    window without buyers) has none."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1; got {resamples}")
    ours = WeightedStageF1(stage_true, challenger.stage, stages=stages)
    theirs = WeightedStageF1(stage_true, champion.stage, stages=stages)
    keys = list(STAGE_KEYS)
    ranked: tuple[WeightedAveragePrecision, WeightedAveragePrecision] | None = None
    if challenger.propensity is not None and champion.propensity is not None:
        ranked = (
            WeightedAveragePrecision(purchase_true, challenger.propensity),
            WeightedAveragePrecision(purchase_true, champion.propensity),
        )
        keys.append(PROPENSITY_KEY)
    differences = np.full((resamples, len(keys)), np.nan)
    draws = resample_weights(len(ours.cells), groups=groups, resamples=resamples, seed=seed)
    for b, weights in enumerate(draws):
        differences[b, :2] = np.subtract(ours(weights), theirs(weights))
        if ranked is not None:
            differences[b, 2] = ranked[0](weights) - ranked[1](weights)
    intervals = {}
    for k, key in enumerate(keys):
        defined = differences[:, k][~np.isnan(differences[:, k])]
        if defined.size:
            low, high = np.percentile(defined, [2.5, 97.5])
            intervals[key] = Interval(low=float(low), high=float(high), resamples=defined.size)
    return intervals
