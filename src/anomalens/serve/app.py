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
"""


import asyncio
import dataclasses
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from anomalens.errors import AnomalensError, ConfigError
from anomalens.feedback.store import MEDIA_TYPES, JudgementError
from anomalens.serve.guard import Guard
from anomalens.serve.inference import ServedModel, elapsed_ms
from anomalens.serve.request_metrics import RequestMetrics
from anomalens.serve.service import Service
from anomalens.serve.settings import ServeSettings
from anomalens.serve.uploads import (
    ClientGone,
    Upload,
    UploadError,
    clean_name,
    parse_multipart,
    read_body,
)

_DEFAULTS = ServeSettings()
DEFAULT_MAX_UPLOAD_BYTES = _DEFAULTS.max_upload_bytes
DEFAULT_MAX_PIXELS = _DEFAULTS.max_pixels
DEFAULT_MAX_WAIT_MS = _DEFAULTS.max_wait_ms
DEFAULT_MAX_FILES = _DEFAULTS.max_files
log = logging.getLogger("anomalens.serve")
EXTRA = "pip install 'anomalens[serve]'"

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

_IMAGE_BODY = {
    "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image"}}}},
    },
    "required": True,
    "description": "One image (PNG, JPEG, BMP, TIFF or WebP): the raw body, or one multipart file field.",
}
_BATCH_BODY = {
    "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "the images (any field name; every file field counts)"}}}}},
    "required": True,
}
_ERRORS = {
    400: {"description": "not an image, corrupt, too many pixels, an empty / malformed body, an invalid query "
                         "parameter or a Host that is not this service's (one-line detail)"},
    401: {"description": "bearer token missing or wrong (only when the service has a token)"},
    403: {"description": "a cross-origin request from another site's page (CSRF)"},
    408: {"description": "the body did not arrive within the body timeout"},
    413: {"description": "the body is larger than the upload limit, or the request's images hold more pixels "
                         "than the per-request budget"},
    429: {"description": "too many requests in flight from this client (Retry-After)"},
    503: {"description": "too many requests in flight, no pixel budget free in time, or shutting down"},
}


def _require_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise ConfigError(f"the service needs FastAPI and uvicorn: {EXTRA}") from None


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The operator page and the docs page, read once from this package: name → (bytes, media type)."""
    files = {}
    folder = resources.files("anomalens.serve") / "static"
    for entry in folder.iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


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
    from fastapi import Depends, FastAPI, Query, Request
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
    static = _static_files()
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

    async def scored(uploads: list[Upload], run: Any) -> Any:
        """``run()`` with the request's decoded pixels held in the budget (413 over it; waits for a share of
        ``max_pixels_in_flight``, 503 when none frees up in time)."""
        pixels = await asyncio.to_thread(service.budget, uploads)
        async with service.pixels.hold(pixels):
            return await model_call(run())

    async def read_uploads(request: Request, max_files: int, name: str | None) -> list[Upload]:
        body = await read_body(dict(request.headers), request.stream(), service.max_upload_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/"):
            uploads = await asyncio.to_thread(parse_multipart, content_type, body, max_files)
            if not uploads:
                raise UploadError(400, "the multipart body has no file field; send the image as a file")
            return uploads
        if not body:
            raise UploadError(400, "empty request body; send an image (raw body or multipart file field)")
        return [Upload(clean_name(name, "image"), body)]

    async def model_call(coro: Any) -> Any:
        """Model / internal failures → 500 with one line (the server log keeps the traceback)."""
        try:
            return await coro
        except (UploadError, HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001 - the client gets one line, the log the traceback
            service.counts["failed"] += 1
            logging.getLogger("anomalens.serve").exception("prediction failed")
            what = "model error" if isinstance(exc, AnomalensError) else f"internal error ({type(exc).__name__})"
            raise HTTPException(500, f"{what}: {' '.join(str(exc).split())[:300]}") from None

    # ------------------------------------------------------------------------------------ endpoints
    @app.post("/predict", dependencies=[Depends(authorize)], tags=["inspection"],
              openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS,
              summary="Score one image: verdict, score vs threshold, defect regions, optional heatmap")
    async def predict(request: Request,
                      heatmap: bool = Query(False, description="add the overlay heatmap (base64 PNG, `heatmap_png`)"),
                      name: str | None = Query(None, description="a name for a raw-body image, echoed back",
                                               max_length=200)) -> dict[str, Any]:
        received = time.perf_counter()
        service.counts["requests"] += 1
        uploads = await read_uploads(request, 2, name)  # a second file only to say where several go
        if len(uploads) > 1:
            raise UploadError(400, f"{len(uploads)} files sent to /predict; send several to /predict/batch")
        return await scored(uploads, lambda: service.predict_one(uploads[0], heatmap, received))

    @app.post("/predict/batch", dependencies=[Depends(authorize)], tags=["inspection"],
              openapi_extra={"requestBody": _BATCH_BODY}, responses=_ERRORS,
              summary="Score several images (multipart); one result or one error per image, in order")
    async def predict_batch(request: Request,
                            heatmap: bool = Query(False, description="add each image's heatmap (base64 PNG)")
                            ) -> dict[str, Any]:
        received = time.perf_counter()
        service.counts["requests"] += 1
        if not request.headers.get("content-type", "").lower().startswith("multipart/"):
            raise UploadError(400, "send the images as multipart/form-data file fields")
        uploads = await read_uploads(request, service.max_files, None)

        async def one(upload: Upload) -> dict[str, Any]:
            try:
                return await service.predict_one(upload, heatmap, received)
            except UploadError as exc:
                service.counts["rejected"] += 1
                return {"image": upload.name, "error": exc.message}

        results = await scored(uploads, lambda: asyncio.gather(*(one(u) for u in uploads)))
        return {"results": list(results), "count": len(results),
                "errors": sum(1 for r in results if "error" in r), "total_ms": elapsed_ms(received)}

    @app.get("/health", tags=["service"], summary="Liveness, uptime and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "detector": served.name, "runtime": served.runtime, "model_id": service.model_id,
                "auth_required": service.token is not None, "uptime_s": round(time.time() - service.started, 1),
                "counts": dict(service.counts), "load": service.load(), "batching": service.batcher.stats(),
                "history": service.history is not None, "drift": service.drift.status()}

    @app.get("/model", dependencies=[Depends(authorize)], tags=["service"], responses={401: _ERRORS[401]},
             summary="The detector, its parameters, the decision rule, input size, versions and limits")
    async def model_info() -> dict[str, Any]:
        return {**served.describe(), "limits": service.limits()}

    # ------------------------------------------------------------------- history, feedback and metrics
    def history_store() -> Any:
        if service.history is None:
            raise HTTPException(404, "this service keeps no history (start it with a state folder: anomalens serve "
                                     "RUN --state DIR, or create_app(..., state_dir=DIR))")
        return service.history

    @app.get("/history", dependencies=[Depends(authorize)], tags=["feedback"],
             summary="The stored verdicts and their judgements, newest first (paged)")
    async def history(limit: int = Query(50, ge=1, le=500, description="results per page"),
                      before: int | None = Query(None, ge=1, description="only results older than this id (the "
                                                                         "previous page's next_before)")
                      ) -> dict[str, Any]:
        store = history_store()
        page = await asyncio.to_thread(store.page, limit, before)
        for item in page["items"]:
            item["image_url"] = f"/history/{item['id']}/image" if item.pop("image_file") else None
        return {**page, "stats": await asyncio.to_thread(store.stats)}

    @app.get("/history/{result_id}/image", dependencies=[Depends(authorize)], tags=["feedback"],
             summary="A kept image of the history (404 once the retention removed it)")
    async def history_image(result_id: int) -> Response:
        store = history_store()
        item = await asyncio.to_thread(store.get, result_id)
        path = store.image_path(item) if item else None
        if path is None:
            raise HTTPException(404, f"no kept image for result {result_id}")
        try:
            content = await asyncio.to_thread(path.read_bytes)
        except OSError:  # removed by the retention meanwhile
            raise HTTPException(404, f"no kept image for result {result_id}") from None
        return Response(content, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})

    @app.post("/feedback/{result_id}", dependencies=[Depends(authorize)], tags=["feedback"],
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["judgement"], "properties": {"judgement": {
                      "type": "string", "nullable": True,
                      "enum": ["false_alarm", "confirmed_defect", "missed_defect"]}}}}}}},
              responses={400: {"description": "a judgement that does not fit the verdict, or a malformed body"},
                         404: {"description": "no such result, or no history kept"}},
              summary="The operator's judgement of a result: false_alarm / confirmed_defect (flagged), "
                      "missed_defect (passed), null to clear")
    async def feedback(result_id: int, request: Request) -> dict[str, Any]:
        store = history_store()
        body = await read_body(dict(request.headers), request.stream(), 4096)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            raise HTTPException(400, 'the body must be JSON: {"judgement": "false_alarm"}') from None
        if not isinstance(payload, dict) or "judgement" not in payload:
            raise HTTPException(400, 'the body must be a JSON object with "judgement" (false_alarm, '
                                     'confirmed_defect, missed_defect or null)')
        judgement = payload["judgement"]
        if judgement is not None and not isinstance(judgement, str):
            raise HTTPException(400, f"judgement must be a string or null, got {type(judgement).__name__}")
        try:
            item = await asyncio.to_thread(store.judge, result_id, judgement)
        except JudgementError as exc:
            raise HTTPException(404 if exc.missing else 400, str(exc)) from None
        item["image_url"] = f"/history/{item['id']}/image" if item.pop("image_file") else None
        return item

    @app.get("/metrics", dependencies=[Depends(authorize)], tags=["service"],
             summary="Prometheus metrics: requests, latency, verdicts, queue, dropped frames, sinks, drift")
    async def metrics() -> Response:
        body, content_type = service.render_metrics()
        return Response(body, media_type=content_type)

    # ------------------------------------------------------------------------------- pages (in memory)
    def page(name: str) -> Response:
        content, media_type = static[name]
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page("index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return page("docs.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:  # exact names of this package's files: never a path lookup
            raise HTTPException(404, "not found")
        return page(name)

    return app
