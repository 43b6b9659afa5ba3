"""The reasons benchmark runs end to end as a script (``--quick``): it trains a model, scores
every contact with both methods, and writes their costs and agreement. Timings are printed by
the script, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reasons.py"


@pytest.mark.slow
def test_quick_run_measures_both_methods_and_their_agreement(tmp_path: Path) -> None:
    out = tmp_path / "reasons.json"
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--quick", "--singles", "20"),
            *("--contacts", "4000", "--results", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["benchmark"] == "reasons"
    assert result["model"]["scored_contacts"] > 0
    assert set(result["methods"]) == {"path", "treeshap"}
    for method, figures in result["methods"].items():
        one = figures["one_contact_ms"]
        assert 0 < one["contributions_median"] <= one["contributions_p99"], method
        assert figures["batch_1000_ms"]["scoring_with_reasons"] > 0, method
        # both share the stage's raw score among the features, to rounding
        assert figures["max_sum_error"] < 1e-6, method
    for rows, figures in result["agreement"].items():
        assert 0 < figures["contacts"] <= result["model"]["scored_contacts"], rows
        for key in ("same_first_reason", "treeshap_first_among_path_three", "reasons_in_common"):
            assert 0 <= figures[key] <= 1, (rows, key)
        # the first reason among three is at least as likely as it being the first
        assert figures["treeshap_first_among_path_three"] >= figures["same_first_reason"], rows
    assert "path vs TreeSHAP" in done.stdout
