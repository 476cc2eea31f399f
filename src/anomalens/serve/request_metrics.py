"""Every request's endpoint, status and time into the service's ``LineMetrics`` (``GET /metrics``).

An ASGI wrapper outside ``guard.py``, so the requests the guard refuses (400 Host, 403 CSRF, 401, 429, 503)
are counted too: for those the route is found by matching the path against the application's routes. The
endpoint label is the route's template (``/feedback/{result_id}``), never the raw path: a scanner trying a
thousand URLs adds one series (``other``), not a thousand.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Sequence

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class RequestMetrics:
    """ASGI middleware: ``metrics.observe_request(route, seconds, status)`` once per HTTP request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Any,
                 routes: Sequence[Any] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # Starlette routes: the template of a request refused before routing

    def endpoint(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            from starlette.routing import Match

            route = next((r for r in self.routes if r.matches(scope)[0] is not Match.NONE), None)
        return getattr(route, "path", None) or "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when the application fails before answering

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe_request(self.endpoint(scope), time.perf_counter() - start, status)
