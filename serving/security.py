"""API keys and request size limits, as one ASGI middleware in front of every endpoint.

Checked before the body is read: a request without a valid key costs the service nothing but
the comparison. Keys come as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and are
compared in constant time against every configured key (``hmac.compare_digest`` on their
SHA-256 digests, so neither the key nor its length leaks through timing). A request with
both headers is judged by its ``X-API-Key``, whatever their order (a gateway in front may set
an ``Authorization`` of its own). A refused request gets 401 with no detail; keys are never
logged or echoed.

Probes (``/healthz``, ``/livez``, ``/readyz``), Prometheus' ``/metrics`` and the API
documentation stay open: they carry no contact data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/"})
OPEN_PREFIXES = ("/static_content/",)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyCheck:
    """Constant-time membership of a presented key among the configured ones."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        self._digests = [_digest(k) for k in keys]

    def __repr__(self) -> str:  # never show the keys, even hashed
        return f"KeyCheck({len(self._digests)} key(s))"

    def accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = _digest(presented)
        ok = False
        for digest in self._digests:  # every key is compared: no early exit to time
            ok |= hmac.compare_digest(candidate, digest)
        return ok


def presented_keys(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The keys a request presents: its ``X-API-Key`` header(s) when it has one, else its
    ``Authorization: Bearer ...`` token(s); empty ones are none. ``X-API-Key`` is funnelcast's
    own header, so it wins over an ``Authorization`` that a gateway in front of the service
    may set for itself, whatever the headers' order."""
    api_keys, bearer = [], []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            text = value.decode("latin-1").strip()
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer.append(token.strip())
        elif lowered == b"x-api-key" and value.strip():
            api_keys.append(value.decode("latin-1").strip())
    return api_keys or bearer


def authorized(check: KeyCheck, keys: Sequence[str]) -> bool:
    """A request presents a key (``presented_keys``), and every one it presents is valid."""
    ok = bool(keys)
    for key in keys:  # each is checked, none skipped
        ok &= check.accepts(key)
    return ok


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="funnelcast"'))
    if status == 405:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# BentoML reads an empty body as an empty object, and the 400 then named the first required
# field as if the body had lacked only it
_EMPTY_BODY = {
    "error": "the request body is empty; send a JSON object (the API docs at / describe it)",
    "field": None,
}


class PostMiddleware:
    """An ASGI middleware that acts on POST requests only (``post``); every other request,
    and the lifespan, pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        await self.post(scope, receive, send)

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class GuardMiddleware:
    """401 without a valid key; 413 for a body over ``max_body_bytes`` (by Content-Length, or
    while streaming when the length is not declared); 405 in JSON, like every other refusal,
    for another method than POST on ``post_only`` paths (Starlette answers it in plain text)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Sequence[str],
        max_body_bytes: int,
        post_only: Collection[str] = (),
    ) -> None:
        self.app = app
        self.check = KeyCheck(keys)
        self.max_body_bytes = max_body_bytes
        self.post_only = frozenset(post_only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # no websocket is served: refused, a 403 to the client
            await receive()  # the connection's opening message
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if scope.get("method") == "HEAD" and path not in self.post_only:
            # HEAD answers as GET without the body (HTTP requires it wherever GET works; the
            # routes here declare GET only, so HEAD /metadata or /readyz was a 405)
            scope = {**scope, "method": "GET"}
            send = _headers_only(send)
        if path.endswith("/") and path != "/" and not path.startswith(OPEN_PREFIXES):
            # Starlette would redirect "/predict/" to "/predict" (a 307 with no body, which a
            # client not following redirects reads as an empty answer), after the key check
            # even for "/healthz/": no route ends in "/", so say so
            await _json(
                send, 404, {"error": f"no such path: {path}; no path of this service ends in /"}
            )
            return
        if path not in self.post_only:  # the routers' plain-text 404 and 405, in JSON
            send = _json_refusals(send, path, scope.get("method", ""))
        if not path.isprintable():
            # no route has a control character; Starlette would route "/predict\n" (sent
            # as /predict%0A) to /predict, as its patterns end in "$"
            await _json(send, 404, {"error": "no such path"})
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if not authorized(self.check, presented_keys(headers)):
            await _json(send, 401, {"error": "unauthorized"})
            return
        if path in self.post_only and scope.get("method") != "POST":
            await _json(send, 405, {"error": f"{path} answers POST only, with a JSON body"})
            return
        if scope.get("method") == "POST" and _media_type(headers) not in ("", "application/json"):
            # BentoML would also parse forms and multipart (and answer a bad one with a 500)
            await _json(
                send, 415, {"error": "send the body as JSON (Content-Type: application/json)"}
            )
            return
        encoding = _header(headers, b"content-encoding")
        if scope.get("method") == "POST" and encoding not in ("", "identity"):
            # read as it is, a gzip body was "Invalid JSON" and a plain one marked deflate was
            # scored: the service decodes no compression, so say so
            await _json(
                send,
                415,
                {
                    "error": f"Content-Encoding {encoding[:40]!r} is not accepted; send the "
                    "JSON body uncompressed (no Content-Encoding, or identity)"
                },
            )
            return
        framing = _header(headers, b"transfer-encoding")
        codings = [coding.strip() for coding in framing.split(",") if coding.strip()]
        if scope.get("method") == "POST" and any(coding != "chunked" for coding in codings):
            # the HTTP layer undoes the chunked framing only: a gzip transfer coding reached
            # the parser as "Invalid JSON", a deflate one over a plain body was scored
            await _json(
                send,
                415,
                {
                    "error": f"Transfer-Encoding {framing[:40]!r} is not accepted; send the "
                    "JSON body uncompressed (Transfer-Encoding chunked at most)"
                },
            )
            return
        declared = _content_length(headers)
        if framing:
            declared = None  # chunked framing wins over a Content-Length: count while reading
        if declared is not None and declared > self.max_body_bytes:
            await _json(send, 413, self._too_large())
            return
        if declared is None:
            await self._buffered(scope, receive, send)
            return
        if declared == 0 and path in self.post_only:
            await _json(send, 400, _EMPTY_BODY)
            return
        await self.app(scope, receive, send)

    def _too_large(self) -> dict[str, Any]:
        return {
            "error": f"request body is larger than the limit of {self.max_body_bytes} bytes; "
            "split it into smaller requests",
            "limit_bytes": self.max_body_bytes,
        }

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without a declared length is read here, up to the limit, and replayed: the
        app never sees a body over the limit."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                await _json(send, 413, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body and scope.get("path") in self.post_only:
            await _json(send, 400, _EMPTY_BODY)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _headers_only(send: Send) -> Send:
    """``send`` with every body part emptied: a HEAD answer keeps GET's status and headers
    (Content-Length included), and sends no body."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return sending


def _json_refusals(send: Send, path: str, method: str) -> Send:
    """``send`` with a 404 or 405 answered by a router (Starlette's plain text, FastAPI's
    ``{"detail": ...}``) replaced by funnelcast's JSON refusal, the ``Allow`` header kept."""
    held: list[Message] = []

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (404, 405):
            held.append(message)
            return
        if held and message["type"] == "http.response.body":
            if message.get("more_body", False):
                return  # the router's own body, dropped; ours goes with its last part
            start = held.pop()
            status = start["status"]
            error = (
                f"no such path: {path}"
                if status == 404
                else f"{path} does not answer {method}; see the API docs at /"
            )
            payload = json.dumps({"error": error}).encode("utf-8")
            allow = [(n, v) for n, v in start.get("headers", []) if n.lower() == b"allow"]
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *allow,
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await send(message)

    return sending


def _media_type(headers: Sequence[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


def _header(headers: Sequence[tuple[bytes, bytes]], wanted: bytes) -> str:
    """A header's value (each one given, joined by commas), trimmed and in lower case; "" when
    not given."""
    values = [value for name, value in headers if name.lower() == wanted]
    return b",".join(values).decode("latin-1").strip().lower()


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
