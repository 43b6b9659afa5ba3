"""Benchmark the journey simulator at scale: throughput, memory, the rates it produces, and the
time ``features.schema.validate`` takes on its output.

    .venv/bin/python benchmarks/simulate.py --contacts 1000000 --days 180 --seed 7

Prints the figures and writes them to ``benchmarks/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import psutil

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on the path, where benchmarks/features.py
    # would stand in for the `features` package; the project root takes its place
    sys.path[:] = [
        str(ROOT) if Path(entry or ".").resolve() == Path(__file__).resolve().parent else entry
        for entry in sys.path
    ]

from features.schema import validate  # noqa: E402  (after the path is set)
from features.simulator import (  # noqa: E402
    count_stages_by_day,
    load_simulator_settings,
    measure_rates,
    simulate,
)

RESULTS = Path(__file__).parent / "results" / "simulate.json"
DATA = Path(__file__).parent / "data"
# the measured configuration: only its figures go to RESULTS (the README's table)
MEASURED = {"contacts": 1_000_000, "days": 180}
GIB = 1024**3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1))
    parser.add_argument("--skip-validate", action="store_true", help="do not time validate()")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write the JSON (default {RESULTS} for 1,000,000 contacts over 180 "
        "days, the README's figures; benchmarks/data/simulate-<N>c-<D>d.json for other sizes)",
    )
    args = parser.parse_args(argv)
    if args.contacts < 1 or args.days < 1:
        parser.error("--contacts and --days must be at least 1")
    if args.out is None:
        measured = args.contacts == MEASURED["contacts"] and args.days == MEASURED["days"]
        args.out = RESULTS if measured else DATA / f"simulate-{args.contacts}c-{args.days}d.json"

    settings = load_simulator_settings()
    day_seconds: list[float] = []
    last = [time.perf_counter()]

    def _progress(done: int, total: int) -> None:
        now = time.perf_counter()
        day_seconds.append(now - last[0])
        last[0] = now
        if done % 30 == 0 or done == total:
            print(f"  day {done}/{total}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    last[0] = started
    sim = simulate(
        settings,
        contacts=args.contacts,
        days=args.days,
        seed=args.seed,
        start=args.start,
        progress=_progress,
    )
    wall = time.perf_counter() - started
    loop = sum(day_seconds)
    peak_simulate = _peak_rss_gib()
    events = sim.events.num_rows

    validation: dict[str, Any] = {"skipped": True}
    if not args.skip_validate:
        t0 = time.perf_counter()
        # `now` after the simulated period, so nothing counts as a future event
        validated = validate(sim.events, sim.contacts, now=dt.datetime.now(dt.UTC))
        validation = {
            "seconds": round(time.perf_counter() - t0, 2),
            "rejected_rows": validated.rejects.num_rows,
            # peak of the whole pipeline as `funnelcast simulate` runs it: simulate + validate
            "peak_rss_gib_after": round(_peak_rss_gib(), 2),
        }

    measured = time.perf_counter()
    rates = measure_rates(sim.events, since=sim.start)
    shares = count_stages_by_day(sim.stage_history, days=args.days)
    buying = (shares["intent"] + shares["conversion"]) / args.contacts
    rates["max_buying_mode_share"] = float(buying.max())
    contacts = pl.from_arrow(sim.contacts)
    assert isinstance(contacts, pl.DataFrame)
    rates["consented_share_at_end"] = float(contacts["marketing_consent"].mean())  # type: ignore[arg-type]
    measure_seconds = time.perf_counter() - measured

    result = {
        "benchmark": "simulate",
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "node": platform.node(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "total_ram_gib": round(psutil.virtual_memory().total / GIB, 1),
            "python": platform.python_version(),
        },
        "args": {
            "contacts": args.contacts,
            "days": args.days,
            "seed": args.seed,
            "start": args.start.isoformat(),
        },
        "events": events,
        "stage_history_rows": sim.stage_history.num_rows,
        "wall_seconds": round(wall, 2),
        "day_loop_seconds": round(loop, 2),
        "build_tables_seconds": round(wall - loop, 2),
        "slowest_day_seconds": round(max(day_seconds), 3),
        "mean_day_seconds": round(loop / len(day_seconds), 3),
        "events_per_second": round(events / wall),
        "peak_rss_gib_simulate": round(peak_simulate, 2),
        "rates": {name: round(value, 4) for name, value in rates.items()},
        "measure_rates_seconds": round(measure_seconds, 2),
        "validate": validation,
    }
    _print(result)
    _write_json_atomic(result, args.out)
    print(f"wrote {args.out}")
    return 0


def _peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (GIB if sys.platform == "darwin" else 1024**2)


def _print(result: dict[str, Any]) -> None:
    rates = result["rates"]
    print(
        f"{result['args']['contacts']:,} contacts x {result['args']['days']} days: "
        f"{result['events']:,} events in {result['wall_seconds']:.1f} s "
        f"({result['events_per_second']:,} events/s; day loop {result['day_loop_seconds']:.1f} s, "
        f"slowest day {result['slowest_day_seconds']:.3f} s, tables "
        f"{result['build_tables_seconds']:.1f} s), "
        f"peak RSS {result['peak_rss_gib_simulate']:.2f} GiB"
    )
    print(
        f"open rate {rates['open_rate']:.1%}, click rate {rates['click_rate']:.2%}, "
        f"visit-to-purchase conversion {rates['conversion_rate']:.2%}, "
        f"max buying-mode share {rates['max_buying_mode_share']:.2%}, "
        f"consented at end {rates['consented_share_at_end']:.1%}"
    )
    validation = result["validate"]
    if not validation.get("skipped"):
        print(
            f"validate(): {validation['seconds']:.1f} s, {validation['rejected_rows']} rejected, "
            f"peak RSS after {validation['peak_rss_gib_after']:.2f} GiB"
        )


def _write_json_atomic(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
