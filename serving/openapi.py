"""The OpenAPI document the service serves at ``/docs.json``: BentoML's, completed.

BentoML 1.4 generates the paths and the request and response schemas from the API methods, but
its OpenAPI model has no place for security schemes or an operation's ``security`` (its
``Components`` and ``Operation`` classes say so: "Not yet supported"), and it lists the same
generic error bodies (400, 404, 500 with an undescribed ``error``/``detail``) for every API.
``complete_openapi`` adds what a CRM developer needs: the two ways to send the API key, the
responses the service really gives (400, 401, 413, 415, 500) with described bodies, and drops
BentoML's schemas that no path of this service uses.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.schemas import (
    BadRequest,
    ServerError,
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
            "415": _response(UnsupportedMediaType, "The body is not sent as JSON."),
        }
    return responses


def _error_schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        BadRequest,
        Unauthorized,
        TooLarge,
        UnsupportedMediaType,
        ServerError,
    ]
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    return dict(top.get("$defs", {}))


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document (``Service.openapi_spec.asdict()``) with the API-key security
    schemes, the protected operations' ``security`` and their real error responses."""
    out = copy.deepcopy(document)
    components = out.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _BENTOML_SCHEMAS:
        schemas.pop(name, None)
    schemas.update(_error_schemas())
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
    return out
