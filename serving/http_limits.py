"""A cap on what a request sends besides its body: its request line and headers, and a chunked
body's framing and trailers.

BentoML serves through uvicorn with httptools' parser, and neither caps these: httptools joins
a header's value (a trailer's too) chunk by chunk, so it grows in quadratic time; a 64 MB
header sent without any key held a worker for 5 s (its other requests and ``/readyz``
waited) and 100 MB for 12 s, and a 64 MB trailer after an empty chunked body 3 s.
``FUNNELCAST_MAX_BODY_MB`` limits bodies only. Here a request whose bytes other than its body
go on past ``MAX_HEAD_BYTES`` (plus an eighth of its body, the framing a chunked body of
chunks of 64 bytes or more needs) is answered with a 431 and its connection closed (uvicorn's
other parser, h11, stops at 16 KiB on its own).

Nor does either bound the time a head takes to arrive: uvicorn's keep-alive timer starts only
after a first answer, and any byte received stops it, so a client sending a header line every
2 s held its connection for as long as it liked, and 500 such connections held 500 of a
worker's file descriptors (review). Here a request's line and headers must arrive whole within
a deadline (the service's request timeout) of the connection opening or of the answer before
it: a head still incomplete then is answered with a 408 and its connection closed, and a
connection that has sent nothing by then is closed. A request answered before its body was all
read (a 413, a 504) has its body read on, the deadline running from each piece of it.
"""

from __future__ import annotations

import json
from typing import Any

# as nginx's largest default header buffers (4 x 8 KiB) twice over: far above any real client's
MAX_HEAD_BYTES = 64 * 1024
# a head's deadline unless told (the service passes its request timeout, FUNNELCAST_TIMEOUT_S)
HEAD_TIMEOUT_S = 10.0


def head_too_large(limit: int = MAX_HEAD_BYTES) -> bytes:
    """The whole 431 answer, JSON like every refusal of the service."""
    return _closing_answer(
        b"431 Request Header Fields Too Large",
        {
            "error": f"request line and headers (or a chunked body's framing and trailers) "
            f"are larger than the limit of {limit} bytes; send shorter headers",
            "limit_bytes": limit,
        },
    )


def head_too_slow(seconds: float) -> bytes:
    """The whole 408 answer to a head that did not arrive in time."""
    return _closing_answer(
        b"408 Request Timeout",
        {
            "error": f"request line and headers did not arrive within {seconds:g} seconds; "
            "send a request's head at once",
            "timeout_s": seconds,
        },
    )


def _closing_answer(status: bytes, refusal: dict[str, object]) -> bytes:
    """A whole HTTP answer with a JSON body, after which the connection is closed."""
    body = json.dumps(refusal).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


def limit_request_heads(
    limit: int = MAX_HEAD_BYTES, *, head_timeout_s: float = HEAD_TIMEOUT_S
) -> None:
    """Make uvicorn's httptools protocol refuse a request whose bytes other than its body pass
    ``limit`` (plus an eighth of its body), or whose head is not whole ``head_timeout_s``
    after the connection opened or the answer before it was sent (a 408; a connection that
    sent nothing is closed). Called when the service module is imported (a worker imports it
    before uvicorn starts); the class's methods are wrapped, so whichever name uvicorn reaches
    the class by, the caps hold.

    The bytes are counted from the first read after the one a request begins in: that read
    may also hold the end of an earlier request's body (requests sent back to back), which
    is not this one's. So a head that arrives within one read of the socket (up to 256 KiB)
    is parsed at once, in linear time, and is not refused; one that keeps coming is."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11, which caps heads itself
        return
    if getattr(HttpToolsProtocol, "funnelcast_head_limit", None) is not None:
        return
    made = HttpToolsProtocol.connection_made
    lost = HttpToolsProtocol.connection_lost
    begin = HttpToolsProtocol.on_message_begin
    headers = HttpToolsProtocol.on_headers_complete
    body = HttpToolsProtocol.on_body
    complete = HttpToolsProtocol.on_message_complete
    answered = HttpToolsProtocol.on_response_complete
    received = HttpToolsProtocol.data_received
    answer = head_too_large(limit)
    too_slow = head_too_slow(head_timeout_s)

    def overdue(self: Any) -> None:
        self.funnelcast_deadline = None
        if self.transport.is_closing():
            return
        if self.funnelcast_in_head and not self.funnelcast_draining:
            # part of a head came: say why the connection ends
            self.funnelcast_open = self.funnelcast_in_head = False
            self.transport.write(too_slow)
        self.transport.close()

    def await_head(self: Any) -> None:
        """The next request's head is due within the deadline from now."""
        stop_waiting(self)
        if not self.transport.is_closing():
            self.funnelcast_deadline = self.loop.call_later(head_timeout_s, overdue, self)

    def stop_waiting(self: Any) -> None:
        if self.funnelcast_deadline is not None:
            self.funnelcast_deadline.cancel()
            self.funnelcast_deadline = None

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        await_head(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        stop_waiting(self)
        lost(self, exc)

    def on_headers_complete(self: Any) -> None:
        self.funnelcast_in_head = False
        stop_waiting(self)  # the request is the app's now, under its own timeout
        headers(self)

    def on_response_complete(self: Any) -> None:
        # a request whose head came whole while this one was answered is served next, at
        # once; otherwise the next head is awaited. An answer sent before its request's body
        # was all read (a 413, a 504) leaves the body to arrive first: the client reads the
        # answer once it has sent it (review: cut mid-upload, the client saw a broken pipe),
        # so the deadline runs from each piece of it instead, as nginx's client_body_timeout
        queued = bool(self.pipeline)
        answered(self)
        if not queued:
            self.funnelcast_draining = self.funnelcast_open
            await_head(self)

    def on_message_begin(self: Any) -> None:
        self.funnelcast_open = self.funnelcast_in_head = True
        self.funnelcast_began = True
        self.funnelcast_other = 0  # bytes that are not the body, from the next read on
        self.funnelcast_body = 0
        begin(self)

    def on_body(self: Any, chunk: bytes) -> None:
        self.funnelcast_read_body += len(chunk)
        self.funnelcast_body += len(chunk)
        if self.funnelcast_draining:
            await_head(self)  # the body of an answered request still comes: not idle
        body(self, chunk)

    def on_message_complete(self: Any) -> None:
        self.funnelcast_open = False
        complete(self)
        if self.funnelcast_draining:  # answered before its body ended: the next head is due
            self.funnelcast_draining = False
            await_head(self)

    def data_received(self: Any, data: bytes) -> None:
        self.funnelcast_began = False
        self.funnelcast_read_body = 0
        received(self, data)
        if not self.funnelcast_open or self.funnelcast_began:
            return
        self.funnelcast_other += len(data) - self.funnelcast_read_body
        allowed = limit + self.funnelcast_body // 8
        if self.funnelcast_other > allowed and not self.transport.is_closing():
            self.funnelcast_open = False
            self.transport.write(answer)
            self.transport.close()

    protocol: Any = HttpToolsProtocol  # the class gains attributes it does not declare
    protocol.funnelcast_open = False  # no request being read
    protocol.funnelcast_began = False
    protocol.funnelcast_in_head = False  # a request's line and headers are being read
    protocol.funnelcast_draining = False  # an answered request's body is still being read
    protocol.funnelcast_read_body = 0
    protocol.funnelcast_deadline = None  # the timer of the head awaited, if any
    protocol.connection_made = connection_made
    protocol.connection_lost = connection_lost
    protocol.on_message_begin = on_message_begin
    protocol.on_headers_complete = on_headers_complete
    protocol.on_body = on_body
    protocol.on_message_complete = on_message_complete
    protocol.on_response_complete = on_response_complete
    protocol.data_received = data_received
    protocol.funnelcast_head_limit = limit
    protocol.funnelcast_head_timeout_s = head_timeout_s
