"""Folders that running servers hold, and the removal of the ones none holds.

A server's model copy (``serving.model_copy``) and its metrics folder (``serving.metrics``)
live under BentoML's home, one per server or per model served, and outlast the server when it
is killed or when the next promotion is served instead. Whether a folder's server still runs
cannot be told from a process id (another pid namespace sharing the home, workers serving on
after their server was killed), so each folder has a lock file beside it (``.NAME.lock``) that
its server, and each of its workers, hold shared (``fcntl.flock``) for as long as they run; the
kernel lets it go when they end, however they end. A starting server removes the folders whose
lock nobody holds. A folder without a lock file (made before folders were locked) is never
removed: a server that takes no lock may be using it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

# lock descriptors this process holds for its life (and the program it execs into)
_HELD: dict[Path, int] = {}
_LOCK = re.compile(r"\.(.+)\.lock")
_ASIDE = re.compile(r"\.stale-(\d+)-")  # a folder being removed, by that process


def hold_folder(folder: Path) -> bool:
    """A shared lock on ``folder`` (there or still to be made), held by this process for its
    life and by the program it execs into: while it is held, ``remove_unheld_folders`` never
    removes the folder. False where no lock can be taken (a parent that cannot be written, a
    file system without locks), and for a folder that is there without a lock file (made
    before folders were locked: a server that takes no lock may use it, and a lock file made
    now would let the folder be removed once this process ends): the folder is used all the
    same, and kept by nobody's lock."""
    folder = Path(folder)
    if folder in _HELD:
        return True
    try:
        try:
            descriptor = _locked(lock_of(folder), fcntl.LOCK_SH, create=False)
        except FileNotFoundError:
            if folder.exists():
                return False
            folder.parent.mkdir(parents=True, exist_ok=True)
            descriptor = _locked(lock_of(folder), fcntl.LOCK_SH, create=True)
    except OSError:
        return False
    if descriptor is None:  # pragma: no cover - a blocking lock is always taken
        return False
    os.set_inheritable(descriptor, True)  # kept by `bentoml serve`, which `serve` becomes
    _HELD[folder] = descriptor
    return True


def release_folder(folder: Path) -> None:
    """Let go of a folder this process holds (``hold_folder``): its server stops using it."""
    descriptor = _HELD.pop(Path(folder), None)
    if descriptor is not None:
        os.close(descriptor)


def remove_unheld_folders(root: Path, *, keep: Path | None = None) -> list[tuple[Path, int]]:
    """The folders under ``root`` that nobody holds (``hold_folder``), but ``keep``, removed:
    each renamed aside whole under an exclusive lock, then deleted, so a server starting
    meanwhile never finds half of one (it waits for the lock, finds no folder and makes it
    again). Folders without a lock file are kept, and so are hidden ones (a copy being
    written). Lock files whose folder is gone and that nobody holds are removed, and so are
    the folders renamed aside by a start that was killed before it deleted them. Returns the
    folders removed with their sizes in bytes; one that cannot be removed is left as is."""
    removed: list[tuple[Path, int]] = []
    try:
        entries = sorted(Path(root).iterdir())
    except OSError:  # nothing made there yet, or a folder that cannot be read
        return removed
    for entry in entries:
        if (aside_by := _ASIDE.match(entry.name)) is not None:
            from features.io import process_runs  # the data libraries: only when needed

            if not process_runs(int(aside_by[1])):  # a killed removal's, unlocked already
                shutil.rmtree(entry, ignore_errors=True)
            continue
        lock = _LOCK.fullmatch(entry.name)
        if lock and not (entry.parent / lock[1]).exists():
            _remove_orphan_lock(entry)  # its folder removed, or never made (a failed start)
        if entry.name.startswith(".") or entry == keep or not entry.is_dir():
            continue
        try:
            descriptor = _locked(lock_of(entry), fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
        except OSError:  # no lock file: made before folders were locked; or no locks here
            continue
        if descriptor is None:  # held: a running server's
            continue
        try:
            try:
                size = sum(path.stat().st_size for path in entry.rglob("*") if path.is_file())
                aside = Path(tempfile.mkdtemp(prefix=f".stale-{os.getpid()}-", dir=root))
            except OSError:
                continue
            try:
                os.rename(entry, aside / "folder")
            except OSError:
                with contextlib.suppress(OSError):
                    aside.rmdir()
                continue
            with contextlib.suppress(OSError):  # a start waiting on it takes a new one
                lock_of(entry).unlink()
        finally:
            os.close(descriptor)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append((entry, size))
    return removed


def lock_of(folder: Path) -> Path:
    """The lock file of ``folder``, beside it."""
    return folder.with_name(f".{folder.name}.lock")


def _remove_orphan_lock(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = _locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
        if descriptor is not None:  # not held: no start is about to make its folder
            try:
                path.unlink()
            finally:
                os.close(descriptor)


def _locked(path: Path, operation: int, *, create: bool) -> int | None:
    """An open descriptor of the lock file ``path`` with ``operation`` (``fcntl.flock``) taken;
    None when a non-blocking lock is held elsewhere. A file removed or replaced while this
    waited for it (its folder removed) is opened again: a lock on it would guard nothing."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while True:
        descriptor = os.open(path, flags, 0o644)
        try:
            fcntl.flock(descriptor, operation)
            opened = os.fstat(descriptor)
            try:
                now = os.stat(path)
                same = (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
            except FileNotFoundError:
                same = False
        except BlockingIOError:
            os.close(descriptor)
            return None
        except BaseException:
            os.close(descriptor)
            raise
        if same:
            return descriptor
        os.close(descriptor)
