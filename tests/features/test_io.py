"""Outputs are written whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import io
from features.io import read_table, write_parquet_atomic, write_tables_atomic


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
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(pa.table({"x": [2]}), target)
    assert pq.read_table(target).column("x").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


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
    with pytest.raises(OSError, match="interrupted"):
        write_tables_atomic({"a": pa.table({"x": [1]}), "b": pa.table({"y": [2]})}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tables_given_as_none_are_not_written(tmp_path: Path) -> None:
    written = write_tables_atomic({"a": pa.table({"x": [1]}), "b": None}, tmp_path)
    assert sorted(written) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_reading_a_missing_table_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="funnelcast ingest"):
        read_table(tmp_path / "events.parquet")


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
