"""The retraining notebook runs top to bottom with papermill, as a data scientist would run it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
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
    # the last cell's printed decision (not the cell's source, which holds both words) agrees
    # with the registry: version 1 is the champion exactly when the notebook says promoted
    executed = nbformat.read(tmp_path / "retrain-out.ipynb", as_version=4)
    printed = "".join(
        output.get("text", "")
        for output in executed.cells[-1].get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
    )
    decision = re.search(r"^(promoted|not promoted) ", printed, flags=re.MULTILINE)
    assert decision is not None, printed
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = client.get_model_version("funnelcast", "1").aliases
    assert ("champion" in aliases) == (decision.group(1) == "promoted")
