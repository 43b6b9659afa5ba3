"""Benchmark the weekly scoring job (`funnelcast score`): how long scoring every contact takes,
and its peak memory, with and without the reasons.

    .venv/bin/python benchmarks/scoring.py                  # 10M events, ~1M contacts
    .venv/bin/python benchmarks/scoring.py --sizes 1M,10M
    .venv/bin/python benchmarks/scoring.py --quick          # a smoke run, under a minute

A model is trained on 6,000 simulated contacts into a temporary MLflow store and made champion
(the contacts scored do not need to be the ones it learned from). The contacts are the feature
benchmark's simulated event logs (``benchmarks/features.py``'s data sets, cached under
``benchmarks/data/`` and made when missing), every contact taken as consented (the logs have no
contacts table). Each variant runs in a fresh process, which loads the registered model and
then times what `funnelcast score` does after loading it: the features (the Polars engine, the
model's spec), the scoring in chunks, and writing the Parquet file; its peak memory is the
process's. Prints a table and merges the figures into ``benchmarks/results/scoring.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # as a script, Python puts benchmarks/ first on the path, where features.py would stand in
    # for the `features` package; the project root takes its place
    sys.path[:] = [
        str(ROOT) if Path(entry or ".").resolve() == Path(__file__).resolve().parent else entry
        for entry in sys.path
    ]

RESULTS = Path(__file__).parent / "results" / "scoring.json"
GIB = 1024**3
VARIANTS = ("reasons", "no_reasons")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M", help="event counts, e.g. 1M,10M")
    parser.add_argument("--quick", action="store_true", help="3,000 simulated contacts")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant")
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    out = args.out or (
        Path(__file__).parent / "data" / "scoring-quick.json" if args.quick else RESULTS
    )
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="funnelcast-scoring-") as tmp:
        folder = Path(tmp)
        store = f"sqlite:///{folder}/mlruns/mlflow.db"
        console.print("training a model on 6,000 simulated contacts (temporary store)")
        quick_events = folder / "events.parquet"
        _run_child(
            {"task": "train", "store": store, "small": args.quick}
            | ({"quick_events": str(quick_events)} if args.quick else {})
        )
        datasets = _datasets(args, quick_events)
        sizes: dict[str, Any] = {}
        for label, dataset in datasets.items():
            entry: dict[str, Any] = {"events": dataset["events"], "variants": {}}
            for variant in VARIANTS:
                runs = [
                    _run_child(
                        {
                            "task": "score",
                            "store": store,
                            "path": dataset["path"],
                            "as_of": dataset["as_of"],
                            "reasons": variant == "reasons",
                            "out": str(folder / f"scores-{label}-{variant}.parquet"),
                        }
                    )
                    for _ in range(args.repeat)
                ]
                best = min(runs, key=lambda r: r["seconds"])
                best["peak_rss_gib"] = max(r["peak_rss_gib"] for r in runs)
                best["runs_seconds"] = [r["seconds"] for r in runs]
                entry["variants"][variant] = best
                console.print(
                    f"  {label} {variant}: {best['contacts']:,} contacts in "
                    f"{best['seconds']:.2f} s ({best['contacts_per_s']:,.0f}/s), "
                    f"peak {best['peak_rss_gib']:.2f} GiB"
                )
            sizes[label] = entry
    result = {
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        "commit": _commit(),
        "command": " ".join(["python", "benchmarks/scoring.py", *(argv or sys.argv[1:])]),
        "sizes": sizes,
    }
    _print(result)
    _merge(out, result, quick=args.quick)
    console.print(f"wrote {out}")
    return 0


def _datasets(args: argparse.Namespace, quick_events: Path) -> dict[str, dict[str, Any]]:
    """The event logs to score: the feature benchmark's (made when missing), or for --quick
    the small simulation the training task wrote."""
    if args.quick:
        meta = json.loads(quick_events.with_suffix(".json").read_text(encoding="utf-8"))
        return {"quick": meta | {"path": str(quick_events)}}
    from benchmarks import features as bench

    options = argparse.Namespace(
        contacts=1_000_000, days=180, seed=7, data_dir=Path(__file__).parent / "data"
    )
    as_of = dt.datetime.combine(bench.START + dt.timedelta(days=180), dt.time(), dt.UTC)
    chosen = {}
    for text in args.sizes.split(","):
        label, events = bench._parse_size(text.strip())
        dataset = bench._prepare(events, label, options)
        chosen[label] = dataset | {"as_of": as_of.isoformat()}
    return chosen


def _run_child(task: dict[str, Any]) -> dict[str, Any]:
    """One task in a fresh interpreter; its result comes back in a file."""
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)]
        done = subprocess.run(
            command, cwd=ROOT, env=os.environ | {"FUNNELCAST_BENCH_OUT": str(result)}, check=False
        )
        if done.returncode != 0 or not result.exists():
            raise SystemExit(f"the {task['task']} task failed (exit code {done.returncode})")
        outcome: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return outcome


def _child(task: dict[str, Any]) -> int:
    handlers = {"train": _child_train, "score": _child_score}
    outcome = handlers[task["task"]](task)
    Path(os.environ["FUNNELCAST_BENCH_OUT"]).write_text(json.dumps(outcome), encoding="utf-8")
    return 0


def _child_train(task: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.reporting import smoke_run_models
    from features.settings import load_rules_settings
    from features.simulator import load_simulator_settings, simulate
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import train_models
    from training.registry import promote
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, data_fingerprint, log_training, training_run

    configure_tracking(task["store"])
    start = dt.date(2024, 1, 1)
    sim = simulate(load_simulator_settings(), contacts=6000, days=120, seed=11, start=start)
    spec, rules = load_feature_spec(), load_rules_settings()
    settings = load_training_settings()
    if task["small"]:
        settings = smoke_run_models(settings)
    result = train_models(sim.events, sim.contacts, spec=spec, rules=rules, settings=settings)
    with training_run("scoring benchmark"):
        version = log_training(
            result,
            spec=spec,
            spec_text=shipped_spec_text(),
            rules=rules,
            settings=settings,
            fingerprint=data_fingerprint(sim.events, sim.contacts),
        )
    promote("funnelcast", version=version, force=True)
    if "quick_events" in task:  # a smoke run scores other simulated contacts
        import pyarrow.parquet as pq

        other = simulate(load_simulator_settings(), contacts=3000, days=120, seed=5, start=start)
        path = Path(task["quick_events"])
        pq.write_table(other.events, path)
        as_of = dt.datetime.combine(start + dt.timedelta(days=120), dt.time(), dt.UTC)
        meta = {"events": other.events.num_rows, "as_of": as_of.isoformat()}
        path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    return {"version": str(version)}


def _child_score(task: dict[str, Any]) -> dict[str, Any]:
    """What `funnelcast score` does once the model is loaded, each step timed."""
    from features.engine import build_contact_features
    from features.io import write_parquet_atomic
    from serving.runtime import ServiceSettings, registered_model
    from serving.scoring import score_features

    model, info = registered_model(ServiceSettings(tracking_uri=task["store"]))
    as_of = dt.datetime.fromisoformat(task["as_of"])
    started = time.perf_counter()
    features = build_contact_features(
        Path(task["path"]), None, as_of=as_of, spec=model.spec, rules=model.rules
    )
    built = time.perf_counter()
    scores = score_features(
        model,
        features,
        None,
        events=Path(task["path"]),
        as_of=as_of,
        model_name=str(info.model_name),
        model_version=str(info.model_version),
        assume_consent=True,
        reasons=task["reasons"],
    )
    scored = time.perf_counter()
    write_parquet_atomic(scores.table.to_arrow(), Path(task["out"]))
    written = time.perf_counter()
    contacts = scores.table.height
    seconds = written - started
    return {
        "contacts": contacts,
        "seconds": round(seconds, 3),
        "features_s": round(built - started, 3),
        "scoring_s": round(scored - built, 3),
        "writing_s": round(written - scored, 3),
        "contacts_per_s": round(contacts / seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "stages": {stage: int(n) for stage, n in scores.table.group_by("stage").len().iter_rows()},
    }


def _print(result: dict[str, Any]) -> None:
    table = Table(title=f"funnelcast score, {result['date_utc']} ({result['machine']})")
    for name in ("events", "contacts", "reasons", "total s", "features s", "scoring s"):
        table.add_column(name, justify="right")
    for name in ("writing s", "contacts/s", "peak GiB"):
        table.add_column(name, justify="right")
    for label, entry in result["sizes"].items():
        for variant, run in entry["variants"].items():
            table.add_row(
                label,
                f"{run['contacts']:,}",
                "yes" if variant == "reasons" else "no",
                f"{run['seconds']:.2f}",
                f"{run['features_s']:.2f}",
                f"{run['scoring_s']:.2f}",
                f"{run['writing_s']:.2f}",
                f"{run['contacts_per_s']:,.0f}",
                f"{run['peak_rss_gib']:.2f}",
            )
    console.print(table)


def _merge(path: Path, result: dict[str, Any], *, quick: bool) -> None:
    """The run's figures by size into the results file, which keeps the sizes run apart."""
    merged: dict[str, Any] = {}
    if path.exists() and not quick:
        merged = json.loads(path.read_text(encoding="utf-8"))
    merged.setdefault("sizes", {}).update(
        {
            label: entry | {"run": {k: v for k, v in result.items() if k != "sizes"}}
            for label, entry in result["sizes"].items()
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{os.cpu_count()} cores, {cpu}, {memory:.1f} GiB, Python {platform.python_version()}"


def _commit() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
