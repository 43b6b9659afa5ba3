"""Folders that running servers hold, and the removal of those nobody holds (serving.held): a
server's model copy and metrics folder. The copies' removal by `funnelcast serve` is tested
in test_model_copy.py and test_cli.py, the metrics folders' in test_metrics_folder.py."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from serving import held
from serving.held import hold_folder, lock_of, release_folder, remove_unheld_folders


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "data").write_bytes(b"x" * 100)
    return path


def test_a_folder_held_by_this_process_is_kept_until_released(tmp_path: Path) -> None:
    """flock locks belong to the open file, not the process: a folder this process holds is
    kept even from this process's own removal, until it lets go."""
    folder = tmp_path / "a"
    assert hold_folder(folder)  # taken before the folder is made, as its server does
    _folder(folder)
    assert hold_folder(folder)  # once: the same lock
    try:
        assert remove_unheld_folders(tmp_path) == []
        assert folder.is_dir()
    finally:
        release_folder(folder)
    assert remove_unheld_folders(tmp_path) == [(folder, 100)]
    assert list(tmp_path.iterdir()) == []  # its lock file with it


def test_a_folder_there_without_a_lock_file_is_never_taken_over(tmp_path: Path) -> None:
    """A folder made before folders were locked may be used by a server that takes no lock: a
    lock file made for it by a newer process would let it be removed once that process ends,
    under the older server (review). It is used unheld, and never removed."""
    older = _folder(tmp_path / "older")
    assert not hold_folder(older)
    assert not lock_of(older).exists()
    assert remove_unheld_folders(tmp_path) == []
    assert older.is_dir()


def test_a_folder_that_cannot_be_locked_is_used_all_the_same(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert not hold_folder(blocker / "copy")
    assert remove_unheld_folders(blocker) == []


def test_a_start_that_waited_while_its_folder_was_removed_holds_the_one_it_makes(
    tmp_path: Path,
) -> None:
    """A start waits for the lock while another removes the folder (its lock file with it):
    the lock it then gets must be the new file's, or the folder it makes again would be
    removed by the next start while its server runs."""
    place = _folder(tmp_path / "copy")
    lock = lock_of(place)
    remover = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(remover, fcntl.LOCK_EX)  # as remove_unheld_folders takes it
    holds: list[bool] = []
    start = threading.Thread(target=lambda: holds.append(hold_folder(place)))
    start.start()
    try:
        _wait_for_a_waiter(os.fstat(remover).st_ino)
        os.rename(place, tmp_path / ".stale-copy")  # as remove_unheld_folders removes it
        lock.unlink()
    finally:
        os.close(remover)
    start.join(timeout=60)
    try:
        assert holds == [True]
        assert lock.exists()
        assert os.fstat(held._HELD[place]).st_ino == os.stat(lock).st_ino
        remade = _folder(place)
        assert remove_unheld_folders(tmp_path) == []  # its server's, so kept
        assert remade.is_dir()
    finally:
        release_folder(place)


def _wait_for_a_waiter(inode: int) -> None:
    """Until a process waits for a lock on the file ``inode`` (/proc/locks lists a blocked
    request with "->")."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields and fields[-3].endswith(f":{inode}"):
                return
        time.sleep(0.01)
    raise AssertionError("the start never waited for the lock")


def test_a_folder_left_aside_by_a_killed_removal_is_removed_by_the_next(tmp_path: Path) -> None:
    """A start killed between renaming a folder aside and deleting it left `.stale-PID-` for
    good in the metrics folders' root (the model copies' root swept its own): the next
    removal deletes it once that process is gone, and not while it runs."""
    import subprocess
    import sys

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    killed = _folder(tmp_path / f".stale-{int(ended.stdout)}-a1b2" / "folder")
    running = _folder(tmp_path / f".stale-{os.getpid()}-c3d4" / "folder")

    assert remove_unheld_folders(tmp_path) == []  # not a held folder's removal: not reported
    assert not killed.parent.exists()
    assert running.is_dir()
