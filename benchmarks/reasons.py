"""Benchmark the two ways of computing a stage prediction's reasons: their cost, and how often
they name the same features.

    .venv/bin/python benchmarks/reasons.py          # the serving benchmark's model: 6,000 contacts
    .venv/bin/python benchmarks/reasons.py --quick  # a smoke run: 200 one-contact calls

A model is trained on simulated contacts as ``benchmarks/serving.py`` trains its own (same
simulation, seed and settings), and every contact's features as of the simulation's end are
scored. For each method (``path``: each split's change of expected score, credited to its
feature, read from a table per leaf; ``treeshap``: LightGBM's exact ``pred_contrib``):

* the time of the contributions alone and of the whole scoring with the three phrased reasons
  (``FunnelcastModel.score_matrix``), for one contact at a time (median and p99 over
  ``--singles`` contacts) and for 1,000 contacts in one call;
* how well the contributions add up to the stage's raw score (both must, to rounding).

Then the agreement of their reasons, over every contact and over the contacts not predicted
dormant (whose reasons a CRM user reads): the same first reason; TreeSHAP's first reason among
the path's three; the share of the three reasons in common (as phrases).

Figures are printed and merged into ``benchmarks/results/reasons.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on the path, where benchmarks/features.py
    # would stand in for the `features` package; the project root takes its place.
    sys.path[:] = [
        str(ROOT) if Path(entry or ".").resolve() == Path(__file__).resolve().parent else entry
        for entry in sys.path
    ]

from benchmarks.reporting import code_version, machine, write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "reasons.json"
METHODS = ("path", "treeshap")
BATCH = 1_000
console = Console(width=None if sys.stdout.isatty() else 120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="200 one-contact calls instead of 2,000"
    )
    parser.add_argument("--contacts", type=int, default=None, help="simulated contacts")
    parser.add_argument("--singles", type=int, default=None, help="one-contact calls timed")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"JSON to write (default {RESULTS}; quick runs write benchmarks/data/"
        "reasons-quick.json, never over the committed figures)",
    )
    args = parser.parse_args(argv)
    if args.contacts is not None and args.contacts < 1:
        parser.error("--contacts must be at least 1")
    if args.results is None:
        args.results = (
            Path(__file__).parent / "data" / "reasons-quick.json" if args.quick else RESULTS
        )
    contacts = args.contacts or 6_000
    singles = args.singles or (200 if args.quick else 2_000)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    console.print(f"training on {contacts:,} simulated contacts ...")
    model, matrix, values = _train(contacts)
    stage_model = model.stage_model
    codes = stage_model.decide(stage_model.predict_proba(matrix))
    stage_model.warm("path")
    console.print(f"scoring {len(matrix):,} contacts' features ({matrix.shape[1]} columns)")
    result: dict[str, Any] = {
        "benchmark": "reasons",
        "date_utc": started,
        "code": code_version(["training", "features", "benchmarks"]),
        "machine": machine(["lightgbm", "numpy"]),
        "model": {
            "contacts": contacts,
            "scored_contacts": len(matrix),
            "features": int(matrix.shape[1]),
            "trees_per_stage": len(stage_model._path_table(0).offsets),
            "num_leaves": int(stage_model.booster_.params.get("num_leaves", 0) or 0),
        },
        "methods": {},
    }
    raw = np.array(
        [
            stage_model._class_booster(int(k)).predict(matrix[i : i + 1])[0]
            for i, k in enumerate(codes)
        ]
    )
    contributions = {}
    phrases = {}
    for method in METHODS:
        model.reasons_method = method
        contributions[method] = stage_model.class_contributions(matrix, codes, method=method)
        phrases[method] = model.score_matrix(matrix, values)["reasons"]
        result["methods"][method] = {
            **_timings(model, matrix, codes, values, method, singles),
            "max_sum_error": float(np.abs(contributions[method].sum(axis=1) - raw).max()),
        }
    active = codes != 0  # the first stage is dormant
    result["agreement"] = {
        "all": _agreement(contributions, phrases, np.ones(len(codes), dtype=bool)),
        "not_dormant": _agreement(contributions, phrases, active),
    }
    _print(result)
    write_json_atomic(result, args.results)
    console.print(f"figures written to {args.results}")
    return 0


def _train(contacts: int) -> tuple[Any, np.ndarray, list[dict[str, Any]]]:
    """A model as the serving benchmark trains it, and the encoded features of every contact
    as of the simulation's end (with their values, which the phrases read)."""
    from features.engine import build_contact_features
    from features.settings import load_rules_settings
    from features.simulator import load_simulator_settings, simulate
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import train_models
    from training.settings import load_training_settings
    from training.tracking import served_model

    start, days = dt.date(2026, 1, 1), 120
    sim = simulate(load_simulator_settings(), contacts=contacts, days=days, seed=11, start=start)
    spec, rules, settings = load_feature_spec(), load_rules_settings(), load_training_settings()
    trained = train_models(sim.events, sim.contacts, spec=spec, rules=rules, settings=settings)
    model = served_model(trained, spec_text=shipped_spec_text(), rules=rules, settings=settings)
    as_of = dt.datetime.combine(start + dt.timedelta(days=days), dt.time(), dt.UTC)
    frame = build_contact_features(sim.events, sim.contacts, as_of=as_of, spec=spec)
    values = frame.select(model.feature_names).to_dicts()
    return model, model.encode_frame(frame), values


def _timings(
    model: Any,
    matrix: np.ndarray,
    codes: np.ndarray,
    values: list[dict[str, Any]],
    method: str,
    singles: int,
) -> dict[str, Any]:
    stage_model = model.stage_model
    picks = np.random.default_rng(0).choice(len(matrix), size=min(singles, len(matrix)))
    alone, scored = [], []
    for i in picks:
        row, code, value = matrix[i : i + 1], codes[i : i + 1], values[i : i + 1]
        began = time.perf_counter()
        stage_model.class_contributions(row, code, method=method)
        alone.append(time.perf_counter() - began)
        began = time.perf_counter()
        model.score_matrix(row, value)
        scored.append(time.perf_counter() - began)
    batch = slice(0, min(BATCH, len(matrix)))
    batch_alone = min(
        _timed(lambda: stage_model.class_contributions(matrix[batch], codes[batch], method=method))
        for _ in range(3)
    )
    batch_scored = min(
        _timed(lambda: model.score_matrix(matrix[batch], values[batch])) for _ in range(3)
    )
    without = min(_timed(lambda: model.score_matrix(matrix[batch], None)) for _ in range(3))
    rows = batch.stop
    return {
        "one_contact_ms": {
            "contributions_median": _ms(np.median(alone)),
            "contributions_p99": _ms(np.quantile(alone, 0.99)),
            "scoring_with_reasons_median": _ms(np.median(scored)),
            "scoring_with_reasons_p99": _ms(np.quantile(scored, 0.99)),
        },
        f"batch_{rows}_ms": {
            "contributions": _ms(batch_alone),
            "scoring_with_reasons": _ms(batch_scored),
            "scoring_without_reasons": _ms(without),
        },
    }


def _timed(call: Any) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000, 4)


def _agreement(
    contributions: dict[str, np.ndarray], phrases: dict[str, list[list[str]]], rows: np.ndarray
) -> dict[str, Any]:
    path, exact = contributions["path"][rows, :-1], contributions["treeshap"][rows, :-1]
    path_top = np.argsort(-path, axis=1, kind="stable")[:, :3]
    exact_first = np.argmax(exact, axis=1)
    chosen = np.flatnonzero(rows)
    common = [
        len(set(phrases["path"][i]) & set(phrases["treeshap"][i]))
        / max(len(phrases["path"][i]), len(phrases["treeshap"][i]), 1)
        for i in chosen
    ]
    return {
        "contacts": int(rows.sum()),
        "same_first_reason": round(float(np.mean(path_top[:, 0] == exact_first)), 4),
        "treeshap_first_among_path_three": round(
            float(np.mean((path_top == exact_first[:, None]).any(axis=1))), 4
        ),
        "reasons_in_common": round(float(np.mean(common)), 4),
    }


def _print(result: dict[str, Any]) -> None:
    info = result["model"]
    console.print(
        f"{info['scored_contacts']:,} contacts, {info['features']} features, "
        f"{info['trees_per_stage']} trees per stage; {result['machine']['cpu_model']}, "
        f"{result['machine']['cpu_count']} cores, {result['date_utc']}"
    )
    table = Table(title="cost of the reasons (ms)")
    table.add_column("method")
    for heading in (
        "contributions, 1 contact (p50)",
        "scoring with reasons, 1 contact (p50 / p99)",
        "contributions, 1,000",
        "scoring 1,000 with / without reasons",
        "max |sum - score|",
    ):
        table.add_column(heading, justify="right")
    for method, figures in result["methods"].items():
        one = figures["one_contact_ms"]
        many = next(v for k, v in figures.items() if k.startswith("batch_"))
        table.add_row(
            method,
            f"{one['contributions_median']:.3f}",
            f"{one['scoring_with_reasons_median']:.3f} / {one['scoring_with_reasons_p99']:.3f}",
            f"{many['contributions']:.1f}",
            f"{many['scoring_with_reasons']:.1f} / {many['scoring_without_reasons']:.1f}",
            f"{figures['max_sum_error']:.1e}",
        )
    console.print(table)
    agreement = Table(title="path vs TreeSHAP: the same reasons?")
    agreement.add_column("contacts")
    for heading in ("n", "same first", "TreeSHAP's first in path's 3", "reasons in common"):
        agreement.add_column(heading, justify="right")
    for name, figures in result["agreement"].items():
        agreement.add_row(
            name.replace("_", " "),
            f"{figures['contacts']:,}",
            f"{figures['same_first_reason']:.1%}",
            f"{figures['treeshap_first_among_path_three']:.1%}",
            f"{figures['reasons_in_common']:.1%}",
        )
    console.print(agreement)


if __name__ == "__main__":
    raise SystemExit(main())
