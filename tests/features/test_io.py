"""Outputs are written whole or not at all."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import io
from features.errors import InputError
from features.io import (
    DATA_TABLES,
    read_table,
    write_csv_atomic,
    write_parquet_atomic,
    write_tables_atomic,
)


def test_a_parquet_file_is_written_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    path = write_parquet_atomic(table, tmp_path / "sub" / "t.parquet")
    assert pq.read_table(path).equals(table)
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]


def test_a_failed_write_leaves_the_previous_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "t.parquet"
    write_parquet_atomic(pa.table({"x": [1]}), target)

    def broken_write(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(io.pq, "write_table", broken_write)
    with pytest.raises(InputError, match="disk full"):
        write_parquet_atomic(pa.table({"x": [2]}), target)
    assert pq.read_table(target).column("x").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_a_csv_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scores' CSV form: a header and quoted text; a write that fails leaves the earlier
    file whole and no temporary file."""
    import pyarrow.csv as pacsv

    target = tmp_path / "scores.csv"
    write_csv_atomic(pa.table({"id": ["a"], "reason": ["opened, then clicked"]}), target)
    assert target.read_text("utf-8").splitlines() == ['"id","reason"', '"a","opened, then clicked"']

    def half_then_fail(table: pa.Table, where: Path) -> None:
        Path(where).write_text('"id"\n"b', "utf-8")  # half a file, then the disk fills
        raise OSError("disk full")

    monkeypatch.setattr(pacsv, "write_csv", half_then_fail)
    with pytest.raises(InputError, match="disk full"):
        write_csv_atomic(pa.table({"id": ["b"]}), target)
    assert target.read_text("utf-8").startswith('"id","reason"')
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
    # the folders a failed write made are removed again
    with pytest.raises(InputError, match="disk full"):
        write_csv_atomic(pa.table({"id": ["b"]}), tmp_path / "new" / "sub" / "scores.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_several_tables_are_written_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = io.pq.write_table
    calls = {"n": 0}

    def fail_on_second(table: pa.Table, where: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("interrupted")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(io.pq, "write_table", fail_on_second)
    with pytest.raises(InputError, match="interrupted"):
        write_tables_atomic({"a": pa.table({"x": [1]}), "b": pa.table({"y": [2]})}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tables_given_as_none_are_not_written(tmp_path: Path) -> None:
    written = write_tables_atomic({"a": pa.table({"x": [1]}), "b": None}, tmp_path)
    assert sorted(written) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_reading_a_missing_table_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="funnelcast ingest"):
        read_table(tmp_path / "events.parquet")


def test_a_table_s_int96_times_are_read_as_their_instants_in_every_year(tmp_path: Path) -> None:
    """Spark writes times as INT96 by default: a contacts table's 9999-12-31 (a common "never")
    came in as 1816-03-29 and 1600 as 2184, silently (Arrow reads INT96 in nanoseconds). They
    are the UTC instants Spark wrote, in microseconds, as the events' INT96 times are."""
    import datetime as dt

    times = [dt.datetime(9999, 12, 31), dt.datetime(1600, 1, 1), dt.datetime(2024, 2, 29, 12)]
    table = pa.table(
        {
            "contact_id": ["a", "b", "c"],
            "signup": pa.array(times, pa.timestamp("us")),
            # nested times no builder reads: they refused the whole file when cast back to
            # nanoseconds (review)
            "crm": pa.array([{"valid_to": time} for time in times]),
            "seen": pa.array([[time] for time in times], pa.list_(pa.timestamp("us"))),
        }
    )
    path = tmp_path / "contacts.parquet"
    for store_schema in (False, True):  # as Spark writes it, and as pyarrow does
        pq.write_table(table, path, use_deprecated_int96_timestamps=True, store_schema=store_schema)
        assert pq.read_metadata(path).schema.column(1).physical_type == "INT96"
        read = read_table(path)
        assert read.schema.field("signup").type == pa.timestamp("us", "UTC")
        assert read.column("signup").to_pylist() == [t.replace(tzinfo=dt.UTC) for t in times]
        assert read.column("contact_id").to_pylist() == ["a", "b", "c"]
        assert [row["valid_to"] for row in read.column("crm").to_pylist()] == times
        assert read.column("seen").to_pylist() == [[time] for time in times]
    # nested INT96 times alone, no top-level one: read in nanoseconds, 9999 came in as 1816
    pq.write_table(
        table.select(["contact_id", "crm"]),
        path,
        use_deprecated_int96_timestamps=True,
        store_schema=False,
    )
    assert [row["valid_to"] for row in read_table(path).column("crm").to_pylist()] == times


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_any_new_file_gets(
    tmp_path: Path, umask: int, mode: int
) -> None:
    """Not the private mode of the temporary file they were written as."""
    table = pa.table({"x": [1, 2]})
    previous = os.umask(umask)
    try:
        one = write_parquet_atomic(table, tmp_path / "one.parquet")
        several = write_tables_atomic({"events": table}, tmp_path / "out")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(one.stat().st_mode) == mode
    assert stat.S_IMODE(several["events"].stat().st_mode) == mode


def test_a_file_written_over_keeps_its_mode_and_a_new_one_follows_the_umask(
    tmp_path: Path,
) -> None:
    """Export review: `chmod 600 scores.csv`, then `score --out scores.csv`, gave back a 0644
    file, the contacts' ids readable by everyone: the temporary file took the umask's mode."""
    table = pa.table({"x": [1, 2]})
    kept = {"one.parquet": 0o600, "one.csv": 0o640, "out/events.parquet": 0o400}
    previous = os.umask(0o022)
    try:
        write_parquet_atomic(table, tmp_path / "one.parquet")
        write_csv_atomic(table, tmp_path / "one.csv")
        write_tables_atomic({"events": table}, tmp_path / "out")
        for name, mode in kept.items():
            (tmp_path / name).chmod(mode)
        write_parquet_atomic(table, tmp_path / "one.parquet")
        write_csv_atomic(table, tmp_path / "one.csv")
        write_tables_atomic({"events": table}, tmp_path / "out")
        os.umask(0o077)
        new = write_csv_atomic(table, tmp_path / "new.csv")
    finally:
        os.umask(previous)
    assert {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in kept} == kept
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


def _another_group(path: Path) -> int:
    """A group ``path`` can be given other than this process's own, or the test is skipped."""
    others = [gid for gid in os.getgroups() if gid != os.getgid()]
    group = 4242 if os.geteuid() == 0 else (others[0] if others else None)
    if group is None:
        pytest.skip("this user is in no group but its own")
    os.chown(path, -1, group)
    return group


def test_a_file_written_over_keeps_its_group_or_else_loses_the_group_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 0640 file of the group `crm` came back in the writer's own group, with `crm`'s
    read bit: readable by the writer's group instead. Where the group cannot be given, the
    bits meant for it are dropped, never handed to another group."""
    target = tmp_path / "scores.csv"
    write_csv_atomic(pa.table({"x": [1]}), target)
    group = _another_group(target)
    target.chmod(0o640)
    write_csv_atomic(pa.table({"x": [2]}), target)
    assert (target.stat().st_gid, stat.S_IMODE(target.stat().st_mode)) == (group, 0o640)

    def refused(*args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io.os, "fchown", refused)
    write_csv_atomic(pa.table({"x": [3]}), target)
    assert target.stat().st_gid != group
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_an_output_given_as_a_symbolic_link_is_written_into_the_file_it_names(
    tmp_path: Path,
) -> None:
    """Export review: `--out out/latest.csv`, a link to crm/import.csv, replaced the link with
    a file and left crm/import.csv with the earlier contents, exit 0. The link stays, the
    file it names (through a chain of relative links too) gets the new contents and keeps
    its mode, and no temporary file is left in either folder."""
    crm, out = tmp_path / "crm", tmp_path / "out"
    crm.mkdir()
    out.mkdir()
    imported = crm / "import.csv"
    imported.write_text('"id"\n"old"\n', "utf-8")
    imported.chmod(0o600)
    (out / "latest.csv").symlink_to(Path("..") / "crm" / "import.csv")
    (out / "current.csv").symlink_to("latest.csv")
    for link, contact in (("latest.csv", "new"), ("current.csv", "newer")):
        written = write_csv_atomic(pa.table({"id": [contact]}), out / link)
        assert written == out / link
        assert imported.read_text("utf-8") == f'"id"\n"{contact}"\n'
    assert os.readlink(out / "latest.csv") == str(Path("..") / "crm" / "import.csv")
    assert os.readlink(out / "current.csv") == "latest.csv"
    assert stat.S_IMODE(imported.stat().st_mode) == 0o600
    assert sorted(p.name for p in crm.iterdir()) == ["import.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["current.csv", "latest.csv"]
    # a link to a file not there yet makes it, in the folder the link names
    (out / "next.parquet").symlink_to(crm / "next.parquet")
    write_parquet_atomic(pa.table({"x": [1]}), out / "next.parquet")
    assert (out / "next.parquet").is_symlink()
    assert pq.read_table(crm / "next.parquet").column("x").to_pylist() == [1]


def _run_of(path: Path) -> str:
    return str(pq.read_table(path).column("run")[0])


def _tables(run: str, *names: str) -> dict[str, pa.Table]:
    return {name: pa.table({"run": [run], "table": [name]}) for name in names}


def test_an_earlier_runs_table_that_is_not_written_again_is_removed_and_said(
    tmp_path: Path,
) -> None:
    write_tables_atomic(_tables("a", "events", "labels"), tmp_path)
    said: list[Path] = []
    write_tables_atomic(_tables("b", "events"), tmp_path, replaces=DATA_TABLES, removed=said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet"]
    assert said == [tmp_path / "labels.parquet"]


def test_a_file_funnelcast_did_not_write_is_neither_removed_nor_left_beside_new_tables(
    tmp_path: Path,
) -> None:
    """The user's own labels.parquet in the output folder (or an older version's, written
    before tables were marked): deleting it loses their data; keeping it has it read as these
    events' labels; refusing stopped `make demo` after an older ingest (diff review). It is
    renamed aside, kept whole, and said."""
    mine = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"mine": [1]}), mine)
    said: list[tuple[Path, Path]] = []
    write_tables_atomic(
        _tables("b", "events"),
        tmp_path,
        replaces=DATA_TABLES,
        set_aside=lambda path, aside: said.append((path, aside)),
    )
    [(path, aside)] = said
    assert path == mine
    assert aside.name.startswith("labels.parquet.set-aside-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet", aside.name]
    assert pq.read_table(aside).column_names == ["mine"]


def test_a_file_funnelcast_did_not_write_is_not_written_over_either(tmp_path: Path) -> None:
    """The user's own events.parquet where a run writes its events was overwritten: only
    removals were protected. It is renamed aside like a removal; funnelcast's own tables
    are replaced as ever, with nothing set aside."""
    mine = tmp_path / "events.parquet"
    pq.write_table(pa.table({"mine": [1]}), mine)
    said: list[tuple[Path, Path]] = []

    def aside(path: Path, new: Path) -> None:
        said.append((path, new))

    write_tables_atomic(
        _tables("b", "events", "contacts"), tmp_path, replaces=DATA_TABLES, set_aside=aside
    )
    [(path, moved)] = said
    assert path == mine
    assert moved.name.startswith("events.parquet.set-aside-")
    assert pq.read_table(moved).column_names == ["mine"]
    assert {_run_of(tmp_path / f"{n}.parquet") for n in ("events", "contacts")} == {"b"}
    write_tables_atomic(
        _tables("c", "events", "contacts"), tmp_path, replaces=DATA_TABLES, set_aside=aside
    )
    assert len(said) == 1  # funnelcast's own tables: replaced, not set aside
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["events.parquet", "contacts.parquet", moved.name]
    )
    assert {_run_of(tmp_path / f"{n}.parquet") for n in ("events", "contacts")} == {"c"}


def test_copies_set_aside_in_the_same_second_are_all_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two of the user's files set aside within one second had one name: the second copy
    replaced the first (review)."""
    monkeypatch.setattr(io.time, "strftime", lambda fmt: "20261205-220718")
    kept: list[Path] = []
    for mine in ("first", "second"):
        pq.write_table(pa.table({"mine": [mine]}), tmp_path / "events.parquet")
        (tmp_path / "contacts.parquet").unlink(missing_ok=True)  # its own: not set aside
        write_tables_atomic(
            _tables("b", "events"),
            tmp_path,
            replaces=DATA_TABLES,
            set_aside=lambda path, aside: kept.append(aside),
        )
    assert [p.name for p in kept] == [
        "events.parquet.set-aside-20261205-220718",
        "events.parquet.set-aside-20261205-220718-2",
    ]
    assert [pq.read_table(p).column("mine")[0].as_py() for p in kept] == ["first", "second"]


def test_a_table_that_cannot_be_set_aside_leaves_the_earlier_tables_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's own contacts.parquet could not be renamed aside after the new events were
    already in place: new events beside the earlier contacts (review). Every rename aside now
    comes before the first new table."""
    write_tables_atomic(_tables("a", "events", "contacts"), tmp_path)
    pq.write_table(pa.table({"mine": [1]}), tmp_path / "contacts.parquet")  # the user's
    real_rename = os.rename

    def failing_rename(source: str | Path, target: str | Path) -> None:
        if ".set-aside-" in str(target):
            raise OSError(errno.EACCES, "Permission denied")
        real_rename(source, target)

    monkeypatch.setattr(io.os, "rename", failing_rename)
    with pytest.raises(InputError):
        write_tables_atomic(_tables("b", "events", "contacts"), tmp_path, replaces=DATA_TABLES)
    monkeypatch.undo()
    assert _run_of(tmp_path / "events.parquet") == "a"
    assert pq.read_table(tmp_path / "contacts.parquet").column_names == ["mine"]


@pytest.mark.parametrize("how", ["the same path", "a symbolic link", "a hard link"])
def test_a_table_that_would_replace_a_file_the_source_reads_is_refused(
    tmp_path: Path, how: str
) -> None:
    raw = tmp_path / "src" / "events.parquet"
    raw.parent.mkdir()
    pq.write_table(pa.table({"user": ["a"], "ts": ["2024-01-01"], "action": ["buy"]}), raw)
    out = raw.parent
    if how != "the same path":
        out = tmp_path / "out"
        out.mkdir()
        if how == "a symbolic link":
            (out / "events.parquet").symlink_to(raw)
        else:
            os.link(raw, out / "events.parquet")
    with pytest.raises(InputError, match="is a file the source reads"):
        write_tables_atomic(_tables("b", "events"), out, replaces=DATA_TABLES, inputs=[raw])
    assert pq.read_table(raw).column_names == ["user", "ts", "action"]
    assert not list(out.glob(".*"))


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "no space left on {folder}"),
        (errno.EDQUOT, "your disk quota is used up on {folder}"),
        (errno.EROFS, "{folder} is on a read-only file system"),
        # was "(is every folder above it a folder you may write to?)" (concurrency review)
        (errno.EFBIG, "file-size limit (ulimit -f) on {folder}"),
    ],
)
def test_a_full_disk_is_one_clear_error_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    before = tmp_path / "f.parquet"
    write_parquet_atomic(pa.table({"x": [1]}), before)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io.pq, "write_table", full_disk)
    with pytest.raises(InputError, match=re.escape(says.format(folder=tmp_path))):
        write_parquet_atomic(pa.table({"x": [2]}), before)
    new = tmp_path / "data" / "new"
    with pytest.raises(InputError, match=re.escape(says.format(folder=new))):
        write_tables_atomic(_tables("b", "events"), new)
    # the folders the failed write made are gone with it (an empty --out was left: review)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet"]
    (tmp_path / "kept").mkdir()  # a folder that was there stays, empty as it was
    with pytest.raises(InputError, match=re.escape(says.format(folder=tmp_path / "kept"))):
        write_tables_atomic(_tables("b", "events"), tmp_path / "kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet", "kept"]
    assert list((tmp_path / "kept").iterdir()) == []
    assert pq.read_table(before).column("x").to_pylist() == [1]


def test_ctrl_c_between_the_renames_leaves_every_table_of_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after the first table is renamed into place: without holding it, new
    events sat beside the earlier run's contacts and labels."""
    write_tables_atomic(_tables("a", "events", "contacts", "labels"), tmp_path)
    real_replace = os.replace

    def interrupted_replace(source: str | Path, target: str | Path) -> None:
        real_replace(source, target)
        if Path(target).parent == tmp_path:  # a table into place, not a staged file
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(io.os, "replace", interrupted_replace)
    # Ctrl-C as Python answers it by default, whatever handler an earlier test left (in the
    # whole suite one once answered it without an exception)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_tables_atomic(_tables("b", "events", "contacts"), tmp_path, replaces=DATA_TABLES)
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.parquet", "events.parquet"]
    assert {_run_of(p) for p in tmp_path.iterdir()} == {"b"}


# a write into a data folder (argv: folder, run, tables, pause, marker, go) that touches
# `marker` where it pauses and waits there until `go` exists: "staging" (its tables staged,
# nothing in the folder read yet), "swap" (its first table in place, the rest not yet), or
# "lock" (touched as it asks for the folder's lock, no wait; once it holds the lock it
# writes to `<marker>-held` whether `go` existed then)
_WRITE_PAUSED = """
import contextlib, sys, time
from pathlib import Path
import pyarrow as pa
from features import io

out, run, names, pause, marker, go = sys.argv[1:]
out, marker, go = Path(out), Path(marker), Path(go)
real_write, real_replace, real_lock = io.pq.write_table, io.os.replace, io.lock_held

@contextlib.contextmanager
def lock_then_say(path):
    if pause == "lock":
        marker.touch()
    with real_lock(path):
        if pause == "lock":
            Path(f"{marker}-held").write_text(str(go.exists()))
        yield

io.lock_held = lock_then_say

def pause_here(point):
    if point == pause:
        marker.touch()
        while not go.exists():
            time.sleep(0.01)

def write_then_pause(table, where, **kwargs):  # into the staging folder
    real_write(table, where, **kwargs)
    pause_here("staging")

def replace_then_pause(source, target):
    real_replace(source, target)
    if Path(target).parent == out:  # a table into place
        pause_here("swap")

io.pq.write_table = write_then_pause
io.os.replace = replace_then_pause
tables = {name: pa.table({"run": [run], "table": [name]}) for name in names.split(",")}
io.write_tables_atomic(tables, out, replaces=io.DATA_TABLES)
"""


def _paused_write(out: Path, run: str, names: str, pause: str, go: Path) -> subprocess.Popen[str]:
    """``_WRITE_PAUSED`` in a process of its own, once it has reached its pause."""
    marker = out.parent / f"{run}-at-{pause}"
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITE_PAUSED, str(out), run, names, pause, str(marker), str(go)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the write never reached its pause"
            time.sleep(0.01)
    except BaseException:
        process.kill()  # a write left paused would wait for `go` for good
        raise
    return process


def _finished(process: subprocess.Popen[str]) -> None:
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr


def test_a_write_removes_the_tables_another_process_wrote_while_it_staged_its_own(
    tmp_path: Path,
) -> None:
    """Review: `simulate` read what the folder held before its slow write, `ingest` wrote its
    tables meanwhile, and simulate's events then sat beside Olist's labels.parquet; both
    exited 0. What to remove is read as the tables go in, so the last write's tables are all
    the folder holds."""
    out, go = tmp_path / "data", tmp_path / "go"
    write_tables_atomic(_tables("earlier", "events", "contacts", "stage_history"), out)
    simulate = _paused_write(out, "simulate", "events,contacts,stage_history", "staging", go)
    try:
        write_tables_atomic(
            _tables("ingest", "events", "contacts", "labels"), out, replaces=DATA_TABLES
        )
        go.touch()
        _finished(simulate)
    finally:
        simulate.kill()
    assert sorted(p.name for p in out.iterdir()) == [
        "contacts.parquet",
        "events.parquet",
        "stage_history.parquet",
    ]
    assert {_run_of(p) for p in out.iterdir()} == {"simulate"}


def test_two_writes_into_one_folder_swap_their_tables_in_one_after_the_other(
    tmp_path: Path,
) -> None:
    """Each write's renames ran through the other's: events of one beside the contacts and
    labels of the other. A write waits on the folder's lock while another swaps its tables
    in, then puts its own in and removes the other's, and leaves no lock file behind."""
    out, go = tmp_path / "data", tmp_path / "go"
    first = _paused_write(out, "first", "events,contacts,stage_history", "swap", go)
    try:
        second = _paused_write(out, "second", "events,contacts,labels", "lock", go)
        try:
            go.touch()  # the first, paused amid its swap, goes on only now
            _finished(first)
            _finished(second)
        finally:
            second.kill()
    finally:
        first.kill()  # never left paused, waiting for `go`, when the second fails
    # the second asked for the lock while the first was paused holding it, and got it only
    # once the first went on: without the lock it would have held it before `go`
    assert (tmp_path / "second-at-lock-held").read_text() == "True"
    assert sorted(p.name for p in out.iterdir()) == [
        "contacts.parquet",
        "events.parquet",
        "labels.parquet",
    ]
    assert {_run_of(p) for p in out.iterdir()} == {"second"}


_WRITE_THEN_SIGTERM = """
import os, signal, sys
from pathlib import Path
import pyarrow as pa
from features import io

real_write = io.pq.write_table

def write_then_terminate(table, where, **kwargs):
    real_write(table, where, **kwargs)  # the temporary file is there, full size
    os.kill(os.getpid(), signal.SIGTERM)

io.pq.write_table = write_then_terminate
table = pa.table({"x": [2]})
out = Path(sys.argv[1])
if sys.argv[2] == "one":
    io.write_parquet_atomic(table, out / "f.parquet")
else:
    io.write_tables_atomic({"events": table}, out)
"""


@pytest.mark.parametrize("writer", ["one", "several"])
def test_sigterm_during_a_write_removes_its_temporary_files(tmp_path: Path, writer: str) -> None:
    """As Ctrl-C does; a terminated write left full-size hidden files nothing removed."""
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_THEN_SIGTERM, str(tmp_path), writer],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 143, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_in_a_jupyter_kernel_is_left_to_the_kernel(tmp_path: Path) -> None:
    """IPython catches SystemExit in a cell: the kernel outlived its SIGTERM (diff review)."""
    code = _WRITE_THEN_SIGTERM.replace(
        "from features import io",
        "import sys, types\n"
        "sys.modules['ipykernel'] = types.ModuleType('ipykernel')\nfrom features import io",
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), "one"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGTERM  # the default: killed by it, as a kernel is


def _a_finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_write_sweeps_what_a_killed_write_left_and_nothing_else(tmp_path: Path) -> None:
    dead, hour_ago = _a_finished_pid(), time.time() - 2 * 3600
    leftovers = [
        tmp_path / f".staging-{dead}-abcd_123",
        tmp_path / ".staging-olderrun",  # an earlier version's name, without a pid
        tmp_path / f".f.parquet.{dead}-zz9zz9zz.tmp",
        tmp_path / ".f.parquet.oldnames.tmp",
        # another file's, its writer gone for an hour: a weekly job's dated file is never
        # written again, so it stayed for good (concurrency review)
        tmp_path / f".scores-2026-11-30.csv.{dead}-zz9zz9zz.tmp",
    ]
    kept = [
        tmp_path / f".staging-{os.getppid()}-running1",  # a write that still runs
        tmp_path / ".staging-freshone",  # no pid, and changed a moment ago
        tmp_path / f".other.parquet.{os.getppid()}-zz9zz9zz.tmp",  # another write, running
        # another file's, its pid unknown here but changed a moment ago: a write in another
        # container (its own pid namespace) may be making it
        tmp_path / f".scores.csv.{dead}-zz9zz9zz.tmp",
        tmp_path / ".staging-notes",  # the user's, not funnelcast's name
        tmp_path / f".staging-{dead}-yours123",  # funnelcast's name, but holds the user's file
    ]
    for path in leftovers[:2] + kept[:2] + kept[5:]:
        path.mkdir()
        (path / "events.parquet").write_bytes(b"x" * 100)
    (kept[5] / "notes.txt").write_text("mine", encoding="utf-8")
    for path in leftovers[2:] + kept[2:5]:
        path.write_bytes(b"x" * 100)
    for path in (leftovers[1], leftovers[1] / "events.parquet", leftovers[3], leftovers[4]):
        os.utime(path, (hour_ago, hour_ago))

    write_parquet_atomic(pa.table({"x": [1]}), tmp_path / "f.parquet")
    write_tables_atomic(_tables("b", "events"), tmp_path)

    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)


def test_a_watched_file_replaced_written_or_removed_is_a_change_a_new_one_beside_is_not(
    tmp_path: Path,
) -> None:
    """A command reads a folder's files at several moments; a write into the folder meanwhile
    (a new file renamed over one, as every funnelcast write does) is found before it writes
    what it made of them. A file added beside (a new partition) is not a change."""
    from features.io import InputsChangedError, InputWatch

    events, contacts, absent = tmp_path / "events.parquet", tmp_path / "c.parquet", tmp_path / "x"
    events.write_bytes(b"one")
    contacts.write_bytes(b"two")
    watch = InputWatch([events, contacts, absent])
    (tmp_path / "part-2.parquet").write_bytes(b"new")
    watch.check()  # nothing it reads changed
    assert watch.changed() == []

    fresh = tmp_path / ".new"
    fresh.write_bytes(b"two")  # the same bytes, another file: another export
    os.replace(fresh, contacts)
    assert watch.changed() == [contacts]
    with pytest.raises(InputsChangedError, match=r"c\.parquet changed while it was read"):
        watch.check()

    events.unlink()
    absent.write_bytes(b"made")
    assert watch.changed() == [events, contacts, absent]
    with pytest.raises(InputsChangedError, match=r"events\.parquet \(and 2 more\) changed"):
        watch.check()


def test_a_failure_while_reading_files_that_changed_is_said_as_the_change(tmp_path: Path) -> None:
    """The footer of one file and the pages of its replacement fail in Polars' or Arrow's
    words; once the files changed, the change is what is said (the failure kept as its
    cause), and a failure of files that did not change is left as it is."""
    from features.io import InputsChangedError, InputWatch

    path = tmp_path / "events.parquet"
    path.write_bytes(b"one")
    watch = InputWatch([path])

    def fail(error: Exception, *, change: bool = False) -> None:
        with watch.reading():
            if change:
                path.unlink()
            raise error

    with pytest.raises(ValueError, match="as it is"):
        fail(ValueError("as it is"))
    with pytest.raises(InputsChangedError) as raised:
        fail(OSError("parquet: out of specification"), change=True)
    assert isinstance(raised.value.__cause__, OSError)
