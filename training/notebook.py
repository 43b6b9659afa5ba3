"""What the retraining notebook (``notebooks/retrain.ipynb``) needs around the training steps,
kept here with tests, since a notebook holds no logic:

- its parameters checked: papermill reads ``-p force_promotion false`` as the text 'false',
  which Python takes as true, so a run meant to keep the gate forced a worse model to champion
  and one meant to stop without consent trained on everybody (notebook review);
- the project's store as the default when Jupyter or VS Code starts the notebook in its own
  folder: the default ``mlruns/`` was then ``notebooks/mlruns/``, another store, unignored by
  git, and the champion promoted there was one ``serve`` never saw (the working folder is
  kept: a path the user writes is the notebook's folder's, as Jupyter reads it);
- an ingested folder read with the notebook's words (a folder of part files is
  ``funnelcast train``'s);
- the test window's quality as a table with the rows ``funnelcast train`` prints;
- the settings it trains with, read as ``funnelcast train`` reads them: a settings file
  (``config``), a feature spec, a source's mapping and the horizon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from features.errors import InputError
from training.evaluation import buyers_line, quality_rows

if TYPE_CHECKING:
    from features.settings import RulesSettings
    from features.spec import FeatureSpec
    from training.settings import TrainingSettings

__all__ = [
    "TrainingSetup",
    "buyers_line",
    "check_parameters",
    "project_store",
    "quality_table",
    "read_data_folder",
    "training_setup",
]

PROJECT = Path(__file__).resolve().parent.parent
FLAGS = ("promote_if_better", "force_promotion", "assume_consent")
COUNTS = {"contacts": 1, "days": 1, "tune_trials": 0, "horizon_days": 0}  # each one's least
TEXTS = ("events", "config", "spec", "source", "model_name", "observe_until", "tracking_uri")
PATHS = ("events", "config", "spec")  # a pathlib.Path is taken for these


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Each parameter of the notebook's ``parameters`` cell is of its kind, or an
    ``InputError`` names it and says how papermill takes it."""
    for name in FLAGS:
        value = parameters[name]
        if not isinstance(value, bool):
            raise InputError(
                f"parameter {name} is {value!r}, not True or False (papermill passes "
                f"-p {name} false as the text 'false', which Python takes as true); give "
                f"-p {name} False, or -y '{name}: false'"
            )
    for name, least in COUNTS.items():
        value = parameters[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(
                f"parameter {name} is {value!r}; give a whole number of {least} or more "
                f"(-p {name} 5)"
            )
    for name in TEXTS:
        value = parameters[name]
        if value is None or isinstance(value, str):  # None: as "", the default
            continue
        if name in PATHS and isinstance(value, os.PathLike):
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        raise InputError(
            f"parameter {name} is {value!r}, not text"
            + (
                f" (papermill reads -p {name} {value} as a number); give it as text with "
                f"-r {name} {value}"
                if number
                else f"; give it as text (-p {name} VALUE)"
            )
        )


def project_store(tracking_uri: str | None, cwd: Path | None = None) -> str | None:
    """The project's MLflow store (``mlruns/`` in the project's folder, as an absolute URI)
    when the kernel started in the notebook's own folder (``notebooks/``, where Jupyter and VS
    Code start it) and no store is named (``tracking_uri`` empty, ``MLFLOW_TRACKING_URI``
    unset): the store ``make demo`` and ``funnelcast serve`` use. None otherwise: a store
    named is used as named, and run from elsewhere (papermill from the project) the default
    ``mlruns/`` is the working folder's, as for every command."""
    here = (cwd or Path.cwd()).resolve()
    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or here != PROJECT / "notebooks":
        return None
    return f"sqlite:///{PROJECT / 'mlruns' / 'mlflow.db'}"


def read_data_folder(
    events: str | os.PathLike[str],
) -> tuple[pa.Table, pa.Table | None, pa.Table | None]:
    """The events, contacts (None when the folder has no contacts.parquet) and provided
    labels (None when it has no labels.parquet) of a folder written by ``funnelcast ingest``
    or ``simulate``; ``events`` may name its events.parquet. Anything else is an
    ``InputError`` saying what to give."""
    from features.io import read_table

    path = Path(events)
    if path.name == "events.parquet" and path.is_file():
        path = path.parent
    if not path.exists():
        raise InputError(
            f"events={str(events)!r}: no such folder (relative to {Path.cwd()}); give the folder "
            "`funnelcast ingest` or `simulate` wrote, or leave events empty to simulate"
        )
    if not path.is_dir():
        raise InputError(
            f"events={str(events)!r} is a file; give the folder `funnelcast ingest` or `simulate` "
            "wrote (its events.parquet, contacts.parquet and labels.parquet are read)"
        )
    table = path / "events.parquet"
    if not table.is_file():
        found = "a folder" if table.is_dir() else "missing"
        raise InputError(
            f"{table} is {found}: the notebook reads a folder written by `funnelcast ingest` "
            "or `simulate`; train on a folder of Parquet part files with `funnelcast train "
            f"--events '{path}/*.parquet'` (or '{path}/*/*.parquet' for parts in subfolders)"
        )
    contacts = path / "contacts.parquet"
    labels = path / "labels.parquet"  # a source's provided labels, as `funnelcast run` uses
    return (
        read_table(table),
        read_table(contacts) if contacts.exists() else None,
        read_table(labels) if labels.exists() else None,
    )


def quality_table(metrics: Mapping[str, float]) -> pl.DataFrame:
    """The test window's quality, the rows ``funnelcast train`` prints: the stages'
    macro-F1 over every stage and over the labels' stages (a stage the labels never hold
    counts as an F1 of 0 for whoever calls it), accuracy, and the purchase metrics, for the
    rules, the RFM baseline and funnelcast."""
    rows = quality_rows(metrics)
    return pl.DataFrame(
        {
            "test window": [row.label for row in rows],
            "rules": [row.rules for row in rows],
            "RFM baseline": [row.rfm for row in rows],
            "funnelcast": [row.funnelcast for row in rows],
        },
        schema={
            "test window": pl.String,
            "rules": pl.Float64,
            "RFM baseline": pl.Float64,
            "funnelcast": pl.Float64,
        },
    )


@dataclass(frozen=True)
class TrainingSetup:
    """What the notebook trains with, and the lines that say where it came from."""

    config: Path | None  # the settings file (its simulator settings too), None: the shipped
    settings: TrainingSettings
    spec: FeatureSpec
    spec_text: str  # logged beside the model, as `funnelcast train` logs it
    rules: RulesSettings
    said: list[str]


def training_setup(
    *,
    config: str | os.PathLike[str] | None = None,
    spec: str | os.PathLike[str] | None = None,
    source: str | None = None,
    model_name: str | None = None,
    observe_until: str | None = None,
    horizon_days: int = 0,
) -> TrainingSetup:
    """The settings, feature spec and rules ``funnelcast train --config --spec --source
    --model-name --observe-until --horizon`` trains with (empty or 0: not given). A source's
    mapping gives its ``training:`` settings unless ``config`` is given, which gives them
    whole, as the command does; ``model_name``, ``observe_until`` and ``horizon_days`` go over
    either. Every problem is an ``InputError`` naming the parameter."""
    from features.settings import load_rules_settings
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import require_trainable_spec
    from training.settings import for_training, load_training_settings, source_training

    config_path = _given_file("config", config, "a copy of features/config/default.yaml")
    spec_path = _given_file("spec", spec, "a copy of features/config/feature_spec.yaml")
    said = []
    overrides: dict[str, Any] = {}
    if source and config_path is not None:
        mapped = source_training(source)
        name = None if model_name else mapped.pop("model_name", None)  # named: it is used
        mapped.pop("model_name", None)
        if mapped or name:
            said.append(
                f"The {source} mapping's training settings are not used: config gives them"
                + (
                    f"; to use them, copy its {', '.join(mapped)} into the config's `training:`"
                    if mapped
                    else ""
                )
                + (f" (and give model_name={name!r} for its model name)" if name else "")
            )
    else:
        overrides = source_training(source or None)
    if model_name:
        overrides["model_name"] = model_name
    if observe_until:
        overrides["observe_until"] = observe_until
    if horizon_days:
        overrides["horizon_days"] = horizon_days
    settings = load_training_settings(config_path, **overrides)
    for_training(settings)  # LightGBM parameters training refuses: now, not after the data
    base = f"those of {config_path}" if config_path else "the shipped ones"
    said.append(f"training settings: {base}" + (f", with {overrides}" if overrides else ""))
    if spec_path is not None:
        said.append(f"feature spec: {spec_path}")
    feature_spec = load_feature_spec(spec_path)
    require_trainable_spec(feature_spec)
    return TrainingSetup(
        config=config_path,
        settings=settings,
        spec=feature_spec,
        spec_text=spec_path.read_text("utf-8") if spec_path else shipped_spec_text(),
        rules=load_rules_settings(config_path),
        said=said,
    )


def _given_file(name: str, value: str | os.PathLike[str] | None, what: str) -> Path | None:
    """A file parameter's path, or None when empty; a path that is no file is an
    ``InputError`` naming the parameter and where a relative path starts."""
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise InputError(
            f"{name}={str(value)!r}: {found} (relative to {Path.cwd()}); give {what} with your "
            f"settings, or leave {name} empty for the shipped one"
        )
    return path
