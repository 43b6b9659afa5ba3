"""The Bento installs what the lock file pins, every package: a model pickled with one
scikit-learn or LightGBM may not load, or may score differently, with another, and the service
relies on uvicorn's and BentoML's internals (a Bento that pinned only the direct dependencies
installed another uvicorn and httpx than the tests ran)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Served

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


@pytest.mark.slow  # the served model is trained for it
def test_a_build_that_fails_leaves_no_model_copy_behind(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is copied into the BentoML store before the Bento is built: a build stopped
    there (Ctrl-C, a bad bentofile) left the copy, without a Bento, in the store."""
    import bentoml

    from serving import packaging

    def models() -> set[str]:
        try:
            return {str(model.tag) for model in bentoml.models.list(packaging.BENTO_MODEL_NAME)}
        except bentoml.exceptions.NotFound:  # none yet
            return set()

    before = models()
    reached: list[str] = []

    def interrupted(*args: Any, **kwargs: Any) -> None:
        reached.append(str(bentoml.models.get(f"{packaging.BENTO_MODEL_NAME}:latest").tag))
        raise KeyboardInterrupt

    # bentoml.bentos is a lazy module until first used, when BentoML puts the real one in its
    # place: load it, then patch the real one
    assert callable(bentoml.bentos.build_bentofile)
    monkeypatch.setattr(importlib.import_module("bentoml.bentos"), "build_bentofile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packaging.build_bento("funnelcast", alias="champion")
    assert len(reached) == 1
    assert reached[0] not in before  # the copy was made, and then removed
    assert models() == before


@pytest.mark.slow  # the served model is trained for it
def test_a_build_stopped_after_its_bento_was_made_leaves_neither_behind(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last step (the served OpenAPI document written into the Bento) stopped by Ctrl-C
    left the Bento, its model copy removed: `funnelcast:latest` was a Bento that could not be
    served (diff review)."""
    import bentoml

    from serving import packaging

    def tags(kind: Any) -> set[str]:
        try:
            return {str(item.tag) for item in kind.list(packaging.BENTO_MODEL_NAME)}
        except bentoml.exceptions.NotFound:  # none yet
            return set()

    models, bentos = tags(bentoml.models), tags(bentoml.bentos)
    reached: list[str] = []

    def interrupted(bento: Any) -> None:
        reached.append(str(bento.tag))
        raise KeyboardInterrupt

    monkeypatch.setattr(packaging, "_served_openapi_in", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packaging.build_bento("funnelcast", alias="champion")
    assert len(reached) == 1
    assert reached[0] not in bentos  # the Bento was made, and then removed
    assert tags(bentoml.bentos) == bentos
    assert tags(bentoml.models) == models


@pytest.mark.slow  # the served model is trained for it
def test_a_build_packs_the_model_it_imported_when_another_is_imported_meanwhile(
    service_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: two builds at once, and a `--version 1` Bento served version 2: bentofile.yaml
    named funnelcast:latest, which the Bento build resolved after the other build's import.
    Here another model is imported between this build's import and its Bento build."""
    import bentoml

    from serving import packaging

    bentos = importlib.import_module("bentoml.bentos")
    build_bentofile = bentos.build_bentofile
    other: list[str] = []

    def another_import_first(*args: Any, **kwargs: Any) -> Any:
        with bentoml.models.create(packaging.BENTO_MODEL_NAME) as model:
            Path(model.path_of("placeholder.txt")).write_text("another build's model", "utf-8")
        other.append(str(model.tag))
        assert str(bentoml.models.get(f"{packaging.BENTO_MODEL_NAME}:latest").tag) == other[0]
        return build_bentofile(*args, **kwargs)

    monkeypatch.setattr(bentos, "build_bentofile", another_import_first)
    built = packaging.build_bento("funnelcast", alias="champion")
    assert len(other) == 1
    assert other[0] != built.model
    bento = bentoml.bentos.get(built.bento)
    assert [str(model.tag) for model in bento.info.models] == [built.model]
    envs = {env.name: env.value for env in bento.info.envs}
    assert envs["FUNNELCAST_BENTO_MODEL"] == built.model
    assert bentoml.models.get(built.model).info.metadata["model_version"] == built.version == "1"


# `funnelcast build` in a process of its own that sends itself SIGTERM where the Bento build
# starts: after the model was copied into the store, before any Bento holds it
_TERMINATED_BUILD = """
import importlib, os, signal, sys
import bentoml

def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs as this call returns
    raise AssertionError("SIGTERM did not stop the build")

assert callable(bentoml.bentos.build_bentofile)  # the real module, not the lazy one
importlib.import_module("bentoml.bentos").build_bentofile = terminated
from serving.cli import main
sys.argv = ["funnelcast", "build", "--tracking-uri", sys.argv[1]]
main()
"""


@pytest.mark.slow  # the served model is trained for it
def test_a_build_stopped_by_sigterm_leaves_no_model_copy_behind(
    served: Served, tmp_path: Path
) -> None:
    """Review: SIGTERM during `funnelcast build` left the model copy in the store, where it
    became funnelcast:latest (Ctrl-C removed it)."""
    home = tmp_path / "bentoml"
    env = {**os.environ, **served.env(), "BENTOML_HOME": str(home)}
    command = [sys.executable, "-c", _TERMINATED_BUILD, served.store]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "SIGTERM did not stop the build" not in result.stderr
    assert list((home / "models").rglob("model.yaml")) == []  # the copy was removed
    assert list((home / "bentos").rglob("bento.yaml")) == []


@pytest.mark.slow  # the served model is trained for it
@pytest.mark.parametrize("stage", ["model", "bento"])
def test_a_full_disk_during_a_build_is_one_line_and_leaves_no_model_copy(
    service_env: Any, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """Review: a full disk under BENTOML_HOME was a 59-line traceback (shutil.Error) and exit 1.
    Here the copy into the model store, or the Bento's build, fails as copytree fails on a full
    disk: some files written, every file's ENOSPC gathered as text in one shutil.Error."""
    import errno
    import shutil

    import bentoml

    from features.errors import InputError
    from serving import packaging

    store = Path(os.environ["BENTOML_HOME"]) / "models"
    before = sorted(store.rglob("model.yaml"))
    scratch = Path(os.environ["BENTOML_HOME"]) / "tmp"
    scratch_before = set(scratch.iterdir()) if scratch.exists() else set()
    copytree = shutil.copytree

    def full_disk(src: str, dst: str) -> shutil.Error:
        Path(dst).mkdir(parents=True, exist_ok=True)
        (Path(dst) / "half-written").write_bytes(b"x")
        failed = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, None, dst)
        return shutil.Error([(src, dst, str(failed))])

    def copy_into_a_full_store(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(dst).is_relative_to(store):
            raise full_disk(str(Path(src) / "model.yaml"), str(Path(dst) / "model.yaml"))
        return copytree(src, dst, *args, **kwargs)

    def build_on_a_full_disk(*args: Any, **kwargs: Any) -> Any:
        # as Bento.create starts: a folder of its own under BentoML's tmp/
        from bentoml._internal.configuration.containers import BentoMLContainer

        made = tempfile.mkdtemp(
            prefix="bentoml_bento_", dir=BentoMLContainer.tmp_bento_store_dir.get()
        )
        raise full_disk("/build/serving/cli.py", f"{made}/src/cli.py")

    if stage == "model":
        monkeypatch.setattr(shutil, "copytree", copy_into_a_full_store)
    else:
        assert callable(bentoml.bentos.build_bentofile)  # the real module, not the lazy one
        bentos = importlib.import_module("bentoml.bentos")
        monkeypatch.setattr(bentos, "build_bentofile", build_on_a_full_disk)
    with pytest.raises(InputError) as refused:
        packaging.build_bento("funnelcast", alias="champion")
    said = str(refused.value)
    assert "\n" not in said
    assert ": No space left on device (the build writes the model and the Bento into " in said
    assert said.count("model.yaml" if stage == "model" else "cli.py") == 1
    assert "free some space there, or point the variable at a folder on another disk" in said
    assert sorted(store.rglob("model.yaml")) == before  # no copy left, whole or half
    assert not list(store.rglob("half-written"))
    assert set(scratch.iterdir()) == scratch_before  # nor a half-built Bento
