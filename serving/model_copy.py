"""A registered model's own copy on the serving machine, made by `funnelcast serve`.

Each worker loads the model as it starts, and BentoML restarts a worker that crashed or was
killed. Loaded from the MLflow registry, a worker restarted while the registry was down could
not load it: the whole server stopped, or (with the rules fallback) that worker served the
rules beside the others' model (ops review). `funnelcast serve` therefore downloads the version
it checks into a folder of its own, with what ``/metadata`` reports about it, and its workers
load that folder: once started, the server needs no registry.

A copy is written in a hidden folder beside its place and renamed into place whole, so a folder
at its place was complete when it was made; its files' sizes and SHA-256 are recorded with it
and checked before every load, so a copy damaged since (a write lost in a crash, a file
removed) is refused, never loaded half. A complete copy is reused: its place is named by the
store, the model, the version and the version's run, so two stores' "version 3", or a store
made again under the same path, never share one.

`funnelcast serve` holds the copy it serves (``serving.held``: a lock file beside it) from
before it looks for the copy until the server it becomes stops (the lock's descriptor is kept
across the exec into `bentoml serve`), and each worker that loads a copy holds it too; it then
removes the copies no running server holds, so a weekly promotion does not leave a model's
copy behind every week.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from features.errors import InputError
from features.io import process_runs, terminate_like_interrupt
from training.registry import DamagedModelError

# under BentoML's home: the one folder a deployment already keeps writable and lasting for the
# server (it holds BentoML's model store and metrics files); not the temporary folder, which
# cleaners empty under a server that runs for weeks
COPIES_IN_BENTOML_HOME = Path("funnelcast") / "models"
MODEL_FOLDER = "model"  # the MLflow model, as the registry's artifacts hold it
RECORD = "copy.json"  # what /metadata reports, and every file's size and hash
_FORMAT = 1
# a copy being written (``.partial-``) or a damaged one being replaced (``.stale-``), with the
# process id of the command doing it, so one abandoned by a killed command is recognised
_WORKING = re.compile(r"\.(partial|stale)-(\d+)-")
_FIX = "restart `funnelcast serve`, which makes it again"


class UnwritableCopyError(InputError):
    """The copy cannot be written (a full disk, a folder that cannot be written): the model is
    there, so the rules fallback never stands in for it."""


def copy_place(root: Path, *, store: str, name: str, version: str, run_id: str) -> Path:
    """Where the copy of ``name`` version ``version`` of ``store`` goes under ``root``: the
    name and version to read, and a digest of the store (as shown, without credentials), the
    model, the version and its run, so no other store's or run's version takes its place."""
    key = json.dumps([store, name, version, run_id]).encode("utf-8")
    digest = hashlib.sha256(key).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64].lstrip(".") or "model"
    return Path(root) / f"{readable}-{version}-{digest}"


def make_model_copy(
    place: Path, info: Mapping[str, Any], download: Callable[[Path], object]
) -> Path:
    """A complete copy at ``place``: the one there, with ``info`` recorded (the registry's word
    on the model, read now), or else one made by ``download`` (which writes the MLflow model's
    files into the folder it is given). An interrupted or failed copy leaves nothing behind
    (Ctrl-C, SIGTERM too); a write that fails is an ``UnwritableCopyError`` naming the place."""
    place = Path(place)
    try:
        if _is_complete(place):
            _record_info(place, info)
            return place
        place.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(place.parent)
        with terminate_like_interrupt(), _staging(place) as staging:
            (staging / MODEL_FOLDER).mkdir()
            _download(download, staging / MODEL_FOLDER)
            if not (staging / MODEL_FOLDER / "MLmodel").is_file():
                # MLflow downloads nothing, and says nothing, from a store whose files of the
                # version are gone (a share not mounted): kept, every later start reused the
                # empty copy, files put back or not (review)
                raise DamagedModelError(
                    f"version {info.get('model_version')} of '{info.get('model_name')}'",
                    "the registry gave no files to copy: its MLmodel file is missing from the "
                    "store's artifacts",
                    "put them back, or train and register it again, or serve another version "
                    "(--version N)",
                )
            files = {name: _fingerprint(staging / name) for name in _files(staging)}
            _write_json(staging / RECORD, {"format": _FORMAT, "info": dict(info), "files": files})
            _sync_tree(staging)
            _put_in_place(staging, place)
    except OSError as error:
        raise _unwritable(place, error) from None
    return place


def _download(download: Callable[[Path], object], folder: Path) -> None:
    """``download`` into ``folder``. Its OSErrors that are no write into the copy (a full disk,
    whose write names no file, or a file of ``folder``) are the registry's (requests' errors
    are OSErrors too): said as such, an ``InputError``, a registry that cannot be read as at
    the check's start."""
    try:
        download(folder)
    except OSError as error:
        written = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or any(
            name is not None and Path(os.fsdecode(name)).is_relative_to(folder)
            for name in (error.filename, error.filename2)
        )
        if written:
            raise
        from training.tracking import shown_uri  # a message may hold the store's credentials

        raise InputError(
            f"the model's files could not be downloaded from the MLflow registry "
            f"({shown_uri(str(error))}); check that it is running and reachable"
        ) from error


def read_model_copy(place: Path) -> dict[str, Any]:
    """The model info recorded with the copy at ``place``, once every file it recorded is
    there, of the size and hash recorded; otherwise an ``InputError`` saying what is wrong."""
    place = Path(place)
    try:
        text = (place / RECORD).read_text("utf-8")
    except FileNotFoundError:
        missing = "does not exist" if not place.exists() else f"has no {RECORD}"
        raise InputError(f"the model's local copy {place} {missing}; {_FIX}") from None
    except OSError as error:
        raise InputError(
            f"the model's local copy {place} cannot be read ({error.strerror}); {_FIX}"
        ) from None
    try:
        record = json.loads(text)
        info, files = dict(record["info"]), dict(record["files"])
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"the model's local copy {place} has an unreadable {RECORD}; {_FIX}"
        ) from None
    for name, recorded in files.items():
        try:
            found = _fingerprint(place / name)
        except OSError:
            found = None
        if found != list(recorded):
            raise InputError(
                f"the model's local copy {place} is incomplete: {name} is "
                f"{'missing' if found is None else 'not the file copied'}; {_FIX}"
            )
    return info


def is_complete_copy(place: Path) -> bool:
    """Whether a whole copy is at ``place`` (every file as recorded)."""
    return _is_complete(place)


def _is_complete(place: Path) -> bool:
    try:
        read_model_copy(place)
    except InputError:
        return False
    return True


def _record_info(place: Path, info: Mapping[str, Any]) -> None:
    """The registry's word on the model recorded with a copy made before, when it differs
    (metrics logged to the run since): what a worker reports is what the registry said at the
    server's start, as when each worker read the registry. Replaced whole, never half."""
    record = json.loads((place / RECORD).read_text("utf-8"))
    if record["info"] != dict(info):
        _write_json(place / RECORD, {**record, "info": dict(info)})


@contextlib.contextmanager
def _staging(place: Path) -> Iterator[Path]:
    """A hidden folder beside ``place`` (the same file system, so the rename is atomic), removed
    afterwards unless it became the copy."""
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-", dir=place.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _put_in_place(staging: Path, place: Path) -> None:
    """Rename the complete copy into place. A copy another `funnelcast serve` put there
    meanwhile is kept; a damaged one is set aside and replaced."""
    try:
        os.rename(staging, place)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        if _is_complete(place):
            return
        aside = Path(tempfile.mkdtemp(prefix=f".stale-{os.getpid()}-", dir=place.parent))
        os.rename(place, aside / "copy")
        os.rename(staging, place)
        shutil.rmtree(aside, ignore_errors=True)
    _sync(place.parent)


def _remove_abandoned(root: Path) -> None:
    """Hidden folders of a command that was killed (SIGKILL, a power cut) before it could
    remove them: its process is gone."""
    for entry in root.iterdir():
        working = _WORKING.match(entry.name)
        if working and not process_runs(int(working[2])):
            shutil.rmtree(entry, ignore_errors=True)


def _files(folder: Path) -> list[str]:
    return sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
    )


def _fingerprint(path: Path) -> list[Any]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return [path.stat().st_size, digest.hexdigest()]


def _write_json(path: Path, value: Any) -> None:
    """``path`` written whole (a temporary file beside it, synced, renamed over it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(value, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _sync_tree(folder: Path) -> None:
    """Every file and folder of the copy on disk before it is renamed into place: after a
    crash a renamed folder could otherwise hold empty files."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())
        else:
            _sync(path)
    _sync(folder)


def _sync(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unwritable(place: Path, error: OSError) -> UnwritableCopyError:
    where = error.filename or place
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "free some space there, or set BENTOML_HOME to a folder on another disk"
    else:
        fix = "set BENTOML_HOME to a folder you may write to"
    return UnwritableCopyError(
        f"cannot write the model's local copy ({where}: {error.strerror or error}); "
        f"`funnelcast serve` copies the model under BentoML's home for its workers: {fix}"
    )
