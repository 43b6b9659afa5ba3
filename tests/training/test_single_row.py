"""LightGBM's fast single-row prediction gives what ``Booster.predict`` gives (the models'
one-row calls that use it: tests/training/test_models.py)."""

from __future__ import annotations

import threading

import lightgbm as lgb
import numpy as np
import pytest

from training.single_row import SingleRowPredictor


def _rows(n: int, columns: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, columns)) * 2
    rows[rng.random(size=rows.shape) < 0.2] = np.nan  # missing values take the default path
    return rows


@pytest.fixture(scope="module")
def boosters() -> dict[str, lgb.Booster]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6))
    X[rng.random(size=X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2])
    quiet = {"verbosity": -1, "num_threads": 1, "seed": 1, "deterministic": True}
    binary = lgb.train(
        {"objective": "binary", **quiet}, lgb.Dataset(X, label=signal > 0), num_boost_round=30
    )
    classes = np.digitize(signal, [-1.5, -0.5, 0.5, 1.5])
    multiclass = lgb.train(
        {"objective": "multiclass", "num_class": 5, **quiet},
        lgb.Dataset(X, label=classes),
        num_boost_round=20,
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
        np.testing.assert_allclose(normal(row), expected[i], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(leaf(row[None, :]), leaves[i])


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
    wrong: list[int] = []

    def work(start: int) -> None:
        for i in range(start, len(rows), 4):
            if not np.allclose(predict(rows[i]), expected[i], rtol=0, atol=1e-12):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(start,)) for start in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
