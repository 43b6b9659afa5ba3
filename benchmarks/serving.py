"""Benchmark the prediction service over HTTP: a real ``bentoml serve`` on 127.0.0.1 under a
bounded load, beside the same prediction without HTTP.

    .venv/bin/python benchmarks/serving.py                     # the full run (about 7 minutes)
    .venv/bin/python benchmarks/serving.py --quick             # a smoke run (under a minute)
    .venv/bin/python benchmarks/serving.py --only batch,floor  # some parts, merged into the JSON

Everything happens in a temporary folder: 6,000 simulated contacts over 120 days train a model
into a temporary MLflow store, made champion, and a server is started on a free port with its
own BentoML home and a random API key, with 1 worker and then with 2 (``--workers``).

* ``POST /predict`` with precomputed features (every model feature, as ``funnelcast features``
  writes them) and with a contact's last 200 raw events (the service computes the features), at
  concurrency 1, 8 and 32: p50, p99 and max latency, req/s, errors, and the CPU that the server
  and the load generator each used.
* The HTTP stack alone: the same feature bodies with ``marketing_consent: false``, which
  BentoML receives, checks (API key, schema) and answers without scoring, at the same
  concurrencies: what the service costs before the model does anything.
* ``POST /predict_batch`` with 100 and 1,000 feature rows per request, in both forms: each
  contact's features by name, and the compact form (the names once in ``feature_names``, each
  contact's ``values`` in that order): rows/s.
* The server's memory (RSS summed over its process tree) before and after the load, and a soak
  at concurrency 8 on the 2-worker server (``--soak-seconds``, 120 by default; features and
  raw events) with the RSS sampled every 10 s.
* The in-process floor: the same bodies parsed by the service's schemas and scored by
  ``serving.runtime``'s scorer in this process; the HTTP p50 at concurrency 1 over the floor's
  median is what HTTP and BentoML add.

The load generator is a minimal asyncio HTTP/1.1 keep-alive client over raw sockets sending
pre-encoded requests: it runs on the same cores as the server, so it must cost little per
request (its CPU is reported beside the server's). Each measurement stops at a request count or
a time limit, whichever comes first; warm-up requests are not counted. The workers share one
listening socket and the kernel decides which accepts a connection, so a cell with at least one
connection per worker that ran on one worker anyway (90 % of the work or more) is measured again
on new connections, up to 3 times; ``attempts`` and ``one_worker`` in each cell say how it went,
and the tables mark it. The raw-event bodies come
from a second, year-long simulation: only a dozen contacts of the 120-day one have 200 events.

Prints the figures and met/missed for each target of the issue, and merges them into
``benchmarks/results/serving.json`` (quick runs: ``benchmarks/data/serving-quick.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import polars as pl

    from serving.runtime import Scorer

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on the path, where this file would stand in
    # for the `serving` package (and benchmarks/features.py for `features`); the project root
    # takes its place. Everything that imports the packages does so inside a function.
    sys.path[:] = [
        str(ROOT) if Path(entry or ".").resolve() == Path(__file__).resolve().parent else entry
        for entry in sys.path
    ]

RESULTS = Path(__file__).parent / "results" / "serving.json"
QUICK_RESULTS = Path(__file__).parent / "data" / "serving-quick.json"
NO_REASONS_RESULTS = Path(__file__).parent / "results" / "serving-no-reasons.json"
PARTS = ("floor", "features", "events", "stack", "batch", "soak")
# kinds of single-contact body; "stack": the feature bodies with marketing_consent false, which
# go through HTTP, BentoML, the API key check, parsing and the answer but are never scored
KINDS = ("features", "events", "stack")
CONCURRENCY = (1, 8, 32)
BATCH_ROWS = (100, 1_000)
# /predict_batch's two forms, as the results name them: features by name, and the compact form
BATCH_FORMS = {"batch": "by name", "batch_values": "values"}
EVENTS_PER_REQUEST = 200
DISTINCT_BODIES = 200  # single-contact bodies per kind, cycled
MIB = 1024**2
# a cell whose connections all went to one worker (this share of the work or more) is measured
# again, at most this many times in all
SPREAD_ATTEMPTS = 3
ONE_WORKER_SHARE = 0.9
# the targets
TARGET_WORKERS = 2  # "with 2 workers": the figures the targets are judged on
P99_MAX_MS = 5.0  # feature requests at concurrency 8
REQUESTS_PER_S_MIN = 1_000  # feature requests at concurrency 32
BATCH_ROWS_PER_S_MIN = 20_000  # 1,000 rows per request, one client
SOAK_MIN_SECONDS = 120  # "memory flat over a 2-minute run"
MEMORY_GROWTH_MAX = 0.05  # flat: the soak's last RSS within 5 % of its first
# a server that is not ready by then is reported as failed, not waited for
READY_TIMEOUT_S = 180.0
# readiness of a single worker answers /readyz; the others get this long to log their start
WORKERS_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# wide enough for the tables when the output is a file or a pipe (rich assumes 80 columns)
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Plan:
    """How much each measurement sends, at most (a count and a time, whichever comes first)."""

    requests: int
    seconds: float
    warmup: int  # requests per connection before the clock starts
    batch_requests: int
    batch_seconds: float
    soak_seconds: float
    sample_every: float  # seconds between RSS samples in the soak
    floor_requests: int
    floor_batches: int


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small counts, small models, 2 workers"
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=None, help="the soak's length (default 120; quick 10)"
    )
    parser.add_argument("--workers", default=None, help="servers to measure (default 1,2; quick 2)")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"parts to run, of {', '.join(PARTS)}"
    )
    parser.add_argument("--requests", type=int, default=None, help="per measurement, at most")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement, at most")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"the JSON to merge figures into (default {RESULTS.relative_to(ROOT)}; quick runs "
        f"{QUICK_RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--no-reasons",
        action="store_true",
        help="requests without reasons (explain=false); default results "
        f"{NO_REASONS_RESULTS.relative_to(ROOT)}",
    )
    args = parser.parse_args(argv)
    global EXPLAIN
    EXPLAIN = not args.no_reasons
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown --only {unknown}; choose from {', '.join(PARTS)}")
    workers = sorted(
        {int(w) for w in (args.workers or ("2" if args.quick else "1,2")).split(",") if w.strip()}
    )
    if not workers or min(workers) < 1:
        parser.error("--workers takes worker counts of 1 or more, e.g. 1,2")
    plan = _plan(args)
    out = args.results or (
        QUICK_RESULTS if args.quick else NO_REASONS_RESULTS if args.no_reasons else RESULTS
    )

    from benchmarks.reporting import code_version, load_previous, machine, write_json_atomic

    # MLflow's per-step INFO lines and download bar would bury the figures
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    result = load_previous(out, "serving")
    result.update(
        benchmark="serving",
        date_utc=_now(),
        code=code_version(["features", "training", "serving", "benchmarks"]),
        machine=machine(["bentoml", "lightgbm", "pydantic", "uvicorn", "starlette", "numpy"]),
        plan={
            **asdict(plan),
            "workers": workers,
            "parts": parts,
            "quick": args.quick,
            "reasons": EXPLAIN,
        },
    )
    result.setdefault("servers", {})
    _print_machine(result)
    failed = False
    with tempfile.TemporaryDirectory(prefix="funnelcast-serving-") as name:
        folder = Path(name)
        env = _server_env(folder)
        # this process loads the model too (the floor): same store, and BentoML kept out of ~
        os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")})
        size = "small models for a smoke run" if args.quick else "about 15 s"
        with console.status(f"training a model on 6,000 simulated contacts ({size})"):
            clock = time.perf_counter()
            trained = train_model(env["MLFLOW_TRACKING_URI"], small=args.quick)
            result["model"] = {
                "version": trained.version,
                "training_s": round(time.perf_counter() - clock, 1),
            }
        with console.status("loading the model in this process; making request bodies"):
            from serving.runtime import ModelScorer, ServiceSettings, load_scorer

            scorer = load_scorer(ServiceSettings.from_env(env))
            if not isinstance(scorer, ModelScorer):
                raise RuntimeError(f"the trained model did not load: {scorer.info.source}")
            bodies = make_bodies(trained, feature_names=scorer.feature_names)
            result["model"] |= {"features": len(bodies.feature_names), **bodies.describe()}
        if "floor" in parts:
            with console.status("the in-process floor: the same prediction without HTTP"):
                result["floor"] = measure_floor(scorer, bodies, plan)
            _print_floor(result["floor"])
        del scorer
        soak_on = TARGET_WORKERS if TARGET_WORKERS in workers else workers[-1]
        # the floor alone needs no server (and would leave a server entry with no figures)
        servers = workers if set(parts) - {"floor"} else []
        for count in servers:
            entry, soak = run_server(
                count,
                env,
                bodies,
                plan,
                parts,
                soak="soak" in parts and count == soak_on,
                folder=folder,
            )
            previous = result["servers"].get(str(count), {})
            result["servers"][str(count)] = {**previous, **entry}
            if soak is not None:
                result["soak"] = soak
            failed |= "failure" in entry
    result["ratios"] = http_over_floor(result)
    result["targets"] = check_targets(result, measured_now=servers, soaked="soak" in parts)
    _print_servers(result)
    _print_targets(result["targets"])
    write_json_atomic(result, out, allow_nan=False)
    console.print(f"wrote {out}")
    return 1 if failed else 0


def _plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(
            requests=100,
            seconds=2.0,
            warmup=1,
            batch_requests=2,
            batch_seconds=1.0,
            soak_seconds=10.0,
            sample_every=2.0,
            floor_requests=30,
            floor_batches=1,
        )
    else:
        plan = Plan(
            requests=5_000,
            seconds=15.0,
            warmup=3,
            batch_requests=200,
            batch_seconds=10.0,
            soak_seconds=float(SOAK_MIN_SECONDS),
            sample_every=10.0,
            floor_requests=1_000,
            floor_batches=10,
        )
    changes: dict[str, Any] = {}
    if args.soak_seconds is not None:
        changes["soak_seconds"] = args.soak_seconds
    if args.requests is not None:
        changes["requests"] = args.requests
    if args.seconds is not None:
        changes["seconds"] = args.seconds
    return Plan(**{**asdict(plan), **changes})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the model and the request bodies -----------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    version: str
    features: pl.DataFrame  # build_contact_features of the training simulation, as of its end
    features_as_of: dt.datetime


def train_model(store_uri: str, *, small: bool = False) -> Trained:
    """Simulate contacts, train both models into the store at ``store_uri`` and make the version
    champion; return it with the contacts' features as of the simulation's end (``small``:
    a smoke run's small models)."""
    from benchmarks.reporting import smoke_run_models
    from features.engine import build_contact_features
    from features.settings import load_rules_settings
    from features.simulator import load_simulator_settings, simulate
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import train_models
    from training.registry import promote
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, data_fingerprint, log_training, training_run

    configure_tracking(store_uri)
    # relative to today, so that every timestamp sent is in the past, as the service requires
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=180)
    days = 120
    sim = simulate(load_simulator_settings(), contacts=6000, days=days, seed=11, start=start)
    spec, rules, settings = load_feature_spec(), load_rules_settings(), load_training_settings()
    if small:
        settings = smoke_run_models(settings)
    result = train_models(sim.events, sim.contacts, spec=spec, rules=rules, settings=settings)
    with training_run("serving benchmark"):
        version = log_training(
            result,
            spec=spec,
            spec_text=shipped_spec_text(),
            rules=rules,
            settings=settings,
            fingerprint=data_fingerprint(sim.events, sim.contacts),
        )
    promote("funnelcast", version=version, force=True)
    as_of = dt.datetime.combine(start + dt.timedelta(days=days), dt.time(), dt.UTC)
    features = build_contact_features(sim.events, sim.contacts, as_of=as_of, spec=spec)
    return Trained(version=str(version), features=features, features_as_of=as_of)


@dataclass(frozen=True)
class Bodies:
    """JSON request bodies, encoded once: single contacts by features and by raw events, and
    batches of feature rows by size."""

    feature_names: list[str]
    features: list[bytes]
    events: list[bytes]
    batches: dict[int, list[bytes]]  # each contact's features by name
    tables: dict[int, list[bytes]]  # the same contacts in the compact form (feature_names)
    stack: list[bytes]  # the feature bodies without consent: answered, never scored

    def of_form(self, form: str) -> dict[int, list[bytes]]:
        return {"batch": self.batches, "batch_values": self.tables}[form]

    def of(self, kind: str) -> list[bytes]:
        return {"features": self.features, "events": self.events, "stack": self.stack}[kind]

    def describe(self) -> dict[str, Any]:
        return {
            "feature_bodies": len(self.features),
            "event_bodies": len(self.events),
            "events_per_request": EVENTS_PER_REQUEST,
            "feature_body_bytes": int(np.mean([len(b) for b in self.features])),
            "event_body_bytes": int(np.mean([len(b) for b in self.events])),
            **{
                f"{form}_body_bytes": {
                    str(rows): int(np.mean([len(b) for b in bodies]))
                    for rows, bodies in self.of_form(form).items()
                }
                for form in BATCH_FORMS
            },
        }


# --no-reasons: every body asks for no reasons (explain=false), to show what they cost
EXPLAIN = True


def _encode(body: dict[str, Any]) -> bytes:
    if not EXPLAIN:
        for contact in body.get("contacts", [body]):
            contact["explain"] = False
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def make_bodies(trained: Trained, *, feature_names: Sequence[str]) -> Bodies:
    rows = _feature_rows(trained.features, feature_names)
    as_of = _iso(trained.features_as_of)
    single = [
        _encode({"marketing_consent": True, "as_of": as_of, "features": row})
        for row in rows[:DISTINCT_BODIES]
    ]
    batches, tables = {}, {}
    names = list(feature_names)
    for size in BATCH_ROWS:
        chunks = [rows[i : i + size] for i in range(0, len(rows) - size + 1, size)][:5]
        if not chunks:
            raise RuntimeError(f"{len(rows)} feature rows are too few for a batch of {size}")
        batches[size] = [
            _encode(
                {
                    "contacts": [
                        {"marketing_consent": True, "as_of": as_of, "features": row}
                        for row in chunk
                    ]
                }
            )
            for chunk in chunks
        ]
        tables[size] = [
            _encode(
                {
                    "feature_names": names,
                    "contacts": [
                        {
                            "marketing_consent": True,
                            "as_of": as_of,
                            "values": [row[name] for name in names],
                        }
                        for row in chunk
                    ],
                }
            )
            for chunk in chunks
        ]
    return Bodies(
        feature_names=list(feature_names),
        features=single,
        events=_event_bodies(),
        batches=batches,
        tables=tables,
        stack=[
            _encode({"marketing_consent": False, "as_of": as_of, "features": row})
            for row in rows[:DISTINCT_BODIES]
        ],
    )


def _feature_rows(frame: pl.DataFrame, names: Sequence[str]) -> list[dict[str, Any]]:
    """Feature dicts as a CRM would send them from `funnelcast features`: every model feature,
    null where undefined (JSON has no NaN)."""
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise RuntimeError(f"the feature frame lacks model features {missing[:8]}")
    sample = frame.sample(n=min(frame.height, 2 * max(BATCH_ROWS)), seed=0)
    out = []
    for row in sample.select(list(names)).iter_rows(named=True):
        out.append(
            {
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in row.items()
            }
        )
    return out


def _event_bodies() -> list[bytes]:
    """Raw-event bodies: a contact's last 200 events before an as_of, from a year-long
    simulation (two as_of dates a month apart, so there are enough contacts with 200 events)."""
    import polars as pl

    from features.simulator import load_simulator_settings, simulate

    days = 365
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days + 30)
    sim = simulate(load_simulator_settings(), contacts=3000, days=days, seed=12, start=start)
    events = pl.DataFrame(sim.events)
    contacts = {row["contact_id"]: row for row in pl.DataFrame(sim.contacts).iter_rows(named=True)}
    end = dt.datetime.combine(start + dt.timedelta(days=days), dt.time(), dt.UTC)
    bodies: list[bytes] = []
    for as_of in (end, end - dt.timedelta(days=30)):
        past = events.filter(pl.col("timestamp") < as_of)
        heavy = past.group_by("contact_id").len().filter(pl.col("len") >= EVENTS_PER_REQUEST)
        last = (
            past.join(heavy.select("contact_id"), on="contact_id")
            .sort("contact_id", "timestamp")
            .group_by("contact_id", maintain_order=True)
            .tail(EVENTS_PER_REQUEST)
        )
        for part in last.partition_by("contact_id", maintain_order=True):
            contact_id = part["contact_id"][0]
            attributes = contacts[contact_id]
            bodies.append(
                _encode(
                    {
                        "contact_id": contact_id,
                        "marketing_consent": True,
                        "as_of": _iso(as_of),
                        "events": [
                            {
                                "timestamp": _iso(e["timestamp"]),
                                "event_type": e["event_type"],
                                "channel": e["channel"],
                                "value": e["value"],
                            }
                            for e in part.iter_rows(named=True)
                        ],
                        "attributes": {
                            "signup_date": attributes["signup_date"].isoformat(),
                            "acquisition_source": attributes["acquisition_source"],
                            "segment": attributes["segment"],
                        },
                    }
                )
            )
            if len(bodies) == DISTINCT_BODIES:
                return bodies
    if not bodies:
        raise RuntimeError(f"no simulated contact has {EVENTS_PER_REQUEST} events")
    return bodies


# --- the floor: the same prediction without HTTP ------------------------------------------------


def measure_floor(scorer: Scorer, bodies: Bodies, plan: Plan) -> dict[str, Any]:
    """Per request: the body parsed and validated by the service's schema, scored and the
    answer encoded, as the service does minus HTTP and BentoML."""
    from serving.runtime import predictions_json
    from serving.schemas import BatchRequest, ContactRequest

    def one(body: bytes) -> bytes:
        return predictions_json(
            scorer.predict_rows([ContactRequest.model_validate_json(body)]), batch=False
        )

    gc.collect()
    gc.freeze()  # as the service does once its model is loaded
    out: dict[str, Any] = {}
    for kind, raw in (("features", bodies.features), ("events", bodies.events)):
        first = json.loads(one(raw[0]))
        if first["status"] != "scored" or first["model"] != "funnelcast":
            raise RuntimeError(
                f"the in-process scorer answered {first['status']} by {first['model']}"
            )
        for body in raw[:20]:  # warm-up
            one(body)
        times = []
        for i in range(plan.floor_requests):
            body = raw[i % len(raw)]
            clock = time.perf_counter_ns()
            one(body)
            times.append(time.perf_counter_ns() - clock)
        ms = np.array(times) / 1e6
        out[kind] = {
            "requests": len(ms),
            "median_ms": round(float(np.median(ms)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3),
        }
    for form in BATCH_FORMS:
        out[form] = {}
        for rows, raw in bodies.of_form(form).items():
            seconds: list[float] = []
            for i in range(plan.floor_batches + 1):
                began = time.perf_counter()
                batch = BatchRequest.model_validate_json(raw[i % len(raw)])
                scored = scorer.predict_rows(
                    batch.contacts, batch=True, feature_names=batch.feature_names
                )
                predictions_json(scored, batch=True)
                seconds.append(time.perf_counter() - began)
            median = float(np.median(seconds[1:]))  # the first one warms up
            out[form][str(rows)] = {
                "batches": plan.floor_batches,
                "median_ms": round(median * 1000, 2),
                "rows_per_s": round(rows / median),
            }
    return out


# --- the server ---------------------------------------------------------------------------------


def _server_env(folder: Path) -> dict[str, str]:
    """The server's environment: the temporary store and BentoML home, a random key, and none
    of the caller's own FUNNELCAST_* settings (a model version set in the shell would change
    what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELCAST_")}
    env |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlruns/mlflow.db",
        "BENTOML_HOME": str(folder / "bentoml"),
        "FUNNELCAST_API_KEY": secrets.token_urlsafe(32),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # LightGBM's spinning OpenMP threads would take the cores the load generator needs
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    workers: int
    key: str
    log: Path
    startup_s: float = 0.0
    workers_confirmed: bool = False
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    stopped_by_pid: list[int] = field(default_factory=list)

    def tree(self) -> list[psutil.Process]:
        """The server's processes now (BentoML's arbiter and its workers), each remembered so
        that the stop can reach it."""
        try:
            root = psutil.Process(self.process.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def rss_mib(self) -> float:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return round(total / MIB, 1)

    def cpu_seconds(self) -> dict[int, float]:
        out = {}
        for proc in self.tree():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[proc.pid] = times.user + times.system
        return out

    def request(self, path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii") + body

    def get_json(self, path: str) -> Any:
        return self._json(urllib.request.Request(self._url(path), headers=self._auth()))

    def post_json(self, path: str, body: bytes) -> Any:
        headers = {**self._auth(), "Content-Type": "application/json"}
        return self._json(urllib.request.Request(self._url(path), data=body, headers=headers))

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @staticmethod
    def _json(request: urllib.request.Request) -> Any:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(workers: int, env: dict[str, str], folder: Path) -> Server:
    """``bentoml serve`` in a process group of its own; the caller stops it (``stop``)."""
    port = _free_port()
    log = folder / f"server-{workers}-workers.log"
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Funnelcast"]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**env, "FUNNELCAST_WORKERS": str(workers)},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, port, workers, env["FUNNELCAST_API_KEY"], log)


_STARTED = re.compile(rb"\[entry_service:[^\]]*?:(\d+)\] Service \S+ initialized")


def _wait_until_ready(server: Server) -> None:
    """Poll /readyz until it answers 200 and every worker has logged its start (one ready
    worker suffices for /readyz; connections made before the other is up would all go to the
    first, and stay there), within deadlines."""
    clock = time.monotonic()
    ready_at: float | None = None
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with status {server.process.returncode} before it was "
                f"ready; its log ends:\n{_tail(server.log)}"
            )
        now = time.monotonic()
        if ready_at is None:
            if _ready(server.port):
                ready_at = now
        else:
            started = len(set(_STARTED.findall(server.log.read_bytes())))
            if started >= server.workers:
                server.workers_confirmed = True
                break
            if now - ready_at > WORKERS_TIMEOUT_S:
                break  # reported as workers_confirmed: false
        if now - clock > READY_TIMEOUT_S:
            raise RuntimeError(
                f"the server was not ready after {READY_TIMEOUT_S:.0f} s; its log ends:\n"
                f"{_tail(server.log)}"
            )
        time.sleep(0.1)
    server.startup_s = round(time.monotonic() - clock, 1)
    server.tree()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text("utf-8", errors="replace").splitlines()[-lines:])


def stop(server: Server) -> None:
    """SIGTERM to the server's process group (BentoML's arbiter stops its workers), SIGKILL
    after a grace period; the workers run in sessions of their own, so any left over are
    stopped by pid (checked against their start time, never a reused pid)."""
    server.tree()
    process = server.process
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    left = [p for pid, p in server.seen.items() if pid != process.pid and p.is_running()]
    left = [p for p in left if p.status() != psutil.STATUS_ZOMBIE]
    for proc in left:
        proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=STOP_TIMEOUT_S)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=5)
    server.stopped_by_pid = [p.pid for p in left]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)  # start_new_session: the group's id is the server's pid


def _log_problems(log: Path) -> list[str]:
    lines = log.read_text("utf-8", errors="replace").splitlines()
    return [line[:300] for line in lines if "ERROR" in line or "Traceback" in line]


# --- the load generator -------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def reopen(self) -> None:
        self.close()
        await self.open()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def exchange(self, payload: bytes) -> int:
        """Send a pre-encoded request; read the status line, the headers and exactly the body
        they announce. Returns the status."""
        if self.reader is None or self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(payload)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if length is not None:
            await self.reader.readexactly(length)
        elif chunked:
            await self._read_chunks()
        else:  # the body runs to the end of the connection
            await self.reader.read()
            close = True
        if close:
            self.close()
        return status

    async def _read_chunks(self) -> None:
        assert self.reader is not None
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            await self.reader.readexactly(size + 2)


@dataclass
class Tally:
    """What one measurement counted: successful requests' latencies and every error."""

    remaining: int | None
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    warmup_errors: Counter[str] = field(default_factory=Counter)
    deadline: float = math.inf

    def take(self) -> bool:
        """Whether another request may start: the count and the time both allow it."""
        if time.perf_counter() >= self.deadline:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True


async def _send(connection: Connection, payload: bytes, errors: Counter[str]) -> int | None:
    """One request: its latency in ns, or None when it failed (counted in ``errors``)."""
    clock = time.perf_counter_ns()
    try:
        status = await connection.exchange(payload)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        errors[type(exc).__name__] += 1
        await connection.reopen()
        return None
    elapsed = time.perf_counter_ns() - clock
    if status != 200:
        errors[f"HTTP {status}"] += 1
        return None
    return elapsed


@dataclass
class Watch:
    """CPU seconds of the server's processes and of this one (the load generator) over the
    measured window, and RSS samples of the server while it runs."""

    server: Server
    sample_every: float | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)
    _server_cpu: dict[int, float] = field(default_factory=dict)
    _client_cpu: float = 0.0

    def begin(self) -> None:
        self._server_cpu = self.server.cpu_seconds()
        self._client_cpu = _own_cpu_seconds()

    def end(self, elapsed: float) -> dict[str, Any]:
        now = self.server.cpu_seconds()
        used = {pid: now[pid] - self._server_cpu.get(pid, 0.0) for pid in now}
        workers = sorted(
            (v for pid, v in used.items() if pid != self.server.process.pid), reverse=True
        )
        total = sum(used.values())
        return {
            "server_cpu_percent": round(100 * total / elapsed, 1),
            "client_cpu_percent": round(100 * (_own_cpu_seconds() - self._client_cpu) / elapsed, 1),
            # the kernel hands each keep-alive connection to one worker for good: this shows
            # whether the load was shared
            "worker_cpu_share": [round(v / sum(workers), 2) for v in workers]
            if len(workers) > 1 and sum(workers) > 0
            else None,
        }


def _own_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def _drive(
    port: int,
    payloads: Sequence[bytes],
    *,
    concurrency: int,
    requests: int | None,
    seconds: float,
    warmup: int,
    watch: Watch,
) -> dict[str, Any]:
    """``concurrency`` connections, each sending requests back to back (cycling through the
    payloads), until ``requests`` have started or ``seconds`` have passed; the warm-up requests
    of every connection come before the clock starts.

    The connections open one after the other, each after the previous one's first answer, as a
    client's pool grows: the workers share one listening socket, and a worker woken by a burst
    of connections accepts them all (all 8 or 32 on one worker, in half the cells of a trial
    run), so opened at once their split between workers is chance."""
    tally = Tally(remaining=requests)
    warmed = asyncio.Barrier(concurrency + 1)
    start = asyncio.Event()
    opened = [asyncio.Event() for _ in range(concurrency)]

    async def connection(index: int) -> None:
        conn = Connection(port)
        try:
            if index:
                await opened[index - 1].wait()
            await conn.open()
            turn = index
            for _ in range(warmup):
                await _send(conn, payloads[turn % len(payloads)], tally.warmup_errors)
                opened[index].set()
                turn += concurrency
            opened[index].set()
            await warmed.wait()
            await start.wait()
            while tally.take():
                latency = await _send(conn, payloads[turn % len(payloads)], tally.errors)
                if latency is not None:
                    tally.latencies_ns.append(latency)
                turn += concurrency
        except BaseException:
            opened[index].set()  # the others must not wait for this one
            await warmed.abort()
            raise
        finally:
            conn.close()

    async def sampler(began: float) -> None:
        assert watch.sample_every is not None
        while True:
            watch.samples.append((round(time.perf_counter() - began, 1), watch.server.rss_mib()))
            left = tally.deadline - time.perf_counter()
            if left <= 0:
                return
            await asyncio.sleep(min(watch.sample_every, left))

    tasks = [asyncio.create_task(connection(i)) for i in range(concurrency)]
    try:
        await warmed.wait()
    except asyncio.BrokenBarrierError:
        await asyncio.gather(*tasks)  # raises the failed connection's own error
        raise
    watch.begin()
    began = time.perf_counter()
    tally.deadline = began + seconds
    start.set()
    sampling = asyncio.create_task(sampler(began)) if watch.sample_every else None
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    figures = watch.end(elapsed)
    if sampling is not None:
        await sampling
    return _summary(tally, concurrency=concurrency, elapsed=elapsed, requests=requests) | figures


def _summary(
    tally: Tally, *, concurrency: int, elapsed: float, requests: int | None
) -> dict[str, Any]:
    ms = np.array(tally.latencies_ns, dtype=np.float64) / 1e6
    errors = tally.errors + tally.warmup_errors
    done = len(ms) + sum(tally.errors.values())
    spread: dict[str, float | None] = dict.fromkeys(("p50_ms", "p99_ms", "max_ms", "mean_ms"))
    if len(ms):
        p50, p99 = np.percentile(ms, [50, 99])
        spread = {"p50_ms": p50, "p99_ms": p99, "max_ms": ms.max(), "mean_ms": ms.mean()}
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "seconds": round(elapsed, 2),
        "stopped_by": "count" if requests is not None and done >= requests else "time",
        "req_per_s": round(len(ms) / elapsed, 1),
        **{k: None if v is None else round(float(v), 3) for k, v in spread.items()},
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }


def measure(
    server: Server,
    path: str,
    payloads: Sequence[bytes],
    *,
    concurrency: int,
    requests: int | None,
    seconds: float,
    warmup: int,
    sample_every: float | None = None,
) -> dict[str, Any]:
    """One measurement: ``concurrency`` connections driven by ``_drive``. When there are at
    least as many connections as workers and one worker still did nearly all the work (the
    workers share one listening socket, and which one accepts a connection is the kernel's
    race: both connections landed on one worker in 4 of the 6 two-client batch cells of the
    results of 2026-12-04), it is measured again on new connections, up to ``SPREAD_ATTEMPTS``
    times. ``attempts`` says how many it took; ``one_worker`` is true when every attempt stayed
    on one worker. The errors are those of every attempt."""
    requests_bytes = [server.request(path, body) for body in payloads]
    # a measurement that cannot finish (a hung server) fails instead of hanging the benchmark
    limit = seconds + 120 + warmup * concurrency * 5
    attempts = 0
    earlier_errors: Counter[str] = Counter()
    while True:
        attempts += 1
        watch = Watch(server, sample_every=sample_every)
        figures = asyncio.run(
            asyncio.wait_for(
                _drive(
                    server.port,
                    requests_bytes,
                    concurrency=concurrency,
                    requests=requests,
                    seconds=seconds,
                    warmup=warmup,
                    watch=watch,
                ),
                timeout=limit,
            )
        )
        one_sided = on_one_worker(figures["worker_cpu_share"], concurrency)
        if not one_sided or attempts == SPREAD_ATTEMPTS:
            break
        earlier_errors.update(figures["error_kinds"])
    # an attempt measured again still counts its errors: none is hidden by a retry
    kinds = Counter(figures["error_kinds"]) + earlier_errors
    figures |= {
        "attempts": attempts,
        "one_worker": one_sided,
        "errors": sum(kinds.values()),
        "error_kinds": dict(kinds),
    }
    if figures["req_per_s"]:
        # what a request costs the server, all processes together: against the floor's
        # median, the CPU that HTTP and BentoML add
        cpu = figures["server_cpu_percent"] * 10 / figures["req_per_s"]
        figures["server_cpu_ms_per_request"] = round(cpu, 3)
    if sample_every:
        figures["rss_mib_samples"] = watch.samples
    return dict(figures)


def on_one_worker(share: Sequence[float] | None, concurrency: int) -> bool:
    """Whether a measurement meant to spread over the workers (at least one connection per
    worker) ran on one of them: a worker did ``ONE_WORKER_SHARE`` or more of the work."""
    if not share or len(share) < 2 or concurrency < len(share):
        return False
    return max(share) >= ONE_WORKER_SHARE


def run_server(
    workers: int,
    env: dict[str, str],
    bodies: Bodies,
    plan: Plan,
    parts: Sequence[str],
    *,
    soak: bool,
    folder: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Start a server with ``workers`` workers, measure it and stop it, whatever happens: its
    figures (or its failure) and the soak's."""
    entry: dict[str, Any] = {"date_utc": _now(), "workers": workers}
    soaked: dict[str, Any] | None = None
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    server = start(workers, env, folder)
    try:
        with console.status(f"{label}: starting bentoml serve"):
            _wait_until_ready(server)
        entry |= {
            "port": server.port,
            "startup_s": server.startup_s,
            "workers_confirmed": server.workers_confirmed,
        }
        _check_answers(server, bodies)
        entry["rss_mib_before"] = server.rss_mib()
        for kind in KINDS:
            if kind in parts:
                entry[kind] = {
                    str(concurrency): _measure_predict(server, bodies, kind, concurrency, plan)
                    for concurrency in CONCURRENCY
                }
        if "batch" in parts:
            for form in BATCH_FORMS:
                entry[form] = {
                    str(rows): {
                        # one client, and one per worker
                        str(concurrency): _measure_batch(
                            server, bodies, form, rows, concurrency, plan
                        )
                        for concurrency in sorted({1, workers})
                    }
                    for rows in bodies.of_form(form)
                }
        entry["rss_mib_after"] = server.rss_mib()
        if soak:
            soaked = _soak(server, bodies, plan, label)
    except Exception as exc:  # reported, never hidden: printed, written, exit status 1
        entry["failure"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]{label}: {entry['failure']}[/]")
    finally:
        stop(server)
    entry |= {
        "server_pids": sorted(server.seen),
        "exit_status": server.process.returncode,
        "stopped_by_pid": server.stopped_by_pid,
        "log_problems": _log_problems(server.log)[:10],
    }
    return entry, soaked


def _measure_predict(
    server: Server, bodies: Bodies, kind: str, concurrency: int, plan: Plan
) -> dict[str, Any]:
    label = f"{server.workers} worker(s): {kind} at concurrency {concurrency}"
    with console.status(label):
        return measure(
            server,
            "/predict",
            bodies.of(kind),
            concurrency=concurrency,
            requests=plan.requests,
            seconds=plan.seconds,
            warmup=plan.warmup,
        )


def _measure_batch(
    server: Server, bodies: Bodies, form: str, rows: int, concurrency: int, plan: Plan
) -> dict[str, Any]:
    label = (
        f"{server.workers} worker(s): batches of {rows:,} rows ({BATCH_FORMS[form]}) at "
        f"concurrency {concurrency}"
    )
    with console.status(label):
        cell = measure(
            server,
            "/predict_batch",
            bodies.of_form(form)[rows],
            concurrency=concurrency,
            requests=plan.batch_requests,
            seconds=plan.batch_seconds,
            warmup=1,
        )
    return cell | {"rows_per_request": rows, "rows_per_s": round(cell["req_per_s"] * rows)}


def _soak(server: Server, bodies: Bodies, plan: Plan, label: str) -> dict[str, Any]:
    """Concurrency 8 for ``soak_seconds`` (features on half the connections, raw events on the
    other half), the server's RSS sampled as it goes."""
    mixed = [body for pair in zip(bodies.features, bodies.events, strict=False) for body in pair]
    with console.status(f"{label}: soak of {plan.soak_seconds:.0f} s at concurrency 8"):
        figures = measure(
            server,
            "/predict",
            mixed,
            concurrency=8,
            requests=None,
            seconds=plan.soak_seconds,
            warmup=plan.warmup,
            sample_every=plan.sample_every,
        )
    rss = [mib for _, mib in figures["rss_mib_samples"]]
    first, last = rss[0], rss[-1]
    return figures | {
        "date_utc": _now(),
        "workers": server.workers,
        "bodies": "features on half the connections, raw events on the other half",
        "rss_mib_first": first,
        "rss_mib_last": last,
        "rss_mib_max": max(rss),
        "rss_growth_mib": round(last - first, 1),
        "rss_growth_ratio": round((last - first) / first, 4),
    }


def _check_answers(server: Server, bodies: Bodies) -> None:
    """The server serves the trained model and scores both kinds of body: a benchmark of 4xx
    answers or of the rules fallback would measure nothing."""
    served = server.get_json("/metadata")
    if served.get("model") != "funnelcast" or served.get("features") != bodies.feature_names:
        raise RuntimeError(
            f"the server serves {served.get('model')} with {len(served.get('features') or [])} "
            f"features; the bodies have the {len(bodies.feature_names)} of the trained model"
        )
    for kind, body in (("features", bodies.features[0]), ("events", bodies.events[0])):
        try:
            answer = server.post_json("/predict", body)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"a {kind} request got {exc.code}: {exc.read()[:300]!r}") from None
        if answer.get("status") != "scored":
            raise RuntimeError(f"a {kind} request was not scored: {answer.get('status')}")
    answer = server.post_json("/predict", bodies.stack[0])
    if answer.get("status") != "no_consent":
        raise RuntimeError(f"a request without consent was answered {answer.get('status')}")
    size = min(bodies.batches)
    by_name, compact = (
        server.post_json("/predict_batch", body)
        for body in (bodies.batches[size][0], bodies.tables[size][0])
    )
    if by_name != compact:
        raise RuntimeError("the compact form of a batch was answered unlike the form by name")


# --- figures and targets ------------------------------------------------------------------------


def http_over_floor(result: dict[str, Any]) -> dict[str, Any]:
    """HTTP p50 at concurrency 1 over the in-process median, per server and kind of body."""
    floor = result.get("floor") or {}
    out: dict[str, Any] = {}
    for workers, entry in result.get("servers", {}).items():
        for kind in ("features", "events"):
            cell = (entry.get(kind) or {}).get("1")
            base = (floor.get(kind) or {}).get("median_ms")
            if cell and cell.get("p50_ms") and base:
                out[f"{kind}, {workers} worker(s)"] = {
                    "http_p50_ms": cell["p50_ms"],
                    "in_process_median_ms": base,
                    "ratio": round(cell["p50_ms"] / base, 2),
                }
    return out


def _target(
    name: str, observed: float | None, threshold: float, *, at_most: bool, reason: str = ""
) -> dict[str, Any]:
    if observed is None:
        return {"target": name, "status": "not measured", "reason": reason or "not measured"}
    met = observed <= threshold if at_most else observed >= threshold
    return {
        "target": name,
        "status": "met" if met else "missed",
        "observed": observed,
        "threshold": threshold,
        "reason": reason,
    }


def check_targets(
    result: dict[str, Any], *, measured_now: Sequence[int], soaked: bool
) -> list[dict[str, Any]]:
    """Each target of the issue, judged on the 2-worker server's figures; errors are those of
    this run's measurements."""
    two = result.get("servers", {}).get(str(TARGET_WORKERS), {})
    features = two.get("features", {})
    c8, c32 = features.get("8", {}), features.get("32", {})
    # judged on the compact form, the one for bulk scoring; the form by name is beside it
    batch = two.get("batch_values", {}).get("1000", {})
    by_name = two.get("batch", {}).get("1000", {}).get("1", {}).get("rows_per_s")
    two_clients = batch.get(str(TARGET_WORKERS), {})
    both = two_clients.get("rows_per_s")
    lopsided = " (all on one worker)" if two_clients.get("one_worker") else ""
    beside = []
    if by_name:
        beside.append(f"features by name, one client: {by_name:,} rows/s")
    if both:
        beside.append(f"two clients on 2 workers: {both:,} rows/s{lopsided}")
    # one worker's figure beside it: a worker then gathers all eight connections' requests
    # into one scoring call (serving/gather.py), and the load generator has a core to itself
    one = result.get("servers", {}).get("1", {}).get("features", {}).get("8", {}).get("p99_ms")
    targets = [
        _target(
            f"p99 <= {P99_MAX_MS:g} ms, feature requests at concurrency 8, 2 workers",
            c8.get("p99_ms"),
            P99_MAX_MS,
            at_most=True,
            reason="" if one is None or TARGET_WORKERS == 1 else f"1 worker: {one:g} ms",
        ),
        _target(
            f">= {REQUESTS_PER_S_MIN:,} req/s, feature requests at concurrency 32, 2 workers",
            c32.get("req_per_s"),
            REQUESTS_PER_S_MIN,
            at_most=False,
        ),
        _target(
            f"batch >= {BATCH_ROWS_PER_S_MIN:,} rows/s, 1,000 rows per request, one client, "
            "compact form (feature_names + values)",
            batch.get("1", {}).get("rows_per_s"),
            BATCH_ROWS_PER_S_MIN,
            at_most=False,
            reason="; ".join(beside),
        ),
    ]
    errors, where = _errors(result, measured_now, soaked=soaked)
    targets.append(
        _target(
            "0 errors",
            errors,
            0,
            at_most=True,
            reason="; ".join(where) if where else "no errors in any measurement of this run",
        )
    )
    targets.append(_memory_target(result.get("soak")))
    return targets


def _errors(
    result: dict[str, Any], measured_now: Sequence[int], *, soaked: bool
) -> tuple[int | None, list[str]]:
    """Errors of every measurement of this run's servers (and their failures)."""
    total: int | None = None
    where: list[str] = []
    cells: list[tuple[str, dict[str, Any]]] = []
    for workers in measured_now:
        entry = result.get("servers", {}).get(str(workers), {})
        if "failure" in entry:
            where.append(f"{workers} worker(s): {entry['failure']}")
            total = (total or 0) + 1
        for kind in KINDS:
            for conc, cell in (entry.get(kind) or {}).items():
                cells.append((f"{kind} c={conc} {workers}w", cell))
        for form, rows, conc, cell in _batch_cells(entry):
            cells.append((f"{form} {rows} c={conc} {workers}w", cell))
    if soaked and result.get("soak"):
        cells.append(("soak", result["soak"]))
    for name, cell in cells:
        total = (total or 0) + cell["errors"]
        if cell["errors"]:
            where.append(f"{name}: {cell['error_kinds']}")
    return total, where


def _batch_cells(entry: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """A server's batch measurements: (form, rows, concurrency, cell), each form in turn."""
    return [
        (form, rows, conc, cell)
        for form in BATCH_FORMS
        for rows, by_conc in (entry.get(form) or {}).items()
        for conc, cell in by_conc.items()
    ]


def _memory_target(soak: dict[str, Any] | None) -> dict[str, Any]:
    name = (
        f"memory flat over a {SOAK_MIN_SECONDS // 60}-minute run "
        f"(RSS growth <= {MEMORY_GROWTH_MAX:.0%})"
    )
    if not soak:
        return _target(name, None, MEMORY_GROWTH_MAX, at_most=True, reason="no soak was run")
    if soak["seconds"] < SOAK_MIN_SECONDS:
        return _target(
            name,
            None,
            MEMORY_GROWTH_MAX,
            at_most=True,
            reason=f"the soak ran {soak['seconds']:.0f} s, shorter than the target's "
            f"{SOAK_MIN_SECONDS} s (growth {soak['rss_growth_mib']:+.1f} MiB)",
        )
    return _target(
        name,
        soak["rss_growth_ratio"],
        MEMORY_GROWTH_MAX,
        at_most=True,
        reason=f"{soak['rss_mib_first']:.0f} -> {soak['rss_mib_last']:.0f} MiB over "
        f"{soak['seconds']:.0f} s and {soak['requests']:,} requests",
    )


# --- printing -----------------------------------------------------------------------------------


def _print_machine(result: dict[str, Any]) -> None:
    m = result["machine"]
    console.print(
        f"[bold]funnelcast serving benchmark[/], {result['date_utc']}, on {m['cpu_model']} "
        f"({m['cpu_count']} cores, {m['total_ram_gib']} GiB), Python {m['python']}, "
        f"BentoML {m['libraries'].get('bentoml')}; load average at start "
        f"{', '.join(str(x) for x in m['load_average_at_start'])}"
        + ("" if result["plan"].get("reasons", True) else "; requests WITHOUT reasons")
    )


def _print_floor(floor: dict[str, Any]) -> None:
    batches = ", ".join(
        f"{int(rows):,} rows ({BATCH_FORMS[form]}) {b['rows_per_s']:,} rows/s"
        for form in BATCH_FORMS
        for rows, b in (floor.get(form) or {}).items()
    )
    console.print(
        f"In-process floor (parse + validate + score, no HTTP): features median "
        f"{floor['features']['median_ms']:.2f} ms (p99 {floor['features']['p99_ms']:.2f}), "
        f"{EVENTS_PER_REQUEST} raw events median {floor['events']['median_ms']:.2f} ms "
        f"(p99 {floor['events']['p99_ms']:.2f}); batches: {batches}."
    )


def _concurrency(conc: str, cell: dict[str, Any]) -> str:
    """The concurrency column, with how many measurements it took to spread the connections
    over the workers, or that they never spread."""
    if cell.get("one_worker"):
        return f"{conc}, 1 worker"
    attempts = cell.get("attempts", 1)
    return f"{conc} (try {attempts})" if attempts > 1 else conc


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_servers(result: dict[str, Any]) -> None:
    table = Table(title="POST /predict over HTTP (keep-alive, 127.0.0.1)")
    for column in ("workers", "body", "conc.", "requests", "req/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right" if column not in ("body",) else "left")
    for column in ("errors", "server CPU", "client CPU"):
        table.add_column(column, justify="right")
    batch = Table(title="POST /predict_batch (feature rows)")
    for column in (
        "workers",
        "form",
        "rows",
        "conc.",
        "requests",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "errors",
    ):
        batch.add_column(column, justify="left" if column == "form" else "right")
    for workers, entry in sorted(result.get("servers", {}).items()):
        for kind in KINDS:
            label = {
                "features": "features",
                "events": f"{EVENTS_PER_REQUEST} events",
                "stack": "no consent",
            }[kind]
            for conc, cell in (entry.get(kind) or {}).items():
                table.add_row(
                    workers,
                    label,
                    _concurrency(conc, cell),
                    f"{cell['requests']:,}",
                    f"{cell['req_per_s']:,.0f}",
                    _ms(cell["p50_ms"]),
                    _ms(cell["p99_ms"]),
                    _ms(cell["max_ms"]),
                    str(cell["errors"]),
                    f"{cell['server_cpu_percent']:.0f}%, "
                    f"{cell.get('server_cpu_ms_per_request', 0):.2f} ms/req",
                    f"{cell['client_cpu_percent']:.0f}%",
                )
        for form, rows, conc, cell in _batch_cells(entry):
            batch.add_row(
                workers,
                BATCH_FORMS[form],
                f"{int(rows):,}",
                _concurrency(conc, cell),
                f"{cell['requests']:,}",
                f"{cell['rows_per_s']:,}",
                _ms(cell["p50_ms"]),
                _ms(cell["p99_ms"]),
                str(cell["errors"]),
            )
    console.print(table)
    console.print(
        "no consent: the feature bodies with marketing_consent false, answered without scoring "
        "(HTTP, BentoML, the API key check and parsing only)"
    )
    console.print(batch)
    for workers, entry in sorted(result.get("servers", {}).items()):
        if "failure" in entry:
            console.print(f"{workers} worker(s): [red]{entry['failure']}[/]")
        if "rss_mib_before" in entry and "rss_mib_after" in entry:
            console.print(
                f"{workers} worker(s): server RSS {entry['rss_mib_before']:.0f} MiB before the "
                f"load, {entry['rss_mib_after']:.0f} MiB after; ready in "
                f"{entry['startup_s']:.1f} s"
                + ("" if entry.get("workers_confirmed") else " (workers' start not confirmed)")
            )
    for name, ratio in result.get("ratios", {}).items():
        console.print(
            f"HTTP over in-process, {name}: p50 {ratio['http_p50_ms']:.2f} ms / median "
            f"{ratio['in_process_median_ms']:.2f} ms = {ratio['ratio']:.1f}x"
        )
    soak = result.get("soak")
    if soak:
        samples = ", ".join(f"{mib:.0f}" for _, mib in soak["rss_mib_samples"])
        console.print(
            f"Soak, {soak['workers']} workers, concurrency 8, {soak['seconds']:.0f} s: "
            f"{soak['requests']:,} requests, {soak['req_per_s']:,.0f} req/s, p50 "
            f"{_ms(soak['p50_ms'])} ms, p99 {_ms(soak['p99_ms'])} ms, {soak['errors']} errors; "
            f"RSS MiB every {result['plan']['sample_every']:g} s: {samples} "
            f"({soak['rss_growth_mib']:+.1f} MiB, {soak['rss_growth_ratio']:+.1%})"
        )


def _print_targets(targets: list[dict[str, Any]]) -> None:
    console.rule("targets")
    for target in targets:
        status = target["status"]
        colour = {"met": "green", "missed": "red"}.get(status, "yellow")
        observed = target.get("observed")
        shown = "" if observed is None else f" (observed {observed:,})"
        reason = f": {target['reason']}" if target.get("reason") else ""
        console.print(f"[{colour}]{status.upper():>12}[/]  {target['target']}{shown}{reason}")


if __name__ == "__main__":
    sys.exit(main())
