"""From feature tables to model inputs: snapshot dates, out-of-time splits, model matrices.

Splits are by time, never by random rows: the earliest snapshots train, later ones validate
(early stopping, calibration, decision weights) and the latest test. A snapshot's label looks
``horizon_days`` ahead, so a training snapshot whose horizon reaches into the validation
period is left out (an embargo), and the same between validation and test: no label of an
earlier split sees the period a later split is judged on.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from features.engine import feature_columns
from features.errors import InputError

SAMPLE_WEIGHT = "sample_weight"


def snapshot_dates(
    first_event: dt.datetime,
    until: dt.datetime,
    *,
    horizon_days: int,
    every_days: int,
    min_history_days: int,
    count: int,
) -> list[dt.datetime]:
    """Up to ``count`` snapshots (midnight UTC) every ``every_days`` days, counted back from the
    last date whose horizon fits in the data, none earlier than ``min_history_days`` after the
    first event."""
    last = until - dt.timedelta(days=horizon_days)
    first = first_event.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = first + dt.timedelta(days=min_history_days)
    dates: list[dt.datetime] = []
    moment = dt.datetime.combine(last.date(), dt.time(), tzinfo=dt.UTC)
    while moment >= first and len(dates) < count:
        dates.append(moment)
        moment -= dt.timedelta(days=every_days)
    return sorted(dates)


@dataclass(frozen=True)
class TimeSplit:
    """Snapshot dates of each split; ``dropped`` are the embargoed ones."""

    train: tuple[dt.datetime, ...]
    validation: tuple[dt.datetime, ...]
    test: tuple[dt.datetime, ...]
    dropped: tuple[dt.datetime, ...]

    def describe(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {}
        for name in ("train", "validation", "test"):
            dates: tuple[dt.datetime, ...] = getattr(self, name)
            out[f"{name}_snapshots"] = len(dates)
            out[f"{name}_from"] = f"{dates[0]:%Y-%m-%d}"
            out[f"{name}_to"] = f"{dates[-1]:%Y-%m-%d}"
        out["embargoed_snapshots"] = len(self.dropped)
        return out


def min_snapshots(*, horizon_days: int, every_days: int, validation: int, test: int) -> int:
    """The fewest snapshots, ``every_days`` apart, that ``split_by_time`` can split: the test and
    validation ones, one training snapshot, and before each split the snapshots whose label
    horizon would reach into it (the embargo)."""
    embargo = -(-horizon_days // every_days) - 1  # snapshots closer than a horizon apart
    boundaries = 2 if validation else 1
    return test + validation + 1 + boundaries * embargo


def split_by_time(
    dates: list[dt.datetime], *, horizon_days: int, validation: int, test: int
) -> TimeSplit:
    """The last ``test`` snapshots test, the ``validation`` before them validate, the rest
    train; snapshots whose label horizon overlaps the next split are embargoed."""
    dates = sorted(dates)
    test_dates = dates[-test:]
    rest = [d for d in dates[:-test] if d + dt.timedelta(days=horizon_days) <= test_dates[0]]
    validation_dates = rest[-validation:] if validation else []
    start = validation_dates[0] if validation_dates else test_dates[0]
    train_dates = [
        d for d in rest[: len(rest) - validation] if d + dt.timedelta(days=horizon_days) <= start
    ]
    dropped = sorted(set(dates) - set(train_dates) - set(validation_dates) - set(test_dates))
    if not train_dates or len(validation_dates) < validation:
        gaps = {(b - a).days for a, b in itertools.pairwise(dates)} - {0}
        every = min(gaps) if gaps else horizon_days
        needed = min_snapshots(
            horizon_days=horizon_days, every_days=every, validation=validation, test=test
        )
        raise InputError(
            f"{len(dates)} snapshots are too few for an out-of-time split with a "
            f"{horizon_days}-day horizon and snapshots {every} days apart: it needs at least "
            f"{needed} ({test} test, {validation} validation, one training snapshot, and "
            "before each split those whose labels would reach into it); raise `snapshots:` "
            "under `training:` in your --config or your source mapping if the history is long "
            "enough (the snapshots that fit are listed below), else give a longer history, a "
            "shorter horizon "
            "(`horizon_days:`, or `train --horizon`), or a larger `snapshot_every_days`"
        )
    return TimeSplit(tuple(train_dates), tuple(validation_dates), tuple(test_dates), tuple(dropped))


def rows_of(frame: pl.DataFrame, dates: tuple[dt.datetime, ...]) -> pl.DataFrame:
    """The rows of a training frame at the given snapshot dates."""
    return frame.filter(pl.col("as_of").is_in(list(dates)))


def require_features(frame: pl.DataFrame, names: list[str]) -> None:
    """An ``InputError`` naming the model's features that the table lacks."""
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise InputError(
            f"the feature table lacks the model's features {missing[:5]}"
            f"{' and more' if len(missing) > 5 else ''}; build features with the model's spec"
        )


def model_matrix(frame: pl.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """The feature columns as a pandas frame for LightGBM and scikit-learn: numbers as float32
    (missing stays NaN), categoricals and the rules stage as pandas categoricals (LightGBM
    splits on them natively). ``columns`` fixes the set and order (the model's, at predict)."""
    wanted = columns if columns is not None else feature_columns(frame)
    require_features(frame, wanted)
    selected = frame.select(wanted)
    out: dict[str, Any] = {}
    for name in wanted:
        series = selected[name]
        if series.dtype in (pl.Categorical, pl.String) or isinstance(series.dtype, pl.Enum):
            categories = (
                list(series.dtype.categories)
                if isinstance(series.dtype, pl.Enum)
                else sorted(series.drop_nulls().cast(pl.String).unique().to_list())
            )
            out[name] = pd.Categorical(series.cast(pl.String).to_list(), categories=categories)
        else:
            # float32 halves the memory of the largest frame; trees split on binned values,
            # so the precision lost is far below any split that matters
            out[name] = pd.Series(series.cast(pl.Float32).to_numpy(), name=name)
    return pd.DataFrame(out)


def narrowed(rows: pl.DataFrame) -> pl.DataFrame:
    """Numeric features as float32, the precision the models read them at (``model_matrix``):
    half the memory of a training frame, and the same model inputs."""
    numeric = [
        name
        for name, dtype in rows.schema.items()
        if name not in ("contact_id", "as_of") and dtype.is_numeric() and dtype != pl.Float32
    ]
    return rows.with_columns(pl.col(numeric).cast(pl.Float32)) if numeric else rows


@dataclass
class SnapshotSampler:
    """Applied to each snapshot as it is built (``build_training_frame(each=...)``): numbers
    narrowed to float32, and large snapshots sampled.

    - A *training* snapshot with more than ``rows_per_snapshot`` rows keeps every contact whose
      rules stage is not dormant and a random share of the dormant ones (enough to fill the
      budget, no less than ``min_rate``), each weighing 1 / share in ``sample_weight`` so that
      the models still learn the true mix. A large log's snapshots are mostly dormant contacts
      (61 % at 10 M simulated events), who cost memory and fitting time and carry the least
      signal; the weights keep the estimates unbiased. When the active contacts alone overfill
      the budget, every stage is capped at the same number of rows (the rarer stages stay
      whole, the largest are sampled down to the cap), weighted the same way. No stage keeps
      less than ``min_rate`` of its rows, even when that overfills the budget.
    - A *validation* snapshot with more than ``validation_rows_per_snapshot`` rows keeps a
      uniform random share of its rows (weight 1: every row had the same chance). Validation
      only steers early stopping, calibration and the decision weights, which a few hundred
      thousand rows settle; scoring it whole each boosting round cost more than the fit.
    - *Test* snapshots are never sampled: they judge the model on every contact.

    Rows are drawn by a generator seeded with ``seed`` and the date."""

    train_dates: frozenset[dt.datetime]
    rows_per_snapshot: int
    min_rate: float
    seed: int
    validation_dates: frozenset[dt.datetime] = frozenset()
    validation_rows_per_snapshot: int | None = None  # None: validation is never sampled
    rates: dict[str, float] = field(default_factory=dict)  # snapshot -> share of dormant kept
    # snapshot -> rules stage -> share kept, for the active stages sampled (rare: only when the
    # active contacts alone overfill the budget)
    active_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    validation_rates: dict[str, float] = field(default_factory=dict)  # snapshot -> share kept
    rows_built: int = 0
    rows_kept: int = 0

    def __call__(self, as_of: dt.datetime, rows: pl.DataFrame) -> pl.DataFrame:
        self.rows_built += rows.height
        rows = narrowed(rows)
        weight: pl.Expr | pl.Series = pl.lit(1.0, pl.Float32)
        if (
            as_of in self.train_dates
            and rows.height > self.rows_per_snapshot
            and "rules_stage" in rows.columns
        ):
            stage = rows["rules_stage"].cast(pl.String).fill_null("none")
            names = np.asarray(stage.unique().sort().to_list())
            codes = stage.replace_strict(
                names.tolist(), list(range(len(names))), return_dtype=pl.Int64
            ).to_numpy()
            rates = _capped_rates(
                np.bincount(codes, minlength=len(names)),
                budget=self.rows_per_snapshot,
                floor=self.min_rate,
            )
            if (rates < 1.0).any():
                row_rates = rates[codes]
                keep = self._draw(as_of, rows.height) < row_rates
                rows = rows.filter(pl.Series(keep))
                weight = pl.Series(1.0 / row_rates[keep], dtype=pl.Float32)
                date = f"{as_of:%Y-%m-%d}"
                for name, rate in zip(names, rates, strict=True):
                    if rate < 1.0 and name == "dormant":
                        self.rates[date] = round(float(rate), 6)
                    elif rate < 1.0:
                        self.active_rates.setdefault(date, {})[str(name)] = round(float(rate), 6)
        elif (
            as_of in self.validation_dates
            and self.validation_rows_per_snapshot is not None
            and rows.height > self.validation_rows_per_snapshot
        ):
            rate = self.validation_rows_per_snapshot / rows.height
            rows = rows.filter(pl.Series(self._draw(as_of, rows.height) < rate))
            self.validation_rates[f"{as_of:%Y-%m-%d}"] = round(rate, 6)
        self.rows_kept += rows.height
        return rows.with_columns(weight.alias(SAMPLE_WEIGHT))

    @property
    def sampled_training(self) -> bool:
        """Whether any training row was sampled (and so weighs more than 1)."""
        return bool(self.rates or self.active_rates)

    def _draw(self, as_of: dt.datetime, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, as_of.toordinal()]).random(n)


def _capped_rates(counts: np.ndarray, *, budget: int, floor: float) -> np.ndarray:
    """The share of each group to keep so that about ``budget`` rows remain: every group is
    capped at the same number of rows (the largest cap that fits), groups below it are kept
    whole, and no share falls below ``floor``. With the active stages under the cap, the one
    group sampled is dormant, at (budget - active rows) / dormant rows."""
    counts = counts.astype(np.float64)

    def shares(cap: float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            capped = np.where(counts > 0, np.minimum(1.0, cap / counts), 1.0)
        return np.maximum(floor, capped)

    if counts.sum() <= budget:
        return np.ones_like(counts)
    low, high = 0.0, float(counts.max())  # kept(high) = everything > budget
    for _ in range(60):
        middle = (low + high) / 2
        if float((shares(middle) * counts).sum()) <= budget:
            low = middle
        else:
            high = middle
    return shares(low)
