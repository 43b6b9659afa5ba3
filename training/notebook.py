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
  (``config``), a feature spec, a source's mapping and the horizon; a source without the
  events ingested from it is refused (the notebook simulated, and registered the simulation's
  model under the source's name: notebook review);
- the checks ``funnelcast train`` makes before a run starts, and its sentences after one;
- errors in the notebook's words: its parameters, where messages name the command line's
  options (``notebook_errors``);
- LightGBM's OpenMP threads waiting passively, and MLflow's notes for its own developers
  kept out of the output, as the command line has them (3-5x slower training without the
  first on a machine shared with other work, measured by the notebook review).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from features.errors import InputError
from features.telemetry import quiet_mlflow

if TYPE_CHECKING:
    from features.settings import RulesSettings
    from features.spec import FeatureSpec
    from training.settings import TrainingSettings

__all__ = [
    "TrainingSetup",
    "buyers_line",
    "check_before_run",
    "check_parameters",
    "notebook_errors",
    "notebook_words",
    "project_store",
    "quality_table",
    "quiet_mlflow",
    "read_data_folder",
    "training_setup",
]

# LightGBM's OpenMP threads spin while they wait unless told otherwise: on a small machine
# shared with other work that made the notebook's training 3-5x slower than `funnelcast
# train`, which sets this (notebook review); on an idle one spinning is faster (about 2.5x
# for the stage model, diff review), the trade the command line made. OpenMP reads it once,
# as it loads: this module loads nothing that loads it (scikit-learn and LightGBM are
# imported where used), and the notebook imports it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# tqdm's notebook bars need ipywidgets, which nothing here draws: its warning when a library
# imports tqdm.auto (next, in the notebook's imports) is noise in every run's output
warnings.filterwarnings("ignore", message="IProgress not found")

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


def buyers_line(metrics: Mapping[str, float]) -> str:
    """The test window's buyers, as `funnelcast train` prints them (``training.evaluation``'s,
    imported here: it loads OpenMP, after this module set how its threads wait)."""
    from training.evaluation import buyers_line as line

    return line(metrics)


def quality_table(metrics: Mapping[str, float]) -> pl.DataFrame:
    """The test window's quality, the rows ``funnelcast train`` prints: the stages'
    macro-F1 over every stage and over the labels' stages (a stage the labels never hold
    counts as an F1 of 0 for whoever calls it), accuracy, and the purchase metrics, for the
    rules, the RFM baseline and funnelcast."""
    from training.evaluation import quality_rows

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
    events: str | os.PathLike[str] | None = None,
) -> TrainingSetup:
    """The settings, feature spec and rules ``funnelcast train --config --spec --source
    --model-name --observe-until --horizon`` trains with (empty or 0: not given). A source's
    mapping gives its ``training:`` settings unless ``config`` is given, which gives them
    whole, as the command does; ``model_name``, ``observe_until`` and ``horizon_days`` go over
    either. A source names where ``events`` was ingested from: without events (the notebook
    then simulates) it is refused. Every problem is an ``InputError`` naming the
    parameter."""
    from features.settings import load_rules_settings
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import require_trainable_spec
    from training.settings import (
        for_training,
        load_training_settings,
        source_training,
        unused_source_training,
    )

    if source and not events:
        # the simulation was trained with the source's settings and registered, promoted
        # too, under its model name (notebook review)
        raise InputError(
            f"source={source!r} names the source the events were ingested from, but events is "
            f"empty, so the notebook would train on a simulation and register it as "
            f"{source}'s model; give events the folder `funnelcast ingest --source {source} "
            "--out DIR` wrote, or leave source empty to train on a simulation"
        )
    config_path = _given_file("config", config, "a copy of features/config/default.yaml")
    spec_path = _given_file("spec", spec, "a copy of features/config/feature_spec.yaml")
    said = []
    overrides: dict[str, Any] = {}
    if source and config_path is not None:
        # the command's rule (`train --source --config`), in the notebook's words
        unused = unused_source_training(source, model_name or None)
        if unused is not None and (unused.keys or unused.model_name):
            said.append(
                f"The {unused.mapping} mapping's training settings are not used: config gives "
                "them"
                + (
                    f"; to use them, copy its {', '.join(unused.keys)} into the config's "
                    "`training:`"
                    if unused.keys
                    else ""
                )
                + (
                    f" (and give model_name={unused.model_name!r} for its model name)"
                    if unused.model_name
                    else ""
                )
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


def check_before_run(
    contacts: pa.Table | None,
    spec: FeatureSpec,
    tracking_uri: str | None,
    *,
    assume_consent: bool = False,
) -> None:
    """What `funnelcast train` refuses before a run starts: contacts whose consent is not
    known, a contacts column that identifies contacts, and a store that cannot be written. In
    the notebook the last two were found inside the run, which was left FAILED in the store
    (notebook review)."""
    from training.pipeline import require_known_consent, require_no_identifying_attributes
    from training.tracking import check_store_writable
    from training.tracking import tracking_uri as resolve_uri

    require_known_consent(contacts, assume_consent=assume_consent)
    require_no_identifying_attributes(contacts, spec)
    check_store_writable(resolve_uri(tracking_uri or None))


# the command line's options in messages, as the notebook's parameters: whole phrases first,
# where the words around an option change, then each option
_PHRASES = (
    (
        "(contacts.parquet beside the events, or --contacts)",
        "(contacts.parquet in the events folder)",
    ),
    ("(`horizon_days:`, or `train --horizon`)", "(the horizon_days parameter, or `horizon_days:`)"),
    ("--observe-until (observe_until)", "the observe_until parameter"),
    # the notebook reads labels.parquet of the events folder (diff review)
    ("drop --labels", "remove labels.parquet from the events folder"),
    ("leave out --labels", "remove labels.parquet from the events folder"),
)
_OPTIONS = {
    "--assume-consent": "assume_consent = True",
    "--config": "config",
    "--events": "events",
    "--force": "force_promotion = True",
    "--horizon": "horizon_days",
    "--model-name": "model_name",
    "--observe-until": "observe_until",
    "--source": "source",
    "--spec": "spec",
    "--tracking-uri": "tracking_uri",
    "--tune": "tune_trials",
}
_OPTION = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, _OPTIONS)) + r")(?![\w-])")


def notebook_words(text: str) -> str:
    """A message of the training steps, which name `funnelcast train`'s options, with the
    notebook's parameters instead (notebook review: it told notebook users to pass --force,
    --spec or --assume-consent, which the notebook does not have)."""
    for phrase, words in _PHRASES:
        text = text.replace(phrase, words)
    # a command quoted whole (`funnelcast ingest --source olist --out DIR`) is a command the
    # user runs in a shell, with its options as they are (review: it read "ingest source")
    parts = _COMMAND.split(text)
    return "".join(
        part if _COMMAND.fullmatch(part) else _OPTION.sub(lambda m: _OPTIONS[m.group(1)], part)
        for part in parts
    )


_COMMAND = re.compile(r"(`funnelcast [^`]*`)")


@contextmanager
def notebook_errors() -> Iterator[None]:
    """Errors of the steps inside, in the notebook's words (``notebook_words``), the same
    exception raised on; too little data to train says what there is and what is needed (the
    command's report, which its message says is listed below)."""
    from training.pipeline import InsufficientDataError, minimum_data

    try:
        yield
    except InputError as error:
        said = notebook_words(str(error))
        if isinstance(error, InsufficientDataError):
            shown = minimum_data(error.report)
            lines = [shown.fitting] if shown.fitting else []
            lines += [
                f"{name}: {rows} rows, {buyers} buyers; stages: {stages or 'none'}"
                for name, rows, buyers, stages in shown.parts
            ]
            said = "\n".join([said, *lines, shown.minimums])
        error.args = (said, *error.args[1:])
        raise
