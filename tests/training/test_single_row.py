"""LightGBM's fast single-row prediction gives what ``Booster.predict`` gives (the models'
one-row calls that use it: tests/training/test_models.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import lightgbm as lgb
import numpy as np
import pytest

from training.single_row import SingleRowPredictor


def _rows(n: int, columns: int, seed: int) -> np.ndarray:
    """Rows with missing values; the last column is a category code: known, unknown (7),
    negative, fractional or missing."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, columns)) * 2
    rows[rng.random(size=rows.shape) < 0.2] = np.nan  # missing values take the default path
    rows[:, -1] = rng.choice([0.0, 1.0, 2.0, 3.0, 4.0, 7.0, -1.0, 2.7, np.nan], size=n)
    return rows


@pytest.fixture(scope="module")
def boosters() -> dict[str, lgb.Booster]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6))
    X[rng.random(size=X.shape) < 0.1] = np.nan
    X[:, 5] = rng.integers(0, 5, size=len(X))  # a categorical feature
    signal = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2])
    signal += np.where(X[:, 5] == 3, 1.5, 0.0)
    quiet = {"verbosity": -1, "num_threads": 1, "seed": 1, "deterministic": True}

    def data(label: np.ndarray) -> lgb.Dataset:
        return lgb.Dataset(X, label=label, categorical_feature=[5])

    binary = lgb.train({"objective": "binary", **quiet}, data(signal > 0), num_boost_round=30)
    classes = np.digitize(signal, [-1.5, -0.5, 0.5, 1.5])
    multiclass = lgb.train(
        {"objective": "multiclass", "num_class": 5, **quiet}, data(classes), num_boost_round=20
    )
    return {"binary": binary, "multiclass": multiclass}


@pytest.mark.parametrize("name", ["binary", "multiclass"])
@pytest.mark.parametrize("num_iteration", [-1, 7])
def test_a_row_predicts_as_booster_predict_does(
    boosters: dict[str, lgb.Booster], name: str, num_iteration: int
) -> None:
    booster = boosters[name]
    rows = _rows(300, booster.num_feature(), seed=1)
    normal = SingleRowPredictor(booster, kind="normal", num_iteration=num_iteration)
    leaf = SingleRowPredictor(booster, kind="leaf", num_iteration=num_iteration)
    expected = booster.predict(rows, num_iteration=num_iteration).reshape(len(rows), -1)
    leaves = booster.predict(rows, num_iteration=num_iteration, pred_leaf=True)
    assert leaves.shape[1] == len(leaf(rows[0]))
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(normal(row), expected[i])
        np.testing.assert_array_equal(leaf(row[None, :]), leaves[i])


def test_other_predictions_on_the_booster_do_not_change_a_predictors_iterations(
    boosters: dict[str, lgb.Booster],
) -> None:
    """LightGBM keeps the iterations to predict on the booster: a predictor on the shared
    booster would follow the latest predict call (and write past its buffer for leaves)."""
    booster = boosters["multiclass"]
    rows = _rows(20, booster.num_feature(), seed=4)
    normal = SingleRowPredictor(booster, kind="normal", num_iteration=7)
    leaf = SingleRowPredictor(booster, kind="leaf", num_iteration=7)
    expected = booster.predict(rows, num_iteration=7)
    leaves = booster.predict(rows, num_iteration=7, pred_leaf=True)
    for i, row in enumerate(rows):
        booster.predict(rows[:2])  # all iterations
        booster.predict(rows[:2], pred_contrib=True)
        np.testing.assert_array_equal(normal(row), expected[i])
        np.testing.assert_array_equal(leaf(row), leaves[i])
    assert len(leaf(rows[0])) == 7 * 5


def test_each_call_returns_its_own_array(boosters: dict[str, lgb.Booster]) -> None:
    booster = boosters["multiclass"]
    rows = _rows(2, booster.num_feature(), seed=2)
    predict = SingleRowPredictor(booster, kind="normal")
    first = predict(rows[0])
    kept = first.copy()
    predict(rows[1])
    np.testing.assert_array_equal(first, kept)


def test_a_row_of_the_wrong_width_is_refused(boosters: dict[str, lgb.Booster]) -> None:
    predict = SingleRowPredictor(boosters["binary"], kind="normal")
    with pytest.raises(ValueError, match="one row of 6 values"):
        predict(np.zeros(5))


def test_threads_sharing_a_predictor_each_get_their_own_rows_answer(
    boosters: dict[str, lgb.Booster],
) -> None:
    booster = boosters["multiclass"]
    rows = _rows(400, booster.num_feature(), seed=3)
    expected = booster.predict(rows)
    predict = SingleRowPredictor(booster, kind="normal")

    def work(start: int) -> list[int]:
        return [
            i
            for i in range(start, len(rows), 4)
            if not np.array_equal(predict(rows[i]), expected[i])
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        wrong = [i for part in pool.map(work, range(4)) for i in part]  # raises what they raise
    assert wrong == []
