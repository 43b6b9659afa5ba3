"""What is shown of a tracking URI (never its user or password), a tracking server that
cannot be reached refused at once, how a training run ends (FINISHED, KILLED after Ctrl-C,
FAILED with the reason), the data fingerprint (every column, any row order, no id), and what
a run records to be redone: the git commit and the libraries' versions."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
import pyarrow as pa
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from features.errors import InputError
from training.pipeline import InsufficientDataError
from training.tracking import (
    ERROR_TAG,
    RunOutcome,
    check_server,
    configure_tracking,
    data_fingerprint,
    ensure_experiment,
    existing_store,
    git_tags,
    library_versions,
    read_run_outcome,
    shown_uri,
    training_run,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A SQLite store of this test's own."""
    previous = mlflow.get_tracking_uri()
    yield configure_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(previous)


def _run(run_id: str) -> Run:
    return MlflowClient().get_run(run_id)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("http://alice:s3cret@mlflow.example:5000", "http://***@mlflow.example:5000"),
        ("https://token@host/path?x=1", "https://***@host/path?x=1"),
        ("http://alice:p@ss@host:5000/x", "http://***@host:5000/x"),  # an @ in the password
        ("postgresql://u:pw@db/mlflow", "postgresql://***@db/mlflow"),
        (
            "API request to http://a:b@h:1/api/2.0 failed (host='h')",
            "API request to http://***@h:1/api/2.0 failed (host='h')",
        ),
        ("sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
        ("http://host/x?user=a@b", "http://host/x?user=a@b"),
        ("http://host?user=a@b", "http://host?user=a@b"),
        ("databricks://profile", "databricks://profile"),
    ],
)
def test_a_uri_is_shown_without_its_credentials(given: str, shown: str) -> None:
    assert shown_uri(given) == shown


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_server_that_is_not_running_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow itself retried for 4.5 minutes before failing; the check tries one connection
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    uri = f"http://alice:s3cret@127.0.0.1:{_free_port()}"
    with pytest.raises(InputError, match="cannot be reached") as caught:
        configure_tracking(uri)
    assert "http://***@127.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(InputError, match="cannot be reached"):
        existing_store(uri)


def test_a_listening_server_passes_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_server(f"http://127.0.0.1:{port}/mlflow")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:99999", "http://127.0.0.1:port"])
def test_a_bad_port_is_named(uri: str) -> None:
    with pytest.raises(InputError, match="bad port"):
        check_server(uri)


def test_a_server_behind_a_proxy_is_left_to_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    check_server(f"http://mlflow.example:{_free_port()}")  # no connection tried: no error


# opens the store (argv[1]) and makes the experiment at the moment `go` (argv[3]) appears,
# once MLflow is imported (`ready`, argv[2]): two of them start their first access together
_OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from typing import Any
from training.tracking import configure_tracking, ensure_experiment

uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
configure_tracking(uri)
print(ensure_experiment())
"""


def test_two_processes_opening_a_new_store_at_once_both_succeed(tmp_path: Path) -> None:
    """Review: two `train` started together on a new SQLite store ran MLflow's migrations at
    once; one died with a 100-line alembic traceback ("expected to match one row", "table
    _alembic_tmp_tags already exists"), at times leaving a store every later command failed
    on. Both now open it and share one experiment, a third then trains into it, and no lock
    file is left beside the database."""
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_WHEN_TOLD, uri, str(flag), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(flag.exists() for flag in ready):
            assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
            assert time.monotonic() < deadline, "the processes never got ready"
            time.sleep(0.01)
        go.touch()
        printed = [p.communicate(timeout=300) for p in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, printed, strict=True):
        assert process.returncode == 0, stderr
    assert printed[0][0] == printed[1][0]  # one experiment, made by one of them

    previous = mlflow.get_tracking_uri()
    try:
        configure_tracking(uri)
        with training_run("third") as run_id:
            mlflow.log_metric("x", 1.0)
        assert _run(run_id).info.experiment_id == printed[0][0].strip()
        assert _run(run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(previous)
    assert not (tmp_path / "store" / "mlflow.db.lock").exists()


def test_an_experiment_made_by_another_process_meanwhile_is_the_one_used(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `train` started together both found no experiment, and the second to make it
    failed with MLflow's "already exists"; it now takes the one the other made."""
    made = MlflowClient().create_experiment("meanwhile")
    real_get = mlflow.get_experiment_by_name
    looked: list[str] = []

    def not_there_at_first(name: str) -> Any:
        looked.append(name)
        return None if len(looked) == 1 else real_get(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", not_there_at_first)
    assert ensure_experiment("meanwhile") == made


def test_a_training_run_that_completes_ends_finished_without_an_error_tag(store: str) -> None:
    with training_run("fine") as run_id:
        mlflow.log_metric("x", 1.0)
    assert _run(run_id).info.status == "FINISHED"
    assert ERROR_TAG not in _run(run_id).data.tags
    assert mlflow.active_run() is None


def test_an_error_inside_a_training_run_ends_it_failed_with_the_one_line_reason(
    store: str,
) -> None:
    # it used to end FAILED and empty: nothing said why
    problem = InsufficientDataError(
        "too little data to train: 2 labelled snapshots, 6 needed\nsecond line", report={}
    )
    with pytest.raises(InsufficientDataError), training_run("short") as run_id:
        raise problem
    run = _run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG] == (
        "InsufficientDataError: too little data to train: 2 labelled snapshots, 6 needed"
    )
    assert mlflow.active_run() is None


def test_the_failure_reason_shows_no_credentials_and_no_quoted_values(store: str) -> None:
    """Another library's message can carry a store's password or quote the value it failed on,
    which can be a contact id."""
    with pytest.raises(RuntimeError), training_run() as run_id:
        raise RuntimeError("API request to http://alice:s3cret@mlflow.example failed on 'c-00042'")
    reason = _run(run_id).data.tags[ERROR_TAG]
    assert reason.startswith("RuntimeError: API request to http://***@mlflow.example failed")
    assert "s3cret" not in reason
    assert "c-00042" not in reason


@pytest.mark.parametrize(
    "value",
    [
        "unsubscribe?email=sim-0000001@example.com",
        "o'neil@example.com",  # repr quotes it with double quotes
        '{"email": "o\'neil@example.com"}',  # both quotes: repr escapes the single ones
        "line\nbreak@example.com",
        "back\\slash@example.com",
    ],
)
def test_funnelcast_s_own_errors_quote_no_values_into_the_tag(store: str, value: str) -> None:
    """An unknown event type is quoted as the data holds it: a review put contact e-mail
    addresses there (of a contact without consent too), and the tag kept them for good; a
    second found values holding quotes escaped the masking."""
    from features.vocabulary import unknown_vocabulary_message

    with pytest.raises(InputError), training_run() as run_id:
        raise InputError(f"the events' `event_type` holds {value!r}, {'x@example.com'!r}, no")
    reason = _run(run_id).data.tags[ERROR_TAG]
    assert "example.com" not in reason
    assert reason == "InputError: the events' `event_type` holds '…', '…', no"
    # the console's message quotes names only; the tag masks those too
    with pytest.raises(InputError), training_run() as run_id:
        raise InputError(unknown_vocabulary_message("event_type", ["Jane Doe", value]))
    reason = _run(run_id).data.tags[ERROR_TAG]
    assert "Jane" not in reason
    assert "example.com" not in reason
    assert reason.startswith("InputError: the events' `event_type` holds '…', <a value that")


def test_a_bytes_value_in_another_library_s_message_is_masked_too(store: str) -> None:
    with pytest.raises(ValueError, match="invalid literal"), training_run() as run_id:
        int(b"alice@example.com")
    reason = _run(run_id).data.tags[ERROR_TAG]
    assert reason == "ValueError: invalid literal for int() with base 10: '…'"


def test_a_store_that_fails_while_a_run_ends_does_not_hide_the_error(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store is what failed, recording why (set_tag) fails too: the user saw that
    second failure instead of the first (diff review)."""
    from mlflow.tracking import MlflowClient

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("the store is gone")

    monkeypatch.setattr(MlflowClient, "set_tag", unreachable)
    with pytest.raises(ValueError, match="the first problem"), training_run():
        raise ValueError("the first problem")
    assert mlflow.active_run() is None


def test_a_run_the_store_cannot_end_is_said_in_one_line_naming_its_state(
    store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review: a store locked while a run failed gave two warnings with a traceback each (360
    lines without -v), and the run, left RUNNING for good, was never said to be."""
    import logging

    from mlflow.tracking import MlflowClient

    import training.tracking

    def locked(*args: object, **kwargs: object) -> None:
        raise ConnectionError("database is locked\nsecond line")

    monkeypatch.setattr(MlflowClient, "set_tag", locked)
    monkeypatch.setattr(training.tracking, "_end", locked)
    caplog.set_level(logging.WARNING, logger="training.tracking")
    with pytest.raises(ValueError, match="the first problem"), training_run() as run_id:
        raise ValueError("the first problem")
    said = [r for r in caplog.records if r.name == "training.tracking"]
    assert [r.getMessage() for r in said] == [
        f"could not record why run {run_id} failed (ConnectionError: database is locked)",
        f"run {run_id} stays RUNNING in the store: it could not be ended as FAILED "
        "(ConnectionError: database is locked); once the store can be written, end it with "
        f"mlflow.MlflowClient().set_terminated('{run_id}', 'FAILED')",
    ]
    assert not any(r.exc_info for r in said)  # no traceback unless asked for (-v)
    assert _run(run_id).info.status == "RUNNING"
    mlflow.end_run()  # the store works again: the run MLflow still holds active is ended
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="training.tracking")
    with pytest.raises(ValueError, match="the first problem"), training_run():
        raise ValueError("the first problem")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert all(r.exc_info for r in warned)  # -v: the tracebacks too
    mlflow.end_run()


def test_ctrl_c_inside_a_training_run_ends_it_killed_and_is_raised_again(store: str) -> None:
    with pytest.raises(KeyboardInterrupt), training_run("stopped") as run_id:
        raise KeyboardInterrupt
    assert _run(run_id).info.status == "KILLED"
    assert ERROR_TAG not in _run(run_id).data.tags
    assert mlflow.active_run() is None


def test_ctrl_c_as_the_run_starts_is_raised_before_the_block_with_the_run_made_known(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C held while the run starts is raised before the block is entered, after the
    run was made and then ended KILLED: only ``on_start`` tells the caller which run that is
    (`train` said it had started none)."""
    real_start = mlflow.start_run

    def start_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        started = real_start(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return started

    monkeypatch.setattr(mlflow, "start_run", start_then_ctrl_c)
    noted: list[str] = []
    entered = False
    # Ctrl-C as Python answers it by default, whatever handler an earlier test left
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), training_run(on_start=noted.append):
            entered = True
    finally:
        signal.signal(signal.SIGINT, before)
    assert not entered
    (run_id,) = noted
    assert read_run_outcome(run_id) == RunOutcome(status="KILLED", versions=())
    assert mlflow.active_run() is None


def test_ctrl_c_with_a_nested_run_still_open_ends_both_killed(store: str) -> None:
    opened: list[str] = []

    def stop_inside_a_nested_run() -> None:
        opened.append(mlflow.start_run(nested=True).info.run_id)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), training_run() as run_id:
        stop_inside_a_nested_run()
    (nested,) = opened
    assert _run(nested).info.status == "KILLED"
    assert _run(run_id).info.status == "KILLED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    ("error", "status"),
    [(KeyboardInterrupt(), "KILLED"), (MemoryError("std::bad_alloc"), "FAILED")],
    ids=["ctrl-c", "failure"],
)
def test_a_nested_run_made_but_never_active_ends_with_the_training_run(
    store: str, error: BaseException, status: str
) -> None:
    """A Ctrl-C inside `mlflow.start_run` can leave a nested run made in the store that never
    became active: no `end_run` reached it, and it stayed RUNNING for good."""
    made: list[str] = []

    def make_a_nested_run_then_stop(parent: str) -> None:
        made.append(_make_nested_run(parent))
        raise error

    with pytest.raises(type(error)), training_run() as run_id:
        make_a_nested_run_then_stop(run_id)
    assert _run(made[0]).info.status == status
    assert _run(run_id).info.status == status
    assert mlflow.active_run() is None


_TRAIN_THEN_SIGTERM = """
import os, signal, sys
import mlflow
from training.tracking import configure_tracking, training_run

configure_tracking(sys.argv[1])
with training_run("terminated") as run_id:
    print(run_id, mlflow.start_run(nested=True).info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's timeout, `kill`
    signal.pause()  # not reached: the handler raises
"""


def test_sigterm_during_a_training_run_ends_it_and_its_nested_runs_killed(tmp_path: Path) -> None:
    """SIGTERM ended the process at once: the run stayed RUNNING in the store for good, as if
    training still went on (review). It now ends as Ctrl-C does, and the exit status is 143."""
    client, printed = _terminated(_TRAIN_THEN_SIGTERM, tmp_path)
    run_id, nested = printed
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(nested).info.status == "KILLED"
    assert ERROR_TAG not in client.get_run(run_id).data.tags


_SIGTERM_WHILE_ENDING = """
import os, signal, sys
import mlflow
from training import tracking

real_end = tracking._end

def end_after_a_second_sigterm(run_id, status):
    os.kill(os.getpid(), signal.SIGTERM)  # another stop while the run is being ended
    real_end(run_id, status)

tracking._end = end_after_a_second_sigterm
tracking.configure_tracking(sys.argv[1])
with tracking.training_run("terminated twice") as run_id:
    print(run_id, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
"""


def test_a_second_sigterm_while_the_run_ends_does_not_leave_it_to_be_called_finished(
    tmp_path: Path,
) -> None:
    """Diff review: a SIGTERM that arrived while the run was being ended escaped the ending,
    and MLflow's exit hook then ended the still-active run FINISHED, a version promote takes."""
    client, (run_id,) = _terminated(_SIGTERM_WHILE_ENDING, tmp_path)
    assert client.get_run(run_id).info.status == "KILLED"


def _terminated(script: str, folder: Path) -> tuple[MlflowClient, list[str]]:
    """Run ``script`` (given a store's URI) in a process it stops with SIGTERM: the store's
    client and the words the script printed, once it exited with SIGTERM's 143."""
    uri = f"sqlite:///{folder}/mlflow.db"
    result = subprocess.run(
        [sys.executable, "-c", script, uri],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 143, result.stderr
    return MlflowClient(tracking_uri=uri), result.stdout.split()


def test_a_nested_run_never_ended_is_not_called_finished_when_the_training_run_is(
    store: str,
) -> None:
    """It never reached its own end: FINISHED would say it had run (a trial with no metrics)."""
    with training_run() as run_id:
        made = _make_nested_run(run_id)
    assert _run(run_id).info.status == "FINISHED"
    assert _run(made).info.status == "KILLED"


def _make_nested_run(parent: str) -> str:
    """A run nested in ``parent``, made in the store and never active, as `mlflow.start_run`
    leaves one when Ctrl-C stops it between the two."""
    experiment = _run(parent).info.experiment_id
    return MlflowClient().create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id


def _events() -> pl.DataFrame:
    at = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    return pl.DataFrame(
        {
            "contact_id": ["a", "a", "b", "c"],
            "timestamp": [at, at + dt.timedelta(hours=1), at, at + dt.timedelta(days=2)],
            "channel": ["email", "web", "email", "web"],
            "event_type": ["email_open", "page_view", "email_click", "purchase"],
            "value": [None, None, None, 42.0],
            "campaign_id": ["spring", None, "spring", None],
            "properties": [None, '{"page": "/pricing"}', None, '{"sku": "x1"}'],
        }
    )


def _contacts() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "contact_id": ["a", "b", "c"],
            "marketing_consent": [True, True, False],
            "segment": ["smb", "smb", "enterprise"],
        }
    )


def _labels() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "contact_id": ["a", "c"],
            "label_date": [dt.date(2026, 3, 10), dt.date(2026, 3, 10)],
            "outcome": ["won", "lost"],
        }
    )


def _fingerprint(
    events: pl.DataFrame | None = None,
    contacts: pl.DataFrame | None = None,
    labels: pl.DataFrame | pa.Table | None = None,
) -> dict[str, object]:
    return data_fingerprint(
        _events() if events is None else events,
        _contacts() if contacts is None else contacts,
        labels=_labels() if labels is None else labels,
    )


def _with(frame: pl.DataFrame, column: str, row: int, value: object) -> pl.DataFrame:
    values = frame[column].to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, dtype=frame.schema[column]))


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("events", "value", 41.0),
        ("events", "campaign_id", "autumn"),
        ("events", "properties", '{"sku": "x2"}'),
        ("contacts", "marketing_consent", True),
        ("labels", "outcome", "won"),
    ],
)
def test_the_data_fingerprint_changes_with_any_column(
    table: str, column: str, value: object
) -> None:
    """It hashed four event columns only: another value, campaign or property, a contact's
    consent or a provided label left it the same."""
    before = _fingerprint()
    frames = {"events": _events(), "contacts": _contacts(), "labels": _labels()}
    frames[table] = _with(frames[table], column, -1, value)
    after = _fingerprint(**frames)
    assert after[f"{table}_hash"] != before[f"{table}_hash"]
    others = {"events", "contacts", "labels"} - {table}
    assert all(after[f"{name}_hash"] == before[f"{name}_hash"] for name in others)


def test_the_data_fingerprint_does_not_depend_on_the_row_or_column_order() -> None:
    shuffled = _fingerprint(
        _events().sample(fraction=1.0, shuffle=True, seed=1).select(reversed(_events().columns)),
        _contacts().reverse(),
        _labels().reverse().to_arrow(),  # as Arrow, as a caller may pass it
    )
    assert shuffled == _fingerprint()


def test_the_data_fingerprint_counts_and_hashes_without_naming_a_contact() -> None:
    fingerprint = _fingerprint()
    assert fingerprint["events_rows"] == 4
    assert fingerprint["events_contacts"] == 3
    assert fingerprint["contacts_rows"] == 3
    assert fingerprint["labels_rows"] == 2
    assert not {"a", "b", "c"} & {str(v) for v in fingerprint.values()}
    assert "labels_hash" not in data_fingerprint(_events(), _contacts())


def test_the_data_fingerprint_reads_a_contacts_time_in_a_zone_polars_cannot_name() -> None:
    """A pandas export in India's +05:30 as an Arrow table: the builders read it as its UTC
    instants, and the fingerprint panicked in Polars (review)."""
    moment = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    signup = pa.array([moment] * 3, pa.timestamp("us", tz="+05:30"))
    in_utc = pa.array([moment] * 3, pa.timestamp("us", tz="UTC"))
    contacts = _contacts().to_arrow()
    zoned = _fingerprint(contacts=contacts.append_column("signup", signup))
    utc = _fingerprint(contacts=contacts.append_column("signup", in_utc))
    assert zoned["contacts_hash"] == utc["contacts_hash"]  # the same instants
    assert zoned["contacts_hash"] != _fingerprint()["contacts_hash"]


def _git(folder: Path, *args: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_git_commit_is_tagged_from_a_checkout_with_its_changes_named(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "x.py").write_text("A = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    assert git_tags(tmp_path) == {"funnelcast.git_commit": commit, "funnelcast.git_dirty": "false"}
    (tmp_path / "training" / "x.py").write_text("A = 2\n")
    assert git_tags(tmp_path)["funnelcast.git_dirty"] == "true"


def test_outside_a_checkout_no_commit_is_tagged_and_nothing_fails(tmp_path: Path) -> None:
    assert git_tags(tmp_path) == {}
    # a copy inside another repository (a virtualenv in a project) is not that repository
    _git(tmp_path, "init", "-q")
    (tmp_path / "site-packages").mkdir()
    assert git_tags(tmp_path / "site-packages") == {}


def test_the_main_libraries_versions_are_tags() -> None:
    versions = library_versions()
    for package in ("lightgbm", "polars", "numpy", "pandas", "scikit-learn", "mlflow", "pyarrow"):
        assert versions[f"version.{package}"] == metadata.version(package)


def test_a_store_that_cannot_be_made_or_written_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: a store under a file was a NotADirectoryError's traceback; a read-only one was
    found out after training."""
    import os

    from features.errors import InputError
    from training.tracking import check_store_writable, configure_tracking

    blocker = tmp_path / "a-file"
    blocker.write_text("", "utf-8")
    under_a_file = f"sqlite:///{blocker}/mlflow.db"
    for check in (configure_tracking, check_store_writable):
        with pytest.raises(InputError, match=f"its folder {blocker} cannot be made"):
            check(under_a_file)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    check_store_writable(uri)  # a new store in a folder that can be made: fine, and made
    assert (tmp_path / "store").is_dir()
    (tmp_path / "store" / "mlflow.db").write_bytes(b"")
    check_store_writable(uri)
    # the tests run as root, which may write anything: the refusal is made here
    store = tmp_path / "store" / "mlflow.db"
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != store)
    with pytest.raises(InputError, match=f"mlflow.db cannot be written: {store} may not be"):
        check_store_writable(uri)


def test_a_store_in_a_folder_no_lock_can_be_made_in_is_opened_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server reading its registry from a read-only volume cannot make the lock beside the
    store (the tests run as root, which any folder lets write: the refusal is made here)."""
    import contextlib
    import errno

    import training.tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # the store, made

    @contextlib.contextmanager
    def refused(path: Path) -> Iterator[None]:
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        yield  # a generator, as the real one

    monkeypatch.setattr(training.tracking, "lock_held", refused)
    previous = mlflow.get_tracking_uri()
    try:
        assert training.tracking.configure_tracking(uri) == uri
        assert MlflowClient().search_experiments(max_results=1)  # the store answers
    finally:
        mlflow.set_tracking_uri(previous)

    def broken(path: Path) -> Iterator[None]:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(training.tracking, "lock_held", contextlib.contextmanager(broken))
    with pytest.raises(OSError, match="Input/output error"):  # any other failure is said
        training.tracking.configure_tracking(uri)
    mlflow.set_tracking_uri(previous)
