"""What the service has seen (``app.py``'s docstring: every endpoint): ``GET /history`` (the stored verdicts,
newest first, paged), ``GET /history/{id}/image`` (a kept image), ``POST /feedback/{id}`` (the operator's
judgement; the store is ``anomalens.feedback.store``) and ``GET /metrics`` (Prometheus text:
``anomalens.monitoring``)."""

import asyncio
import json
from typing import Any, Callable

from anomalens.feedback.store import MEDIA_TYPES, JudgementError
from anomalens.serve.service import Service
from anomalens.serve.uploads import read_body


def add_history_routes(app: Any, service: Service, authorize: Callable[..., Any]) -> None:
    """Register the history, feedback and metrics endpoints on the FastAPI ``app``, each behind ``authorize``."""
    from fastapi import Depends, Query, Request
    from fastapi.exceptions import HTTPException
    from fastapi.responses import Response

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
