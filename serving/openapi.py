"""The OpenAPI document the service serves at ``/docs.json``: BentoML's, completed.

BentoML 1.4 generates the paths and the request and response schemas from the API methods, but
its OpenAPI model has no place for security schemes or an operation's ``security`` (its
``Components`` and ``Operation`` classes say so: "Not yet supported"), and it lists the same
generic error bodies (400, 404, 500 with an undescribed ``error``/``detail``) for every API.
``complete_openapi`` adds what a CRM developer needs: the two ways to send the API key, the
responses the service really gives (400, 401, 413, 415, 500, 504) with described bodies, and drops
BentoML's schemas that no path of this service uses.
"""

from __future__ import annotations

import copy
import inspect
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.schemas import (
    BadRequest,
    BatchPredictions,
    BatchRequest,
    ContactRequest,
    Prediction,
    ServerError,
    Timeout,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

REF = "#/components/schemas/{model}"
# what the guard (serving.security) accepts, one or the other
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "BearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The API key as `Authorization: Bearer <key>`.",
    },
    "HeaderKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The API key as `X-API-Key: <key>`.",
    },
}
# the operations the guard protects (the probes, /metrics and the docs stay open)
PROTECTED = {("/predict", "post"), ("/predict_batch", "post"), ("/metadata", "get")}
# BentoML's own components, replaced by the error bodies below or unused (no task APIs here)
_BENTOML_SCHEMAS = ("TaskStatusResponse", "InvalidArgument", "NotFound", "InternalServerError")


def _response(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }


def _error_responses(method: str) -> dict[str, dict[str, Any]]:
    responses = {
        "401": _response(Unauthorized, "No API key, or a wrong one; nothing more is said."),
        "500": _response(ServerError, "A fault of the service, not of the request."),
    }
    if method == "post":
        responses |= {
            "400": _response(
                BadRequest,
                "Malformed JSON, wrong types, unknown fields, unknown event types, moments in "
                "the future or unparseable, too many events, or values the model cannot use; "
                "the body names the field.",
            ),
            "413": _response(
                TooLarge, "The body is over the size limit, or the batch over its contact limit."
            ),
            "415": _response(
                UnsupportedMediaType,
                "The body is not sent as JSON, or is compressed (a Content-Encoding other "
                "than identity, a Transfer-Encoding other than chunked).",
            ),
        }
    responses["504"] = _response(
        Timeout,
        "The request took longer than the service's timeout (FUNNELCAST_TIMEOUT_S, 10 s by "
        "default), for instance a body sent more slowly than that; retry, or split a batch.",
    )
    return responses


def _error_schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        BadRequest,
        Unauthorized,
        TooLarge,
        UnsupportedMediaType,
        ServerError,
        Timeout,
    ]
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    return dict(top.get("$defs", {}))


# each prediction endpoint's request and answer, named as in serving.schemas
BODIES: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "/predict": (ContactRequest, Prediction),
    "/predict_batch": (BatchRequest, BatchPredictions),
}
DESCRIPTION = (
    "funnelcast scores CRM contacts: the funnel stage, every stage's probability, the purchase "
    "propensity, three reasons in the CRM's words and the call to action, from a contact's raw "
    "events or precomputed features. Every endpoint but the probes and these documents needs "
    "an API key. Contacts without marketing consent are never scored. Refusals outside the "
    'operations below are JSON too, {"error": "..."}: 404 for a path that does not '
    "exist (one with a trailing slash included: no path ends in /), 405 for another "
    "method than a path answers, with its Allow header, and 431 for a request line and "
    "headers (or a chunked body's framing and trailers) that go on past 64 KiB, 408 (and the "
    "connection closed) for a request line and headers not all there within the request "
    "timeout of the connection opening or the previous answer. A request "
    "that is not valid HTTP at all (a malformed header, a bad "
    "Content-Length) is refused by the HTTP layer before the service sees it, with a "
    "plain-text 400 'Invalid HTTP request received.'."
)


def _body_schemas() -> dict[str, Any]:
    """The request and answer models of the prediction endpoints as components, under their
    own names (BentoML inlines copies named ``...IODescriptor``, and its inlined answers lose
    their nulls)."""
    models = [(request, "validation") for request, _ in BODIES.values()]
    models += [(answer, "serialization") for _, answer in BODIES.values()]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    return dict(top.get("$defs", {}))


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}


def nullable_as_openapi_30(schema: Any) -> Any:
    """JSON Schema's ``anyOf: [X, {type: null}]`` (what pydantic writes for ``X | None``) as
    OpenAPI 3.0's ``nullable: true``, which this 3.0 document's readers understand (3.0 has no
    null type)."""
    if isinstance(schema, list):
        return [nullable_as_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: nullable_as_openapi_30(value) for key, value in schema.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" in rest[0]:
            out["allOf"] = rest  # siblings of a $ref are ignored in 3.0: wrap it
        elif len(rest) == 1:
            out = rest[0] | out
        else:  # 3.0 reads `nullable` beside a `type` only: each option says it
            out["anyOf"] = [_nullable(option) for option in rest]
            return out
        out["nullable"] = True
    return out


def _nullable(option: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in option:  # siblings of a $ref are ignored in 3.0: wrap it
        return {"allOf": [option], "nullable": True}
    return option | {"nullable": True}


def const_as_enum(schema: Any) -> Any:
    """JSON Schema's ``const`` (pydantic's for a one-value ``Literal``) as a one-value
    ``enum``: OpenAPI 3.0 has no ``const``."""
    if isinstance(schema, list):
        return [const_as_enum(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: const_as_enum(value) for key, value in schema.items() if key != "const"}
    if "const" in schema:
        out["enum"] = [schema["const"]]
    return out


# BentoML's descriptions of its probes call /healthz deprecated and its answer empty; it is
# the service's liveness probe, as the README says (deploy review)
PROBES = {
    "/healthz": "Alive: 200 (a body of one newline) once a worker has loaded its model; no "
    "API key. Before that, nothing answers: a liveness probe needs a startup probe longer "
    "than the model's load.",
    "/livez": "Alive, as /healthz (Kubernetes' name for it); no API key.",
    "/readyz": "Ready: 200 once the service can score (its model, or the rules where the "
    "fallback is allowed, loaded); no API key.",
}


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document (``Service.openapi_spec.asdict()``) with the API-key security
    schemes, the protected operations' ``security`` and their real error responses, the
    prediction bodies as named components, nulls as OpenAPI 3.0 says them, and funnelcast's
    own title, version and description."""
    out = copy.deepcopy(document)
    out["info"] = {"title": "funnelcast", "version": _version(), "description": DESCRIPTION}
    components = out.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in [*_BENTOML_SCHEMAS, *(n for n in schemas if n.endswith("IODescriptor"))]:
        schemas.pop(name, None)
    schemas.update(_error_schemas())
    schemas.update(_body_schemas())
    for path, (request, answer) in BODIES.items():
        operation = out.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        body = operation.setdefault("requestBody", {})
        body["content"] = _json_body(request)
        body["required"] = True  # else client generators make the body optional
        if isinstance(operation.get("description"), str):  # the method's docstring, dedented
            operation["description"] = inspect.cleandoc(operation["description"])
        responses = operation.setdefault("responses", {})
        success = responses.pop(200, None) or responses.get("200") or {}
        success.setdefault("description", "Successful Response")
        success["content"] = _json_body(answer)
        responses["200"] = success
    for path, description in PROBES.items():
        probe = out.get("paths", {}).get(path, {}).get("get")
        if probe is not None:
            probe["description"] = description
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    for path, method in sorted(PROTECTED):
        operation = out.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]  # either one
        responses = operation.setdefault("responses", {})
        success = responses.get("200") or responses.get(200)
        errors = _error_responses(method)
        operation["responses"] = {"200": success} | {code: errors[code] for code in sorted(errors)}
    components["schemas"] = const_as_enum(nullable_as_openapi_30(schemas))
    return out


def _version() -> str:
    try:
        return metadata.version("funnelcast")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"
