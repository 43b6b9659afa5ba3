"""The README's main command, end to end, as a new user runs it (small, so CI stays fast)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from features.vocabulary import STAGES

ROOT = Path(__file__).resolve().parents[2]
FUNNELCAST = str(Path(sys.executable).parent / "funnelcast")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _funnelcast(tmp_path, "run", "--out", str(tmp_path / "run"), *args)


def _funnelcast(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUNNELCAST, *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
        env={
            "COLUMNS": "200",
            "PATH": str(Path(sys.executable).parent),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        },
    )


@pytest.mark.slow
def test_the_main_job_simulates_trains_evaluates_and_promotes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run(tmp_path, "--contacts", "6000", "--days", "120")
    assert result.returncode == 0, result.stderr
    for name in ("events", "contacts", "stage_history"):
        assert (out / "data" / f"{name}.parquet").exists()
    assert "No rows set aside." in result.stdout
    for stage in STAGES:
        assert re.search(rf"^\W*{stage}\b", result.stdout, re.MULTILINE), stage

    # every contact is shown or counted as left out; those left out are exactly the opted-out
    contacts = pl.read_parquet(out / "data" / "contacts.parquet")
    opted_out = contacts.filter(~pl.col("marketing_consent")).height
    assert opted_out > 0
    shown = re.search(r"([\d,]+) consented contacts shown", result.stdout)
    left_out = re.search(r"([\d,]+) without marketing consent left out", result.stdout)
    assert shown is not None
    assert left_out is not None
    assert int(left_out.group(1).replace(",", "")) == opted_out
    assert int(shown.group(1).replace(",", "")) == contacts.height - opted_out

    # trained, evaluated beside the baselines, registered, and put through the gate
    for row in ("stage macro-F1", "purchase AUC-PR", "purchase ECE"):
        assert re.search(rf"^\W*{row}\s.*\d\.\d{{3}}", result.stdout, re.MULTILINE), row
    assert "version 1 of 'funnelcast'" in result.stdout
    decision = re.search(
        r"^(Promoted version 1 to 'champion'|Not promoted: version 1)", result.stdout, re.MULTILINE
    )
    assert decision is not None, result.stdout
    # the simulated data decide the gate's outcome; what the job says must be what the
    # registry holds: version 1 is the champion exactly when the job says it promoted it
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    aliases = (
        MlflowClient(tracking_uri=uri, registry_uri=uri)
        .get_model_version("funnelcast", "1")
        .aliases
    )
    assert ("champion" in aliases) == decision.group(1).startswith("Promoted"), aliases
    # the serve command printed serves what was promoted, or offers the loser only "anyway"
    said = " ".join(result.stdout.split())
    if "champion" in aliases:
        assert "Serve it: export FUNNELCAST_API_KEY=<a long random key>;" in said
        assert re.search(r"funnelcast serve(?! --version)", said)
    else:
        assert "To serve version 1 anyway: export FUNNELCAST_API_KEY=" in said
        assert "funnelcast serve --version 1" in said

    # the weekly scoring job on the same data, as the README shows it: every consented
    # contact the funnel showed is scored, none of the opted-out
    csv = tmp_path / "scores" / "week.csv"
    model = [] if "champion" in aliases else ["--version", "1"]
    scored = _funnelcast(
        tmp_path, "score", "--events", str(out / "data"), "--out", str(csv), *model
    )
    assert scored.returncode == 0, scored.stderr
    scores = pl.read_csv(csv, infer_schema=False)
    assert scores.height == contacts.height - opted_out
    consented = contacts.filter(pl.col("marketing_consent"))["contact_id"].cast(pl.String)
    assert set(scores["contact_id"]) == set(consented)
    assert set(scores["stage"]) <= set(STAGES)
    said = " ".join(scored.stdout.split())
    assert f"{opted_out:,} without marketing consent were not scored" in said


@pytest.mark.slow
def test_the_main_job_on_too_little_history_keeps_the_rules_and_says_why(tmp_path: Path) -> None:
    result = _run(tmp_path, "--contacts", "2000", "--days", "60")
    assert result.returncode == 1, result.stderr  # as `train`: a scheduler can tell
    assert "No model trained:" in result.stdout
    assert (
        " ".join(result.stdout.split()).count(
            "Nothing was registered: the served model (the champion, else the rules) is unchanged."
        )
        == 1
    )
    assert "version 1" not in result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_the_main_job_on_shipped_sources_trains_with_their_settings_under_their_names(
    tmp_path: Path, shared_data_dir: Path
) -> None:
    """`run --source` failed on every shipped real source: Olist and Taobao had too few buyers
    for the 14-day default horizon, CDNOW was refused by the gate because `make demo`'s
    simulated champion "had seen" its 1998 weeks, REES46's one day was an exit-2 error. Each
    mapping now gives the training settings its data needs and its own registered name; data
    too short to train on keeps the rules, exit 1, as too few buyers does."""
    data = ("--data-dir", str(shared_data_dir))
    trained = _run(tmp_path, "--source", "cdnow_sample", *data)
    assert trained.returncode == 0, trained.stderr
    said = " ".join(trained.stdout.split())
    assert "Training settings from the cdnow_sample mapping" in said
    assert "horizon_days 90" in said
    assert "serve --model-name funnelcast-cdnow_sample" in said
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"  # the registry too, whatever tests before set
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    (version,) = client.search_model_versions("name = 'funnelcast-cdnow_sample'")
    params = client.get_run(version.run_id).data.params
    assert (params["horizon_days"], params["snapshot_every_days"]) == ("90", "30")
    assert client.search_model_versions("name = 'funnelcast'") == []

    # Olist's won dates run months past its last lead: observed up to the mapping's
    # observe_until, the test weeks are the last weeks of leads, as in the quality benchmark
    olist = _run(tmp_path, "--source", "olist", *data)
    assert olist.returncode == 0, olist.stderr
    said = " ".join(olist.stdout.split())
    assert "observe_until 2018-07-01" in said
    assert "training observes the events before 2018-07-01 only (observe_until)" in said
    # its won dates are both events and provided labels: each later one is counted
    assert re.search(
        r"Observed the events before 2018-07-01 \(observe_until\): ([1-9][\d,]*) later events "
        r"and \1 later-dated provided labels were not trained on\.",
        said,
    ), said
    test_to = re.search(r"tested on [\d,]+ rows \(\S+\.\.(\d{4}-\d\d-\d\d)\)", said)
    assert test_to is not None, said
    assert test_to.group(1) < "2018-06-01"  # + 30 days: inside what was observed
    (olist_version,) = client.search_model_versions("name = 'funnelcast-olist'")
    assert client.get_run(olist_version.run_id).data.params["observe_until"] == "2018-07-01"

    # Taobao's nine days: registered under its own name; the gate decides, and the printed
    # command serves the champion, or this version only "anyway"
    taobao = _run(tmp_path, "--source", "taobao", *data)
    assert taobao.returncode == 0, taobao.stderr
    said = " ".join(taobao.stdout.split())
    if "champion" in client.get_model_version("funnelcast-taobao", "1").aliases:
        assert "Promoted version 1 to 'champion'" in said
        assert re.search(r"Serve it: .* serve --model-name funnelcast-taobao(?! --version)", said)
    else:
        assert "Not promoted: version 1" in said
        assert re.search(
            r"To serve version 1 anyway: .* serve --model-name funnelcast-taobao --version 1", said
        )

    short = _run(tmp_path, "--source", "rees46", *data)
    assert short.returncode == 1, short.stderr
    said = " ".join(short.stdout.split())
    # one day of events: the span is that day (review: it ended the day after)
    assert "too little data to train: the events span 2019-10-01..2019-10-01," in said
    # a source's training settings are in its mapping too, not only in a --config
    assert "under `training:` in your --config or your source mapping" in said
    assert (
        said.count(
            "Nothing was registered: the served model (the champion, else the rules) is unchanged."
        )
        == 1
    )
    assert "Snapshots that fit the data: none." in said


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_screen = readme.split("\n## ")[0]
    commands = re.findall(r"^(make \w+)", first_screen, re.MULTILINE)
    assert len(commands) == 2, "the README's first screen shows exactly two commands"
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_lines[-1] == commands[1]
