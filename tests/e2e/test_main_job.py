"""The README's main command, end to end, as a new user runs it (small, so CI stays fast)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from features.vocabulary import STAGES

ROOT = Path(__file__).resolve().parents[2]
FUNNELCAST = str(Path(sys.executable).parent / "funnelcast")


@pytest.mark.slow
def test_the_main_job_simulates_validates_and_shows_the_funnel(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [FUNNELCAST, "run", "--out", str(out), "--contacts", "3000", "--days", "60"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={"COLUMNS": "200", "PATH": str(Path(sys.executable).parent)},
    )
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
