"""Each server's Prometheus files in a folder of its own, and no other server's folder ever
removed (the two servers themselves: tests/serving/test_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving import metrics


def test_a_server_s_folder_is_its_own_and_no_other_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder removed under a running server (another pid namespace sharing the home and
    the hostname, or workers serving on after their server was killed) made its /predict
    answer 500 (diff review): whether its server runs cannot be told, so none is removed."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    folders = tmp_path / "funnelcast-metrics"
    others = {f"vm-{int(ended.stdout)}-00ff00ff", f"vm-{os.getpid()}-ab12cd34", "notes"}
    for name in others:
        (folders / name).mkdir(parents=True)
        (folders / name / "counter_1.db").write_bytes(b"x")
    monkeypatch.setattr(metrics.socket, "gethostname", lambda: "v-m")
    from bentoml._internal.configuration.containers import BentoMLContainer

    before = BentoMLContainer.prometheus_multiproc_dir.get()
    home = BentoMLContainer.bentoml_home.get()
    BentoMLContainer.bentoml_home.set(str(tmp_path))
    try:
        own = metrics.own_metrics_folder()
        again = metrics.own_metrics_folder()
        assert own is not None
        assert again is not None
        assert own.parent == folders
        assert own.name.startswith(f"v_m-{os.getpid()}-")
        assert again != own  # a random part: a pid used again never shares a folder
        assert BentoMLContainer.prometheus_multiproc_dir.get() == str(again)
    finally:
        BentoMLContainer.prometheus_multiproc_dir.set(before)
        BentoMLContainer.bentoml_home.set(home)
    assert {entry.name for entry in folders.iterdir()} == others
