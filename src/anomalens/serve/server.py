"""uvicorn, run with the connection-level limits of ``ServeSettings`` (what ``anomalens serve`` runs).

uvicorn has a keep-alive timeout, a header-size limit (h11's) and ``limit_concurrency``, but no timeout for
a request head, and ``limit_concurrency`` counts every open connection — so clients that open connections
and send half a request head (or nothing) would hold them forever and, past the limit, make every request,
``/health`` included, a 503. Here:

- :class:`GuardedH11Protocol` gives each connection ``header_timeout_s`` to deliver a complete request head
  (from its opening or from its previous answer): after it, 408 if part of a head arrived, and the
  connection is closed; a head over 16 KB is h11's 400;
- when ``max_connections`` are open, a new connection closes the oldest one still waiting for a request head
  (half-open or idle keep-alive) instead of being refused; only when every connection is busy with a request
  does a new request get uvicorn's 503;
- on SIGTERM / Ctrl+C the server stops accepting, marks the application as draining (new requests: 503),
  gives requests in flight ``shutdown_timeout_s`` to finish, then answers those still running with a 503
  (guard.py) — no traceback, no 500;
- the listening socket is bound here, so a port in use or an address that is not this machine's is one line.

Body and answer timeouts, per-client and global request limits are the application's own (guard.py): they
hold under any ASGI server.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

from anomalens.errors import ConfigError
from anomalens.serve.settings import ServeSettings

MAX_HEADER_BYTES = 16 * 1024  # h11's incomplete-event limit: a request line + headers larger → 400

log = logging.getLogger("anomalens.serve")


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"detail": f"the request head (request line and headers) did not arrive within {seconds:g} s"}
                      ).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def protocol_class(settings: ServeSettings) -> type:
    """An h11 protocol for uvicorn with the header timeout and the connection table of ``settings``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    header_timeout = float(settings.header_timeout_s)
    max_connections = int(settings.max_connections)

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol plus a deadline for each request head and eviction of waiting connections."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self._head_timer: Any = None
            self._waiting_since: float | None = None
            self._partial = False
            super().connection_made(transport)
            self._expect_head()
            if len(self.connections) > max_connections:
                self._make_room()

        # -- the request-head deadline -----------------------------------------------------------------
        def _expect_head(self) -> None:
            self._stop_head_timer()
            self._waiting_since = self.loop.time()
            self._partial = False
            self._head_timer = self.loop.call_later(header_timeout, self._head_overdue)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._waiting_since = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._partial:
                self.transport.write(_timeout_response(header_timeout))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._waiting_since is not None:
                self._partial = True
            super().data_received(data)
            if self._waiting_since is not None and self.conn.their_state is not h11.IDLE:
                self._stop_head_timer()  # a complete head: the body has its own deadline (guard.py)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._expect_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        # -- a full connection table ----------------------------------------------------------------------
        def _make_room(self) -> None:
            """Close the connection that has waited longest for a request head (not this one)."""
            oldest, since = None, None
            for other in list(self.connections):
                waiting = getattr(other, "_waiting_since", None)
                if other is self or waiting is None or other.transport.is_closing():
                    continue
                if since is None or waiting < since:
                    oldest, since = other, waiting
            if oldest is not None:
                oldest._stop_head_timer()
                oldest.transport.close()

    return GuardedH11Protocol


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, or ConfigError with one line (port in use, no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, settings: ServeSettings, *, log_level: str = "info", access_log: bool = True) -> Any:
    """A ``uvicorn.Server`` for ``app`` (from ``create_app``) with the limits of ``settings``; run it with
    ``server.run(sockets=[bind_socket(host, port)])`` (``run_server`` does), or ``await server.serve(...)``."""
    import uvicorn

    settings = settings.validate()
    service = getattr(getattr(app, "state", None), "service", None)

    class DrainingServer(uvicorn.Server):
        """uvicorn's server; a graceful shutdown first tells the application to refuse new requests."""

        async def shutdown(self, sockets: Any = None) -> None:
            if service is not None:
                service.begin_drain(settings.shutdown_timeout_s)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, http=protocol_class(settings), ws="none", lifespan="on",
        limit_concurrency=settings.max_connections + 1,  # uvicorn counts the asking connection too
        timeout_keep_alive=settings.keep_alive_s, timeout_graceful_shutdown=settings.shutdown_timeout_s,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES, log_level=log_level, access_log=access_log,
        server_header=False,
    )
    return DrainingServer(config)


def run_server(app: Any, settings: ServeSettings, *, log_level: str = "info", access_log: bool = True) -> None:
    """Serve ``app`` on ``settings.host``:``settings.port`` until SIGINT / SIGTERM (graceful, see the module)."""
    settings = settings.validate()
    sock = bind_socket(settings.host, settings.port)
    try:
        make_server(app, settings, log_level=log_level, access_log=access_log).run(sockets=[sock])
    finally:
        sock.close()
