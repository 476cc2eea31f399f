"""The test report in a real browser: headless Debian Chromium driven by Playwright opens a report written by
``write_test_report`` (40 synthetic 64 px images, three defect types, masks, loss curves, warnings) at
1920 x 1080 and checks what an operator sees: the page fits on two screens without scrolling sideways,
every picture loads, names from disk are shown as text, and a thumbnail opens its full figure.

Needs the Debian package ``chromium`` (``make test`` / ``.ci/run`` install it) and Playwright's Python package
(the ``dev`` extra); Playwright's own browser download is never used. Skips, saying which, without them.
``ANOMALENS_SCREENSHOT_DIR`` keeps a copy of the full-page screenshot there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed (dev extra)")

from anomalens.metrics import evaluate  # noqa: E402
from anomalens.report import write_test_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# Without the background-networking flags Chromium keeps trying to reach Google.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREEN = {"width": 1920, "height": 1080}

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; 'make test' does it)")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A full report: 20 normal images and 20 with a bright square defect of three types."""
    rng = np.random.default_rng(0)
    n, size = 40, 64
    labels = np.array([0] * 20 + [1] * 20)
    types = ["good"] * 20 + ["scratch", "stain", "<script>"] * 6 + ["scratch", "stain"]
    images = np.clip(0.5 + 0.1 * rng.standard_normal((n, size, size, 3)), 0, 1)
    masks = np.zeros((n, size, size), bool)
    maps = rng.random((n, size, size)).astype(np.float32) * 0.5
    for i in range(20, n):
        y, x = rng.integers(4, 44, 2)
        masks[i, y:y + 14, x:x + 14] = True
        images[i][masks[i]] = (0.9, 0.3, 0.2)
        maps[i][masks[i]] += rng.uniform(0.05, 1.0)
    scores = maps.reshape(n, -1).max(axis=1).astype(np.float64)
    names = [f"test/{t}/{i:03d}.png" for i, t in enumerate(types)]
    threshold = float(np.quantile(scores[:20], 0.9))
    metrics = evaluate(labels, scores, threshold, masks, maps)
    metrics.update({"detector": "padim", "backbone": "efficientnet_lite0", "image_size": [size, size], "device": "cpu",
                    "images_per_second": 42.0, "threshold_source": "false-alarm rate 0.01: quantile 0.99 of 40 images",
                    "warnings": ["The threshold rests on only 12 normal score(s), fewer than 30."]})
    out = tmp_path_factory.mktemp("report")
    return write_test_report(out, names=names, defect_types=types, labels=labels, scores=scores, threshold=threshold,
                             metrics=metrics, load_image=lambda i: images[i], maps=maps, masks=masks,
                             pixel_threshold=threshold, normalized_scores=scores / (2 * threshold),
                             loss_curves={"train": [1.0, 0.5, 0.4], "validation": [1.1, 0.7, 0.6]})


def test_the_report_fits_on_two_screens_and_every_picture_loads(report: Path, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=SCREEN)
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            page.evaluate("Promise.all([...document.images].map(i => i.decode ? i.decode() : true))")
            height = page.evaluate("document.documentElement.scrollHeight")
            width = page.evaluate("document.documentElement.scrollWidth")
            broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                                   ".map(i => i.getAttribute('src'))")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("ANOMALENS_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(os.environ["ANOMALENS_SCREENSHOT_DIR"]) / "report.png")
            assert height <= 2 * SCREEN["height"], f"the report is {height} px tall: more than two screens"
            assert width <= SCREEN["width"], f"the report is {width} px wide: it scrolls sideways"
            assert broken == []
            assert page.locator("img").count() == 6 + 18  # 6 curves (loss included), 3 groups of 6 thumbnails
            assert page.locator(".warnings").is_visible()
            # The defect folder named like markup is a row of the per-type table, as text.
            assert page.locator('tr[data-defect-type="<script>"] td').first.inner_text() == "<script>"
            assert page.evaluate("document.scripts.length") == 0
            # A thumbnail opens its full figure.
            thumbnail = page.locator(".thumb a").first
            target = thumbnail.get_attribute("href")
            thumbnail.click()
            page.wait_for_load_state("load")
            assert page.url.endswith(target) and (report.parent / target).is_file()
        finally:
            browser.close()
