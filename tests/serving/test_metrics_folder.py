"""Each server's Prometheus files in a folder of its own: the folders of this host's stopped
servers are removed, those of running ones and of other hosts are not (the two servers
themselves: tests/serving/test_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving import metrics


def test_a_stopped_server_s_folder_is_removed_a_running_one_s_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = int(ended.stdout)  # a process that has ended
    folders = tmp_path / "funnelcast-metrics"
    kept = {
        f"vm-{os.getpid()}-ab12cd34",  # running (this one)
        f"other-host-{gone}-ab12cd34",  # another host's: its processes are not seen here
        "notes",  # not a server's
    }
    for name in [*kept, f"vm-{gone}-00ff00ff"]:
        (folders / name).mkdir(parents=True)
        (folders / name / "counter_1.db").write_bytes(b"x")
    monkeypatch.setattr(metrics.socket, "gethostname", lambda: "vm")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    from bentoml._internal.configuration.containers import BentoMLContainer

    before = BentoMLContainer.prometheus_multiproc_dir.get()
    home = BentoMLContainer.bentoml_home.get()
    BentoMLContainer.bentoml_home.set(str(tmp_path))
    try:
        own = metrics.own_metrics_folder()
        assert own is not None
        assert own.parent == folders
        assert own.name.startswith(f"vm-{os.getpid()}-")
        assert BentoMLContainer.prometheus_multiproc_dir.get() == str(own)
    finally:
        BentoMLContainer.prometheus_multiproc_dir.set(before)
        BentoMLContainer.bentoml_home.set(home)
    assert {entry.name for entry in folders.iterdir()} == kept
