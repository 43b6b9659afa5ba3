"""Where the commands write: never over the data they read, never a file of the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FUNNELCAST = str(Path(sys.executable).parent / "funnelcast")

MAPPING = """\
name: m_src
description: raw events kept in the folder given as --out
events:
  - name: rows
    read: {path: src/events.parquet, format: parquet}
    contact_id: user
    timestamp: {column: ts, format: iso8601}
    event_type: {fixed: purchase}
    channel: {fixed: store}
"""


def _run(*args: str, cwd: Path, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """``funnelcast ARGS`` in ``cwd``; ``columns``: the console's width (a long temporary
    path would be cut into pieces in the default 80)."""
    env = None if columns is None else {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [FUNNELCAST, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
        env=env,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("command", "out", "raw"),
    [
        ("ingest", "src", "src/events.parquet"),
        ("run", "project", "project/data/events.parquet"),
    ],
)
def test_an_output_folder_holding_the_raw_source_is_refused_before_any_work(
    tmp_path: Path, command: str, out: str, raw: str
) -> None:
    """It overwrote the raw events with the canonical table and removed the user's own
    labels.parquet beside them as "an earlier run's table"."""
    (tmp_path / "m_src.yaml").write_text(
        MAPPING.replace("src/events.parquet", raw), encoding="utf-8"
    )
    source = tmp_path / raw
    source.parent.mkdir(parents=True)
    pq.write_table(
        pa.table({"user": ["a", "b"], "ts": ["2024-01-01T00:00:00Z"] * 2, "action": ["buy"] * 2}),
        source,
    )
    mine = source.parent / "labels.parquet"
    pq.write_table(pa.table({"mine": [1]}), mine)
    before = {path: path.read_bytes() for path in (source, mine)}

    result = _run(command, "--source", "m_src.yaml", "--data-dir", ".", "--out", out, cwd=tmp_path)

    _one_line_error(result, f"{raw} is a file the source reads")
    assert "Reading" not in result.stdout
    assert {path: path.read_bytes() for path in (source, mine)} == before
    assert sorted(p.name for p in source.parent.iterdir()) == ["events.parquet", "labels.parquet"]


def test_features_out_below_a_file_says_it_is_a_file_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    data = tmp_path / "data"
    simulated = _run(
        "simulate", "--out", str(data), "--contacts", "20", "--days", "3", cwd=tmp_path
    )
    assert simulated.returncode == 0, simulated.stderr
    result = _run(
        "features",
        "--events",
        str(data),
        "--as-of",
        "2024-01-02",
        "--out",
        str(tmp_path / "afile" / "f.parquet"),
        cwd=tmp_path,
    )
    line = _one_line_error(result, f"{tmp_path / 'afile'} is a file, not a folder")
    assert "File exists" not in line


def _small_data(folder: Path) -> Path:
    """Two contacts' events and their contacts table, as ingest writes them."""
    from features.schema import validate

    events = pa.table(
        {
            "contact_id": ["a", "b"],
            "timestamp": ["2024-01-02T10:00:00Z", "2024-01-03T10:00:00Z"],
            "channel": ["web", "email"],
            "event_type": ["page_view", "email_open"],
        }
    )
    contacts = pa.table({"contact_id": ["a", "b"], "marketing_consent": [True, True]})
    validated = validate(events, contacts)
    folder.mkdir()
    pq.write_table(validated.events, folder / "events.parquet")
    assert validated.contacts is not None
    pq.write_table(validated.contacts, folder / "contacts.parquet")
    return folder


def test_features_out_as_a_link_writes_the_file_it_names_and_never_an_input(
    tmp_path: Path,
) -> None:
    """Export review: a write replaced a symbolic link --out with a file, leaving the file
    it named stale. The link's file is written now, so a link (or a `..` path) to the
    events or the contacts must stay refused, before any work, as the files themselves are;
    and a link into a place that cannot take a file is said before the build."""
    from typer.testing import CliRunner

    from features.errors import InputError
    from serving.cli import app

    data = _small_data(tmp_path / "data")
    before = {name: (data / name).read_bytes() for name in ("events.parquet", "contacts.parquet")}
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    links = {name: tmp_path / f"to-{name}.parquet" for name in ("events", "contacts", "a-file")}
    links["events"].symlink_to(data / "events.parquet")
    links["contacts"].symlink_to(Path("data") / "contacts.parquet")  # relative
    links["a-file"].symlink_to(tmp_path / "a-file" / "f.parquet")
    refused = [
        (links["events"], "is one of the input files"),
        (links["contacts"], "is one of the input files"),
        (tmp_path / "a-file" / ".." / "data" / "events.parquet", "is one of the input files"),
        (tmp_path / "a-file" / ".." / "data" / "contacts.parquet", "is one of the input files"),
        (links["a-file"], "a-file is a file, not a folder"),
    ]
    features = ["features", "--events", str(data), "--as-of", "2024-01-05"]
    for out, says in refused:
        result = CliRunner().invoke(app, [*features, "--out", str(out)])
        assert isinstance(result.exception, InputError), (out, result.output)
        assert says in str(result.exception), out
        assert "Building" not in result.output
    assert {name: (data / name).read_bytes() for name in before} == before
    assert all(link.is_symlink() for link in links.values())

    exports = tmp_path / "exports"
    exports.mkdir()
    latest = tmp_path / "latest.parquet"
    latest.symlink_to(Path("exports") / "features.parquet")
    result = CliRunner().invoke(app, [*features, "--out", str(latest)])
    assert result.exit_code == 0, result.output
    assert latest.is_symlink()
    assert pq.read_table(exports / "features.parquet").column("contact_id").to_pylist() == [
        "a",
        "b",
    ]


def test_a_store_locked_by_another_process_is_one_line(tmp_path: Path) -> None:
    """A locked SQLite store (mlflow gc, a backup) made every command a traceback ending in
    sqlalchemy's 'database is locked' (concurrency review)."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # the schema, made
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = _run("evaluate", "--tracking-uri", uri, cwd=tmp_path, columns=200)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = _one_line_error(result, "is locked by another process")
    assert "mlflow.db" in line


def test_a_store_whose_folder_cannot_be_made_is_one_line_before_any_work(tmp_path: Path) -> None:
    """Review: a SQLite store under a file was a 42-line NotADirectoryError, and `run`
    simulated, validated and showed the funnel before it (step 4)."""

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", "utf-8")
    uri = f"sqlite:///{blocker}/store/mlflow.db"
    result = _run(
        "run", "--tracking-uri", uri, "--out", str(tmp_path / "out"), cwd=tmp_path, columns=300
    )
    line = _one_line_error(result, f"its folder {blocker}/store cannot be made")
    assert line.endswith("in a folder you may write to")
    assert not (tmp_path / "out" / "data" / "events.parquet").exists()  # nothing simulated


def test_a_store_that_cannot_be_written_or_opened_is_one_line_naming_why() -> None:
    """Review: a read-only store was told by the first line of SQLAlchemy's message alone
    ("raised as a result of Query-invoked autoflush"), the reason being on the next; a new
    store on a read-only file system was a 179-line traceback."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    from serving.cli import _no_space_or_locked

    autoflush = MlflowException(
        "(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush "
        "block if this flush is occurring prematurely)\n(sqlite3.OperationalError) attempt to "
        "write a readonly database"
    )
    said = _no_space_or_locked(autoflush) or ""
    assert "cannot be written (SQLite: attempt to write a readonly database" in said
    assert said.endswith("a store you may write to")
    unopened = OperationalError("SELECT 1", {}, Exception("unable to open database file"))
    said = _no_space_or_locked(unopened) or ""
    assert "cannot be opened (SQLite: unable to open database file" in said


def test_a_full_disk_is_one_line_under_any_librarys_wording() -> None:
    """ENOSPC reached the user as a 70-line traceback from MLflow's artifact writes, or as
    'check the tracking URI' (concurrency review): one line, saying what to free."""
    import errno

    from mlflow.exceptions import MlflowException

    from serving.cli import _no_space_or_locked

    plain = OSError(errno.ENOSPC, "No space left on device", "/data/out/model.lgb")
    said = _no_space_or_locked(plain)
    assert said is not None
    assert said.startswith("/data/out/model.lgb: No space left on device")
    assert "free some space there" in said
    wrapped = MlflowException("failures while downloading artifacts")
    wrapped.__cause__ = plain
    assert _no_space_or_locked(wrapped) == said  # found under the wrapper
    sqlite = MlflowException("(sqlite3.OperationalError) database or disk is full")
    assert "no space left while writing to" in (_no_space_or_locked(sqlite) or "")
    assert _no_space_or_locked(ValueError("a bug")) is None
    assert _no_space_or_locked(OSError(errno.EACCES, "Permission denied", "/x")) is None


def test_a_panic_of_the_data_reader_is_one_line_that_says_what_may_have_caused_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Polars panicked (a Rust assertion, raised as pyo3's PanicException, a BaseException)
    when an events file was replaced while score read it, and the user got the panic and a
    traceback (concurrency review)."""
    from serving import cli

    class PanicException(BaseException):  # pyo3's own is not importable; its name is the mark
        pass

    def reader_panics() -> None:
        raise PanicException("assertion failed: range.end as u64 <= self.size")

    monkeypatch.setattr(cli, "app", reader_panics)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1, said
    assert "assertion failed: range.end" in said[0]
    assert "another command was writing the files read" in said[0]

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(KeyboardInterrupt):  # still Ctrl-C's, not a one-line error
        cli.main()
