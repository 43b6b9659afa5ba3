"""The retraining notebook runs top to bottom with papermill, as a data scientist would run it."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_retraining_notebook_trains_logs_and_registers_a_model(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "retrain.ipynb"),
        str(tmp_path / "retrain-out.ipynb"),
        parameters={"contacts": 6000, "days": 120, "tracking_uri": uri},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(
        "name='funnelcast'"
    )
    assert [str(v.version) for v in versions] == ["1"]
    output = (tmp_path / "retrain-out.ipynb").read_text(encoding="utf-8")
    assert "promoted" in output
