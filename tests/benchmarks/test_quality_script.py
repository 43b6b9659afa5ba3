"""The quality benchmark runs end to end as a script (a quick simulator run and Taobao), writes the
figures it prints, judges each target from them, and never prints or writes a contact id; its
AUC, resampling and coupon-label helpers are checked against plain computations."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmarks.quality import (
    ECE_MIN_POSITIVES,
    auc_difference,
    check_targets,
    coupon_labels,
    stage_differences,
    weighted_auc,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality.py"
SIMULATED_ID = re.compile(r"sim-\d{7}")


@pytest.fixture(scope="module")
def quick_run(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("quality") / "quality.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--only",
            "simulator,taobao",
            "--results",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        # passive OpenMP threads: LightGBM's spinning ones crawl when the cores are shared
        env={
            "OMP_WAIT_POLICY": "PASSIVE",
            **os.environ,
            "FUNNELCAST_DATA_DIR": str(shared_data_dir),
        },
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"json": json.loads(out.read_text(encoding="utf-8")), "stdout": done.stdout}


def _in_unit_interval(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_writes_counts_and_metrics_of_every_model_on_both_data_sets(
    quick_run: dict[str, Any],
) -> None:
    result = quick_run["json"]
    assert result["benchmark"] == "quality"
    assert {"cpu_count", "cpu_model", "total_ram_gib"} <= result["machine"].keys()
    assert set(result["datasets"]) == {"simulator", "taobao"}
    for name, entry in result["datasets"].items():
        assert entry["status"] == "ok", (name, entry.get("reason"))
        (task,) = entry["tasks"].values()
        assert task["settings"]["horizon_days"] == (14 if name == "simulator" else 2)
        for split in ("train", "validation", "test"):
            counts = task["split"][split]
            assert 0 < counts["positives"] < counts["rows"], (name, split, counts)
        stage = task["stage"]["revealed"]
        for model in ("rules", "rules_lookback_horizon", "lightgbm"):
            assert _in_unit_interval(stage[model]["macro_f1"])
            # the same test rows and labels for every stage model, the horizon's rules too
            assert stage[model]["rows"] == task["split"]["test"]["rows"], (name, model)
            assert stage[model]["support_by_stage"] == stage["rules"]["support_by_stage"]
        for model in ("rfm_logistic", "lightgbm"):
            scores = task["propensity"][model]
            for metric in ("auc_roc", "auc_pr", "ece", "brier"):
                assert _in_unit_interval(scores[metric]), (name, model, metric, scores[metric])
            assert scores["positives"] == task["split"]["test"]["positives"]
        propensity = task["propensity"]
        for key, metric in (("auc_difference", "auc_roc"), ("auc_pr_difference", "auc_pr")):
            diff = task[key]
            ours, theirs = propensity["lightgbm"][metric], propensity["rfm_logistic"][metric]
            # the point is the difference of the figures written, inside its interval
            assert diff["lightgbm_minus_baseline"] == pytest.approx(ours - theirs, abs=1e-12)
            low, high = diff["ci95"]
            assert low <= diff["lightgbm_minus_baseline"] <= high, (name, key)
        for kind in ("revealed", "true") if name == "simulator" else ("revealed",):
            scores = task["stage"][kind]
            for rules in ("rules", "rules_lookback_horizon"):
                for metric in ("macro_f1", "macro_f1_labelled"):
                    diff = task["stage_difference"][kind][rules][metric]
                    gap = scores["lightgbm"][metric] - scores[rules][metric]
                    assert diff["lightgbm_minus_baseline"] == pytest.approx(gap, abs=1e-12)
                    low, high = diff["ci95"]
                    assert low < high, (name, kind, rules, metric)  # resamples differ
                    assert low <= diff["lightgbm_minus_baseline"] <= high
    assert "stage macro-F1 (true) funnelcast - rules" in quick_run["stdout"]
    true_stage = result["datasets"]["simulator"]["tasks"]["purchase"]["stage"]["true"]
    assert _in_unit_interval(true_stage["rules"]["macro_f1"])
    assert _in_unit_interval(true_stage["lightgbm"]["macro_f1"])


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_judges_each_target_from_the_figures_it_wrote(
    quick_run: dict[str, Any],
) -> None:
    result = quick_run["json"]
    targets = {(t["dataset"], t["kind"]): t for t in result["targets"]}
    simulator = result["datasets"]["simulator"]["tasks"]["purchase"]
    true_stage = simulator["stage"]["true"]
    gap = true_stage["lightgbm"]["macro_f1"] - true_stage["rules"]["macro_f1"]
    assert targets[("simulator", "true_stage_f1")]["status"] == ("PASS" if gap >= 0.15 else "MISS")
    taobao = result["datasets"]["taobao"]["tasks"]["purchase"]["propensity"]
    better = taobao["lightgbm"]["auc_roc"] > taobao["rfm_logistic"]["auc_roc"]
    assert targets[("taobao", "auc_vs_baseline")]["status"] == ("PASS" if better else "MISS")
    assert ("simulator", "auc_vs_baseline") not in targets  # the AUC target is for real data
    for name in ("simulator", "taobao"):
        ece = targets[(name, "ece")]
        positives = result["datasets"][name]["tasks"]["purchase"]["propensity"]["lightgbm"]
        if positives["positives"] < ECE_MIN_POSITIVES:
            assert ece["status"] == "n/a"
        else:
            assert ece["status"] == ("PASS" if positives["ece"] <= 0.02 else "MISS")
    for target in result["targets"]:
        assert target["status"] == "PASS" or target["reason"], target
    assert "targets" in quick_run["stdout"]


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_prints_and_writes_no_contact_id(quick_run: dict[str, Any]) -> None:
    written = json.dumps(quick_run["json"])
    assert not SIMULATED_ID.search(written)
    assert not SIMULATED_ID.search(quick_run["stdout"])


def test_weighted_auc_is_scikit_learns_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    p = np.round(rng.random(400) * 0.5 + 0.3 * y, 1)  # coarse: many ties across classes
    weight = rng.integers(0, 4, 400).astype(float)
    expected = roc_auc_score(y, p, sample_weight=weight)
    assert weighted_auc(y, p, weight) == pytest.approx(expected, abs=1e-12)
    assert weighted_auc(y, p, np.ones(400)) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_difference_of_a_model_with_itself_is_zero_and_of_a_better_one_positive() -> None:
    rng = np.random.default_rng(5)
    ids = np.repeat(np.arange(300).astype(str), 2)  # two snapshots per contact
    y = rng.random(600) < 0.4
    noise = rng.random(600)
    same = auc_difference(ids, y, noise, noise, seed=0, draws=50)
    assert same["lightgbm_minus_baseline"] == 0.0
    assert same["ci95"] == [0.0, 0.0]
    better = auc_difference(ids, y, noise + y, noise, seed=0, draws=50)
    assert better["ci95"][0] > 0.1
    assert better["resampled"] == "300 contacts"


def test_differences_resample_contacts_and_keep_each_metrics_point() -> None:
    from training.evaluation import stage_metrics

    rng = np.random.default_rng(9)
    ids = np.repeat(np.arange(200).astype(str), 3)  # three snapshots per contact
    y = rng.random(600) < 0.3
    noise = rng.random(600)
    better = (noise + y) / 2  # probabilities: in [0, 1]
    pr = auc_difference(ids, y, better, noise, seed=1, draws=40, metric="auc_pr")
    expected = average_precision_score(y, better) - average_precision_score(y, noise)
    assert pr["lightgbm_minus_baseline"] == pytest.approx(expected, abs=1e-12)
    assert pr["ci95"][0] > 0.2
    assert pr["resampled"] == "200 contacts"
    stages = np.array(["awareness", "consideration", "intent"])
    truth = stages[rng.integers(0, 3, 600)]
    rules = stages[rng.integers(0, 3, 600)]
    found = stage_differences(
        ids,
        truth,
        {"lightgbm": truth, "rules": rules, "rules_lookback_horizon": truth},
        seed=1,
        draws=40,
    )
    f1 = found["rules"]["macro_f1"]
    assert f1["lightgbm_minus_baseline"] == pytest.approx(
        1.0 - stage_metrics(truth, rules)["macro_f1"], abs=1e-12
    )
    assert 0 < f1["ci95"][0] <= f1["ci95"][1] < 1
    assert found["rules_lookback_horizon"]["macro_f1_labelled"]["ci95"] == [0.0, 0.0]


def test_coupon_labels_read_only_redemptions_in_the_horizon() -> None:
    as_of = dt.datetime(2017, 6, 1, tzinfo=dt.UTC)

    def at(days: float) -> dt.datetime:
        return as_of + dt.timedelta(days=days)

    rows = [
        ("at_start", at(0), "coupon_redeem"),  # [as_of, ...: inside
        ("last_moment", at(28) - dt.timedelta(microseconds=1), "coupon_redeem"),
        ("at_end", at(28), "coupon_redeem"),  # ... as_of + horizon): outside
        ("before", at(-1), "coupon_redeem"),  # the past is a feature, never a label
        ("buyer", at(3), "purchase"),  # a purchase is not a redemption
        ("twice", at(1), "coupon_redeem"),
        ("twice", at(2), "coupon_redeem"),
    ]
    events = pa.table(
        {
            "contact_id": [r[0] for r in rows],
            "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "event_type": [r[2] for r in rows],
        }
    )
    labels = coupon_labels(events, [as_of], horizon_days=28)
    assert sorted(labels["contact_id"].to_list()) == ["at_start", "last_moment", "twice"]
    assert labels["redeemed"].all()
    assert labels["as_of"].unique().to_list() == [as_of]


def _task(*, auc: float, baseline_auc: float, ece: float, positives: int) -> dict[str, Any]:
    scores = {"auc_roc": baseline_auc, "ece": 0.01, "positives": positives}
    return {
        "settings": {"horizon_days": 14},
        "split": {"validation": {"from": "a", "to": "b", "rows": 100, "positives": 10}},
        "baseline": "rfm_logistic",
        "propensity": {
            "rfm_logistic": scores,
            "lightgbm": scores
            | {"auc_roc": auc, "ece": ece, "mean_predicted": 0.2, "base_rate": 0.1},
        },
        "auc_difference": {"lightgbm_minus_baseline": auc - baseline_auc, "ci95": [-0.1, 0.1]},
    }


def test_targets_pass_miss_or_do_not_apply_by_the_issues_thresholds() -> None:
    datasets = {
        "cdnow": {
            "status": "ok",
            "tasks": {"a": _task(auc=0.80, baseline_auc=0.81, ece=0.03, positives=5_000)},
        },
        "olist": {
            "status": "ok",
            "tasks": {"b": _task(auc=0.80, baseline_auc=0.70, ece=0.05, positives=999)},
        },
        "taobao": {"status": "error", "reason": "ValueError: broken\nmore"},
    }
    found = {(t["dataset"], t["kind"]): t for t in check_targets(datasets)}
    assert found[("cdnow", "auc_vs_baseline")]["status"] == "MISS"
    assert found[("cdnow", "ece")]["status"] == "MISS"
    assert "observed 0.100" in found[("cdnow", "ece")]["reason"]
    assert found[("olist", "auc_vs_baseline")]["status"] == "PASS"
    assert found[("olist", "ece")]["status"] == "n/a"  # 999 positives: too few to judge
    assert found[("taobao", "all")]["status"] == "not measured"
    assert found[("taobao", "all")]["reason"] == "ValueError: broken"
