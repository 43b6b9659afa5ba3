"""A contact whose ``marketing_consent`` is given twice is refused, never scored.

JSON leaves a name given twice in one object to the parser, and pydantic's (like Python's)
keeps the last: ``{"marketing_consent": false, ..., "marketing_consent": true}`` would be
scored. PRODUCT.md says a contact without consent is never scored, and a body that says both
does not say consent, so the service answers 400 naming the contact's field instead.

The check costs a count, not a parse. ``KeepBody`` (ASGI) reads every POST body before the
service does and leaves it where the API methods find it (a context variable, so it reaches
them however BentoML schedules them). Every POST, not the prediction paths by name: Starlette
routes ``/predict%0A`` to ``/predict`` (its ``$`` matches before a final newline), and a body
not kept would not be checked. ``needs_a_look`` counts ``"marketing_consent"`` in it: every
contact has the field (the schema requires it), so with no more mentions than contacts, each
contact gives it once. More mentions (a feature or a contact id of that name), or a ``\\u``
escape (which could spell the name without matching the count), cost one exact parse,
``consent_given_twice``, which says which contact gave it twice, if any did; its time grows
with the body, so the service runs it off the event loop.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from serving.security import ASGIApp, Message, Receive, Scope, Send

CONSENT = "marketing_consent"
_MENTION = b'"marketing_consent"'

_body: ContextVar[bytes | None] = ContextVar("funnelcast_request_body", default=None)


class KeepBody:
    """Reads a POST body, keeps it for ``consent_given_twice``, and hands it on whole. Sits
    behind the API-key and size guard, so only an accepted body of allowed size is read here
    (the service would read it all anyway)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending it
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = _body.set(body)
        try:
            await self.app(scope, replay, send)
        finally:
            _body.reset(token)


def needs_a_look(contacts: int) -> bool:
    """Whether this request's body may give some contact's ``marketing_consent`` twice: it
    mentions the name more often than it has ``contacts``, or it holds a ``\\u`` escape. False
    when no body was kept (the service class called directly, with no JSON)."""
    body = _body.get()
    return body is not None and (body.count(_MENTION) > contacts or b"\\u" in body)


def consent_given_twice(*, batch: bool) -> str | None:
    """The field of the first contact of this request's body whose ``marketing_consent`` is
    given more than once (``contacts.<i>.marketing_consent`` in a batch), or None (also when
    no body was kept). Parses the whole body: ask ``needs_a_look`` first."""
    body = _body.get()
    if body is None:
        return None
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
