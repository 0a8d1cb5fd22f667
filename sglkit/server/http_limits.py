"""HTTP transport limits (edge of the server, before any route): header size and slow clients.

Two pieces, both installed by ``http_server.launch_server``:

- ``limited_h11_protocol(read_timeout)``: uvicorn's h11 protocol with read deadlines. The request line and headers
  must be complete within ``read_timeout`` seconds of their first byte (or of the connection's opening), however
  slowly they trickle in (slowloris), and while a request body is being received no gap between two chunks may
  exceed ``read_timeout``. A client over a deadline is disconnected: before its request was parsed it gets a JSON
  408 first; mid-body the route's body read ends as a client disconnect. A header section h11 is still
  buffering past ``MAX_HEADER_BYTES`` gets a JSON 431 (uvicorn's own answer would be a text 400).
- ``HeaderSizeLimitMiddleware``: a request whose request line and headers (complete, parsed) exceed
  ``MAX_HEADER_BYTES`` gets a JSON 431 "Request Header Fields Too Large" before any route runs (h11 only checks
  the size of a header section that is still incomplete, so one that arrives whole in a read passes it).

Idle keep-alive connections are closed by uvicorn's ``timeout_keep_alive``; these deadlines cover the rest.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sglkit.server.errors import error_body

logger = logging.getLogger("sglkit.server")

MAX_HEADER_BYTES = 64 << 10
"""Most bytes of request line + headers a request may carry (nginx: 8-32 KiB, Node: 16 KiB); more is a 431."""


def error_response_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response with the project's JSON error body and ``Connection: close``."""
    body = json.dumps(error_body(message, "invalid_request_error", code=status)).encode()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def header_too_large_message(size: int | None = None) -> str:
    """The 431 message (with the size when known)."""
    seen = f" ({size} bytes)" if size is not None else ""
    return f"Request Header Fields Too Large: the request line and headers{seen} exceed {MAX_HEADER_BYTES} bytes."


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a body gap timeout and a JSON 431 (see the module doc).

    ``read_timeout`` is set by ``limited_h11_protocol``; the timers are re-armed after every read.
    """

    read_timeout: float = 30.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read_timer: asyncio.TimerHandle | None = None
        self.read_phase: str | None = None  # "headers" or "body" while a deadline runs
        self.request_seen = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        """Start the header deadline: the first request must arrive within ``read_timeout``."""
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline timers, then uvicorn's handling."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does, then update the deadline from h11's state."""
        super().data_received(data)
        self._update_deadline()

    def on_response_complete(self) -> None:
        """uvicorn's keep-alive handling, then the deadline for whatever the next request has sent."""
        super().on_response_complete()
        self._update_deadline()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to unparsable input, with a JSON 431 when h11 stopped on an oversized header."""
        pending = len(self.conn.trailing_data[0])
        if pending <= (self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES):
            super().send_400_response(msg)
            return
        self._disarm()
        logger.info(f"{self._peer()}431: request headers over {MAX_HEADER_BYTES} bytes; connection closed.")
        self.transport.write(error_response_bytes(431, header_too_large_message()))
        self.transport.close()

    # -- deadlines --------------------------------------------------------------------------------------------
    def _update_deadline(self) -> None:
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self.request_seen = True
            self._arm("body")  # every chunk restarts the gap
        elif state is h11.IDLE and (not self.request_seen or self.conn.trailing_data[0]):
            if self.read_phase != "headers":  # the deadline runs from the first byte: never restarted
                self._arm("headers")
        else:  # request complete, or an idle keep-alive connection (uvicorn's timeout_keep_alive applies)
            self.request_seen = self.request_seen or state is not h11.IDLE
            self._disarm()

    def _arm(self, phase: str) -> None:
        self._disarm()
        self.read_phase = phase
        self.read_timer = self.loop.call_later(self.read_timeout, self._on_read_timeout)

    def _disarm(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
        self.read_timer = None
        self.read_phase = None

    def _on_read_timeout(self) -> None:
        phase, self.read_timer, self.read_phase = self.read_phase, None, None
        if self.transport.is_closing():
            return
        if phase == "body" and self.flow.read_paused:  # the server stopped reading, not the client
            self._arm("body")
            return
        if phase == "headers":
            what = "request headers not complete"
            if self.conn.trailing_data[0]:  # a partial request: tell it why (an idle socket just closes)
                self.transport.write(error_response_bytes(408, f"Request Timeout: {what} within the limit."))
        else:
            what = "no request body data"
        logger.info(f"{self._peer()}{what} within {self.read_timeout:g} s (--http-read-timeout); closed.")
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]} - " if self.client else ""


def limited_h11_protocol(read_timeout: float) -> type[LimitedH11Protocol]:
    """The protocol class to pass as uvicorn's ``http`` (uvicorn builds one instance per connection)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"read_timeout": float(read_timeout)})


class HeaderSizeLimitMiddleware:
    """Pure ASGI: answer 431 (JSON, ``Connection: close``) to requests whose line + headers exceed the limit."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        """Measure the parsed request line and headers; pass the request on when they fit."""
        if scope["type"] == "http":
            size = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope["query_string"]) + 12
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > MAX_HEADER_BYTES:
                body = json.dumps(
                    error_body(header_too_large_message(size), "invalid_request_error", code=431)
                )
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": 431, "headers": headers})
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)
