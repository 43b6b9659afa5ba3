"""``funnelcast build``: a registered model and the service code as one Bento.

The model's MLflow folder is copied into the BentoML model store (name ``funnelcast``, its
registry version, training date and test metrics as metadata); ``bentofile.yaml`` at the
project root then packs the code and that model, by its exact tag, into a Bento whose
environment tells the service to load it from the Bento (``FUNNELCAST_BENTO_MODEL``), not from
the registry.
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.errors import InputError
from features.io import terminate_like_interrupt
from serving.runtime import BENTO_MODEL_DIR, check_feature_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENTOFILE = PROJECT_ROOT / "bentofile.yaml"
BENTO_MODEL_NAME = "funnelcast"


@dataclass(frozen=True)
class Built:
    bento: str  # the Bento's tag
    model: str  # the BentoML model's tag
    version: str  # the registry version packaged


def build_bento(name: str, *, alias: str, version: str | None = None) -> Built:
    """Import the registry's model (``version``, or the one ``alias`` points to) into the
    BentoML store and build the Bento around it."""
    import bentoml
    import mlflow
    from mlflow.tracking import MlflowClient

    from serving.runtime import _test_metrics
    from training.registry import load_model, resolve, run_metrics

    if not BENTOFILE.exists():
        raise InputError(
            f"{BENTOFILE} is missing; `funnelcast build` runs from a funnelcast source checkout"
        )
    ref = resolve(name, version=version) if version else resolve(name, alias=alias)
    check_feature_spec(load_model(ref))  # a model this code cannot serve is not packaged
    run = MlflowClient().get_run(ref.run_id)
    import datetime as dt

    trained_at = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
    # SIGTERM (a service manager, `kill`) takes Ctrl-C's path: an exception, so the clean-up
    # below runs; the model copy left behind would be the store's funnelcast:latest
    with (
        terminate_like_interrupt(),
        tempfile.TemporaryDirectory(prefix="funnelcast-build-") as scratch,
    ):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ref.name}/{ref.version}", dst_path=scratch
        )
        stored = bento = None
        try:
            with bentoml.models.create(
                BENTO_MODEL_NAME,
                labels={"registry_version": ref.version},
                metadata={
                    "model_name": ref.name,
                    "model_version": ref.version,
                    "run_id": ref.run_id,
                    "trained_at": trained_at.isoformat(timespec="seconds"),
                    "metrics": _test_metrics(run_metrics(ref)),
                },
            ) as stored:
                shutil.copytree(local, stored.path_of(BENTO_MODEL_DIR))
            with _bento_scratch_of_its_own():
                bento = bentoml.bentos.build_bentofile(
                    str(_bentofile_for(str(stored.tag), Path(scratch))),
                    build_ctx=str(PROJECT_ROOT),
                    labels={"registry_version": ref.version},
                )
            _check_packed(bento, str(stored.tag))
            _served_openapi_in(bento)
        except BaseException as error:  # Ctrl-C and SIGTERM too: no model copy without its Bento
            if bento is not None:  # built, and its last step failed: no Bento without its model
                with contextlib.suppress(bentoml.exceptions.NotFound):
                    bentoml.bentos.delete(bento.tag)
            if stored is not None:  # its folder in the store, whole or half-copied
                with contextlib.suppress(bentoml.exceptions.NotFound):
                    bentoml.models.delete(stored.tag)
            if isinstance(error, OSError):  # a full disk, mostly: one line, not a traceback
                raise _unwritable(error) from None
            raise
    return Built(bento=str(bento.tag), model=str(stored.tag), version=ref.version)


def _served_openapi_in(bento: Any) -> None:
    """The Bento's ``apis/openapi.yaml`` is the document the service serves at /docs.json.
    BentoML writes its own there: no security schemes, its generic 400/404/500 bodies, and
    fields the rules fallback and ``no_consent`` answer with null said never to be null, so a
    tool reading the Bento's contract got another one than the server's (deploy review)."""
    import yaml

    from serving.openapi import complete_openapi
    from serving.service import Funnelcast

    document = complete_openapi(Funnelcast.openapi_spec.asdict())  # type: ignore[attr-defined]
    path = Path(bento.path) / "apis" / "openapi.yaml"
    written = path.with_name(f".{path.name}.tmp")
    written.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), "utf-8")
    written.replace(path)


@contextlib.contextmanager
def _bento_scratch_of_its_own() -> Iterator[None]:
    """BentoML builds a Bento in a folder under its home's ``tmp/`` and removes it only when
    the Bento object is collected: a build that failed part-way (a full disk) left its folder
    there, and each retry filled the disk more. This build's go into a folder of its own under
    ``tmp/``, removed after (with BentoML's own testing plugin's setting)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    shared = BentoMLContainer.tmp_bento_store_dir.get()
    private = tempfile.mkdtemp(prefix="funnelcast-build-", dir=shared)
    BentoMLContainer.tmp_bento_store_dir.set(private)
    try:
        yield
    finally:
        BentoMLContainer.tmp_bento_store_dir.set(shared)
        shutil.rmtree(private, ignore_errors=True)


def _bentofile_for(model: str, folder: Path) -> Path:
    """``bentofile.yaml`` with the model to pack, and the one the service loads, named by
    ``model``'s exact tag, written into ``folder``. The file's ``funnelcast:latest`` is read
    when the Bento is built: a build running beside this one may have imported its own model
    by then, and this Bento would pack that one under this build's version label."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(BENTOFILE.read_text("utf-8"))
    config["models"] = [model]
    config["envs"] = [
        {**env, "value": model} if env["name"] == "FUNNELCAST_BENTO_MODEL" else env
        for env in config.get("envs", [])
    ]
    path = folder / "bentofile.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return path


def _check_packed(bento: Any, model: str) -> None:
    """The Bento packs ``model`` and nothing else, and its service is told to load it; a Bento
    that does not is removed (it would serve another model under this version's label)."""
    import bentoml

    packed = [str(packed.tag) for packed in bento.info.models]
    told = {env.name: env.value for env in bento.info.envs}.get("FUNNELCAST_BENTO_MODEL")
    if packed != [model] or told != model:
        bentoml.bentos.delete(bento.tag)
        raise RuntimeError(
            f"the Bento {bento.tag} packs {packed} and loads {told}, not the model {model} "
            "this build imported; it was removed. Build again"
        )


def _unwritable(error: OSError) -> InputError:
    """A write of the build that failed, in one line: the file, why, and the fix.
    shutil.copytree (BentoML's copies into its stores) gathers every file's error as text in a
    ``shutil.Error``; the first is said, its number read from the text's "[Errno 28] ..."."""
    # a copy's error names the source, then the target (filename2) it could not write
    where = error.filename2 or error.filename
    number, why = error.errno, error.strerror or str(error)
    if isinstance(error, shutil.Error) and error.args and error.args[0]:
        _, where, text = error.args[0][0]
        said = re.match(r"\[Errno (\d+)\] ([^:]*)", str(text))
        number, why = (int(said[1]), said[2]) if said else (None, str(text))
    if number in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "free some space there, or point the variable at a folder on another disk"
    else:
        fix = "point the variable at a folder you may write to"
    return InputError(
        f"cannot write {where or 'the Bento'}: {why} (the build writes the model and the Bento "
        f"into BentoML's home, BENTOML_HOME, and works in the temporary folder, TMPDIR); {fix}. "
        "The model's copy was removed from the store"
    )
