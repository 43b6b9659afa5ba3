"""Each server's Prometheus files in a folder of its own, and no other server's folder ever
removed (the two servers themselves: tests/serving/test_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving import metrics
from serving.held import remove_unheld_folders


def test_a_server_s_folder_is_its_own_and_no_other_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder removed under a running server (another pid namespace sharing the home and
    the hostname, or workers serving on after their server was killed) made its /predict
    answer 500 (diff review): whether its server runs cannot be told from its pid, so none
    without a lock file is removed (one nobody holds: the next test)."""
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
    # the two folders' lock files beside them (the folders are made by BentoML when used)
    held = {f".{own.name}.lock", f".{again.name}.lock"}
    assert {entry.name for entry in folders.iterdir()} == others | held


def test_a_stopped_server_s_folder_is_removed_by_the_next_and_a_running_one_s_kept(
    tmp_path: Path,
) -> None:
    """A server killed with SIGKILL left its folder for good. The server and its workers hold
    their folder while they run; a server starting removes the folders nobody holds, never one
    a running process holds (a worker serving on after its server was killed, another pid
    namespace), nor one made before folders were locked."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    from serving.held import release_folder

    folders = tmp_path / metrics.METRICS_FOLDERS
    stopped, running, unlocked = (folders / f"vm-{n}-0000000{n}" for n in (1, 2, 3))
    for folder in (stopped, running, unlocked):
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"x")
    for folder in (stopped, running):  # made by servers that lock them (one was killed)
        (folders / f".{folder.name}.lock").touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(running)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    before = BentoMLContainer.prometheus_multiproc_dir.get()
    home = BentoMLContainer.bentoml_home.get()
    BentoMLContainer.bentoml_home.set(str(tmp_path))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        own = metrics.own_metrics_folder()
        assert own is not None
        assert sorted(entry.name for entry in folders.iterdir()) == sorted(
            [running.name, f".{running.name}.lock", unlocked.name, f".{own.name}.lock"]
        )
        metrics.remove_own_metrics_folder(own)  # as it stops
        assert not (folders / f".{own.name}.lock").exists()
    finally:
        holder.communicate("", timeout=60)
        BentoMLContainer.prometheus_multiproc_dir.set(before)
        BentoMLContainer.bentoml_home.set(home)
    assert holder.returncode == 0
    # a worker holds the folder its server gives it, as long as it runs
    with pytest.MonkeyPatch.context() as patch:
        from bentoml._internal.context import server_context

        patch.setattr(server_context, "worker_index", 1)
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(running))
        assert metrics.own_metrics_folder() is None
    try:
        assert remove_unheld_folders(folders) == []
    finally:
        release_folder(running)  # the worker stops
    assert [path for path, _ in remove_unheld_folders(folders)] == [running]


# a process that holds a folder (a server, or a worker whose server was killed) until its
# standard input ends
HOLDER = """
import sys
from pathlib import Path
from serving.held import hold_folder
assert hold_folder(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""
