"""A cap on the size of a request's head (its request line and headers).

BentoML serves through uvicorn with httptools' parser, and neither caps a request's head:
httptools joins a header's value chunk by chunk, so a head grows in quadratic time; a 64 MB
header sent without any key held a worker for 5 s (its other requests and ``/readyz``
waited) and 100 MB for 12 s. ``FUNNELCAST_MAX_BODY_MB`` limits bodies only. Here a head that
goes on past ``MAX_HEAD_BYTES`` is answered with a 431 and its connection closed (uvicorn's
other parser, h11, stops at 16 KiB on its own).
"""

from __future__ import annotations

import json
from typing import Any

# as nginx's largest default header buffers (4 x 8 KiB) twice over: far above any real client's
MAX_HEAD_BYTES = 64 * 1024


def head_too_large(limit: int = MAX_HEAD_BYTES) -> bytes:
    """The whole 431 answer, JSON like every refusal of the service."""
    body = json.dumps(
        {
            "error": f"request line and headers are larger than the limit of {limit} bytes; "
            "send shorter headers",
            "limit_bytes": limit,
        }
    ).encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


def limit_request_heads(limit: int = MAX_HEAD_BYTES) -> None:
    """Make uvicorn's httptools protocol refuse a head longer than ``limit`` bytes. Called
    when the service module is imported (a worker imports it before uvicorn starts); the
    class's methods are wrapped, so whichever name uvicorn reaches the class by, the cap holds.

    A head is counted from the first chunk after the one it began in: that chunk may also hold
    the end of an earlier request's body (requests sent back to back), which is no head. So a
    head is refused at most one socket read (256 KiB) past ``limit``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11, which caps heads itself
        return
    if getattr(HttpToolsProtocol, "funnelcast_head_limit", None) is not None:
        return
    begin = HttpToolsProtocol.on_message_begin
    complete = HttpToolsProtocol.on_headers_complete
    received = HttpToolsProtocol.data_received
    answer = head_too_large(limit)

    def on_message_begin(self: Any) -> None:
        self.funnelcast_head = 0
        self.funnelcast_began = True
        begin(self)

    def on_headers_complete(self: Any) -> None:
        self.funnelcast_head = None
        complete(self)

    def data_received(self: Any, data: bytes) -> None:
        self.funnelcast_began = False
        received(self, data)
        head = self.funnelcast_head
        if head is None or self.funnelcast_began:
            return
        head += len(data)
        self.funnelcast_head = head
        if head > limit and not self.transport.is_closing():
            self.funnelcast_head = None
            self.transport.write(answer)
            self.transport.close()

    protocol: Any = HttpToolsProtocol  # the class gains attributes it does not declare
    protocol.funnelcast_head = None  # no head being read
    protocol.funnelcast_began = False
    protocol.on_message_begin = on_message_begin
    protocol.on_headers_complete = on_headers_complete
    protocol.data_received = data_received
    protocol.funnelcast_head_limit = limit
