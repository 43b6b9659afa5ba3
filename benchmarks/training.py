"""Benchmark training: one LightGBM fit, and the whole `funnelcast train` by step.

    .venv/bin/python benchmarks/training.py             # a 1M-row fit; train on 1M, 10M events
    .venv/bin/python benchmarks/training.py --sizes 1M  # train on 1M events only
    .venv/bin/python benchmarks/training.py --quick     # a smoke run (100k events)

1. **One LightGBM fit**: a binary model on 1M rows x 60 features of a real training frame
   (simulated contacts, weekly snapshots), 200 trees of 63 leaves, no early stopping; the time
   includes building the LightGBM Dataset.
2. **The whole training without tuning** on the cached simulated event logs of
   ``benchmarks/features.py`` (``benchmarks/data/``; made if missing): features for 12 weekly
   snapshots, labels, both LightGBM models, both baselines, the evaluation, and the MLflow
   logging (a temporary SQLite store), each step timed, with the peak memory.

Each measurement runs in a child process of its own, so its peak memory is its own; a child
above ``--memory-limit`` GiB is stopped and reported as such, not left to swap.
Results are merged into ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on the path, where this file would stand in
    # for the `training` package; the project root takes its place.
    sys.path[:] = [
        str(ROOT) if Path(entry or ".").resolve() == Path(__file__).resolve().parent else entry
        for entry in sys.path
    ]

RESULTS = Path(__file__).parent / "results" / "training.json"
DATA = Path(__file__).parent / "data"
GIB = 1024**3
console = Console()
SIZES = {"100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M", help="event-log sizes to train on")
    parser.add_argument("--quick", action="store_true", help="100k events, a 200k-row fit")
    parser.add_argument("--fit-rows", type=int, default=1_000_000)
    parser.add_argument("--memory-limit", type=float, default=20.0, help="GiB per child")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"JSON to merge into (default {RESULTS}; quick runs write benchmarks/data/"
        "training-quick.json, never over the committed figures)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    from benchmarks.reporting import write_json_atomic

    if args.results is None:
        args.results = DATA / "training-quick.json" if args.quick else RESULTS

    sizes = ["100k"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    fit_rows = 200_000 if args.quick else args.fit_rows
    result: dict[str, Any] = {
        "machine": _machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "fit": {},
        "train": {},
    }
    console.print(
        f"[bold]funnelcast training benchmark[/] on {result['machine']['cpu']} "
        f"({result['machine']['cores']} cores, {result['machine']['memory_gib']} GiB)"
    )
    with console.status(f"one LightGBM fit: {fit_rows:,} rows x 60 features, 200 trees"):
        result["fit"] = _run_child({"task": "fit", "rows": fit_rows}, args.memory_limit)
    _print_fit(result["fit"])
    for label in sizes:
        with console.status(
            f"funnelcast train on {label} events (features for 12 snapshots, "
            "both models, baselines, evaluation, MLflow)"
        ):
            result["train"][label] = _run_child(
                {"task": "train", "events": _events_path(label), "quick": args.quick},
                args.memory_limit,
            )
        _print_train(label, result["train"][label])
    _print_targets(result)
    previous = json.loads(args.results.read_text()) if args.results.exists() else {}
    merged = {**previous, **result, "train": {**previous.get("train", {}), **result["train"]}}
    write_json_atomic(merged, args.results)
    console.print(f"Figures written to {args.results}.")
    return 0


def _events_path(label: str) -> str:
    """The cached event log of benchmarks/features.py for a size, made when missing."""
    found = sorted(DATA.glob(f"events-{label}-*.parquet"))
    if found:
        return str(found[0])
    console.print(f"no cached {label} log under {DATA}; making it with benchmarks/features.py")
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "features.py"),
            "--sizes",
            label,
            "--only",
            "funnelcast",
            "--out",  # the log is what is wanted here, not figures over the committed ones
            str(DATA / f"features-{label}-for-training.json"),
        ],
        check=True,
    )
    return str(sorted(DATA.glob(f"events-{label}-*.parquet"))[0])


def _run_child(task: dict[str, Any], limit_gib: float) -> dict[str, Any]:
    """Run a task in a child process, sampling its memory; stop it above the limit."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    task = {**task, "out": str(out)}
    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(task)])
    peak, stopped = 0.0, False
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss / GIB
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        if rss > limit_gib:
            process.kill()
            stopped = True
            break
        time.sleep(0.2)
    process.wait()
    if stopped:
        return {"error": f"stopped above {limit_gib:.0f} GiB of memory", "peak_rss_gib": peak}
    if process.returncode != 0 or not out.stat().st_size:
        return {"error": f"child failed with exit code {process.returncode}"}
    measured = json.loads(out.read_text())
    out.unlink()
    measured["peak_rss_gib"] = round(max(peak, measured.get("peak_rss_gib", 0.0)), 2)
    return dict(measured)


def _child(task: dict[str, Any]) -> int:
    measured = _child_fit(task) if task["task"] == "fit" else _child_train(task)
    Path(task["out"]).write_text(json.dumps(measured))
    return 0


def _child_fit(task: dict[str, Any]) -> dict[str, Any]:
    import lightgbm as lgb
    import numpy as np

    from features.simulator import load_simulator_settings, simulate
    from features.snapshots import build_training_frame
    from features.spec import load_feature_spec
    from training.frame import model_matrix

    contacts = max(task["rows"] // 12, 1000)
    sim = simulate(
        load_simulator_settings(), contacts=contacts, days=120, seed=5, start=dt.date(2026, 1, 1)
    )
    dates = [dt.datetime(2026, 2, 6, tzinfo=dt.UTC) + dt.timedelta(days=7 * i) for i in range(12)]
    frame = build_training_frame(
        sim.events, sim.contacts, as_of_dates=dates, spec=load_feature_spec()
    )
    numeric = [c for c, t in frame.schema.items() if t.is_numeric()][:60]
    X = model_matrix(frame.head(task["rows"]), numeric)
    y = (np.random.default_rng(0).random(len(X)) < 0.05).astype(int)
    params = {
        "objective": "binary",
        "num_leaves": 63,
        "learning_rate": 0.05,
        "verbosity": -1,
        "seed": 0,
    }
    started = time.perf_counter()
    dataset = lgb.Dataset(X, label=y)
    dataset.construct()
    built = time.perf_counter() - started
    lgb.train(params, dataset, num_boost_round=200)
    total = time.perf_counter() - started
    return {
        "rows": len(X),
        "features": X.shape[1],
        "trees": 200,
        "leaves": 63,
        "dataset_s": round(built, 2),
        "total_s": round(total, 2),
    }


def _child_train(task: dict[str, Any]) -> dict[str, Any]:
    import mlflow
    import polars as pl

    from features.settings import load_rules_settings
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import train_models
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, data_fingerprint, log_training, training_run

    peak = [0.0]
    threading.Thread(target=_watch_memory, args=(peak,), daemon=True).start()
    events = pl.read_parquet(task["events"])
    spec, rules, settings = load_feature_spec(), load_rules_settings(), load_training_settings()
    if task.get("quick"):  # the smoke run's small log has fewer buyers than the minimums
        settings = settings.model_copy(
            update={"min_train_positives": 1, "min_eval_positives": 1, "min_stage_rows": 1}
        )
    started = time.perf_counter()
    result = train_models(
        events, None, spec=spec, rules=rules, settings=settings, assume_consent=True
    )
    with tempfile.TemporaryDirectory() as store:
        configure_tracking(f"sqlite:///{store}/mlflow.db")
        clock = time.perf_counter()
        with training_run("benchmark"):
            log_training(
                result,
                spec=spec,
                spec_text=shipped_spec_text(),
                rules=rules,
                settings=settings,
                fingerprint=data_fingerprint(events),
            )
        logging_s = time.perf_counter() - clock
        mlflow.set_tracking_uri(None)
    total = time.perf_counter() - started
    steps = {
        **{k: round(v, 2) for k, v in result.timings.items()},
        "mlflow_logging": round(logging_s, 2),
    }
    return {
        "events": events.height,
        "train_rows": result.data_summary["train_rows"],
        "test_rows": result.data_summary["test_rows"],
        "snapshots": settings.snapshots,
        "steps_s": steps,
        "total_s": round(total, 2),
        "peak_rss_gib": round(peak[0], 2),
        "stage_macro_f1": result.metrics["stage"]["lightgbm"]["macro_f1"],
        "rules_macro_f1": result.metrics["stage"]["rules"]["macro_f1"],
        "propensity": {
            model: {key: result.metrics["propensity"][model][key] for key in ("auc_roc", "auc_pr")}
            for model in ("lightgbm", "rfm_logistic")
        },
        "propensity_lightgbm_weight": result.propensity_model.lightgbm_weight_,
    }


def _watch_memory(peak: list[float]) -> None:
    me = psutil.Process()
    while True:
        peak[0] = max(peak[0], me.memory_info().rss / GIB)
        time.sleep(0.2)


def _print_fit(fit: dict[str, Any]) -> None:
    if "error" in fit:
        console.print(f"one LightGBM fit: [red]{fit['error']}[/]")
        return
    console.print(
        f"One LightGBM fit: {fit['rows']:,} rows x {fit['features']} features, "
        f"{fit['trees']} trees of {fit['leaves']} leaves: {fit['total_s']:.1f} s "
        f"(Dataset build {fit['dataset_s']:.1f} s), peak {fit['peak_rss_gib']:.1f} GiB."
    )


def _print_train(label: str, entry: dict[str, Any]) -> None:
    if "error" in entry:
        console.print(f"train on {label} events: [red]{entry['error']}[/]")
        return
    table = Table(f"train on {label} events", "seconds", "share")
    for step, seconds in entry["steps_s"].items():
        table.add_row(step.replace("_", " "), f"{seconds:.1f}", f"{seconds / entry['total_s']:.0%}")
    table.add_row("[bold]total[/]", f"[bold]{entry['total_s']:.1f}[/]", "")
    console.print(table)
    console.print(
        f"{entry['events']:,} events, {entry['train_rows']:,} training rows, "
        f"{entry['test_rows']:,} test rows; peak {entry['peak_rss_gib']:.1f} GiB."
    )
    if "propensity" in entry:  # older result files hold the stage figures only
        ours, rfm = entry["propensity"]["lightgbm"], entry["propensity"]["rfm_logistic"]
        console.print(
            f"Test weeks: stage macro-F1 {entry['stage_macro_f1']:.3f} (rules "
            f"{entry['rules_macro_f1']:.3f}); purchase AUC-ROC {ours['auc_roc']:.3f} (RFM "
            f"{rfm['auc_roc']:.3f}), AUC-PR {ours['auc_pr']:.4f} (RFM {rfm['auc_pr']:.4f}); "
            f"LightGBM's weight in the propensity blend {entry['propensity_lightgbm_weight']:.1f}."
        )


def _print_targets(result: dict[str, Any]) -> None:
    ten = result["train"].get("10M")
    if ten is None:
        return
    if "error" in ten:
        console.print(f"MISS  train on 10M events under 3 minutes: {ten['error']}")
        return
    verdict = "PASS" if ten["total_s"] <= 180 else "MISS"
    console.print(f"{verdict}  train on 10M events under 3 minutes: {ten['total_s']:.0f} s")


def _machine() -> dict[str, Any]:
    from benchmarks.reporting import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    sys.exit(main())
