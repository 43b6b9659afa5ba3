"""The command line as a user meets it: help for every command, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUNNELCAST = str(Path(sys.executable).parent / "funnelcast")
COMMANDS = ["run", "simulate", "ingest", "validate", "funnel", "sources"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUNNELCAST, *args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = _run(command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    assert len(result.stdout.splitlines()) > 4


def test_the_top_level_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_a_missing_folder_is_a_one_line_error_with_exit_code_2(tmp_path: Path) -> None:
    result = _run("funnel", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "events.parquet does not exist" in lines[0]


def test_a_bad_date_is_a_one_line_error(tmp_path: Path) -> None:
    result = _run("funnel", "--data", str(tmp_path), "--as-of", "last tuesday")
    assert result.returncode == 2
    assert "YYYY-MM-DD" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_option_out_of_range_is_refused_before_any_work(tmp_path: Path) -> None:
    result = _run("simulate", "--out", str(tmp_path), "--contacts", "0")
    assert result.returncode == 2
    assert "contacts" in result.stderr
    assert list(tmp_path.iterdir()) == []
