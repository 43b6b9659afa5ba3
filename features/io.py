"""Reading and writing canonical tables. Every write is atomic: a file is written beside its
target under a temporary name and renamed into place, so no reader ever sees half a file.
A file written over keeps its permission bits; one output file given as a symbolic link is
written into the file the link names, the link kept.

What a write leaves when it is stopped: Ctrl-C and SIGTERM take the same path (the temporary
files are removed); what a kill leaves (it runs no clean-up) is swept by the next write into
the same folder, by funnelcast's own temporary names only."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import InputError
from features.schema import (
    any_int96,
    cast_unreadable_zones_to_utc,
    parquet_schema,
    read_int96_times,
)

# the key-value metadata every data-folder table carries (its table name): a later run removes
# an earlier run's table only when it is one funnelcast wrote, never a file of the user's
TABLE_MARK = b"funnelcast.table"

# funnelcast's temporary names: `.staging-<pid>-<8 random>` folders and
# `.<file name>.<pid>-<8 random>.tmp` files; before the pid was in them, without it
_RANDOM = r"[a-z0-9_]{8}"
_STAGING = re.compile(rf"\.staging-(?:(\d+)-)?{_RANDOM}")
# a temporary file of any name with its writer's pid: removed once that process is gone
_OTHERS_TEMPORARY = re.compile(rf"\..+\.(\d+)-{_RANDOM}\.tmp")
# a temporary name without a pid (an older funnelcast's) is a leftover once untouched this long
_UNTAGGED_LEFTOVER_SECONDS = 3600


def _umask() -> int:
    mask = os.umask(0o022)  # read it the only way there is: set it and set it back
    os.umask(mask)
    return mask


# what a write's OSError means, in plain words, and its fix ({folder}: where it wrote)
_PLAIN_WORDS = {
    errno.ENOSPC: "no space left on {folder}; free some space there, or give a place on "
    "another disk",
    getattr(errno, "EDQUOT", -1): "your disk quota is used up on {folder}; free some space "
    "there, or give a place on another disk",
    errno.EROFS: "{folder} is on a read-only file system; give a place you may write to",
    # the process's file-size limit (ulimit -f), which the permissions hint did not fit
    errno.EFBIG: "the file grew past this process's file-size limit (ulimit -f) on {folder}; "
    "raise the limit, or write a smaller output",
}


def _unwritable(what: str, folder: Path, error: OSError) -> InputError:
    """One line for an ``OSError`` of a write: what could not be written, why in plain
    words, and the fix."""
    said = _PLAIN_WORDS.get(error.errno or 0)
    if said is not None:
        return InputError(f"cannot write {what}: {said.format(folder=folder)}")
    return InputError(
        f"cannot write {what}: {error.strerror or error} (is every folder above it a folder "
        "you may write to?)"
    )


class Terminated(SystemExit):
    """SIGTERM arrived (``terminate_like_interrupt``): the process ends with status 143."""


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager stopping the command, `kill`) takes the path of Ctrl-C
    while a write runs: an exception, so the temporary files are removed; the process then
    ends with status 143, as for SIGTERM. Only where nothing else handles SIGTERM (an
    application's own handler is kept), only on the main thread, the one Python runs
    handlers on, and not in an IPython kernel (Jupyter): it leaves SIGTERM to the default,
    and IPython would catch the SystemExit, so the kernel would outlive its SIGTERM."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        or "ipykernel" in sys.modules
    ):
        yield
        return

    def on_terminate(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done: one that arrives meanwhile is noted
    and delivered as the block ends (to the handler there was before), so the block runs
    whole or not at all. For a few renames, never for work that could take long.

    Python-level handlers, not a blocked signal mask: the process's other threads (Arrow's
    pool) would take a signal the main thread blocks and still have it raised there."""
    signals = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
        signal.getsignal(number) is None
        for number in signals  # a handler set outside Python
    ):
        yield  # elsewhere signals never interrupt this thread's code
        return
    arrived: list[int] = []

    def note(signum: int, frame: Any) -> None:
        arrived.append(signum)

    previous = {number: signal.signal(number, note) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)  # its exception (or the default action) now


@contextlib.contextmanager
def lock_held(path: Path) -> Iterator[None]:
    """An exclusive lock (``flock``) on the file ``path`` for the block: another process's
    block under the same path waits until this one ends (a Ctrl-C stops the wait).

    The file is made for the block and removed as it ends, the lock still held, so it is
    never left among a folder's files. A process that waited on the removed file then holds
    a lock nobody else can see: it takes the lock again, on the file the path names now.
    A file a killed process left is taken over (its lock ended with it)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _names_file(path, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)


def _names_file(path: Path, fd: int) -> bool:
    """``path`` names the open file ``fd`` (not another made since, nor none)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _is_leftover(pid: str | None, path: Path) -> bool:
    """A temporary name's writer is gone: its process no longer runs (a kill), or, for a name
    without a pid (an older funnelcast's), nothing in it has changed for an hour."""
    if pid is None:
        return time.time() - _newest_change(path) > _UNTAGGED_LEFTOVER_SECONDS
    if int(pid) == os.getpid():
        return False  # this process's own write (another thread's): running
    return not process_runs(int(pid))


def process_runs(pid: int) -> bool:
    """A process of that id runs (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # runs, as another user's process
        return True
    return True


def _newest_change(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as inside:
            times += [inner.stat(follow_symlinks=False).st_mtime for inner in inside]
    return max(times)


def _sweep_leftovers(folder: Path, file_name: str | None = None) -> None:
    """Remove what a killed write into ``folder`` left: funnelcast's own staging folders, the
    temporary files of ``file_name`` (the file about to be written), and those of any other
    file whose writer's process is gone and which has not changed for an hour (a weekly job
    writing a dated file never wrote the same name again, so its killed write's file stayed:
    concurrency review; the hour, because a writer in another container's pid namespace looks
    gone from here). Nothing else, and nothing a running write still uses; a leftover that
    cannot be removed stays."""
    temporary = re.compile(
        rf"\.{re.escape(file_name)}\.(?:(\d+)-)?{_RANDOM}\.tmp" if file_name else r"(?!)"
    )
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            match = temporary.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                if _is_leftover(match.group(1), path):
                    path.unlink()
                continue
            match = _OTHERS_TEMPORARY.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                old = time.time() - _newest_change(path) > _UNTAGGED_LEFTOVER_SECONDS
                if old and _is_leftover(match.group(1), path):
                    path.unlink()
                continue
            match = _STAGING.fullmatch(entry.name)
            if match and _is_staging(entry) and _is_leftover(match.group(1), path):
                shutil.rmtree(path)


def _is_staging(entry: os.DirEntry[str]) -> bool:
    """A real folder holding only what a staged write puts there (tables, temporary files)."""
    if not entry.is_dir(follow_symlinks=False):
        return False
    with os.scandir(entry.path) as inside:
        return all(
            inner.is_file(follow_symlinks=False)
            and (inner.name.endswith(".parquet") or inner.name.endswith(".tmp"))
            for inner in inside
        )


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write one Parquet file atomically (temp file in the same folder, fsync, rename). A
    place that cannot take the file (a folder of that name, a file where a folder goes, no
    permission, a full disk) is an ``InputError`` naming it; nothing is left behind, after
    Ctrl-C or SIGTERM either."""
    return _write_file_atomic(table, Path(path), "Parquet", _write_file)


def write_csv_atomic(table: pa.Table, path: Path) -> Path:
    """``write_parquet_atomic``, as CSV with a header line (UTF-8, text quoted, lines ending
    in LF)."""
    return _write_file_atomic(table, Path(path), "CSV", _write_csv)


def _write_file_atomic(
    table: pa.Table, path: Path, kind: str, write: Callable[[pa.Table, Path], Path]
) -> Path:
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name for the {kind} output")
    target = replaced_file(path)
    with terminate_like_interrupt():
        try:
            with made_folders(target.parent, keep=True):
                _sweep_leftovers(target.parent, target.name)
                write(table, target)
                return path
        except OSError as error:
            raise _unwritable(str(path), target.parent, error) from error


def replaced_file(path: Path) -> Path:
    """The file a write of ``path`` replaces: ``path``, or the file it names when it is a
    symbolic link (through a chain of them). The link stays, and the file it names gets the
    new contents: replacing the link (``latest.csv``, naming the CRM's import file) with a
    file left the file it named stale, and said nothing."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def made_folders(folder: Path, *, keep: bool) -> Iterator[None]:
    """``folder`` and the folders above it that do not exist yet are made for the block;
    those it made are removed again (when empty) if the block fails, and after it unless
    ``keep``: a refused or failed write leaves no folders behind."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    failed = True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield
        failed = False
    finally:
        if failed or not keep:
            for made in missing:  # deepest first
                with contextlib.suppress(OSError):
                    made.rmdir()


def _write_csv(table: pa.Table, path: Path) -> Path:
    import pyarrow.csv as pacsv

    return _write_file(table, path, write=pacsv.write_csv)


def _write_file(
    table: pa.Table,
    path: Path,
    write: Callable[[pa.Table, Path], None] | None = None,
    *,
    replacing: Path | None = None,
) -> Path:
    """``table`` into ``path`` by ``write`` (default: Parquet, zstd) through a temporary file
    beside it, synced and renamed into place, with the mode of the file it replaces
    (``replacing``, else ``path``; ``_give_mode``)."""
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    tmp = Path(tmp_name)
    try:
        try:
            _give_mode(fd, replacing or path)
        finally:
            os.close(fd)
        if write is None:
            pq.write_table(table, tmp, compression="zstd")
        else:
            write(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _give_mode(fd: int, replaced: Path) -> None:
    """The mode of the new file ``fd``, set before anything is written into it. A file it
    replaces keeps its permission bits and, where this user may give it, its group: the
    rename made an admin's `chmod 600` scores file (contact ids) 0644, readable by everyone.
    A new file gets what any new file gets (0644 under the usual umask), as if written in
    place, not mkstemp's private 0600."""
    try:
        before = os.stat(replaced)
    except FileNotFoundError:
        os.fchmod(fd, 0o666 & ~_umask())
        return
    mode = stat.S_IMODE(before.st_mode) & 0o777
    if before.st_gid != os.fstat(fd).st_gid:
        try:
            os.fchown(fd, -1, before.st_gid)
        except PermissionError:
            # a group this user is not in: the file's group is another one, which the old
            # bits are not meant for, so it gets none of them
            mode &= ~0o070
    os.fchmod(fd, mode)


# the tables a data folder holds (``ingest``, ``simulate``, ``run``): a writer of some of them
# removes the others' files left by an earlier run, which would otherwise be read with the new
# events (another source's labels beside this one's events)
DATA_TABLES = ("events", "contacts", "stage_history", "rejects", "labels")
# the lock a data folder's writers take in turn (``lock_held``), there only while one swaps
# its tables in: hidden, and no table (readers take the folder's ``*.parquet``)
LOCK_FILE = ".funnelcast.lock"


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


def check_not_inputs(out_dir: Path, inputs: Iterable[Path], names: Iterable[str]) -> None:
    """No table ``out_dir/<name>.parquet`` is one of the ``inputs`` (the files a source
    reads), by its path, a symbolic link or a hard link: writing the tables would replace
    the raw data they are made from. An ``InputError`` naming both, before any work."""
    out_dir = Path(out_dir)
    sources = [Path(p) for p in inputs if os.path.exists(p)]
    for name in names:
        target = out_dir / f"{name}.parquet"
        if not os.path.exists(target):
            continue
        for source in sources:
            with contextlib.suppress(OSError):
                if target.resolve() == source.resolve() or os.path.samefile(target, source):
                    which = "" if target.absolute() == source.absolute() else f" ({source})"
                    raise InputError(
                        f"cannot write into {out_dir}: {target} is a file the source reads"
                        f"{which}, which the tables would replace; give another output folder"
                    )


def is_funnelcast_table(path: Path) -> bool:
    """``path`` is a table funnelcast wrote into a data folder (it carries ``TABLE_MARK``)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):  # a folder, not Parquet, unreadable: not ours
        return False
    return TABLE_MARK in metadata


def _marked(table: pa.Table, name: str) -> pa.Table:
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), TABLE_MARK: name.encode()}
    )


def write_tables_atomic(
    tables: Mapping[str, pa.Table | None],
    out_dir: Path,
    *,
    replaces: tuple[str, ...] = (),
    removed: Callable[[Path], None] | None = None,
    inputs: Iterable[Path] = (),
    set_aside: Callable[[Path, Path], None] | None = None,
) -> dict[str, Path]:
    """Write several tables as ``out_dir/<name>.parquet``, all or nothing; then remove the
    files of the tables in ``replaces`` that were not written (None, or not given), which an
    earlier run left, calling ``removed(path)`` for each (the commands say so).

    Refused (an ``InputError``, before anything is written) when a table would replace one
    of the ``inputs`` (the files the tables are made from). A file to remove or to write over
    that funnelcast did not mark as its own (the user's ``labels.parquet`` or
    ``events.parquet``, or a table of a version older than the mark) is neither deleted,
    overwritten nor left to be read with the new tables: it is renamed to
    ``<name>.parquet.set-aside-<time>`` beside them, calling ``set_aside(path, new_path)``.

    The files are first written into a hidden staging folder inside ``out_dir``; only when all of
    them are complete are they renamed into place, and the earlier run's tables removed, with
    Ctrl-C and SIGTERM held until that is done: an interrupted run leaves the previous outputs
    (or none), never a mix. Writes into one folder at once (`simulate` and `ingest`, two
    processes) swap their tables in one after the other, under a lock in the folder
    (``LOCK_FILE``), each removing the tables it finds there then: the last one's tables are
    what the folder holds, never a mix of both.
    """
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    check_not_inputs(out_dir, inputs, {*tables, *replaces})
    new = [name for name, table in tables.items() if table is not None]
    # the folders this write makes are removed again if it fails: a failed simulate left an
    # empty --out folder (concurrency review)
    with terminate_like_interrupt(), made_folders(out_dir, keep=True):
        try:
            _sweep_leftovers(out_dir)
            staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out_dir))
        except OSError as error:  # what the check cannot see (a full disk, a special file system)
            raise _unwritable(f"into {out_dir}", out_dir, error) from None
        try:
            staged = {
                name: _write_file(
                    _marked(tables[name], name),
                    staging / f"{name}.parquet",
                    replacing=out_dir / f"{name}.parquet",
                )
                for name in new
            }
            # what is in the folder is read only now, under the folder's lock: a write that ran
            # meanwhile (`ingest` while `simulate` wrote its tables) left tables this one must
            # remove, and one that swaps its tables in at the same time would mix the two
            with lock_held(out_dir / LOCK_FILE):
                stale, foreign = _earlier_tables(out_dir, new, replaces)
                return _swap_in(staged, stale, out_dir, removed, foreign, set_aside)
        except OSError as error:
            raise _unwritable(f"the tables into {out_dir}", out_dir, error) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _earlier_tables(
    out_dir: Path, new: list[str], replaces: tuple[str, ...]
) -> tuple[list[Path], set[Path]]:
    """The tables in ``out_dir`` that a write of the tables ``new`` removes (those of
    ``replaces`` it does not write), and, of those and the ones it writes over, the files
    funnelcast did not mark, which go aside instead."""
    stale = [
        out_dir / f"{name}.parquet"
        for name in replaces
        if name not in new and os.path.lexists(out_dir / f"{name}.parquet")
    ]
    targets = [out_dir / f"{name}.parquet" for name in new]
    foreign = {
        path
        for path in [*stale, *targets]
        if os.path.lexists(path) and not is_funnelcast_table(path)
    }
    return stale, foreign


def _swap_in(
    staged: dict[str, Path],
    stale: list[Path],
    out_dir: Path,
    removed: Callable[[Path], None] | None,
    foreign: set[Path],
    set_aside: Callable[[Path, Path], None] | None,
) -> dict[str, Path]:
    """Rename the complete tables into place and remove the earlier run's others (rename
    aside those of ``foreign``, not marked as funnelcast's), as one step that Ctrl-C and
    SIGTERM cannot cut in two."""
    written: dict[str, Path] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def rename_aside(path: Path) -> None:
        # a name nothing has yet: an earlier copy set aside in the same second is kept
        aside = path.with_name(f"{path.name}.set-aside-{stamp}")
        number = 1
        while os.path.lexists(aside):
            number += 1
            aside = path.with_name(f"{path.name}.set-aside-{stamp}-{number}")
        os.rename(path, aside)
        if set_aside is not None:
            set_aside(path, aside)

    targets = {name: out_dir / f"{name}.parquet" for name in staged}
    with interrupts_held():
        # the files not funnelcast's go aside before any new table is in place: a rename that
        # fails leaves the earlier tables (and those kept aside), not a mix
        for target in targets.values():
            if target in foreign:
                rename_aside(target)
        for name, tmp in staged.items():
            os.replace(tmp, targets[name])
            written[name] = targets[name]
        for path in stale:
            if path in foreign:
                rename_aside(path)
                continue
            path.unlink(missing_ok=True)
            if removed is not None:
                removed(path)
    return written


def read_table(path: Path) -> pa.Table:
    """Read a Parquet file written by funnelcast, with a clear error when it is absent. A time
    in a zone Polars cannot read ('+05:30', of a table written by pandas) comes in UTC: the
    same instants, which every step reads in UTC anyway; so does a time stored as INT96
    (Spark's default), in microseconds: in Arrow's nanoseconds a contacts table's 9999-12-31
    (a common "never") came in as 1816-03-29, silently."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; run `funnelcast ingest` or `simulate` first"
        )
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the Parquet file itself")
    try:
        metadata = pq.read_metadata(path)
        if any_int96(metadata):
            table = read_int96_times(str(path), parquet_schema(metadata))
        else:
            table = pq.read_table(path)
        return cast_unreadable_zones_to_utc(table)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(
            f"{path} is not a readable Parquet file ({' '.join(str(error).split())[:200]}); "
            "write it again, e.g. with `funnelcast ingest`"
        ) from error


class InputsChangedError(InputError):
    """A file a command read was replaced, written or removed while it read it."""


class InputWatch:
    """The files a command reads, as they were when it began, to tell whether they changed
    before it writes what it made of them. Nothing locks a data folder against its readers: a
    `score` that read the events before an `ingest` into the same folder swapped its tables in,
    and the contacts after, mixed two exports (or read one file's footer and another's pages).
    A write replaces files whole (a new file renamed over the old), so the file at a path is
    known by its device, inode, size and modification time. Files that appear later (a new
    partition beside the ones listed) are not watched: a folder appended to keeps scoring."""

    def __init__(self, files: Iterable[Path]) -> None:
        self._before = {Path(path): _identity(Path(path)) for path in files}

    def changed(self) -> list[Path]:
        """The watched files that are no longer the ones read at first."""
        return [path for path, seen in self._before.items() if _identity(path) != seen]

    def check(self) -> None:
        """An ``InputsChangedError`` naming a file that changed, if any did."""
        if changed := self.changed():
            raise _changed_error(changed)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A failure while reading (the footer of one file, the pages of its replacement) is
        said as the change it comes from, when the files changed."""
        try:
            yield
        except Exception as error:
            if changed := self.changed():
                raise _changed_error(changed) from error
            raise


def _changed_error(changed: list[Path]) -> InputsChangedError:
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    return InputsChangedError(
        f"{changed[0]}{more} changed while it was read (replaced, written or removed: an "
        "ingest or simulate into its folder, or an export, ran meanwhile), so what was read "
        "may mix two versions of the data; nothing was written: run again once that write is "
        "done"
    )


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        found = path.stat()
    except OSError:  # removed, or its folder with it
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
