"""The ``funnelcast`` command line. Each command parses its options, loads settings and calls
one pipeline function; logging is configured here and nowhere else."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import pydantic
import typer
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from features.errors import InputError
from features.settings import RulesSettings, load_rules_settings
from features.vocabulary import STAGE_CTA, STAGES

if TYPE_CHECKING:  # the data libraries load only when a command needs them: --help stays fast
    import polars as pl

    from features.schema import Validated
    from features.sources import Ingested
    from features.spec import FeatureSpec
    from serving.runtime import ModelInfo
    from training.pipeline import InsufficientDataError
    from training.pyfunc import FunnelcastModel

app = typer.Typer(
    name="funnelcast",
    help="Predict each CRM contact's funnel stage and purchase propensity from raw events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: it wraps to any terminal width (the rich tables cut the option
    # names off in 80 columns) and shows no type for a flag
    rich_markup_mode=None,
)


class _Report(io.TextIOBase):
    """Standard output for the console, whatever ``sys.stdout`` is at the moment, that a
    failed write cannot stop the command: a closed pipe (``| head``) or a full disk under a
    scheduler's log lost the week's scores file, written after the progress display. The
    first failure is said once on stderr; the command goes on, its report there lost."""

    lost: OSError | None = None

    @staticmethod
    def _stdout() -> IO[str]:
        """``sys.stdout``, or the file under rich's proxy of it: on a terminal a progress
        display puts a proxy there that prints through this console, and writing to it went
        round the console, this file and the proxy forever (every command with a progress
        bar hung at full CPU in a terminal, `make demo` first; README review)."""
        out = sys.stdout
        while isinstance(out, FileProxy):
            out = out.rich_proxied_file
        return out

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stdout(), "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return self.lost is None and self._stdout().isatty()

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                self._stdout().write(text)
            except OSError as error:
                self._lose(error)
        return len(text)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self._stdout().flush()
            except OSError as error:
                self._lose(error)

    def _lose(self, error: OSError) -> None:
        self.lost = error
        with contextlib.suppress(OSError, ValueError):
            # the interpreter's own flush at exit would fail on it again
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        reason = error.strerror or type(error).__name__
        with contextlib.suppress(OSError):
            sys.stderr.write(
                f"warning: the standard output cannot be written ({reason}); funnelcast goes "
                "on, its report there lost\n"
            )
            sys.stderr.flush()


# emoji codes off: rich read ':b:' in a tag the user gave ('a:b:c') as an emoji (diff review)
console = Console(file=cast("IO[str]", _Report()), emoji=False)
err_console = Console(stderr=True, emoji=False)
log = logging.getLogger("funnelcast")

T = TypeVar("T")

# Errors that are the user's to fix: shown as one line, exit code 2 (with -v, the traceback
# too). Anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    InputError,
    FileNotFoundError,
    pydantic.ValidationError,
)

# the alias train and promote set; serve, build and evaluate read the same one by default
_CONFIGURED_ALIAS = "the config's champion_alias, 'champion' as shipped"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        exists=True,
        help="A copy of features/config/default.yaml with your settings.",
    ),
]
ModelNameOption = Annotated[
    str | None,
    typer.Option(
        "--model-name",
        help="Registered model name (default: the config's registry model_name, 'funnelcast' "
        "as shipped; a sample source's mapping names its own).",
    ),
]
StartOption = Annotated[
    str | None,
    typer.Option(
        "--start",
        help="First simulated day (YYYY-MM-DD); default: the period ends yesterday (UTC).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Root folder of the source files (default: $FUNNELCAST_DATA_DIR or ../shared/data).",
    ),
]
ObserveUntilOption = Annotated[
    str | None,
    typer.Option(
        "--observe-until",
        help="Train on the events before this day only, YYYY-MM-DD (UTC midnight), as if the log "
        "had been exported then (a backtest, or outcomes that run on past the flow of new "
        "contacts): the later events and later-dated labels are counted, not trained on, and a "
        "contact first seen on or after the day is no row. Default: all, or the config's or "
        "--source mapping's observe_until.",
    ),
]


TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).",
    ),
]


class Engine(StrEnum):
    """Feature engines: both compile the same feature spec and give the same table."""

    polars = "polars"
    spark = "spark"


_VERBOSE = False


@app.callback()
def _configure(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log more detail; show tracebacks.")
    ] = False,
) -> None:
    global _VERBOSE
    _VERBOSE = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # LightGBM's OpenMP threads spin while waiting by default; on a small machine shared with
    # other work that makes training many times slower (measured here: 0.1 s -> 0.7 s a tree)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not verbose:
        from features.telemetry import quiet_mlflow

        quiet_mlflow()  # the commands say what happened in their own words (main)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except _USER_ERRORS as error:
        if _VERBOSE:
            err_console.print_exception()
        err_console.print(
            f"[bold red]error:[/] {escape(_one_line(error))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except BaseException as error:
        if type(error).__name__ == "PanicException":  # Polars' (Rust's) internal stop
            if _VERBOSE:
                err_console.print_exception()
            first = str(error).strip().splitlines()[0] if str(error).strip() else "a panic"
            err_console.print(
                f"[bold red]error:[/] the data reader stopped on an internal error "
                f"({escape(first[:200])}); if another command was writing the files read at "
                "that moment (ingest or simulate into the same folder), run again once it is "
                "done; otherwise run again with -v and report it",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)
        if not isinstance(error, Exception):
            raise  # Ctrl-C, SIGTERM, sys.exit: their own exit codes
        if (said := _no_space_or_locked(error)) is not None:
            if _VERBOSE:
                err_console.print_exception()
            err_console.print(
                f"[bold red]error:[/] {escape(said)}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        if not type(error).__module__.startswith("mlflow."):
            raise
        # a tracking store or server that cannot be used (not running, refused, a bad URI):
        # one line, and without the user and password the URI and MLflow's message may hold
        from training.tracking import shown_uri

        if _VERBOSE:
            err_console.print_exception()
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = ""
        if "mlflow" in sys.modules:  # MLflow's message may not say which store or server
            where = f" at {sys.modules['mlflow'].get_tracking_uri()}"
        err_console.print(
            f"[bold red]error:[/] MLflow{escape(shown_uri(where))}: {escape(shown_uri(first))}; "
            "check the tracking URI "
            "(--tracking-uri or MLFLOW_TRACKING_URI) and that its store or server can be used",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_NO_SPACE_TEXT = ("No space left on device", "[Errno 28]", "database or disk is full")


def _no_space_or_locked(error: BaseException) -> str | None:
    """One line for the two failures of the machine, not of the input, that reach here as any
    library's exception (a concurrency review saw 70- and 1,100-line tracebacks): a full disk
    or a file-size limit, under MLflow's, SQLite's or Arrow's wording, and an MLflow SQLite
    store another process holds locked. None for anything else."""
    from training.tracking import shown_uri  # a message may hold the store's credentials

    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    store = ""
    if "mlflow" in sys.modules:
        store = shown_uri(str(sys.modules["mlflow"].get_tracking_uri()))
    for link in chain:
        text = str(link)
        if isinstance(link, OSError) and link.errno in _NO_SPACE:
            where = link.filename if link.filename is not None else "the folder written to"
            return (
                f"{shown_uri(str(where))}: {link.strerror or text} (a full disk, a quota or a "
                "file-size limit); free some space there, or write somewhere else, and run "
                "again"
            )
        if any(words in text for words in _NO_SPACE_TEXT):
            place = f"the MLflow store {store}" if store else "the folder written to"
            return (
                f"no space left while writing to {place} (a full disk or a quota); free some "
                "space there, or write somewhere else, and run again"
            )
        if "attempt to write a readonly database" in text:
            return (
                f"the MLflow store {store or '(SQLite)'} cannot be written (SQLite: attempt "
                "to write a readonly database: the file's or its folder's permissions, or a "
                "read-only file system); give --tracking-uri (MLFLOW_TRACKING_URI) a store "
                "you may write to"
            )
        if "unable to open database file" in text:
            return (
                f"the MLflow store {store or '(SQLite)'} cannot be opened (SQLite: unable to "
                "open database file: a folder that may not be written, or a read-only file "
                "system, for a store not made yet); give --tracking-uri (MLFLOW_TRACKING_URI) "
                "a store in a folder you may write to"
            )
        if "database is locked" in text:
            return (
                f"the MLflow store {store or '(SQLite)'} is locked by another process (mlflow "
                "ui or gc, a backup, another funnelcast command writing to it); run again "
                "once it is done"
            )
    return None


# --- commands ----------------------------------------------------------------------------------


def _refuse_unused_run_options(ctx: typer.Context, source: str | None) -> None:
    """`run --source` ingests the source: the simulation's options given with it were
    ignored without a word, as was --data-dir without a source (README review)."""

    def given(*names: str) -> list[str]:
        # by the source's name: Typer's Click (typer._click) has an enum of its own
        return [
            "--" + name.replace("_", "-")
            for name in names
            if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
        ]

    if source is not None and (simulation := given("contacts", "days", "seed", "start")):
        raise InputError(
            f"{', '.join(simulation)} set the simulation, which --source replaces with your "
            "data; drop them, or drop --source to simulate"
        )
    if source is None and given("data_dir"):
        raise InputError(
            "--data-dir is where a source's files are read, and no --source is given (run "
            "simulates); give --source NAME, or drop --data-dir"
        )


@app.command()
def run(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Option(help="A shipped source name or a mapping YAML; default: simulate one."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for every output of the run.")] = Path(
        "out/run"
    ),
    contacts: Annotated[int, typer.Option(min=1, help="Simulated contacts.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 120,
    seed: Annotated[int, typer.Option(min=0, help="Random seed of the simulation.")] = 7,
    start: StartOption = None,
    data_dir: DataDirOption = None,
    tune: Annotated[
        int, typer.Option(min=0, help="Optuna trials per model (0: the default parameters).")
    ] = 0,
    assume_consent: Annotated[
        bool,
        typer.Option(
            "--assume-consent",
            help="A source whose mapping gives no contacts table: treat every contact as "
            "consented.",
        ),
    ] = False,
    observe_until: ObserveUntilOption = None,
    model_name: ModelNameOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """The main job, end to end: simulate (or ingest your data), validate, show the funnel,
    train and evaluate the models beside the rules, and promote the model if it beats them."""
    with _saying_what_a_stop_left() as training:
        started = time.perf_counter()
        _refuse_unused_run_options(ctx, source)
        cut = _parse_date(observe_until, "--observe-until") if observe_until is not None else None
        from features.io import check_writable_folder

        check_writable_folder(out / "data")  # now, not after the simulation
        from training.tracking import check_store_writable
        from training.tracking import tracking_uri as resolve_uri

        # a server that is down, a store that cannot be written: now, not at step 4
        check_store_writable(resolve_uri(tracking_uri))
        from training.settings import load_training_settings

        # a settings file or model name step 4 would refuse: now, before the data is rewritten
        load_training_settings(config, model_name=model_name)
        if source is None:
            console.rule("[bold]1. Simulate customer journeys")
            validated, true_history = _simulate_into(
                out / "data", contacts, days, seed, _start_date(start), config
            )
        else:
            console.rule(f"[bold]1. Ingest {escape(source)}")
            validated = _ingest_into(source, out / "data", data_dir)
            true_history = None
        overrides = _observing_until(_source_training(source, config, model_name), cut, config)
        console.rule("[bold]2. Validate")
        _print_validation(validated)
        console.rule("[bold]3. The funnel")
        _print_funnel(
            validated.events,
            validated.contacts,
            true_history,
            config=config,
            as_of=None,
            assume_consent=assume_consent,
        )
        settings = load_training_settings(config, **overrides)  # the settings step 4 trains with
        if settings.observe_until is not None:
            console.print(
                "The funnel is as of the data's end; training observes the events before "
                f"{settings.observe_until} only (observe_until)."
            )
        console.rule("[bold]4. Train and evaluate (test window: the latest snapshots)")
        from training.pipeline import InsufficientDataError

        # a source's provided labels (a CRM's won/lost or lifecycle stages), as `train --labels`
        provided = out / "data" / "labels.parquet"
        if source is not None and provided.exists():
            from features.io import read_table

            labels = read_table(provided)
            console.print(f"Training on the source's provided labels ({labels.num_rows:,} rows).")
        else:
            labels = None
        try:
            version = _train_and_report(
                out / "data" / "events.parquet",
                validated.contacts,
                labels,
                tune=tune,
                overrides=overrides,
                spec_path=None,
                register=True,
                tracking_uri=tracking_uri,
                config=config,
                assume_consent=assume_consent,
                training=training,
            )
        except InsufficientDataError as error:
            _print_no_model(error)
            version = None
            untrained = True  # exit 1 at the end, as `train` does: a scheduler can tell
        else:
            untrained = False
        if version is not None:
            console.rule("[bold]5. Promote")
            registry = settings.registry
            promoted = _promote_and_report(
                registry.model_name, registry.champion_alias, version=version, force=False
            )
            which = "" if promoted else f" --version {version}"
            if "model_name" in overrides:
                which = f" --model-name {shlex.quote(registry.model_name)}{which}"
            console.print(
                ("Serve it" if promoted else f"To serve version {version} anyway")
                + ": export FUNNELCAST_API_KEY=<a long random key>; "
                f"{escape(shell_command('funnelcast'))} serve{which}"
            )
        elapsed = time.perf_counter() - started
        console.print(f"\nDone in {elapsed:.1f} s. Outputs in [bold]{escape(str(out))}[/].")
        if untrained:
            raise typer.Exit(code=1)


def _source_training(
    source: str | None,
    config: Path | None,
    model_name: str | None,
    *,
    options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The training settings over the config's: a source mapping's ``training:`` unless the
    user gives ``--config`` (theirs then, whole), and ``--model-name`` over both; said.
    ``options``: settings a command's option gives over the mapping's (``horizon_days`` by
    ``--horizon 30``), said as such, not as the mapping's."""
    if source is not None:
        from features.sources import load_mapping
        from training.settings import unused_source_training

        mapping = load_mapping(source)
        given = mapping.training.settings() if mapping.training else {}
        if config is not None and (unused := unused_source_training(source, model_name)):
            how = []
            if unused.keys:
                how.append(f"copy its {', '.join(unused.keys)} into your config's `training:`")
            if unused.model_name:
                how.append(
                    f"give --model-name {unused.model_name} (else the config's name is used)"
                )
            said = (
                f"The {unused.mapping} mapping's training settings are not used: --config gives "
                "them"
            )
            console.print(
                escape(f"{said}; to use them, {' and '.join(how)}." if how else f"{said}.")
            )
        elif given:
            from training.settings import source_training

            overrides = source_training(source, model_name=model_name)
            if model_name is not None:  # the option's name is said by the user, not the mapping
                given.pop("model_name", None)
            options = options or {}
            listed = ", ".join(
                f"{key} {value}" + (f" ({options[key]} over it)" if key in options else "")
                for key, value in overrides.items()
                if key in given
            )
            if listed:
                console.print(
                    f"Training settings from the {escape(mapping.name)} mapping over the "
                    f"shipped ones: {escape(listed)}."
                )
            return overrides
    return {} if model_name is None else {"model_name": model_name}


def _registered(
    config: Path | None,
    model_name: str | None,
    alias: str | None,
    version: str | None,
    tracking_uri: str | None,
) -> tuple[FunnelcastModel, ModelInfo]:
    """The registered model the options name (the configured name and alias by default),
    loaded as the service loads it: refused when its feature spec does not match this code."""
    from serving.runtime import ServiceSettings, registered_model
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, existing_store

    configure_tracking(existing_store(tracking_uri))
    _patient_registry()  # a registry that does not answer: seconds, not minutes of retries
    settings = load_training_settings(config, model_name=model_name)
    service_settings = ServiceSettings(
        model_name=settings.registry.model_name,
        alias=alias or settings.registry.champion_alias,
        version=version,
        tracking_uri=tracking_uri,
    )
    return _with_spinner("Loading the model", lambda: registered_model(service_settings))


def _one_model(**given: str | None) -> None:
    """The model to use is named one way: ``--version``, ``--alias`` or ``--bento-model``, or
    none of them (the configured alias). Given two, one would silently win."""
    named = [f"--{option.replace('_', '-')}" for option, value in given.items() if value]
    if len(named) > 1:
        listed = f"{', '.join(named[:-1])} and {named[-1]}"
        raise InputError(f"{listed} {'both' if len(named) == 2 else 'all'} name a model; give one")


def _observing_until(
    overrides: dict[str, Any], cut: dt.datetime | None, config: Path | None
) -> dict[str, Any]:
    """``--observe-until`` over the config's and the mapping's ``observe_until``; one that it
    replaces is said, as the mapping's settings were."""
    if cut is None:
        return overrides
    replaced, whose = overrides.get("observe_until"), "the mapping's"
    if replaced is None and config is not None:
        from features.settings import config_section

        replaced, whose = config_section(config, "training").get("observe_until"), f"{config}'s"
    if replaced is not None and str(replaced) != str(cut.date()):
        console.print(
            f"--observe-until {cut.date()} over {escape(whose)} observe_until {replaced}."
        )
    return {**overrides, "observe_until": cut.date()}


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder for events, contacts, stage_history.")],
    contacts: Annotated[int, typer.Option(min=1, help="Number of contacts.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Number of days.")] = 120,
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed; the same seed and start give the same data.")
    ] = 7,
    start: StartOption = None,
    config: ConfigOption = None,
) -> None:
    """Simulate customer journeys with known hidden stages (validated canonical Parquet out)."""
    from features.io import check_writable_folder

    check_writable_folder(out)  # now, not after the simulation
    validated, _ = _simulate_into(out, contacts, days, seed, _start_date(start), config)
    _print_validation(validated)


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="A shipped source name or a mapping YAML file.")],
    out: Annotated[Path, typer.Option(help="Folder for events, contacts, rejects, labels.")],
    data_dir: DataDirOption = None,
) -> None:
    """Read a source through its mapping, validate it, and write canonical Parquet."""
    from features.io import check_writable_folder

    check_writable_folder(out)  # now, not after reading the source
    validated = _ingest_into(source, out, data_dir)
    _print_validation(validated)
    from features.sources import load_mapping

    training = load_mapping(source).training
    given = training.settings() if training is not None else {}
    if given:  # `train` reads the tables, not the mapping, unless told which it was
        command = shlex.join(["funnelcast", "train", "--events", str(out), "--source", source])
        console.print(
            f"The mapping gives training settings: `funnelcast run --source {escape(source)}` "
            f"trains with them, and so does `{escape(command)}`."
        )


@app.command()
def validate(
    source: Annotated[str, typer.Option(help="A shipped source name or a mapping YAML file.")],
    data_dir: DataDirOption = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Exit 1 when any row is set aside that the mapping did not exclude."
        ),
    ] = False,
) -> None:
    """Validate a source through its mapping and report what would be set aside; writes nothing.

    Exit codes: 0 usable, 1 rows set aside (with --strict), 2 unusable input (one-line reason).
    """
    from features.sources import EXCLUDED_REASON

    ingested = _with_spinner(
        f"Reading and validating {escape(source)}", lambda: _ingest(source, data_dir)
    )
    _say_aggregated(ingested)
    _print_validation(ingested.validated)
    if _nothing_usable(ingested.validated):
        _refuse_nothing_usable(ingested.validated, source, "the source is unusable as it is")
    unexpected = sum(
        count
        for (_, reason), count in ingested.validated.reject_counts().items()
        if reason != EXCLUDED_REASON
    )
    if strict and unexpected:
        raise typer.Exit(code=1)


@app.command()
def funnel(
    data: Annotated[
        Path,
        typer.Option(
            help="A folder written by ingest or simulate (run writes one: its --out/data)."
        ),
    ],
    as_of: Annotated[
        str | None,
        typer.Option(
            help="Snapshot date (YYYY-MM-DD, UTC); default: the day after the last event."
        ),
    ] = None,
    assume_consent: Annotated[
        bool,
        typer.Option(
            "--assume-consent", help="Without a contacts table: treat every contact as consented."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Show how many consented contacts sit in each funnel stage as of a date."""
    import polars as pl

    from features.consent import check_contacts
    from features.engine import events_files, scan_events
    from features.io import InputWatch, read_table
    from serving.funnel import default_as_of

    snapshot = _as_of_date(as_of) if as_of is not None else None
    # the folder's events as features and score read them: its events.parquet, else its
    # Parquet files (review: a folder of parts was "events.parquet does not exist")
    if not data.exists():
        raise FileNotFoundError(
            f"--data {data} does not exist; give the folder written by ingest or simulate"
        )
    events = data
    if data.is_dir():
        _say_unread_beside(data, "--data", glob_taken=False)  # funnel reads folders only
    contacts_path = data / "contacts.parquet"
    history_path = data / "stage_history.parquet"
    # the files as they are now: a write into the folder while this reads them is found
    # before the report is shown, as score and features find it
    watch = InputWatch([*events_files(events), contacts_path, history_path])
    with watch.reading():
        contacts = read_table(contacts_path) if contacts_path.exists() else None
        if contacts is not None:
            check_contacts(contacts)  # before any work, as features and score check them
        # the events as features and score read them (in UTC, refused in their words), not raw
        last = scan_events(events).select(pl.col("timestamp").max()).collect().item()
        if snapshot is None or snapshot > dt.datetime.now(dt.UTC):  # read: as of after now
            _refuse_events_after_now(last, f"--data {data}")
        history = read_table(history_path) if history_path.exists() else None
        _print_funnel(
            events,
            contacts,
            history,
            config=config,
            as_of=snapshot or default_as_of(last),
            assume_consent=assume_consent,
            after_reading=watch.check,
        )


@app.command()
def features(
    events: Annotated[
        Path, typer.Option(help="Events Parquet: a file, or a folder written by ingest/simulate.")
    ],
    as_of: Annotated[str, typer.Option(help="Snapshot date, YYYY-MM-DD (UTC midnight).")],
    out: Annotated[Path, typer.Option(help="Parquet file for the feature table.")],
    contacts: Annotated[
        Path | None,
        typer.Option(help="Contacts Parquet (default: contacts.parquet beside the events)."),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option(help="Your feature spec YAML (default: the shipped one).")
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            help="polars: this machine, streaming; spark: the same spec on Spark (local mode, "
            "needs Java 17 and the spark extra)."
        ),
    ] = Engine.polars,
    spark_memory: Annotated[
        str,
        typer.Option(
            help="--engine spark: the local Spark driver's memory (Java's form: 4g, 8g, "
            "512m); 4g ran out at 10 M events here, 8g did not."
        ),
    ] = "4g",
    assume_consent: Annotated[
        bool,
        typer.Option(
            "--assume-consent", help="Without a contacts table: treat every contact as consented."
        ),
    ] = False,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="Build the features a registered model reads: its own feature spec and rules "
            "(as score and the service use them), for precomputed-features requests. With "
            "--alias or --version; alone, the configured alias (champion). --tracking-uri "
            "names a model too (the configured one in that store).",
        ),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(help="With a model: its registry alias (default: the configured one)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="With a model: its registry version instead of an alias.")
    ] = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Per-contact features as of a date, from the declarative feature spec (events before the
    date only). Contacts without marketing consent are left out of the file, and counted; so
    are those whose first event comes after the date (nobody knew them then)."""
    from features.consent import check_contacts, restrict_to_consented
    from features.engine import (
        build_contact_features,
        events_files,
        feature_columns,
        first_event_times,
        leave_out_not_yet_active,
    )
    from features.io import InputWatch, read_table, write_parquet_atomic
    from features.spec import load_feature_spec

    _one_model(alias=alias, version=version)
    # any of the model's options names a model, as for score (--tracking-uri alone: the
    # configured alias's model in that store)
    for_model = bool(model_name or alias or version or tracking_uri)
    if for_model and spec is not None:
        raise InputError(
            "--spec and a model (--model-name, --alias, --version or --tracking-uri): the "
            "model's features are built with its own spec; give one or the other"
        )
    snapshot = _as_of_date(as_of)
    if snapshot > dt.datetime.now(dt.UTC):  # tomorrow: reads today's events up to now only
        from features.engine import events_time_span

        _refuse_events_after_now(events_time_span(events)[1], f"--events {events}")
    if out.suffix.lower() != ".parquet":
        raise InputError(f"--out {out} would hold Parquet; give a file name ending in .parquet")
    contacts_path = _contacts_for(events, contacts, assume_consent, "exported")
    _not_an_input(out, events, contacts_path)
    _can_write(out)  # before the build, not after it
    model = None
    if for_model:
        model, info = _registered(config, model_name, alias, version, tracking_uri)
        feature_spec, rules = model.spec, model.rules
        console.print(
            f"With the feature spec and rules of [bold]{escape(str(info.model_name))}[/] "
            f"version {info.model_version} ({escape(info.loaded_from())})."
        )
    else:
        feature_spec = load_feature_spec(spec)
        rules = load_rules_settings(config)
    # the files as they are now: a write into the folder while this reads them is found
    watch = InputWatch([*events_files(events), contacts_path])
    with watch.reading():
        contact_table = read_table(contacts_path) if contacts_path.exists() else None
        if contact_table is not None:
            check_contacts(contact_table)  # before any work: consent decides what is written
        building = f"Building {len(feature_spec.names)} features as of {snapshot:%Y-%m-%d}"
        if engine is Engine.spark:
            table = _build_features_on_spark(
                events,
                contact_table,
                building,
                as_of=snapshot,
                spec=feature_spec,
                rules=rules,
                memory=spark_memory,
            )
        else:
            with _progress() as progress:
                task = progress.add_task(building, total=None)

                def advance(done: int, parts: int) -> None:
                    # a large input is done in parts (ranges of contacts), each a step of the bar
                    label = building if parts == 1 else f"{building}, {parts} parts of contacts"
                    progress.update(task, description=label, total=parts, completed=done)

                table = build_contact_features(
                    events,
                    contact_table,
                    as_of=snapshot,
                    spec=feature_spec,
                    rules=rules,
                    progress=advance,
                )
        consented = restrict_to_consented(table, contact_table, assume_consent=assume_consent)
        # a listed contact whose first event comes after the date was unknown then: training makes
        # it no row and score does not score it, so it is no row here either (counted)
        table = leave_out_not_yet_active(consented.kept, first_event_times(events), as_of=snapshot)
        later = consented.kept.height - table.height  # one row per contact
    if model is not None:  # the features the model reads, so the file is a request's features
        from serving.scoring import with_missing_attributes  # MLflow's imports: a model's only

        table, missing = with_missing_attributes(table, model)
        if missing:
            console.print(
                f"The model reads contact attributes the contacts table does not hold "
                f"({escape(', '.join(missing))}): written as missing values, as the service "
                "scores an attribute not sent."
            )
        # a contacts column the model does not read (an e-mail address, a phone number that
        # the spec's `attributes: all` took in) is not exported: the service refuses it as an
        # unknown feature, and it is personal data the file has no use for (export review)
        read = set(model.feature_names)
        unread = [name for name in feature_columns(table) if name not in read]
        if unread:
            table = table.drop(unread)
            console.print(
                f"Left out {len(unread)} contacts column(s) the model does not read "
                f"({escape(', '.join(unread[:8]))}"
                f"{f' and {len(unread) - 8} more' if len(unread) > 8 else ''})."
            )
    watch.check()  # the file would hold features of mixed data
    write_parquet_atomic(table.to_arrow(), out)
    console.print(
        f"Wrote {table.height:,} contacts x {table.width - 2} features to {escape(str(out))} "
        f"(spec {feature_spec.fingerprint[:12]}); "
        f"{consented.contacts_without_consent:,} without marketing consent left out."
    )
    _say_not_yet_active(later, "written")


@app.command()
def score(
    events: Annotated[
        Path, typer.Option(help="Events Parquet: a file, or a folder written by ingest/simulate.")
    ],
    out: Annotated[
        Path,
        typer.Option(help="Scores file for the CRM to import: .parquet or .csv (with a header)."),
    ],
    as_of: Annotated[
        str | None,
        typer.Option(
            help="Score as of this day, YYYY-MM-DD (UTC midnight; events before it only); "
            "default: the day after the last event."
        ),
    ] = None,
    previous: Annotated[
        Path | None,
        typer.Option(
            help="The scores of the run before (last week's file): shows who moved since."
        ),
    ] = None,
    contacts: Annotated[
        Path | None,
        typer.Option(help="Contacts Parquet (default: contacts.parquet beside the events)."),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(
            help=f"Registry alias of the model to score with (default: {_CONFIGURED_ALIAS})."
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Registry version to score with instead of the alias.")
    ] = None,
    reasons: Annotated[
        bool,
        typer.Option(
            "--reasons/--no-reasons",
            help="Each contact's top-3 reasons in CRM words (--no-reasons: faster, columns empty).",
        ),
    ] = True,
    engine: Annotated[
        Engine,
        typer.Option(
            help="The features' engine: polars (this machine, streaming) or spark (the same "
            "spec on Spark, local mode; needs Java 17 and the spark extra)."
        ),
    ] = Engine.polars,
    spark_memory: Annotated[
        str, typer.Option(help="--engine spark: the local Spark driver's memory (4g, 8g, ...).")
    ] = "4g",
    assume_consent: Annotated[
        bool,
        typer.Option(
            "--assume-consent", help="Without a contacts table: treat every contact as consented."
        ),
    ] = False,
    model_name: ModelNameOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """The weekly scoring job: every consented contact's stage, stage probabilities, purchase
    propensity, reasons and CTA as of a date, by a registered model (the champion by default)
    from the same features as training and the service, written for the CRM to import
    (Parquet or CSV, all or nothing); then the funnel by predicted stage beside the rules and,
    with --previous, who moved deeper or back since the last scores and where the funnel
    leaks. Contacts without marketing consent are never scored or written."""
    _one_model(alias=alias, version=version)
    snapshot = _as_of_date(as_of) if as_of is not None else None  # before seconds of imports
    import polars as pl

    from features.consent import check_contacts
    from features.engine import build_contact_features, events_files, events_time_span
    from features.io import InputWatch, read_table, write_csv_atomic, write_parquet_atomic
    from serving.funnel import default_as_of
    from serving.scoring import (
        check_scores_path,
        other_model,
        previous_as_of,
        read_scores,
        score_features,
    )

    check_scores_path(out, "--out")
    contacts_path = _contacts_for(events, contacts, assume_consent, "scored")
    _not_an_input(out, events, contacts_path)
    if previous is not None and previous.resolve() == out.resolve():
        raise InputError(
            f"--previous {previous} is the --out file: this run would write over the scores it "
            "compares with; give a new --out (a file per run, e.g. scores-YYYY-MM-DD.parquet)"
        )
    earlier = read_scores(previous) if previous is not None else None
    if earlier is not None and earlier.height == 0:
        # its counts would all be 0: every contact 'new', and 'no stage lost any' read as a
        # clean week (batch review)
        console.print(
            f"[yellow]--previous {escape(str(previous))} holds no scores (0 contacts):[/] there "
            "is nothing to compare with, so no movement is shown. If that run failed or its "
            "file was cut, give an earlier week's scores."
        )
        earlier = None
    _can_write(out, "scores")  # before the work, not after it
    # the files as they are now: a write into the folder while this reads them is found
    watch = InputWatch([*events_files(events), contacts_path])
    with watch.reading():
        contact_table = read_table(contacts_path) if contacts_path.exists() else None
        if contact_table is not None:
            check_contacts(contact_table)  # before any work: consent decides what is scored
            consenting = pl.from_arrow(contact_table.select(["marketing_consent"]))
            if not consenting["marketing_consent"].any():  # type: ignore[index]
                raise InputError(
                    f"none of the {contact_table.num_rows:,} contacts in {contacts_path} has "
                    "marketing consent, so there is nobody to score; give the contacts table with "
                    "their consent"
                )
        first, last = events_time_span(events)
        if first is None or last is None:
            raise InputError(f"--events {events} holds no events; give the events to score from")
        if snapshot is not None and snapshot <= first:
            console.print(
                f"[yellow]--as-of {snapshot:%Y-%m-%d} is not after the first event "
                f"({first:%Y-%m-%d}):[/] no contact has an event before it, so none with "
                "events is scored (nobody knew them then); only contacts listed without any "
                "event are, dormant or on their attributes alone."
            )
        if snapshot is None or snapshot > dt.datetime.now(dt.UTC):  # read: as of after now
            _refuse_events_after_now(last, f"--events {events}")
        if snapshot is None:
            snapshot = default_as_of(last)  # the day after the last event, at most tomorrow
            _say_if_stale(last, f"--events {events}")
        else:
            _say_if_stale(last, f"--events {events}", as_of=snapshot)
        then = previous_as_of(earlier) if earlier is not None else None
        if then is not None and then >= snapshot:
            raise InputError(
                f"--previous {previous} holds scores as of {then:%Y-%m-%d}, not before this "
                f"run's as_of {snapshot:%Y-%m-%d}; give the scores of an earlier run"
            )
        model, info = _registered(config, model_name, alias, version, tracking_uri)
        console.print(
            f"Scoring with [bold]{escape(str(info.model_name))}[/] version {info.model_version} "
            f"({escape(info.loaded_from())}) as of {snapshot:%Y-%m-%d}."
        )
        building = f"Building {len(model.spec.names)} features"
        if engine is Engine.spark:
            features = _build_features_on_spark(
                events,
                contact_table,
                building,
                as_of=snapshot,
                spec=model.spec,
                rules=model.rules,
                memory=spark_memory,
            )
        else:
            with _progress() as progress:
                task = progress.add_task(building, total=None)

                def built(done: int, parts: int) -> None:
                    progress.update(task, total=parts, completed=done)

                features = build_contact_features(
                    events,
                    contact_table,
                    as_of=snapshot,
                    spec=model.spec,
                    rules=model.rules,
                    progress=built,
                )
        with _progress() as progress:
            scoring = progress.add_task("Scoring contacts", total=None)

            def scored(done: int, total: int) -> None:
                progress.update(scoring, total=total, completed=done)

            result = score_features(
                model,
                features,
                contact_table,
                events=events,
                as_of=snapshot,
                model_name=str(info.model_name),
                model_version=str(info.model_version),
                assume_consent=assume_consent,
                reasons=reasons,
                scored=scored,
            )
    watch.check()  # before any word on the scores: they may be of mixed data
    table = result.table
    if result.missing_attributes:
        console.print(
            f"The model reads contact attributes the contacts table does not hold "
            f"({escape(', '.join(result.missing_attributes))}): scored as missing values, as "
            "the service scores an attribute not sent."
        )
    if result.unsubscribed:
        console.print(
            f"[yellow]{result.unsubscribed:,} of the scored contacts unsubscribed before "
            f"{snapshot:%Y-%m-%d} (an unsubscribe event), yet have marketing consent: consent "
            "is the contacts table's marketing_consent (or --assume-consent), so they are "
            "scored; if the unsubscribe withdrew it, update the contacts export.[/yellow]"
        )
    for name, unseen, valued in result.unseen_categories:
        console.print(
            f"[yellow]{escape(name)}: {unseen:,} of the {valued:,} contacts with a value hold "
            "a category the model never saw in training, scored as missing"
            + (
                " (none of them is one of its categories: was the export's spelling or case "
                "changed?)"
                if unseen == valued
                else ""
            )
            + ".[/yellow]"
        )
    if out.suffix.lower() == ".csv":
        # ISO 8601 with a T and Z, as the service answers it (CRM importers read that form)
        written = table.with_columns(pl.col("as_of").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        _with_spinner(
            f"Writing {escape(str(out))}", lambda: write_csv_atomic(written.to_arrow(), out)
        )
        _warn_formula_ids(table)
    else:
        _with_spinner(
            f"Writing {escape(str(out))}", lambda: write_parquet_atomic(table.to_arrow(), out)
        )
    console.print(
        f"Wrote the scores of {_count(table.height, 'contact')} to {escape(str(out))}; "
        f"{result.contacts_without_consent:,} without marketing consent were not scored."
    )
    _say_not_yet_active(result.contacts_not_yet_active, "scored")
    _print_scored_funnel(table, earlier, then)
    change = other_model(earlier, str(info.model_name), str(info.model_version))
    if change is not None:
        now = f"{info.model_name} version {info.model_version}"
        console.print(
            f"The previous scores are of {escape(change)} and these of {escape(now)}: the "
            "movement is the models' difference as well as the contacts'."
        )


def _print_scored_funnel(table: Any, earlier: Any, then: dt.datetime | None) -> None:
    """The funnel by predicted stage (beside the rules' and the previous scores' counts), and
    with the previous scores, where their contacts are now."""
    import polars as pl

    from serving.scoring import MIN_LEAK_CONTACTS, movement

    def by_stage(frame: Any, column: str = "stage") -> dict[str, int]:
        return dict(frame.group_by(column).len().iter_rows())

    counts = by_stage(table)
    rules = by_stage(table, "rules_stage") if "rules_stage" in table.columns else None
    before = by_stage(earlier) if earlier is not None else None
    propensity = dict(table.group_by("stage").agg(pl.col("propensity").mean()).iter_rows())
    total = max(table.height, 1)
    title = "Contacts by predicted stage (propensity: their mean"
    if before is not None and then is not None:
        title += f"; previous: the scores as of {then:%Y-%m-%d}"
    funnel = Table(title=title + ")")
    headers = ["stage", "funnelcast", "share", "propensity"]
    headers += ["rules"] if rules is not None else []
    headers += ["previous", "change"] if before is not None else []
    # narrow terminals (cron's 80 columns) wrap a figure, never cut it; stage names stay whole
    stage_width = max(len(s) for s in STAGES)
    funnel.add_column("stage", no_wrap=True, min_width=stage_width)
    for name in headers[1:]:
        funnel.add_column(name, justify="right", overflow="fold")
    for stage in STAGES:
        n = counts.get(stage, 0)
        row = [
            stage,
            f"{n:,}",
            f"{n / total:.1%}",
            "-" if stage not in propensity else f"{propensity[stage]:.3f}",
        ]
        if rules is not None:
            row.append(f"{rules.get(stage, 0):,}")
        if before is not None:
            row += [f"{before.get(stage, 0):,}", f"{n - before.get(stage, 0):+,}"]
        funnel.add_row(*row)
    console.print(funnel)
    if earlier is None:
        return
    moved = movement(table, earlier)
    since = Table(title="Where the previous scores' contacts are now")
    for name in (
        "stage then",
        "contacts",
        "stayed",
        "moved deeper",
        "moved back",
        "not scored now",
    ):
        if name == "stage then":
            since.add_column(name, no_wrap=True, min_width=stage_width)
        else:
            since.add_column(name, justify="right", overflow="fold")
    for m in moved.by_stage:
        since.add_row(
            m.stage,
            f"{m.then:,}",
            f"{m.stayed:,}",
            f"{m.deeper:,}",
            f"{m.back:,}",
            f"{m.not_scored_now:,}",
        )
    console.print(since)
    console.print(
        f"{_count(moved.new, 'contact')} scored now {'was' if moved.new == 1 else 'were'} not "
        "in the previous scores."
    )
    if earlier.height and moved.new == table.height:
        console.print(
            f"[yellow]None of the previous scores' {_count(earlier.height, 'contact')} is "
            "scored now:[/] are they the same contacts, with their ids written the same way?"
        )
    leak = moved.leak()
    if leak is None:
        console.print(
            f"No stage of {MIN_LEAK_CONTACTS} contacts or more lost any to a shallower stage "
            "since the previous scores."
        )
    else:
        console.print(
            f"Where the funnel leaks most: {leak.stage}, {leak.back:,} of its {leak.then:,} "
            f"contacts ({leak.back / leak.then:.1%}) moved back to a shallower stage."
        )


@app.command()
def train(
    events: Annotated[
        Path, typer.Option(help="Events Parquet: a file, or a folder written by ingest/simulate.")
    ],
    contacts: Annotated[
        Path | None,
        typer.Option(help="Contacts Parquet (default: contacts.parquet beside the events)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Provided labels Parquet (contact_id, label_date, outcome), e.g. CRM "
            "lifecycle stages or won/lost; default: with --source, the labels.parquet ingest "
            "wrote beside the events, if any (as `run --source`), else labels revealed by the "
            "events."
        ),
    ] = None,
    tune: Annotated[
        int, typer.Option(min=0, help="Optuna trials per model (0: the default parameters).")
    ] = 0,
    horizon: Annotated[
        int | None, typer.Option(min=1, help="Label horizon in days (default 14).")
    ] = None,
    observe_until: ObserveUntilOption = None,
    spec: Annotated[
        Path | None, typer.Option(help="Your feature spec YAML (default: the shipped one).")
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the model as a new version of --model-name.")
    ] = True,
    model_name: ModelNameOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="The source the events were ingested from (a shipped name or a mapping YAML): "
            "its mapping's training settings and model name are used, as `run --source` does "
            "(not with --config)."
        ),
    ] = None,
    assume_consent: Annotated[
        bool,
        typer.Option(
            "--assume-consent", help="Without a contacts table: treat every contact as consented."
        ),
    ] = False,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Train the stage and propensity models on snapshots of the events, evaluate them beside
    the rules and the RFM baseline on later snapshots, and log everything to MLflow. Only
    contacts with marketing consent are trained on and scored."""
    with _saying_what_a_stop_left() as training:
        from features.engine import events_files
        from features.io import InputWatch, read_table
        from training.pipeline import require_known_consent

        cut = _parse_date(observe_until, "--observe-until") if observe_until is not None else None
        _require_events(events)  # before the contacts beside it
        folder = events if events.is_dir() else events.parent
        if contacts is not None and not contacts.exists():
            raise FileNotFoundError(
                f"--contacts {contacts} does not exist; give a contacts Parquet"
            )
        contacts_path = contacts or folder / "contacts.parquet"
        # the files as they are now: a write into the folder while training reads them is
        # found before the models are fitted on what may be two exports' mix
        beside = [folder / "labels.parquet"] if labels is None else [labels]
        watch = InputWatch([*events_files(events), contacts_path, *beside])
        contact_table = read_table(contacts_path) if contacts_path.exists() else None
        require_known_consent(contact_table, assume_consent=assume_consent)  # before a run starts
        # ingest wrote the source's provided labels beside its events: trained on, as `run
        # --source` does (on labels revealed by the events instead, the version could not be
        # compared with one `run` made: promote refuses labels of another kind)
        from_source = labels is None and source is not None and (folder / "labels.parquet").exists()
        if from_source:
            labels = folder / "labels.parquet"
        label_table = read_table(labels) if labels is not None else None
        if from_source and label_table is not None:
            console.print(
                f"Training on the source's provided labels ({label_table.num_rows:,} rows, "
                f"{labels}), as `run --source` does."
            )
        from training.pipeline import InsufficientDataError

        said_horizon = {} if horizon is None else {"horizon_days": f"--horizon {horizon}"}
        try:
            with watch.reading():
                _train_and_report(
                    events,
                    contact_table,
                    label_table,
                    tune=tune,
                    overrides=_observing_until(
                        _source_training(
                            source,
                            config,
                            model_name,
                            options=said_horizon,
                        ),
                        cut,
                        config,
                    )
                    | ({} if horizon is None else {"horizon_days": horizon}),
                    spec_path=spec,
                    register=register,
                    tracking_uri=tracking_uri,
                    config=config,
                    assume_consent=assume_consent,
                    training=training,
                    after_reading=watch.check,
                )
        except InsufficientDataError as error:
            _print_no_model(error)  # as `run` says it: a report, not a crash
            raise typer.Exit(code=1) from error


@app.command()
def evaluate(
    version: Annotated[str | None, typer.Option(help="Model version (default: the alias).")] = None,
    alias: Annotated[
        str | None,
        typer.Option(help=f"Registry alias to evaluate (default: {_CONFIGURED_ALIAS})."),
    ] = None,
    model_name: ModelNameOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Show a registered model's quality on its out-of-time test window, beside the rules and
    the RFM baseline (as logged by its training run)."""
    _one_model(version=version, alias=alias)
    from training.registry import resolve, run_metrics
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, existing_store

    # a store that does not exist is said so; MLflow would make an empty one here and the
    # error would be a missing model
    configure_tracking(existing_store(tracking_uri))
    _patient_registry()  # a registry that does not answer: seconds, not minutes of retries
    settings = load_training_settings(config, model_name=model_name)
    alias = alias or settings.registry.champion_alias
    ref = resolve(settings.registry.model_name, alias=None if version else alias, version=version)
    console.print(
        f"[bold]{escape(ref.name)}[/] version {ref.version} (run {ref.run_id[:12]}), test window:"
    )
    _print_quality(run_metrics(ref))


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Option(help="Challenger version (default: the latest).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote even if it does not beat the champion (recorded)."),
    ] = False,
    model_name: ModelNameOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a version the champion if it beats the current one on the same out-of-time test
    window (better on stage macro-F1 or purchase AUC-PR, worse on neither beyond noise);
    otherwise refuse and say by how much."""
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, existing_store

    # a store that does not exist is said so; MLflow would make an empty one here and the
    # error would be a missing model
    configure_tracking(existing_store(tracking_uri))
    _patient_registry()  # a registry that does not answer: seconds, not minutes of retries
    settings = load_training_settings(config, model_name=model_name)
    if not _promote_and_report(
        settings.registry.model_name, settings.registry.champion_alias, version=version, force=force
    ):
        raise typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    alias: Annotated[
        str | None,
        typer.Option(help=f"Registry alias of the model to serve (default: {_CONFIGURED_ALIAS})."),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Registry version to serve instead of the alias.")
    ] = None,
    bento_model: Annotated[
        str | None,
        typer.Option(help="Serve a model from the BentoML store (e.g. funnelcast:latest)."),
    ] = None,
    allow_rules_fallback: Annotated[
        bool,
        typer.Option(
            "--allow-rules-fallback",
            help="With no model, serve the rules (every answer says model 'rules').",
        ),
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File of API keys, one per line (or set FUNNELCAST_API_KEY)."),
    ] = None,
    model_name: ModelNameOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve predictions over HTTP with BentoML (`bentoml serve serving.service:Funnelcast`):
    POST /predict, POST /predict_batch, GET /metadata, /healthz, /readyz; API docs at /
    (OpenAPI at /docs.json).

    The model and the API key are checked before the server starts, so a wrong setting is one
    clear line here, not a crashing worker. A registered model is copied under BentoML's home
    (BENTOML_HOME) as it is checked, and the workers load that copy: a worker restarted while
    the registry is down still serves the model."""
    _one_model(alias=alias, version=version, bento_model=bento_model)
    if bento_model and model_name:  # the tag names the model; the registry's name is not read
        raise InputError(
            "--bento-model names a model in the BentoML store and --model-name one in the "
            "MLflow registry; give one"
        )
    if bento_model and tracking_uri:  # was taken and not read (deploy review)
        raise InputError(
            "--bento-model names a model in the BentoML store and --tracking-uri an MLflow "
            "store, which is then not read; give one"
        )
    from serving.runtime import ServiceSettings, load_scorer, read_api_keys
    from training.settings import load_training_settings

    settings = load_training_settings(config, model_name=model_name)
    _check_port_free(host, port)  # before the model's check, which takes seconds
    _patient_registry()  # a registry that does not answer: seconds, not minutes of retries
    home = _check_bentoml_home()  # before the environment is copied: it may unset an empty one
    env = dict(os.environ)
    if api_key_file is not None:
        env["FUNNELCAST_API_KEY_FILE"] = str(api_key_file.resolve())
    read_api_keys(env)  # no key: said before MLflow and the model load, which take seconds
    from serving.model_copy import COPIES_IN_BENTOML_HOME
    from training.tracking import tracking_uri as resolve_uri

    # the copy the workers load is the one made below, of the model checked here: one named
    # in the shell would be loaded instead of the model these options name
    env.pop("FUNNELCAST_MODEL_COPY", None)
    # and the options name the model: a version or BentoML model left in the shell served
    # instead of `--version 2` (diff review)
    for name in (
        "FUNNELCAST_MODEL_VERSION",
        "FUNNELCAST_BENTO_MODEL",
        "FUNNELCAST_MODEL_PINNED_FROM_ALIAS",
    ):
        env.pop(name, None)
    env.update(
        {
            "FUNNELCAST_MODEL_NAME": settings.registry.model_name,
            "FUNNELCAST_MODEL_ALIAS": alias or settings.registry.champion_alias,
            "FUNNELCAST_WORKERS": str(workers),
            "MLFLOW_TRACKING_URI": _absolute_sqlite(resolve_uri(tracking_uri)),
        }
    )
    for key, value in (
        ("FUNNELCAST_MODEL_VERSION", version),
        ("FUNNELCAST_BENTO_MODEL", bento_model),
        ("FUNNELCAST_ALLOW_RULES_FALLBACK", "1" if allow_rules_fallback else None),
        ("FUNNELCAST_CONFIG", str(config.resolve()) if config else None),
    ):
        if value is not None:
            env[key] = value
    service_settings = ServiceSettings.from_env(env)
    # a registered model is copied for the workers, under BentoML's home: a worker BentoML
    # restarts (a crash, an OOM kill) loads it with the registry down (ops review)
    scorer = _with_spinner(
        "checking the model",
        lambda: load_scorer(service_settings, copy_into=home / COPIES_IN_BENTOML_HOME),
    )
    # whatever this start serves (a copy it holds, a BentoML model, the rules)
    _remove_unused_copies(home / COPIES_IN_BENTOML_HOME, keep=scorer.info.local_copy)
    console.print(
        f"Starting {escape(scorer.info.served())} on http://{host}:{port} ({workers} "
        "worker(s)); it answers once each worker has loaded the model (GET /readyz says 200), "
        "some seconds from now. API docs at / (OpenAPI at /docs.json). Ctrl-C stops it."
    )
    # every worker loads the model checked and named here: the version the alias points to
    # now, the exact tag of NAME:latest (each worker resolved them itself, so a worker
    # restarted after a promote or an import served another model than the others)
    if scorer.info.bento_model is not None:
        env["FUNNELCAST_BENTO_MODEL"] = scorer.info.bento_model
    elif scorer.info.model_version is not None:
        # a worker that cannot load it (a registry down when it restarts) falls back to the
        # rules where allowed, as it would for the alias; a --version given never does
        env["FUNNELCAST_MODEL_PINNED_FROM_ALIAS"] = "1" if version is None else "0"
        env["FUNNELCAST_MODEL_VERSION"] = scorer.info.model_version
        env.pop("FUNNELCAST_MODEL_ALIAS", None)
        if scorer.info.local_copy is not None:  # loaded from it, so no worker needs the registry
            env["FUNNELCAST_MODEL_COPY"] = str(scorer.info.local_copy)
    del scorer
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Funnelcast"]
    command += ["--host", host, "--port", str(port)]
    sys.stdout.flush()
    os.execvpe(sys.executable, command, env)  # the server replaces this process: Ctrl-C stops it


def _remove_unused_copies(root: Path, *, keep: Path | None) -> None:
    """The local copies of models no running server holds, removed and said in one line: one
    a week was left behind by every promotion."""
    from serving.held import remove_unheld_folders

    removed = remove_unheld_folders(root, keep=keep)
    if removed:
        names = ", ".join(escape(path.name) for path, _ in removed)
        size = sum(size for _, size in removed) / 2**20
        console.print(
            f"Removed {len(removed)} local model cop{'y' if len(removed) == 1 else 'ies'} "
            f"that no running server uses ({size:,.1f} MiB): {names}"
        )


# MLflow's HTTP retries for a registry that does not answer (its defaults: 7 retries with
# backoff and a 120 s timeout, about 4 minutes); a setting in the environment wins
_REGISTRY_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _check_port_free(host: str, port: int) -> None:
    """The address can be bound now (BentoML would say so only after a traceback)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"--host {host} is not an address of this machine ({exc})") from exc
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); another server may be "
                "using the port: stop it or give --port"
            ) from exc


def _check_bentoml_home() -> Path:
    """BentoML writes into its home (``BENTOML_HOME``, default ~/bentoml): the model store and
    the Bentos when building, its metrics files (and `serve`'s copy of the model) when serving.
    One that cannot be written was a 100-line traceback after the registry work. An empty one
    is unset here, for BentoML too, as XDG's variables are: BentoML would put its stores in the
    current folder. Returns the home, as BentoML reads it."""
    from features.io import check_writable_folder

    if not os.environ.get("BENTOML_HOME", "unset").strip():
        del os.environ["BENTOML_HOME"]
    # as BentoML reads it: ~ and $VARIABLES expanded until nothing changes
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    while (expanded := os.path.expanduser(os.path.expandvars(home))) != home:
        home = expanded

    try:
        check_writable_folder(Path(home))
    except InputError as exc:
        why = exc.args[0].removeprefix("cannot write into ").split("; give a folder")[0]
        raise InputError(
            f"BentoML's home (BENTOML_HOME) {why}: BentoML keeps its models and Bentos there, "
            "and a server's metrics files; set BENTOML_HOME to a folder you may write to"
        ) from None
    return Path(home).absolute()  # handed to the workers and said to the operator: whole


@contextmanager
def _patience_for_a_stop() -> Iterator[None]:
    """``_REGISTRY_PATIENCE`` for the block (a setting in the environment wins), then the
    environment as it was."""
    unset = [key for key in _REGISTRY_PATIENCE if key not in os.environ]
    for key in unset:
        os.environ[key] = _REGISTRY_PATIENCE[key]
    try:
        yield
    finally:
        for key in unset:
            os.environ.pop(key, None)


def _patient_registry() -> None:
    """MLflow's HTTP retries cut to ``_REGISTRY_PATIENCE`` unless the environment sets them."""
    for key, value in _REGISTRY_PATIENCE.items():
        os.environ.setdefault(key, value)


@app.command()
def build(
    alias: Annotated[
        str | None,
        typer.Option(
            help=f"Registry alias of the model to package (default: {_CONFIGURED_ALIAS})."
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Registry version to package instead of the alias.")
    ] = None,
    model_name: ModelNameOption = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
) -> None:
    """Package the service and a registered model as a Bento (bentofile.yaml): the model is
    copied into the BentoML model store, so the Bento runs without the MLflow registry
    (`bentoml serve funnelcast:latest`, or `bentoml containerize`)."""
    _one_model(alias=alias, version=version)
    _check_bentoml_home()  # before MLflow and BentoML load, which take seconds
    from training.settings import load_training_settings
    from training.tracking import configure_tracking, existing_store

    existing_store(tracking_uri)
    from serving.packaging import build_bento

    _patient_registry()
    configure_tracking(tracking_uri)
    settings = load_training_settings(config, model_name=model_name)
    chosen = alias or settings.registry.champion_alias
    built = _with_spinner(
        "building the Bento",
        lambda: build_bento(settings.registry.model_name, alias=chosen, version=version),
    )
    console.print(
        f"Built Bento [bold]{escape(str(built.bento))}[/] with model {escape(str(built.model))} "
        f"(version {built.version} of {escape(repr(settings.registry.model_name))} in the "
        "registry). Serve it with: FUNNELCAST_API_KEY=... "
        f"{escape(shell_command('bentoml'))} serve {escape(str(built.bento))}"
    )


@app.command("check-keys")
def check_keys(
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File of API keys, one per line (default: FUNNELCAST_API_KEY_FILE)."),
    ] = None,
) -> None:
    """Read the API keys as the service's workers will (FUNNELCAST_API_KEY and the key file)
    and say how many there are, never a key: run it on an edited key file before a reload,
    since a worker that finds no usable key does not start, and a reload of them all with
    such a file stops the server."""
    from serving.runtime import exposed_key_file, read_api_keys

    env = dict(os.environ)
    if api_key_file is not None:
        env["FUNNELCAST_API_KEY_FILE"] = str(api_key_file)
    keys = read_api_keys(env)
    where = [
        str(api_key_file) if name.endswith("_FILE") and api_key_file is not None else name
        for name in ("FUNNELCAST_API_KEY", "FUNNELCAST_API_KEY_FILE")
        if env.get(name)
    ]
    console.print(
        f"{_count(len(keys), 'API key')} read from {' and '.join(where)}, as the service reads "
        "them; a worker started or reloaded now accepts them."
    )
    if warning := exposed_key_file(env):
        console.print(f"[yellow]{escape(warning)}[/]")


@app.command()
def sources() -> None:
    """List the shipped source mappings."""
    from features.sources import list_sources, load_mapping

    table = Table("name", "what it is")
    for name in list_sources():
        table.add_row(name, load_mapping(name).description)
    console.print(table)


# --- steps -------------------------------------------------------------------------------------


def _simulate_into(
    out: Path, contacts: int, days: int, seed: int, start: dt.date | None, config: Path | None
) -> tuple[Validated, Any]:
    from features.schema import validate as validate_tables
    from features.simulator import load_simulator_settings, simulate, write_simulation

    settings = load_simulator_settings(config)
    with _progress() as progress:
        task = progress.add_task(f"Simulating {contacts:,} contacts", total=days)
        sim = simulate(
            settings,
            contacts=contacts,
            days=days,
            seed=seed,
            start=start,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    validated = _with_spinner(
        f"Validating {sim.events.num_rows:,} events",
        lambda: validate_tables(sim.events, sim.contacts),
    )
    if validated.rejects.num_rows:  # a simulator bug: nothing is written
        raise RuntimeError(f"the simulator produced {validated.rejects.num_rows} invalid rows")
    _with_spinner(
        f"Writing Parquet to {escape(str(out))}",
        lambda: write_simulation(sim, out, removed=_say_removed, set_aside=_say_set_aside),
    )
    return validated, sim.stage_history


def _can_write(out: Path, kind: str = "Parquet") -> None:
    """``out`` can be written: its folder exists (or can be made) and takes a new file;
    otherwise the ``InputError`` the write would give, now. Folders made to try it are
    removed again: the write makes them."""
    import tempfile

    from features.io import made_folders, replaced_file

    if out.is_dir():
        raise InputError(f"{out} is a folder; give a file name for the {kind} output")
    from features.io import check_writable_folder

    # a symbolic link's file is the one written, in its own folder
    folder = replaced_file(out).parent
    check_writable_folder(folder)  # a file where a folder goes: said so, in those words
    try:
        with made_folders(folder, keep=False), tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(
            f"cannot write {out}: {error.strerror or error} (is every folder above it a "
            "folder you may write to?)"
        ) from None


def _contacts_for(events: Path, contacts: Path | None, assume_consent: bool, done: str) -> Path:
    """The contacts table of ``--events`` (``--contacts``, else contacts.parquet beside the
    events); without one nobody's consent is known, and no contact may be ``done`` (exported,
    scored) unless the user says every contact opted in."""
    _require_events(events)  # before the contacts beside it
    folder = events if events.is_dir() else events.parent
    if contacts is not None and not contacts.exists():
        raise FileNotFoundError(f"--contacts {contacts} does not exist; give a contacts Parquet")
    contacts_path = contacts or folder / "contacts.parquet"
    if not contacts_path.exists() and not assume_consent:
        raise InputError(
            f"no contacts table ({contacts_path} does not exist), so no marketing consent is "
            f"known and no contact may be {done}; give --contacts, or pass --assume-consent if "
            "every contact opted in"
        )
    return contacts_path


def _say_not_yet_active(later: int, done: str) -> None:
    """How many consented contacts first appear at or after the snapshot, and so are not
    ``done`` (counted, scored, written): in the same words in funnel, score and features."""
    if later:
        console.print(
            f"{_count(later, 'contact')} whose first event comes after the snapshot "
            f"{'is' if later == 1 else 'are'} not {done}."
        )


def _count(n: int, noun: str) -> str:
    """``1 contact``, ``2 contacts``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _not_an_input(out: Path, events: Path, contacts: Path) -> None:
    """``--out`` is neither an input file, nor a file the events folder would read as events
    the next time (a folder without events.parquet is read as all its Parquet files), nor
    one of that folder's other tables (``stage_history.parquet``, the simulator's true
    stages, or a run's rejects), which the write would replace."""
    from features.engine import SIBLING_TABLES, is_glob, matches_glob
    from features.io import DATA_TABLES

    target = out.resolve()
    inputs = {contacts.resolve()}
    if is_glob(events):  # a glob: any file it matches is read as events
        if any(matches_glob(p, events) for p in (out, target)):
            raise InputError(
                f"--out {out} matches --events {events}: it would be read as events, and may "
                "be one of them; write it elsewhere"
            )
    elif not events.is_dir():
        inputs.add(events.resolve())
    elif (events / "events.parquet").exists():
        inputs.add((events / "events.parquet").resolve())
    elif (
        target.parent == events.resolve()
        and target.name.endswith(".parquet")  # as the folder is read: a CSV never is
        and target.name not in SIBLING_TABLES
        and any(f.name not in SIBLING_TABLES for f in events.glob("*.parquet"))
    ):
        raise InputError(
            f"--out {out} is in the events folder {events}, whose Parquet files are all read "
            "as events: the next run would read this output as events; write it elsewhere"
        )
    if target in inputs:
        raise InputError(f"--out {out} is one of the input files; give another file name")
    folder = events.parent if is_glob(events) or not events.is_dir() else events
    if target.parent == folder.resolve() and target.name in {f"{t}.parquet" for t in DATA_TABLES}:
        raise InputError(
            f"--out {out} is the {target.stem} table of the events' folder; write the output "
            "elsewhere"
        )


def _build_features_on_spark(
    events: Path,
    contacts: Any,
    description: str,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    rules: RulesSettings,
    memory: str = "4g",
) -> pl.DataFrame:
    """The Spark engine in local mode; it reads the events Parquet itself, as on a cluster,
    and is handed the contacts table already read and checked (Spark would skip a file whose
    name starts with '_' or '.')."""
    try:
        from features.spark_engine import (
            build_contact_features_spark,
            spark_features_to_polars,
            spark_session,
        )
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("pyspark"):
            raise
        raise InputError(
            "--engine spark needs pyspark; install the spark extra (`make install`, or "
            "`uv sync --extra spark`)"
        ) from error

    from features.engine import events_path

    if not re.fullmatch(r"[1-9]\d*[mMgG]", memory):
        raise InputError(
            f"--spark-memory {memory!r} is not a memory size as Java writes it; give e.g. 4g, "
            "8g or 512m"
        )
    events_path(events)  # a missing or unusable file is reported before Spark starts
    # Ctrl-C while Spark starts is noted and acted on once it has started: PySpark's own
    # handler (put in as the session is made) answered it with a traceback and exit 1, and
    # earlier the JVM was left running with nobody holding it (diff review)
    pressed = threading.Event()
    before = _note_ctrl_c(pressed)
    try:
        with _pyspark_keeps_our_ctrl_c():
            spark = _with_spinner(
                "Starting Spark (local mode)", lambda: spark_session(memory=memory.lower())
            )
    except BaseException:
        _end_started_jvm()  # a session half made: its JVM
        if before is not None:
            signal.signal(signal.SIGINT, before)
        raise
    interrupted = _interrupts_stop_the_command(spark)
    try:
        if pressed.is_set():  # pressed while Spark started: as if pressed now
            interrupted.set()
            _quiet_py4j()
            _end_jvm(spark)
            raise KeyboardInterrupt
        return _with_spinner(
            f"{description} on Spark",
            lambda: spark_features_to_polars(
                build_contact_features_spark(
                    events,
                    contacts,
                    as_of=as_of,
                    spec=spec,
                    rules=rules,
                    spark=spark,
                )
            ),
        )
    except Exception:
        # after Ctrl-C, PySpark's clean-up calls into the dropped gateway and fails with a
        # py4j error of its own: the command was interrupted, and says so by its exit status
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        if interrupted.is_set():
            # the JVM was ended by the interrupt: PySpark's stop fails on it, and warns that
            # the JVM may be 'in a zombie state', which it is not
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spark.stop()
        else:
            spark.stop()


def _interrupts_stop_the_command(spark: Any = None) -> threading.Event:
    """PySpark answers Ctrl-C by cancelling its jobs through the JVM gateway from the signal
    handler; while the command waits on that same gateway, the call fails (a reentrant read),
    py4j logs its traceback and the command went on to fail with exit status 1. A handler
    like Python's own is put in instead: the wait ends with KeyboardInterrupt, so the command
    stops with status 130 (as for any Ctrl-C), writes nothing, and Spark's JVM ends with it.
    The event returned is set once Ctrl-C has been pressed (PySpark's clean-up may then fail
    on the dropped gateway, which is the interrupt, not an error). A notebook keeps PySpark's
    handler (it never calls this).

    ``spark``: its JVM is ended at the interrupt. Pressed while the features streamed from
    the JVM, the interrupt left the JVM writing to a socket nobody read, and PySpark's
    clean-up waited on that JVM for good: three Ctrl-C to stop (spark review)."""
    interrupted = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        first = not interrupted.is_set()
        interrupted.set()
        _quiet_py4j()
        if first and spark is not None:
            _end_jvm(spark)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)
        # py4j also logs the interrupted wait, with its traceback, on the root logger
        root = logging.getLogger()
        if not any(isinstance(f, _NoPy4jInterruptTraceback) for f in root.filters):
            root.addFilter(_NoPy4jInterruptTraceback())
    return interrupted


def _quiet_py4j() -> None:
    """What py4j logs once Ctrl-C has been pressed is about the gateway the interrupt dropped:
    noise, not the command's failure. Its own loggers, and what it logs on the root logger
    ("Exception while sending command." with a traceback, when PySpark's stop finds the JVM
    gone: two runs in six of the start-up Ctrl-C test, on a loaded machine) are silenced."""
    logging.getLogger("py4j").setLevel(logging.CRITICAL + 1)
    root = logging.getLogger()
    if not any(isinstance(f, _NotFromPy4j) for f in root.filters):
        root.addFilter(_NotFromPy4j())


class _NotFromPy4j(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}py4j{os.sep}" not in record.pathname


def _end_jvm(spark: Any) -> None:
    """End the local Spark session's JVM (the process PySpark started for its gateway), so
    that nothing waits on it: every call into it then fails at once. SIGTERM, not SIGKILL:
    the JVM's shutdown removes its scratch folders (/tmp/blockmgr-*, /tmp/spark-*), which a
    kill left behind, shuffle files and all (diff review)."""
    gateway = getattr(getattr(spark, "sparkContext", None), "_gateway", None)
    process = getattr(gateway, "proc", None)
    if process is not None and process.poll() is None:
        with contextlib.suppress(OSError):
            process.terminate()


@contextlib.contextmanager
def _pyspark_keeps_our_ctrl_c() -> Iterator[None]:
    """While the session is made, PySpark's context does not put in its own Ctrl-C handler:
    installed part way through the start, it answered a Ctrl-C with a call into the gateway
    while the start was in one, and the command failed with py4j's traceback and exit 1
    (diff review: 5 of 5 at 7-11 s into a start). The handler ``_note_ctrl_c`` put in stays,
    and the Ctrl-C is acted on once the session is made."""
    try:
        import pyspark.core.context as context
    except ImportError:  # another PySpark layout: its handler is put in as before
        yield
        return
    real = context.signal

    class _Signals:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def signal(signum: int, handler: Any) -> Any:
            if signum == real.SIGINT:
                return real.getsignal(signum)
            return real.signal(signum, handler)

    context.signal = _Signals()  # type: ignore[assignment]
    try:
        yield
    finally:
        context.signal = real


def _note_ctrl_c(pressed: threading.Event) -> Any:
    """Until another handler is put in, Ctrl-C only sets ``pressed`` (in the main thread;
    elsewhere nothing changes and None is returned). The handler it replaced, otherwise."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def note(signum: int, frame: Any) -> None:
        pressed.set()

    return signal.signal(signal.SIGINT, note)


def _end_started_jvm() -> None:
    """The JVM of a Spark session whose start stopped half way (Ctrl-C in PySpark's own
    handler, an error), if it got as far as one."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is not None:
        _end_jvm(SimpleNamespace(sparkContext=context))


class _NoPy4jInterruptTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.getMessage() == "KeyboardInterrupt while sending command."
            and f"{os.sep}py4j{os.sep}" in record.pathname
        )


def _ingest(source: str, data_dir: Path | None) -> Any:
    from features.sources import default_data_dir
    from features.sources import ingest as ingest_source

    return ingest_source(source, data_dir=data_dir or default_data_dir())


def _say_removed(path: Path) -> None:
    console.print(
        f"Removed {escape(str(path))}: an earlier run's table, which these events do not go with"
    )


def _say_set_aside(path: Path, aside: Path) -> None:
    console.print(
        f"Renamed {escape(str(path))} to {escape(aside.name)}: funnelcast did not mark it as "
        "its own (yours, or an older version's), so it is kept, not removed or written over"
    )


def _ingest_into(source: str, out: Path, data_dir: Path | None) -> Validated:
    from pydantic import BaseModel

    from features.io import DATA_TABLES, check_not_inputs, write_tables_atomic
    from features.sources import ReadSpec, default_data_dir, load_mapping

    def read_specs(value: object) -> Iterator[ReadSpec]:  # every file the mapping reads
        if isinstance(value, ReadSpec):
            yield value
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                yield from read_specs(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                yield from read_specs(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from read_specs(item)

    # a table written over the raw file it is made from: refused now, not after the reading
    folder = data_dir or default_data_dir()
    inputs = [
        folder / spec.path for spec in read_specs(load_mapping(source)) if spec.package is None
    ]
    check_not_inputs(out, inputs, DATA_TABLES)
    ingested = _with_spinner(
        f"Reading and validating {escape(source)}", lambda: _ingest(source, data_dir)
    )
    validated: Validated = ingested.validated
    if _nothing_usable(validated):
        _print_validation(validated)
        _refuse_nothing_usable(validated, source, "nothing was written")
    tables = {
        "events": validated.events,
        "contacts": validated.contacts,
        "rejects": validated.rejects,
        "labels": ingested.labels,
    }
    written = _with_spinner(
        f"Writing Parquet to {escape(str(out))}",
        lambda: write_tables_atomic(
            tables,
            out,
            replaces=DATA_TABLES,
            removed=_say_removed,
            inputs=inputs,
            set_aside=_say_set_aside,
        ),
    )
    console.print("Wrote " + ", ".join(escape(str(path)) for path in written.values()))
    _say_aggregated(ingested)
    return validated


def _nothing_usable(validated: Validated) -> bool:
    """Every event of the source was set aside (none was there at all is another error)."""
    return validated.events.num_rows == 0 and any(
        n for (table, _), n in validated.reject_counts().items() if table == "events"
    )


def _refuse_nothing_usable(validated: Validated, source: str, said: str) -> NoReturn:
    """A source none of whose events can be used, in one line with the commonest reasons: it
    was written as an empty events table with exit 0, and `run` went on to train on nothing
    (review: every timestamp unparseable, a mapping's `format:` wrong for the file)."""
    aside = sorted(
        (
            (n, reason)
            for (table, reason), n in validated.reject_counts().items()
            if table == "events" and n
        ),
        reverse=True,
    )
    reasons = ", ".join(f"{reason} {n:,}" for n, reason in aside[:3])
    raise InputError(
        f"none of the {sum(n for n, _ in aside):,} events of {source} can be used (set aside: "
        f"{reasons}{', and more' if len(aside) > 3 else ''}); {said}: check the mapping (the "
        "timestamp's `format:`, the columns it names) against the files, and run again"
    )


# --- display -----------------------------------------------------------------------------------


def _say_aggregated(ingested: Ingested) -> None:
    """A stream that combines lines into one event per group (baskets) makes the events' rows
    in a count of groups, not of the file's lines (a review could not reconcile them); and
    what reading the groups did to their values is said."""
    for index, stream in enumerate(ingested.mapping.events):
        if stream.aggregate is not None:
            console.print(
                f"events[{index}] {escape(repr(stream.name))} combines the lines of "
                f"{escape(stream.read.path)} into one event per "
                f"{escape(', '.join(stream.aggregate.by))}: its rows in count those, not lines"
            )
    for note in ingested.notes:
        console.print(escape(note))


def _print_validation(validated: Validated) -> None:
    table = Table(title="Validation", show_lines=False)
    table.add_column("table")
    table.add_column("rows in", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("set aside", justify="right")
    kept = {"events": validated.events.num_rows}
    if validated.contacts is not None:
        kept["contacts"] = validated.contacts.num_rows
    counts = validated.reject_counts()
    for name, rows_in in validated.rows_in.items():  # a source's labels: kept = in - aside
        if name not in kept:
            kept[name] = rows_in - sum(n for (t, _), n in counts.items() if t == name)
    for name, rows_kept in kept.items():
        rejected = sum(n for (t, _), n in counts.items() if t == name)
        rows_in = validated.rows_in.get(name, rows_kept + rejected)
        table.add_row(name, f"{rows_in:,}", f"{rows_kept:,}", f"{rejected:,}")
    console.print(table)
    reasons = [(t, r, n) for (t, r), n in counts.items() if n]
    if reasons:
        detail = Table(title="Rows set aside, by reason")
        detail.add_column("table")
        detail.add_column("reason")
        detail.add_column("rows", justify="right")
        for t, r, n in reasons:
            detail.add_row(t, r, f"{n:,}")
        console.print(detail)
    else:
        console.print("No rows set aside.")


def _print_funnel(
    events: Any,
    contacts: Any,
    true_history: Any,
    *,
    config: Path | None,
    as_of: dt.datetime | None,
    assume_consent: bool = False,
    after_reading: Callable[[], None] | None = None,
) -> None:
    """The funnel report of ``events`` (a table, or a Parquet path read as features reads it);
    without ``as_of``, as of the data's end. Without any event it is still shown: the listed
    contacts are all dormant, as features writes them. ``after_reading`` is called once the
    events are read, before anything is shown (it raises to stop: ``InputWatch.check``)."""
    import polars as pl

    from features.engine import scan_events
    from serving.funnel import default_as_of, summarise_funnel

    if as_of is None:
        last = scan_events(events).select(pl.col("timestamp").max()).collect().item()
        as_of = default_as_of(last)
    true_stages = None
    if true_history is not None:
        from features.simulator import true_stage_on

        true_stages = true_stage_on(true_history, as_of.date() - dt.timedelta(days=1))
    summary = summarise_funnel(
        events,
        contacts,
        as_of=as_of,
        settings=load_rules_settings(config),
        true_stages=true_stages,
        assume_consent=assume_consent,
    )
    if after_reading is not None:
        after_reading()
    if summary.first_event and summary.last_event:
        known = (
            f"{summary.events:,} events before the snapshot, from {summary.first_event.date()} "
            f"to {summary.last_event.date()}"
        )
    else:  # every contact listed without events is dormant, as features writes them
        known = "No events before the snapshot"
    console.print(
        f"{known}; funnel as of {as_of:%Y-%m-%d %H:%M} UTC (rules: deepest signal in the "
        "lookback window)."
    )
    table = Table(title="Contacts by stage")
    table.add_column("stage")
    table.add_column("CTA")
    table.add_column("rules", justify="right")
    table.add_column("share", justify="right")
    if summary.true_counts is not None:
        table.add_column("true (simulator)", justify="right")
    total = max(summary.contacts_scored, 1)
    for stage in STAGES:
        row = [
            stage,
            STAGE_CTA[stage],
            f"{summary.rules_counts[stage]:,}",
            f"{summary.rules_counts[stage] / total:.1%}",
        ]
        if summary.true_counts is not None:
            row.append(f"{summary.true_counts[stage]:,}")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"{_count(summary.contacts_scored, 'consented contact')} shown; "
        f"{summary.contacts_without_consent:,} without marketing consent left out."
    )
    _say_not_yet_active(summary.contacts_not_yet_active, "counted")
    if summary.rules_accuracy is not None:  # none of nobody: no contact shown
        console.print(
            f"The rules put {summary.rules_accuracy:.1%} of contacts in their true hidden stage: "
            "the gap the models of funnelcast are built to close."
        )


@dataclass
class _TrainingStarted:
    """The MLflow run a training command has started, if any (``_saying_what_a_stop_left``)."""

    run_id: str | None = None

    def note(self, run_id: str) -> None:
        self.run_id = run_id


@contextmanager
def _saying_what_a_stop_left() -> Iterator[_TrainingStarted]:
    """A command that trains, stopped by Ctrl-C or SIGTERM, says in one line on stderr what it
    left in MLflow (``_what_a_stop_left``); the stop then goes on, to exit status 130 (143).
    The process used to exit without a word, though the run it stopped ends KILLED and a
    version registered from it before the stop stays in the registry, never promoted."""
    from features.io import Terminated, terminate_like_interrupt

    training = _TrainingStarted()
    try:
        # SIGTERM as Ctrl-C for the whole command, not only inside the training run: a stop
        # while `run` promotes says so too
        with terminate_like_interrupt():
            yield training
    except BaseException as stop:
        if isinstance(stop, KeyboardInterrupt | Terminated):
            # a stderr that is gone (its reader stopped by the same Ctrl-C) leaves the stop
            # and its exit status as they were, not a BrokenPipeError's
            with contextlib.suppress(OSError):
                err_console.print(
                    escape(_what_a_stop_left(stop, training.run_id)),
                    highlight=False,
                    soft_wrap=True,
                )
        raise


def _what_a_stop_left(stop: BaseException, run_id: str | None) -> str:
    """The line a stopped training command says: the run it started, how that run ended and
    the versions registered from it, as the store holds them. No data and no contact ids: the
    run's id, the model's name and version numbers only."""
    said = "Interrupted" if isinstance(stop, KeyboardInterrupt) else "Stopped by SIGTERM"
    if run_id is None:
        return f"{said}: no training run was started; nothing was logged to MLflow or registered."
    from training.tracking import error_reason, read_run_outcome

    try:
        with _patience_for_a_stop():  # a stopped command does not wait minutes for a server
            outcome = read_run_outcome(run_id)
    except Exception as error:  # the stop is what goes on; this line says why it says less
        log.debug("could not read what run %s left", run_id, exc_info=True)
        return (
            f"{said}: training run {run_id} was stopped, but the MLflow store could not be read "
            f"to say how it ended ({error_reason(error)}); look it up in the MLflow UI (promote "
            "refuses a version whose training run did not finish)."
        )
    versions = " and ".join(f"version {number} of {name!r}" for name, number in outcome.versions)
    if outcome.status == "FINISHED":  # stopped after the training, while promoting
        if not outcome.versions:
            return f"{said} after training run {run_id} finished; no model version was registered."
        name, number = outcome.versions[-1]
        return (
            f"{said} after training run {run_id} finished; {versions} is registered from it: "
            f"`{shell_command('funnelcast')} promote --model-name {shlex.quote(name)} --version "
            f"{number}` promotes it if it beats the champion."
        )
    ended = (
        "was left RUNNING (it could not be ended)"
        if outcome.status == "RUNNING"
        else f"ended {outcome.status}"
    )
    if not outcome.versions:
        return f"{said}: training run {run_id} {ended}; no model version was registered from it."
    return (
        f"{said}: training run {run_id} {ended}; {versions} registered from it is never "
        "promoted (promote refuses a version whose training run did not finish): train again."
    )


def _train_and_report(
    events: Any,
    contacts: Any,
    labels: Any,
    *,
    tune: int,
    overrides: Mapping[str, Any],
    spec_path: Path | None,
    register: bool,
    tracking_uri: str | None,
    config: Path | None,
    assume_consent: bool = False,
    training: _TrainingStarted | None = None,
    after_reading: Callable[[], None] | None = None,
) -> str | None:
    """Train, log to MLflow and print the quality table; returns the registered version.
    ``overrides``: training settings over the config's (``load_training_settings``);
    ``training``: where the run's id is noted as it starts (``_saying_what_a_stop_left``);
    ``after_reading``: called once the events are read, before the models are fitted, and
    again before anything is logged (it raises to stop: ``InputWatch.check``)."""
    from features.spec import load_feature_spec, shipped_spec_text
    from training.pipeline import (
        require_no_identifying_attributes,
        require_trainable_spec,
        train_models,
    )
    from training.settings import load_training_settings
    from training.tracking import (
        check_store_writable,
        configure_tracking,
        data_fingerprint,
        log_training,
        shown_uri,
        training_run,
    )
    from training.tracking import tracking_uri as resolve_uri
    from training.tuning import tune_models

    settings = load_training_settings(config, **overrides)
    rules = load_rules_settings(config)
    feature_spec = load_feature_spec(spec_path)
    require_trainable_spec(feature_spec)  # before a run starts
    require_no_identifying_attributes(contacts, feature_spec)
    spec_text = spec_path.read_text("utf-8") if spec_path else shipped_spec_text()
    check_store_writable(resolve_uri(tracking_uri))  # a read-only store: now, not after training
    uri = configure_tracking(tracking_uri)
    steps = [
        "features and labels for every snapshot",
        "stage model",
        "propensity model",
        "baselines and evaluation",
    ]
    if tune:
        steps.insert(1, f"tuning LightGBM: {tune} trials per model")
    run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    on_start = None if training is None else training.note
    with training_run(run_name, on_start=on_start) as run_id, _progress() as progress:
        task = progress.add_task("Training", total=len(steps) + 1)

        check = after_reading or (lambda: None)
        checked = False

        def say(step: str) -> None:
            nonlocal checked
            if step != steps[0] and not checked:  # the snapshots are built: the events read
                checked = True
                check()
            progress.update(task, description=f"Training: {step}", advance=0)
            if step in steps:
                progress.update(task, completed=steps.index(step))

        result = train_models(
            events,
            contacts,
            spec=feature_spec,
            rules=rules,
            settings=settings,
            labels=labels,
            tune_trials=tune,
            tuner=tune_models,
            progress=say,
            assume_consent=assume_consent,
        )
        progress.update(task, description="Training: logging to MLflow", completed=len(steps))
        fingerprint = data_fingerprint(events, contacts, labels, settings=settings)
        check()  # read again for the fingerprint: still the data trained on, before a version
        version = log_training(
            result,
            spec=feature_spec,
            spec_text=spec_text,
            rules=rules,
            settings=settings,
            fingerprint=fingerprint,
            register=register,
        )
        progress.update(task, description="Training: done", completed=len(steps) + 1)
    from training.pipeline import summary_lines

    for line in summary_lines(result, settings):
        console.print(escape(line))
    from training.tracking import flat_metrics

    _print_quality(flat_metrics(result.metrics))
    timing = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in result.timings.items())
    console.print(f"Time by step: {timing}.")
    name = settings.registry.model_name
    where = f"version {version} of {name!r}" if version else "not registered"
    console.print(f"MLflow run {run_id[:12]} in {shown_uri(uri)}; model {where}.")
    return version


def _print_quality(metrics: dict[str, float]) -> None:
    """The test-window table: rules vs RFM baseline vs LightGBM."""
    from training.evaluation import buyers_line, quality_rows

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table("test window", "rules", "RFM baseline", "funnelcast (LightGBM)")
    for row in quality_rows(metrics):
        table.add_row(row.label, shown(row.rules), shown(row.rfm), shown(row.funnelcast))
    console.print(table)
    if buyers := buyers_line(metrics):
        console.print(buyers)


def _promote_and_report(name: str, alias: str, *, version: str | None, force: bool) -> bool:
    from training.registry import promote

    decision = promote(name, alias=alias, version=version, force=force)
    against = f"version {decision.champion.version}" if decision.champion else "the rules and RFM"
    from training.registry import GATE_METRICS

    def compared(key: str) -> str:
        shown = (
            f"{key} {decision.challenger_scores[key]:.4f} vs {decision.champion_scores[key]:.4f}"
        )
        interval = decision.intervals.get(key)
        return shown + (f" [{interval.low:+.4f}, {interval.high:+.4f}]" if interval else "")

    scores = ", ".join(
        compared(k)
        for k, _ in GATE_METRICS
        if k in decision.champion_scores and k in decision.challenger_scores
    )
    # the intervals, and how they were drawn (a test set of rows, a baseline without them)
    judged = (
        f" In brackets: the 95 % interval of the difference, from {decision.method}."
        if decision.intervals
        else (f" Judged by {decision.method}." if decision.method else "")
    )
    if decision.promoted:
        how = " (forced: " + "; ".join(decision.reasons) + ")" if decision.forced else ""
        notes = (
            " Note: " + "; ".join(decision.reasons) + "." if decision.reasons and not how else ""
        )
        console.print(
            f"Promoted version {decision.challenger.version} to '{escape(alias)}' over {against}"
            f"{escape(how)}" + (f": {escape(scores)}." if scores else ".") + escape(notes + judged)
        )
        return True
    console.print(
        f"[bold]Not promoted:[/] version {decision.challenger.version} does not beat {against} "
        f"on the same test window: "
        + escape("; ".join(decision.reasons))
        + ". ("
        + escape(scores)
        + "; --force promotes anyway and records it.)"
        + escape(judged)
    )
    return False


def _print_no_model(error: InsufficientDataError) -> None:
    """Too little data to train: what is missing (the error says nothing was registered),
    then the minimum-data report."""
    console.print(f"[bold]No model trained:[/] {escape(str(error))}")
    _print_minimum_data(error.report)


def _print_minimum_data(report: dict[str, Any]) -> None:
    from training.pipeline import minimum_data

    shown = minimum_data(report)
    if shown.fitting is not None:
        console.print(shown.fitting)
    table = Table("snapshots", "rows", "buyers", "stages")
    for part in shown.parts:
        table.add_row(*part)
    if table.row_count:
        console.print(table)
    console.print(shown.minimums)


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


# a CSV cell starting with one of these is run as a formula by spreadsheets (CSV injection)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _warn_formula_ids(table: pl.DataFrame) -> None:
    """Say how many contact ids in a CSV start as a formula does: a spreadsheet opening the
    file may run them. The ids are the CRM's own and are written as they are (a prefixed id
    would no longer match its contact on import)."""
    import polars as pl

    ids = table.get_column("contact_id").cast(pl.String)
    # a signed number ("-5") is read as a number, not run
    number = ids.str.contains(r"^[+-](\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    starts = (ids.str.slice(0, 1).is_in(list(_FORMULA_STARTS)) & ~number).sum()
    if starts:
        err_console.print(
            f"[yellow]warning:[/] {_count(int(starts), 'contact id')} in the CSV start with = or "
            "@, or with + or - and are not a number, which a spreadsheet may run as a formula "
            "when it opens the file: import it as text (a CRM import reads ids as they are), or "
            "write .parquet",
            highlight=False,
            soft_wrap=True,
        )


def _with_spinner(description: str, work: Callable[[], T]) -> T:
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(description, total=None)
        try:
            result = work()
        except BaseException:
            progress.remove_task(task)  # no spinner left above the error message
            raise
        progress.update(task, total=1, completed=1)
    return result


def _absolute_sqlite(uri: str) -> str:
    """A relative SQLite URI made absolute, so the server finds the store wherever it runs."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def shell_command(name: str) -> str:
    """How to run this environment's ``name`` (funnelcast, bentoml) from the user's shell: the
    bare name when it is on PATH, else its path beside this Python (`.venv/bin/funnelcast`
    after `make demo`), relative to the working folder when inside it."""
    beside = Path(sys.executable).parent / name
    on_path = shutil.which(name)
    if (on_path and Path(on_path).resolve() == beside.resolve()) or not beside.exists():
        return name
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _require_events(events: Path) -> None:
    """``--events`` names something that exists, or a glob that matches a file: said before
    any other check (a path with a [ in it is read as a glob, and one that matched nothing
    was told of the contacts table that would sit beside it)."""
    import glob

    from features.engine import glob_base, is_glob

    if not is_glob(events):
        if not events.exists():
            raise FileNotFoundError(
                f"--events {events} does not exist; give the events folder or Parquet file "
                "written by ingest or simulate"
            )
        _say_unread_beside(events, "--events")
        return
    base, pattern = glob_base(events)
    if next(glob.iglob(pattern, root_dir=base, recursive=True), None) is None:
        raise FileNotFoundError(
            f"--events {events} does not exist, and as a glob it matches no file; give the "
            "events folder or Parquet file written by ingest or simulate, or a glob of them"
        )


def _say_unread_beside(folder: Path, option: str, *, glob_taken: bool = True) -> None:
    """A folder holding events.parquet is read as a folder ingest or simulate wrote: that file
    alone. Other files of events there (a week's export copied in beside the history) were
    left out without a word (batch review): named, and with ``glob_taken`` (the option takes
    a glob) the glob that reads them. Files that hold no events (features or scores written
    there) are not named: they are not events left out (diff review)."""
    from features.engine import SIBLING_TABLES

    if not (folder / "events.parquet").is_file():
        return
    others = [
        f
        for f in sorted(folder.glob("*.parquet"))
        if f.name != "events.parquet" and f.name not in SIBLING_TABLES and f.name[0] != "."
    ]
    unread = [f.name for f in others if _may_hold_events(f)]
    if not unread:
        return
    shown = ", ".join(unread[:3]) + (f" and {len(unread) - 3:,} more" if len(unread) > 3 else "")
    one = len(unread) == 1
    advice = ""
    if glob_taken:
        every = escape(str(folder / "*.parquet"))
        advice = (
            f" To read {'it' if one else 'them'} with events.parquet, give the glob '{every}'"
            if len(unread) == len(others)
            else " To read them with events.parquet, give a glob that matches the events files "
            "alone"
        ) + "."
    console.print(
        f"[yellow]{option} {escape(str(folder))}: its events.parquet alone is read,[/] as a "
        f"folder written by ingest or simulate; {_count(len(unread), 'other file')} of events "
        f"there {'is' if one else 'are'} not ({escape(shown)}).{advice}"
    )


def _may_hold_events(path: Path) -> bool:
    """Whether a Parquet file has the events' time and type columns (or cannot be read, and
    so may): features and scores have neither."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # Arrow's and the OS's errors alike: said, since it may be events
        return True
    return {"timestamp", "event_type"} <= names


def _parse_date(text: str, option: str) -> dt.datetime:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):  # fromisoformat takes 20261101 too
            raise ValueError(text)
        day = dt.date.fromisoformat(text)
    except ValueError as error:
        raise InputError(f"{option} {text!r} is not a date; give YYYY-MM-DD") from error
    if day.year < 1970:  # a lookback window from year 1 would reach before any calendar
        raise InputError(f"{option} {text} is before 1970; give a date of your events' time")
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


# a weekly export whose last event is older than this is said when `score` dates by it
STALE_AFTER_DAYS = 7


def _say_if_stale(last: dt.datetime, where: str, *, as_of: dt.datetime | None = None) -> None:
    """The default as_of follows the events: an export that stopped coming is scored as of
    its own end, with exit 0, and a CRM would import scores weeks old without a word (ops
    review). Said, not refused: a backfill or a demo scores old data on purpose. With an
    ``as_of`` given (a scheduler names the day), the events' end is measured from it: an
    export that stopped left every contact to age into dormant, and the movement report
    showed a funnel collapsing (batch review)."""
    if as_of is None:
        age = (dt.datetime.now(dt.UTC).date() - last.date()).days
        if age > STALE_AFTER_DAYS:
            console.print(
                f"[yellow]{escape(where)} ends on {last:%Y-%m-%d}, {age} days ago:[/] the scores "
                "are as of the day after it (the default), not of this week. If the export "
                "stopped, fix it; a scheduled job can give --as-of to name the day it means."
            )
        return
    gap = (as_of.date() - last.date()).days
    if gap > STALE_AFTER_DAYS:
        console.print(
            f"[yellow]{escape(where)} ends on {last:%Y-%m-%d}, {gap} days before --as-of "
            f"{as_of:%Y-%m-%d}:[/] nothing the contacts did in those days is in the scores, so "
            "they age towards dormant. If the export stopped, fix it; a backfill of old data "
            "can give an --as-of nearer its end."
        )


def _refuse_events_after_now(
    last: dt.datetime | None, what: str, *, now: dt.datetime | None = None
) -> None:
    """Events after now, read when the date is after now (tomorrow's midnight, the default
    after events that run to today): a clock or time-zone error, refused by every command
    that reads past now, as the service refuses them: beyond the clock skew it allows (one
    event 2 minutes ahead, a source's clock running fast, stopped a whole weekly job)."""
    from features.schema import refuse_events_after_now

    fix = "give an --as-of up to today, or correct the timestamps"
    refuse_events_after_now(last, what, fix=fix, now=now)


def _as_of_date(text: str) -> dt.datetime:
    """``--as-of``: midnight UTC of the day, up to tomorrow's (events strictly before it, so
    tomorrow is as of the end of today: `score`'s default when the events run to today)."""
    snapshot = _parse_date(text, "--as-of")
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    if snapshot.date() > tomorrow:
        raise InputError(
            f"--as-of {text} is in the future; give a date up to {tomorrow} (tomorrow, UTC: "
            "as of its midnight, today's events included)"
        )
    return snapshot


def _start_date(text: str | None) -> dt.date | None:
    return None if text is None else _parse_date(text, "--start").date()


def _one_line(error: BaseException) -> str:
    if isinstance(error, pydantic.ValidationError):
        from features.settings import validation_problems

        return f"settings: {validation_problems(error)}"
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    main()
