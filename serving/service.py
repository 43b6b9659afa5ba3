"""The prediction service CRM systems call: ``bentoml serve serving.service:Funnelcast`` (or
``funnelcast serve``).

* ``POST /predict``: one contact, from its raw events (features by the online path, the code
  training used) or from precomputed features: stage, every stage probability, purchase
  propensity, three reasons in the CRM's words, CTA and message type, model and version.
* ``POST /predict_batch``: up to ``MAX_BATCH_CONTACTS`` contacts (more: 413 with the limit);
  precomputed features by name, or in the compact form (``feature_names`` once, each
  contact's ``values`` in that order).
* ``GET /metadata``: the model, its training date, feature spec hash, stages and test metrics.
* ``GET /healthz`` (alive), ``GET /readyz`` (model loaded): BentoML's probes.

Configuration is the environment (``FUNNELCAST_*``, see ``serving.runtime.ServiceSettings``),
read when a worker starts. Every endpoint but the probes and the API docs requires an API key
(``serving.security``). Bad input is a 4xx naming the field, never a 500.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import gc
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import anyio
import bentoml
from bentoml._internal.context import server_context
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse, Response

from features.errors import InputError
from serving.duplicates import GIVEN_TWICE, KeepBody, consent_given_twice, needs_a_look
from serving.errors import KIND_TAGS, NamedValidationErrors
from serving.gather import Gather
from serving.held import hold_folder
from serving.http_limits import limit_request_heads
from serving.metrics import bound_metrics_labels, own_metrics_folder, remove_own_metrics_folder
from serving.openapi import complete_openapi
from serving.runtime import (
    DEFAULT_TIMEOUT_S,
    RequestError,
    Scorer,
    ServiceConfigError,
    ServiceSettings,
    exposed_key_file,
    limits,
    load_scorer,
    positive_setting,
    predictions_json,
)
from serving.schemas import (
    BatchPredictions,
    BatchRequest,
    ContactRequest,
    Event,
    ModelMetadata,
    Prediction,
)
from serving.security import GuardMiddleware

# /metrics counts a request by the path it was served by, or as `other`: not by the raw path,
# and each server's counts are its own
bound_metrics_labels()
_METRICS_FOLDER = own_metrics_folder()


def _hold_the_model_copy() -> None:
    """In `bentoml serve`'s own process, the model copy its workers load (FUNNELCAST_MODEL_COPY)
    held for as long as the server runs (``serving.held``), its workers inheriting the lock.
    Each worker holds it too, but one restarting (a crash, an OOM kill, a `kill -HUP` reload)
    holds nothing for the seconds it takes to start, and a `funnelcast serve` starting then
    removed the copy, and the server stopped (review)."""
    copy = os.environ.get("FUNNELCAST_MODEL_COPY")
    if server_context.worker_index is None and copy and Path(copy).is_dir():
        hold_folder(Path(copy))


_hold_the_model_copy()

log = logging.getLogger("funnelcast.service")
# BentoML leaves loggers other than its own at WARNING: the line saying which model a worker
# serves (INFO) would never show
log.setLevel(logging.INFO)
# a request with more events than this is scored on a worker thread, not on the event loop
_ON_THE_LOOP_EVENTS = 500
# MLflow's download bar would fill the server log at every start
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# names a refused request's log line may show: the request schema's fields, pydantic's names
# for the kinds a value may take, and (added when the model loads) the model's features and
# attributes; any other name in a place is the client's (an unknown key), shown as <name>
_LOGGED_NAMES: set[str] = {
    *ContactRequest.model_fields,
    *Event.model_fields,
    *BatchRequest.model_fields,
    *KIND_TAGS,
}


def _logged_place(loc: tuple[int | str, ...]) -> str:
    return ".".join(
        str(part) if isinstance(part, int) or part in _LOGGED_NAMES else "<name>" for part in loc
    )


class _NoInputInLogs(logging.Filter):
    """BentoML logs a refused request's validation error with its traceback, whose text quotes
    the offending input (contact ids among it). Keep the line, name the fields and error types,
    drop the input: keys the client chose too (an e-mail address as a feature name, a forged
    log line in a key), which are shown as <name>."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            problems = error.errors(include_input=False, include_context=False)
            where = "; ".join(
                (_logged_place(e["loc"]) or "body") + f" ({e['type']})" for e in problems[:5]
            )
            # a batch over the contact limit is answered 413 (serving.errors), the rest 400
            too_many = any(
                e["type"] == "too_long" and list(e["loc"]) == ["contacts"] for e in problems
            )
            status = 413 if too_many else 400
            record.msg = f"{record.msg} refused with {status}: {where or 'invalid body'}"
            record.exc_info = None
            record.exc_text = None
            # the client's mistake, not the service's: a warning, not an error
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif isinstance(error, ClientDisconnect):
            # a client that hung up before its body was read (a timeout on its side): one
            # line, not an error with a traceback of the service's
            record.msg = f"{record.msg}: the client disconnected before its request was read"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_NoInputInLogs())


def _setting(name: str, default: float, *, whole: bool = False) -> float:
    """A number the service's definition needs (``positive_setting``); a bad one stops
    `bentoml serve` with the reason, before any worker starts."""
    try:
        return positive_setting(os.environ, name, default, whole=whole)
    except ServiceConfigError as error:
        raise SystemExit(str(error)) from None


# a request's line and headers stop at 64 KiB (a 431) and must arrive whole within the request
# timeout (a 408): uvicorn's httptools parser has neither limit
limit_request_heads(head_timeout_s=_setting("TIMEOUT_S", DEFAULT_TIMEOUT_S))


def _stop_the_server(error: ServiceConfigError) -> NoReturn:
    """A configuration error (no key, no model, a mismatched model) is not mended by a restart,
    and BentoML restarts a failed worker forever. In a server worker, ask the server process
    (the worker's parent) to stop, so that `bentoml serve` ends with the reason in its log;
    elsewhere (a test client, a notebook) just raise."""
    if server_context.worker_index is None:
        raise error
    server = os.getppid()
    if os.environ.get(_SERVER_PID, str(server)) != str(server):
        # its server is gone (killed), and the process that took the worker in is no server
        # of ours to stop (PID 1, a subreaper such as a systemd user manager: review)
        log.critical("funnelcast cannot start, and its server is gone: %s", error)
        _exit_at_once()
    try:  # the server then exits 2, not 0 (below); said by the first worker to stop it
        os.close(os.open(_stop_note(server), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        _exit_at_once()  # another worker said why, and asked the server to stop
    except OSError:  # no note (a temporary folder that cannot be written): the server exits 0
        pass
    log.critical("funnelcast cannot start, stopping the server: %s", error)
    os.kill(server, signal.SIGTERM)
    _exit_at_once()


def _exit_at_once() -> NoReturn:
    """The worker ends with status 2, its reason said in one line: raised, it was logged
    again with three tracebacks (a hundred lines) by BentoML and uvicorn as the worker
    failed."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(2)


def _stop_note(server_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"funnelcast-cannot-start-{server_pid}"


# a note left by a server that was killed before it could read it names a process id that a
# later process may get: this one starts clean
_stop_note(os.getpid()).unlink(missing_ok=True)
# the server a worker may ask to stop: its own, named to the workers it starts
_SERVER_PID = "FUNNELCAST_SERVER_PID"
if server_context.worker_index is None:
    os.environ[_SERVER_PID] = str(os.getpid())


@atexit.register
def _exit_2_when_a_worker_could_not_start() -> None:
    """In `bentoml serve`'s own process (which imports this module too): a stop asked for by
    a worker that cannot start (``_stop_the_server``) ends with exit status 2, as
    `funnelcast serve` refuses the same settings, not BentoML's 0 for a stop asked for, so a
    supervisor sees the failure. Anywhere else there is no note, and nothing happens."""
    note = _stop_note(os.getpid())
    if not note.exists():
        return
    note.unlink(missing_ok=True)
    # os._exit runs no later exit handler, and the metrics folder's removal was registered
    # before this one (so it runs after): a server that could not start left its folder,
    # one more for every try of a supervisor restarting it (deploy review)
    if _METRICS_FOLDER is not None:
        remove_own_metrics_folder(_METRICS_FOLDER)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


def bento_settings(settings: ServiceSettings, own: str | None) -> ServiceSettings:
    """The settings a Bento serves with: the BentoML model it packs (``own``, its exact tag),
    whatever else the environment names; None (no Bento) keeps them. `bentoml serve <bento>`
    does not apply the Bento's envs, so its model is set here. A FUNNELCAST_BENTO_MODEL left
    in the environment that names another model (another build's exact tag, another name) is
    refused: it made a Bento of version 1 serve the latest import, version 2, so a rollback to
    an older Bento served the newest model (deploy review). Its own name alone or with
    ``:latest`` (the bentofile's own setting) is taken as its own model, with no lookup in the
    store: looked up, a later build made a restarted worker of a running server refuse it,
    and the server stop (diff review)."""
    if own is None:
        return settings
    named = settings.bento_model
    if named is not None and not _names_own_model(named, own):
        raise ServiceConfigError(
            f"this Bento packs the BentoML model {own} and serves only it, but "
            f"FUNNELCAST_BENTO_MODEL names {named}; unset FUNNELCAST_BENTO_MODEL, or serve the "
            "Bento built with that model (`bentoml list`)"
        )
    return dataclasses.replace(settings, bento_model=own)


def _names_own_model(named: str, own: str) -> bool:
    """Whether a tag names the Bento's own model: its exact tag, or its name alone or with
    latest, read as BentoML reads tags (names in any case) and without the store."""
    from bentoml import Tag
    from bentoml.exceptions import BentoMLException

    try:
        tag, mine = Tag.from_taglike(named), Tag.from_taglike(own)
    except (ValueError, BentoMLException):  # no tag at all ('funnelcast:', 'a:b:c')
        return False
    return tag.name == mine.name and tag.version in (None, "latest", mine.version)


def _bad_request(exc: InputError) -> JSONResponse:
    """A request the model cannot use, shaped as the schema's 400s: the message starts with
    the field it names."""
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, RequestError):
        body = {"error": f"{exc.field}: {exc.message}", "field": exc.field}
    return JSONResponse(body, status_code=400)


def _answer(body: bytes) -> Response:
    """The predictions' JSON as the response: the API methods' annotations (``Prediction``,
    ``BatchPredictions``) still describe it in the OpenAPI document."""
    return Response(body, media_type="application/json")


class _Guard(GuardMiddleware):
    """The API-key and body-size guard, configured from the environment when the worker
    builds its app (so a missing key stops the server from starting, and the keys are never
    part of the service definition)."""

    def __init__(self, app: Any) -> None:
        try:
            settings = ServiceSettings.from_env()
        except ServiceConfigError as error:
            _stop_the_server(error)
        if (exposed := exposed_key_file(os.environ)) is not None:
            log.warning(exposed)
        super().__init__(
            app,
            keys=settings.api_keys,
            max_body_bytes=settings.max_body_bytes,
            post_only=("/predict", "/predict_batch"),
        )


def _untraced_paths() -> list[str]:
    """BentoML records an OpenTelemetry span for every request even when no trace is kept
    (sample rate 0, no exporter): a third of a feature request's HTTP overhead. The prediction
    paths are left out of tracing unless FUNNELCAST_TRACE_PREDICTIONS=1 (with a BentoML tracing
    exporter configured)."""
    if os.environ.get("FUNNELCAST_TRACE_PREDICTIONS", "").strip() == "1":
        return []
    return [r"/predict(_batch)?$"]


@bentoml.service(
    name="funnelcast",
    workers=int(_setting("WORKERS", 1, whole=True)),
    # a request is dropped after this long; BentoML keeps each request's state for the whole
    # timeout, and its default of 60 s grows the heap and stalls p99 under load
    traffic={"timeout": _setting("TIMEOUT_S", DEFAULT_TIMEOUT_S)},
    http={"host": "127.0.0.1", "port": 3000},
    logging={"access": {"enabled": False}},  # access lines would carry nothing useful
    tracing={"excluded_urls": _untraced_paths()},
)
class Funnelcast:
    """funnelcast's stage and propensity predictions for CRM contacts."""

    def __init__(self) -> None:
        try:
            self._load()
        except ServiceConfigError as error:
            _stop_the_server(error)
        # BentoML looks each API method up on this instance for every request, and the
        # method's descriptor builds a new caller every time (with an `inspect.signature` of
        # the method: 4-5 % of a worker's CPU under load, profiled with py-spy). The caller is
        # the same each time, so it is built once here; the instance's attribute then shadows
        # the class's descriptor.
        for name in ("predict", "predict_batch"):
            self.__dict__[name] = getattr(type(self), name).__get__(self, type(self))

    def _load(self) -> None:
        bento = getattr(Funnelcast, "bento", None)  # set when served from a built Bento
        own = str(bento.info.models[0].tag) if bento is not None and bento.info.models else None
        self.settings = bento_settings(ServiceSettings.from_env(), own)
        self.scorer: Scorer = load_scorer(self.settings)
        self.gather: Gather[ContactRequest] = Gather(self.scorer.predict_rows)
        self.limits = limits(self.settings)
        served = self.scorer.metadata(self.limits)
        _LOGGED_NAMES.update(served.features)
        _LOGGED_NAMES.update(name.removeprefix("days_since_") for name in served.attribute_features)
        log.info("serving %s", self.scorer.info.served())
        # the model is loaded for good: move it out of the collector's generations, so a
        # full collection under load does not walk the trees' Python objects every time
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.scorer is not None

    @bentoml.api(route="/predict")
    async def predict(self, request: ContactRequest, /) -> Prediction:
        """Score one contact from its raw events or its precomputed features.

        Contacts without marketing consent are not scored: status 'no_consent'. A category
        value the model did not see in training (a new segment or acquisition source) is
        scored as missing, as LightGBM scores unseen categories; 'rules_stage' among given
        features must be one of the stage names. Numbers must fit float32 (about 3.4e38).
        A body that gives 'marketing_consent' twice is refused."""
        if needs_a_look(1):  # a parse of the whole body: off the event loop
            twice = await anyio.to_thread.run_sync(
                functools.partial(consent_given_twice, batch=False)
            )
            if twice is not None:
                return _bad_request(RequestError(twice, GIVEN_TWICE))  # type: ignore[return-value]
        try:
            if len(request.events or ()) > _ON_THE_LOOP_EVENTS:
                # a long history would hold the event loop (and /readyz) for milliseconds
                rows = await anyio.to_thread.run_sync(self.scorer.predict_rows, [request])
            else:  # scored with the other requests this worker read at the same time
                rows = [await self.gather.score(request)]
        except InputError as exc:
            return _bad_request(exc)  # type: ignore[return-value]
        return _answer(predictions_json(rows, batch=False))  # type: ignore[return-value]

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, request: BatchRequest, /) -> BatchPredictions:
        """Score up to 1,000 contacts in one request (more: a 413 naming the limit, before
        any contact is scored: split the batch).

        Precomputed features have a compact form: the feature names once in 'feature_names'
        and each contact's 'values' in that order, a fifth of the body."""
        if needs_a_look(len(request.contacts)):
            twice = consent_given_twice(batch=True)
            if twice is not None:
                return _bad_request(RequestError(twice, GIVEN_TWICE))  # type: ignore[return-value]
        try:
            rows = self.scorer.predict_rows(
                request.contacts, batch=True, feature_names=request.feature_names
            )
        except InputError as exc:
            return _bad_request(exc)  # type: ignore[return-value]
        return _answer(predictions_json(rows, batch=True))  # type: ignore[return-value]

    def metadata(self) -> ModelMetadata:
        return self.scorer.metadata(self.limits)


# GET routes: BentoML's APIs are POST only, so /metadata is a FastAPI app mounted beside them
# (and listed in the service's OpenAPI document with its response model). Mounted apps are
# routed before BentoML's own /docs.json, so the completed document is served in its place.
_extra = FastAPI(title="funnelcast", openapi_url=None, docs_url=None, redoc_url=None)


@functools.cache
def _openapi_document() -> dict[str, Any]:
    return complete_openapi(Funnelcast.openapi_spec.asdict())  # type: ignore[attr-defined]


# BentoML's own page loads Google Tag Manager, a third-party script on the page where a
# developer types an API key into Swagger's "Authorize": this one loads only the Swagger UI
# that BentoML serves from this server (/static_content/), pointed at /docs.json. Its own
# start-up, not BentoML's swagger-initializer.js: that one leaves Swagger's validator badge
# on, an image from validator.swagger.io given this server's address, on any host but
# localhost and 127.0.0.1 (privacy review)
_INDEX_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>funnelcast prediction service</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="./static_content/index.css" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script>
      window.onload = function () {
        window.ui = SwaggerUIBundle({
          url: "./docs.json",
          dom_id: "#swagger-ui",
          deepLinking: true,
          validatorUrl: null,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
          plugins: [SwaggerUIBundle.plugins.DownloadUrl],
          layout: "StandaloneLayout",
        });
      };
    </script>
  </body>
</html>
"""


@_extra.get("/", include_in_schema=False)
def index_page() -> HTMLResponse:
    """The API docs (Swagger UI), with no third-party script."""
    return HTMLResponse(_INDEX_PAGE)


@_extra.get("/docs.json", include_in_schema=False)
def openapi_document() -> JSONResponse:
    """BentoML's OpenAPI document with the API-key schemes and the real error responses."""
    return JSONResponse(_openapi_document())


@_extra.get("/metadata", response_model=ModelMetadata, tags=["Service APIs"])
def metadata() -> ModelMetadata:
    """The model being served: version, training date, feature spec hash, stages, the features
    it reads, its out-of-time test metrics and the request limits."""
    service = bentoml.get_current_service()
    return service.metadata()


Funnelcast.mount_asgi_app(_extra, path="/")  # type: ignore[attr-defined]
Funnelcast.add_asgi_middleware(_Guard)  # type: ignore[attr-defined]
Funnelcast.add_asgi_middleware(NamedValidationErrors)  # type: ignore[attr-defined]
# innermost: copies only bodies the guard let through (key checked, size within the limit)
Funnelcast.add_asgi_middleware(KeepBody)  # type: ignore[attr-defined]
