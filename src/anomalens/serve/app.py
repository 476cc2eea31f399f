"""The FastAPI application: ``create_app(model)`` → an ASGI app that ``uvicorn`` (``anomalens serve``) runs.

Endpoints (``/docs`` lists them with their schemas, rendered offline from ``/openapi.json``):

- ``POST /predict`` — one image, as the raw request body (any Content-Type but multipart; ``?name=`` names it)
  or as a multipart/form-data file field; ``?heatmap=1`` adds the overlay as a base64 PNG;
- ``POST /predict/batch`` — several images as multipart file fields (any field name); one result per image,
  in order; an image that cannot be decoded gets ``{"image", "error"}`` in its place and the others are scored;
- ``GET /health`` — liveness, uptime and the micro-batcher's statistics (no token needed);
- ``GET /model`` — the detector, its parameters, the decision rule, the input size, versions, the limits;
- ``GET /`` — the operator page (``static/``), ``GET /docs`` — the API reference. Both are files of this
  package held in memory and served by exact name: no request path is ever looked up on the file system.

Safety: bodies over ``max_upload_bytes`` → 413; anything that is not a decodable image of at most
``max_pixels`` pixels → 400 with one line; a failure inside the model → 500 with one line (never a
traceback); with ``token`` every endpoint but ``/``, ``/static/*``, ``/docs``, ``/openapi.json`` and
``/health`` needs ``Authorization: Bearer <token>`` (401 otherwise). FastAPI's own Swagger UI and ReDoc pages
load their scripts from a CDN, so they are switched off; ``/docs`` is this package's own page.
"""


import asyncio
import hmac
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from anomalens.errors import AnomalensError, ConfigError
from anomalens.serve.batching import MicroBatcher
from anomalens.serve.inference import ServedModel, elapsed_ms
from anomalens.serve.uploads import Upload, UploadError, clean_name, decode_image, parse_multipart, read_body

DEFAULT_MAX_UPLOAD_BYTES = 25_000_000
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_FILES = 64
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
    400: {"description": "not an image, corrupt, too many pixels, or an empty / malformed body (one-line detail)"},
    401: {"description": "bearer token missing or wrong (only when the service has a token)"},
    413: {"description": "the body is larger than the upload limit"},
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


class _Service:
    """The app's state: the model, the batcher, the limits and the counters."""

    def __init__(self, model: ServedModel, token: str | None, max_upload_bytes: int, max_batch: int,
                 max_wait_ms: float, max_pixels: int, max_files: int, decode_threads: int) -> None:
        self.model = model
        self.token = token
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.max_files = int(max_files)
        self.batcher: MicroBatcher = MicroBatcher(model.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.decode_slots = threading.BoundedSemaphore(decode_threads)  # uploads decoded at once (CPU, peak memory)
        self.started = time.time()
        self.counts = {"images": 0, "requests": 0, "rejected": 0, "failed": 0}

    def limits(self) -> dict[str, Any]:
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_files_per_request": self.max_files, "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait_s * 1000.0}

    def _decode(self, upload: Upload) -> Any:
        with self.decode_slots:
            return self.model.prepare(decode_image(upload.data, upload.name, self.max_pixels))

    async def predict_one(self, upload: Upload, heatmap: bool, received: float) -> dict[str, Any]:
        """Decode (thread) → batched model (batcher thread) → regions / heatmap (thread). UploadError on bad data."""
        from starlette.concurrency import run_in_threadpool

        start = time.perf_counter()
        prepared = await run_in_threadpool(self._decode, upload)
        decoded = time.perf_counter()
        item, info = await asyncio.wrap_future(self.batcher.submit(prepared.input))
        prepared.input = None
        scored = time.perf_counter()
        result = await run_in_threadpool(self.model.result_json, upload.name, prepared, item, heatmap)
        result["timing_ms"] = {
            "decode": round((decoded - start) * 1000.0, 3),
            "queue": round(info.queued_ms, 3),
            "model_batch": round(info.model_ms, 3),
            "batch_size": info.size,
            "postprocess": elapsed_ms(scored),
            "total": elapsed_ms(received),
        }
        self.counts["images"] += 1
        return result


def create_app(
    model: Any,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_batch: int | None = None,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_files: int = DEFAULT_MAX_FILES,
    decode_threads: int | None = None,
) -> Any:
    """The service for ``model``: a fitted ``Detector``, an ``ExportedDetector`` or a ``ServedModel``.

    ``token``: when set, requests need ``Authorization: Bearer <token>``. ``max_upload_bytes``: largest body
    (413 beyond). ``max_batch`` / ``max_wait_ms``: the micro-batcher's largest batch (default: the model's own
    ``batch_size``, the batch ``predict`` runs) and longest wait for a batch to fill. ``max_pixels``: largest width × height decoded (400 beyond: decompression bombs).
    ``max_files``: images per batch request. ``decode_threads``: uploads decoded at once (default: the
    CPU cores, 2 to 8): decoding is where a burst of large images costs CPU and memory, so it is bounded.
    """
    _require_fastapi()
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import HTTPException
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    served = model if isinstance(model, ServedModel) else ServedModel(model)
    served.warm_up()
    if max_batch is None:
        max_batch = int(getattr(served.model, "params", {}).get("batch_size") or DEFAULT_MAX_BATCH)
    threads = decode_threads or max(2, min(8, os.cpu_count() or 2))
    service = _Service(served, token or None, max_upload_bytes, max_batch, max_wait_ms, max_pixels, max_files, threads)
    static = _static_files()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(service.batcher.close)

    app = FastAPI(
        title="anomalens inspection service",
        version=served.describe()["versions"]["anomalens"],
        description=f"Visual anomaly detection with a fitted **{served.name}** model ({served.runtime}). "
                    "Send images, get a verdict, a score against the threshold, defect regions and a heatmap.",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan,
    )
    app.state.service = service
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
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        service.counts["rejected"] += 1
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

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
        return await model_call(service.predict_one(uploads[0], heatmap, received))

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

        results = await model_call(asyncio.gather(*(one(u) for u in uploads)))
        return {"results": list(results), "count": len(results),
                "errors": sum(1 for r in results if "error" in r), "total_ms": elapsed_ms(received)}

    @app.get("/health", tags=["service"], summary="Liveness, uptime and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "detector": served.name, "runtime": served.runtime,
                "auth_required": service.token is not None, "uptime_s": round(time.time() - service.started, 1),
                "counts": dict(service.counts), "batching": service.batcher.stats()}

    @app.get("/model", dependencies=[Depends(authorize)], tags=["service"], responses={401: _ERRORS[401]},
             summary="The detector, its parameters, the decision rule, input size, versions and limits")
    async def model_info() -> dict[str, Any]:
        return {**served.describe(), "limits": service.limits()}

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
