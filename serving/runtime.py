"""What the service runs, without HTTP: its settings, the model it loads, and the scoring of
requests. The BentoML class in ``serving.service`` is a thin shell around ``Scorer``, so the
class can be tested directly, over ASGI and as a real server with the same code underneath.

A model comes from the MLflow registry (alias ``champion`` by default), from the local copy of
a registered version that `funnelcast serve` makes for its workers (``serving.model_copy``) or,
inside a Bento built by ``funnelcast build``, from the BentoML model store. Its feature spec
must compile, with this service's code, to the features the model was trained on; otherwise it
is refused with the features that differ. With no model, the service starts only when the
rules fallback is allowed explicitly, and then every answer says ``"model": "rules"``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import shlex
import shutil
import stat
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import pydantic_core

from features.errors import InputError
from features.online import build_online_features
from features.settings import RulesSettings, load_rules_settings
from features.spec import FeatureSpec, load_feature_spec, parse_feature_spec
from features.vocabulary import STAGE_CTA, STAGE_MESSAGE, STAGES
from serving.schemas import (
    MAX_BATCH_CONTACTS,
    MAX_EVENTS_PER_CONTACT,
    MAX_FEATURES,
    ContactRequest,
    ModelMetadata,
    Prediction,
)

if TYPE_CHECKING:  # training is imported only when a model is loaded
    from training.models import ReasonsMethod
    from training.pyfunc import FeatureValueError

log = logging.getLogger("funnelcast.service")

ENV_PREFIX = "FUNNELCAST_"
MIN_KEY_LENGTH = 16
DEFAULT_MAX_BODY_MB = 32
# BentoML's default of 60 s keeps every request's state that long and stalls p99 under load
DEFAULT_TIMEOUT_S = 10.0
# the largest number the model reads (features are float32 in training); training.pyfunc has
# the same, imported only with a model
FLOAT32_MAX = float(np.finfo(np.float32).max)
RULES = "rules"
FUNNELCAST = "funnelcast"
BENTO_MODEL_DIR = "mlflow_model"  # the MLflow model's folder inside a BentoML model


class ServiceConfigError(InputError):
    """The service cannot start as configured; the message says what to set."""


class SpecMismatchError(ServiceConfigError):
    """The model's feature spec does not compile to the model's features with this code."""


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSettings:
    """Read from the environment (``FUNNELCAST_*``), so that `bentoml serve`, `funnelcast serve`
    and a built Bento configure the service the same way."""

    model_name: str = "funnelcast"
    alias: str = "champion"
    version: str | None = None
    # the version is the alias's, pinned by `funnelcast serve` so that every worker loads the
    # one it checked: not named on purpose, so the rules fallback may stand in for it
    pinned_from_alias: bool = False
    bento_model: str | None = None  # a BentoML model tag: load from the Bento, not the registry
    # the folder of a registered version's local copy, made by `funnelcast serve`: loaded
    # instead of the registry, so a worker restarted while the registry is down still loads
    # it; the copy names its model (the name, alias and version above are not read for it)
    model_copy: Path | None = None
    allow_rules_fallback: bool = False
    tracking_uri: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * 1024 * 1024
    # how long a request may take before it is dropped (BentoML's traffic timeout), and the
    # worker processes: read when the service is defined, checked here too so that
    # `funnelcast serve` refuses a bad one before it starts
    timeout_s: float = DEFAULT_TIMEOUT_S
    workers: int = 1
    # the settings file (`funnelcast serve --config`): the rules fallback's lookback and
    # thresholds (a model carries the rules it was trained with)
    config: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        max_body = int(positive_setting(env, "MAX_BODY_MB", DEFAULT_MAX_BODY_MB) * 1024 * 1024)
        return cls(
            model_name=get("MODEL_NAME") or "funnelcast",
            alias=get("MODEL_ALIAS") or "champion",
            version=get("MODEL_VERSION"),
            pinned_from_alias=_flag(get("MODEL_PINNED_FROM_ALIAS")),
            bento_model=get("BENTO_MODEL"),
            model_copy=None if (copy := get("MODEL_COPY")) is None else Path(copy),
            allow_rules_fallback=_flag(get("ALLOW_RULES_FALLBACK")),
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            api_keys=read_api_keys(env),
            max_body_bytes=max_body,
            timeout_s=positive_setting(env, "TIMEOUT_S", DEFAULT_TIMEOUT_S),
            workers=int(positive_setting(env, "WORKERS", 1, whole=True)),
            config=_config_file(get("CONFIG")),
        )


_UNITS = {"MAX_BODY_MB": " of megabytes", "TIMEOUT_S": " of seconds"}


def positive_setting(
    env: Mapping[str, str], name: str, default: float, *, whole: bool = False
) -> float:
    """``FUNNELCAST_<name>`` as a positive number (a whole one with ``whole``), ``default``
    when it is unset; anything else is a ``ServiceConfigError`` naming it (BentoML would take
    a timeout of -1 and stop with "Key 'timeout' error: v(-1.0) should evaluate to True")."""
    text = env.get(ENV_PREFIX + name, "").strip()
    if not text:
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0) or (whole and not number.is_integer()):
        kind = "a positive whole number" if whole else "a positive number"
        raise ServiceConfigError(
            f"{ENV_PREFIX}{name} must be {kind}{_UNITS.get(name, '')}; got {text!r}"
        )
    return number


def _ascii_key(key: str, where: str) -> str:
    """A key as clients can send it: header values travel as latin-1 bytes, so a key with
    other characters could never match. The message says where it is, never the key."""
    if "\ufeff" in key:  # invisible in an editor: the message names it
        raise ServiceConfigError(
            f"{where} holds a byte-order mark (U+FEFF, invisible in most editors, which some "
            "put at a file's start); remove it and keep the key's ASCII letters and digits"
        )
    if not key.isascii():
        raise ServiceConfigError(
            f"{where} has characters outside ASCII; HTTP headers carry latin-1 bytes, so no "
            "request could present such a key. Use ASCII letters and digits (python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    # a tab is a space (a comment after the key?, below); any other control character, a
    # form feed or a lone carriage return too, is no part of a key a client can send
    control = next((c for c in key if (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
    if control is not None:  # no HTTP header value carries one (privacy review: U+0001)
        raise ServiceConfigError(
            f"{where} holds a control character (U+{ord(control):04X}), which no HTTP header "
            "can carry, so no request could present the key; keep its ASCII letters and digits"
        )
    return key


def _names_a_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL: no file
        return False


def _one_word(key: str, where: str) -> str:
    """A key a client can hold: one word of ASCII (``_ascii_key``), not in quotes (Docker's
    --env-file and a hand-edited file keep them, and no client sends them) and without a
    space (a comment after the key on its line became part of it): such a key was accepted
    and every request with the real key was a 401 that says nothing (deploy review)."""
    key = _ascii_key(key, where)
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        raise ServiceConfigError(
            f"{where} is in quotes, which would be part of the key; write the key without them"
        )
    if any(character.isspace() for character in key):
        raise ServiceConfigError(
            f"{where} holds a space (a comment after the key?); a key is one word: put a "
            "comment on a line of its own, starting with #"
        )
    return key


def _config_file(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ServiceConfigError(f"FUNNELCAST_CONFIG {value} is not a file; give a settings YAML")
    return path


def _flag(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes", "on"}


# a line of the key file written as a shell or .env assignment, `FUNNELCAST_API_KEY=...`:
# taken as the key, it would be a key no client holds (every request a 401 that says nothing),
# so it is refused at start, not warned about in a log nobody reads. A random key has no
# '=' followed by more text (base64 pads with '=' at its end only)
_ASSIGNMENT = re.compile(r"(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=\s*[^\s=]")
_ASSIGNED = (
    "line {number} of {path} reads as an assignment, NAME=value; the API key file holds each "
    "key alone on its line: write the key without the name and '='"
)


def read_api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """The accepted keys: ``FUNNELCAST_API_KEY`` (several separated by commas, for rotation)
    and/or ``FUNNELCAST_API_KEY_FILE`` (one per line; blank lines and lines starting with
    ``#`` are skipped). None at all is a configuration error: the service never runs open."""
    keys: list[str] = []
    inline = env.get("FUNNELCAST_API_KEY", "")
    if inline.strip() and _names_a_file(inline.strip()):  # a secret mounted as a file
        raise ServiceConfigError(
            "FUNNELCAST_API_KEY names a file, which would be taken as the key itself; give the "
            "file as FUNNELCAST_API_KEY_FILE (or --api-key-file)"
        )
    for number, part in enumerate(inline.split(","), start=1):
        if part.strip():
            keys.append(_one_word(part.strip(), f"key {number} of FUNNELCAST_API_KEY"))
    path = env.get("FUNNELCAST_API_KEY_FILE", "").strip()
    if path:
        try:
            # utf-8-sig: the byte-order mark Windows editors put first is no part of a key
            text = Path(path).read_text("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            # `bentoml serve` of a Bento runs its workers in the Bento's src/ folder
            where = (
                ""
                if Path(path).is_absolute()
                else f"; a relative path is read from the working folder, here {Path.cwd()} "
                "(a Bento's workers run in its src/ folder): give an absolute path"
            )
            # the value is not shown: a key put here by mistake would be printed and logged
            raise ServiceConfigError(
                f"the API key file (FUNNELCAST_API_KEY_FILE, --api-key-file) cannot be read "
                f"({reason}){where}; point it at a file with one API key per line (a key "
                "itself goes in FUNNELCAST_API_KEY)"
            ) from None
        if "\x00" in text:  # UTF-16 without a byte-order mark reads as UTF-8 with NULs
            raise ServiceConfigError(
                f"the API key file {path} holds NUL bytes: it is UTF-16 text (as Windows' "
                "PowerShell writes it), not UTF-8; save it as UTF-8 (ASCII letters and digits)"
            )
        # lines end at a line feed only: str.splitlines also ends them at a form feed or a
        # vertical tab, and made two keys nobody holds of one with such a character (review)
        for number, line in enumerate(text.split("\n"), start=1):
            key = line.strip()
            if key and not key.startswith("#"):  # a comment is never a key
                if _ASSIGNMENT.match(key):
                    raise ServiceConfigError(_ASSIGNED.format(number=number, path=path))
                keys.append(_one_word(key, f"the key on line {number} of {path}"))
    if not keys and path:
        raise ServiceConfigError(
            f"the API key file {path} holds no key (blank lines and '#' comments are not keys); "
            "write one key per line. Make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    if not keys:
        raise ServiceConfigError(
            "no API key is configured: set FUNNELCAST_API_KEY (or FUNNELCAST_API_KEY_FILE, one "
            "key per line). Make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    short = sum(len(k) < MIN_KEY_LENGTH for k in keys)
    if short:
        raise ServiceConfigError(
            f"{short} API key(s) are shorter than {MIN_KEY_LENGTH} characters; use long random "
            "keys (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return tuple(keys)


def exposed_key_file(env: Mapping[str, str]) -> str | None:
    """A warning when the API key file (``FUNNELCAST_API_KEY_FILE``) can be read by its group
    or by every user, naming the file and its mode, never a key; None otherwise."""
    path = env.get("FUNNELCAST_API_KEY_FILE", "").strip()
    if not path:
        return None
    try:
        mode = stat.S_IMODE(Path(path).stat().st_mode)
    except OSError:
        return None  # read_api_keys says why it cannot be read
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return None
    return (
        f"the API key file {path} can be read by other users (mode {mode:04o}); make it "
        f"readable by the service's user only: chmod 600 {shlex.quote(path)}"
    )


# --- the loaded model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What /metadata reports."""

    model: str
    model_name: str | None
    model_version: str | None
    source: str
    trained_at: str | None
    spec_text: str | None
    metrics: dict[str, float]
    # the MLflow store the model came from: said to the operator (the command, the log), not
    # to the service's clients, whom a file path on the server does not concern
    store: str | None = None
    # the exact tag of a model loaded from the BentoML store (``funnelcast:latest`` resolved)
    bento_model: str | None = None
    # the folder of the local copy a registered model was loaded from (``serving.model_copy``)
    local_copy: Path | None = None

    def loaded_from(self) -> str:
        """Where the model was loaded from, the store included."""
        return self.source if self.store is None else f"{self.source} in {self.store}"

    def served(self) -> str:
        """What is served, for the operator (the log, `funnelcast serve`): the registered name
        and version and where they came from (a model packed into a Bento under another tag
        keeps its registered name), or the rules, which say what they are; and the local copy
        a registered model was loaded from."""
        if not self.model_version:
            return self.source
        copy = "" if self.local_copy is None else f" (local copy in {self.local_copy})"
        return f"{self.model_name or self.model} version {self.model_version} from " + (
            self.loaded_from() + copy
        )


class Scorer(Protocol):
    info: ModelInfo

    def predict_rows(
        self,
        requests: Sequence[ContactRequest],
        now: dt.datetime | None = None,
        *,
        batch: bool = False,
        feature_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]: ...

    def predict(
        self,
        requests: Sequence[ContactRequest],
        now: dt.datetime | None = None,
        *,
        batch: bool = False,
        feature_names: Sequence[str] | None = None,
    ) -> list[Prediction]: ...

    def metadata(self, limits: dict[str, int]) -> ModelMetadata: ...


def predictions_json(rows: Sequence[dict[str, Any]], *, batch: bool) -> bytes:
    """The response body of ``predict_rows``' rows: one prediction (``/predict``) or
    ``{"predictions": [...]}`` (``/predict_batch``), encoded as pydantic encodes a
    ``Prediction`` (tests/serving/test_service.py holds them equal) without building one model
    object per contact (a tenth of a 1,000-contact batch's time)."""
    return pydantic_core.to_json({"predictions": rows} if batch else rows[0], inf_nan_mode="null")


def _validated(rows: list[dict[str, Any]]) -> list[Prediction]:
    return [Prediction.model_validate(row) for row in rows]


def load_scorer(settings: ServiceSettings, *, copy_into: Path | None = None) -> Scorer:
    """The model the settings name, checked against this code's feature spec; or the rules,
    when allowed, if there is no model. ``copy_into`` (`funnelcast serve`): a registered
    model is copied into a folder under it, or a complete copy there reused, and loaded from
    that copy as the workers will load it (``info.local_copy`` names it)."""
    from serving.held import hold_folder
    from serving.model_copy import UnwritableCopyError
    from training.registry import DamagedModelError

    try:
        if settings.bento_model:
            model, info = _from_bento_store(settings.bento_model)
        elif settings.model_copy is not None:
            if settings.model_copy.is_dir():  # kept while this worker runs, as its server
                hold_folder(settings.model_copy)  # keeps it (serving.service)
            model, info = _from_copy(settings.model_copy)
        else:
            model, info = _from_registry(settings, copy_into=copy_into)
    except (SpecMismatchError, UnwritableCopyError, DamagedModelError):
        raise  # a wrong model, or one there but not copied or loaded, is never the rules
    except InputError as exc:
        named = settings.version is not None and not settings.pinned_from_alias
        if settings.allow_rules_fallback and settings.bento_model:
            # as for a version: `serve --bento-model nosuch:latest --allow-rules-fallback`
            # served the rules where a mistyped --version is refused (deploy review)
            raise ServiceConfigError(
                f"the BentoML model {settings.bento_model} was named and cannot be served: "
                f"{exc}. The rules fallback does not replace a model named on purpose; give "
                "one that exists (`bentoml models list`)"
            ) from exc
        if settings.allow_rules_fallback and named:
            # the fallback stands in for a model that is not there, not for a mistyped one
            raise ServiceConfigError(
                f"version {settings.version} was asked for by number and cannot be served: "
                f"{exc}. The rules fallback does not replace a version named on purpose; give "
                "one that exists, or leave the version out"
            ) from exc
        if not settings.allow_rules_fallback and named:
            # the rules would not stand in for it either (above): no hint that they could
            raise ServiceConfigError(f"no model to serve: {exc}") from exc
        if not settings.allow_rules_fallback:
            raise ServiceConfigError(
                f"no model to serve: {exc}; or allow the rules fallback with "
                "FUNNELCAST_ALLOW_RULES_FALLBACK=1 (`funnelcast serve --allow-rules-fallback`)"
            ) from exc
        log.warning(
            "no model (%s); serving the rules, as FUNNELCAST_ALLOW_RULES_FALLBACK allows", exc
        )
        return RulesScorer(load_rules_settings(settings.config))
    check_feature_spec(model)
    return ModelScorer(model, info)


def registered_model(settings: ServiceSettings) -> tuple[Any, ModelInfo]:
    """The registry's model that the settings name (alias or version), checked against this
    code's feature spec as the service checks it: the scoring job's model (no rules
    fallback: a batch of rules scores would pass for the model's)."""
    model, info = _from_registry(settings)
    check_feature_spec(model)
    return model, info


def _from_registry(
    settings: ServiceSettings, *, copy_into: Path | None = None
) -> tuple[Any, ModelInfo]:
    import mlflow
    from mlflow.tracking import MlflowClient

    from serving.held import hold_folder
    from serving.model_copy import copy_place, is_complete_copy, make_model_copy
    from training.registry import DamagedModelError, load_model, resolve, run_metrics
    from training.tracking import configure_tracking, existing_store, shown_uri

    # opened as every command opens it: a SQLite store one process at a time
    uri = configure_tracking(existing_store(settings.tracking_uri))
    if settings.version is not None:
        ref = resolve(settings.model_name, version=settings.version)
    else:
        ref = resolve(settings.model_name, alias=settings.alias)
    run = MlflowClient().get_run(ref.run_id)
    trained_at = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
    info = ModelInfo(
        model=FUNNELCAST,
        model_name=ref.name,
        model_version=ref.version,
        source=f"models:/{ref.name}/{ref.version}",
        store=shown_uri(uri),
        trained_at=trained_at.isoformat(timespec="seconds"),
        spec_text=None,  # the model's, once loaded
        metrics=_test_metrics(run_metrics(ref)),
    )
    if copy_into is None:
        model = load_model(ref)
        return model, replace(info, spec_text=model.spec_text)
    place = copy_place(
        copy_into, store=shown_uri(uri), name=ref.name, version=ref.version, run_id=ref.run_id
    )
    # held from before it is looked for until the server stops: no other start removes it
    hold_folder(place)
    # downloaded once, and loaded as every worker will load it: the copy is what is checked
    reused = is_complete_copy(place)  # a running server's workers may load it
    make_model_copy(
        place,
        _recorded(info),
        lambda folder: mlflow.artifacts.download_artifacts(
            artifact_uri=info.source, dst_path=str(folder)
        ),
    )
    try:
        return _from_copy(place)
    except DamagedModelError as exc:
        if reused:
            # whole as copied, maybe under a running server: kept. Its files may have been
            # damaged in the registry when it was copied and mended since (late review: a
            # copy removed here was one a running server's restarted workers needed)
            raise DamagedModelError(
                f"version {ref.version} of '{ref.name}' (its local copy {place})",
                exc.problem,
                "if its files in the registry were damaged when it was copied and are mended "
                "since, remove that folder once no server uses it, and start again; else train "
                "and register it again, or serve another version (--version N)",
            ) from exc
        # copied by this start from the registry's files as they are now: so are they. Not
        # kept, so a start after they are mended copies them again (kept, every start reused it)
        shutil.rmtree(place, ignore_errors=True)
        raise DamagedModelError(
            f"version {ref.version} of '{ref.name}'",
            exc.problem,
            "train and register it again, or serve another version (--version N)",
        ) from exc


# what a copy records of its model: what /metadata and the operator are told (the spec is the
# model's own, read from it when it is loaded)
_RECORDED = ("model", "model_name", "model_version", "source", "store", "trained_at", "metrics")


def _recorded(info: ModelInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in _RECORDED}


def _from_copy(folder: Path) -> tuple[Any, ModelInfo]:
    """A registered model from its local copy (``serving.model_copy``), which names the model
    and what the registry said about it: no MLflow store is read."""
    from serving.model_copy import MODEL_FOLDER, read_model_copy

    recorded = read_model_copy(folder)
    try:
        info = ModelInfo(
            **{name: recorded[name] for name in _RECORDED}, spec_text=None, local_copy=folder
        )
    except KeyError as missing:
        raise InputError(
            f"the model's local copy {folder} does not record its {missing}; restart "
            "`funnelcast serve`, which makes it again"
        ) from None
    model = _funnelcast_model(
        folder / MODEL_FOLDER,
        f"the model's local copy {folder}",
        "restart `funnelcast serve`, which copies the model again",
    )
    return model, replace(info, spec_text=model.spec_text)


def _funnelcast_model(path: Path | str, what: str, fix: str) -> Any:
    """The FunnelcastModel of an MLflow model folder on this machine, through MLflow's pyfunc
    loader (which reads no tracking store for a folder)."""
    from training.registry import load_funnelcast_model

    return load_funnelcast_model(str(path), what, fix=fix)


def _from_bento_store(tag: str) -> tuple[Any, ModelInfo]:
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound as exc:
        raise InputError(f"the BentoML model {tag} is not in the model store ({exc})") from exc
    # not a tag at all: BentoML raises a ValueError for some ('a b'), its own exception for
    # others ('funnelcast:' from funnelcast:$TAG with TAG unset, 'a:b:c'), which restarted
    # the worker forever (diff review)
    except (ValueError, BentoMLException) as exc:
        raise InputError(
            f"{tag!r} is not a BentoML model tag ({exc}); give name:version, e.g. "
            "funnelcast:latest (`bentoml models list` shows them)"
        ) from exc
    model = _funnelcast_model(
        stored.path_of(BENTO_MODEL_DIR),
        f"the BentoML model {tag}",
        "import it again (`funnelcast build`), or give another (`bentoml models list`)",
    )
    meta: dict[str, Any] = dict(stored.info.metadata)
    info = ModelInfo(
        model=FUNNELCAST,
        model_name=str(meta.get("model_name") or tag.split(":")[0]),
        model_version=str(meta["model_version"]) if meta.get("model_version") else None,
        source=f"BentoML model {stored.tag}",
        trained_at=str(meta["trained_at"]) if meta.get("trained_at") else None,
        spec_text=model.spec_text,
        metrics={k: float(v) for k, v in dict(meta.get("metrics") or {}).items()},
        bento_model=str(stored.tag),
    )
    return model, info


def _test_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The test-window metrics, finite only (JSON has no NaN)."""
    return {
        key: float(value)
        for key, value in sorted(metrics.items())
        if key.startswith("test.") and isinstance(value, int | float) and math.isfinite(value)
    }


def check_feature_spec(model: Any) -> None:
    """Refuse a model whose feature spec, compiled by this code, does not give the features the
    model was trained on (a feature renamed, added or removed since, or a spec this code cannot
    read); the message names the features that differ."""
    try:
        spec = parse_feature_spec(model.spec_text, origin="the model's feature spec", logged=True)
    except InputError as exc:
        raise SpecMismatchError(
            f"the model's feature spec does not load with this service's code: {exc}. Serve it "
            "with the funnelcast version that trained it, or retrain"
        ) from exc
    produced = list(spec.names) + (["rules_stage"] if spec.rules_stage else [])
    recorded = list(getattr(model, "spec_features", None) or [])
    computed = set(produced)
    only_model = [name for name in recorded if name not in computed]
    only_service = [name for name in produced if name not in set(recorded)]
    if only_model or only_service:
        parts = []
        if only_model:
            parts.append(f"the model has {_names(only_model)} which this code does not compute")
        if only_service:
            parts.append(f"this code computes {_names(only_service)} which the model lacks")
        raise SpecMismatchError(
            "the model's feature spec does not match this service's feature code: "
            + "; ".join(parts)
            + ". Serve it with the funnelcast version that trained it, or retrain"
        )


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:8])
    return f"{shown} (+{len(names) - 8} more)" if len(names) > 8 else shown


# --- scoring ------------------------------------------------------------------------------------


def _event_rows(request: ContactRequest, as_of: dt.datetime) -> tuple[list[dict[str, Any]], int]:
    """The request's events as the online path reads them, exact repeats dropped (a CRM's
    retry sends an event twice; validation drops such rows from batch data too: equal in
    every column, properties included), and how many of them lie before as_of."""
    seen: set[tuple[Any, ...]] = set()
    rows = []
    for e in request.events or []:
        properties = e.properties
        key = (
            e.timestamp,
            e.event_type,
            e.channel,
            e.value,
            e.campaign_id,
            # as sent, keys in their order: validation compares the properties' text, so the
            # same keys in another order are two events there, and here
            None if properties is None else json.dumps(properties),
        )
        if key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "timestamp": e.timestamp,
                "event_type": e.event_type,
                "channel": e.channel,
                "value": e.value,
            }
        )
    used = sum(row["timestamp"] < as_of for row in rows)
    return rows, used


def _attributes(
    request: ContactRequest,
    known: Collection[str],
    dates: Collection[str],
    categories: Mapping[str, Sequence[Any]],
    index: int | None,
) -> dict[str, Any] | None:
    """The request's attributes for the online path (``known``: the contacts columns the
    model reads), each of the kind its feature reads: a date (one of ``dates``) as ISO text
    (parsed, because the model reads days since it), a category as text (a value the model
    has not seen is a missing value, as in LightGBM), anything else as a number. A value of
    another kind is a ``RequestError`` naming the attribute."""
    given = request.attributes
    if given is None:
        return None
    unknown = sorted(set(given).difference(known))
    if unknown:
        raise RequestError(
            _where(index, "attributes"),
            f"the model does not use attribute(s) {unknown}; it uses "
            f"{sorted(known) or 'no attributes'}",
        )
    out: dict[str, Any] = {}
    value: Any
    for name, value in given.items():
        if value is None:
            pass
        elif name in dates:
            value = _attribute_date(value, _where(index, f"attributes.{name}"))
        elif name in categories:
            if not isinstance(value, str):
                # the training data's values are not shown: whoever holds a key could read the
                # contacts' categories out of the errors
                raise RequestError(
                    _where(index, f"attributes.{name}"),
                    f"{_as_sent(value)} is not text; '{name}' is a category: give it as text (a "
                    "value the model did not see in training is scored as missing)",
                )
        elif isinstance(value, bool):
            value = float(value)  # as the batch engines read a true/false column: 1.0 or 0.0
        elif isinstance(value, int | float):
            value = _attribute_number(value, _where(index, f"attributes.{name}"))
        else:
            raise RequestError(
                _where(index, f"attributes.{name}"), f"{_as_sent(value)} is not a number"
            )
        out[name] = value
    return out


def _as_sent(value: Any) -> str:
    """A request's value as its JSON wrote it (true, not True)."""
    return json.dumps(value, ensure_ascii=False)


def _attribute_number(value: int | float, where: str) -> float:
    """A number attribute as the float the model reads, within float32's range (the model's
    precision): a JSON integer too long for a float (10**400) or a value beyond it is refused
    here, named as the attribute it was given as."""
    beyond = f"beyond the float32 range the model reads numbers in (\u00b1{FLOAT32_MAX:.4g})"
    try:
        number = float(value)
    except OverflowError:  # not quoted: its digits may be more than Python prints
        raise RequestError(
            where, f"an integer of {int(value).bit_length()} bits is {beyond}"
        ) from None
    if not abs(number) <= FLOAT32_MAX:
        raise RequestError(where, f"{number:.4g} is {beyond}")
    return number


def _attribute_date(value: Any, where: str) -> dt.datetime:
    if not isinstance(value, str):
        raise RequestError(where, f"{_as_sent(value)} is not an ISO date (e.g. 2025-03-01)")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(where, f"'{value}' is not an ISO date (e.g. 2025-03-01)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class RequestError(InputError):
    """A request the service understood but cannot score; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _some(names: Sequence[str]) -> str:
    """The first eight names of a list, as a list, said to be more when there are."""
    return f"{list(names[:8])}{' and more' if len(names) > 8 else ''}"


def _unknown_features(unknown: Sequence[str], missing: Sequence[str]) -> str:
    """Names the model does not read, and in the same answer those it reads that are not
    given: features built with another spec were told one half per request (a review)."""

    said = f"unknown feature(s) {_some(unknown)}"
    if missing:
        said += (
            f", and {len(missing)} of the model's feature(s) missing ({_some(missing)}): "
            "features built with another spec? `funnelcast features --model-name NAME` builds "
            "the model's own"
        )
    return f"{said}; GET /metadata lists the model's features and its feature_spec_hash"


def _where(index: int | None, name: str) -> str:
    return name if index is None else f"contacts.{index}.{name}"


class _Table:
    """A batch's ``feature_names``: where each name's value sits in a contact's ``values``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.place = {name: k for k, name in enumerate(names)}

    def row(self, values: Sequence[Any]) -> _TableRow:
        return _TableRow(values, self.place)


class _TableRow(Mapping[str, Any]):
    """One contact's ``values`` read by name (the few names the reasons or the rules look at),
    without building a dict of every feature per contact."""

    __slots__ = ("place", "row")

    def __init__(self, row: Sequence[Any], place: Mapping[str, int]) -> None:
        self.row = row
        self.place = place

    def __getitem__(self, name: str) -> Any:
        return self.row[self.place[name]]

    def __contains__(self, name: object) -> bool:
        return name in self.place

    def __iter__(self) -> Iterator[str]:
        return iter(self.place)

    def __len__(self) -> int:
        return len(self.place)


def _check_form(request: ContactRequest, table: _Table | None, index: int | None) -> None:
    """A contact's ``values`` only with the batch's feature names, and with them, values
    (``BatchRequest`` checks both; /predict, and callers of the scorer, are checked here)."""
    if request.values is not None and table is None:
        raise RequestError(
            _where(index, "values"),
            "'values' go with the batch's 'feature_names' in /predict_batch; here give "
            "'features' by name",
        )
    if table is not None:
        if request.values is None:
            raise RequestError(
                _where(index, "values"),
                "with 'feature_names', give every contact's 'values' in their order",
            )
        if len(request.values) != len(table.names):
            raise RequestError(
                _where(index, "values"),
                f"{len(request.values)} values for {len(table.names)} feature names; give "
                "one value per name (null where undefined)",
            )


def _no_consent(request: ContactRequest, info: ModelInfo, as_of: dt.datetime) -> dict[str, Any]:
    return {
        "contact_id": request.contact_id,
        "status": "no_consent",
        "model": info.model,
        "model_name": info.model_name,
        "model_version": info.model_version,
        "as_of": as_of,
        "stage": None,
        "probabilities": None,
        "propensity": None,
        "horizon_days": None,
        "reasons": [],
        "cta": None,
        "message_type": None,
        "events_used": None,
    }


class ModelScorer:
    """The learned models: features from events by the online path (or as given), one encoded
    matrix for all contacts of a request, one LightGBM call per model."""

    def __init__(self, model: Any, info: ModelInfo) -> None:
        self.model = model
        self.info = info
        self.spec: FeatureSpec = model.spec
        self.rules: RulesSettings = model.rules
        self.feature_names: list[str] = list(model.feature_names)
        self.attribute_features: list[str] = list(model.attribute_features)
        # the attributes the model reads as days since a date (a null one is a missing value),
        # and the contacts columns a request's attributes may name
        self._dates = frozenset(model.attribute_dates)
        self._attribute_columns = frozenset(
            name.removeprefix("days_since_")
            if name.removeprefix("days_since_") in self._dates
            else name
            for name in self.attribute_features
        )
        self._feature_set = frozenset(self.feature_names)
        self._categories: dict[str, list[Any]] = model.categories
        self._categorical = frozenset(self._categories)
        # build the caches now, not on a customer's request: the category codes, and the
        # one-stage boosters and leaf tables of the reasons (tens of ms each on first use),
        # and LightGBM's single-row predictors
        self.model.encode_records([dict.fromkeys(self.feature_names)])
        self.model.stage_model.warm(self.model.reasons_method)
        self.model.propensity_model.warm()

    def features_of(
        self, request: ContactRequest, as_of: dt.datetime, index: int | None = None
    ) -> tuple[Mapping[str, Any], int | None]:
        """One contact's features (and how many events they used), from its events or as
        given. Given features with as many names as the model's are checked (names, and
        numbers where numbers go) when the request's contacts are encoded, all at once; with
        another count, here (``check_given``). So in a batch, a fault in a later contact found
        here can be reported before one in an earlier contact's given features."""
        if request.features is not None:
            given = request.features
            if len(given) == len(self.feature_names):
                # as many names as the model's: whether they are its names, and numbers where
                # numbers go, is checked for all contacts at once as they are encoded
                return given, None
            self.check_given(given, index)
            return given, None
        rows, used = _event_rows(request, as_of)
        contact = self._attributes_of(request, index)
        features = build_online_features(
            rows, as_of=as_of, spec=self.spec, contact=contact, rules=self.rules, dates=self._dates
        )
        for name in self.attribute_features:  # an attribute not given is a missing value
            features.setdefault(name, None)
        return features, used

    def _attributes_of(self, request: ContactRequest, index: int | None) -> dict[str, Any] | None:
        return _attributes(request, self._attribute_columns, self._dates, self._categories, index)

    def check_given(self, given: Mapping[str, Any], index: int | None) -> None:
        """Precomputed features hold exactly the model's names, and text only where a
        category goes; otherwise a ``RequestError`` naming the first that does not."""
        unknown = (
            [] if self._feature_set.issuperset(given) else sorted(given.keys() - self._feature_set)
        )
        if unknown:
            missing = [k for k in self.feature_names if k not in given]
            raise RequestError(_where(index, "features"), _unknown_features(unknown, missing))
        if len(given) != len(self.feature_names):  # a name missing (none are unknown)
            missing = [k for k in self.feature_names if k not in given]
            raise RequestError(
                _where(index, "features"),
                f"missing feature(s) {_some(missing)}"
                "; give every feature the model uses (null where undefined)",
            )
        text = [k for k, v in given.items() if isinstance(v, str) and k not in self._categorical]
        if text:
            raise RequestError(
                _where(index, f"features.{text[0]}"), f"is a number; got text {given[text[0]]!r}"
            )

    def predict(
        self,
        requests: Sequence[ContactRequest],
        now: dt.datetime | None = None,
        *,
        batch: bool = False,
        feature_names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """``predict_rows`` as validated ``Prediction`` models."""
        return _validated(
            self.predict_rows(requests, now, batch=batch, feature_names=feature_names)
        )

    def predict_rows(
        self,
        requests: Sequence[ContactRequest],
        now: dt.datetime | None = None,
        *,
        batch: bool = False,
        feature_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One prediction per request, in order, as plain rows of ``Prediction``'s fields
        (what the service encodes: ``predictions_json``). ``batch``: the requests are a
        /predict_batch's contacts, so a ``RequestError``'s field starts with ``contacts.<i>.``
        (however many there are); otherwise it names the field of the one contact.
        ``feature_names``: the batch's compact form, each contact's ``values`` in this order
        (every feature of the model, checked here)."""
        now = now or dt.datetime.now(dt.UTC)
        table = None if feature_names is None else self._table(feature_names)
        out: list[dict[str, Any] | None] = [None] * len(requests)
        records: list[Mapping[str, Any]] = []
        slots: list[tuple[int, dt.datetime, int | None]] = []
        # contacts without consent: never scored, but their input is checked as any other's
        # (a fault is a 400 now, not when the contact opts in)
        unscored: list[Mapping[str, Any]] = []
        unscored_slots: list[tuple[int, dt.datetime, int | None]] = []
        for i, request in enumerate(requests):
            as_of = request.as_of or now
            index = i if batch else None
            _check_form(request, table, index)
            if not request.marketing_consent:
                out[i] = _no_consent(request, self.info, as_of)
                if table is not None and request.values is not None:
                    unscored.append(table.row(request.values))
                elif request.features is not None:
                    unscored.append(self.features_of(request, as_of, index)[0])
                else:  # events: their kinds and times are the schema's; the attributes, here
                    self._attributes_of(request, index)
                    continue
                unscored_slots.append((i, as_of, None))
                continue
            if table is not None and request.values is not None:
                records.append(table.row(request.values))
                slots.append((i, as_of, None))
                continue
            features, used = self.features_of(request, as_of, index)
            records.append(features)
            slots.append((i, as_of, used))
        if unscored:  # encoded only to be checked
            if table is not None:
                self._encode_table(table, unscored, unscored_slots, batch)
            else:
                self._encode(unscored, unscored_slots, batch)
        if records:
            if table is not None:  # every contact gave values (_check_form)
                matrix = self._encode_table(table, records, slots, batch)
            else:
                matrix = self._encode(records, slots, batch)
            explain = [requests[i].explain for i, _, _ in slots]
            scored = self.model.score_matrix(matrix, records if any(explain) else None)
            if not (np.isfinite(scored["proba"]).all() and np.isfinite(scored["propensity"]).all()):
                raise RuntimeError("the model produced a non-finite probability")  # a bug: 500
            horizon = int(self.model.horizon_days)
            name, version = self.info.model_name, self.info.model_version
            probabilities = scored["proba"].tolist()
            propensities = scored["propensity"].tolist()
            for row, (i, as_of, used) in enumerate(slots):
                stage = scored["stage"][row]
                out[i] = {
                    "contact_id": requests[i].contact_id,
                    "status": "scored",
                    "model": FUNNELCAST,
                    "model_name": name,
                    "model_version": version,
                    "as_of": as_of,
                    "stage": stage,
                    "probabilities": dict(zip(STAGES, probabilities[row], strict=True)),
                    "propensity": propensities[row],
                    "horizon_days": horizon,
                    "reasons": list(scored["reasons"][row]) if explain[row] else [],
                    "cta": STAGE_CTA[stage],
                    "message_type": STAGE_MESSAGE[stage],
                    "events_used": used,
                }
        return [p for p in out if p is not None]

    def _table(self, names: Sequence[str]) -> _Table:
        """A batch's feature names, which must be the model's, every one (in any order)."""
        unknown = [name for name in names if name not in self._feature_set]
        if unknown:
            given = set(names)
            missing = [name for name in self.feature_names if name not in given]
            raise RequestError("feature_names", _unknown_features(unknown, missing))
        if len(set(names)) != len(names):  # BatchRequest refuses it; direct callers, here
            raise RequestError("feature_names", "a feature is named twice; name each once")
        if len(names) != len(self.feature_names):  # a name missing (none unknown, none twice)
            given = set(names)
            missing = [name for name in self.feature_names if name not in given]
            raise RequestError(
                "feature_names",
                f"missing feature(s) {_some(missing)}; "
                "name every feature the model uses (null values where undefined)",
            )
        return _Table(names)

    def _encode_table(
        self,
        table: _Table,
        records: list[Mapping[str, Any]],
        slots: list[tuple[int, dt.datetime, int | None]],
        batch: bool,
    ) -> Any:
        """The compact form's contacts as one matrix; a value the model cannot read names its
        contact and its place in ``values`` (the message names the feature)."""
        from training.pyfunc import FeatureValueError  # loaded with the model

        rows = [cast(_TableRow, record).row for record in records]
        positions = [table.place[name] for name in self.feature_names]
        try:
            return self.model.encode_rows(rows, positions)
        except FeatureValueError as exc:
            index = slots[exc.row][0] if batch else None
            where = _where(index, f"values.{table.place[exc.feature]}")
            raise RequestError(where, str(exc)) from None

    def _encode(
        self,
        records: list[Mapping[str, Any]],
        slots: list[tuple[int, dt.datetime, int | None]],
        batch: bool,
    ) -> Any:
        """All contacts' features as one matrix. Each has every feature of the model (given
        ones by ``features_of``'s count of names, the online path's by construction) and text
        only in categories, checked for all at once; otherwise the contact and the feature
        at fault are looked for one at a time, only then. A value the model cannot read (a
        number beyond float32, a stage name that is none) names its contact and feature."""
        from training.pyfunc import FeatureValueError  # loaded with the model

        try:
            return self.model.encode_records(records, complete=True)
        except FeatureValueError as exc:
            raise _named(exc, slots[exc.row][0] if batch else None) from None
        except InputError:
            pass
        for record, (index, _, used) in zip(records, slots, strict=True):
            if used is None:  # precomputed features
                self.check_given(record, index if batch else None)
        try:
            return self.model.encode_records(records)
        except FeatureValueError as exc:
            raise _named(exc, slots[exc.row][0] if batch else None) from None
        except InputError:
            for record, (index, _, _) in zip(records, slots, strict=True):
                where = index if batch else None
                try:
                    self.model.encode_records([record])
                except FeatureValueError as exc:
                    raise _named(exc, where) from None
                except InputError as exc:
                    raise RequestError(_where(where, "features"), str(exc)) from None
            raise

    def metadata(self, limits: dict[str, int]) -> ModelMetadata:
        return _metadata(
            self.info,
            self.feature_names,
            self.attribute_features,
            limits,
            horizon=int(self.model.horizon_days),
            reasons_method=self.model.reasons_method,
            spec_hash=self.spec.fingerprint,
            history_days=self.spec.history_days,
            rules=self.rules,
            request_attributes={
                name: "date"
                if name in self._dates
                else "category"
                if name in self._categorical
                else "number"
                for name in sorted(self._attribute_columns)
            },
        )


def _named(error: FeatureValueError, index: int | None) -> RequestError:
    return RequestError(_where(index, f"features.{error.feature}"), str(error))


class RulesScorer:
    """The hand-written rules of PRODUCT.md, served only when explicitly allowed: the stage is
    the deepest signal in the lookback; there is no propensity."""

    def __init__(self, rules: RulesSettings | None = None, spec: FeatureSpec | None = None) -> None:
        self.rules = rules or load_rules_settings()
        self.spec = spec or load_feature_spec()
        self.info = ModelInfo(
            model=RULES,
            model_name=None,
            model_version=None,
            source="the hand-written rules (no model was available)",
            trained_at=None,
            spec_text=None,
            metrics={},
        )

    def predict(
        self,
        requests: Sequence[ContactRequest],
        now: dt.datetime | None = None,
        *,
        batch: bool = False,
        feature_names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """``predict_rows`` as validated ``Prediction`` models."""
        return _validated(
            self.predict_rows(requests, now, batch=batch, feature_names=feature_names)
        )

    def predict_rows(
        self,
        requests: Sequence[ContactRequest],
        now: dt.datetime | None = None,
        *,
        batch: bool = False,
        feature_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """As ``ModelScorer.predict_rows``, with the rules' stage."""
        now = now or dt.datetime.now(dt.UTC)
        table = None if feature_names is None else _Table(feature_names)
        if table is not None and "rules_stage" not in table.place:
            raise RequestError(
                "feature_names",
                "the rules fallback needs 'rules_stage' among the feature names; or send events",
            )
        out: list[dict[str, Any]] = []
        for i, request in enumerate(requests):
            as_of = request.as_of or now
            _check_form(request, table, i if batch else None)
            used: int | None = None
            given: Mapping[str, Any] | None = request.features
            where = "features.rules_stage"
            if table is not None and request.values is not None:
                given, where = table.row(request.values), f"values.{table.place['rules_stage']}"
            stage = ""
            if given is not None:
                named = given.get("rules_stage")
                if not isinstance(named, str) or named not in STAGES:
                    raise RequestError(
                        _where(i if batch else None, where),
                        f"the rules fallback needs 'rules_stage', one of {list(STAGES)}; "
                        "or send events",
                    )
                stage = named
            if not request.marketing_consent:
                # its given stage was checked as any other contact's input (a 400 now, not when
                # it opts in), as the model's scorer does; events are the schema's to check:
                # none is read, and no stage is worked out
                out.append(_no_consent(request, self.info, as_of))
                continue
            if given is None:
                rows, used = _event_rows(request, as_of)
                stage = build_online_features(rows, as_of=as_of, spec=self.spec, rules=self.rules)[
                    "rules_stage"
                ]
            out.append(
                {
                    "contact_id": request.contact_id,
                    "status": "scored",
                    "model": RULES,
                    "model_name": None,
                    "model_version": None,
                    "as_of": as_of,
                    "stage": stage,
                    "probabilities": {s: 1.0 if s == stage else 0.0 for s in STAGES},
                    "propensity": None,
                    "horizon_days": None,
                    "reasons": [_rules_reason(stage, self.rules.lookback_days)],
                    "cta": STAGE_CTA[stage],
                    "message_type": STAGE_MESSAGE[stage],
                    "events_used": used,
                }
            )
        return out

    def metadata(self, limits: dict[str, int]) -> ModelMetadata:
        return _metadata(self.info, [], [], limits, horizon=None, rules=self.rules)


def _rules_reason(stage: str, lookback: int) -> str:
    if stage == "dormant":
        return f"no stage signal in the last {lookback} days (rules)"
    return f"the deepest signal in the last {lookback} days shows {stage} (rules)"


def _metadata(
    info: ModelInfo,
    features: list[str],
    attributes: list[str],
    limits: dict[str, int],
    *,
    horizon: int | None,
    reasons_method: ReasonsMethod | None = None,
    spec_hash: str | None = None,
    history_days: int | None = None,
    rules: RulesSettings | None = None,
    request_attributes: dict[str, Literal["date", "category", "number"]] | None = None,
) -> ModelMetadata:
    return ModelMetadata(
        history_days=history_days,
        rules={} if rules is None else rules.model_dump(),
        attributes=request_attributes or {},
        model=info.model,
        model_name=info.model_name,
        model_version=info.model_version,
        source=info.source,
        trained_at=info.trained_at,
        # the fingerprint of the model's compiled spec: what training logs (tag
        # funnelcast.spec) and `funnelcast features` prints, whatever the YAML's layout
        feature_spec_hash=spec_hash,
        features=features,
        attribute_features=attributes,
        stages=list(STAGES),
        horizon_days=horizon,
        reasons_method=reasons_method,
        metrics=info.metrics,
        limits=limits,
    )


def limits(settings: ServiceSettings) -> dict[str, int]:
    return {
        "max_batch_contacts": MAX_BATCH_CONTACTS,
        "max_events_per_contact": MAX_EVENTS_PER_CONTACT,
        "max_features": MAX_FEATURES,
        "max_body_bytes": settings.max_body_bytes,
    }
