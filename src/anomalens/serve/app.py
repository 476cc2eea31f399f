"""The FastAPI application: ``create_app(model)`` → an ASGI app that ``uvicorn`` (``anomalens serve``) runs.

Endpoints (``/docs`` lists them with their schemas, rendered offline from ``/openapi.json``):

- ``POST /predict`` — one image, as the raw request body (any Content-Type but multipart; ``?name=`` names it)
  or as a multipart/form-data file field; ``?heatmap=1`` adds the overlay as a base64 PNG;
- ``POST /predict/batch`` — several images as multipart file fields (any field name); one result per image,
  in order; an image that cannot be decoded gets ``{"image", "error"}`` in its place and the others are scored;
- ``GET /health`` — liveness, uptime and the micro-batcher's statistics (no token needed);
- ``GET /model`` — the detector, its parameters, the decision rule, the input size, versions, the limits;
- ``GET /history`` — the stored verdicts, newest first, paged (``?limit=&before=``); ``GET /history/{id}/image``
  — a kept image; ``POST /feedback/{id}`` with ``{"judgement": "false_alarm" | "confirmed_defect" |
  "missed_defect" | null}`` — the operator's judgement (400 when it does not fit the verdict, 404 for an unknown
  id). Only with a state folder (``state_dir``; ``anomalens serve`` has one by default): ``anomalens.feedback``;
- ``GET /metrics`` — Prometheus text format (requests, latency, verdicts, queue, drift: ``anomalens.monitoring``);
- ``GET /`` — the operator page (``static/``), ``GET /docs`` — the API reference. Both are files of this
  package held in memory and served by exact name: no request path is ever looked up on the file system.

Safety (the limits and their defaults: ``settings.py``; the order they are checked in: ``guard.py``): a
``Host`` that is not a name of this service → 400 (DNS rebinding); a POST from another site's page → 403
(CSRF); with ``token`` every endpoint but ``/``, ``/static/*``, ``/docs``, ``/openapi.json`` and ``/health``
needs ``Authorization: Bearer <token>`` (401 otherwise); too many requests in flight → 429 (one client) or
503 (all); bodies over ``max_upload_bytes`` → 413; a body not complete within ``body_timeout_s`` → 408;
anything that is not a decodable image of at most ``max_pixels`` pixels → 400 with one line; more than
``max_request_pixels`` decoded pixels in one request (from the headers, before decoding) → 413; an invalid
query parameter → 400 (never FastAPI's 422 list); a failure inside the model → 500 with one line (never a
traceback). FastAPI's own Swagger UI and ReDoc pages load their scripts from a CDN, so they are switched off;
``/docs`` is this package's own page.

This module builds the application (settings, the service, the guard, the token check, the one-line
errors); the endpoints are registered by ``inspection_routes`` (``/predict``, ``/predict/batch``, ``/health``,
``/model``), ``history_routes`` (``/history``, ``/feedback``, ``/metrics``) and ``pages`` (``/``, ``/docs``).
"""

import asyncio
import dataclasses
import hmac
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from anomalens.errors import ConfigError
from anomalens.serve.guard import Guard
from anomalens.serve.history_routes import add_history_routes
from anomalens.serve.inference import ServedModel
from anomalens.serve.inspection_routes import add_inspection_routes
from anomalens.serve.pages import add_page_routes, static_files
from anomalens.serve.request_metrics import RequestMetrics
from anomalens.serve.service import Service
from anomalens.serve.settings import ServeSettings
from anomalens.serve.uploads import ClientGone, UploadError

_DEFAULTS = ServeSettings()
DEFAULT_MAX_UPLOAD_BYTES = _DEFAULTS.max_upload_bytes
DEFAULT_MAX_PIXELS = _DEFAULTS.max_pixels
DEFAULT_MAX_WAIT_MS = _DEFAULTS.max_wait_ms
DEFAULT_MAX_FILES = _DEFAULTS.max_files
log = logging.getLogger("anomalens.serve")
EXTRA = "pip install 'anomalens[serve]'"


def _require_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise ConfigError(f"the service needs FastAPI and uvicorn: {EXTRA}") from None


def create_app(
    model: Any,
    token: str | None = None,
    max_upload_bytes: int | None = None,
    max_batch: int | None = None,
    max_wait_ms: float | None = None,
    max_pixels: int | None = None,
    max_files: int | None = None,
    decode_threads: int | None = None,
    *,
    settings: ServeSettings | None = None,
    drift_reference: Any = None,
    watch: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """The service for ``model``: a fitted ``Detector``, an ``ExportedDetector`` or a ``ServedModel``.

    ``settings``: a :class:`ServeSettings` (default: its defaults); the keywords override its fields (any
    field of it by name: ``host``, ``allowed_hosts``, ``max_request_pixels``, ``max_per_client``,
    ``body_timeout_s``, ...), and the result is validated (ConfigError with one line). ``token``: when set,
    requests need ``Authorization: Bearer <token>``. ``max_upload_bytes``: largest body (413 beyond).
    ``max_batch`` / ``max_wait_ms``: the micro-batcher's largest batch (default: the model's own
    ``batch_size``, the batch ``predict`` runs) and longest wait for a batch to fill. ``max_pixels``: largest
    width × height decoded (400 beyond: decompression bombs). ``max_files``: images per batch request.
    ``decode_threads``: uploads decoded at once (default: the CPU cores, 2 to 8): decoding is where a burst
    of large images costs CPU and memory, so it is bounded. ``host`` (default 127.0.0.1) is the address the
    server binds: the Host header must name it (or localhost, or ``allowed_hosts``). ``state_dir``: the folder
    of the history and the operator's feedback (None, the default here: no history). ``drift_reference``: the
    normal scores the drift test compares with (default: those the run's decision rule records), or a
    ready ``anomalens.monitoring.DriftMonitor`` (its own window and level). ``watch``:
    ``{"source": SOURCE, **Watcher options}`` — also watch a hot folder / video / stream / camera in the
    background while the service runs (``anomalens.line.in_service``).
    """
    _require_fastapi()
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import HTTPException, RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    given = {"token": token, "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_pixels": max_pixels,
             "max_files": max_files, "decode_threads": decode_threads}
    changes = {key: value for key, value in given.items() if value is not None}
    if max_upload_bytes is not None:
        if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, (int, float)):
            raise ConfigError(f"max_upload_bytes must be a number of bytes, got {max_upload_bytes!r}")
        changes["max_upload_mb"] = max_upload_bytes / 1e6
    fields = {f.name for f in dataclasses.fields(ServeSettings)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown service setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    changes.update(options)
    if changes.get("token") == "":
        changes["token"] = None
    settings = dataclasses.replace(settings or ServeSettings(), **changes).validate()

    served = model if isinstance(model, ServedModel) else ServedModel(model)
    served.warm_up()
    batch = settings.max_batch
    if batch is None:
        batch = served.model.batch_size
        settings = dataclasses.replace(settings, max_batch=batch).validate()
    threads = settings.decode_threads or max(2, min(8, os.cpu_count() or 2))
    service = Service(served, settings, settings.max_batch, threads, drift_reference=drift_reference)
    static = static_files()
    watcher = None
    if watch is not None:
        from anomalens.line.in_service import service_watcher

        watcher = service_watcher(service, **watch)  # a bad source or sink: one line, before serving

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if watcher is not None:
            watcher.start()
        yield
        if watcher is not None:  # the image in hand is finished and the sinks flushed while the batcher still runs
            watcher.stop()
            await asyncio.to_thread(watcher.join)
        await asyncio.to_thread(service.close)

    class GuardedFastAPI(FastAPI):
        """FastAPI with guard.py's checks outermost: before its own middleware and error handling."""

        def build_middleware_stack(self) -> Any:
            return RequestMetrics(Guard(super().build_middleware_stack(), service), service.metrics, self.router.routes)

    app = GuardedFastAPI(
        title="anomalens inspection service",
        version=served.describe()["versions"]["anomalens"],
        description=f"Visual anomaly detection with a fitted **{served.name}** model ({served.runtime}). "
                    "Send images, get a verdict, a score against the threshold, defect regions and a heatmap.",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan,
    )
    app.state.service = service
    app.state.watcher = watcher
    app.state.metrics = service.metrics
    bearer = HTTPBearer(auto_error=False, description="only when the service was started with a token")

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if service.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), service.token.encode()):
            service.counts["rejected"] += 1
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> Response:
        if isinstance(exc, ClientGone):  # nobody to answer: counted, one line in the log at info level
            service.counts["disconnected"] += 1
            client = request.client.host if request.client else "a client"
            log.info("%s disconnected before its request body was complete", client)
            return Response(status_code=exc.status, headers=exc.headers)
        if exc.status in (429, 503):
            service.counts["busy"] += 1
        elif exc.status != 408:  # timeouts are counted where they happen (guard.py)
            service.counts["rejected"] += 1
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 list of errors → the service's one-line 400."""
        service.counts["rejected"] += 1
        errors = list(exc.errors())
        first = errors[0] if errors else {}
        location = [str(part) for part in first.get("loc", ())]
        if len(location) >= 2:
            where = f"{location[0]} parameter '{'.'.join(location[1:])}'"
        else:
            where = "request"
        message = " ".join(str(first.get("msg", "invalid value")).split())
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return JSONResponse({"detail": f"invalid {where}: {message}{more}"[:500]}, status_code=400)

    # the endpoints, in the order /docs lists them
    add_inspection_routes(app, service, authorize)
    add_history_routes(app, service, authorize)
    add_page_routes(app, static)
    return app
