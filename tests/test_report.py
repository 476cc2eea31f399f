"""Tests of anomalens.report on a small synthetic test set (10 images of 32 x 32)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.metrics import evaluate
from anomalens.report import (
    draw_mask_contours,
    heatmap_range,
    overlay_heatmap,
    plot_loss_curves,
    plot_roc,
    plot_score_histogram,
    write_test_report,
)

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
    cases = sorted((out / "cases").glob("*.png"))
    # 2 low anomalous + 2 high normal + 2 high anomalous, all distinct here.
    assert len(cases) == 6 and sorted(loaded) == sorted(set(loaded)) and len(loaded) == 6
    assert {f"cases/{c.name}" for c in cases} <= set(links)
    for c in cases:
        _assert_png(c)
    for key in metrics:
        assert f"<td>{key}</td>" in text
    assert "seconds_per_image" in text
    assert '<b>&amp; odd"name' not in text and "&lt;b&gt;&amp;amp; odd&quot;name.png" in text
    assert "fixed colour range" in text
    assert "Hardest cases" in text and "Clearest detections" in text


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
    assert len(list((tmp_path / "cases").glob("*.png"))) == 3


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
    assert len(list((tmp_path / "cases").glob("*.png"))) == 3
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
    plain = sorted((tmp_path / "plain" / "cases").glob("*.png"))
    triplet = sorted((tmp_path / "triplet" / "cases").glob("*.png"))
    # Only the images shown are reconstructed, all in one call (a model batches its work).
    assert len(calls) == 1
    assert [p.name for p in plain] == [p.name for p in triplet] and sorted(calls[0]) == sorted(
        int(p.name.split("_")[0]) for p in triplet)
    for a, b in zip(plain, triplet):
        with Image.open(a) as pa, Image.open(b) as pb:
            assert pb.size[0] - pa.size[0] >= 250  # one more 2.5-inch panel at ~100 dpi
            assert pb.size[1] == pa.size[1]
    with pytest.raises(ValueError, match="reconstruction of shape"):
        write_test_report(tmp_path / "bad", **kw, load_reconstructions=lambda idx: [np.zeros((8, 8))] * len(idx))
    with pytest.raises(ValueError, match="returned 0 images"):
        write_test_report(tmp_path / "short", **kw, load_reconstructions=lambda idx: [])
