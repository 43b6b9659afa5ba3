"""A contact whose ``marketing_consent`` is given twice is refused, never scored.

JSON leaves a name given twice in one object to the parser, and pydantic's (like Python's)
keeps the last: ``{"marketing_consent": false, ..., "marketing_consent": true}`` would be
scored. PRODUCT.md says a contact without consent is never scored, and a body that says both
does not say consent, so the service answers 400 naming the contact's field instead.

The check costs a count, not a parse. ``KeepBody`` (ASGI) keeps a copy of every POST body as
the service reads it, where the API methods find it (a context variable, so it reaches them
however BentoML schedules them). Every POST, not the prediction paths by name: Starlette
routes ``/predict%0A`` to ``/predict`` (its ``$`` matches before a final newline), and a body
not kept would not be checked. ``needs_a_look`` counts ``"marketing_consent"`` in it: every
contact has the field (the schema requires it), so with no more mentions than contacts, each
contact gives it once. More mentions (a feature or a contact id of that name), or a ``\\u``
escape of a character of the name (which could spell it without matching the count; an
escaped é or emoji, as Python's json.dumps sends every non-ASCII character, cannot), cost
one exact parse,
``consent_given_twice``, which says which contact gave it twice, if any did; its time grows
with the body, so the service runs it off the event loop.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from typing import Any

from serving.security import Message, PostMiddleware, Receive, Scope, Send

CONSENT = "marketing_consent"
_MENTION = b'"marketing_consent"'
# a JSON escape of one of the name's characters (\u0061 "a" ... \u0074 "t", \u005f "_"), in
# either case of hex; an escaped backslash before "u00.." matches too, which costs a look only
_NAME_ESCAPE = re.compile(
    rb"\\u00(?:%s)" % b"|".join(b"%02x" % ord(c) for c in sorted(set(CONSENT))), re.IGNORECASE
)

_body: ContextVar[_Kept | None] = ContextVar("funnelcast_request_body", default=None)


class _Kept:
    """The chunks of a request's body as the service reads them, and the body once whole."""

    __slots__ = ("chunks", "whole")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.whole: bytes | None = None

    def body(self) -> bytes:
        if self.whole is None:
            self.whole = b"".join(self.chunks)
            self.chunks = []
        return self.whole


class KeepBody(PostMiddleware):
    """Keeps a copy of every POST body's chunks as the service reads them, for
    ``consent_given_twice``. The body is not read ahead of the service: read here first, a
    4 MB batch took 20 ms longer over HTTP (uvicorn and BentoML, benchmarks/serving.py)."""

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        kept = _Kept()
        chunks = kept.chunks

        async def keeping() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        # the holder is set here, where the service's task (and the threads it starts) copy
        # the context from; its chunks fill in wherever the body is read
        token = _body.set(kept)
        try:
            await self.app(scope, keeping, send)
        finally:
            _body.reset(token)


def needs_a_look(contacts: int) -> bool:
    """Whether this request's body may give some contact's ``marketing_consent`` twice: it
    mentions the name more often than it has ``contacts``, or it holds a ``\\u`` escape of a
    character of the name. False when no body was kept (the service class called directly,
    with no JSON)."""
    kept = _body.get()
    if kept is None:
        return False
    body = kept.body()
    return body.count(_MENTION) > contacts or (b"\\u" in body and bool(_NAME_ESCAPE.search(body)))


def consent_given_twice(*, batch: bool) -> str | None:
    """The field of the first contact of this request's body whose ``marketing_consent`` is
    given more than once (``contacts.<i>.marketing_consent`` in a batch), or None (also when
    no body was kept). Parses the whole body: ask ``needs_a_look`` first."""
    kept = _body.get()
    if kept is None:
        return None
    body = kept.body()
    try:
        parsed = json.loads(body, object_pairs_hook=_Object)
    except ValueError:  # the service parsed it; this cannot happen, and is no duplicate
        return None
    if not batch:
        return CONSENT if _twice(parsed) else None
    listed = parsed.get("contacts") if isinstance(parsed, dict) else None
    for index, contact in enumerate(listed if isinstance(listed, list) else ()):
        if _twice(contact):
            return f"contacts.{index}.{CONSENT}"
    return None


class _Object(dict[str, Any]):
    """A parsed JSON object that remembers whether it named ``marketing_consent`` twice."""

    consent_twice = False

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        if len(self) < len(pairs) and sum(name == CONSENT for name, _ in pairs) > 1:
            self.consent_twice = True


def _twice(value: Any) -> bool:
    return isinstance(value, _Object) and value.consent_twice


GIVEN_TWICE = (
    "is given more than once in one contact; give it once, true or false (a contact is "
    "scored only on one clear consent)"
)
