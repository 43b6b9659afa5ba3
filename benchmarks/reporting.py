"""What every benchmark writes beside its figures: the machine, the code measured, and the
JSON file itself (merged with earlier runs, written all or nothing)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from training.settings import TrainingSettings

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


def machine(libraries: Iterable[str]) -> dict[str, Any]:
    """The machine and the versions of the libraries that shape the figures."""
    versions: dict[str, str | None] = {}
    for name in libraries:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "node": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "total_ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
        "libraries": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version(folders: Iterable[str]) -> dict[str, Any]:
    """The commit measured, and the files under ``folders`` that differ from it (the figures
    are for those)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", *folders)
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": changed.splitlines()}


def load_previous(path: Path, benchmark: str) -> dict[str, Any]:
    """The figures of earlier runs of ``benchmark``, so parts measured apart end up in one file."""
    if not path.exists():
        return {}
    try:
        previous: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return previous if previous.get("benchmark") == benchmark else {}


def write_json_atomic(result: dict[str, Any], path: Path, *, allow_nan: bool = True) -> None:
    """Write the JSON to a temporary file beside ``path`` and rename it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, allow_nan=allow_nan)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def smoke_run_models(settings: TrainingSettings) -> TrainingSettings:
    """``settings`` with small LightGBM models (20 rounds of 7 leaves), for the benchmarks'
    --quick smoke runs: the models' size is not what a smoke run measures."""
    lightgbm = settings.lightgbm.model_copy(
        update={"num_boost_round": 20, "params": {**settings.lightgbm.params, "num_leaves": 7}}
    )
    return settings.model_copy(update={"lightgbm": lightgbm})
