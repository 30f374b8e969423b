"""uvicorn's HTTP/1.1 protocol (httptools) with the bounds it lacks, applied before any request reaches the app:

- header bytes per request (`max_header_kib`): beyond them 431, and the connection is closed. Without it uvicorn
  reads and parses a 64 MB header whole on the event loop, holding every other request for seconds;
- the time a request's headers may take to arrive (`header_timeout_s`), counted from the connection's start or
  the end of its previous response: a connection that sends nothing, or its headers a byte at a time (slowloris),
  is closed then (408 when part of a request had arrived).

An idle keep-alive connection is still closed by uvicorn after `keep_alive_timeout_s`.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GuardedHttpProtocol(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes, self._in_headers = 0, True
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # still inside the headers after this chunk (a chunk that completed them may also carry the body)
        if self._in_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                         f"the request's headers are over the server's limit of {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers, self._header_bytes = False, 0
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._in_headers = True
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._in_headers:
            return
        if self._header_bytes == 0:  # nothing sent: just an idle connection
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", "header_timeout",
                     f"the request's headers did not arrive within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, phrase: str, code: str, detail: str) -> None:
        body = json.dumps({"error": code, "detail": detail}).encode()
        head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()
        self._cancel_header_timer()


def guarded_protocol(max_header_bytes: int, header_timeout_s: float) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn takes as `http=`, with this server's limits."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s})
