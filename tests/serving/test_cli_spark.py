"""``funnelcast features --engine spark`` writes the same feature table as the Polars engine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from features.simulator import load_simulator_settings, simulate, write_simulation
from serving.cli import app

pytestmark = pytest.mark.slow


def test_features_on_spark_equal_features_on_polars(spark_installed: None, tmp_path: Path) -> None:
    data = tmp_path / "data"
    sim = simulate(
        load_simulator_settings(), contacts=200, days=40, seed=3, start=dt.date(2024, 1, 1)
    )
    write_simulation(sim, data)
    runner = CliRunner()
    outputs = {}
    for engine in ("polars", "spark"):
        out = tmp_path / f"features-{engine}.parquet"
        args = ["features", "--events", str(data), "--as-of", "2024-02-01", "--out", str(out)]
        result = runner.invoke(app, [*args, "--engine", engine])
        assert result.exit_code == 0, result.output
        assert "without marketing consent left out" in result.output
        outputs[engine] = pl.read_parquet(out)
    assert "segment" in outputs["spark"].columns
    assert_frame_equal(outputs["spark"], outputs["polars"], rel_tol=1e-12, abs_tol=0.0)
