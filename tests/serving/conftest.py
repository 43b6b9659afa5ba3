"""A trained, promoted model in a private MLflow store, and the environment a service needs to
serve it; shared by the service tests at every level (class, ASGI, real server)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
import pytest

from features.settings import load_rules_settings
from features.simulator import load_simulator_settings, simulate
from features.spec import load_feature_spec, shipped_spec_text
from training.pipeline import train_models
from training.registry import promote
from training.settings import load_training_settings
from training.tracking import configure_tracking, data_fingerprint, log_training, training_run

# the simulated period ends here; every request's as_of is on or before it
LAST_DAY = dt.date(2026, 4, 30)


@dataclass(frozen=True)
class Served:
    store: str  # MLflow tracking URI holding version 1 as champion
    folder: Path
    events: pa.Table
    contacts: pa.Table
    api_key: str
    as_of: dt.datetime

    def env(self, **extra: str) -> dict[str, str]:
        """The service's environment variables for this store."""
        return {
            "MLFLOW_TRACKING_URI": self.store,
            "FUNNELCAST_API_KEY": self.api_key,
            **extra,
        }


def in_zone(table: pa.Table, name: str, zone: str) -> pa.Table:
    """``table`` with its time column ``name`` labelled ``zone`` ('+05:30', as pandas writes
    India's times): the same instants. A date becomes its UTC midnight."""
    position = table.schema.get_field_index(name)
    column = table[name]
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("s")).cast(pa.timestamp("s", "UTC"))
    return table.set_column(position, name, column.cast(pa.timestamp("ms", zone)))


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served")
    previous = mlflow.get_tracking_uri()
    uri = configure_tracking(f"sqlite:///{folder}/mlruns/mlflow.db")
    start = LAST_DAY - dt.timedelta(days=119)
    sim = simulate(load_simulator_settings(), contacts=6000, days=120, seed=11, start=start)
    spec, rules, settings = load_feature_spec(), load_rules_settings(), load_training_settings()
    result = train_models(sim.events, sim.contacts, spec=spec, rules=rules, settings=settings)
    with training_run():
        version = log_training(
            result,
            spec=spec,
            spec_text=shipped_spec_text(),
            rules=rules,
            settings=settings,
            fingerprint=data_fingerprint(sim.events),
        )
    assert version is not None
    promote(settings.registry.model_name, version=version, force=True)
    yield Served(
        store=uri,
        folder=folder,
        events=sim.events,
        contacts=sim.contacts,
        api_key=secrets.token_urlsafe(32),
        as_of=dt.datetime(2026, 4, 20, 9, 30, tzinfo=dt.UTC),
    )
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def service_env(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The process environment pointed at the served store, with a key, and MLflow's own
    tracking and registry URIs too (undone after): a test before it in the same process that
    pointed MLflow at its own store (``configure_tracking``) left the registry there, and
    code that reads MLflow's globals (``build_bento``) looked for the model in that store
    (CI, where the order of a worker's test files changes from run to run)."""
    for key, value in served.env().items():
        monkeypatch.setenv(key, value)
    for key in (
        "FUNNELCAST_MODEL_VERSION",
        "FUNNELCAST_BENTO_MODEL",
        "FUNNELCAST_ALLOW_RULES_FALLBACK",
        "FUNNELCAST_API_KEY_FILE",
        "FUNNELCAST_MAX_BODY_MB",
    ):
        monkeypatch.delenv(key, raising=False)
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(served.store)
    mlflow.set_registry_uri(served.store)
    yield served
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def compact_body(contacts: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """A /predict_batch body of precomputed features in the compact form: the names once, each
    contact's values (from its ``features``) in their order."""
    return {
        "feature_names": names,
        "contacts": [
            {k: v for k, v in c.items() if k != "features"}
            | {"values": [c["features"][n] for n in names]}
            for c in contacts
        ],
    }


def contact_body(served: Served, contact_id: str, *, last: int = 200) -> dict[str, object]:
    """A /predict body for one simulated contact: its last ``last`` events before as_of and its
    attributes, as a CRM would send them (JSON types only)."""
    import polars as pl

    events = (
        pl.from_arrow(served.events)
        .filter((pl.col("contact_id") == contact_id) & (pl.col("timestamp") < served.as_of))
        .sort("timestamp")
        .tail(last)
    )
    contact = pl.from_arrow(served.contacts).filter(pl.col("contact_id") == contact_id).to_dicts()
    attributes = {
        k: (v.isoformat() if isinstance(v, dt.date) else v)
        for k, v in contact[0].items()
        if k not in ("contact_id", "marketing_consent")
    }
    return {
        "contact_id": contact_id,
        "marketing_consent": True,
        "as_of": served.as_of.isoformat().replace("+00:00", "Z"),
        "events": [
            {
                "timestamp": row["timestamp"].isoformat().replace("+00:00", "Z"),
                "event_type": row["event_type"],
                "channel": row["channel"],
                "value": row["value"],
            }
            for row in events.iter_rows(named=True)
        ],
        "attributes": attributes,
    }


@pytest.fixture(scope="session")
def active_contacts(served: Served) -> list[str]:
    """Contacts with events in the 90 days before as_of, busiest last (a spread of histories)."""
    import polars as pl

    counts = (
        pl.from_arrow(served.events)
        .filter(
            (pl.col("timestamp") < served.as_of)
            & (pl.col("timestamp") >= served.as_of - dt.timedelta(days=90))
        )
        .group_by("contact_id")
        .len()
        .sort(["len", "contact_id"])
    )
    ids = counts["contact_id"].to_list()
    step = max(1, len(ids) // 60)
    return ids[::step][:60] + ids[-5:]
