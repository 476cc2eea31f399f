"""The inspection endpoints of the service (``app.py``'s docstring: every endpoint and limit): ``POST /predict``
(one image), ``POST /predict/batch`` (several, one result or one error each), ``GET /health`` and ``GET /model``.
A request's images are read (raw body or multipart), held in the pixel budget while they are scored, and a
failure inside the model is answered with one line."""

import asyncio
import logging
import time
from typing import Any, Callable

from anomalens.errors import AnomalensError
from anomalens.serve.inference import elapsed_ms
from anomalens.serve.service import Service
from anomalens.serve.uploads import Upload, UploadError, clean_name, parse_multipart, read_body

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


def add_inspection_routes(app: Any, service: Service, authorize: Callable[..., Any]) -> None:
    """Register the inspection endpoints on the FastAPI ``app``; every one but ``/health`` depends on ``authorize``."""
    from fastapi import Depends, Query, Request
    from fastapi.exceptions import HTTPException

    served = service.model

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
