"""Tests of anomalens.report on a small synthetic test set (10 images of 32 x 32), and of what ``anomalens test``,
``predict`` and ``demo`` write with it (the conftest category and PaDiM run, 64 px)."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalens import workflow
from anomalens.decision import DecisionRule
from anomalens.demo import run_demo
from anomalens.metrics import aupro, evaluate, pixel_auroc
from anomalens.report import (
    annotate_heatmap,
    case_figure,
    case_thumbnail,
    draw_mask_contours,
    heatmap_range,
    overlay_heatmap,
    per_defect_type_metrics,
    pixel_curves,
    plot_loss_curves,
    plot_pixel_roc,
    plot_precision_recall,
    plot_pro_curve,
    plot_roc,
    plot_score_histogram,
    report_warnings,
    write_test_report,
)
from anomalens.report.annotated import CASE_PANEL_PX
from anomalens.workflow import predict_images

N, H, W = 10, 32, 32


@dataclass
class Synthetic:
    names: list[str]
    defect_types: list[str]
    labels: np.ndarray
    scores: np.ndarray
    images: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    threshold: float


@pytest.fixture
def data() -> Synthetic:
    """5 normal + 5 anomalous images; each anomalous one has a bright square defect."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 5 + [1] * 5)
    images = np.clip(0.5 + 0.1 * rng.standard_normal((N, H, W, 3)), 0, 1)
    masks = np.zeros((N, H, W), bool)
    maps = rng.random((N, H, W)).astype(np.float32) * 0.5
    for i in range(5, N):
        y, x = rng.integers(2, 22, 2)
        masks[i, y : y + 8, x : x + 8] = True
        images[i][masks[i]] = (0.9, 0.2, 0.1)
        maps[i][masks[i]] += rng.uniform(0.1, 1.0)
    scores = maps.reshape(N, -1).max(axis=1).astype(np.float64)
    names = [f"good/{i:03d}.png" for i in range(5)] + [f"crack/{i:03d}.png" for i in range(5, N)]
    # The most suspicious normal image (shown as a hard case) gets a name that needs escaping.
    names[int(np.argmax(scores[:5]))] = 'good/<b>&amp; odd"name.png'
    types = ["good"] * 5 + ["crack", "hole"] * 2 + ["crack"]
    return Synthetic(names, types, labels, scores, images, maps, masks, threshold=0.52)


def _links(html_text: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html_text)


def _assert_links_exist(report: Path) -> list[str]:
    links = _links(report.read_text(encoding="utf-8"))
    assert links
    for link in links:
        assert (report.parent / link).is_file(), link
    return links


def _case_figures(out: Path) -> list[Path]:
    """The full case figures of a report (not their thumbnails nor the preview)."""
    return sorted(p for p in (out / "cases").glob("0*.png") if not p.name.endswith("_thumb.png"))


def _assert_png(path: Path, max_inches: tuple[float, float] = (11, 6)) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 100 < w <= max_inches[0] * 100 and 100 < h <= max_inches[1] * 100  # dpi ~100


# --------------------------------------------------------------------------- overlays
def test_overlay_heatmap_uses_fixed_range() -> None:
    image = np.full((4, 5, 3), 0.5)
    low = overlay_heatmap(image, np.full((4, 5), -3.0), vmin=0.0, vmax=1.0, alpha=1.0)
    high = overlay_heatmap(image, np.full((4, 5), 9.0), vmin=0.0, vmax=1.0, alpha=1.0)
    assert low.dtype == np.uint8 and low.shape == (4, 5, 3)
    assert low[0, 0, 2] > low[0, 0, 0]  # jet bottom = blue (clipped below vmin)
    assert high[0, 0, 0] > high[0, 0, 2]  # jet top = red (clipped above vmax)
    # alpha 0 returns the image itself; a grey (H, W) image is accepted.
    plain = overlay_heatmap(np.full((4, 5), 0.5), np.zeros((4, 5)), 0.0, 1.0, alpha=0.0)
    assert np.all(plain == 128)
    with pytest.raises(ValueError):
        overlay_heatmap(image, np.zeros((4, 4)), 0.0, 1.0)
    with pytest.raises(ValueError):
        overlay_heatmap(image, np.zeros((4, 5)), 1.0, 1.0)


def test_draw_mask_contours_draws_outline_only() -> None:
    rgb = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = draw_mask_contours(rgb, mask, (0, 255, 0))
    assert rgb.max() == 0  # input untouched
    green = np.all(out == (0, 255, 0), axis=2)
    assert green[5, 10] and green[10, 5] and green[14, 10]  # on the border
    assert not green[10, 10] and not green[0, 0]  # not inside, not far outside
    assert np.array_equal(draw_mask_contours(rgb, np.zeros((20, 20), bool)), rgb)
    thin = np.all(draw_mask_contours(rgb, mask, (0, 255, 0), width=1) == (0, 255, 0), axis=2)
    assert thin.sum() == 36  # 1 px ring just inside a 10 x 10 square
    wide = np.all(draw_mask_contours(rgb, mask, (0, 255, 0), width=4) == (0, 255, 0), axis=2)
    assert wide.sum() > green.sum() and not wide[10, 10]


def test_heatmap_range(data: Synthetic) -> None:
    vmin, vmax = heatmap_range(data.maps, data.labels)
    assert vmin == pytest.approx(np.percentile(data.maps[:5], 1.0))
    assert vmax == pytest.approx(np.percentile(data.maps, 99.9))
    assert heatmap_range(np.ones((2, 4, 4)))[1] > 1.0  # constant maps still give a range


# --------------------------------------------------------------------------- plots
def test_plots_are_written(tmp_path: Path, data: Synthetic) -> None:
    roc = plot_roc(data.labels, data.scores, tmp_path / "roc.png", threshold=data.threshold)
    hist = plot_score_histogram(data.labels, data.scores, data.threshold, tmp_path / "h.png")
    loss = plot_loss_curves({"train": [1.0, 0.5, 0.3], "validation": [1.1, 0.7, 0.6]},
                            tmp_path / "sub" / "loss.png")
    for path in (roc, hist, loss):
        _assert_png(path)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_histogram_with_a_single_class(tmp_path: Path, data: Synthetic) -> None:
    normal_only = plot_score_histogram(np.zeros(5, int), data.scores[:5], 0.4, tmp_path / "n.png")
    anomalous_only = plot_score_histogram(np.ones(5, int), data.scores[5:], 0.4, tmp_path / "a.png")
    _assert_png(normal_only)
    _assert_png(anomalous_only)
    with pytest.raises(ValueError):
        plot_roc(np.zeros(5, int), data.scores[:5], tmp_path / "roc.png")


def test_loss_curves_reject_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_loss_curves({}, tmp_path / "loss.png")


# --------------------------------------------------------------------------- full report
def test_full_report(tmp_path: Path, data: Synthetic) -> None:
    loaded: list[int] = []

    def load_image(i: int) -> np.ndarray:
        loaded.append(i)
        return data.images[i]

    metrics = evaluate(data.labels, data.scores, data.threshold, data.masks, data.maps)
    metrics["seconds_per_image"] = 0.0123  # extra keys are printed too
    report = write_test_report(
        tmp_path / "out", names=data.names, defect_types=data.defect_types, labels=data.labels,
        scores=data.scores, threshold=data.threshold, metrics=metrics, load_image=load_image,
        maps=data.maps, masks=data.masks, pixel_threshold=0.5,
        loss_curves={"train": [1.0, 0.6, 0.4]}, n_cases=2,
    )
    out = tmp_path / "out"
    assert report == out / "report.html"
    for name in ("scores.csv", "roc.png", "score_histogram.png", "loss_curves.png"):
        assert (out / name).is_file(), name

    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["name", "defect_type", "label", "score", "predicted", "correct"]
    assert [r["name"] for r in rows] == data.names
    for r, label, score in zip(rows, data.labels, data.scores):
        assert int(r["label"]) == label and float(r["score"]) == score
        assert int(r["predicted"]) == int(score > data.threshold)
        assert int(r["correct"]) == int(int(r["predicted"]) == label)

    text = report.read_text(encoding="utf-8")
    links = _assert_links_exist(report)
    figures = sorted((out / "cases").glob("0*.png"))
    full = [f for f in figures if not f.name.endswith("_thumb.png")]
    thumbs = [f for f in figures if f.name.endswith("_thumb.png")]
    # 2 low anomalous + 2 high normal + 2 high anomalous, all distinct here: a figure and a thumbnail each.
    assert len(full) == len(thumbs) == 6 and sorted(loaded) == sorted(set(loaded)) and len(loaded) == 6
    assert {f"cases/{c.name}" for c in figures} <= set(links)
    for c in full:
        _assert_png(c)
    for c in thumbs:
        with Image.open(c) as im:
            assert im.size == (H, W)  # 32 px images are not enlarged
    # The preview (for index pages) is the thumbnail of the highest-scoring anomalous image.
    best = int(np.argmax(np.where(data.labels == 1, data.scores, -np.inf)))
    assert (out / "cases" / "preview.png").read_bytes() == next(c for c in thumbs if c.name.startswith(f"{best:05d}_")).read_bytes()
    for name in ("precision_recall.png", "pixel_roc.png", "pro_curve.png"):
        assert f'src="{name}"' in text
    # Every metric is in a table row tagged with its metrics.json key; the counts are in the confusion table.
    for key in metrics:
        assert f'data-key="{key}"' in text, key
    assert "seconds_per_image" in text  # unknown keys go into the "Other" table
    assert '<b>&amp; odd"name' not in text and "&lt;b&gt;&amp;amp; odd&#34;name.png" in text
    assert "fixed colour range" in text
    assert "Lowest-scoring anomalous images" in text and "Clearest detections" in text
    # Per-type table: the reference row and one row per defect type with its AUROC against the normal images.
    rows = _per_type_rows(text)
    assert list(rows) == ["good", "crack", "hole"]
    crack = (data.labels == 0) | (np.array(data.defect_types) == "crack")
    assert rows["crack"][3] == f"{roc_auc_score(data.labels[crack], data.scores[crack]):.3f}"
    assert "Warnings" not in text  # no warnings given, no box


def _per_type_rows(text: str) -> dict[str, list[str]]:
    """{defect type: its cells as text} from the report's per-defect-type table."""
    body = text[text.index('<table class="per-type">'):]
    body = body[:body.index("</table>")]
    rows = {}
    for match in re.finditer(r'<tr data-defect-type="([^"]*)">(.*?)</tr>', body, flags=re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", match.group(2), flags=re.S)]
        rows[html.unescape(match.group(1))] = cells[1:]
    return rows


def test_report_without_maps_or_masks(tmp_path: Path, data: Synthetic) -> None:
    report = write_test_report(
        tmp_path, names=data.names, defect_types=data.defect_types, labels=data.labels,
        scores=data.scores, threshold=data.threshold,
        metrics=evaluate(data.labels, data.scores, data.threshold),
        load_image=lambda i: data.images[i], n_cases=1,
    )
    text = report.read_text(encoding="utf-8")
    assert "No heatmaps" in text and "No ground-truth masks" in text
    _assert_links_exist(report)
    assert len(_case_figures(tmp_path)) == 3
    assert "No pixel curves" in text and not (tmp_path / "pixel_roc.png").exists()


def test_report_with_only_normal_images(tmp_path: Path, data: Synthetic) -> None:
    labels = np.zeros(5, int)
    report = write_test_report(
        tmp_path, names=data.names[:5], defect_types=data.defect_types[:5], labels=labels,
        scores=data.scores[:5], threshold=0.45,
        metrics=evaluate(labels, data.scores[:5], 0.45), load_image=lambda i: data.images[i],
        maps=data.maps[:5], masks=data.masks[:5], n_cases=2,
    )
    text = report.read_text(encoding="utf-8")
    assert not (tmp_path / "roc.png").exists()
    assert (tmp_path / "score_histogram.png").is_file()
    assert "n/a" in text and "no anomalous images" in text
    _assert_links_exist(report)


def test_rerun_replaces_old_report(tmp_path: Path, data: Synthetic) -> None:
    kwargs = dict(names=data.names, defect_types=data.defect_types, labels=data.labels,
                  scores=data.scores, threshold=data.threshold, metrics={},
                  load_image=lambda i: data.images[i], maps=data.maps)
    write_test_report(tmp_path, n_cases=1, **kwargs)
    assert len(_case_figures(tmp_path)) == 3
    write_test_report(tmp_path, n_cases=0, **kwargs)
    # The first run's case figures are gone, and every link of the new report resolves.
    assert not list((tmp_path / "cases").glob("*.png"))
    _assert_links_exist(tmp_path / "report.html")


def test_failure_leaves_no_report(tmp_path: Path, data: Synthetic) -> None:
    with pytest.raises(ValueError, match="resolution"):
        write_test_report(
            tmp_path, names=data.names, defect_types=data.defect_types, labels=data.labels,
            scores=data.scores, threshold=data.threshold, metrics={},
            load_image=lambda i: np.zeros((16, 16, 3)), maps=data.maps, n_cases=1,
        )
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(ValueError):
        write_test_report(
            tmp_path, names=data.names[:3], defect_types=data.defect_types, labels=data.labels,
            scores=data.scores, threshold=0.5, metrics={}, load_image=lambda i: data.images[i],
        )


def test_an_error_while_drawing_the_curves_reaches_the_caller(tmp_path: Path, data: Synthetic) -> None:
    """The curves are drawn in a forked process: its error is raised here, and no report is left behind."""
    with pytest.raises(ValueError, match="no loss values"):
        write_test_report(
            tmp_path, names=data.names, defect_types=data.defect_types, labels=data.labels, scores=data.scores,
            threshold=data.threshold, metrics={}, load_image=lambda i: data.images[i], maps=data.maps,
            masks=data.masks, loss_curves={"train": []}, n_cases=1,
        )
    assert not (tmp_path / "report.html").exists()


def test_the_curves_are_drawn_here_when_their_process_dies(tmp_path: Path, data: Synthetic, monkeypatch) -> None:
    """A forked drawing process that dies without an answer (killed, out of memory): the curves are drawn in
    this process instead, and the report is complete."""
    import os

    import anomalens.report.html_report as html_report

    parent = os.getpid()
    draw = html_report.draw_figures

    def dies_when_forked(*args):
        if os.getpid() != parent:
            os._exit(1)
        return draw(*args)

    monkeypatch.setattr(html_report, "draw_figures", dies_when_forked)
    report = write_test_report(
        tmp_path, names=data.names, defect_types=data.defect_types, labels=data.labels, scores=data.scores,
        threshold=data.threshold, metrics={}, load_image=lambda i: data.images[i], maps=data.maps, masks=data.masks,
        n_cases=1,
    )
    _assert_links_exist(report)
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "pro_curve.png").is_file()


def test_a_drawing_process_ends_with_a_command_killed_by_kill_9(tmp_path: Path) -> None:
    """kill -9 of `anomalens test` mid-report: its forked drawing process ends too (it went on drawing, holding the
    output folder's lock, into a staging folder no one would commit)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from anomalens.cores import available_cores

    if available_cores() < 2:
        pytest.skip("one core: the figures are drawn in place, no process is forked")
    pid_file = tmp_path / "child.pid"
    code = ("import os, sys, time\nfrom anomalens.report.forked import ForkedCall\n"
            "def draw(path):\n    open(path + '.tmp', 'w').write(str(os.getpid())); os.rename(path + '.tmp', path)\n"
            "    time.sleep(120)\n"
            f"call = ForkedCall(draw, {str(pid_file)!r})\ntime.sleep(120)\n")
    command = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file():
            assert command.poll() is None and time.monotonic() < deadline, "the drawing process never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
    finally:
        command.send_signal(signal.SIGKILL)
        command.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 2
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the drawing process outlived the killed command")


def test_importing_the_report_leaves_matplotlib_unloaded() -> None:
    """`anomalens test` draws its curves in a forked process: the package itself does not load matplotlib."""
    import subprocess
    import sys

    code = "import sys, anomalens.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_report_with_reconstructions_shows_triplets(tmp_path: Path, data: Synthetic) -> None:
    """Autoencoders: each case figure gets a reconstruction panel (input / reconstruction / residual)."""
    calls: list[list[int]] = []

    def load_reconstructions(indices: list[int]) -> list[np.ndarray]:
        calls.append(list(indices))
        return [data.images[i].mean(axis=2) for i in indices]  # grayscale (H, W), as a 1-channel autoencoder gives

    kw = dict(names=data.names, defect_types=data.defect_types, labels=data.labels, scores=data.scores,
              threshold=data.threshold, metrics=evaluate(data.labels, data.scores, data.threshold),
              load_image=lambda i: data.images[i], maps=data.maps, masks=data.masks, pixel_threshold=0.5, n_cases=1)
    write_test_report(tmp_path / "plain", **kw)
    write_test_report(tmp_path / "triplet", **kw, load_reconstructions=load_reconstructions)
    plain = _case_figures(tmp_path / "plain")
    triplet = _case_figures(tmp_path / "triplet")
    # Only the images shown are reconstructed, all in one call (a model batches its work).
    assert len(calls) == 1
    assert [p.name for p in plain] == [p.name for p in triplet] and sorted(calls[0]) == sorted(
        int(p.name.split("_")[0]) for p in triplet)
    for a, b in zip(plain, triplet):
        with Image.open(a) as pa, Image.open(b) as pb:
            assert pb.size[0] - pa.size[0] >= CASE_PANEL_PX[0]  # one more panel (32 px images are enlarged)
            assert pb.size[1] == pa.size[1]
    with pytest.raises(ValueError, match="reconstruction of shape"):
        write_test_report(tmp_path / "bad", **kw, load_reconstructions=lambda idx: [np.zeros((8, 8))] * len(idx))
    with pytest.raises(ValueError, match="returned 0 images"):
        write_test_report(tmp_path / "short", **kw, load_reconstructions=lambda idx: [])


# --------------------------------------------------------------------------- per defect type, pixel curves
def test_per_defect_type_metrics_equal_sklearn_on_the_subsets(data: Synthetic) -> None:
    flagged = data.scores > data.threshold
    per_type = per_defect_type_metrics(data.labels, data.scores, data.defect_types, flagged, data.masks, data.maps)
    types = np.array(data.defect_types)
    assert list(per_type) == ["crack", "hole"]  # the defect types, never the normal reference
    for name, row in per_type.items():
        of_type = types == name
        subset = (data.labels == 0) | of_type
        assert row["n_images"] == of_type.sum()
        assert row["image_auroc"] == pytest.approx(roc_auc_score(data.labels[subset], data.scores[subset]), abs=1e-12)
        assert row["pixel_auroc"] == pytest.approx(
            roc_auc_score(data.masks[subset].ravel(), data.maps[subset].ravel()), abs=1e-12)
        assert row["aupro"] == pytest.approx(aupro(data.masks[subset], data.maps[subset]), abs=1e-12)
        assert row["detected"] == pytest.approx(flagged[of_type].mean())
        assert row["median_score"] == pytest.approx(np.median(data.scores[of_type]))
    # Without masks: image-level only; without normal images the AUROC is undefined (NaN), not an error.
    image_only = per_defect_type_metrics(data.labels, data.scores, data.defect_types, flagged)
    assert set(image_only["hole"]) == {"n_images", "image_auroc", "detected", "median_score"}
    only_defects = per_defect_type_metrics(data.labels[5:], data.scores[5:], data.defect_types[5:], flagged[5:])
    assert np.isnan(only_defects["crack"]["image_auroc"])


def test_per_defect_type_pixel_metrics_are_exactly_those_of_the_subsets(data: Synthetic, monkeypatch) -> None:
    """Bit for bit what anomalens.metrics gives on (normal + that type), though the normal pixels are sorted
    once and the types measured in threads; maps with many ties, and a normal image carrying mask pixels."""
    import anomalens.report.breakdown as breakdown

    maps = np.round(data.maps * 8) / 8  # few distinct values: ties everywhere
    masks = data.masks.copy()
    masks[0, :3, :3] = True  # a "normal" image with a marked region still counts its pixels as the metrics do
    types = np.array(data.defect_types)
    flagged = data.scores > data.threshold
    threaded = per_defect_type_metrics(data.labels, data.scores, data.defect_types, flagged, masks, maps)
    monkeypatch.setattr(breakdown, "available_cores", lambda: 1)
    single = per_defect_type_metrics(data.labels, data.scores, data.defect_types, flagged, masks, maps)
    assert threaded == single
    for name, row in threaded.items():
        subset = (data.labels == 0) | (types == name)
        assert row["pixel_auroc"] == pixel_auroc(masks[subset], maps[subset])
        assert row["aupro"] == aupro(masks[subset], maps[subset])
    # A type without a defect pixel: its pixel AUROC is undefined, as on the subset.
    no_pixels = per_defect_type_metrics(data.labels, data.scores, data.defect_types, flagged,
                                        np.zeros_like(data.masks), maps)
    assert all(np.isnan(row["pixel_auroc"]) and np.isnan(row["aupro"]) for row in no_pixels.values())


def test_pixel_curves_are_exact_at_every_map_value(data: Synthetic) -> None:
    exact = pixel_curves(data.masks, data.maps, thresholds=np.unique(data.maps))
    assert exact.fpr[0] == exact.tpr[0] == exact.pro[0] == 0.0 and exact.fpr[-1] == exact.tpr[-1] == 1.0
    assert np.all(np.diff(exact.fpr) >= 0) and np.all(np.diff(exact.pro) >= -1e-12)
    # The area under the exact ROC curve is the pixel AUROC; under the PRO curve up to FPR 0.3, AUPRO.
    assert np.trapezoid(exact.tpr, exact.fpr) == pytest.approx(pixel_auroc(data.masks, data.maps), abs=1e-9)
    past = int(np.argmax(exact.fpr > 0.3))
    fpr = np.append(exact.fpr[:past], 0.3)
    pro = np.append(exact.pro[:past], np.interp(0.3, exact.fpr[past - 1:past + 1], exact.pro[past - 1:past + 1]))
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(aupro(data.masks, data.maps), abs=1e-9)
    # The default sampling (a few hundred quantiles) draws nearly the same curve.
    sampled = pixel_curves(data.masks, data.maps)
    assert sampled.thresholds.size < np.unique(data.maps).size
    assert np.trapezoid(sampled.tpr, sampled.fpr) == pytest.approx(pixel_auroc(data.masks, data.maps), abs=0.01)
    assert pixel_curves(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4))) is None  # no defect pixel: no curve


def test_new_plots_are_written(tmp_path: Path, data: Synthetic) -> None:
    curves = pixel_curves(data.masks, data.maps)
    for path in (plot_precision_recall(data.labels, data.scores, tmp_path / "pr.png", threshold=data.threshold),
                 plot_pixel_roc(curves, tmp_path / "proc.png", auroc=0.9),
                 plot_pro_curve(curves, tmp_path / "pro.png", aupro=float("nan"))):
        _assert_png(path, max_inches=(4, 4))  # small: five side by side on one screen
    with pytest.raises(ValueError):
        plot_precision_recall(np.zeros(5, int), data.scores[:5], tmp_path / "x.png")


# --------------------------------------------------------------------------- escaping, warnings
def test_template_escapes_names_and_warnings(tmp_path: Path, data: Synthetic) -> None:
    types = ["good"] * 5 + ["<script>"] * 3 + ["hole"] * 2
    hostile = "<img src=x onerror=alert(1)>"
    report = write_test_report(
        tmp_path, names=data.names, defect_types=types, labels=data.labels, scores=data.scores,
        threshold=data.threshold, metrics={**evaluate(data.labels, data.scores, data.threshold), "warnings": [hostile]},
        load_image=lambda i: data.images[i], maps=data.maps, masks=data.masks, n_cases=2,
    )
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert "&lt;script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<script>" in _per_type_rows(text)  # shown as the text of its row
    assert 'class="warnings"' in text


def _decision(n_normal: int, folds: int = 5, rate: float = 0.01) -> DecisionRule:
    scores = np.random.default_rng(0).normal(size=n_normal)
    return DecisionRule.from_normal_scores(scores, None, rate, folds=folds)


def test_report_warnings() -> None:
    healthy = {"n_images": 60, "n_anomalous": 30, "tp": 25, "fn": 5, "fp": 0, "tn": 30}
    assert report_warnings(healthy, _decision(100)) == []
    weak = report_warnings(healthy, _decision(12, folds=0))
    assert any("only 12 normal score" in w for w in weak) and any("training images themselves" in w for w in weak)
    # 5 of 20 normal images flagged is far above a 1 % false-alarm rate (binomial test); 1 of 30 is not.
    alarms = report_warnings({**healthy, "fp": 5, "tn": 15, "n_images": 50}, _decision(100))
    assert len(alarms) == 1 and alarms[0].startswith("5 of 20 normal test images are flagged (25%)")
    assert report_warnings({**healthy, "fp": 1, "tn": 29}, _decision(100)) == []
    nothing_found = report_warnings({**healthy, "tp": 0, "fn": 30}, _decision(100))
    assert any("No defective image is flagged" in w for w in nothing_found)
    few = report_warnings({"n_images": 7, "n_anomalous": 3, "undefined": {"pixel_auroc": "no mask", "aupro": "no mask"}})
    assert any(w.startswith("Only 3 defective test image(s)") for w in few)
    assert any(w.startswith("Only 4 normal test image(s)") for w in few)
    assert "Undefined on this test set (no mask): pixel AUROC, AUPRO." in few
    calibrated = _decision(100).with_changes(source="f1", evidence={"n_labelled": 20, "n_anomalous": 3})
    assert any("calibrated on only 3 defective" in w for w in report_warnings(healthy, calibrated))


# --------------------------------------------------------------------------- annotated heatmaps, thumbnails
def test_annotate_heatmap_adds_scale_bar_and_text_strip() -> None:
    overlay = np.full((120, 160, 3), 128, np.uint8)
    kwargs = dict(score=3.21, normalized_score=0.87, threshold=2.5, vmin=0.0, vmax=5.0, pixel_threshold=2.5)
    flagged = annotate_heatmap(overlay, anomalous=True, **kwargs)
    height, width = flagged.shape[:2]
    assert flagged.dtype == np.uint8 and height > 120 and width > 160
    assert np.array_equal(flagged[:120, :160], overlay)  # the picture itself is untouched
    bar = flagged[:120, 160:].astype(int)
    coloured = np.flatnonzero(np.abs(bar[0, :, 0] - bar[0, :, 2]) > 100)  # the bar's columns (the rest is white)
    assert coloured.size >= 8
    top, bottom = bar[0, coloured[0]], bar[-1, coloured[0]]
    assert top[0] > top[2] + 100 and bottom[2] > bottom[0] + 100  # jet: vmax red on top, vmin blue below
    assert len({tuple(c) for c in bar[:, coloured[0]]}) > 30  # a gradient, not a few blocks
    strip = flagged[120:]
    assert (strip.sum(axis=2) < 200).sum() > 50  # dark text pixels
    assert (np.abs(strip.astype(int) - (176, 0, 32)).sum(axis=2) < 60).any()  # the verdict in red
    passed = annotate_heatmap(overlay, anomalous=False, **kwargs)
    assert not (np.abs(passed[120:].astype(int) - (176, 0, 32)).sum(axis=2) < 60).any()
    # A narrow picture wraps the text onto more lines instead of cutting it.
    narrow = annotate_heatmap(np.full((40, 40, 3), 128, np.uint8), anomalous=True, **kwargs)
    assert narrow.shape[0] - 40 > height - 120
    with pytest.raises(ValueError):
        annotate_heatmap(overlay, anomalous=True, **{**kwargs, "vmax": 0.0})


def test_case_thumbnail_scales_down_and_outlines() -> None:
    image = np.full((300, 400, 3), 0.5)
    amap = np.zeros((300, 400))
    truth = np.zeros((300, 400), bool)
    truth[100:200, 100:200] = True
    thumb = case_thumbnail(image, amap, 0.0, 1.0, predicted_mask=truth, true_mask=None, size=200)
    assert thumb.shape == (150, 200, 3) and thumb.dtype == np.uint8
    assert np.all(thumb[50, 60] == 255)  # the white outline of the predicted region, scaled with the picture
    plain = case_thumbnail(image, None, None, None, true_mask=truth, size=200)
    assert np.all(plain[50, 60] == (0, 255, 0)) and np.all(plain[0, 0] == 128)


def _ink(picture: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> np.ndarray:
    """Where ``picture`` has about ``colour``."""
    return np.abs(picture.astype(int) - colour).sum(axis=2) < tolerance


def test_case_figure_panels_title_and_outlines() -> None:
    rng = np.random.default_rng(0)
    image = np.clip(0.5 + 0.05 * rng.standard_normal((256, 256, 3)), 0, 1)
    amap = np.zeros((256, 256))
    amap[100:140, 100:140] = 1.0
    truth = amap > 0.5
    kwargs = dict(amap=amap, vmin=0.0, vmax=1.0, predicted_mask=amap > 0.5, true_mask=truth, pixel_threshold=0.5)
    right = case_figure(image, title="good/001.png · good\nscore 0.2 ≤ threshold 0.5 → correctly passed", **kwargs)
    wrong = case_figure(image, title="good/001.png · good\nscore 0.2 ≤ threshold 0.5 → correctly passed",
                        wrong=True, **kwargs)
    assert right.dtype == np.uint8 and right.shape == wrong.shape
    height, width = right.shape[:2]
    # Three 256 px panels (shown as they are) with the colour scale, and a two-line title above them.
    assert 3 * 256 + 100 < width < 1100 and 256 + 60 < height < 420
    title = slice(0, 45)
    assert not _ink(right[title], (176, 0, 32)).any() and (right[title].sum(axis=2) < 200).sum() > 100
    assert _ink(wrong[title], (176, 0, 32)).sum() > 100  # a wrong verdict: the title in red
    # The predicted defect is outlined in white on the heatmap, the ground truth in green on the input.
    heat = _ink(right, (64, 64, 128), 20)  # the grey input blended half and half with jet's lowest blue
    rows, cols = np.flatnonzero(heat.any(axis=1)), np.flatnonzero(heat.any(axis=0))
    panel = right[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    assert panel.shape[:2] == (256, 256) and (panel == 255).all(axis=2).sum() > 4 * 40
    assert _ink(right, (0, 255, 0), 30).sum() > 4 * 40 and not _ink(panel, (0, 255, 0), 30).any()
    # The colour scale: jet, red at the top, blue at the bottom, beside the map panel.
    reds, blues = _ink(right, (128, 0, 0), 40), _ink(right, (0, 0, 128), 40)
    assert reds.any() and blues.any() and np.flatnonzero(reds.any(axis=1))[0] < np.flatnonzero(blues.any(axis=1))[-1]


def test_case_figure_sizes_and_autoencoder_triplet() -> None:
    def figure(size: int, **extra) -> np.ndarray:
        image = np.full((size, size), 0.5)
        return case_figure(image, title="x", amap=np.zeros((size, size)), vmin=0.0, vmax=1.0,
                           true_mask=np.zeros((size, size), bool), **extra)

    small, native, large = figure(28), figure(256), figure(2048)
    # 28 px: enlarged by a whole factor (7 x 28 = 196); 2048 px: scaled down to the upper bound.
    assert small.shape[0] - native.shape[0] == 196 - 256
    assert large.shape[0] - native.shape[0] == CASE_PANEL_PX[1] - 256
    triplet = figure(256, reconstruction=np.full((256, 256, 1), 0.4))
    assert triplet.shape[0] == native.shape[0] and triplet.shape[1] - native.shape[1] >= 256  # one more panel
    plain = case_figure(np.full((64, 48, 3), 0.5), title="no map, no mask")  # a single panel: the input
    assert plain.shape[1] < 400
    with pytest.raises(ValueError, match="reconstruction of shape"):
        figure(256, reconstruction=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="vmin and vmax"):
        case_figure(np.zeros((8, 8)), title="x", amap=np.zeros((8, 8)))


# --------------------------------------------------------------------------- anomalens test / predict / demo
def test_test_run_writes_per_defect_type_warnings_and_an_escaped_report(run, category, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(category, data)
    first = sorted(p.name for p in (data / "test").iterdir() if p.name != "good")[0]
    for parent in ("test", "ground_truth"):  # a defect folder whose name is markup
        (data / parent / first).rename(data / parent / "<script>")
    out = tmp_path / "report"
    metrics = workflow.test_run(run, data, out_dir=out, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["image_size"] == [64, 64] and saved["device"] == "cpu" and saved["backbone"]
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    types = np.array([r["defect_type"] for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    assert set(saved["per_defect_type"]) == set(types[y == 1]) and "<script>" in saved["per_defect_type"]
    for name, row in saved["per_defect_type"].items():
        subset = (y == 0) | (types == name)
        assert row["image_auroc"] == pytest.approx(roc_auc_score(y[subset], s[subset]))
        assert 0 <= row["pixel_auroc"] <= 1 and 0 <= row["aupro"] <= 1
    # 12 training images: the threshold rests on fewer than 30 normal scores, and the test set is tiny.
    assert any("normal score(s)" in w for w in saved["warnings"]) and saved["warnings"] == metrics["warnings"]
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "&lt;script&gt;" in text
    assert 'class="warnings"' in text and html.escape(saved["warnings"][0], quote=True) in text
    _assert_links_exist(out / "report.html")
    for name in ("roc.png", "precision_recall.png", "pixel_roc.png", "pro_curve.png", "cases/preview.png"):
        assert (out / name).is_file(), name


def test_predict_heatmaps_carry_score_text_and_colour_bar(run, category, tmp_path: Path) -> None:
    images = sorted((category / "test").rglob("*.png"))[:4]
    rows = predict_images(run, images, tmp_path / "pred", heatmaps="all", progress=False, workers=0)
    assert len(rows) == 4
    for row in rows:
        with Image.open(row["image"]) as picture, Image.open(tmp_path / "pred" / row["heatmap"]) as heatmap, \
                Image.open(tmp_path / "pred" / row["mask"]) as mask:
            assert mask.size == picture.size  # the mask stays pixel for pixel on the image
            assert heatmap.width > picture.width and heatmap.height > picture.height  # bar right, text below
            strip = np.asarray(heatmap.convert("RGB"))[picture.height:]
            assert (strip.sum(axis=2) < 200).any()  # the score text


def test_demo_index_shows_a_heatmap_per_category_and_the_machine(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "demo"
    results = run_demo(out, sources=["coffee"], progress=False, n_train=16, n_test_good=4, n_test_defect=4,
                       image_size=64, params={"image_size": 64, "batch_size": 8, "device": "cpu"})
    text = (out / "index.html").read_text(encoding="utf-8")
    assert '<img src="runs/coffee/cases/preview.png"' in text and (out / "runs/coffee/cases/preview.png").is_file()
    assert '<a href="runs/coffee/report.html">coffee</a>' in text
    for heading in ("Image AUROC", "Pixel AUROC", "AUPRO", "Defects flagged", "Normal passed"):
        assert f">{heading}</th>" in text
    assert f"{results['coffee']['image_auroc']:.3f}" in text
    assert torch.__version__ in text and "<dt>CPU</dt>" in text and "<dt>Date</dt>" in text
