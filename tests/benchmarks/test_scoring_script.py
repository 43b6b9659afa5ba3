"""The scoring benchmark runs end to end as a script (``--quick``): it trains a model in a
temporary store, scores a simulated log with and without reasons in fresh processes, and
writes figures that add up. Timings are printed by the script, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scoring.py"

pytestmark = pytest.mark.slow


def test_the_quick_run_scores_every_contact_both_ways_and_writes_its_figures(
    tmp_path: Path,
) -> None:
    out = tmp_path / "scoring.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    (entry,) = result["sizes"].values()
    assert entry["run"]["machine"]
    assert entry["run"]["date_utc"]
    variants = entry["variants"]
    assert set(variants) == {"reasons", "no_reasons"}
    counts = {v["contacts"] for v in variants.values()}
    assert len(counts) == 1  # the same contacts, with reasons or without
    (contacts,) = counts
    assert contacts > 1000
    for run in variants.values():
        assert sum(run["stages"].values()) == contacts
        parts = run["features_s"] + run["scoring_s"] + run["writing_s"]
        assert run["seconds"] == pytest.approx(parts, abs=0.01)
        assert run["contacts_per_s"] == pytest.approx(contacts / run["seconds"], rel=0.01)
        assert run["peak_rss_gib"] > 0
    assert "funnelcast score" in done.stdout  # the table was printed
