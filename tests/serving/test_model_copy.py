"""The local copy of a registered model that `funnelcast serve` makes for its workers: made once
and reused, named so that no other store's version takes its place, written whole or not at
all, and refused when it is not whole. The download is a stand-in here; a real model's copy,
loaded with the registry gone, is tested in test_service.py and test_server.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from features.errors import InputError
from serving.held import remove_unheld_folders
from serving.model_copy import (
    MODEL_FOLDER,
    RECORD,
    UnwritableCopyError,
    copy_place,
    make_model_copy,
    read_model_copy,
)

INFO = {
    "model": "funnelcast",
    "model_name": "funnelcast",
    "model_version": "3",
    "source": "models:/funnelcast/3",
    "store": "sqlite:////srv/mlruns/mlflow.db",
    "trained_at": "2026-12-01T10:00:00+00:00",
    "metrics": {"test.stage.lightgbm.macro_f1": 0.41},
}


class Download:
    """Writes a small MLflow-like model folder and counts its calls."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = files or {"MLmodel": b"flavors: {}\n", "python_model.pkl": b"\x80" * 4096}
        self.calls = 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        for name, data in self.files.items():
            (folder / name).write_bytes(data)


def _place(root: Path, **changed: str) -> Path:
    key = {"store": INFO["store"], "name": "funnelcast", "version": "3", "run_id": "r1"}
    return copy_place(root, **{**key, **changed})  # type: ignore[arg-type]


def test_a_copy_is_made_once_and_reused_with_what_the_registry_said(tmp_path: Path) -> None:
    download = Download()
    place = make_model_copy(_place(tmp_path), INFO, download)
    assert (place / MODEL_FOLDER / "python_model.pkl").read_bytes() == b"\x80" * 4096
    assert read_model_copy(place) == INFO
    assert make_model_copy(_place(tmp_path), INFO, download) == place
    assert download.calls == 1
    # metrics logged to the run since: the registry's word now, without a new download
    later = {**INFO, "metrics": {"test.stage.lightgbm.macro_f1": 0.42}}
    make_model_copy(_place(tmp_path), later, download)
    assert (download.calls, read_model_copy(place)) == (1, later)
    # nothing but the copy is left beside it
    assert [entry.name for entry in tmp_path.iterdir()] == [place.name]


@pytest.mark.parametrize(
    "other",
    [
        {"store": "http://mlflow.internal:5000"},  # another store's version 3
        {"run_id": "r2"},  # the store made again at the same place: version 3 anew
        {"name": "funnelcast-olist"},
        {"version": "4"},
    ],
)
def test_another_store_or_run_never_shares_a_copy(tmp_path: Path, other: dict[str, str]) -> None:
    assert _place(tmp_path, **other) != _place(tmp_path)
    assert _place(tmp_path).name.startswith("funnelcast-3-")


def test_a_model_name_cannot_lead_the_copy_out_of_its_folder(tmp_path: Path) -> None:
    place = _place(tmp_path, name="../../etc/x y")
    assert place.parent == tmp_path
    assert not place.name.startswith(".")


@pytest.mark.parametrize("damage", ["truncated", "removed", "no record"])
def test_a_copy_that_is_not_whole_is_refused_and_made_again(tmp_path: Path, damage: str) -> None:
    """A copy at its place is whole when renamed there; one damaged since (a write lost in a
    crash, a file removed) is never loaded: a worker is refused, naming the fix, and the
    next `funnelcast serve` replaces it."""
    download = Download()
    place = make_model_copy(_place(tmp_path), INFO, download)
    model = place / MODEL_FOLDER / "python_model.pkl"
    if damage == "truncated":
        model.write_bytes(b"\x80" * 100)
    elif damage == "removed":
        model.unlink()
    else:
        (place / RECORD).unlink()
    with pytest.raises(InputError, match=f"the model's local copy {place} .*restart `funnelcast"):
        read_model_copy(place)
    assert make_model_copy(_place(tmp_path), INFO, download) == place
    assert download.calls == 2
    assert read_model_copy(place) == INFO
    assert [entry.name for entry in tmp_path.iterdir()] == [place.name]


def test_a_copy_that_is_not_there_is_refused_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist; restart `funnelcast serve`"):
        read_model_copy(tmp_path / "gone")


def test_an_interrupted_copy_leaves_nothing_to_be_used(tmp_path: Path) -> None:
    class Interrupted(Download):
        def __call__(self, folder: Path) -> None:
            (folder / "MLmodel").write_bytes(b"flavors: {}\n")  # half of the model
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_model_copy(_place(tmp_path), INFO, Interrupted())
    assert list(tmp_path.iterdir()) == []


def test_a_copy_abandoned_by_a_killed_command_is_removed_never_used(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the hidden folder of a process that is gone is
    removed by the next copy, one of a process still running is left to it."""
    ended = [sys.executable, "-c", "import os; print(os.getpid())"]
    gone = subprocess.run(ended, check=True, capture_output=True, text=True)
    abandoned = tmp_path / f".partial-{gone.stdout.strip()}-x1"
    working = tmp_path / f".partial-{os.getpid()}-x2"
    for folder in (abandoned, working):
        (folder / MODEL_FOLDER).mkdir(parents=True)
        (folder / MODEL_FOLDER / "MLmodel").write_bytes(b"half")
    with pytest.raises(InputError):
        read_model_copy(abandoned)  # not a copy: never loaded
    place = make_model_copy(_place(tmp_path), INFO, Download())
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted([place.name, working.name])


def test_a_copy_that_cannot_be_written_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    said = r"cannot write the model's local copy .*set BENTOML_HOME to a folder you may write to"
    with pytest.raises(UnwritableCopyError, match=said):
        make_model_copy(_place(blocker), INFO, Download())


def test_a_registry_that_fails_during_the_download_is_said_so_without_credentials(
    tmp_path: Path,
) -> None:
    """requests' errors are OSErrors: not a copy that cannot be written, but the registry."""

    def refused(folder: Path) -> None:
        raise ConnectionError("http://alice:s3cret@mlflow:5000 refused the connection")

    with pytest.raises(InputError, match="could not be downloaded from the MLflow registry") as e:
        make_model_copy(_place(tmp_path), INFO, refused)
    assert not isinstance(e.value, UnwritableCopyError)
    assert "s3cret" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("named", [True, False], ids=["file-named", "no-file"])
def test_a_full_disk_during_the_download_is_the_copy_not_the_registry(
    tmp_path: Path, named: bool
) -> None:
    """A write into the copy that fails (a full disk: its error may name the file or none) is
    the copy's fault, never the registry's: read as the registry's, `--allow-rules-fallback`
    would serve the rules while the model is there (mutation review)."""
    import errno

    def disk_full(folder: Path) -> None:
        (folder / "MLmodel").write_bytes(b"flavors: {}\n")
        raise OSError(
            errno.ENOSPC,
            "No space left on device",
            *([str(folder / "python_model.pkl")] if named else []),
        )

    with pytest.raises(UnwritableCopyError, match="cannot write the model's local copy"):
        make_model_copy(_place(tmp_path), INFO, disk_full)
    assert list(tmp_path.iterdir()) == []


def test_an_error_naming_a_file_of_the_copy_is_the_copy_whatever_its_kind(
    tmp_path: Path,
) -> None:
    def denied(folder: Path) -> None:
        raise PermissionError(13, "Permission denied", str(folder / "python_model.pkl"))

    with pytest.raises(UnwritableCopyError):
        make_model_copy(_place(tmp_path), INFO, denied)


def test_the_record_names_every_file_of_the_model(tmp_path: Path) -> None:
    place = make_model_copy(_place(tmp_path), INFO, Download())
    record = json.loads((place / RECORD).read_text("utf-8"))
    assert set(record["files"]) == {f"{MODEL_FOLDER}/MLmodel", f"{MODEL_FOLDER}/python_model.pkl"}


# what `funnelcast serve` does: hold the copy, then become the server (exec) and run until
# its standard input ends
HOLDER = """
import os, sys
from pathlib import Path
from serving.held import hold_folder
assert hold_folder(Path(sys.argv[1]))
server = "import sys; print('serving', flush=True); sys.stdin.read()"
os.execv(sys.executable, [sys.executable, "-c", server])
"""


def test_copies_no_running_server_holds_are_removed_and_held_ones_kept(tmp_path: Path) -> None:
    """Every promotion served left its model's copy behind, for ever. A start removes the
    copies no running server holds: not the one it serves, not one a server holds (the lock
    kept across the exec into `bentoml serve`), not one made before copies were locked; each
    is renamed aside whole, and a lock file left by a start that failed goes too."""
    served = make_model_copy(_place(tmp_path, version="6"), INFO, Download())
    running = make_model_copy(_place(tmp_path, version="5"), INFO, Download())
    unused = make_model_copy(_place(tmp_path, version="4"), INFO, Download())
    unlocked = make_model_copy(_place(tmp_path, version="3"), INFO, Download())
    # each made by a `funnelcast serve`, which makes the lock file first: the running one's
    # holds it still, the unused one's has stopped, and this start holds the served one
    for copy in (unused, served, running):
        (tmp_path / f".{copy.name}.lock").touch()
    (tmp_path / ".funnelcast-9-0123456789abcdef.lock").touch()  # a start that failed
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(running)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "serving\n"
        size = _bytes(unused)
        assert size > 4096  # the model's files and the record
        assert remove_unheld_folders(tmp_path, keep=served) == [(unused, size)]
        kept = [served, running, unlocked]
        locks = [f".{copy.name}.lock" for copy in (served, running)]
        assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted(
            [*(copy.name for copy in kept), *locks]
        )
        assert read_model_copy(running) == INFO  # whole, as its server loads it
    finally:
        holder.communicate("", timeout=60)  # the server stops
    assert holder.returncode == 0
    size = _bytes(running)
    assert remove_unheld_folders(tmp_path, keep=served) == [(running, size)]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted(
        [served.name, f".{served.name}.lock", unlocked.name]
    )
    assert remove_unheld_folders(tmp_path / "none-yet", keep=served) == []


def _bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
