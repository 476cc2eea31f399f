"""The inspection service: ``anomalens serve RUN_OR_EXPORT`` — a REST API and an operator page.

    from anomalens.serve import create_app, load_served_model
    app = create_app(load_served_model("runs/hazelnut"), token="s3cret")   # any ASGI server runs it
    # or: anomalens serve runs/hazelnut --port 8000; or, with every limit:
    from anomalens.serve import ServeSettings, run_server
    run_server(app, ServeSettings(port=8000))

- ``app.py``: the FastAPI application factory; ``inspection_routes.py`` (predict, health, model; the pixel
  budget), ``history_routes.py`` (history, feedback, metrics) and ``pages.py`` (the pages held in memory): its
  endpoints;
- ``guard.py``: what every request passes first (Host, CSRF, token, requests in flight, body deadline);
- ``settings.py``: every limit, its default and its validation;
- ``server.py``: uvicorn with a request-head deadline, a connection table that cannot be filled by
  half-open connections, a graceful shutdown;
- ``batching.py``: the dynamic micro-batcher (one model thread; concurrent requests share batches);
- ``inference.py``: decode → model → the JSON of one image (score, verdict, regions, heatmap);
- ``uploads.py``: bounded body reading, in-memory multipart parsing, safe image decoding;
- ``request_metrics.py``: every request's route, status and time into ``/metrics`` (``anomalens.monitoring``);
  the history and the operator's feedback live in ``anomalens.feedback.store`` (``state_dir``);
- ``static/``: the operator page and the offline API reference (no CDN: the line has no internet).

Needs the optional extra: ``pip install 'anomalens[serve]'`` (FastAPI, uvicorn, python-multipart). Names are
imported on first use, so ``anomalens.serve.settings`` (the command line's options) costs no import of them.
"""

from typing import Any

__all__ = ["create_app", "load_served_model", "ServedModel", "ServeSettings", "run_server"]

_WHERE = {"create_app": "anomalens.serve.app", "load_served_model": "anomalens.serve.inference",
          "ServedModel": "anomalens.serve.inference", "ServeSettings": "anomalens.serve.settings",
          "run_server": "anomalens.serve.server"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'anomalens.serve' has no attribute {name!r}")
