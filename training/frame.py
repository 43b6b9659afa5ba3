"""From feature tables to model inputs: snapshot dates, out-of-time splits, model matrices.

Splits are by time, never by random rows: the earliest snapshots train, later ones validate
(early stopping, calibration, decision weights) and the latest test. A snapshot's label looks
``horizon_days`` ahead, so a training snapshot whose horizon reaches into the validation
period is left out (an embargo), and the same between validation and test: no label of an
earlier split sees the period a later split is judged on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd
import polars as pl

from features.engine import feature_columns
from features.errors import InputError


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
        raise InputError(
            f"{len(dates)} snapshots are too few for an out-of-time split with a "
            f"{horizon_days}-day horizon ({test} test, {validation} validation, at least one "
            "training snapshot, and an embargo between them); give a longer history or "
            "a shorter --horizon"
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
