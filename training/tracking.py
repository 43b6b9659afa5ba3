"""MLflow: where runs go, what a training run logs, and the registry's models.

The store is SQLite under ``mlruns/`` unless ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``)
says otherwise; artifacts go beside the database. Nothing is configured at import time.

A run logs every setting as a param, the feature spec, data fingerprints (row counts, date
ranges and a hash of the events, contacts and labels, never a contact id), the git commit and
the main libraries' versions as tags, every metric of every model, the report artifacts
(``training.evaluation``), the test set (features and labels, no contact ids, shuffled) for the
promotion gate, and the model: one ``FunnelcastModel`` pyfunc, registered as ``funnelcast``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import platform
import re
import secrets
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
import pyarrow as pa
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.engine import EventsInput, scan_events
from features.errors import InputError
from features.io import Terminated, interrupts_held, lock_held, terminate_like_interrupt
from features.schema import cast_unreadable_zones_to_utc
from features.settings import RulesSettings
from features.spec import FeatureSpec
from training.evaluation import write_evaluation_artifacts
from training.models import main_parameter_names
from training.pipeline import TrainingResult, observed_events
from training.pyfunc import FunnelcastModel
from training.settings import TrainingSettings

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
EXPERIMENT = "funnelcast"
TEST_SET_ARTIFACT = "evaluation/test_set.parquet"
# what the logged model needs at load time (MLflow would otherwise guess from imports)
_REQUIREMENTS = (
    "lightgbm",
    "numpy",
    "pandas",
    "polars",
    "pyarrow",
    "scikit-learn",
    "pydantic",
    "pyyaml",
    "mlflow",
)


# the libraries whose versions a run records as tags (``library_versions``)
_VERSIONED = (
    "lightgbm",
    "polars",
    "numpy",
    "pandas",
    "scikit-learn",
    "pyarrow",
    "mlflow",
    "optuna",
    "funnelcast",
)

# the user (and password) of a URI: scheme://user:password@host
_CREDENTIALS = re.compile(r"://[^/\s?#]*@")
# why a run failed (``error_reason``), on the run
ERROR_TAG = "funnelcast.error"
_MAX_REASON = 500
# text in quotes or brackets, where messages put the values they failed on: Python's repr
# of text (an escaped quote inside, a b/r/u prefix) too; a quote right after a letter is an
# apostrophe ("the events' `event_type`"), which opens nothing
_QUOTED = re.compile(
    r"""(?<!\w)[bBrRuU]{0,2}'(?:[^'\\]|\\.)*'"""
    r'|(?<!\w)[bBrRuU]{0,2}"(?:[^"\\]|\\.)*"'
    r"|\[[^\]]*\]"
)


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI: the argument, else ``MLFLOW_TRACKING_URI``, else SQLite in mlruns/."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def served_model(
    result: TrainingResult, *, spec_text: str, rules: RulesSettings, settings: TrainingSettings
) -> FunnelcastModel:
    """The model a training run logs: both LightGBM models with the feature spec, the rules,
    the stage names and what the service needs to read a request's attributes."""
    return FunnelcastModel(
        stage_model=result.stage_model,
        propensity_model=result.propensity_model,
        spec_text=spec_text,
        rules=rules,
        feature_names=result.feature_names,
        horizon_days=settings.horizon_days,
        reasons_method=settings.reasons,
        date_attributes=result.date_attributes,
    )


def shown_uri(text: str) -> str:
    """A tracking URI (or a message holding one, such as MLflow's) as it may be printed,
    logged or reported: without the user and password a server or database URI can carry
    (``http://alice:secret@host`` -> ``http://***@host``)."""
    return _CREDENTIALS.sub("://***@", text)


def existing_store(uri: str | None = None) -> str:
    """The tracking URI (``tracking_uri``) of a store to read from: a SQLite store that does
    not exist is an ``InputError`` (MLflow would create an empty one, and the error would then
    be a missing model)."""
    resolved = tracking_uri(uri)
    database = _sqlite_path(resolved)
    if database is not None and not database.exists():
        raise InputError(
            f"the MLflow store {database} does not exist; train a model first (`funnelcast "
            "train` or `funnelcast run`), or point --tracking-uri (MLFLOW_TRACKING_URI) at "
            "the store that holds it"
        )
    check_server(resolved)
    return resolved


def check_server(uri: str, *, timeout: float = 5.0) -> None:
    """An http(s) tracking server that cannot be reached (nothing listening, an unknown host,
    no answer within ``timeout`` seconds) is an ``InputError`` at once: MLflow retries each
    request with growing pauses, and ``train`` failed only after 4.5 minutes of warnings.

    Only a TCP connection is tried, so a server that asks for a login still passes (MLflow's
    own error then says so). A host reached through a proxy (``HTTP(S)_PROXY``) is left to
    MLflow, which goes through the proxy."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(
        parts.hostname
    ):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:  # a port that is not a number or out of range
        raise InputError(
            f"the MLflow tracking URI {shown_uri(uri)} has a bad port ({error}); fix "
            "--tracking-uri (MLFLOW_TRACKING_URI)"
        ) from None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        if isinstance(error, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise InputError(
            f"the MLflow tracking server {shown_uri(uri)} cannot be reached ({reason}); start "
            "it, or point --tracking-uri (MLFLOW_TRACKING_URI) at a server that runs or at a "
            f"SQLite store such as {DEFAULT_TRACKING_URI}"
        ) from None


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the store, making the SQLite folder if needed
    and refusing an http(s) server that cannot be reached (``check_server``). A SQLite store
    is opened here, one process at a time (``_open_sqlite_store``): every command and the
    notebook touch the store first through this."""
    resolved = tracking_uri(uri)
    database = _sqlite_path(resolved)
    if database is not None:
        _make_store_folder(database)
    check_server(resolved)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    if database is not None:
        _open_sqlite_store(resolved, database)
    return resolved


_STORE_FIX = "give --tracking-uri (MLFLOW_TRACKING_URI) a store in a folder you may write to"


def _make_store_folder(database: Path) -> None:
    """The SQLite store's folder, made if missing; one that cannot be made (a file in its
    path, a folder that may not be written, a read-only file system) is an ``InputError``
    naming it: it was a 40-line traceback (review)."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"the MLflow store {database}: its folder {database.parent} cannot be made "
            f"({error.strerror or error}); {_STORE_FIX}"
        ) from None


def check_store_writable(uri: str) -> None:
    """A SQLite store a command will write to (train, run): its folder can be made and
    written (SQLite writes its journal beside the store), and the store, when it exists, can
    be written. Checked before the work: `run` found out at step 4, after the data was
    ingested, validated and shown. An http(s) server is checked as ``check_server`` does."""
    check_server(uri)
    database = _sqlite_path(uri)
    if database is None:
        return
    _make_store_folder(database)
    for place in (database.parent, *([database] if database.exists() else [])):
        if not os.access(place, os.W_OK):
            raise InputError(
                f"the MLflow store {database} cannot be written: {place} may not be written "
                f"(its permissions or a read-only file system); {_STORE_FIX}"
            )


def _open_sqlite_store(uri: str, database: Path) -> None:
    """Open the SQLite store under a lock beside it (``<database>.lock``): the first process
    to open a new store makes its tables and migrates them, in steps that are no transaction,
    while another waits. Two commands started at once on a new store (two `train`) ran the
    migrations together: one died with alembic's "expected to match one row" or "table
    _alembic_tmp_tags already exists", at times leaving a half-migrated store every later
    command failed on. On a store that exists this is MLflow's schema check, which the first
    access makes anyway (the process keeps the opened store), and the lock is that short."""

    def open_store() -> None:
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)

    try:
        with lock_held(database.with_name(f"{database.name}.lock")):
            open_store()
        return
    except OSError as error:
        # a store in a folder this process may not write (a read-only volume a server reads
        # its registry from): no lock can be made there, and no migration either
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    open_store()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def ensure_experiment(name: str = EXPERIMENT) -> str:
    """The experiment's id, creating it with its artifacts beside a SQLite store."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    database = _sqlite_path(mlflow.get_tracking_uri())
    location = None
    if database is not None:
        location = (database.parent.resolve() / "artifacts").as_uri()
    try:
        return str(mlflow.create_experiment(name, artifact_location=location))
    except MlflowException as error:
        # made meanwhile by another process (a second `train` started at once): that one
        made = (
            mlflow.get_experiment_by_name(name)
            if error.error_code == "RESOURCE_ALREADY_EXISTS"
            else None
        )
        if made is None:
            raise
        return str(made.experiment_id)


def data_fingerprint(
    events: EventsInput,
    contacts: pa.Table | pl.DataFrame | None = None,
    labels: pa.Table | pl.DataFrame | None = None,
    *,
    settings: TrainingSettings | None = None,
) -> dict[str, Any]:
    """What the data was, without saying who is in it: counts, time range and a content hash of
    the events and, when given, of the contacts (consent included) and the provided labels.
    With the run's ``settings``, the events are those it trained on (``observe_until``); the
    labels are hashed whole (those dated after the cut are counted in the data summary).

    Each hash covers every column of every row (``_content_hash``), so a changed value,
    campaign, property, consent flag or label changes it, and the same rows in another order
    do not. It is a hash of sums of row hashes: no id can be read back from it."""
    scanned = scan_events(events if settings is None else observed_events(events, settings))
    summary = (
        scanned.select(
            rows=pl.len(),
            contacts=pl.col("contact_id").n_unique(),
            first=pl.col("timestamp").min(),
            last=pl.col("timestamp").max(),
            hash=_row_hash_sum(scanned.collect_schema()),
        )
        .collect()
        .row(0, named=True)
    )
    out: dict[str, Any] = {
        "events_rows": int(summary["rows"]),
        "events_contacts": int(summary["contacts"]),
        "events_from": f"{summary['first']:%Y-%m-%d %H:%M:%S}" if summary["first"] else None,
        "events_to": f"{summary['last']:%Y-%m-%d %H:%M:%S}" if summary["last"] else None,
        "events_hash": _digest(scanned.collect_schema(), summary["hash"]),
    }
    for name, table in (("contacts", contacts), ("labels", labels)):
        if table is not None:
            rows, digest = _content_hash(table)
            out[f"{name}_rows"] = rows
            out[f"{name}_hash"] = digest
    return out


def _content_hash(table: pa.Table | pl.DataFrame) -> tuple[int, str]:
    """A table's row count and content hash (as ``data_fingerprint`` makes them)."""
    # a time in a zone Polars has no name for ('+05:30') is hashed as its UTC instant, as every
    # builder reads it (Polars refused the table)
    frame = (
        table
        if isinstance(table, pl.DataFrame)
        else pl.DataFrame(pl.from_arrow(cast_unreadable_zones_to_utc(table)))
    )
    total = frame.select(_row_hash_sum(frame.schema)).item()
    return frame.height, _digest(frame.schema, total)


def _row_hash_sum(schema: pl.Schema) -> pl.Expr:
    """The sum of every row's hash over all its columns: a sum, so the row order does not
    count (the same rows read in another order, or another partition, hash the same), where
    a hash of the rows in turn would. The columns are taken in name order, for the same
    reason; categorical columns as their text, as their codes depend on the process."""
    columns = [
        pl.col(name).cast(pl.String)
        if isinstance(schema[name], pl.Categorical | pl.Enum)
        else pl.col(name)
        for name in sorted(schema.names())
    ]
    return pl.struct(columns).hash(seed=0).sum()


def _digest(schema: pl.Schema, total: int | None) -> str:
    """The logged hash: the columns' names (a renamed or added column is other data) and the
    sum of the row hashes, shortened."""
    text = json.dumps([sorted(schema.names()), str(total)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Nested evaluation metrics as MLflow metric names (``test.stage.lightgbm.macro_f1``);
    undefined values (NaN) are left out rather than logged as numbers."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and not math.isnan(float(value))
        ):
            out[prefix] = float(value)

    for section in ("stage", "propensity"):
        for model, values in metrics.get(section, {}).items():
            for key, value in values.items():
                if key in ("confusion_matrix",):
                    continue
                walk(f"test.{section}.{model}.{key}", value)
    return out


def _requirements() -> list[str]:
    pinned = []
    for package in _REQUIREMENTS:
        try:
            pinned.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pinned.append(package)
    return pinned


def _settings_params(settings: TrainingSettings) -> dict[str, Any]:
    """Every training setting as a param (``max_training_rows``,
    ``lightgbm.class_weight_power``, ``registry.model_name``), so a run can be redone from
    what it logged: a field added to the settings is logged without a change here. The
    LightGBM parameters are left out: ``log_training`` logs them as ``lightgbm.<name>``."""
    params: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            params[prefix] = value

    walk("", settings.model_dump(mode="json", exclude={"lightgbm": {"params"}}))
    return params


def library_versions() -> dict[str, str]:
    """The versions of the libraries a model's numbers depend on, as tags
    (``version.lightgbm``): the same data and settings give other models under another
    LightGBM or scikit-learn, and another Polars hashes the data fingerprint differently."""
    versions = {}
    for package in _VERSIONED:
        try:
            versions[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"version.{package}"] = "not installed"
    return versions


def git_tags(root: Path | None = None) -> dict[str, str]:
    """The commit of the code when it runs from a git checkout (``funnelcast.git_commit``),
    and whether files tracked by git had changes (``funnelcast.git_dirty``); nothing when it
    does not (an installed package, no git), which is no error.

    ``root``: the folder that holds ``features/`` and ``training/``; it must be the top of the
    checkout, or an installed copy inside someone else's repository (a virtualenv in a
    project) would be tagged with that repository's commit."""
    root = root or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        found = git("rev-parse", "--show-toplevel", "HEAD").split()
        if len(found) != 2 or Path(found[0]).resolve() != root.resolve():
            return {}
        changes = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, no commit yet
        return {}
    return {"funnelcast.git_commit": found[1], "funnelcast.git_dirty": str(bool(changes)).lower()}


@contextmanager
def training_run(
    run_name: str | None = None, *, on_start: Callable[[str], None] | None = None
) -> Iterator[str]:
    """A parent run for one training; tuning trials nest under it. It ends as what happened
    (``end_run_after``): FINISHED, KILLED after Ctrl-C or SIGTERM, or FAILED with the reason
    in the ``funnelcast.error`` tag. MLflow's own ``with start_run`` ends every exception
    FAILED, Ctrl-C included, and says nothing of why; and SIGTERM (a scheduler's timeout,
    ``kill``) ended the process with the run left RUNNING for good.

    ``on_start`` is called with the run's id as soon as the run is made, before a stop can
    end it: a stop held while the run started is raised before the block is entered, and the
    caller would not know the run it then ended KILLED (``read_run_outcome``)."""
    experiment_id = ensure_experiment()
    with terminate_like_interrupt():
        run_id: str | None = None
        try:
            # a stop while the run starts or ends waits for it: MLflow's exit hook would end
            # a run left active FINISHED, and promote would take its version
            with interrupts_held():
                run_id = mlflow.start_run(
                    experiment_id=experiment_id, run_name=run_name
                ).info.run_id
                if on_start is not None:
                    on_start(run_id)
            yield run_id
        except BaseException as error:
            if run_id is not None:
                with interrupts_held():
                    end_run_after(run_id, error)
            raise
        with interrupts_held():
            end_run_after(run_id, None)


@dataclass(frozen=True)
class RunOutcome:
    """What a training run left in the store: its status (FINISHED, KILLED, FAILED, or
    RUNNING when it could not be ended) and the model versions registered from it, as
    (registered model name, version) pairs, oldest first."""

    status: str
    versions: tuple[tuple[str, str], ...]


def read_run_outcome(run_id: str) -> RunOutcome:
    """How the run ``run_id`` ended and what was registered from it, read from the store the
    process points at (``configure_tracking``): what a stopped command says it left."""
    client = MlflowClient()
    status = str(client.get_run(run_id).info.status)
    found = client.search_model_versions(f"run_id = '{run_id}'")
    versions = sorted(((str(v.name), str(v.version)) for v in found), key=lambda v: int(v[1]))
    return RunOutcome(status=status, versions=tuple(versions))


def end_run_after(run_id: str, error: BaseException | None) -> None:
    """End the active run ``run_id`` as ``error`` left it: FINISHED without one, KILLED after
    a KeyboardInterrupt or SIGTERM (someone stopped it; it did not break), else FAILED with
    the error's one-line reason as the ``funnelcast.error`` tag, so a failed run says why
    without a log.

    Runs still open inside it (a nested trial that did not end) end first, the same way:
    ``mlflow.end_run`` ends the innermost run, which would otherwise be the one marked. Then
    any run nested in it that the store still holds RUNNING ends too (``_end_unended_children``):
    a Ctrl-C inside ``mlflow.start_run`` leaves a run made in the store that never became
    active, so no ``end_run`` reaches it."""
    if error is None:
        status = "FINISHED"
    elif isinstance(error, KeyboardInterrupt | Terminated):
        status = "KILLED"
    else:
        status = "FAILED"
        try:
            MlflowClient().set_tag(run_id, ERROR_TAG, error_reason(error))
        except Exception as unrecorded:  # the store itself may be what failed: the caller's
            # error stands, and this is one line (a traceback with -v)
            log.warning(
                "could not record why run %s failed (%s)",
                run_id,
                error_reason(unrecorded),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
    try:
        _end(run_id, status)
        _end_unended_children(run_id, status)
    except Exception as unended:  # as above: the original error is the one to see
        if error is None:
            raise
        # the run stays RUNNING in the store for good unless someone ends it: say so, and how
        # (review: two tracebacks of 180 lines each, and the run's state never said)
        log.warning(
            "run %s stays RUNNING in the store: it could not be ended as %s (%s); once the "
            "store can be written, end it with mlflow.MlflowClient().set_terminated('%s', '%s')",
            run_id,
            status,
            error_reason(unended),
            run_id,
            status,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )


def _end(run_id: str, status: str) -> None:
    if not _open_within(run_id):
        # ended by the code inside: still record how the block ended
        MlflowClient().set_terminated(run_id, status)
        return
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run_id:
            return


def _end_unended_children(run_id: str, status: str) -> None:
    """End every run nested in ``run_id`` (tagged ``mlflow.parentRunId``) that is still
    RUNNING: KILLED, or FAILED when ``run_id`` failed. Not FINISHED when it finished: such a
    run never reached its own end, and a trial that ended FINISHED with no metrics looked as if
    it had run. Searched page by page (a long tuning has thousands of trials)."""
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
    token: str | None = None
    unended: list[str] = []
    while True:
        page = client.search_runs([experiment], query, max_results=1000, page_token=token)
        unended += [child.info.run_id for child in page]
        if not (token := page.token):
            break
    for child in unended:
        client.set_terminated(child, "FAILED" if status == "FAILED" else "KILLED")


def _open_within(run_id: str) -> bool:
    """Whether ``run_id`` is the active run or an active run is nested in it (through
    ``mlflow.parentRunId``): only then may runs be ended until it is, and a caller's own
    outer runs are left alone."""
    active = mlflow.active_run()
    if active is None:
        return False
    current, tags = active.info.run_id, active.data.tags
    while current != run_id:
        parent = tags.get("mlflow.parentRunId")
        if parent is None:
            return False
        current, tags = parent, MlflowClient().get_run(parent).data.tags
    return True


def error_reason(error: BaseException) -> str:
    """One line that says why a run failed, fit for a tag: the error's type and first line,
    without a URI's credentials (``shown_uri``) and with quoted text masked. Messages quote
    the values they failed on, and so can funnelcast's own (``InputError``): an unknown event
    type or label outcome is quoted as the data holds it, which can carry a contact's e-mail
    address, of a contact without consent too. The tag stays in the store for good; the whole
    message is the one the user saw (columns and settings are named in backticks, kept)."""
    lines = str(error).strip().splitlines()
    line = _QUOTED.sub("'…'", shown_uri(lines[0].strip())) if lines else ""
    reason = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


def log_training(
    result: TrainingResult,
    *,
    spec: FeatureSpec,
    spec_text: str,
    rules: RulesSettings,
    settings: TrainingSettings,
    fingerprint: dict[str, Any],
    register: bool = True,
) -> str | None:
    """Log one training into the active run; returns the registered version (or None)."""
    mlflow.log_params(
        {
            "horizon_days": settings.horizon_days,
            "snapshots": settings.snapshots,
            "snapshot_every_days": settings.snapshot_every_days,
            "seed": settings.seed,
            "label_source": result.label_source,
            # every rules setting (the promotion gate compares them): one added is logged too
            **{f"rules.{k}": v for k, v in rules.model_dump(mode="json").items()},
            "spec_fingerprint": spec.fingerprint,
            "features": len(result.feature_names),
            "reasons": settings.reasons,
            "lightgbm.num_boost_round": settings.lightgbm.num_boost_round,
            "stage.early_stopping_rounds": settings.lightgbm.patience("stage"),
            "propensity.early_stopping_rounds": settings.lightgbm.patience("propensity"),
            "stage.best_iteration": result.stage_model.best_iteration_,
            "stage.calibration": result.stage_model.calibration_,
            "propensity.best_iteration": result.propensity_model.best_iteration_,
            "propensity.calibration": result.propensity_model.calibration_,
            "propensity.blend_rfm": settings.lightgbm.blend_rfm,
            "propensity.lightgbm_weight": result.propensity_model.lightgbm_weight_,
            # under LightGBM's main names, as training read them: a config's `eta` was logged
            # as lightgbm.eta, a column of its own beside the other runs' learning_rate
            **{
                f"lightgbm.{k}": v
                for k, v in main_parameter_names(settings.lightgbm.params).items()
            },
            **{
                f"tuned.{model}.{k}": v
                for model, params in result.tuned_params.items()
                for k, v in params.items()
            },
            **{f"data.{k}": v for k, v in {**fingerprint, **result.data_summary}.items()},
            **_settings_params(settings),
        }
    )
    mlflow.set_tags(
        {
            "python": platform.python_version(),
            "funnelcast.spec": spec.fingerprint,
            **library_versions(),
            **git_tags(),
        }
    )
    mlflow.log_metrics(flat_metrics(result.metrics))
    mlflow.log_metrics({f"time.{k}_s": v for k, v in result.timings.items()})
    mlflow.log_text(spec_text, "feature_spec.yaml")
    mlflow.log_dict(result.data_summary, "data_summary.json")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        write_evaluation_artifacts(result.evaluation, out / "evaluation", metrics=result.metrics)
        importance = result.propensity_model.feature_importance()
        pl.DataFrame({"feature": list(importance), "gain": list(importance.values())}).sort(
            "gain", descending=True
        ).write_csv(out / "evaluation" / "propensity_feature_importance.csv")
        # shuffled, by a seed nobody keeps: in contact order a row's place would say whose it
        # is, and a logged seed would let anyone put it back (the gate's metrics ignore order)
        result.test_set.sample(fraction=1.0, shuffle=True, seed=secrets.randbits(63)).write_parquet(
            out / "evaluation" / "test_set.parquet"
        )
        (out / "evaluation" / "timings.json").write_text(json.dumps(result.timings, indent=2))
        mlflow.log_artifacts(str(out / "evaluation"), "evaluation")
    model = served_model(result, spec_text=spec_text, rules=rules, settings=settings)
    package_root = Path(__file__).resolve().parent.parent
    with warnings.catch_warnings():
        # MLflow asks for type hints on predict to infer a schema; the input is a feature
        # table whose columns the spec decides, checked by the model itself
        warnings.filterwarnings("ignore", message=".*type hint", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            pip_requirements=_requirements(),
            code_paths=[str(package_root / "features"), str(package_root / "training")],
        )
    if not register:
        return None
    # registered last, with its tags in the same call: a version registered by log_model and
    # tagged after could be left without its tags by a Ctrl-C. The run still ends after this
    # (the caller's training_run), so `promote` refuses a version of a run that did not finish
    run_id = info.run_id
    tags = {
        "run_id": run_id,
        "spec_fingerprint": spec.fingerprint,
        "test_from": result.data_summary["test_from"],
        "test_to": result.data_summary["test_to"],
        "label_source": result.label_source,
    }
    registered = mlflow.register_model(
        f"runs:/{run_id}/{info.name}",  # as log_model would: the version records the run
        settings.registry.model_name,
        tags={key: str(value) for key, value in tags.items()},
    )
    return str(registered.version)
