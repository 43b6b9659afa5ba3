"""One shape for every 400 of the prediction endpoints: ``{"error", "field"}``, and ``detail``
when the body does not match the request schema.

BentoML answers a body that fails the schema itself, with ``{"error": "1 validation error for
ContactRequestIODescriptor", "detail": [...]}``: the message names an internal class, not the
field, and there is no ``field`` as in the service's own 400s (``serving.service``). This ASGI
middleware rewrites those answers only (a 400 whose body has ``detail`` and no ``field``):
the first problem's place becomes ``field`` and leads the message; ``detail`` is kept whole.
A batch over the contact limit (the schema's ``max_length``, where validation stops) becomes
the 413 with the limit.
Other answers pass through untouched, at the cost of one call per ASGI message.
"""

from __future__ import annotations

import json
from typing import Any

from serving.schemas import MAX_BATCH_CONTACTS
from serving.security import Message, PostMiddleware, Receive, Scope, Send


class NamedValidationErrors(PostMiddleware):
    """Rewrites BentoML's schema-validation 400s to name the field (see the module)."""

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None
        chunks: list[bytes] = []

        async def named(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] == 400:
                held = message  # sent once the body is known, with its new length
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status, body = reshaped(b"".join(chunks))
            headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**held, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, named)


def reshaped(body: bytes) -> tuple[int, bytes]:
    """A schema-validation 400's status and body: with ``field`` (the first problem's dotted
    place, null for malformed JSON) and a message that starts with it; a batch over the
    contact limit is the 413 with the limit; any other body is unchanged."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return 400, body
    if not isinstance(answer, dict) or "field" in answer:
        return 400, body
    detail = answer.get("detail")
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return 400, body
    if any(d.get("type") == "too_long" and d.get("loc") == ["contacts"] for d in detail):
        too_many = {
            "error": f"the batch holds more than the limit of {MAX_BATCH_CONTACTS} contacts "
            "per request; split it",
            "field": "contacts",
            "limit": MAX_BATCH_CONTACTS,
        }
        return 413, json.dumps(too_many).encode("utf-8")
    first = detail[0]
    field = _place(first.get("loc", ())) or None
    kinds = _kinds_refused(detail)
    message = (
        _none_of(kinds)
        or _time_of_day_out_of_range(first)
        or str(first.get("msg", "invalid request"))
    )
    others = len(detail) - max(1, len(kinds))
    if others:
        message += f" (and {others} more: see detail)"
    named = {
        "error": f"{field}: {message}" if field else message,
        "field": field,
        "detail": detail,
    }
    return 400, json.dumps(named).encode("utf-8")


# pydantic's names for the kinds a feature or attribute value may take, which it adds to the
# place of a value that is none of them ("features.x.float", "values.3.float"): the field is
# the value's
KIND_TAGS = frozenset({"float", "str", "bool", "int"})
_VALUE_HOLDERS = ("features", "attributes", "values")


# the words for each kind a value may take, in the order they are said
_KIND_WORDS = {"float": "a number", "int": "a number", "bool": "true or false", "str": "text"}


def _is_kind_problem(loc: list[Any] | tuple[Any, ...]) -> bool:
    return len(loc) >= 3 and loc[-1] in KIND_TAGS and loc[-3] in _VALUE_HOLDERS


def _kinds_refused(detail: list[Any]) -> list[str]:
    """The kinds a feature or attribute value failed to be, one problem each in pydantic's
    ``detail`` (its union's members), when the first problem is one of them; else none."""
    loc = list(detail[0].get("loc", ()))
    if not _is_kind_problem(loc):
        return []
    problems = [
        problem
        for problem in detail
        if isinstance(problem, dict)
        and list(problem.get("loc", ()))[:-1] == loc[:-1]
        and _is_kind_problem(list(problem.get("loc", ())))
    ]
    # a value of one of the kinds that fails that kind's own check (1e400: no finite number)
    # is told pydantic's message for it, not that it is of no kind (diff review)
    if not all(str(problem.get("type", "")).endswith("_type") for problem in problems):
        return []
    return [str(problem["loc"][-1]) for problem in problems]


def _none_of(kinds: list[str]) -> str | None:
    """One message for a value that is none of the kinds it may take: pydantic's message for
    the first of them alone ("Input should be a valid integer") said a date or a category was
    to be an integer (review)."""
    if len(kinds) < 2:
        return None
    words = list(dict.fromkeys(_KIND_WORDS[kind] for kind in kinds))
    return (
        f"Input should be {', '.join(words[:-1])} or {words[-1]} (a date or a category as "
        "text), or null; not an object or a list"
    )


def _place(loc: list[Any] | tuple[Any, ...]) -> str:
    """A problem's place as a dotted path, without pydantic's name of a kind the value failed
    to be; an empty key shows as ``""``."""
    parts = list(loc)
    if _is_kind_problem(parts):
        parts.pop()
    return ".".join('""' if part == "" else str(part) for part in parts)


def _time_of_day_out_of_range(problem: dict[str, Any]) -> str | None:
    """pydantic reads a moment whose hour, minute or second is out of range (24:00, 10:61, a
    leap second's 23:59:60) as a date followed by "unexpected extra characters", which sends
    the sender looking for characters; BentoML leaves the input out of ``detail``, so the
    message says both readings."""
    message = str(problem.get("msg", ""))
    if problem.get("type") != "datetime_from_date_parsing" or "extra characters" not in message:
        return None
    return (
        f"{message}; if a time of day and a zone follow the date, one of them may be out of "
        "range or form: hours run 00-23, minutes and seconds 00-59 (a leap second's :60 is "
        "not accepted: give :59), and the zone is Z or an offset from -23:59 to +23:59 "
        "(+01, +0100 or +01:00) written right after the time (' UTC' is not read)"
    )
