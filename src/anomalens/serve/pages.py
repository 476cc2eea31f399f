"""The service's pages: the operator page (``GET /``), the API reference (``GET /docs``, rendered offline from
``/openapi.json``) and their scripts and styles (``GET /static/NAME``). They are files of this package, read once
into memory and served by exact name: no request path is ever looked up on the file system."""

import os
from importlib import resources
from typing import Any

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The operator page and the docs page, read once from this package: name → (bytes, media type)."""
    files = {}
    folder = resources.files("anomalens.serve") / "static"
    for entry in folder.iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


def add_page_routes(app: Any, static: dict[str, tuple[bytes, str]]) -> None:
    """Register the pages (``static``: :func:`static_files`) on the FastAPI ``app``; none is in the API schema."""
    from fastapi.exceptions import HTTPException
    from fastapi.responses import Response

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
