"""The Bento installs what the lock file pins: a model pickled with one scikit-learn or LightGBM
may not load, or may score differently, with another."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_bento_pins_the_locked_versions() -> None:
    locked = {
        package["name"]: package["version"]
        for package in tomllib.loads((ROOT / "uv.lock").read_text("utf-8"))["package"]
    }
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text("utf-8"))
    pins = [line.split("==") for line in bentofile["python"]["packages"]]
    # everything the served model and the service import, each pinned
    needed = {"numpy", "pandas", "pyarrow", "polars", "scikit-learn", "scipy", "lightgbm"}
    needed |= {"mlflow", "bentoml", "pydantic", "pyyaml", "fastapi"}
    assert needed <= {name for name, _ in pins}
    for name, version in pins:
        assert locked.get(name) == version, (
            f"{name}=={version} in bentofile.yaml, {locked.get(name)} in uv.lock"
        )
