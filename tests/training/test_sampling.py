"""Large logs: training snapshots keep every active contact and a weighted sample of the
dormant ones; validation snapshots keep a uniform sample; test snapshots are never sampled."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from features.engine import STAGE_TYPE
from features.settings import load_rules_settings
from features.simulator import load_simulator_settings, simulate
from features.spec import load_feature_spec
from training.frame import SAMPLE_WEIGHT, SnapshotSampler
from training.pipeline import CONTACT_GROUP, TrainingResult, train_models
from training.settings import load_training_settings

TRAIN = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
VALIDATION = dt.datetime(2026, 3, 23, tzinfo=dt.UTC)
TEST = dt.datetime(2026, 4, 6, tzinfo=dt.UTC)
SMALL = {"min_train_positives": 20, "min_eval_positives": 5}  # a small simulation trains


def _snapshot(as_of: dt.datetime, active: int, dormant: int) -> pl.DataFrame:
    n = active + dormant
    stages = ["awareness", "intent", "conversion"]
    return pl.DataFrame(
        {
            "contact_id": [f"c{i:06d}" for i in range(n)],
            "as_of": [as_of] * n,
            "email_open_count_7d": pl.Series(range(n), dtype=pl.Int64),
            "spend_28d": pl.Series([i * 1.5 for i in range(n)], dtype=pl.Float64),
            "rules_stage": pl.Series(
                [stages[i % 3] for i in range(active)] + ["dormant"] * dormant, dtype=STAGE_TYPE
            ),
        }
    )


def _sampler(
    rows_per_snapshot: int, min_rate: float = 0.02, validation_rows: int | None = None
) -> SnapshotSampler:
    return SnapshotSampler(
        train_dates=frozenset({TRAIN}),
        rows_per_snapshot=rows_per_snapshot,
        min_rate=min_rate,
        seed=3,
        validation_dates=frozenset({VALIDATION}),
        validation_rows_per_snapshot=validation_rows,
    )


def test_a_large_training_snapshot_keeps_the_active_and_a_weighted_share_of_the_dormant() -> None:
    rows = _snapshot(TRAIN, active=2_000, dormant=20_000)
    sampler = _sampler(rows_per_snapshot=6_000)
    kept = sampler(TRAIN, rows)
    rate = (6_000 - 2_000) / 20_000
    assert sampler.rates == {"2026-03-02": pytest.approx(rate)}
    is_dormant = kept["rules_stage"].cast(pl.String) == "dormant"
    # every active contact is kept, with weight 1
    assert kept.filter(~is_dormant).height == 2_000
    assert (kept.filter(~is_dormant)[SAMPLE_WEIGHT] == 1.0).all()
    # about `rate` of the dormant ones, each standing for 1 / rate
    sampled = kept.filter(is_dormant)
    spread = 5 * math.sqrt(20_000 * rate * (1 - rate))
    assert abs(sampled.height - 20_000 * rate) < spread
    assert np.allclose(sampled[SAMPLE_WEIGHT].to_numpy(), 1 / rate)
    assert abs(float(kept[SAMPLE_WEIGHT].sum()) - rows.height) < spread / rate
    # the kept rows are the original rows, narrowed to float32
    assert kept.schema["email_open_count_7d"] == pl.Float32
    assert kept.schema["spend_28d"] == pl.Float32
    original = rows.filter(pl.col("contact_id").is_in(kept["contact_id"].to_list()))
    counts = original["email_open_count_7d"].to_list()
    assert kept["email_open_count_7d"].to_list() == [float(v) for v in counts]
    assert (sampler.rows_built, sampler.rows_kept) == (22_000, kept.height)
    # the same seed and date draw the same rows
    assert _sampler(rows_per_snapshot=6_000)(TRAIN, rows).equals(kept)


def test_the_dormant_share_never_falls_below_the_minimum() -> None:
    sampler = _sampler(rows_per_snapshot=3_500, min_rate=0.1)
    kept = sampler(TRAIN, _snapshot(TRAIN, active=3_000, dormant=10_000))
    # 10 % of the dormant (1,000) leaves 2,500 rows for the three active stages of 1,000
    assert sampler.rates == {"2026-03-02": 0.1}
    share = round(2_500 / 3_000, 6)
    assert sampler.active_rates == {
        "2026-03-02": {"awareness": share, "conversion": share, "intent": share}
    }
    dormant = kept.filter(pl.col("rules_stage").cast(pl.String) == "dormant").height
    assert 800 < dormant < 1_200
    assert 3_200 < kept.height < 3_800


def test_active_stages_that_overfill_the_budget_are_capped_alike_and_rare_ones_kept_whole() -> None:
    stages = ["awareness"] * 30_000 + ["intent"] * 10_000 + ["conversion"] * 500
    n = len(stages) + 5_000
    rows = pl.DataFrame(
        {
            "contact_id": [f"c{i:06d}" for i in range(n)],
            "as_of": [TRAIN] * n,
            "rules_stage": pl.Series(stages + ["dormant"] * 5_000, dtype=STAGE_TYPE),
        }
    )
    sampler = _sampler(rows_per_snapshot=12_500, min_rate=0.02)
    kept = sampler(TRAIN, rows)
    # a cap c with min(30k, c) + min(10k, c) + 500 + max(100, min(5k, c)) = 12.5k: c = 4,000
    assert sampler.active_rates == {
        "2026-03-02": {"awareness": round(4_000 / 30_000, 6), "intent": 0.4}
    }
    assert sampler.rates == {"2026-03-02": 0.8}
    assert sampler.sampled_training
    by_stage = kept.group_by(pl.col("rules_stage").cast(pl.String)).agg(
        n=pl.len(), weight=pl.col(SAMPLE_WEIGHT).sum(), top=pl.col(SAMPLE_WEIGHT).max()
    )
    counts = dict(zip(by_stage["rules_stage"], by_stage["n"], strict=True))
    weights = dict(zip(by_stage["rules_stage"], by_stage["weight"], strict=True))
    tops = dict(zip(by_stage["rules_stage"], by_stage["top"], strict=True))
    assert counts["conversion"] == 500  # the rare stage: whole, weight 1
    assert tops["conversion"] == 1.0
    for stage, total, rate in (("awareness", 30_000, 4 / 30), ("intent", 10_000, 0.4)):
        spread = 5 * math.sqrt(total * rate * (1 - rate))
        assert abs(counts[stage] - 4_000) < spread
        assert tops[stage] == pytest.approx(1 / rate)
        assert abs(weights[stage] - total) < spread / rate  # the weights restore the mix
    assert abs(kept.height - 12_500) < 400


def test_no_stage_keeps_less_than_the_minimum_share_even_over_the_budget() -> None:
    sampler = _sampler(rows_per_snapshot=1_000, min_rate=0.1)
    kept = sampler(TRAIN, _snapshot(TRAIN, active=3_000, dormant=10_000))
    assert sampler.rates == {"2026-03-02": 0.1}
    assert sampler.active_rates == {
        "2026-03-02": {"awareness": 0.1, "conversion": 0.1, "intent": 0.1}
    }
    assert 1_000 < kept.height < 1_600  # 10 % of every stage: 1,300 expected


@pytest.mark.parametrize(("as_of", "budget"), [(TEST, 100), (TRAIN, 50_000)])
def test_test_snapshots_and_small_ones_are_not_sampled(as_of: dt.datetime, budget: int) -> None:
    rows = _snapshot(as_of, active=500, dormant=5_000)
    sampler = _sampler(rows_per_snapshot=budget)
    kept = sampler(as_of, rows)
    assert sampler.rates == {}
    assert kept["contact_id"].to_list() == rows["contact_id"].to_list()
    assert (kept[SAMPLE_WEIGHT] == 1.0).all()
    assert kept["spend_28d"].to_list() == pytest.approx(rows["spend_28d"].to_list())


def test_a_large_validation_snapshot_keeps_a_uniform_sample_with_weight_one() -> None:
    rows = _snapshot(VALIDATION, active=4_000, dormant=16_000)
    sampler = _sampler(rows_per_snapshot=100, validation_rows=5_000)
    kept = sampler(VALIDATION, rows)
    assert sampler.validation_rates == {"2026-03-23": 0.25}
    assert sampler.rates == {}
    assert abs(kept.height - 5_000) < 5 * math.sqrt(20_000 * 0.25 * 0.75)
    # every stage keeps about the same share: the mix of validation is unchanged
    is_dormant = kept["rules_stage"].cast(pl.String) == "dormant"
    assert 0.75 < int(is_dormant.sum()) / kept.height < 0.85
    assert (kept[SAMPLE_WEIGHT] == 1.0).all()
    assert set(kept["contact_id"].to_list()) < set(rows["contact_id"].to_list())
    assert _sampler(rows_per_snapshot=100, validation_rows=5_000)(VALIDATION, rows).equals(kept)
    # a test snapshot of the same size is whole
    assert sampler(TEST, rows.with_columns(as_of=pl.lit(TEST))).height == rows.height


@pytest.fixture(scope="module")
def sim() -> object:
    return simulate(
        load_simulator_settings(), contacts=2500, days=110, seed=5, start=dt.date(2026, 1, 1)
    )


def _train(sim: object, **settings: object) -> TrainingResult:
    return train_models(
        sim.events,  # type: ignore[attr-defined]
        sim.contacts,  # type: ignore[attr-defined]
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=load_training_settings(**SMALL, **settings),
    )


@pytest.fixture(scope="module")
def full(sim: object) -> TrainingResult:
    """A training run on every row, to compare the sampled runs with."""
    return _train(sim)


def test_training_on_a_sample_learns_the_true_mix_and_tests_on_every_contact(
    sim: object, full: TrainingResult
) -> None:
    assert full.data_summary["dormant_sample_rates"] == {}
    budget = full.data_summary["train_rows"] // 3
    sampled = _train(sim, max_training_rows=budget, min_dormant_sample_rate=0.05)
    summary = sampled.data_summary
    assert summary["dormant_sample_rates"]
    assert set(summary["dormant_sample_rates"]) == {f"{d:%Y-%m-%d}" for d in sampled.split.train}
    assert summary["train_rows"] < full.data_summary["train_rows"]
    # validation and test are whole (validation is below max_validation_rows)
    assert summary["validation_sample_rates"] == {}
    for split in ("validation", "test"):
        assert summary[f"{split}_rows"] == full.data_summary[f"{split}_rows"]
    assert sampled.test_set.height == full.test_set.height
    assert SAMPLE_WEIGHT not in sampled.test_set.columns
    assert SAMPLE_WEIGHT not in sampled.feature_names
    # the stage model's class weights come from the weighted counts: close to the full run's
    # (unweighted, dormant rows would be rarer and their class weight far higher)
    for stage in ("dormant", "awareness"):
        assert sampled.stage_model.class_weight_[stage] == pytest.approx(
            full.stage_model.class_weight_[stage], rel=0.15
        )
    # the embargoed snapshots are not built
    assert summary["snapshot_rows_built"] == full.data_summary["snapshot_rows_built"]
    assert summary["embargoed_snapshots"] > 0


def test_a_sampled_validation_window_leaves_training_and_test_whole(
    sim: object, full: TrainingResult
) -> None:
    budget = full.data_summary["validation_rows"] // 2
    sampled = _train(sim, max_validation_rows=budget)
    summary = sampled.data_summary
    assert set(summary["validation_sample_rates"]) == {
        f"{d:%Y-%m-%d}" for d in sampled.split.validation
    }
    assert summary["validation_rows"] < 0.7 * full.data_summary["validation_rows"]
    assert summary["train_rows"] == full.data_summary["train_rows"]
    assert summary["test_rows"] == full.data_summary["test_rows"]
    # the same rows; each run numbers the contacts anew (a seed nobody keeps), alike in how
    # they group the rows
    assert sampled.test_set.drop(CONTACT_GROUP).equals(full.test_set.drop(CONTACT_GROUP))
    numbers = pl.DataFrame(
        {"sampled": sampled.test_set[CONTACT_GROUP], "full": full.test_set[CONTACT_GROUP]}
    )
    assert numbers.n_unique() == numbers["sampled"].n_unique() == numbers["full"].n_unique()
