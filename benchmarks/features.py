"""Benchmark the feature pipeline: the funnelcast engine against hand-written Polars and DuckDB
SQL (the yardsticks in ``benchmarks/yardsticks/``), idiomatic pandas and the Spark engine, plus
the training frame (12 weekly snapshots) and the online path.

    .venv/bin/python benchmarks/features.py                 # 1M, 10M and 30M events
    .venv/bin/python benchmarks/features.py --quick         # a one-minute smoke run
    .venv/bin/python benchmarks/features.py --sizes 10M --only funnelcast,polars

Every implementation computes the shipped spec's 144 event features (no rules stage, no contacts
table) as of the day after the last simulated day, from Parquet, in a fresh process of its own,
so its peak memory is its own; the time is the feature build only (Parquet in, features in
memory), the faster of ``--repeat`` runs. The events are simulated once and cached under
``benchmarks/data/``: 1M and 10M events are uniform samples of one 1M-contact x 180-day
simulation (~40M events), 30M events are three such simulations (different seeds, distinct
contact ids) of 10M each, so ~10 events per contact throughout.

Prints a table per size and PASS/MISS for each target of the issue, and merges the figures into
``benchmarks/results/features.json`` (by size and implementation, so sizes can be run apart).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from features.spec import FeatureSpec

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on the path, where this file would stand in
    # for the `features` package; the project root takes its place. (Everything that imports
    # `features` does so inside a function, after this line.)
    sys.path[:] = [
        str(ROOT) if Path(entry or ".").resolve() == Path(__file__).resolve().parent else entry
        for entry in sys.path
    ]

RESULTS = Path(__file__).parent / "results" / "features.json"
DATA = Path(__file__).parent / "data"
GIB = 1024**3
START = dt.date(2024, 1, 1)
IMPLEMENTATIONS = ("funnelcast", "polars", "duckdb", "pandas", "spark")
HAND_WRITTEN = ("polars", "duckdb")
MEASUREMENTS = (*IMPLEMENTATIONS, "training", "online")
YARDSTICKS = {
    "polars": "benchmarks.yardsticks.polars_handwritten",
    "duckdb": "benchmarks.yardsticks.duckdb_sql",
    "pandas": "benchmarks.yardsticks.pandas_idiomatic",
}
EVENTS_PER_CONTACT = 10  # one simulation of N contacts gives at most 10 N events to a data set
ROW_GROUP_ROWS = 1 << 20
SNAPSHOTS = 12  # weekly, for the training frame
ONLINE_EVENTS = 200
ONLINE_CONTACTS = 200
ONLINE_CALLS = 2_000
ONLINE_WARMUP = 200
# pandas' peak memory per event (2.9 GiB at 10M events on the simulated data); used to skip a
# size that would not fit when pandas has not run at a smaller size yet
PANDAS_BYTES_PER_EVENT = 320
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


# --- the spec the benchmark compares ------------------------------------------------------------


def load_benchmark_spec() -> FeatureSpec:
    """The shipped feature spec without the rules stage: its 144 event features only."""
    import yaml

    from features.spec import parse_feature_spec

    text = resources.files("features").joinpath("config/feature_spec.yaml").read_text("utf-8")
    settings = yaml.safe_load(text)
    settings["rules_stage"] = False
    return parse_feature_spec(
        yaml.safe_dump(settings, sort_keys=False), origin="the shipped spec, rules_stage: false"
    )


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,30M", help="event counts, e.g. 1M,10M,30M")
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"what to measure, comma-separated, from {','.join(MEASUREMENTS)}",
    )
    parser.add_argument("--quick", action="store_true", help="100k events from 10k contacts")
    parser.add_argument("--repeat", type=int, default=None, help="runs each (default 2; quick 1)")
    parser.add_argument("--contacts", type=int, default=1_000_000, help="per simulation")
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=DATA, help="where data sets are cached")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the JSON to merge figures into (default {RESULTS}; quick runs "
        "write benchmarks/data/features-quick.json)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds a run may take before it is ended"
    )
    parser.add_argument(
        "--spark-memory",
        default="8g",
        help="the Spark driver's memory (local mode: all of it); 4g runs out at 10M events",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))

    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(only) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown --only {unknown}; choose from {', '.join(MEASUREMENTS)}")
    if args.quick:
        args.sizes, args.contacts = "100k", 10_000
    if args.out is None:
        args.out = args.data_dir / "features-quick.json" if args.quick else RESULTS
    repeat = args.repeat or (1 if args.quick else 2)
    sizes = [_parse_size(s) for s in args.sizes.split(",") if s.strip()]
    as_of = dt.datetime.combine(START + dt.timedelta(days=args.days), dt.time(), tzinfo=dt.UTC)

    from benchmarks.reporting import code_version, load_previous, machine, write_json_atomic

    result = load_previous(args.out, "features")
    result.update(
        benchmark="features",
        date_utc=_now(),
        code=code_version(["features", "benchmarks"]),
        machine=machine(["polars", "duckdb", "pandas", "pyarrow", "pyspark", "numpy"]),
        as_of=as_of.isoformat(),
        spec="features/config/feature_spec.yaml with rules_stage: false (144 event features)",
    )
    result.setdefault("sizes", {})
    failed = False
    for label, events in sizes:
        dataset = _prepare(events, label, args)
        entry = result["sizes"].setdefault(label, {})
        entry["dataset"] = dataset
        entry.setdefault("implementations", {})
        console.rule(f"{label} events, {dataset['contacts']:,} contacts")
        wanted = [m for m in IMPLEMENTATIONS if m in only]
        earlier = entry["implementations"].get("funnelcast", {}).get("status") == "ok"
        if "training" in only and "funnelcast" not in wanted and not earlier:
            wanted.insert(0, "funnelcast")  # the training frame is compared with one snapshot
        for name in wanted:
            measured = _measure_build(
                name,
                dataset,
                as_of,
                result,
                repeat=repeat,
                timeout=args.timeout,
                spark_memory=args.spark_memory,
            )
            entry["implementations"][name] = measured
            failed |= measured["status"] == "error"
        if "training" in only:
            entry["training"] = _measure_training(
                dataset, as_of, entry["implementations"], result["sizes"], timeout=args.timeout
            )
            failed |= entry["training"]["status"] == "error"
        _check_agreement(entry["implementations"])
        _print_size(label, entry, since=result["date_utc"])
    if "online" in only:
        base = _simulation_path(args.data_dir, args.contacts, args.days, args.seed)
        result["online"] = _measure_online(base, as_of)
        failed |= result["online"]["status"] == "error"
        _print_online(result["online"])
    result["targets"] = _check_targets(result)
    _print_targets(result["targets"])
    write_json_atomic(_compact(result), args.out)
    console.print(f"wrote {args.out}")
    return 1 if failed else 0


def _parse_size(text: str) -> tuple[str, int]:
    text = text.strip()
    factor = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    number = float(text[:-1]) if factor > 1 else float(text)
    return text, round(number * factor)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- data sets ----------------------------------------------------------------------------------


def _simulation_path(data_dir: Path, contacts: int, days: int, seed: int) -> Path:
    return data_dir / f"sim-{contacts}c-{days}d-seed{seed}.parquet"


def _prepare(events: int, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """The data set of ``events`` events, made (in a child process, which alone holds the
    simulations in memory) unless cached."""
    simulations = max(1, math.ceil(events / (EVENTS_PER_CONTACT * args.contacts)))
    name = f"events-{label}-{simulations}x{args.contacts}c-{args.days}d-seed{args.seed}"
    path = args.data_dir / f"{name}.parquet"
    about = path.with_suffix(".json")
    if not (path.exists() and about.exists()):
        console.print(f"making {path} ({simulations} simulation(s), cached for later runs)")
        task = {
            "task": "prepare",
            "path": str(path),
            "events": events,
            "simulations": simulations,
            "contacts": args.contacts,
            "days": args.days,
            "seed": args.seed,
            "data_dir": str(args.data_dir),
        }
        outcome = _run_child(task, timeout=3 * 3600)
        if outcome.get("status") != "ok":
            raise SystemExit(f"could not make the data set {path}: {outcome.get('error')}")
    dataset: dict[str, Any] = json.loads(about.read_text(encoding="utf-8"))
    dataset["path"] = str(path)
    return dataset


def _make_dataset(task: dict[str, Any]) -> dict[str, Any]:
    """Simulate (or read the cached simulation), sample uniformly with a seeded generator, and
    stream each simulation's sample into one Parquet file: never more than one simulation in
    memory."""
    import numpy as np
    import polars as pl
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(task["path"])
    simulations, events = task["simulations"], task["events"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    seeds = [task["seed"] + k for k in range(simulations)]
    try:
        with pq.ParquetWriter(tmp, _events_schema(), compression="zstd") as writer:
            for k, seed in enumerate(seeds):
                table = _simulation(Path(task["data_dir"]), task["contacts"], task["days"], seed)
                share = events // simulations + (1 if k < events % simulations else 0)
                if share > table.num_rows:
                    raise ValueError(
                        f"{share:,} events wanted from a simulation of {table.num_rows:,}; use "
                        "more contacts per simulation"
                    )
                rng = np.random.default_rng([seed, events])
                keep = np.sort(rng.choice(table.num_rows, size=share, replace=False))
                sample = table.take(keep)
                del table
                if simulations > 1:  # distinct contacts in each simulation
                    ids = pc.utf8_replace_slice(sample["contact_id"], 0, 4, f"s{k + 1}-")
                    sample = sample.set_column(0, sample.schema.field(0), ids)
                writer.write_table(sample, row_group_size=ROW_GROUP_ROWS)
                del sample
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    contacts = pl.scan_parquet(path).select(pl.col("contact_id").n_unique()).collect().item()
    about = {
        "events": events,
        "contacts": contacts,
        "simulations": simulations,
        "contacts_per_simulation": task["contacts"],
        "days": task["days"],
        "start": START.isoformat(),
        "seeds": seeds,
        "row_group_rows": ROW_GROUP_ROWS,
        "file_mib": round(path.stat().st_size / 1024**2, 1),
    }
    path.with_suffix(".json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
    return {"status": "ok"}


def _events_schema() -> Any:
    from features.schema import EVENTS_SCHEMA

    return EVENTS_SCHEMA


def _simulation(data_dir: Path, contacts: int, days: int, seed: int) -> Any:
    """One simulation's events, cached as Parquet (simulating 1M contacts takes ~20 s)."""
    import pyarrow.parquet as pq

    from features.simulator import load_simulator_settings, simulate

    path = _simulation_path(data_dir, contacts, days, seed)
    if path.exists():
        return pq.read_table(path)
    print(f"simulating {contacts:,} contacts x {days} days, seed {seed}", file=sys.stderr)
    sim = simulate(load_simulator_settings(), contacts=contacts, days=days, seed=seed, start=START)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(sim.events, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, path)
    return sim.events


# --- measuring in child processes ---------------------------------------------------------------


def _measure_build(
    name: str,
    dataset: dict[str, Any],
    as_of: dt.datetime,
    result: dict[str, Any],
    *,
    repeat: int,
    timeout: float,
    spark_memory: str,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"date_utc": _now()}
    if name == "spark":
        entry["spark_memory"] = spark_memory
    if name == "pandas":
        reason = _pandas_would_not_fit(dataset["events"], result)
        if reason:
            console.print(f"  pandas: skipped, {reason}")
            return entry | {"status": "skipped", "reason": reason}
    runs = []
    for run in range(repeat):
        task = {"task": "build", "implementation": name, "path": dataset["path"]}
        task |= {"as_of": as_of.isoformat(), "spark_memory": spark_memory}
        outcome = _run_child(task, timeout=timeout)
        runs.append(outcome)
        if outcome["status"] != "ok":
            console.print(f"  {name}: {outcome['status']}: {_first_line(outcome.get('error'))}")
            return entry | outcome | {"runs": runs}
        console.print(
            f"  {name} run {run + 1}/{repeat}: {outcome['seconds']:.2f} s, "
            f"peak {outcome['peak_rss_gib']:.2f} GiB "
            f"(CPUs {outcome['cpu_busy_percent_before']:.0f} % busy before)"
        )
    best = min(runs, key=lambda r: r["seconds"])
    return (
        entry
        | {
            "status": "ok",
            "seconds": best["seconds"],
            "events_per_second": round(dataset["events"] / best["seconds"]),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
            "rows": best["rows"],
            "columns": best["columns"],
            "digest": best["digest"],
            "runs": runs,
        }
        | ({"session_seconds": best["session_seconds"]} if "session_seconds" in best else {})
    )


def _pandas_would_not_fit(events: int, result: dict[str, Any]) -> str | None:
    """Why pandas should not run at this size, if its estimated peak exceeds the free memory:
    bytes per event from the largest size pandas ran at, else a figure measured before."""
    per_event = PANDAS_BYTES_PER_EVENT
    ran = [
        (entry["dataset"]["events"], entry["implementations"]["pandas"]["peak_rss_gib"])
        for entry in result["sizes"].values()
        if entry.get("implementations", {}).get("pandas", {}).get("status") == "ok"
    ]
    if ran:
        size, peak = max(ran)
        per_event = round(peak * GIB / size)
    estimate = per_event * events
    available = psutil.virtual_memory().available
    if estimate > 0.8 * available:
        return (
            f"it would need ~{estimate / GIB:.1f} GiB ({per_event} B/event) and "
            f"{available / GIB:.1f} GiB are available"
        )
    return None


def _measured_trainings(sizes: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        entry["training"]
        for entry in sizes.values()
        if entry.get("training", {}).get("status") == "ok" and "output_gib" in entry["training"]
    ]


def _training_bytes_per_row(sizes: dict[str, Any], one: dict[str, Any]) -> float:
    """The training frame's bytes per row, as measured at a size that ran (else 8 a column)."""
    measured = [t["output_gib"] * GIB / t["rows"] for t in _measured_trainings(sizes)]
    return max(measured, default=one["columns"] * 8)


def _training_peak_per_output_byte(sizes: dict[str, Any]) -> float:
    """The training frame's peak over its output, as measured at a size that ran; else 1.5
    (1.18 at 1 M events and 1.27 at 10 M on 2026-12-03)."""
    ratios = [
        t["peak_rss_gib"] / t["output_gib"] for t in _measured_trainings(sizes) if t["output_gib"]
    ]
    return max(ratios, default=1.5)


def _measure_training(
    dataset: dict[str, Any],
    as_of: dt.datetime,
    measured: dict[str, Any],
    measured_sizes: dict[str, Any],
    *,
    timeout: float,
) -> dict[str, Any]:
    one = measured.get("funnelcast", {})
    entry: dict[str, Any] = {"date_utc": _now(), "snapshots": SNAPSHOTS}
    if one.get("status") != "ok":
        return entry | {"status": "skipped", "reason": "no single-snapshot funnelcast figure"}
    # the output alone is every snapshot's rows; the peak is a multiple of it (measured at a
    # size that ran, else 1.5x): a size that cannot fit is not started, and misses the target
    output_bytes = SNAPSHOTS * one["rows"] * _training_bytes_per_row(measured_sizes, one)
    estimate = _training_peak_per_output_byte(measured_sizes) * output_bytes
    available = psutil.virtual_memory().available
    if estimate > 0.9 * available:
        reason = (
            f"{SNAPSHOTS} snapshots of {one['rows']:,} rows x {one['columns']} columns are "
            f"{output_bytes / GIB:.1f} GiB; the build would peak near {estimate / GIB:.0f} GiB "
            f"and {available / GIB:.1f} GiB are available"
        )
        console.print(f"  training: not run, {reason}")
        return entry | {"status": "skipped", "reason": reason, "would_not_fit": True}
    task = {"task": "training", "path": dataset["path"], "as_of": as_of.isoformat()}
    outcome = _run_child(task, timeout=timeout)
    if outcome["status"] != "ok":
        console.print(f"  training: {outcome['status']}: {_first_line(outcome.get('error'))}")
        return entry | outcome
    ratio = outcome["seconds"] / one["seconds"]
    console.print(
        f"  training ({SNAPSHOTS} weekly snapshots): {outcome['seconds']:.2f} s, "
        f"{ratio:.2f}x one snapshot, peak {outcome['peak_rss_gib']:.2f} GiB, "
        f"output {outcome['output_gib']:.2f} GiB"
    )
    return entry | outcome | {"ratio_to_one_snapshot": round(ratio, 2)}


def _measure_online(base: Path, as_of: dt.datetime) -> dict[str, Any]:
    entry: dict[str, Any] = {"date_utc": _now()}
    if not base.exists():
        return entry | {"status": "skipped", "reason": f"no simulation at {base}"}
    task = {"task": "online", "path": str(base), "as_of": as_of.isoformat()}
    outcome = _run_child(task, timeout=600)
    return entry | outcome


def _run_child(task: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one task in a fresh interpreter. Its peak memory is the larger of what it reports
    (ru_maxrss of the process) and the sampled resident memory of its whole process tree
    (Spark's JVM is a child of the Python driver)."""
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)]
        busy_before = _wait_until_idle()
        process = subprocess.Popen(
            command, cwd=ROOT, env=os.environ | {"FUNNELCAST_BENCH_OUT": str(out)}
        )
        with _sample_tree_rss(process.pid) as tree_peak:
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(process)
                return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
        if code < 0:
            signal = -code
            hint = " (out of memory?)" if signal == 9 else ""
            return {"status": "error", "error": f"killed by signal {signal}{hint}"}
        if not out.exists():
            return {"status": "error", "error": f"exit code {code}, no result (see stderr)"}
        outcome: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    outcome["cpu_busy_percent_before"] = busy_before
    if "peak_rss_gib" in outcome:
        outcome["peak_rss_gib_process"] = outcome["peak_rss_gib"]
        outcome["peak_rss_gib_tree_sampled"] = round(tree_peak[0] / GIB, 2)
        outcome["peak_rss_gib"] = max(outcome["peak_rss_gib"], outcome["peak_rss_gib_tree_sampled"])
    return outcome


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """End a child that ran out of time, and its own children (Spark's JVM), by their ids."""
    with suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.pid).children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                child.kill()
    process.kill()
    process.wait()


def _wait_until_idle(busy_percent: float = 15, at_most: float = 120) -> float:
    """Wait (up to ``at_most`` seconds) until the other processes leave the CPUs idle, so that
    a run is not timed against someone else's job; returns how busy they were just before."""
    deadline = time.monotonic() + at_most
    busy = psutil.cpu_percent(interval=1.0)
    if busy > busy_percent:
        console.print(f"  (CPUs {busy:.0f} % busy: waiting up to {at_most:.0f} s for them to idle)")
    while busy > busy_percent and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=1.0)
    if busy > busy_percent:
        console.print(f"  [yellow]CPUs still {busy:.0f} % busy: this run's time is unreliable[/]")
    return busy


@contextmanager
def _sample_tree_rss(pid: int, every: float = 0.25) -> Iterator[list[float]]:
    peak = [0.0]
    stop = threading.Event()

    def _sample() -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
                total = 0
                for process in processes:
                    with suppress(psutil.NoSuchProcess):  # it may end between the two calls
                        total += process.memory_info().rss
                peak[0] = max(peak[0], float(total))
            except psutil.NoSuchProcess:
                return
            stop.wait(every)

    sampler = threading.Thread(target=_sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


# --- the child side -----------------------------------------------------------------------------


def _child(task: dict[str, Any]) -> int:
    out = Path(os.environ["FUNNELCAST_BENCH_OUT"])
    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "prepare": _make_dataset,
        "build": _child_build,
        "training": _child_training,
        "online": _child_online,
    }
    try:
        outcome = handlers[task["task"]](task)
    except _UnavailableError as error:
        outcome = {"status": "unavailable", "error": str(error)}
    except Exception as error:  # reported to the parent, which prints it and carries on
        import traceback

        traceback.print_exc()
        outcome = {"status": "error", "error": f"{type(error).__name__}: {error}"}
    out.write_text(json.dumps(outcome), encoding="utf-8")
    return 0


class _UnavailableError(Exception):
    """The implementation is not there (yet): reported, not a failure."""


def _peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (GIB if sys.platform == "darwin" else 1024**2)


def _child_build(task: dict[str, Any]) -> dict[str, Any]:
    """Import everything first, then time only the feature build: Parquet in, features in
    memory."""
    import importlib

    import polars as pl
    import pyarrow as pa

    name, path = task["implementation"], Path(task["path"])
    as_of = dt.datetime.fromisoformat(task["as_of"])
    extra: dict[str, Any] = {}
    if name == "funnelcast":
        from features.engine import build_contact_features

        spec = load_benchmark_spec()

        def build() -> Any:
            return build_contact_features(path, as_of=as_of, spec=spec)

    elif name == "spark":
        try:
            from features.spark_engine import (
                build_contact_features_spark,
                spark_features_to_polars,
                spark_session,
            )
        except ImportError as error:
            raise _UnavailableError(f"features.spark_engine cannot be imported: {error}") from error
        spec = load_benchmark_spec()
        # a JVM out of heap otherwise hangs the job until the timeout; let it end at once
        os.environ["JAVA_TOOL_OPTIONS"] = "-XX:+ExitOnOutOfMemoryError"
        started = time.perf_counter()
        spark = spark_session(cores=os.cpu_count() or 2, memory=task["spark_memory"])
        extra["session_seconds"] = round(time.perf_counter() - started, 2)

        def build() -> Any:
            frame = build_contact_features_spark(str(path), as_of=as_of, spec=spec, spark=spark)
            return spark_features_to_polars(frame)

    else:
        yardstick = importlib.import_module(YARDSTICKS[name])

        def build() -> Any:
            return yardstick.build(path, as_of)

    started, cpu = time.perf_counter(), _cpu_seconds()
    features = build()
    seconds = time.perf_counter() - started
    if name != "spark":  # Spark's work is in its JVM, whose CPU this process does not see
        extra |= _cpu_since(cpu)
    frame = pl.from_arrow(features) if isinstance(features, pa.Table) else features
    assert isinstance(frame, pl.DataFrame)
    return {
        "status": "ok",
        "seconds": round(seconds, 3),
        "peak_rss_gib": round(_peak_rss_gib(), 3),
        "rows": frame.height,
        "columns": frame.width,
        "digest": _digest(frame),
    } | extra


def _cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _cpu_since(before: tuple[float, float]) -> dict[str, float]:
    """This process's CPU time since ``before``, in user code and in the kernel (where the
    page faults of newly touched memory go: on a VM whose host backs guest memory only at
    first touch, they are a large share of building a big frame)."""
    user, system = _cpu_seconds()
    return {
        "cpu_user_seconds": round(user - before[0], 2),
        "cpu_system_seconds": round(system - before[1], 2),
    }


def _digest(frame: Any) -> dict[str, list[float]]:
    """Per feature: (sum, missing count), to check that every implementation agrees at scale."""
    import polars as pl

    numeric = [c for c, t in frame.schema.items() if t.is_numeric()]
    sums = frame.select(pl.col(numeric).cast(pl.Float64).sum()).row(0)
    missing = frame.select(pl.col(numeric).null_count()).row(0)
    return {c: [s, m] for c, s, m in zip(numeric, sums, missing, strict=True)}


def _child_training(task: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    try:
        from features.snapshots import build_training_frame
    except ImportError:
        try:
            from features.engine import build_training_frame  # type: ignore[attr-defined,no-redef]
        except ImportError as error:
            raise _UnavailableError(f"build_training_frame cannot be imported: {error}") from error
    spec = load_benchmark_spec()
    as_of = dt.datetime.fromisoformat(task["as_of"])
    dates = [(as_of - dt.timedelta(weeks=k)).date() for k in reversed(range(SNAPSHOTS))]
    started, cpu = time.perf_counter(), _cpu_seconds()
    frame = build_training_frame(Path(task["path"]), as_of_dates=dates, spec=spec)
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    seconds = time.perf_counter() - started
    return _cpu_since(cpu) | {
        "status": "ok",
        "seconds": round(seconds, 3),
        "peak_rss_gib": round(_peak_rss_gib(), 3),
        "rows": frame.height,
        "columns": frame.width,
        "output_gib": round(frame.estimated_size() / GIB, 3),
        "as_of_dates": [d.isoformat() for d in dates],
    }


def _child_online(task: dict[str, Any]) -> dict[str, Any]:
    """The online path in process, on real simulated histories: the last 200 events before
    as_of of the heaviest contacts, one call per contact, after a warm-up."""
    import pandas as pd
    import polars as pl

    from features.online import build_online_features

    spec = load_benchmark_spec()
    as_of = dt.datetime.fromisoformat(task["as_of"])
    past = pl.scan_parquet(task["path"]).filter(pl.col("timestamp") < as_of)
    heavy = (
        past.group_by("contact_id")
        .len()
        .filter(pl.col("len") >= ONLINE_EVENTS)
        .sort("contact_id")
        .head(ONLINE_CONTACTS)
        .select("contact_id")
    )
    events = (
        past.join(heavy, on="contact_id", how="semi")
        .select("contact_id", "timestamp", "event_type", "channel", "value")
        .sort("contact_id", "timestamp")
        .group_by("contact_id", maintain_order=True)
        .tail(ONLINE_EVENTS)
        .collect()
    )
    histories = [
        part.drop("contact_id").to_dicts()
        for part in events.partition_by("contact_id", maintain_order=True)
    ]
    if not histories:
        raise ValueError(f"no contact has {ONLINE_EVENTS} events before {as_of}")
    assert all(len(h) == ONLINE_EVENTS for h in histories)
    for history in histories[:ONLINE_WARMUP]:
        build_online_features(history, as_of=as_of, spec=spec)

    frames_built = [0]
    original_init = pd.DataFrame.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        frames_built[0] += 1
        original_init(self, *args, **kwargs)

    pd.DataFrame.__init__ = counting_init  # type: ignore[method-assign]
    nanoseconds = []
    try:
        for call in range(max(ONLINE_CALLS, len(histories))):
            history = histories[call % len(histories)]
            started = time.perf_counter_ns()
            build_online_features(history, as_of=as_of, spec=spec)
            nanoseconds.append(time.perf_counter_ns() - started)
    finally:
        pd.DataFrame.__init__ = original_init  # type: ignore[method-assign]
    nanoseconds.sort()
    milliseconds = [n / 1e6 for n in nanoseconds]
    return {
        "status": "ok",
        "contacts": len(histories),
        "events_per_contact": ONLINE_EVENTS,
        "calls": len(milliseconds),
        "warmup_calls": min(ONLINE_WARMUP, len(histories)),
        "median_ms": round(milliseconds[len(milliseconds) // 2], 4),
        "p99_ms": round(milliseconds[math.ceil(0.99 * len(milliseconds)) - 1], 4),
        "max_ms": round(milliseconds[-1], 4),
        "pandas_dataframes_built": frames_built[0],
        "peak_rss_gib": round(_peak_rss_gib(), 3),
    }


# --- checks and output --------------------------------------------------------------------------


def _check_agreement(measured: dict[str, Any]) -> None:
    """Every implementation's rows and per-feature sums and missing counts must agree."""
    done = {name: m for name, m in measured.items() if m.get("status") == "ok" and "digest" in m}
    if len(done) < 2:
        return
    reference_name = "funnelcast" if "funnelcast" in done else next(iter(done))
    reference = done[reference_name]
    for name, entry in done.items():
        problems = []
        if entry["rows"] != reference["rows"]:
            problems.append(f"{entry['rows']:,} rows, not {reference['rows']:,}")
        for column, (total, missing) in reference["digest"].items():
            other = entry["digest"].get(column)
            if other is None:
                problems.append(f"no {column}")
            elif other[1] != missing or not math.isclose(other[0], total, rel_tol=1e-6):
                problems.append(f"{column} {other} vs {[total, missing]}")
        entry["agrees_with"] = reference_name if not problems else None
        if problems:
            entry["disagreements"] = problems[:20]
            console.print(
                f"  [bold red]{name} disagrees with {reference_name}[/]: {'; '.join(problems[:5])}"
            )


def _fastest_hand_written(measured: dict[str, Any]) -> tuple[str, float] | None:
    times = [
        (name, measured[name]["seconds"])
        for name in HAND_WRITTEN
        if measured.get(name, {}).get("status") == "ok"
    ]
    return min(times, key=lambda item: item[1]) if times else None


def _print_size(label: str, entry: dict[str, Any], *, since: str) -> None:
    measured = entry["implementations"]
    fastest = _fastest_hand_written(measured)
    table = Table(title=f"{label} events, {entry['dataset']['contacts']:,} contacts, 144 features")
    for column in (
        "implementation",
        "wall s",
        "events/s",
        "peak RSS GiB",
        "x fastest hand-written",
    ):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    table.add_column("notes")
    for name in IMPLEMENTATIONS:
        if name not in measured:
            continue
        m = measured[name]
        if m["status"] != "ok":
            reason = _first_line(m.get("error") or m.get("reason"))
            # never hidden: a failure or a skip is a row with its reason
            table.add_row(name, "-", "-", "-", "-", f"{m['status']}: {reason}")
            continue
        notes = []
        if m["date_utc"] < since:
            notes.append(f"from an earlier run, {m['date_utc']}")
        if "session_seconds" in m:
            notes.append(f"+ {m['session_seconds']:.1f} s session start")
        if m.get("disagreements"):
            notes.append(f"DISAGREES: {m['disagreements'][0]}")
        ratio = f"{m['seconds'] / fastest[1]:.2f}" if fastest else "-"
        table.add_row(
            name,
            f"{m['seconds']:.2f}",
            f"{m['events_per_second'] / 1e6:.2f} M",
            f"{m['peak_rss_gib']:.2f}",
            ratio,
            ", ".join(notes),
        )
    console.print(table)
    training = entry.get("training")
    if training and training.get("status") == "ok":
        console.print(
            f"training frame, {SNAPSHOTS} weekly snapshots: {training['seconds']:.2f} s "
            f"({training['ratio_to_one_snapshot']:.2f}x one snapshot), "
            f"{training['rows']:,} rows, peak {training['peak_rss_gib']:.2f} GiB"
        )
        if "cpu_system_seconds" in training:
            console.print(
                f"  output {training['output_gib']:.2f} GiB; CPU "
                f"{training['cpu_user_seconds']:.1f} s user + "
                f"{training['cpu_system_seconds']:.1f} s system (the kernel: mostly "
                "page faults of new memory)"
            )


def _print_online(online: dict[str, Any]) -> None:
    if online.get("status") != "ok":
        reason = _first_line(online.get("error") or online.get("reason"))
        console.print(f"online path: {online.get('status')}: {reason}")
        return
    console.print(
        f"online path, {online['events_per_contact']} events per contact, {online['calls']:,} "
        f"calls over {online['contacts']} contacts: median {online['median_ms']:.3f} ms, "
        f"p99 {online['p99_ms']:.3f} ms, "
        f"pandas DataFrames built {online['pandas_dataframes_built']}"
    )


def _first_line(text: str | None, limit: int = 160) -> str:
    """An error in one line: a Java error's last cause (Spark's first line says nothing)."""
    lines = (text or "").strip().splitlines() or [""]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by:")]
    line = causes[-1] if causes else lines[0]
    line = line.split("Exception: ", 1)[-1] if line.startswith("org.apache") else line
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each PASS, MISS or not measured (with what would measure it)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: str | None, passed: bool | None, missing: str = "") -> None:
        status = "not measured" if passed is None else ("PASS" if passed else "MISS")
        targets.append({"target": name, "measured": measured or missing, "status": status})

    ten = result["sizes"].get("10M", {}).get("implementations", {})
    engine = ten.get("funnelcast", {})
    ok = engine.get("status") == "ok"
    fastest = _fastest_hand_written(ten)
    need = "needs --sizes 10M"
    if ok and fastest:
        ratio = engine["seconds"] / fastest[1]
        add(
            "10M: funnelcast within 1.2x of the fastest hand-written version",
            f"{engine['seconds']:.2f} s vs {fastest[0]} {fastest[1]:.2f} s = {ratio:.2f}x",
            ratio <= 1.2,
        )
    else:
        add("10M: funnelcast within 1.2x of the fastest hand-written version", None, None, need)
    add(
        "10M: funnelcast >= 2 M events/s",
        f"{engine['events_per_second'] / 1e6:.2f} M events/s" if ok else None,
        engine["events_per_second"] >= 2e6 if ok else None,
        need,
    )
    add(
        "10M: funnelcast peak memory <= 2 GB (read as GiB)",
        f"{engine['peak_rss_gib']:.2f} GiB" if ok else None,
        engine["peak_rss_gib"] <= 2 if ok else None,
        need,
    )
    pandas = ten.get("pandas", {})
    if ok and pandas.get("status") == "ok":
        speedup = pandas["seconds"] / engine["seconds"]
        add(
            "10M: funnelcast >= 2.5x faster than pandas",
            f"pandas {pandas['seconds']:.2f} s / {engine['seconds']:.2f} s = {speedup:.2f}x",
            speedup >= 2.5,
        )
    else:
        add("10M: funnelcast >= 2.5x faster than pandas", None, None, need + " with pandas")
    thirty = result["sizes"].get("30M", {}).get("implementations", {}).get("funnelcast", {})
    ok30 = thirty.get("status") == "ok"
    add(
        "30M events / 3M contacts: funnelcast <= 17 s",
        f"{thirty['seconds']:.2f} s" if ok30 else None,
        thirty["seconds"] <= 17 if ok30 else None,
        "needs --sizes 30M",
    )
    add(
        "30M events / 3M contacts: funnelcast peak memory <= 4.5 GB (read as GiB)",
        f"{thirty['peak_rss_gib']:.2f} GiB" if ok30 else None,
        thirty["peak_rss_gib"] <= 4.5 if ok30 else None,
        "needs --sizes 30M",
    )
    for label, entry in result["sizes"].items():
        training = entry.get("training", {})
        name = f"{label}: {SNAPSHOTS} weekly snapshots in under 4x the time of one"
        if training.get("status") == "ok":
            add(
                name,
                f"{training['seconds']:.2f} s = {training['ratio_to_one_snapshot']:.2f}x",
                training["ratio_to_one_snapshot"] < 4,
            )
        elif training.get("status") == "error":  # a run that cannot finish misses the target
            add(name, f"failed: {_first_line(training.get('error'))}", False)
        elif training.get("would_not_fit"):  # and so does one that cannot start
            add(name, f"not run: {training['reason']}", False)
    if not any("snapshots" in t["target"] for t in targets):
        add(
            f"{SNAPSHOTS} weekly snapshots in under 4x the time of one",
            None,
            None,
            "needs training",
        )
    online = result.get("online", {})
    if online.get("status") == "ok":
        add(
            "online: median under 1 ms per contact with 200 events",
            f"median {online['median_ms']:.3f} ms, p99 {online['p99_ms']:.3f} ms",
            online["median_ms"] < 1,
        )
        add(
            "online: no pandas DataFrame built per request",
            f"{online['pandas_dataframes_built']} built in {online['calls']:,} calls",
            online["pandas_dataframes_built"] == 0,
        )
    else:
        add("online: median under 1 ms per contact with 200 events", None, None, "needs online")
    return targets


def _print_targets(targets: list[dict[str, Any]]) -> None:
    table = Table(title="targets (funnelcast engine)")
    table.add_column("target")
    table.add_column("measured")
    table.add_column("status")
    colour = {"PASS": "green", "MISS": "bold red", "not measured": "yellow"}
    for t in targets:
        table.add_row(t["target"], t["measured"], f"[{colour[t['status']]}]{t['status']}[/]")
    console.print(table)


# --- machine and JSON ---------------------------------------------------------------------------


def _compact(value: Any) -> Any:
    """The figures without bulk: each run keeps its times but not its digest (the best run's
    stays), and an error keeps its cause and its first lines, not a whole Java stack."""
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if not isinstance(value, dict):
        return value
    compacted = {k: _compact(v) for k, v in value.items() if k != "runs"}
    if "runs" in value:
        compacted["runs"] = [
            {k: v for k, v in _compact(run).items() if k != "digest"} for run in value["runs"]
        ]
    if isinstance(value.get("error"), str) and len(value["error"]) > 1100:  # once: ~1000 after
        compacted["error"] = f"{_first_line(value['error'], 400)} | {value['error'][:600]}…"
    return compacted


if __name__ == "__main__":
    raise SystemExit(main())
