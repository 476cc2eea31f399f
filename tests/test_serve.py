"""The inspection service (``anomalens serve``): answers equal to ``Detector.predict``, every refusal a clean
4xx with one line, the token, the micro-batcher, the pages served offline."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'anomalens[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")
from fastapi.testclient import TestClient  # noqa: E402

from anomalens.catalog import create_detector  # noqa: E402
from anomalens.cli import build_parser  # noqa: E402
from anomalens.errors import ConfigError, NumericalError  # noqa: E402
from anomalens.serve import create_app, load_served_model  # noqa: E402
from anomalens.serve.batching import MicroBatcher  # noqa: E402
from anomalens.serve.inference import defect_regions  # noqa: E402
from tests.conftest import TINY_PARAMS, make_records  # noqa: E402


def local_client(app, **kwargs) -> TestClient:
    """FastAPI's test client, asking for the service by a name it answers to (its Host check refuses the
    client's default 'testserver')."""
    return TestClient(app, base_url="http://127.0.0.1:8000", **kwargs)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` grey pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def detector():
    """PaDiM at 64 px, fitted on 96-px images (so every image is resized, as real uploads are), its threshold
    calibrated on labelled images (two held-out normals are too few to place it)."""
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(make_records(20, 0, seed=1, size=96), progress=False)
    detector.calibrate(make_records(6, 6, seed=3, size=96), method="f1", progress=False)
    return detector


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """3 normal and 3 defective PNG files, 96 × 96 (not the model's 64 × 64: the resize is part of it)."""
    folder = tmp_path_factory.mktemp("serve-images")
    paths = []
    for i, record in enumerate(make_records(3, 3, seed=2, size=96)):
        path = folder / f"{'defect' if record.label else 'good'}_{i}.png"
        Image.fromarray(record.source).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def client(detector):
    with local_client(create_app(detector, max_wait_ms=2)) as test_client:
        yield test_client


def assert_one_line_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    for fragment in fragments:
        assert fragment in detail, detail


# ------------------------------------------------------------------------------------------- answers
def test_scores_equal_detector_predict_raw_multipart_and_batch(client, detector, images):
    expected = detector.predict(images, progress=False)
    raw = [client.post(f"/predict?name={p.name}", content=p.read_bytes(), headers={"Content-Type": "image/png"}).json()
           for p in images]
    multipart = [client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")}).json() for p in images]
    batch = client.post("/predict/batch", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in images])
    assert batch.status_code == 200
    batched = batch.json()["results"]
    for answers in (raw, multipart, batched):
        assert [a["image"] for a in answers] == [p.name for p in images]
        np.testing.assert_allclose([a["score"] for a in answers], expected.scores, rtol=1e-5)
        assert [a["anomalous"] for a in answers] == [bool(x) for x in expected.labels]
    assert [bool(x) for x in expected.labels] == [False] * 3 + [True] * 3  # the model sees the squares
    threshold = detector.decision_.image_threshold
    for answer in raw:
        assert answer["threshold"] == pytest.approx(threshold)
        assert answer["normalized_score"] == pytest.approx(float(detector.decision_.normalized([answer["score"]])[0]))
        assert (answer["normalized_score"] > 0.5) == answer["anomalous"]
        assert answer["label"] == ("defect" if answer["anomalous"] else "ok")
        assert answer["decision"] == detector.decision_.description and answer["rule"] == "score"
        assert answer["image_size"] == {"width": 96, "height": 96}
        assert set(answer["timing_ms"]) >= {"decode", "queue", "model_batch", "batch_size", "postprocess", "total"}
        assert "heatmap_png" not in answer


def test_regions_and_heatmap_match_the_predicted_mask(client, detector, images):
    from anomalens.report import to_original_size

    path = images[3]
    answer = client.post("/predict?heatmap=1", content=path.read_bytes()).json()
    amap = detector.predict([path], progress=False).maps[0]
    mask = to_original_size(amap, (96, 96)) > detector.decision_.pixel_threshold
    assert answer["defect_area_fraction"] == pytest.approx(mask.mean())
    assert answer["regions_total"] >= 1
    assert sum(r["area"] for r in answer["regions"]) == int(mask.sum())
    largest = answer["regions"][0]
    assert largest["area"] == max(r["area"] for r in answer["regions"])
    box = mask[largest["y"] : largest["y"] + largest["height"], largest["x"] : largest["x"] + largest["width"]]
    assert box.sum() >= largest["area"]
    import base64

    overlay = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert overlay.format == "PNG" and overlay.size == (96, 96) and overlay.mode == "RGB"


def test_defect_regions_are_8_connected_boxes_largest_first():
    mask = np.zeros((10, 12), bool)
    mask[1:3, 1:4] = True  # 6 px
    mask[3, 4] = True  # touches the first diagonally: same region (7 px)
    mask[6:9, 8:12] = True  # 12 px
    regions, total = defect_regions(mask)
    assert total == 2
    assert regions == [{"x": 8, "y": 6, "width": 4, "height": 3, "area": 12},
                       {"x": 1, "y": 1, "width": 4, "height": 3, "area": 7}]
    assert defect_regions(np.zeros((4, 4), bool)) == ([], 0)
    assert len(defect_regions(np.eye(9, dtype=bool)[::2] | False, limit=1)[0]) == 1


def test_batch_endpoint_answers_each_image_in_order_with_per_image_errors(client, images):
    files = [("files", ("a.png", images[0].read_bytes(), "image/png")),
             ("files", ("notes.txt", b"not an image at all", "text/plain")),
             ("other", ("b.png", images[4].read_bytes(), "image/png"))]
    response = client.post("/predict/batch?heatmap=1", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3 and body["errors"] == 1
    first, bad, last = body["results"]
    assert first["image"] == "a.png" and not first["anomalous"] and "heatmap_png" in first
    assert bad == {"image": "notes.txt", "error": bad["error"]} and "not an image" in bad["error"]
    assert last["image"] == "b.png" and last["anomalous"]
    assert_one_line_error(client.post("/predict/batch", content=images[0].read_bytes()), 400, "multipart")


def test_health_and_model(client, detector):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["detector"] == "padim" and health["runtime"] == "torch"
    assert health["auth_required"] is False and health["batching"]["images"] >= 0
    info = client.get("/model").json()
    assert info["detector"] == "padim" and info["runtime"] == "torch" and info["device"] == "cpu"
    assert info["input_size"] == {"height": 64, "width": 64} and info["channels"] == 3 and info["localizes"]
    assert info["params"]["image_size"] == 64
    assert info["decision"] == json.loads(json.dumps(detector.decision_.to_dict()))
    assert {"anomalens", "python", "numpy", "torch", "fastapi", "uvicorn"} <= set(info["versions"])
    assert info["limits"]["max_batch"] == detector.params["batch_size"] and "0.5 at the image threshold" in info["normalized_score"]


def test_pages_are_served_from_memory_and_load_nothing_from_elsewhere(client):
    for url in ("/", "/docs", "/static/app.js", "/static/style.css", "/static/docs.js"):
        response = client.get(url)
        assert response.status_code == 200, url
        text = response.text
        assert "http://" not in text and "https://" not in text and "cdn" not in text.lower(), url
    assert "text/html" in client.get("/").headers["content-type"]
    for url in ("/static/../app.py", "/static/app.py", "/static/%2e%2e%2fapp.py", "/static/index.j2", "/redoc"):
        assert client.get(url).status_code == 404, url
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


# ------------------------------------------------------------------------------------------- refusals
def test_bad_uploads_get_a_one_line_400_and_the_service_keeps_serving(detector, images):
    with local_client(create_app(detector, max_pixels=200_000), raise_server_exceptions=True) as client:
        good = images[0].read_bytes()
        truncated = good[: len(good) // 2]
        gif = io.BytesIO()
        Image.new("L", (8, 8)).save(gif, format="GIF")
        big = io.BytesIO()
        Image.new("L", (600, 400)).save(big, format="PNG")  # 240 000 pixels > max_pixels
        cases = {
            "text": (b"hello, this is not an image", ["not an image"]),
            "truncated": (truncated, ["cannot decode image"]),
            "garbage-png": (good[:40] + bytes(200), ["corrupt"]),
            "gif": (gif.getvalue(), ["not an image", "PNG, JPEG"]),
            "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", ["not an image"]),
            "bomb": (png_header_only(100_000, 100_000), ["too large", "bomb"]),
            "bomb-under-pillows-limit": (png_header_only(9_000, 9_000), ["too large", "9000x9000"]),
            "too-many-pixels": (big.getvalue(), ["too large", "600x400"]),
            "empty": (b"", ["empty"]),
        }
        for name, (data, fragments) in cases.items():
            assert_one_line_error(client.post(f"/predict?name={name}", content=data), 400, *fragments)
            assert_one_line_error(client.post("/predict", files={"file": (name, data, "image/png")}), 400)
        assert_one_line_error(client.post("/predict", data={"field": "x"}, files={"nothing": ("", b"")}), 400)
        assert_one_line_error(client.post("/predict", content=b"--x\r\ngarbage",
                                          headers={"Content-Type": "multipart/form-data"}), 400, "boundary")
        two = [("a", ("a.png", good, "image/png")), ("b", ("b.png", good, "image/png"))]
        assert_one_line_error(client.post("/predict", files=two), 400, "/predict/batch")
        # a file name is only echoed: path components are dropped
        answer = client.post("/predict", files={"file": ("../../etc/passwd.png", good, "image/png")}).json()
        assert answer["image"] == "passwd.png"
        assert client.post("/predict", content=good).status_code == 200
        assert client.get("/health").json()["counts"]["rejected"] >= 2 * len(cases)


def test_bodies_over_the_limit_get_413_declared_or_streamed(detector, images):
    good = images[0].read_bytes()
    with local_client(create_app(detector, max_upload_bytes=len(good) - 1)) as client:
        assert_one_line_error(client.post("/predict", content=good), 413, "exceeds the limit")

        def chunks():  # no Content-Length: counted while it streams
            for start in range(0, len(good), 100):
                yield good[start : start + 100]

        assert_one_line_error(client.post("/predict", content=chunks()), 413, "exceeds the limit")
        assert_one_line_error(client.post("/predict/batch", files=[("f", ("a.png", good, "image/png"))]), 413)
    with local_client(create_app(detector, max_upload_bytes=len(good) + 1000)) as client:
        assert client.post("/predict", content=good).status_code == 200


def test_token_is_required_when_set(detector, images):
    good = images[0].read_bytes()
    with local_client(create_app(detector, token="s3cret")) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, url in (("post", "/predict"), ("post", "/predict/batch"), ("get", "/model")):
                response = getattr(client, method)(url, content=good, headers=headers) if method == "post" \
                    else client.get(url, headers=headers)
                assert_one_line_error(response, 401, "bearer token")
                assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/health").json()["auth_required"] is True  # open: says a token is needed
        assert client.get("/").status_code == 200
        ok = {"Authorization": "Bearer s3cret"}
        assert client.post("/predict", content=good, headers=ok).status_code == 200
        assert client.get("/model", headers=ok).status_code == 200


def test_a_failing_model_is_a_one_line_500_and_the_next_request_is_served(detector, images):
    app = create_app(detector)
    batcher = app.state.service.batcher
    run_batch = batcher.run_batch

    def broken(items):
        raise NumericalError("padim: NaN or infinite anomaly scores\nsecond line")

    with local_client(app) as client:
        batcher.run_batch = broken
        assert_one_line_error(client.post("/predict", content=images[0].read_bytes()), 500, "model error", "NaN")
        batcher.run_batch = run_batch
        assert client.post("/predict", content=images[0].read_bytes()).status_code == 200


# ------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_share_a_batch(detector, images):
    seen: list[int] = []
    app = create_app(detector, max_wait_ms=300, max_batch=8)
    batcher = app.state.service.batcher
    run_batch = batcher.run_batch

    def spy(items):
        seen.append(len(items))
        return run_batch(items)

    batcher.run_batch = spy
    with local_client(app) as client:
        payloads = [p.read_bytes() for p in images]
        with ThreadPoolExecutor(len(payloads)) as pool:
            answers = list(pool.map(lambda data: client.post("/predict", content=data).json(), payloads))
        assert max(seen) > 1, seen
        assert max(a["timing_ms"]["batch_size"] for a in answers) > 1
        assert sum(seen) == len(payloads)
        stats = client.get("/health").json()["batching"]
        assert stats["largest_batch"] == max(seen) and stats["images"] == len(payloads)
    np.testing.assert_allclose([a["score"] for a in answers], detector.predict(images, progress=False).scores, rtol=1e-5)


def test_micro_batcher_fills_batches_while_the_model_is_busy():
    release = threading.Event()
    sizes = []

    def run(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(5)
        return [x * 10 for x in items]

    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0)
    futures = [batcher.submit(0)]
    time.sleep(0.05)  # the first batch (of one) is running and blocked
    futures += [batcher.submit(i) for i in range(1, 7)]
    release.set()
    results = [f.result(5) for f in futures]
    assert [r for r, _ in results] == [i * 10 for i in range(7)]
    assert sizes == [1, 4, 2]
    assert results[1][1].size == 4 and results[1][1].queued_ms >= 0
    assert batcher.stats()["largest_batch"] == 4 and batcher.stats()["images"] == 7
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(1)


def test_micro_batcher_waits_briefly_for_a_batch_and_passes_errors_to_every_item():
    def run(items):
        if "bad" in items:
            raise ValueError("boom")
        return items

    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=200)
    start = time.perf_counter()
    futures = [batcher.submit(x) for x in ("a", "b", "c")]
    assert [f.result(5)[0] for f in futures] == ["a", "b", "c"]
    assert futures[0].result()[1].size == 3  # collected within the wait
    assert time.perf_counter() - start < 2
    bad = [batcher.submit(x) for x in ("x", "bad")]
    for future in bad:
        with pytest.raises(ValueError, match="boom"):
            future.result(5)
    assert batcher.submit("after").result(5)[0] == "after"  # still running
    batcher.close()
    with pytest.raises(ValueError):
        MicroBatcher(run, max_batch=0)


# ------------------------------------------------------------------------------------------- loading
def test_load_served_model_picks_the_runtime_by_folder(detector, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_run
    from anomalens.exported import load_export

    run = detector.save(tmp_path / "run")
    served = load_served_model(run)
    assert served.runtime == "torch" and served.source == "run"
    with pytest.raises(ConfigError, match="not an export"):
        load_served_model(run, runtime="onnxruntime")
    export = export_run(run, tmp_path / "export")
    with pytest.raises(ConfigError, match="is an export"):
        load_served_model(export, runtime="torch")
    served = load_served_model(export)
    assert served.runtime == "onnxruntime"
    expected = load_export(export).predict(images)
    with local_client(create_app(served)) as client:
        answers = client.post("/predict/batch", files=[("f", (p.name, p.read_bytes(), "image/png")) for p in images])
        results = answers.json()["results"]
        assert client.get("/model").json()["runtime"] == "onnxruntime"
    np.testing.assert_allclose([r["score"] for r in results], expected.scores, rtol=1e-5)
    assert [r["anomalous"] for r in results] == [bool(x) for x in expected.labels]


def test_serve_command_line_defaults_to_localhost():
    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port, args.runtime, args.token) == ("127.0.0.1", 8000, None, None)
    args = build_parser().parse_args(["serve", "exports/x", "--runtime", "openvino", "--port", "9000", "--token", "t"])
    assert (args.runtime, args.port, args.token) == ("openvino", 9000, "t")


def test_an_image_level_detector_answers_without_regions_or_heatmap(images):
    detector = create_detector("mahalanobis", **TINY_PARAMS["mahalanobis"]).fit(make_records(12, 0, seed=1, size=96),
                                                                                progress=False)
    with local_client(create_app(detector)) as client:
        answer = client.post("/predict?heatmap=1", content=images[0].read_bytes()).json()
        assert client.get("/model").json()["localizes"] is False
    assert answer["score"] == pytest.approx(float(detector.predict([images[0]], progress=False).scores[0]), rel=1e-5)
    assert answer["regions"] is None and answer["pixel_threshold"] is None and "heatmap_png" not in answer


def test_exif_orientation_is_reported_not_applied_as_predict_does(client, detector, tmp_path):
    """A camera JPEG stored landscape with EXIF orientation 6 (viewers turn it upright): the service scores the
    stored pixels, as ``predict`` does, reports the tag, and its sizes / regions / heatmap are in that grid."""
    picture = np.asarray(Image.fromarray(make_records(0, 1, seed=4, size=96)[0].source).resize((144, 96)))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(picture).save(path, format="JPEG", quality=95, exif=exif)
    answer = client.post("/predict?heatmap=1&name=turned.jpg", content=path.read_bytes()).json()
    assert answer["exif_orientation"] == 6
    assert answer["image_size"] == {"width": 144, "height": 96}
    assert answer["score"] == pytest.approx(float(detector.predict([path], progress=False).scores[0]), rel=1e-5)
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))).size == (144, 96)
    plain = client.post("/predict", content=png_bytes(picture)).json()
    assert plain["exif_orientation"] is None
    css = client.get("/static/style.css").text
    assert "image-orientation: none" in css  # the page draws it as stored too (test_serve_browser checks it)
