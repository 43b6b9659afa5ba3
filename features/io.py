"""Reading and writing canonical tables. Every write is atomic: a file is written beside its
target under a temporary name and renamed into place, so no reader ever sees half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import InputError


def _umask() -> int:
    mask = os.umask(0o022)  # read it the only way there is: set it and set it back
    os.umask(mask)
    return mask


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write one Parquet file atomically (temp file in the same folder, fsync, rename). A
    place that cannot take the file (a folder of that name, a file where a folder goes, no
    permission) is an ``InputError`` naming it; nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name for the Parquet output")
    try:
        return _write_parquet_atomic(table, path)
    except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        raise InputError(
            f"cannot write {path}: {error.strerror or error} (is every folder above it a "
            "folder you may write to?)"
        ) from error


def _write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); the output gets what any new file gets (0644
    # under the usual umask), as if written in place
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# the tables a data folder holds (``ingest``, ``simulate``, ``run``): a writer of some of them
# removes the others' files left by an earlier run, which would otherwise be read with the new
# events (another source's labels beside this one's events)
DATA_TABLES = ("events", "contacts", "stage_history", "rejects", "labels")


def check_writable_folder(out_dir: Path) -> None:
    """``out_dir`` is a folder that takes new files, or one that can be made: its nearest
    existing place is a folder this process may write to. Otherwise an ``InputError`` naming
    it, before any work whose output it would hold; nothing is made here."""
    out_dir = Path(out_dir)
    try:
        place = next(p for p in (out_dir, *out_dir.parents) if p.exists() or p == p.parent)
        is_folder = place.is_dir()
    except OSError as error:  # a folder above it this process may not enter
        raise InputError(
            f"cannot write into {out_dir}: {error.strerror or error}; give a folder you may "
            "write to"
        ) from None
    if not is_folder:
        raise InputError(
            f"cannot write into {out_dir}: {place} is a file, not a folder; give a folder you "
            "may write to"
        )
    if not os.access(place, os.W_OK | os.X_OK):  # a read-only mount too (EROFS)
        raise InputError(
            f"cannot write into {out_dir}: {place} is not writable; give a folder you may write to"
        )


def write_tables_atomic(
    tables: Mapping[str, pa.Table | None],
    out_dir: Path,
    *,
    replaces: tuple[str, ...] = (),
    removed: Callable[[Path], None] | None = None,
) -> dict[str, Path]:
    """Write several tables as ``out_dir/<name>.parquet``, all or nothing; then remove the
    files of the tables in ``replaces`` that were not written (None, or not given), which an
    earlier run left, calling ``removed(path)`` for each (the commands say so).

    The files are first written into a hidden staging folder inside ``out_dir``; only when all of
    them are complete are they renamed into place, so an interrupted run leaves the previous
    outputs (or none), never a mix.
    """
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    except OSError as error:  # what the check cannot see (a full disk, a special file system)
        raise InputError(
            f"cannot write into {out_dir}: {error.strerror or error}; give a folder you may "
            "write to"
        ) from None
    written: dict[str, Path] = {}
    try:
        staged = {
            name: write_parquet_atomic(table, staging / f"{name}.parquet")
            for name, table in tables.items()
            if table is not None
        }
        for name, tmp in staged.items():
            target = out_dir / f"{name}.parquet"
            os.replace(tmp, target)
            written[name] = target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in replaces:
        stale = out_dir / f"{name}.parquet"
        if name not in written and stale.exists():
            stale.unlink()
            if removed is not None:
                removed(stale)
    return written


def read_table(path: Path) -> pa.Table:
    """Read a Parquet file written by funnelcast, with a clear error when it is absent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; run `funnelcast ingest` or `simulate` first"
        )
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the Parquet file itself")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(
            f"{path} is not a readable Parquet file ({' '.join(str(error).split())[:200]}); "
            "write it again, e.g. with `funnelcast ingest`"
        ) from error
