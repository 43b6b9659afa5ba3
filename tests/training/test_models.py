"""The models' fit/predict, the time split and the model matrix."""

from __future__ import annotations

import datetime as dt
import itertools
import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, f1_score

from features.errors import InputError
from features.vocabulary import STAGES
from training.frame import model_matrix, snapshot_dates, split_by_time
from training.models import (
    RFM_COLUMNS,
    LightGBMPropensityModel,
    LightGBMStageModel,
    PathTable,
    RfmPropensityModel,
    RulesStageModel,
    _Calibrator,
    _softmax_as_lightgbm,
    _tune_decision_weights,
)

UTC = dt.UTC


def _weekly(n: int) -> list[dt.datetime]:
    return [dt.datetime(2026, 1, 5, tzinfo=UTC) + dt.timedelta(days=7 * i) for i in range(n)]


def test_snapshots_count_back_from_the_last_date_with_a_full_horizon() -> None:
    dates = snapshot_dates(
        dt.datetime(2026, 1, 1, 13, tzinfo=UTC),
        dt.datetime(2026, 5, 1, tzinfo=UTC),
        horizon_days=14,
        every_days=7,
        min_history_days=28,
        count=5,
    )
    assert dates[-1] == dt.datetime(2026, 4, 17, tzinfo=UTC)
    assert len(dates) == 5
    assert all(b - a == dt.timedelta(days=7) for a, b in itertools.pairwise(dates))


def test_no_snapshot_comes_before_the_minimum_history() -> None:
    dates = snapshot_dates(
        dt.datetime(2026, 4, 1, tzinfo=UTC),
        dt.datetime(2026, 5, 1, tzinfo=UTC),
        horizon_days=7,
        every_days=7,
        min_history_days=14,
        count=12,
    )
    assert dates
    assert min(dates) >= dt.datetime(2026, 4, 15, tzinfo=UTC)


def test_the_time_split_is_ordered_and_no_label_horizon_reaches_a_later_split() -> None:
    split = split_by_time(_weekly(12), horizon_days=14, validation=2, test=2)
    assert max(split.train) < min(split.validation) < max(split.validation) < min(split.test)
    horizon = dt.timedelta(days=14)
    assert all(d + horizon <= min(split.validation) for d in split.train)
    assert all(d + horizon <= min(split.test) for d in split.validation)
    assert len(split.train) + len(split.validation) + len(split.test) + len(split.dropped) == 12
    assert len(split.dropped) == 2  # one embargoed week before validation, one before test


def test_too_few_snapshots_for_a_split_are_refused_with_a_reason() -> None:
    with pytest.raises(InputError, match="too few"):
        split_by_time(_weekly(4), horizon_days=14, validation=2, test=2)


def test_the_model_matrix_keeps_categoricals_and_fixes_the_column_order() -> None:
    frame = pl.DataFrame(
        {
            "contact_id": ["a", "b"],
            "x": [1, None],
            "segment": pl.Series(["premium", None], dtype=pl.Categorical),
            "rules_stage": pl.Series(["intent", "dormant"], dtype=pl.Enum(STAGES)),
        }
    )
    matrix = model_matrix(frame, ["rules_stage", "x", "segment"])
    assert list(matrix.columns) == ["rules_stage", "x", "segment"]
    assert isinstance(matrix["rules_stage"].dtype, pd.CategoricalDtype)
    assert list(matrix["rules_stage"].cat.categories) == list(STAGES)
    assert np.isnan(matrix["x"].iloc[1])
    with pytest.raises(InputError, match="lacks the model's features"):
        model_matrix(frame, ["x", "missing_feature"])


# --- models on a small synthetic problem -------------------------------------------------------


def _problem(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features where the stage and purchases follow from the numbers, with noise."""
    rng = np.random.default_rng(seed)
    clicks = rng.poisson(1.0, n).astype(float)
    carts = rng.poisson(0.3, n).astype(float)
    buys = rng.poisson(0.2, n).astype(float)
    stage_code = np.where(carts > 0, 3, np.where(clicks > 1, 2, np.where(clicks > 0, 1, 0)))
    noise = rng.random(n) < 0.1
    stage_code = np.where(noise, rng.integers(0, 4, n), stage_code)
    stage = np.asarray(STAGES)[stage_code]
    bought = rng.random(n) < 1 / (1 + np.exp(-(carts * 2 + buys - 2.5)))
    X = pd.DataFrame(
        {
            "email_click_count_7d": clicks,
            "add_to_cart_count_7d": carts,
            "days_since_last_purchase": np.where(buys > 0, rng.uniform(0, 90, n), np.nan),
            "purchase_count_all": buys,
            "purchase_value_sum_all": buys * 50.0,
            "days_since_last_event": rng.uniform(0, 30, n),
            "event_count_28d": clicks + carts,
            "active_days_28d": np.minimum(clicks + carts, 28),
            "segment": pd.Categorical(rng.choice(["a", "b"], n)),
            "rules_stage": pd.Categorical(stage, categories=list(STAGES)),
        }
    )
    return X, stage, bought


@pytest.fixture(scope="module")
def problem() -> dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    return {"train": _problem(3000, 1), "validation": _problem(1500, 2), "test": _problem(1500, 3)}


def test_the_rules_model_predicts_the_rules_stage_feature(problem: dict) -> None:
    X, _, _ = problem["test"]
    model = RulesStageModel().fit(X)
    assert (model.predict(X) == X["rules_stage"].astype(str).to_numpy()).all()
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), len(STAGES))
    assert (proba.sum(axis=1) == 1).all()
    with pytest.raises(InputError, match="rules_stage"):
        RulesStageModel().fit(X.drop(columns="rules_stage"))


def test_the_rfm_baseline_ranks_buyers_above_non_buyers(problem: dict) -> None:
    X, _, bought = problem["train"]
    model = RfmPropensityModel().fit(X, bought)
    Xt, _, bought_t = problem["test"]
    p = model.predict_proba(Xt)
    assert ((p >= 0) & (p <= 1)).all()
    assert p[bought_t].mean() > p[~bought_t].mean()
    with pytest.raises(InputError, match="needs features"):
        model.predict_proba(Xt.drop(columns=list(RFM_COLUMNS[:1])))


def test_the_propensity_model_is_calibrated_and_reproducible(problem: dict) -> None:
    X, _, y = problem["train"]
    Xv, _, yv = problem["validation"]
    Xt, _, yt = problem["test"]
    first = LightGBMPropensityModel(seed=3, num_threads=1).fit(X, y, X_val=Xv, y_val=yv)
    again = LightGBMPropensityModel(seed=3, num_threads=1).fit(X, y, X_val=Xv, y_val=yv)
    p = first.predict_proba(Xt)
    assert np.array_equal(p, again.predict_proba(Xt))
    assert first.calibration_ in ("isotonic", "sigmoid")
    assert abs(p.mean() - yt.mean()) < 0.05  # calibrated: the mean matches the rate
    assert p[yt].mean() > p[~yt].mean()
    assert set(first.feature_importance()) == set(X.columns)


def test_the_propensity_model_refuses_labels_of_one_class(problem: dict) -> None:
    X, _, y = problem["train"]
    Xv, _, _ = problem["validation"]
    with pytest.raises(InputError, match="buyers and non-buyers"):
        LightGBMPropensityModel().fit(X, y, X_val=Xv, y_val=np.zeros(len(Xv), dtype=bool))


def test_the_stage_model_gives_probabilities_over_every_stage_and_beats_chance(
    problem: dict,
) -> None:
    X, s, _ = problem["train"]
    Xv, sv, _ = problem["validation"]
    Xt, st, _ = problem["test"]
    model = LightGBMStageModel(seed=1, num_threads=1).fit(
        X.drop(columns="rules_stage"), s, X_val=Xv.drop(columns="rules_stage"), y_val=sv
    )
    proba = model.predict_proba(Xt)
    assert proba.shape == (len(Xt), len(STAGES))
    assert np.allclose(proba.sum(axis=1), 1.0)
    predicted = model.predict(Xt)
    assert set(predicted) <= set(STAGES)
    assert (predicted == st).mean() > 0.7  # the stages follow the features, 10 % noise
    contributions = model.contributions(Xt.head(3))
    assert contributions.shape == (3, (len(model.feature_names_) + 1) * len(STAGES))


def test_the_stage_model_refuses_an_unknown_stage(problem: dict) -> None:
    X, s, _ = problem["train"]
    Xv, sv, _ = problem["validation"]
    bad = s.copy()
    bad[0] = "lead"
    with pytest.raises(InputError, match="unknown stage labels"):
        LightGBMStageModel().fit(X, bad, X_val=Xv, y_val=sv)


@pytest.mark.parametrize("ties", [False, True])
def test_the_decision_weights_are_those_of_a_search_scored_by_scikit_learn(ties: bool) -> None:
    """The fast search (one comparison per row and trial) makes the choices of the plain one:
    an argmax over every stage, scored by scikit-learn's macro-F1, ties to the first stage."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(len(STAGES), 0.5), 5_000)
    if ties:
        p = np.round(p, 1)
    y = rng.choice(len(STAGES) - 1, 5_000, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    labels = list(np.unique(y))

    def score(w: np.ndarray) -> float:
        predicted = np.argmax(p * w, axis=1)
        return float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0))

    expected, best = np.ones(len(STAGES)), score(np.ones(len(STAGES)))
    for _ in range(2):
        for k in labels:
            for value in np.geomspace(0.25, 8.0, 16):
                trial = expected.copy()
                trial[k] = value
                if score(trial) > best + 1e-9:
                    best, expected = score(trial), trial
    found = _tune_decision_weights(p, y)
    assert np.array_equal(found, expected)
    assert not np.array_equal(found, np.ones(len(STAGES)))  # the search did move something


@pytest.mark.parametrize("kind", ["stage", "propensity"])
def test_calibration_gets_the_validation_predictions_of_the_best_iteration(
    problem: dict, kind: str
) -> None:
    """The validation predictions kept during boosting (no second pass through the trees) are
    those of the model as it is kept, cut at its best iteration, not of the last round."""
    X, s, y = problem["train"]
    Xv, sv, yv = problem["validation"]
    if kind == "stage":
        model: LightGBMStageModel | LightGBMPropensityModel = LightGBMStageModel(
            seed=2, num_threads=1, early_stopping_rounds=3, params={"learning_rate": 0.5}
        )
        objective = {"objective": "multiclass", "num_class": len(STAGES), "metric": "multi_logloss"}
        target, target_val = _codes(s), _codes(sv)
        X, Xv = X.drop(columns="rules_stage"), Xv.drop(columns="rules_stage")  # the label
    else:
        model = LightGBMPropensityModel(
            seed=2, num_threads=1, early_stopping_rounds=3, params={"learning_rate": 0.5}
        )
        objective = {"objective": "binary", "metric": ["average_precision", "binary_logloss"]}
        target, target_val = y.astype(np.int64), yv.astype(np.int64)
    rounds: list[int] = []
    model.callbacks = [lambda env: rounds.append(env.iteration + 1)]
    second_passes: list[int] = []
    model._raw = lambda rows: second_passes.append(len(rows))  # type: ignore[method-assign]
    booster, kept = model._train(objective, X, target, None, Xv, target_val)
    assert model.best_iteration_ < max(rounds)  # stopped early: the last round is not the best
    assert second_passes == []  # kept, not predicted again
    del model._raw
    model.booster_ = booster
    np.testing.assert_allclose(kept, model._raw(Xv), rtol=0, atol=1e-12)


def test_many_rows_are_scored_stage_by_stage_to_the_same_probabilities(
    problem: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, s, _ = problem["train"]
    Xv, sv, _ = problem["validation"]
    Xt = problem["test"][0]
    # rules_stage (the label here, so the trees split on it) with its categories in another
    # order, one the model never saw, and missing values: coded as in training, or NaN
    values = Xt["rules_stage"].astype(object).to_numpy()
    values[:10], values[10:20] = "lead", None
    stages = Xt.assign(
        rules_stage=pd.Categorical(values, categories=[*reversed(STAGES), "lead"]),
        email_click_count_7d=Xt["email_click_count_7d"].astype("float32"),
    )
    model = LightGBMStageModel(seed=1, num_threads=1).fit(X, s, X_val=Xv, y_val=sv)
    whole = model.predict_proba(stages)
    calls: list[int] = []
    real = model._class_booster
    monkeypatch.setattr(model, "_class_booster", lambda k: calls.append(k) or real(k))
    monkeypatch.setattr("training.models._PER_STAGE_ROWS", 1)
    by_stage = model.predict_proba(stages)
    assert calls == list(range(len(STAGES)))  # the path under test was taken
    np.testing.assert_array_equal(by_stage, whole)
    np.testing.assert_allclose(model.predict_proba(model._matrix(stages)), whole, atol=1e-12)


@pytest.fixture(scope="module")
def stage_model(problem: dict) -> LightGBMStageModel:
    X, s, _ = problem["train"]
    Xv, sv, _ = problem["validation"]
    return LightGBMStageModel(seed=1, num_threads=1).fit(X, s, X_val=Xv, y_val=sv)


def test_path_contributions_add_up_to_each_rows_own_stage_score(
    problem: dict, stage_model: LightGBMStageModel
) -> None:
    matrix = stage_model._matrix(problem["test"][0])
    codes = stage_model.decide(stage_model.predict_proba(matrix))
    assert len(set(codes.tolist())) >= 3  # several stages' tables are exercised
    path = stage_model.class_contributions(matrix, codes, method="path")
    exact = stage_model.class_contributions(matrix, codes, method="treeshap")
    assert path.shape == exact.shape == (len(matrix), len(stage_model.feature_names_) + 1)
    # the raw score of each row's own stage (a one-stage booster holds that stage's trees)
    raw = np.array(
        [
            stage_model._class_booster(int(k)).predict(row[None, :])[0]
            for row, k in zip(matrix, codes, strict=True)
        ]
    )
    np.testing.assert_allclose(path.sum(axis=1), raw, rtol=0, atol=1e-9)
    # the same bias as TreeSHAP: the expected score over the training rows
    np.testing.assert_allclose(path[:, -1], exact[:, -1], rtol=0, atol=1e-9)
    # a different sharing of the same score: not TreeSHAP under another name
    assert not np.allclose(path, exact, atol=1e-6)


def test_probabilities_and_path_reasons_from_one_walk_of_the_trees_are_the_same_numbers(
    problem: dict, stage_model: LightGBMStageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leaves every row reaches give the raw scores (LightGBM's, bit for bit), hence the
    probabilities, and the path credits of each row's stage."""
    matrix = stage_model._matrix(problem["test"][0])
    monkeypatch.setattr("training.models._LEAF_WALK_CELLS", 10**12)  # the whole test window
    proba, leaves = stage_model.predict_proba_and_leaves(matrix)
    assert leaves is not None
    np.testing.assert_array_equal(
        leaves,
        stage_model.booster_.predict(
            matrix, num_iteration=stage_model.best_iteration_, pred_leaf=True
        ),
    )
    # the softmax is LightGBM's too: bit for bit, so no calibration step can magnify a gap
    np.testing.assert_array_equal(proba, stage_model.predict_proba(matrix))
    booster, best = stage_model.booster_, stage_model.best_iteration_
    raw = booster.predict(matrix, num_iteration=best, raw_score=True)
    lightgbm = booster.predict(matrix, num_iteration=best)
    np.testing.assert_array_equal(_softmax_as_lightgbm(raw), lightgbm)
    # bit for bit: one score a last bit higher is caught (numpy's exp, whose SIMD code depends
    # on the CPU, differed so in a third of the rows on one VM and not at all on another)
    nudged = raw.copy()
    nudged[:, 0] = np.nextafter(nudged[:, 0], np.inf)
    assert not np.array_equal(_softmax_as_lightgbm(nudged), lightgbm)
    codes = stage_model.decide(proba)
    assert len(set(codes.tolist())) >= 3
    np.testing.assert_array_equal(
        stage_model.class_contributions(matrix, codes, method="path", leaves=leaves),
        stage_model.class_contributions(matrix, codes, method="path"),
    )
    # one row goes through LightGBM's single-row predictor and walks its own stage's trees
    one, no_leaves = stage_model.predict_proba_and_leaves(matrix[:1])
    assert no_leaves is None
    np.testing.assert_allclose(one, proba[:1], rtol=0, atol=1e-12)


def test_a_table_too_large_for_one_walk_of_the_trees_scores_and_explains_as_before(
    problem: dict, stage_model: LightGBMStageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the cells (rows x trees) whose leaves are kept at once, the probabilities come
    from LightGBM's prediction and the reasons walk each stage's trees."""
    matrix = stage_model._matrix(problem["test"][0])
    trees = stage_model.best_iteration_ * len(STAGES)
    monkeypatch.setattr("training.models._LEAF_WALK_CELLS", trees * (len(matrix) - 1))
    proba, leaves = stage_model.predict_proba_and_leaves(matrix)
    assert leaves is None
    np.testing.assert_array_equal(proba, stage_model.predict_proba(matrix))
    _, some = stage_model.predict_proba_and_leaves(matrix[:-1])
    assert some is not None
    assert some.shape == (len(matrix) - 1, trees)


def test_path_contributions_are_treeshap_on_trees_of_one_split(problem: dict) -> None:
    # with one split per tree the only feature on a path takes the whole move, as it does in
    # the Shapley value: the two methods must agree exactly
    X, s, _ = problem["train"]
    Xv, sv, _ = problem["validation"]
    stumps = LightGBMStageModel(seed=1, num_threads=1, params={"num_leaves": 2}).fit(
        X, s, X_val=Xv, y_val=sv
    )
    matrix = stumps._matrix(problem["test"][0])
    codes = stumps.decide(stumps.predict_proba(matrix))
    np.testing.assert_allclose(
        stumps.class_contributions(matrix, codes, method="path"),
        stumps.class_contributions(matrix, codes, method="treeshap"),
        rtol=0,
        atol=1e-9,
    )


def test_path_contributions_of_a_row_do_not_depend_on_the_rows_beside_it(
    problem: dict, stage_model: LightGBMStageModel
) -> None:
    matrix = stage_model._matrix(problem["test"][0])[:200]
    codes = stage_model.decide(stage_model.predict_proba(matrix))
    together = stage_model.class_contributions(matrix, codes, method="path")
    alone = np.vstack(
        [
            stage_model.class_contributions(matrix[i : i + 1], codes[i : i + 1], method="path")
            for i in range(0, 200, 7)
        ]
    )
    np.testing.assert_array_equal(together[::7], alone)


def test_path_credits_follow_the_splits_where_treeshap_shares_them() -> None:
    # y = x1 AND x2 over the four combinations, one tree: x1 splits first (expected score 0.25
    # -> 0.5), then x2 (0.5 -> 1). The path credits each move to its split; Shapley values
    # share the interaction equally (Lundberg et al.'s example)
    X = np.array([[a, b] for a in (0, 1) for b in (0, 1)] * 25, dtype=float)
    booster = lgb.train(
        {
            "objective": "regression",
            "num_leaves": 3,
            "min_data_in_leaf": 1,
            "min_data_in_bin": 1,
            "min_sum_hessian_in_leaf": 0,
            "lambda_l2": 0,
            "learning_rate": 1.0,
            "num_threads": 1,
            "verbose": -1,
        },
        lgb.Dataset(X, label=X[:, 0] * X[:, 1]),
        num_boost_round=1,
    )
    rows = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    table = PathTable.of(booster, 2)
    path = table.contributions(booster.predict(rows, pred_leaf=True))
    np.testing.assert_allclose(path, [[0.25, 0.5, 0.25], [0.25, -0.5, 0.25], [-0.25, 0, 0.25]])
    np.testing.assert_allclose(
        booster.predict(rows[:1], pred_contrib=True), [[0.375, 0.375, 0.25]], atol=1e-12
    )
    assert table.contributions(np.zeros((0, 1), dtype=np.int64)).shape == (0, 3)


def test_path_credits_of_many_rows_are_gathered_in_chunks_to_the_same_numbers(
    problem: dict, stage_model: LightGBMStageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = stage_model._matrix(problem["test"][0])
    codes = stage_model.decide(stage_model.predict_proba(matrix))
    whole = stage_model.class_contributions(matrix, codes, method="path")
    monkeypatch.setattr("training.models._PATH_CHUNK_ROWS", 7)
    np.testing.assert_array_equal(
        stage_model.class_contributions(matrix, codes, method="path"), whole
    )


def test_an_unknown_reasons_method_is_refused(
    problem: dict, stage_model: LightGBMStageModel
) -> None:
    matrix = stage_model._matrix(problem["test"][0].head(2))
    with pytest.raises(ValueError, match="unknown reasons method 'lime'"):
        stage_model.class_contributions(matrix, np.array([0, 1]), method="lime")  # type: ignore[arg-type]


def _codes(stages: np.ndarray) -> np.ndarray:
    return np.asarray([list(STAGES).index(v) for v in stages], dtype=np.int64)


def _rfm_problem(n: int, seed: int, *, busier: float) -> tuple[pd.DataFrame, np.ndarray]:
    """Purchases that follow a smooth logistic line of recency and frequency; ``busier``
    shifts the frequencies up, as later weeks of a growing customer base do."""
    rng = np.random.default_rng(seed)
    orders = rng.poisson(1.0 + busier, n).astype(float)
    recency = np.where(orders > 0, rng.uniform(0, 200, n), np.nan)
    line = 1.5 * np.log1p(orders) - 0.015 * np.nan_to_num(recency, nan=365.0) - 1.0
    bought = rng.random(n) < 1 / (1 + np.exp(-line))
    X = pd.DataFrame(
        {
            "days_since_last_purchase": recency,
            "purchase_count_all": orders,
            "purchase_value_sum_all": orders * rng.uniform(20, 80, n),
            "days_since_last_event": rng.uniform(0, 30, n),
            "event_count_28d": rng.poisson(3.0, n).astype(float),
            "active_days_28d": rng.integers(0, 10, n).astype(float),
            "email_click_count_7d": rng.poisson(1.0, n).astype(float),
        }
    )
    return X, bought


def test_the_propensity_model_blends_in_the_rfm_line_by_validation_auc_pr() -> None:
    X, y = _rfm_problem(4000, 1, busier=0.0)
    Xv, yv = _rfm_problem(2000, 2, busier=3.0)
    Xt, _ = _rfm_problem(2000, 3, busier=3.0)
    model = LightGBMPropensityModel(seed=1, num_threads=1, blend_rfm=True).fit(
        X, y, X_val=Xv, y_val=yv
    )
    assert model.rfm_ is not None
    # the chosen weight is the best of the grid by scikit-learn's AUC-PR of the blend
    lightgbm = np.log(model._raw(Xv) / (1 - model._raw(Xv)))
    rfm = model.rfm_.log_odds(Xv)
    scores = {
        w: average_precision_score(yv, w * lightgbm + (1 - w) * rfm)
        for w in np.round(np.linspace(0, 1, 11), 1)
    }
    assert model.lightgbm_weight_ < 1.0  # the line extrapolates to the busier weeks
    assert scores[model.lightgbm_weight_] == pytest.approx(max(scores.values()), abs=1e-9)
    assert scores[model.lightgbm_weight_] > scores[1.0]
    # what it scores is the blend it chose (and calibrated on)
    w = model.lightgbm_weight_
    np.testing.assert_allclose(
        model.predict_raw(Xv), 1 / (1 + np.exp(-(w * lightgbm + (1 - w) * rfm))), atol=1e-12
    )
    # the service's encoded matrix (columns in the model's order) scores the same
    np.testing.assert_allclose(
        model.predict_proba(Xt[model.feature_names_].to_numpy(dtype=np.float64)),
        model.predict_proba(Xt),
        rtol=0,
        atol=1e-12,
    )


def test_the_rfm_line_in_numpy_is_scikit_learns(problem: dict) -> None:
    X, _, bought = problem["train"]
    Xt = problem["test"][0]
    model = RfmPropensityModel().fit(X, bought)
    expected = model.model_.decision_function(model.scaler_.transform(model._design(Xt)))
    np.testing.assert_allclose(model.log_odds(Xt), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        model.predict_proba(Xt),
        model.model_.predict_proba(model.scaler_.transform(model._design(Xt)))[:, 1],
        rtol=0,
        atol=1e-12,
    )


def test_without_the_rfm_features_or_the_setting_the_propensity_model_is_lightgbm_alone(
    problem: dict,
) -> None:
    X, _, y = problem["train"]
    Xv, _, yv = problem["validation"]
    Xt = problem["test"][0]
    without = [c for c in X.columns if c != "purchase_count_all"]
    for model, columns in (
        (LightGBMPropensityModel(seed=1, num_threads=1, blend_rfm=True), without),
        (LightGBMPropensityModel(seed=1, num_threads=1, blend_rfm=False), list(X.columns)),
    ):
        model.fit(X[columns], y, X_val=Xv[columns], y_val=yv)
        assert model.rfm_ is None
        assert model.lightgbm_weight_ == 1.0
        np.testing.assert_array_equal(
            model.predict_proba(Xt[columns]), model.calibrator_.transform(model._raw(Xt[columns]))
        )


def test_a_propensity_model_saved_before_the_blend_still_predicts(problem: dict) -> None:
    """Models pickled before the blend existed lack its attributes: they score as LightGBM
    alone, through the calibration they were fitted with."""
    X, _, y = problem["train"]
    Xv, _, yv = problem["validation"]
    Xt = problem["test"][0]
    model = LightGBMPropensityModel(seed=1, num_threads=1, blend_rfm=False).fit(
        X, y, X_val=Xv, y_val=yv
    )
    expected = model.predict_proba(Xt)
    del model.rfm_, model.lightgbm_weight_
    np.testing.assert_array_equal(model.predict_proba(Xt), expected)


@pytest.fixture(scope="module")
def models() -> tuple[LightGBMStageModel, LightGBMPropensityModel, np.ndarray]:
    """Models whose one-row calls go through LightGBM's fast single-row prediction."""
    X, stage, bought = _problem(3000, 1)
    Xv, stage_v, bought_v = _problem(1500, 2)
    stages = LightGBMStageModel(seed=1, num_threads=1).fit(X, stage, X_val=Xv, y_val=stage_v)
    propensity = LightGBMPropensityModel(seed=1, num_threads=1, blend_rfm=True).fit(
        X, bought, X_val=Xv, y_val=bought_v
    )
    return stages, propensity, stages._matrix(_problem(300, 3)[0])


def test_the_models_score_a_row_alone_as_among_many(
    models: tuple[LightGBMStageModel, LightGBMPropensityModel, np.ndarray],
) -> None:
    stages, propensity, matrix = models
    together = stages.predict_proba(matrix)
    buyers = propensity.predict_proba(matrix)
    for i in range(0, len(matrix), 3):
        np.testing.assert_array_equal(stages.predict_proba(matrix[i : i + 1]), together[i : i + 1])
        # the trees' part is exact; the RFM line's matrix product sums in another order
        # for one row than for many (BLAS), a last-bit difference
        np.testing.assert_allclose(
            propensity.predict_proba(matrix[i : i + 1]), buyers[i : i + 1], rtol=1e-14, atol=0
        )
    for model in (stages, propensity):  # the path under test was taken
        assert "normal" in {kind for kind, *_ in model.__dict__["_single_rows"]}


def test_a_model_that_scored_single_rows_pickles_and_scores_the_same(
    models: tuple[LightGBMStageModel, LightGBMPropensityModel, np.ndarray],
) -> None:
    stages, propensity, matrix = models
    stages.warm("path")
    propensity.warm()
    row = matrix[:1]
    codes = stages.decide(stages.predict_proba(row))
    before = stages.class_contributions(row, codes, method="path")
    copy = pickle.loads(pickle.dumps(stages))
    assert "_single_rows" not in copy.__dict__  # C handles stay in their process
    np.testing.assert_array_equal(copy.predict_proba(row), stages.predict_proba(row))
    np.testing.assert_array_equal(copy.class_contributions(row, codes, method="path"), before)
    again = pickle.loads(pickle.dumps(propensity))
    np.testing.assert_array_equal(again.predict_proba(row), propensity.predict_proba(row))


def test_the_stages_sigmoid_maps_at_once_equal_each_stages_own(
    models: tuple[LightGBMStageModel, LightGBMPropensityModel, np.ndarray],
) -> None:
    stages, _, matrix = models
    raw = stages._raw(matrix)
    rng = np.random.default_rng(4)
    labels = (rng.random(len(raw)) < raw[:, 0]).astype(np.int64)
    sigmoid = [
        _Calibrator("sigmoid").fit(raw[:, k], (rng.random(len(raw)) < raw[:, k]).astype(np.int64))
        for k in range(raw.shape[1] - 1)
    ]
    # a stage absent from validation: a constant map
    sigmoid.append(_Calibrator("sigmoid").fit(raw[:, -1], np.zeros(len(raw), dtype=np.int64)))
    assert sigmoid[-1].constant_ == 0.0
    stages.calibrators_, kept = sigmoid, stages.calibrators_
    try:
        assert stages._sigmoid_lines() is not None  # the path under test
        one_by_one = np.column_stack([c.transform(raw[:, k]) for k, c in enumerate(sigmoid)])
        totals = one_by_one.sum(axis=1, keepdims=True)
        np.testing.assert_array_equal(stages._calibrated(raw), one_by_one / totals)
        stages.calibrators_ = [*sigmoid[:-1], _Calibrator("isotonic").fit(raw[:, 0], labels)]
        assert stages._sigmoid_lines() is None  # one isotonic map: each stage its own way
    finally:
        stages.calibrators_ = kept


def test_an_isotonic_step_of_one_row_is_no_certainty() -> None:
    """Review: the top isotonic step was one validation buyer, so every higher score became a
    propensity of exactly 1.0 (three test contacts, none of whom bought)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.15, 5000)
    y = (rng.random(5000) < p).astype(np.int64)
    p, y = np.append(p, 0.2), np.append(y, 1)
    calibrator = _Calibrator("isotonic", shrink=True).fit(p, y)
    top = calibrator.transform(np.array([0.2, 0.3, 0.9]))
    assert top.max() < 0.5  # the one buyer is 1 row against 20 pseudo-rows near 0.2
    # monotone, within [0, 1], and a step of thousands of rows keeps about its rate
    grid = np.linspace(0, 1, 201)
    calibrated = calibrator.transform(grid)
    assert np.all(np.diff(calibrated) >= 0)
    assert calibrated.min() >= 0
    assert calibrated.max() <= 1
    low = p < 0.05
    assert abs(calibrator.transform(p[low]).mean() - y[low].mean()) < 0.01
    # the steps keep their order, so contacts keep their ranking
    plain = _Calibrator("isotonic").fit(p, y)
    assert np.array_equal(
        np.argsort(plain.transform(grid), kind="stable"), np.argsort(calibrated, kind="stable")
    )
    assert plain.transform(np.array([0.3]))[0] == 1.0  # what the review saw


def test_rows_over_columns_read_as_the_rows_by_name() -> None:
    """``predict_frame``'s rows for the reasons: each a mapping by name over the columns,
    the same values as the table's rows as dicts."""
    from training.pyfunc import _ColumnRows

    frame = pl.DataFrame({"a": [1, None, 3], "b": ["x", "y", None], "c": [0.5, 1.5, None]})
    rows = _ColumnRows(frame.to_dict(as_series=False))
    assert len(rows) == 3
    assert [dict(row) for row in rows] == frame.to_dicts()
    assert dict(rows[-1]) == frame.to_dicts()[2]
    assert rows[1]["a"] is None
    assert rows[1]["b"] == "y"
    assert "c" in rows[0]
    assert "d" not in rows[0]
    assert len(rows[0]) == 3
    with pytest.raises(IndexError):
        rows[3]
    with pytest.raises(KeyError):
        rows[0]["d"]
    assert len(_ColumnRows({})) == 0
