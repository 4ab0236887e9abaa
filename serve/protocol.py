"""uvicorn settings for ``pathvlm serve``, with a request-header deadline uvicorn lacks.

uvicorn's h11 protocol closes idle keep-alive connections (``timeout_keep_alive``) but stops that
clock at a request's first byte and has no limit on how long the headers may take, so a client
sending one header byte every few seconds ("slowloris") holds a connection forever.
:class:`HeaderTimeoutH11Protocol` gives every request ``header_timeout_s`` from its connection (or
the end of the previous response) to deliver its complete headers, then answers 408 and closes,
as nginx's ``client_header_timeout`` and Apache's ``mod_reqtimeout`` do. Body pauses are limited in
:mod:`serve.middleware`; the number of open connections by uvicorn's ``limit_concurrency`` (503).
"""
from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: 40\r\n\r\nrequest headers not received in time.\r\n\r\n")


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s = 10.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer = None

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.logger.debug("closing a connection whose request headers took over %.0f s", self.header_timeout_s)
        self.transport.write(_408)
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers are complete
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request on this connection gets its own deadline


def protocol_class(header_timeout_s: float) -> type:
    """The protocol class with this deadline (uvicorn builds one instance per connection)."""
    return type("PathVLMH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(header_timeout_s)})


def uvicorn_config(app, host: str, port: int, limits, log_level: str = "warning", graceful_s: float = 5.0):
    """The uvicorn ``Config`` of ``pathvlm serve``: header deadline, connection cap, keep-alive."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_s,
        http=protocol_class(limits.header_timeout_s), limit_concurrency=limits.max_connections,
        timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,  # headers over 16 kB: 400
    )
