"""``funnelcast build``: a registered model and the service code as one Bento.

The model's MLflow folder is copied into the BentoML model store (name ``funnelcast``, its
registry version, training date and test metrics as metadata); ``bentofile.yaml`` at the
project root then packs the code and that model into a Bento whose environment tells the
service to load it from the Bento (``FUNNELCAST_BENTO_MODEL``), not from the registry.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from features.errors import InputError
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
    with tempfile.TemporaryDirectory(prefix="funnelcast-build-") as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ref.name}/{ref.version}", dst_path=scratch
        )
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
    try:
        bento = bentoml.bentos.build_bentofile(
            str(BENTOFILE), build_ctx=str(PROJECT_ROOT), labels={"registry_version": ref.version}
        )
    except BaseException:  # Ctrl-C too: no model copy is left without its Bento
        bentoml.models.delete(stored.tag)
        raise
    return Built(bento=str(bento.tag), model=str(stored.tag), version=ref.version)
