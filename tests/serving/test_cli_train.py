"""`funnelcast train`, `evaluate` and `promote` as a user runs them, against a temporary MLflow
store: tuning logs its trials as nested runs, the gate's answer is the exit code, and too little
data is a report, not a crash."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

FUNNELCAST = str(Path(sys.executable).parent / "funnelcast")
pytestmark = pytest.mark.slow


def _env(tmp: Path) -> dict[str, str]:
    """The environment of a command run in ``tmp``: its own MLflow store there."""
    return {
        **os.environ,
        "COLUMNS": "200",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns/mlflow.db",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{tmp}/mlruns/mlflow.db",
    }


def _run(
    tmp: Path, *args: str, argv: tuple[str, ...] = (FUNNELCAST,)
) -> subprocess.CompletedProcess[str]:
    """``funnelcast *args`` run in ``tmp`` (``argv``: another way to start it)."""
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp,
        env=_env(tmp),
        check=False,
    )


def _client(tmp: Path) -> MlflowClient:
    """The store the commands in ``tmp`` wrote, its registry too, whatever an earlier test set
    as this process's tracking or registry URI."""
    store = f"sqlite:///{tmp}/mlruns/mlflow.db"
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    result = _run(
        tmp,
        "simulate",
        "--out",
        str(tmp / "data"),
        "--contacts",
        "6000",
        "--days",
        "120",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    return tmp


def test_train_without_contacts_needs_consent_assumed_before_any_run(
    workspace: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "events-only"
    alone.mkdir()
    (alone / "events.parquet").symlink_to(workspace / "data" / "events.parquet")
    result = _run(tmp_path, "train", "--events", str(alone))
    assert result.returncode == 2
    assert "no marketing consent is known" in result.stderr
    assert "--assume-consent" in result.stderr
    assert not (tmp_path / "mlruns").exists()  # refused before a run was started
    missing = tmp_path / "nowhere.parquet"
    result = _run(tmp_path, "train", "--events", str(alone), "--contacts", str(missing))
    assert result.returncode == 2
    assert f"--contacts {missing} does not exist" in " ".join(result.stderr.split())


def test_train_refuses_a_spec_without_the_rules_stage_before_any_run(
    workspace: Path, tmp_path: Path
) -> None:
    from features.spec import shipped_spec_text

    spec = tmp_path / "no-rules.yaml"
    spec.write_text(shipped_spec_text().replace("rules_stage: true", "rules_stage: false"))
    result = _run(tmp_path, "train", "--events", str(workspace / "data"), "--spec", str(spec))
    assert result.returncode == 2
    assert "needs `rules_stage: true`" in " ".join(result.stderr.split())
    assert not (tmp_path / "mlruns").exists()  # refused before a run was started


def test_train_refuses_a_contacts_column_that_identifies_contacts_before_any_run(
    workspace: Path, tmp_path: Path
) -> None:
    import polars as pl

    contacts = pl.read_parquet(workspace / "data" / "contacts.parquet")
    with_email = tmp_path / "contacts.parquet"
    contacts.with_columns(email=pl.col("contact_id") + "@example.com").write_parquet(with_email)
    result = _run(
        tmp_path, "train", "--events", str(workspace / "data"), "--contacts", str(with_email)
    )
    assert result.returncode == 2
    said = " ".join(result.stderr.split())
    assert (
        "the contacts column 'email' (6,000 distinct values among 6,000 contacts, mostly e-mail "
        "addresses)" in said
    )
    assert "`attributes: all`" in said
    assert not (tmp_path / "mlruns").exists()  # refused before a run was started


def _small_models(settings: dict[str, Any]) -> dict[str, Any]:
    """The shipped settings with small LightGBM models, for tests whose subject is what the
    commands count, log and answer rather than how good the models are."""
    settings["training"]["lightgbm"].update(num_boost_round=20)
    settings["training"]["lightgbm"]["params"].update(num_leaves=7)
    return settings


@pytest.fixture(scope="module")
def trained(workspace: Path) -> subprocess.CompletedProcess[str]:
    """Version 1, trained with two tuning trials per model: what evaluate and promote read,
    whichever test runs first."""
    import yaml

    from features.settings import load_defaults

    config = workspace / "small-models.yaml"
    config.write_text(yaml.safe_dump(_small_models(load_defaults(None))), encoding="utf-8")
    common = ("--events", str(workspace / "data"), "--config", str(config))
    return _run(workspace, "train", *common, "--tune", "2")


def test_train_with_tuning_logs_each_trial_as_a_nested_run(
    workspace: Path, trained: subprocess.CompletedProcess[str]
) -> None:
    result = trained
    assert result.returncode == 0, result.stderr
    assert "version 1 of 'funnelcast'" in result.stdout
    assert re.search(r"stage macro-F1\s.*\d\.\d{3}", result.stdout)
    assert "Time by step:" in result.stdout
    assert "tuning" in result.stdout
    client = _client(workspace)
    experiment = client.get_experiment_by_name("funnelcast")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert len(trials) == 4  # two trials for each of the two models
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    assert any(k.startswith("tuned.") for k in parents[0].data.params)


def test_evaluate_needs_a_champion_and_promote_answers_with_its_exit_code(
    workspace: Path, trained: subprocess.CompletedProcess[str]
) -> None:
    assert trained.returncode == 0, trained.stderr
    missing = _run(workspace, "evaluate")
    assert missing.returncode == 2
    assert "no alias 'champion'" in missing.stderr
    assert "Traceback" not in missing.stderr

    shown = _run(workspace, "evaluate", "--version", "1")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"purchase AUC-PR\s.*\d\.\d{3}", shown.stdout)

    # the gate weighs noise: this seeded model is ahead on one of the two (at 668584d, AUC-PR
    # by 0.0002) and behind on the other by less than the noise of this small test window,
    # so it is promoted
    client = _client(workspace)
    logged = client.get_run(client.get_model_version("funnelcast", "1").run_id).data.metrics
    assert (
        logged["test.stage.lightgbm.macro_f1"] > logged["test.stage.rules.macro_f1"]
        or logged["test.propensity.lightgbm.auc_pr"] > logged["test.propensity.rfm_logistic.auc_pr"]
    )
    promoted = _run(workspace, "promote")
    assert promoted.returncode == 0, promoted.stdout
    said = " ".join(promoted.stdout.split())
    assert "Promoted version 1 to 'champion' over the rules and RFM: " in said
    number, signed = r"\d\.\d{4}", r"[+-]\d\.\d{4}"
    for key in ("macro_f1", "macro_f1_labelled", "auc_pr"):
        assert re.search(rf"{key} {number} vs {number} \[{signed}, {signed}\]", said), said
    assert re.search(
        r"In brackets: the 95 % interval of the difference, from a paired bootstrap of 500 "
        r"resamples of the test window, drawing its [\d,]+ contacts\.",
        said,
    )
    # a shortfall within noise is said, and only one
    for label, ours, theirs in (
        ("stage macro-F1", "test.stage.lightgbm.macro_f1", "test.stage.rules.macro_f1"),
        (
            "purchase AUC-PR",
            "test.propensity.lightgbm.auc_pr",
            "test.propensity.rfm_logistic.auc_pr",
        ),
    ):
        shortfall = logged[ours] < logged[theirs]
        assert (f"{label} {logged[ours]:.4f} is " in said) is shortfall, said
    assert ("within noise" in said) is (
        logged["test.stage.lightgbm.macro_f1"] < logged["test.stage.rules.macro_f1"]
        or logged["test.propensity.lightgbm.auc_pr"] < logged["test.propensity.rfm_logistic.auc_pr"]
    ), said
    tags = client.get_model_version("funnelcast", "1").tags
    assert (tags["forced"], tags["gate.resampled"], tags["gate.resamples"]) == (
        "false",
        "contacts",
        "500",
    )
    for key in ("macro_f1", "macro_f1_labelled", "auc_pr"):  # none worse beyond noise
        assert float(tags[f"gate.{key}.low"]) <= float(tags[f"gate.{key}.high"])
        assert float(tags[f"gate.{key}.high"]) >= 0, said
    assert _run(workspace, "evaluate").returncode == 0


def test_a_promotion_over_the_rules_is_said_with_the_scores(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `promote` says, word for word, on decisions made for it: strict (no intervals),
    and with intervals and a shortfall within noise."""
    import dataclasses

    from serving import cli
    from training import registry
    from training.bootstrap import Interval

    decision = registry.Promotion(
        promoted=True,
        challenger=registry.ModelRef(name="funnelcast", version="1", run_id="r"),
        champion=None,
        challenger_scores={"macro_f1": 0.25, "macro_f1_labelled": 0.25, "auc_pr": 0.03},
        champion_scores={"macro_f1": 0.24, "macro_f1_labelled": 0.24, "auc_pr": 0.02},
    )
    monkeypatch.setattr(registry, "promote", lambda *args, **kwargs: decision)
    assert cli._promote_and_report("funnelcast", "champion", version=None, force=False)
    assert " ".join(capsys.readouterr().out.split()) == (
        "Promoted version 1 to 'champion' over the rules and RFM: macro_f1 0.2500 vs 0.2400, "
        "macro_f1_labelled 0.2500 vs 0.2400, auc_pr 0.0300 vs 0.0200."
    )
    noisy = dataclasses.replace(
        decision,
        champion_scores={**decision.champion_scores, "auc_pr": 0.0301},
        intervals={
            "macro_f1": Interval(low=0.004, high=0.016, resamples=500),
            "macro_f1_labelled": Interval(low=0.003, high=0.017, resamples=500),
            "auc_pr": Interval(low=-0.002, high=0.0015, resamples=500),
        },
        reasons=["purchase AUC-PR 0.0300 is 0.0001 below 0.0301, within noise (...)"],
        method="a paired bootstrap of 500 resamples of the test window, drawing its 9 contacts",
    )
    monkeypatch.setattr(registry, "promote", lambda *args, **kwargs: noisy)
    assert cli._promote_and_report("funnelcast", "champion", version=None, force=False)
    assert " ".join(capsys.readouterr().out.split()) == (
        "Promoted version 1 to 'champion' over the rules and RFM: macro_f1 0.2500 vs 0.2400 "
        "[+0.0040, +0.0160], macro_f1_labelled 0.2500 vs 0.2400 [+0.0030, +0.0170], auc_pr "
        "0.0300 vs 0.0301 [-0.0020, +0.0015]. Note: purchase AUC-PR 0.0300 is 0.0001 below "
        "0.0301, within noise (...). In brackets: the 95 % interval of the difference, from a "
        "paired bootstrap of 500 resamples of the test window, drawing its 9 contacts."
    )


def test_train_on_too_little_history_exits_1_with_the_minimum_data_report(tmp_path: Path) -> None:
    simulated = _run(
        tmp_path, "simulate", "--out", str(tmp_path / "small"), "--contacts", "500", "--days", "50"
    )
    assert simulated.returncode == 0, simulated.stderr
    result = _run(tmp_path, "train", "--events", str(tmp_path / "small"))
    assert result.returncode == 1
    # said as `run` says it, on the standard output: a report, not a crash
    assert "error:" not in result.stderr
    said = " ".join(result.stdout.split())
    assert "No model trained: " in said
    assert "too few" in said
    assert (
        said.count(
            "Nothing was registered: the served model (the champion, else the rules) is unchanged."
        )
        == 1
    )


def test_train_observes_the_events_up_to_observe_until_and_counts_the_later_ones(
    workspace: Path, tmp_path: Path
) -> None:
    """A config's (or a source mapping's) `observe_until` trains as if the log had been
    exported that day: the later events are counted, and the run logs the data it read."""
    import datetime as dt

    import polars as pl
    import yaml

    from features.settings import load_defaults

    events = pl.read_parquet(workspace / "data" / "events.parquet")
    last = events["timestamp"].max()
    assert isinstance(last, dt.datetime)
    day = last.date() - dt.timedelta(days=10)
    cut = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    later = events.filter(pl.col("timestamp") >= cut).height
    assert later > 0
    settings = _small_models(load_defaults(None))
    settings["training"]["observe_until"] = day
    # ten days fewer of a small simulation: fewer buyers than the shipped minimums
    settings["training"].update(min_train_positives=20, min_eval_positives=5)
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")

    result = _run(tmp_path, "train", "--events", str(workspace / "data"), "--config", str(config))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert (
        f"Observed the events before {day} (observe_until): {later:,} later events were not "
        "trained on." in said
    )
    client = _client(tmp_path)
    (version,) = client.search_model_versions("name = 'funnelcast'")
    params = client.get_run(version.run_id).data.params
    assert params["observe_until"] == day.isoformat()
    assert params["data.events_after_observed"] == str(later)
    assert params["data.events_rows"] == str(events.height - later)
    assert params["data.events_to"] < f"{day:%Y-%m-%d}"

    # --observe-until wins over the config's, as --horizon does; a bad date is named
    earlier = day - dt.timedelta(days=7)
    option = tmp_path / "option"
    option.mkdir()
    common = ("train", "--events", str(workspace / "data"), "--config", str(config))
    result = _run(option, *common, "--observe-until", earlier.isoformat(), "--no-register")
    assert result.returncode == 0, result.stderr
    fewer = events.filter(pl.col("timestamp") >= dt.datetime.combine(earlier, dt.time(), dt.UTC))
    assert f"Observed the events before {earlier} (observe_until): {fewer.height:,} later" in (
        " ".join(result.stdout.split())
    )
    refused = _run(option, *common, "--observe-until", "2026-13-01")
    assert refused.returncode == 2
    assert "--observe-until '2026-13-01' is not a date; give YYYY-MM-DD" in refused.stderr


# `funnelcast` (argv: pause, then the command's arguments) that says "paused at <pause>" on
# stderr where it pauses and waits there until it is stopped: "training" (the training run
# started, nothing logged to it yet) or "registered" (a version registered from the run,
# which has not ended yet)
_PAUSED_COMMAND = """
import sys, time
import mlflow
from training import pipeline

pause, args = sys.argv[1], sys.argv[2:]
real_train, real_register = pipeline.train_models, mlflow.register_model

def pause_here(point):
    if point == pause:
        print(f"paused at {point}", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.01)

def pause_then_train(*args, **kwargs):
    pause_here("training")
    return real_train(*args, **kwargs)

def register_then_pause(*args, **kwargs):
    version = real_register(*args, **kwargs)
    pause_here("registered")
    return version

pipeline.train_models = pause_then_train
mlflow.register_model = register_then_pause
from serving.cli import main

sys.argv = ["funnelcast", *args]
main()
"""


def _interrupted_at(tmp: Path, pause: str, *args: str) -> tuple[int, str]:
    """``funnelcast *args`` run in ``tmp``, interrupted by Ctrl-C (SIGINT) once it has reached
    ``pause`` (``_PAUSED_COMMAND``): its exit status and what it wrote on stderr after."""
    process = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_COMMAND, pause, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
        env=_env(tmp),
    )
    # a command that never reaches its pause fails the test instead of holding it for good
    watchdog = threading.Timer(900, process.kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        before = []
        for line in process.stderr:
            if line.strip() == f"paused at {pause}":
                break
            before.append(line)
        else:
            pytest.fail(f"the command never paused at {pause}:\n" + "".join(before[-30:]))
        process.send_signal(signal.SIGINT)
        _, after = process.communicate(timeout=300)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, after


def test_train_interrupted_after_registering_names_its_killed_run_and_the_version_left(
    workspace: Path, tmp_path: Path
) -> None:
    """Ctrl-C of `train` was silent (exit status 130 alone), though it left a KILLED run and a
    version registered from it that promote refuses. One line says so, on stderr."""
    import yaml

    from features.settings import load_defaults

    config = tmp_path / "small-models.yaml"
    config.write_text(yaml.safe_dump(_small_models(load_defaults(None))), encoding="utf-8")
    status, said = _interrupted_at(
        tmp_path,
        "registered",
        "train",
        "--events",
        str(workspace / "data"),
        "--config",
        str(config),
    )
    assert status == 130, said
    client = _client(tmp_path)
    (version,) = client.search_model_versions("name = 'funnelcast'")
    assert client.get_run(version.run_id).info.status == "KILLED"
    assert said.strip().splitlines() == [
        f"Interrupted: training run {version.run_id} ended KILLED; version {version.version} of "
        "'funnelcast' registered from it is never promoted (promote refuses a version whose "
        "training run did not finish): train again."
    ]
    assert "sim-" not in said  # no contact id


def test_run_interrupted_as_training_starts_says_its_run_ended_killed_with_nothing_registered(
    tmp_path: Path,
) -> None:
    status, said = _interrupted_at(
        tmp_path, "training", "run", "--out", str(tmp_path / "out"), "--contacts", "500"
    )
    assert status == 130, said
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("funnelcast")
    assert experiment is not None
    (stopped,) = client.search_runs([experiment.experiment_id])
    assert stopped.info.status == "KILLED"
    assert client.search_model_versions() == []
    assert said.strip().splitlines() == [
        f"Interrupted: training run {stopped.info.run_id} ended KILLED; no model version was "
        "registered from it."
    ]


@pytest.mark.parametrize(
    ("stop", "status", "said"),
    [(KeyboardInterrupt, 130, "Interrupted"), ("Terminated", 143, "Stopped by SIGTERM")],
)
def test_train_stopped_before_its_run_starts_says_nothing_was_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stop: Any, status: int, said: str
) -> None:
    from typer.testing import CliRunner

    from features.io import Terminated
    from serving import cli

    def stopped(events: Path) -> None:
        raise KeyboardInterrupt if stop is KeyboardInterrupt else Terminated(143)

    monkeypatch.setattr(cli, "_require_events", stopped)
    result = CliRunner().invoke(cli.app, ["train", "--events", str(tmp_path)])
    assert result.exit_code == status
    assert result.stderr.strip().splitlines() == [
        f"{said}: no training run was started; nothing was logged to MLflow or registered."
    ]


def test_a_stop_after_the_training_names_the_version_to_promote_and_an_unread_store_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run` stopped while it promotes: the run finished and its version can be promoted.
    A store that cannot be read then still gives one line, with the run's id."""
    from mlflow.exceptions import MlflowException

    from serving import cli
    from training import tracking

    finished = tracking.RunOutcome(status="FINISHED", versions=(("funnelcast-olist", "4"),))
    monkeypatch.setattr(tracking, "read_run_outcome", lambda run_id: finished)
    assert cli._what_a_stop_left(KeyboardInterrupt(), "abc123") == (
        "Interrupted after training run abc123 finished; version 4 of 'funnelcast-olist' is "
        f"registered from it: `{cli.shell_command('funnelcast')} promote --model-name "
        "funnelcast-olist --version 4` promotes it if it beats the champion."
    )

    def unreadable(run_id: str) -> tracking.RunOutcome:
        raise MlflowException("database is locked")

    monkeypatch.setattr(tracking, "read_run_outcome", unreadable)
    said = cli._what_a_stop_left(KeyboardInterrupt(), "abc123")
    assert said.startswith("Interrupted: training run abc123 was stopped, but the MLflow store")
    assert "(MlflowException: database is locked)" in said
    assert "\n" not in said


def test_sigterm_anywhere_in_a_training_command_says_what_it_left(tmp_path: Path) -> None:
    """SIGTERM outside the training run (before it, or while `run` promotes) takes the path
    of Ctrl-C too: the line, then exit status 143. It was turned into an exception only inside
    the training run, and elsewhere ended the process without a word. In a process of its
    own: a SIGTERM nothing handles ends the process it is sent to."""
    script = """
import os, signal, sys
from serving import cli

def terminated(events):
    os.kill(os.getpid(), signal.SIGTERM)  # the handler raises before kill returns

cli._require_events = terminated
sys.argv = ["funnelcast", "train", "--events", sys.argv[1]]
cli.main()
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=300,
    )
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Stopped by SIGTERM: no training run was started; nothing was logged to MLflow or "
        "registered."
    ]


def test_a_stop_whose_line_cannot_be_written_keeps_its_exit_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stderr that is gone (its reader stopped by the same Ctrl-C) leaves the Ctrl-C as it
    was (exit status 130), not a BrokenPipeError (exit status 1)."""
    from serving import cli

    def broken(*args: Any, **kwargs: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli.err_console, "print", broken)
    with pytest.raises(KeyboardInterrupt), cli._saying_what_a_stop_left():
        raise KeyboardInterrupt


def test_a_stopped_command_reads_its_run_with_little_patience_for_a_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's defaults retry a server that does not answer for minutes, past a stop's grace
    period: the run is read with the registry's short patience, and the environment is as it
    was after; a setting of the user's wins."""
    import os

    from serving import cli
    from training import tracking

    seen: list[dict[str, str | None]] = []

    def reading(run_id: str) -> tracking.RunOutcome:
        seen.append({key: os.environ.get(key) for key in cli._REGISTRY_PATIENCE})
        return tracking.RunOutcome(status="KILLED", versions=())

    monkeypatch.setattr(tracking, "read_run_outcome", reading)
    for key in cli._REGISTRY_PATIENCE:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    said = cli._what_a_stop_left(KeyboardInterrupt(), "abc123")
    assert said.endswith("ended KILLED; no model version was registered from it.")
    assert seen == [{"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


# `funnelcast` (argv: where, the contacts file, then the command's arguments) whose contacts
# file is replaced by a copy, as ingest replaces it, right after the training frame is built
# ("frame") or as the data's fingerprint is taken for the run ("fingerprint"); it says when
# the stage model is fitted
_WRITTEN_MEANWHILE = """
import os, shutil, sys
from training import pipeline, tracking

where, contacts, args = sys.argv[1], sys.argv[2], sys.argv[3:]

def replace_contacts():
    shutil.copyfile(contacts, contacts + ".new")
    os.replace(contacts + ".new", contacts)

def after(real):
    def replaced_after(*args, **kwargs):
        made = real(*args, **kwargs)
        replace_contacts()
        return made
    return replaced_after

if where == "frame":
    pipeline.build_labelled_frame = after(pipeline.build_labelled_frame)
else:
    tracking.data_fingerprint = after(tracking.data_fingerprint)
real_fit = pipeline.LightGBMStageModel.fit

def said_fit(*args, **kwargs):
    print("fitting the stage model", file=sys.stderr, flush=True)
    return real_fit(*args, **kwargs)

pipeline.LightGBMStageModel.fit = said_fit
from serving.cli import main

sys.argv = ["funnelcast", *args]
main()
"""


@pytest.mark.parametrize("where", ["frame", "fingerprint"])
def test_a_write_into_the_folder_while_train_reads_it_registers_nothing(
    workspace: Path, tmp_path: Path, where: str
) -> None:
    """An ingest into the folder while `train` read it trained the models on two exports
    mixed, and the run's data fingerprint (taken after training) described neither. The
    files are watched from the start: a change found once the snapshots are built stops the
    command before the models are fitted, and one found by the fingerprint's read before
    anything is logged or registered."""
    import shutil

    import yaml

    from features.settings import load_defaults

    data = tmp_path / "data"
    data.mkdir()
    for name in ("events.parquet", "contacts.parquet"):
        shutil.copyfile(workspace / "data" / name, data / name)
    config = tmp_path / "small-models.yaml"
    config.write_text(yaml.safe_dump(_small_models(load_defaults(None))), encoding="utf-8")
    contacts = str(data / "contacts.parquet")
    result = _run(
        tmp_path,
        *("train", "--events", str(data), "--config", str(config)),
        argv=(sys.executable, "-c", _WRITTEN_MEANWHILE, where, contacts),
    )
    assert result.returncode == 2, result.stderr
    told = " ".join(result.stderr.split())
    assert f"{contacts} changed while it was read" in told, result.stderr
    assert ("fitting the stage model" in told) is (where == "fingerprint")
    client = _client(tmp_path)
    assert client.search_model_versions("name = 'funnelcast'") == []
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert runs, "the training run was started"
    assert {run.info.status for run in runs} == {"FAILED"}
