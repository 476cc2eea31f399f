"""``GET /metrics``: the Prometheus exposition, read back with prometheus_client's own parser, counting what the
requests did; and the drift test (``anomalens.monitoring.DriftMonitor``) on samples whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'anomalens[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from anomalens.catalog import create_detector  # noqa: E402
from anomalens.monitoring import DriftMonitor, LineMetrics  # noqa: E402
from anomalens.serve import create_app  # noqa: E402
from tests.conftest import TINY_PARAMS, make_records  # noqa: E402
from tests.test_serve import png_bytes  # noqa: E402


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def detector():
    records = make_records(16, 0, seed=1)
    return create_detector("padim", **TINY_PARAMS["padim"]).fit(records, progress=False)


def test_metrics_count_requests_verdicts_and_show_the_model(detector):
    images = [png_bytes(r.source) for r in make_records(4, 4, seed=5)]
    app = create_app(detector, token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        verdicts = [c.post("/predict", content=image, headers={**auth, "Content-Type": "image/png"}).json()["anomalous"]
                    for image in images]
        assert c.post("/predict", content=b"not an image", headers=auth).status_code == 400
        assert c.post("/predict", content=images[0]).status_code == 401  # no token
        assert c.get("/metrics").status_code == 401
        answer = c.get("/metrics", headers=auth)
        model_id = c.get("/health").json()["model_id"]
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    got = samples(answer.text)
    assert got[("anomalens_requests_total", (("endpoint", "/predict"), ("status", "200")))] == len(images)
    assert got[("anomalens_requests_total", (("endpoint", "/predict"), ("status", "400")))] == 1
    assert got[("anomalens_requests_total", (("endpoint", "/predict"), ("status", "401")))] == 1
    assert got[("anomalens_request_seconds_count", (("endpoint", "/predict"),))] == len(images) + 2
    assert got[("anomalens_verdicts_total", (("verdict", "defect"),))] == sum(verdicts)
    assert got[("anomalens_verdicts_total", (("verdict", "ok"),))] == len(verdicts) - sum(verdicts)
    assert got[("anomalens_score_count", ())] == len(images)
    assert got[("anomalens_model_info", (("model_id", model_id),))] == 1
    assert model_id.startswith("padim-")
    for name in ("anomalens_queue_depth", "anomalens_dropped_frames_total", "anomalens_drift_statistic",
                 "anomalens_drift_p_value", "anomalens_drift_detected"):
        assert (name, ()) in got, name
    assert got[("anomalens_drift_detected", ())] == 0


def test_the_drift_gauge_and_health_follow_the_drift_test(detector):
    normals = make_records(12, 0, seed=7)
    scores = detector.predict(normals, progress=False).scores
    # A reference far below what these normals score: the live window cannot look like it.
    monitor = DriftMonitor(list(scores - 10 * (np.ptp(scores) + 1)), window=20, min_count=5)
    with TestClient(create_app(detector, drift_reference=monitor), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").json()["drift"]["state"] == "warming-up"
        passed = 0
        for record in normals:
            passed += not c.post("/predict", content=png_bytes(record.source)).json()["anomalous"]
        assert passed >= 5
        drift = c.get("/health").json()["drift"]
        got = samples(c.get("/metrics").text)
    assert drift["state"] == "drift" and drift["p_value"] < drift["alpha"] and "drift" in drift["message"]
    assert got[("anomalens_drift_detected", ())] == 1
    assert got[("anomalens_drift_statistic", ())] == pytest.approx(drift["statistic"]) == 1.0
    assert got[("anomalens_drift_window", ())] == passed


def test_drift_monitor_states():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 1.0, 300)
    same, shifted = DriftMonitor(reference, threshold=2.5), DriftMonitor(reference, threshold=2.5)
    for _ in range(200):
        same.observe(rng.normal(0.0, 1.0), anomalous=False)
        shifted.observe(rng.normal(0.8, 1.0), anomalous=False)
    assert same.status()["state"] == "ok" and same.status()["p_value"] >= 0.01
    assert shifted.status()["state"] == "drift" and shifted.status()["statistic"] > 0.2
    # flagged images never enter the window; below min_count it warms up
    warming = DriftMonitor(reference, min_count=50)
    for _ in range(100):
        warming.observe(10.0, anomalous=True)
    for _ in range(49):
        warming.observe(0.0, anomalous=False)
    assert warming.status()["state"] == "warming-up" and warming.status()["count"] == 49
    # the reference is cut at the threshold as the live scores are: no drift from the cut alone
    cut = DriftMonitor(reference, threshold=0.0, min_count=50, window=200)
    for s in rng.normal(0.0, 1.0, 400):
        cut.observe(s, anomalous=s > 0.0)
    assert cut.status()["state"] == "ok"
    assert DriftMonitor([], min_count=5).status()["state"] == "no-reference"
    with pytest.raises(ValueError):
        DriftMonitor(reference, window=10, min_count=20)


def test_line_metrics_have_their_own_registry():
    first, second = LineMetrics("a"), LineMetrics("b")
    first.count_dropped_frames(3)
    first.count_sink_failure("mqtt")
    first.set_queue_depth(7)
    second.set_model("c")
    one, two = samples(first.render()[0].decode()), samples(second.render()[0].decode())
    assert one[("anomalens_dropped_frames_total", ())] == 3 and two[("anomalens_dropped_frames_total", ())] == 0
    assert one[("anomalens_sink_failures_total", (("sink", "mqtt"),))] == 1
    assert one[("anomalens_queue_depth", ())] == 7
    assert ("anomalens_model_info", (("model_id", "c"),)) in two and ("anomalens_model_info", (("model_id", "b"),)) not in two
