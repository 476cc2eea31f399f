"""The inspection service: ``anomalens serve RUN_OR_EXPORT`` — a REST API and an operator page.

    from anomalens.serve import create_app, load_served_model
    app = create_app(load_served_model("runs/hazelnut"), token="s3cret")   # any ASGI server runs it
    # or: anomalens serve runs/hazelnut --port 8000

- ``app.py``: the FastAPI application (endpoints, limits, token, the pages held in memory);
- ``batching.py``: the dynamic micro-batcher (one model thread; concurrent requests share batches);
- ``inference.py``: decode → model → the JSON of one image (score, verdict, regions, heatmap);
- ``uploads.py``: bounded body reading, in-memory multipart parsing, safe image decoding;
- ``static/``: the operator page and the offline API reference (no CDN: the line has no internet).

Needs the optional extra: ``pip install 'anomalens[serve]'`` (FastAPI, uvicorn, python-multipart).
"""

from anomalens.serve.app import create_app
from anomalens.serve.inference import ServedModel, load_served_model

__all__ = ["create_app", "load_served_model", "ServedModel"]
