"""The Bento installs what the lock file pins, every package: a model pickled with one
scikit-learn or LightGBM may not load, or may score differently, with another, and the service
relies on uvicorn's and BentoML's internals (a Bento that pinned only the direct dependencies
installed another uvicorn and httpx than the tests ran)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pins(text: str) -> set[str]:
    """The requirement lines of a requirements file, comments and blank lines left out."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return {line for line in lines if line}


def test_the_bento_installs_every_package_the_lock_file_pins() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text("utf-8"))
    python = bentofile["python"]
    assert "packages" not in python  # one source of versions: the requirements file
    requirements = ROOT / python["requirements_txt"]
    pinned = _pins(requirements.read_text("utf-8"))
    # what uv.lock gives the project at run time, without the dev tools or the project itself
    export = ["export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"]
    exported = subprocess.run(
        [sys.executable, "-m", "uv", *export, "--no-annotate", "--no-header"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert pinned == _pins(exported), (
        "bento-requirements.txt differs from uv.lock: run `make bento-requirements`"
    )
    locked = {
        package["name"]: package["version"]
        for package in tomllib.loads((ROOT / "uv.lock").read_text("utf-8"))["package"]
    }
    versions = dict(line.split(";")[0].strip().split("==") for line in pinned)
    # everything the served model and the service import, each at the locked version
    needed = {"numpy", "pandas", "pyarrow", "polars", "scikit-learn", "scipy", "lightgbm"}
    needed |= {"mlflow", "bentoml", "pydantic", "pyyaml", "fastapi", "uvicorn", "httptools"}
    assert needed <= versions.keys()
    for name, version in versions.items():
        assert locked[name] == version, f"{name}=={version} here, {locked[name]} in uv.lock"
    # the dev tools and the Spark engine's extra are not served
    assert not {"pytest", "mypy", "ruff", "pyspark"} & versions.keys()
