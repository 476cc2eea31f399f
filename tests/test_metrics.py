"""Tests of anomalens.metrics on small hand-checked cases and against references."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import roc_auc_score

from anomalens.metrics import (
    SaturatedRegion,
    auc_spro,
    aupro,
    evaluate,
    f1_max,
    image_aupr,
    image_auroc,
    pixel_auroc,
    threshold_metrics,
)

# Example used in several tests: anomalous images score 0.35 and 0.8, normal 0.1 and 0.4.
LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


# --------------------------------------------------------------------------- image level
def test_image_auroc_hand_checked() -> None:
    # Pairs (anomalous > normal): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4.
    assert image_auroc(LABELS, SCORES) == pytest.approx(0.75)


def test_image_auroc_separated_and_inverted() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.9, 0.8, 0.3, 0.1]) == 0.0
    # Ties between classes count one half.
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5


def test_image_aupr_hand_checked() -> None:
    # Descending: 0.8 (anom) P=1 R=.5 ; 0.4 (normal) ; 0.35 (anom) P=2/3 R=1.
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert image_aupr(LABELS, SCORES) == pytest.approx(5 / 6)


def test_one_class_gives_nan() -> None:
    assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(image_aupr([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(image_auroc([1, 1], [0.1, 0.2]))
    assert math.isnan(image_aupr([1, 1], [0.1, 0.2]))
    assert all(math.isnan(v) for v in f1_max([0, 0], [0.1, 0.2]))


def test_f1_max_hand_checked() -> None:
    # Flag {0.8}: F1 2/3; {0.8, 0.4}: 1/2; {0.8, 0.4, 0.35}: P 2/3 R 1 -> 0.8; all: 2/3.
    f1, thr = f1_max(LABELS, SCORES)
    assert f1 == pytest.approx(0.8)
    assert thr == pytest.approx(0.225)  # midway between 0.35 (flagged) and 0.1 (not)
    assert threshold_metrics(LABELS, SCORES, thr)["f1"] == pytest.approx(f1)


def test_f1_max_threshold_reproduces_f1_with_strict_rule() -> None:
    # Everything flagged is best here -> the threshold must lie below the minimum score.
    f1, thr = f1_max([0, 1, 1], [0.5, 0.5, 0.5])
    assert f1 == pytest.approx(0.8)
    assert thr < 0.5
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        labels[0] = 1
        scores = np.round(rng.random(30), 1)  # many ties
        f1, thr = f1_max(labels, scores)
        assert threshold_metrics(labels, scores, thr)["f1"] == pytest.approx(f1)


def test_threshold_metrics_counts() -> None:
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.7, 0.4, 0.9]
    m = threshold_metrics(labels, scores, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert all(type(m[k]) is int for k in ("tp", "fp", "tn", "fn"))
    assert m["tpr"] == pytest.approx(2 / 3)
    assert m["tnr"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx(7 / 12)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["threshold"] == 0.5


def test_threshold_rule_is_strictly_greater() -> None:
    m = threshold_metrics([1, 0], [0.5, 0.2], 0.5)
    assert m["tp"] == 0 and m["fn"] == 1


def test_threshold_metrics_missing_class_is_nan_not_error() -> None:
    only_normal = threshold_metrics([0, 0, 0], [0.1, 0.2, 0.9], 0.5)
    assert (only_normal["tn"], only_normal["fp"]) == (2, 1)
    assert only_normal["tnr"] == pytest.approx(2 / 3)
    assert math.isnan(only_normal["tpr"]) and math.isnan(only_normal["balanced_accuracy"])
    assert only_normal["precision"] == 0.0 and only_normal["f1"] == 0.0  # one alarm, wrong

    quiet_normal = threshold_metrics([0, 0], [0.1, 0.2], 0.5)
    assert quiet_normal["tnr"] == 1.0
    assert math.isnan(quiet_normal["precision"]) and math.isnan(quiet_normal["f1"])  # 0 / 0

    nothing_flagged = threshold_metrics([0, 1], [0.1, 0.2], 0.5)
    assert math.isnan(nothing_flagged["precision"])
    assert nothing_flagged["f1"] == 0.0  # an anomaly exists and was missed


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.1])
    with pytest.raises(ValueError):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError):
        aupro(np.ones((1, 2, 2), bool), np.full((1, 2, 2), np.nan))


# --------------------------------------------------------------------------- pixel level
def _row(values: list[float], defect: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A single 1-row image: (masks, maps) of shape (1, 1, W)."""
    return np.array(defect, bool)[None, None], np.array(values, np.float32)[None, None]


def test_aupro_hand_checked_two_regions() -> None:
    # Region A = 2 px (both 1.0), region B = 4 px (two at 1.0, two at 0.5),
    # separated by a normal pixel; 10 normal pixels: 3 at 0.7, 7 at 0.0.
    #   t in (0.7, 1): PRO = (1 + 0.5) / 2 = 0.75, FPR 0
    #   t in (0.5, 0.7): PRO 0.75, FPR 0.3 ; t in (0, 0.5): PRO 1, FPR 0.3
    # -> area up to FPR 0.3 = 0.75 * 0.3 -> AUPRO = 0.75.
    values = [1, 1, 0.7, 1, 1, 0.5, 0.5, 0.7, 0.7, 0, 0, 0, 0, 0, 0]
    defect = [1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    masks, maps = _row(values + [0], defect)
    assert aupro(masks, maps) == pytest.approx(0.75)
    # Any limit below 0.3 sees the same 0.75 plateau.
    assert aupro(masks, maps, fpr_limit=0.1) == pytest.approx(0.75)


def test_aupro_interpolates_at_the_limit() -> None:
    # The defect pixel ties with one of 4 normal pixels: the curve jumps
    # diagonally from (0, 0) to (0.25, 1).  Up to FPR 0.125 that is a triangle
    # of area 0.125 * 0.5 / 2, i.e. AUPRO 0.25.
    masks, maps = _row([0.5, 0.5, 0.1, 0.1, 0.1], [1, 0, 0, 0, 0])
    assert aupro(masks, maps, fpr_limit=0.125) == pytest.approx(0.25)
    # Up to 0.25: 0.5 ; up to 0.5: (0.125 + 0.25) / 0.5 = 0.75.
    assert aupro(masks, maps, fpr_limit=0.25) == pytest.approx(0.5)
    assert aupro(masks, maps, fpr_limit=0.5) == pytest.approx(0.75)
    # Pixel AUROC: the defect beats 3 normals and ties with 1 -> 3.5 / 4.
    assert pixel_auroc(masks, maps) == pytest.approx(0.875)


def test_aupro_connectivity() -> None:
    # Defect pixels (0,0), (1,1), (1,2): one region with 8-connectivity, two with 4.
    # Only (0,0) scores above all normals (0); the others score below them.
    mask = np.zeros((1, 3, 4), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = True
    amap = np.zeros((1, 3, 4))
    amap[0, 0, 0] = 1.0
    amap[0, 1, 1] = amap[0, 1, 2] = -1.0
    assert aupro(mask, amap) == pytest.approx(1 / 3)
    assert aupro(mask, amap, connectivity=4) == pytest.approx(0.5)


def test_regions_do_not_connect_across_images() -> None:
    # Same square in two images, found in one only: two regions -> PRO 0.5.
    masks = np.zeros((2, 6, 6), bool)
    masks[:, 2:4, 2:4] = True
    maps = np.zeros((2, 6, 6))
    maps[0, 2:4, 2:4] = 1.0
    maps[1, 2:4, 2:4] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_perfect_and_random() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((20, 32, 32), bool)
    for i in range(10):
        y, x = rng.integers(0, 24, 2)
        masks[i, y : y + rng.integers(2, 9), x : x + rng.integers(2, 9)] = True
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert pixel_auroc(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    random_map = rng.random(masks.shape)
    # For a random map PRO ~ FPR, so the normalised area is ~ fpr_limit / 2 = 0.15.
    assert 0.08 < aupro(masks, random_map) < 0.25
    assert 0.4 < pixel_auroc(masks, random_map) < 0.6


def _reference_curve(masks: np.ndarray, maps: np.ndarray, connectivity: int) -> tuple[list[float], list[float]]:
    """PRO curve by brute force: per-image skimage labelling, every distinct threshold."""
    regions: list[tuple[int, np.ndarray]] = []
    for i, g in enumerate(masks):
        lab = sk_label(g, connectivity=1 if connectivity == 4 else 2)
        regions += [(i, lab == k) for k in range(1, lab.max() + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        xs.append(float(above[normal].mean()))
        ys.append(float(np.mean([above[i][r].mean() for i, r in regions])))
    return xs, ys


def _integrate(xs: list[float], ys: list[float], limit: float) -> float:
    """Piecewise-linear area from 0 to `limit`, segment by segment."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(connectivity: int, limit: float) -> None:
    rng = np.random.default_rng(connectivity)
    masks = rng.random((4, 10, 10)) > 0.8  # scattered, many small / diagonal regions
    masks[3] = False  # a normal image
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)  # ties on purpose
    xs, ys = _reference_curve(masks, maps, connectivity)
    expected = _integrate(xs, ys, limit) / limit
    assert aupro(masks, maps, fpr_limit=limit, connectivity=connectivity) == pytest.approx(expected)


# --------------------------------------------------------------------------- sPRO
def test_spro_hand_checked() -> None:
    # One 4-pixel defect saturating at 2 pixels (row 0), four normal pixels (row 1).
    maps = np.array([[[0.9, 0.5, 0.3, 0.2], [0.8, 0.6, 0.4, 0.1]]])
    region = np.array([[True] * 4, [False] * 4])
    # Descending: 0.9 finds 1 of 2 → 0.5 at FPR 0; two normals → FPR 0.5; 0.5 saturates → 1.0 from FPR 0.5.
    # Area up to FPR 1: 0.5 * 0.5 + 0.5 * 1 = 0.75; up to 0.5 only the first part: 0.25 / 0.5 = 0.5.
    assert auc_spro(maps, [SaturatedRegion(0, region, 2.0)], fpr_limit=1.0) == pytest.approx(0.75)
    assert auc_spro(maps, [SaturatedRegion(0, region, 2.0)], fpr_limit=0.5) == pytest.approx(0.5)
    # Saturating at the full area is PRO: 0.25, 0.5, 0.75, 1 reached at FPR 0, 0.5, 0.75, 0.75 → 0.5.
    assert auc_spro(maps, [SaturatedRegion(0, region, 4.0)], fpr_limit=1.0) == pytest.approx(0.5)
    assert aupro(region[None], maps, fpr_limit=1.0) == pytest.approx(0.5)
    # A fractional saturation: 1.5 px → the first pixel gives 2/3, the second the last third.
    assert auc_spro(maps, [SaturatedRegion(0, region, 1.5)], fpr_limit=1.0) == pytest.approx(0.5 * 2 / 3 + 0.5)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_spro_with_full_areas_equals_aupro(limit: float) -> None:
    rng = np.random.default_rng(7)
    masks = rng.random((4, 12, 12)) > 0.85
    masks[2] = False
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)
    regions = []
    for i, g in enumerate(masks):
        lab = sk_label(g, connectivity=2)
        regions += [SaturatedRegion(i, lab == k, float((lab == k).sum())) for k in range(1, lab.max() + 1)]
    assert auc_spro(maps, regions, fpr_limit=limit) == pytest.approx(aupro(masks, maps, fpr_limit=limit))


def _reference_spro(maps: np.ndarray, regions: list[SaturatedRegion], limit: float) -> float:
    """Brute force: every distinct threshold, overlapping regions, FPR over pixels outside every region."""
    outside = np.ones(maps.shape, bool)
    for r in regions:
        outside[r.image] &= ~r.mask
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        xs.append(float(above[outside].mean()))
        ys.append(float(np.mean([min(above[r.image][r.mask].sum() / r.saturation_area, 1.0) for r in regions])))
    return _integrate(xs, ys, limit) / limit


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_spro_matches_brute_force_with_overlapping_regions(limit: float) -> None:
    rng = np.random.default_rng(11)
    maps = np.round(rng.random((3, 10, 10)), 1)  # ties on purpose
    regions = []
    for image, (y, x, h, w) in [(0, (1, 1, 4, 5)), (0, (3, 3, 5, 5)), (1, (0, 0, 10, 2)), (1, (6, 6, 2, 2))]:
        mask = np.zeros((10, 10), bool)
        mask[y : y + h, x : x + w] = True
        maps[image][mask] += 0.3
        regions.append(SaturatedRegion(image, mask, float(rng.uniform(0.5, mask.sum()))))
    assert auc_spro(maps, regions, fpr_limit=limit) == pytest.approx(_reference_spro(maps, regions, limit))


def test_spro_bad_input_and_undefined() -> None:
    maps = np.zeros((1, 4, 4))
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    assert math.isnan(auc_spro(maps, []))
    assert math.isnan(auc_spro(maps, [SaturatedRegion(0, np.ones((4, 4), bool), 1.0)]))  # no normal pixel
    with pytest.raises(ValueError, match="does not match"):
        auc_spro(maps, [SaturatedRegion(0, np.ones((3, 4), bool), 1.0)])
    with pytest.raises(ValueError, match="saturation area"):
        auc_spro(maps, [SaturatedRegion(0, mask, 0.0)])
    with pytest.raises(ValueError, match="image index 1"):
        auc_spro(maps, [SaturatedRegion(1, mask, 1.0)])


def test_pixel_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((5, 16, 16)) > 0.9
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 2).astype(np.float32)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected)


def test_pixel_metrics_nan_without_defects_or_normals() -> None:
    maps = np.random.default_rng(3).random((2, 8, 8))
    assert math.isnan(pixel_auroc(np.zeros((2, 8, 8), bool), maps))
    assert math.isnan(aupro(np.zeros((2, 8, 8), bool), maps))
    assert math.isnan(pixel_auroc(np.ones((2, 8, 8), bool), maps))


def test_pixel_metrics_fast_on_large_input() -> None:
    rng = np.random.default_rng(4)
    maps = rng.random((100, 128, 128), dtype=np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[:50, 40:70, 50:90] = True
    maps[masks] += 0.3
    start = time.perf_counter()
    assert 0.5 < pixel_auroc(masks, maps) < 1.0
    assert 0.0 < aupro(masks, maps) < 1.0
    assert time.perf_counter() - start < 10.0  # ~0.5 s on 2 cores; generous for slow CI


# --------------------------------------------------------------------------- evaluate
def test_evaluate_image_only_is_json_serialisable() -> None:
    out = evaluate(LABELS, SCORES, threshold=0.3)
    assert out["image_auroc"] == pytest.approx(0.75)
    assert out["image_f1_max"] == pytest.approx(0.8)
    assert out["image_f1_max_threshold"] == pytest.approx(0.225)
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (2, 1, 1, 0)
    assert "pixel_auroc" not in out and "aupro" not in out
    assert all(type(v) in (int, float) for v in out.values())
    json.loads(json.dumps(out))


def test_evaluate_with_maps() -> None:
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:5, 2:5] = True
    maps = masks.astype(np.float32)
    out = evaluate(LABELS, SCORES, 0.3, masks=masks, maps=maps)
    assert out["pixel_auroc"] == pytest.approx(1.0)
    assert out["aupro"] == pytest.approx(1.0)
    # Masks without any defect pixel: pixel metrics are left out.
    out = evaluate([0, 0], [0.1, 0.2], 0.3, masks=np.zeros((2, 8, 8), bool), maps=maps[:2])
    assert "aupro" not in out and math.isnan(out["image_auroc"])
    with pytest.raises(ValueError):
        evaluate(LABELS, SCORES, 0.3, masks=masks[:3], maps=maps[:3])


def test_image_curves_give_sklearns_metrics_exactly() -> None:
    """The image metrics read from one computed pair of curves equal scikit-learn's own functions to the bit,
    ties and float32 scores included: metrics.json does not change when the report shares the curves."""
    from sklearn.metrics import average_precision_score

    from anomalens.metrics import image_curves

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 60))
        y = np.r_[0, 1, rng.integers(0, 2, n)]
        s = rng.integers(0, 4, y.size).astype(np.float64) if trial % 2 else rng.normal(size=y.size).astype(np.float32)
        curves = image_curves(y, s)
        assert curves.auroc == image_auroc(y, s) == float(roc_auc_score(y, s))
        assert curves.average_precision == image_aupr(y, s) == float(average_precision_score(y, s))
        assert evaluate(y, s, 0.5, curves=curves) == evaluate(y, s, 0.5)


def test_image_curves_with_one_class() -> None:
    from anomalens.metrics import image_curves

    only_normal = image_curves([0, 0, 0], [0.1, 0.2, 0.3])
    assert only_normal.roc is None and only_normal.precision_recall is None
    assert math.isnan(only_normal.auroc) and math.isnan(only_normal.average_precision)
    only_anomalous = image_curves([1, 1], [0.1, 0.2])
    assert only_anomalous.roc is None and only_anomalous.precision_recall is not None
    assert math.isnan(only_anomalous.auroc) and math.isnan(only_anomalous.average_precision)
