"""Evaluation metrics against hand-computed values, and the report artifacts on disk."""

from __future__ import annotations

import ast
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from features.vocabulary import STAGES
from training import evaluation
from training.evaluation import (
    EvaluationInputs,
    calibration_table,
    disagreement_table,
    evaluate,
    expected_calibration_error,
    lift_table,
    pr_table,
    propensity_metrics,
    roc_table,
    stage_metrics,
    write_evaluation_artifacts,
)

# --- stage metrics ------------------------------------------------------------------------------


def test_a_perfect_stage_prediction_has_macro_f1_one() -> None:
    labels = ["dormant", "awareness", "intent", "intent", "advocacy"]
    metrics = stage_metrics(labels, labels)
    assert metrics["macro_f1"] == 1.0
    assert metrics["accuracy"] == 1.0
    assert metrics["rows"] == 5
    assert metrics["per_stage"]["intent"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "support": 2,
    }


def test_macro_f1_averages_only_the_stages_seen_in_truth_or_prediction() -> None:
    # dormant: F1 1; awareness: precision 1, recall 1/2, F1 2/3; intent (only predicted): F1 0.
    # The four stages nobody mentions are left out: (1 + 2/3 + 0) / 3, not / 7.
    metrics = stage_metrics(
        ["dormant", "awareness", "awareness"], ["dormant", "intent", "awareness"]
    )
    assert metrics["macro_f1"] == pytest.approx(5 / 9)
    # over the stages the truth holds: (1 + 2/3) / 2, the call of intent counted in
    # awareness' recall only
    assert metrics["macro_f1_labelled"] == pytest.approx(5 / 6)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_stage"]["awareness"]["recall"] == pytest.approx(0.5)
    assert metrics["per_stage"]["intent"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    assert list(metrics["per_stage"]) == list(STAGES)


def test_the_confusion_matrix_has_true_stages_in_rows_and_predictions_in_columns() -> None:
    metrics = stage_metrics(
        ["dormant", "dormant", "intent"],
        ["intent", "dormant", "intent"],
        stages=("dormant", "intent"),
    )
    # one dormant contact was called intent: row "dormant", column "intent"
    assert metrics["confusion_matrix"] == [[1, 1], [0, 1]]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        (["dormant", "intent"], ["dormant"], "differ in length"),
        ([], [], "empty"),
        (["dormant", "purchased"], ["dormant", "intent"], "purchased"),
        (["dormant", "intent"], ["dormant", None], "None"),
    ],
)
def test_stage_metrics_refuse_bad_input_with_a_message_naming_it(
    y_true: list[str], y_pred: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stage_metrics(y_true, y_pred)


# --- calibration --------------------------------------------------------------------------------


def test_expected_calibration_error_weighs_each_bins_gap_by_its_share_of_rows() -> None:
    # two bins: [0, .5) holds p .1, .2 (mean .15, observed 1/2: gap .35);
    # [.5, 1] holds .8, .9 (mean .85, observed 1: gap .15); each holds half the rows
    ece = expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), bins=2)
    assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)


def test_a_perfectly_calibrated_bin_has_no_calibration_error() -> None:
    y = np.array([True, False, True, False])
    assert expected_calibration_error(y, np.full(4, 0.5)) == pytest.approx(0.0)


def test_the_calibration_table_omits_empty_bins_and_puts_one_in_the_last_bin() -> None:
    table = calibration_table(np.array([0, 1, 1]), np.array([0.0, 1.0, 0.9]), bins=4)
    assert table.columns == ["bin_lower", "bin_upper", "rows", "mean_predicted", "observed_rate"]
    assert table["bin_lower"].to_list() == [0.0, 0.75]
    assert table["bin_upper"].to_list() == [0.25, 1.0]
    assert table["rows"].to_list() == [1, 2]
    assert table["mean_predicted"].to_list() == pytest.approx([0.0, 0.95])
    assert table["observed_rate"].to_list() == [0.0, 1.0]


# --- propensity metrics -------------------------------------------------------------------------


def test_propensity_metrics_of_a_perfect_ranking_match_hand_computed_values() -> None:
    metrics = propensity_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert metrics["auc_roc"] == 1.0
    assert metrics["auc_pr"] == 1.0
    assert metrics["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert metrics["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    # ten bins, one row each: gaps .1, .2, .2, .1
    assert metrics["ece"] == pytest.approx(0.15)
    assert (metrics["rows"], metrics["positives"], metrics["base_rate"]) == (4, 2, 0.5)


def test_auc_is_nan_without_a_warning_when_the_test_set_has_one_class() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = propensity_metrics(np.zeros(3, dtype=bool), np.array([0.1, 0.5, 0.9]))
    assert math.isnan(metrics["auc_roc"])
    assert math.isnan(metrics["auc_pr"])
    assert metrics["brier"] == pytest.approx((0.01 + 0.25 + 0.81) / 3)
    assert metrics["positives"] == 0


def test_a_confident_miss_gives_a_large_but_finite_log_loss() -> None:
    metrics = propensity_metrics(np.array([1, 0]), np.array([0.0, 0.0]))
    assert math.isfinite(metrics["log_loss"])
    assert metrics["log_loss"] > 10


@pytest.mark.parametrize(
    ("y_true", "p", "message"),
    [
        ([0, 1], [0.5, 1.2], r"within \[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"within \[0, 1\]"),
        ([0, 1], [0.5, float("nan")], "non-finite"),
        ([0, 1], [0.5, float("inf")], "non-finite"),
        ([0, 1, 1], [0.5, 0.5], "differ in length"),
        ([], [], "empty"),
        ([0, 2], [0.5, 0.5], "bool or 0/1"),
        ([0, 1], [[0.5, 0.5], [0.2, 0.8]], "1-D"),
    ],
)
def test_propensity_metrics_refuse_bad_input_with_a_message_naming_it(
    y_true: list[int], p: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        propensity_metrics(np.array(y_true), np.array(p))


# --- curves -------------------------------------------------------------------------------------


def test_lift_ranks_by_score_and_compares_each_group_to_the_overall_rate() -> None:
    # by score, highest first, the labels are 1 1 | 0 1 | 0 0 | 0 0 | 0 0 (overall rate 0.3);
    # the input order is shuffled so the ranking has to be done by the function
    ranked_labels = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    ranked_scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    order = [3, 7, 0, 9, 5, 1, 8, 2, 6, 4]
    y = np.array([ranked_labels[i] for i in order])
    p = np.array([ranked_scores[i] for i in order])
    table = lift_table(y, p, groups=5)
    assert table["decile"].to_list() == [1, 2, 3, 4, 5]
    assert table["rows"].to_list() == [2, 2, 2, 2, 2]
    assert table["positives"].to_list() == [2, 1, 0, 0, 0]
    assert table["lift"].to_list() == pytest.approx([1 / 0.3, 0.5 / 0.3, 0, 0, 0])
    assert table["cumulative_gain"].to_list() == pytest.approx([2 / 3, 1, 1, 1, 1])


def test_lift_is_nan_when_there_are_no_positives() -> None:
    table = lift_table(np.zeros(4, dtype=bool), np.array([0.1, 0.2, 0.3, 0.4]), groups=2)
    assert table["rows"].to_list() == [2, 2]
    assert all(math.isnan(v) for v in table["lift"].to_list())


def test_the_roc_table_runs_from_nothing_flagged_to_everything_flagged() -> None:
    table = roc_table(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert table.columns == ["threshold", "false_positive_rate", "true_positive_rate"]
    assert table["threshold"].to_list() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert table["false_positive_rate"].to_list() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert table["true_positive_rate"].to_list() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_a_downsampled_roc_table_keeps_both_ends() -> None:
    rng = np.random.default_rng(7)
    y = np.arange(400) % 3 == 0
    p = rng.random(400)
    table = roc_table(y, p, max_points=5)
    assert table.height == 5
    assert table.row(0) == (math.inf, 0.0, 0.0)
    assert table.row(-1)[1:] == (1.0, 1.0)


def test_the_pr_table_goes_from_the_strictest_threshold_down() -> None:
    table = pr_table(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert table.columns == ["threshold", "recall", "precision"]
    assert table["threshold"].to_list() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert table["recall"].to_list() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert table["precision"].to_list() == pytest.approx([1.0, 1.0, 0.5, 2 / 3, 0.5])


def test_curves_are_empty_tables_when_the_test_set_has_one_class() -> None:
    y = np.ones(3, dtype=bool)
    p = np.array([0.2, 0.5, 0.7])
    assert roc_table(y, p).is_empty()
    assert pr_table(y, p).columns == ["threshold", "recall", "precision"]
    assert pr_table(y, p).is_empty()


# --- rules against model ------------------------------------------------------------------------


def test_the_disagreement_table_counts_who_was_right_where_rules_and_model_differ() -> None:
    truth = ["dormant", "dormant", "intent", "intent", "awareness", "awareness"]
    rules = ["dormant", "awareness", "intent", "awareness", "awareness", "awareness"]
    model = ["intent", "intent", "intent", "intent", "intent", "awareness"]
    # rows 2 and 5 agree and are left out; of the (awareness, intent) rows the rules are right
    # once (row 4), the model once (row 3) and neither once (row 1)
    table = disagreement_table(truth, rules, model)
    assert table.columns == [
        "rules_stage",
        "model_stage",
        "contacts",
        "rules_right",
        "model_right",
        "neither_right",
    ]
    assert table.rows() == [
        ("awareness", "intent", 3, 1, 1, 1),
        ("dormant", "intent", 1, 1, 0, 0),
    ]


def test_the_disagreement_table_is_empty_when_rules_and_model_agree() -> None:
    labels = ["dormant", "intent"]
    table = disagreement_table(labels, labels, ["dormant", "intent"])
    assert table.is_empty()
    assert "neither_right" in table.columns


def test_the_disagreement_table_refuses_predictions_of_another_length() -> None:
    with pytest.raises(ValueError, match="model_pred has 1"):
        disagreement_table(["dormant", "intent"], ["dormant", "intent"], ["dormant"])


# --- the whole evaluation -----------------------------------------------------------------------


def _inputs(*, purchase_true: list[bool] | None = None) -> EvaluationInputs:
    return EvaluationInputs(
        stage_true=np.array(["dormant", "dormant", "intent", "intent", "awareness", "awareness"]),
        stage_pred={
            "rules": np.array(
                ["dormant", "awareness", "intent", "awareness", "awareness", "awareness"]
            ),
            "lightgbm": np.array(["intent", "intent", "intent", "intent", "intent", "awareness"]),
        },
        purchase_true=np.array(purchase_true or [True, False, False, True, False, False]),
        propensity={
            "rfm_logistic": np.array([0.6, 0.3, 0.2, 0.4, 0.5, 0.1]),
            "lightgbm": np.array([0.9, 0.1, 0.2, 0.7, 0.3, 0.05]),
        },
        feature_importance={"email_click_count_7d": 12.5, "days_since_last_purchase": 40.0},
    )


def test_evaluate_scores_every_model_and_skips_a_section_without_models() -> None:
    full = evaluate(_inputs())
    assert set(full["stage"]) == {"rules", "lightgbm"}
    assert set(full["propensity"]) == {"rfm_logistic", "lightgbm"}
    assert full["propensity"]["lightgbm"]["auc_roc"] == 1.0

    inputs = _inputs()
    stage_only = evaluate(
        EvaluationInputs(
            stage_true=inputs.stage_true,
            stage_pred=inputs.stage_pred,
            purchase_true=inputs.purchase_true,
            propensity={},
            feature_importance={},
        )
    )
    assert set(stage_only) == {"stage"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The artifacts of ``_inputs()``, written once for the tests that read them."""
    out = tmp_path_factory.mktemp("report") / "evaluation"
    return out, write_evaluation_artifacts(_inputs(), out)


def test_the_artifacts_are_every_listed_file_and_nothing_else(
    report: tuple[Path, list[Path]],
) -> None:
    out, written = report
    expected = {
        "metrics.json",
        "per_stage_metrics.csv",
        "confusion_matrix_rules.csv",
        "confusion_matrix_rules.png",
        "confusion_matrix_lightgbm.csv",
        "confusion_matrix_lightgbm.png",
        "roc_curve.csv",
        "roc_curve.png",
        "pr_curve.csv",
        "pr_curve.png",
        "calibration_curve.csv",
        "calibration_curve.png",
        "lift_gains.csv",
        "lift_gains.png",
        "feature_importance.csv",
        "feature_importance.png",
        "disagreement_rules_vs_lightgbm.csv",
    }
    assert {p.name for p in written} == expected
    assert {p.name for p in out.iterdir()} == expected
    assert all(p.parent == out and p.stat().st_size > 0 for p in written)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")


def test_the_csv_artifacts_hold_every_model_with_the_documented_columns(
    report: tuple[Path, list[Path]],
) -> None:
    out, _ = report
    per_stage = (out / "per_stage_metrics.csv").read_text().splitlines()
    assert per_stage[0] == "model,stage,precision,recall,f1,support"
    assert len(per_stage) == 1 + 2 * len(STAGES)
    roc = (out / "roc_curve.csv").read_text().splitlines()
    assert roc[0] == "model,threshold,false_positive_rate,true_positive_rate"
    assert {line.split(",")[0] for line in roc[1:]} == {"rfm_logistic", "lightgbm"}
    lift = (out / "lift_gains.csv").read_text().splitlines()
    assert lift[0] == "model,decile,rows,positives,positive_rate,lift,cumulative_gain"
    disagreement = (out / "disagreement_rules_vs_lightgbm.csv").read_text().splitlines()
    assert disagreement[1] == "awareness,intent,3,1,1,1"
    importance = (out / "feature_importance.csv").read_text().splitlines()
    assert importance[1].startswith("days_since_last_purchase,")


def test_the_confusion_matrix_file_names_true_and_predicted_stages(
    report: tuple[Path, list[Path]],
) -> None:
    out, _ = report
    lines = (out / "confusion_matrix_lightgbm.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["true_stage", "predicted_dormant", "predicted_awareness"]
    # both dormant contacts were called intent by the model
    dormant = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    assert dormant["true_stage"] == "dormant"
    assert (dormant["predicted_dormant"], dormant["predicted_intent"]) == ("0", "2")


def test_writing_artifacts_leaves_no_pyplot_figure_open(report: tuple[Path, list[Path]]) -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_metrics_json_is_strict_json_with_null_for_undefined_values(tmp_path: Path) -> None:
    # no buyers in the test set: both AUCs are undefined; and with one stage model and no
    # importances, the comparison and importance files are skipped
    inputs = _inputs()
    written = write_evaluation_artifacts(
        EvaluationInputs(
            stage_true=inputs.stage_true,
            stage_pred={"rules": inputs.stage_pred["rules"]},
            purchase_true=np.zeros(6, dtype=bool),
            propensity={"lightgbm": inputs.propensity["lightgbm"]},
            feature_importance={},
        ),
        tmp_path,
    )

    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["propensity"]["lightgbm"]["auc_roc"] is None
    assert metrics["propensity"]["lightgbm"]["auc_pr"] is None
    assert metrics["propensity"]["lightgbm"]["positives"] == 0
    assert metrics["stage"]["rules"]["confusion_matrix"][0][0] == 1

    names = {p.name for p in written}
    assert "roc_curve.png" in names
    assert "feature_importance.csv" not in names
    assert not any(name.startswith("disagreement_") for name in names)


def test_the_module_imports_matplotlib_only_inside_functions() -> None:
    # importing training.evaluation must stay cheap: no top-level matplotlib import
    # (imports under ``if TYPE_CHECKING:`` are for the type checker only)
    tree = ast.parse(Path(evaluation.__file__).read_text())
    imported: list[str] = []
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            imported += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            imported.append(statement.module or "")
    assert "numpy" in imported
    assert not [name for name in imported if name.startswith("matplotlib")]


def test_stage_metrics_agree_with_scikit_learn_on_many_rows() -> None:
    rng = np.random.default_rng(11)
    vocabulary = np.asarray(STAGES, dtype=str)
    # the last stage is never true, only predicted: in macro_f1 (an F1 of 0), not in
    # macro_f1_labelled
    truth = vocabulary[rng.choice(len(STAGES) - 1, 20_000, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])]
    predicted = np.where(
        rng.random(20_000) < 0.6, truth, vocabulary[rng.integers(0, len(STAGES), 20_000)]
    )
    assert STAGES[-1] in set(predicted) - set(truth)
    metrics = stage_metrics(truth, predicted)
    present = [s for s in STAGES if s in set(truth) | set(predicted)]
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, labels=present, average="macro", zero_division=0)
    )
    labelled = [s for s in STAGES if s in set(truth)]
    assert metrics["macro_f1_labelled"] == pytest.approx(
        f1_score(truth, predicted, labels=labelled, average="macro", zero_division=0)
    )
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=list(STAGES), average=None, zero_division=0
    )
    for i, stage in enumerate(STAGES):
        assert metrics["per_stage"][stage] == {
            "precision": pytest.approx(precision[i]),
            "recall": pytest.approx(recall[i]),
            "f1": pytest.approx(f1[i]),
            "support": int(support[i]),
        }
    assert (
        metrics["confusion_matrix"]
        == confusion_matrix(truth, predicted, labels=list(STAGES)).tolist()
    )
    assert metrics["accuracy"] == pytest.approx(float(np.mean(truth == predicted)))
