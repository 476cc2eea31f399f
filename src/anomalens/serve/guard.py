"""What every HTTP request passes before the application sees it (an ASGI wrapper, outermost).

In this order, each refusal one line of JSON (``{"detail": ...}``) with ``Connection: close``, before a byte of
the body is read:

1. the service is shutting down → 503;
2. the ``Host`` header is not a name of this service (DNS rebinding; :class:`settings.HostPolicy`) → 400;
3. a POST (any method but GET / HEAD / OPTIONS) from another site — an ``Origin`` that is not the service's
   own, or a browser's ``Sec-Fetch-Site`` / ``Referer`` saying so (a "simple" cross-origin form or text POST
   needs no CORS preflight, so the browser would send it) → 403;
4. the bearer token, when the service has one (``/predict``, ``/predict/batch``, ``/model``) → 401;
5. for the scoring endpoints: a declared ``Content-Length`` over the upload limit → 413; the client's requests
   in flight at ``max_per_client`` → 429; all requests in flight at ``max_in_flight`` → 503 (both with
   ``Retry-After``).

So a client without the token, or one whose uploads are too many, never holds a slot, and ``/health`` and the
pages are never counted against one. A request that holds a slot must send its body within ``body_timeout_s``
of its head (408 after, connection closed: a client announcing more bytes than it sends holds nothing for
long) and read its answer within as long. At the end of a graceful shutdown a request still running is
answered 503 instead of being dropped with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from anomalens.serve.settings import HostPolicy, split_host
from anomalens.serve.uploads import UploadError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SCORING_PATHS = frozenset({"/predict", "/predict/batch"})
TOKEN_PATHS = frozenset({"/predict", "/predict/batch", "/model"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

log = logging.getLogger("anomalens.serve")


class RequestTimeout(UploadError):
    """The body did not arrive in time (408; the connection is closed)."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message, close=True)


def _headers(scope: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in scope.get("headers", ()):
        out.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _origin_key(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS:
        return None
    host = split_host(parts.netloc)
    if host is None:
        return None
    return host[0], host[1] or _DEFAULT_PORTS[parts.scheme]


def cross_origin(headers: dict[str, list[str]], hosts: HostPolicy) -> str | None:
    """Why this (state-changing) request comes from another site's page, or None when it does not.

    A browser sends ``Origin`` with every cross-origin POST (and with same-origin ones); requests without
    it and without ``Sec-Fetch-Site`` / ``Referer`` come from programs (curl, a line's PLC gateway), which
    a web page cannot impersonate."""
    host_header = (headers.get("host") or [None])[0]
    own = split_host(host_header) if host_header else None

    def same(url: str) -> bool:
        key = _origin_key(url)
        if key is None:
            return False
        if own is not None:
            scheme = url.split(":", 1)[0].lower()
            if (own[0], own[1] or _DEFAULT_PORTS.get(scheme)) == key:
                return True
        return hosts.explicitly_allowed(key[0])

    origins = headers.get("origin")
    if origins:
        if len(origins) == 1 and same(origins[0]):
            return None
        return f"Origin {', '.join(origins)[:200]}"
    site = (headers.get("sec-fetch-site") or [None])[0]
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {site[:40]}"
    referer = (headers.get("referer") or [None])[0]
    if referer and not same(referer):
        return f"Referer {referer[:200]}"
    return None


def _token_ok(headers: dict[str, list[str]], token: str) -> bool:
    values = headers.get("authorization") or []
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("latin-1"), token.encode("ascii"))


async def send_json(send: Callable[[dict], Awaitable[None]], status: int, message: str,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """One-line JSON refusal, connection closed after it (the body, if any, is never read)."""
    body = json.dumps({"detail": " ".join(message.split())}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Guard:
    """The ASGI wrapper around the FastAPI app (see the module docstring); ``service`` is app.py's ``_Service``."""

    def __init__(self, app: Any, service: Any) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        settings = service.settings
        headers = _headers(scope)
        method, path = scope["method"], scope["path"]

        if service.draining:
            service.counts["busy"] += 1
            await send_json(send, 503, "the service is shutting down; send the request again to its replacement",
                            [(b"retry-after", b"1")])
            return
        hosts = headers.get("host") or []
        if len(hosts) > 1 or (hosts and not service.hosts.allows(hosts[0])):
            service.counts["rejected"] += 1
            shown = ", ".join(hosts)[:200]
            await send_json(send, 400, f"Host header '{shown}' is not a name of this service (a DNS rebinding page?); "
                                       "the operator can allow it with --allowed-host (allowed_hosts)")
            return
        if method not in SAFE_METHODS:
            why = cross_origin(headers, service.hosts)
            if why is not None:
                service.counts["rejected"] += 1
                await send_json(send, 403, f"cross-origin request refused ({why}): only this service's own page, "
                                           "or a program that is not a browser, may send it")
                return
        if service.token is not None and path in TOKEN_PATHS and not _token_ok(headers, service.token):
            service.counts["rejected"] += 1
            await send_json(send, 401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                            [(b"www-authenticate", b"Bearer")])
            return
        if method in SAFE_METHODS or path not in SCORING_PATHS:
            await self.app(scope, receive, send)
            return

        declared = (headers.get("content-length") or [None])[0]
        if declared is not None and declared.strip().isdigit() and int(declared) > settings.max_upload_bytes:
            service.counts["rejected"] += 1
            await send_json(send, 413, f"upload of {int(declared) / 1e6:.3g} MB exceeds the limit of "
                                       f"{settings.max_upload_bytes / 1e6:.3g} MB")
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        if service.per_client.get(client, 0) >= settings.max_per_client:
            service.counts["busy"] += 1
            await send_json(send, 429, f"too many requests in flight from {client} (at most "
                                       f"{settings.max_per_client}); send the next when one is answered",
                            [(b"retry-after", b"1")])
            return
        if service.in_flight >= settings.max_in_flight:
            service.counts["busy"] += 1
            await send_json(send, 503, f"the service is busy ({service.in_flight} requests in flight, at most "
                                       f"{settings.max_in_flight}); send it again shortly", [(b"retry-after", b"1")])
            return

        service.in_flight += 1
        service.per_client[client] = service.per_client.get(client, 0) + 1
        try:
            await self._run(scope, receive, send, client)
        finally:
            service.in_flight -= 1
            left = service.per_client.get(client, 1) - 1
            if left > 0:
                service.per_client[client] = left
            else:
                service.per_client.pop(client, None)

    async def _run(self, scope: dict, receive: Callable, send: Callable, client: str) -> None:
        service = self.service
        limit = service.settings.body_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        state = {"started": False, "stalled": False}

        async def timed_receive() -> dict:
            until = deadline if service.drain_by is None else min(deadline, service.drain_by)
            if until > loop.time():
                wait = asyncio.timeout_at(until)
                service.body_waits.add(wait)  # a graceful shutdown may bring its deadline forward
                try:
                    async with wait:
                        return await receive()
                except TimeoutError:
                    pass
                finally:
                    service.body_waits.discard(wait)
            if service.drain_by is not None and loop.time() >= service.drain_by:
                raise UploadError(503, "the service is shutting down and this request's body was not complete; "
                                       "send it again to its replacement", close=True, headers={"Retry-After": "1"})
            service.counts["timeouts"] += 1
            raise RequestTimeout(f"the request body did not arrive within {limit:g} s (its Content-Length "
                                 "announced more than was sent, or the link is too slow for --body-timeout)")

        async def timed_send(message: dict) -> None:
            if state["stalled"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            try:
                async with asyncio.timeout(limit):
                    await send(message)
            except TimeoutError:
                # the client does not read its answer: stop writing; the server closes the connection
                state["stalled"] = True
                service.counts["timeouts"] += 1
                log.warning("%s did not read its answer within %g s; connection dropped", client, limit)

        try:
            await self.app(scope, timed_receive, timed_send)
        except asyncio.CancelledError:
            if not service.draining:
                raise
            # uvicorn cancels what is still running when the graceful shutdown's time is up: a clean 503
            if not state["started"]:
                with contextlib.suppress(Exception):
                    await send_json(send, 503, "the service shut down before this request was answered; send it "
                                               "again to its replacement", [(b"retry-after", b"1")])
