"""The operator page in a real browser: a real uvicorn server on 127.0.0.1, headless Debian Chromium driven by
Playwright, a defective and a normal image of a synthetic category uploaded through the page's file input.

Needs the Debian package ``chromium`` (``make test`` / ``.ci/run`` install it) and Playwright's Python package
(the ``dev`` extra); Playwright's own browser download is never used. Skips, saying which, without them.
``ANOMALENS_SCREENSHOT_DIR`` keeps a copy of the screenshots there (they are always written to tmp_path).
"""

from __future__ import annotations

import os
import shutil
import socket
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
from anomalens.serve import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# As the machine notes say: without the background-networking flags Chromium keeps trying to reach Google.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; 'make test' does it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("synthetic"), "brick", n_train=24, n_test_good=4,
                                   n_test_defect=6, image_size=96, seed=0, defect_types=["stain", "patch"])


@pytest.fixture(scope="module")
def server(category):
    """A fitted PaDiM served by uvicorn in a thread, on a free loopback port; yields (url, detector)."""
    data = load_dataset(category)
    detector = create_detector("padim", image_size=64, batch_size=8, device="cpu")
    detector.fit(data.train, progress=False)
    detector.calibrate(data.test, method="f1", progress=False)
    port = _free_port()
    config = uvicorn.Config(create_app(detector), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", detector, data
    srv.should_exit = True
    thread.join(10)


def _pick(detector, data) -> tuple[Path, Path]:
    """The clearest defective and normal test images (the model must get them right for the check to mean
    anything: that is asserted here, then the page must show the same)."""
    records = data.test
    result = detector.predict(records, progress=False)
    labels = np.array([r.label for r in records])
    defect = int(np.argmax(np.where(labels == 1, result.scores, -np.inf)))
    normal = int(np.argmin(np.where(labels == 0, result.scores, np.inf)))
    assert result.labels[defect] == 1 and result.labels[normal] == 0, "the tiny model misjudges the clearest images"
    return Path(records[defect].source), Path(records[normal].source)


def test_operator_page_shows_verdicts_heatmap_and_history(server, tmp_path):
    url, detector, data = server
    defect_path, normal_path = _pick(detector, data)
    shots = [tmp_path / "page-defect.png", tmp_path / "page-normal.png"]
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {str(exc).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith((url, "data:", "blob:")) else outside.append(req.url))
            page.goto(url + "/")
            sync_api.expect(page.get_by_test_id("status")).to_have_text("online", timeout=10_000)
            sync_api.expect(page.get_by_test_id("model-info")).to_contain_text("padim")

            page.get_by_test_id("file-input").set_input_files(str(defect_path))
            verdict = page.get_by_test_id("verdict")
            sync_api.expect(verdict).to_have_text("DEFECT", timeout=30_000)
            sync_api.expect(page.get_by_test_id("result-name")).to_have_text(defect_path.name)
            heatmap = page.get_by_test_id("heatmap")
            page.wait_for_function("() => { const i = document.querySelector('[data-testid=heatmap]');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=10_000)
            assert heatmap.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [96, 96]
            assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
            sync_api.expect(page.get_by_test_id("score-text")).to_contain_text("threshold")
            sync_api.expect(page.get_by_test_id("details")).to_contain_text("Defect regions")
            page.screenshot(path=str(shots[0]), full_page=True)

            page.get_by_test_id("file-input").set_input_files(str(normal_path))
            sync_api.expect(page.get_by_test_id("result-name")).to_have_text(normal_path.name, timeout=30_000)
            sync_api.expect(verdict).to_have_text("OK")
            items = page.get_by_test_id("history-item")
            sync_api.expect(items).to_have_count(2)
            chips = page.get_by_test_id("history-verdict")
            assert chips.all_inner_texts() == ["OK", "DEFECT"]  # newest first
            assert page.locator("#count-ok").inner_text() == "1" and page.locator("#count-defect").inner_text() == "1"
            page.wait_for_function("() => document.querySelector('[data-testid=heatmap]').naturalWidth > 0")
            page.screenshot(path=str(shots[1]), full_page=True)

            items.nth(1).click()  # back to the defective one from the list
            sync_api.expect(verdict).to_have_text("DEFECT")
            sync_api.expect(page.get_by_test_id("result-name")).to_have_text(defect_path.name)
            assert not page.locator("#token-box").is_visible()  # this service has no token
            assert not errors, errors
            assert not outside, f"the page requested something outside the service: {outside}"
        finally:
            browser.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000
    keep = os.environ.get("ANOMALENS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(keep) / shot.name)


def test_the_page_draws_an_exif_rotated_photo_as_the_service_scored_it(server, tmp_path):
    """A JPEG stored 160 × 96 with EXIF orientation 6 (a viewer shows it 96 × 160): the service scores the
    stored pixels; the page must draw the stored pixels too, or its region boxes and heatmap would sit on a
    turned picture. Chromium turns such an image by default: checked first, so the test can fail."""
    from PIL import Image

    url, detector, data = server
    defect_path, _ = _pick(detector, data)
    picture = Image.open(defect_path).convert("RGB").resize((160, 96))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    picture.save(path, format="JPEG", quality=95, exif=exif)
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
            page.get_by_test_id("file-input").set_input_files(str(path))
            sync_api.expect(page.get_by_test_id("result-name")).to_have_text("turned.jpg", timeout=30_000)
            page.wait_for_function("() => { const i = document.querySelector('#original');"
                                   " const h = document.querySelector('[data-testid=heatmap]');"
                                   " return i.complete && i.naturalWidth > 0 && h.complete && h.naturalWidth > 0; }",
                                   timeout=10_000)
            # Chromium's default (image-orientation: from-image) turns this file upright: portrait
            default = page.evaluate("""async (src) => { const i = new Image(); document.body.append(i); i.src = src;
                await i.decode(); const r = i.getBoundingClientRect(); i.remove(); return [r.width, r.height]; }""",
                                    page.locator("#original").get_attribute("src"))
            assert default[0] < default[1], default
            shown = page.locator("#original").evaluate("i => { const r = i.getBoundingClientRect(); return [r.width, r.height]; }")
            heat = page.get_by_test_id("heatmap").evaluate("i => { const r = i.getBoundingClientRect(); return [r.width, r.height]; }")
            assert shown[0] > shown[1] and abs(shown[0] / shown[1] - 160 / 96) < 0.02, shown
            assert abs(heat[0] / heat[1] - shown[0] / shown[1]) < 0.02, (heat, shown)  # the same grid
            thumb = page.get_by_test_id("history-item").first.locator("img").evaluate("i => getComputedStyle(i).imageOrientation")
            assert thumb == "none"
            sync_api.expect(page.get_by_test_id("orientation-note")).to_contain_text("EXIF orientation (6) is not applied")
            assert page.locator("#result-sub").inner_text().startswith("160×96 px")
            assert not errors, errors
        finally:
            browser.close()
