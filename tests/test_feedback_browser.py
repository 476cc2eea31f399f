"""The operator page's feedback in a real browser: a real uvicorn server with a state folder on 127.0.0.1,
headless Debian Chromium driven by Playwright. Upload, click "False alarm", reload: the result and its
judgement come back from the service's history; the drift warning shows.

Needs Debian's ``chromium`` and Playwright's Python package, as tests/test_serve_browser.py; skips, saying
which, without them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'anomalens[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'anomalens[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed (dev extra)")

from anomalens.catalog import create_detector  # noqa: E402
from anomalens.data import load_dataset, make_synthetic_category  # noqa: E402
from anomalens.monitoring import DriftMonitor  # noqa: E402
from anomalens.serve import create_app  # noqa: E402
from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGS, _free_port  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; 'make test' does it)")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A fitted PaDiM served by uvicorn in a thread with a state folder; yields (url, flagged image, passed
    images). The drift monitor's reference lies far below every normal score, so two passed images show it."""
    category = make_synthetic_category(tmp_path_factory.mktemp("synthetic"), "brick", n_train=12, n_test_good=3,
                                       n_test_defect=3, image_size=64, seed=0, defect_types=["stain"])
    data = load_dataset(category)
    detector = create_detector("padim", image_size=64, batch_size=8, device="cpu").fit(data.train, progress=False)
    result = detector.predict(data.test, progress=False)
    flagged = [Path(r.source) for r, label in zip(data.test, result.labels) if label == 1]
    passed = [Path(r.source) for r, label in zip(data.test, result.labels) if label == 0]
    assert flagged and len(passed) >= 2, "the tiny model needs one flagged and two passed test images"
    uploads = tmp_path_factory.mktemp("uploads")  # distinct names (the category's folders reuse 000.png, ...)
    named = []
    for name, source in [("flagged-part.png", flagged[0]), ("passed-1.png", passed[0]), ("passed-2.png", passed[1])]:
        (uploads / name).write_bytes(source.read_bytes())
        named.append(uploads / name)
    reference = list(np.asarray(result.scores).min() - 1000.0 - np.arange(30.0))
    app = create_app(detector, state_dir=tmp_path_factory.mktemp("state") / "state",
                     drift_reference=DriftMonitor(reference, min_count=2, window=10))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", named[0], named[1:]
    server.should_exit = True
    thread.join(10)


def test_a_false_alarm_click_survives_a_reload(served, tmp_path):
    url, flagged, passed = served
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {str(exc).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            sync_api.expect(page.get_by_test_id("status")).to_have_text("online", timeout=10_000)

            page.get_by_test_id("file-input").set_input_files([str(p) for p in passed])
            items = page.get_by_test_id("history-item")
            sync_api.expect(items.filter(has=page.get_by_test_id("feedback-missed_defect"))).to_have_count(2,
                                                                                                       timeout=30_000)
            page.get_by_test_id("file-input").set_input_files(str(flagged))
            item = items.filter(has_text=flagged.name)
            sync_api.expect(item.get_by_test_id("history-verdict")).to_have_text("DEFECT", timeout=30_000)
            # a flagged part offers "False alarm" and "Confirmed defect", not "Missed defect"
            sync_api.expect(item.get_by_test_id("feedback-missed_defect")).to_have_count(0)
            item.get_by_test_id("feedback-false_alarm").click()
            sync_api.expect(item.get_by_test_id("judgement")).to_contain_text("False alarm", timeout=10_000)
            page.screenshot(path=str(tmp_path / "feedback-clicked.png"), full_page=True)

            page.reload()
            sync_api.expect(items).to_have_count(3, timeout=10_000)
            stored = items.filter(has_text=flagged.name)
            sync_api.expect(stored.get_by_test_id("judgement")).to_contain_text("False alarm")
            sync_api.expect(stored.get_by_test_id("feedback-false_alarm")).to_have_attribute("aria-pressed", "true")
            sync_api.expect(stored.get_by_test_id("history-verdict")).to_have_text("DEFECT")
            page.wait_for_function("() => [...document.querySelectorAll('[data-testid=history-item] img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
            drift = page.get_by_test_id("drift")
            sync_api.expect(drift).to_contain_text("Drift", timeout=10_000)
            sync_api.expect(drift).to_have_attribute("data-state", "drift")
            stored.click()
            sync_api.expect(page.get_by_test_id("verdict")).to_have_text("DEFECT")
            sync_api.expect(page.get_by_test_id("score-text")).to_contain_text("threshold")
            page.screenshot(path=str(tmp_path / "feedback-reloaded.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()
