"""Uncertainty of a benchmark's figures: stratified bootstrap intervals, paired tests, Holm's correction.

A test set of 70 images gives an AUROC that moves by a few hundredths from one draw of images to the next;
these functions say by how much, and which differences between detectors are larger than that.

* **Resampling** (:func:`bootstrap_weights`): each bootstrap replicate draws the normal test images with
  replacement among the normal ones and the anomalous among the anomalous (stratified: every replicate keeps
  the test set's class sizes, so AUROC is always defined). A replicate is a vector of counts, one per
  image, and every figure is computed from the counts as weights — all replicates at once, as matrix
  products (numpy), never a Python loop over replicates. The weights depend only on the labels and a seed,
  so every detector scored on the same images gets the *same* resamples (what the paired test needs).
* **Image figures** (:func:`image_auroc_replicates`, :func:`operating_point_replicates`): AUROC as the
  weighted Mann-Whitney statistic (ties count one half); TPR, FPR and balanced accuracy at the run's own
  threshold.
* **Pixel figures** resample *images* (a defect's pixels are not independent draws). The maps are first
  summarised per image (:func:`pixel_summary`): pixel counts per score bin for the normal and the defect
  pixels, and per bin the sum over the image's defect regions of the fraction of the region in that bin.
  Pixel AUROC and AUPRO (Bergmann et al. 2021: mean per-region overlap integrated over the normal pixels'
  FPR up to 0.3, normalised) of any weighting of the images are then sums of these rows. Scores are binned
  at quantiles of the pooled scores (``PIXEL_BINS``), so the replicates are those of a binned score; the
  summary's own full-sample value is kept beside the exact one to show the binning error (~1e-4 here).
* **Intervals** are percentile intervals of the replicates (:func:`percentile_interval`); over several
  training seeds, the replicates of the seed mean give the test-set interval and a Student-t interval over
  the seeds (:func:`seed_interval`) the training spread.
* **Paired test** (:func:`paired_test`): the difference of two detectors' figure on the same replicates;
  two-sided bootstrap p-value ``2·min(P(d ≤ 0), P(d ≥ 0))`` with the +1 correction (never 0), and
  :func:`holm` adjusts a family of p-values (Holm 1979: step-down, controls the family-wise error).
  Identical detectors give d = 0 on every replicate, hence p = 1.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy import stats as scipy_stats

__all__ = [
    "AUPRO_FPR_LIMIT",
    "DEFAULT_BOOTSTRAP",
    "LEVEL",
    "PIXEL_BINS",
    "aupro_replicates",
    "bootstrap_weights",
    "holm",
    "image_auroc_replicates",
    "operating_point_replicates",
    "paired_test",
    "percentile_interval",
    "pixel_auroc_replicates",
    "pixel_summary",
    "replicate_seed",
    "seed_interval",
]

DEFAULT_BOOTSTRAP = 1000
LEVEL = 0.95
PIXEL_BINS = 2048
AUPRO_FPR_LIMIT = 0.3


# ------------------------------------------------------------------------------------------- resampling
def replicate_seed(name: str, seed: int = 0) -> int:
    """The bootstrap seed of one test set (a category's name): the same resamples for every detector and
    run on it, independent ones for another category."""
    return (zlib.crc32(name.encode("utf-8")) + 1_000_003 * int(seed)) % 2**32


def bootstrap_weights(labels: Sequence[int] | np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP,
                      seed: int = 0) -> np.ndarray:
    """(n_boot, N) float counts: per replicate, how often each image is drawn, the normal images drawn
    among themselves and the anomalous among themselves (each class keeps its size)."""
    y = np.asarray(labels).reshape(-1)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, y.size))
    for value in (0, 1):
        members = np.flatnonzero(y == value)
        if members.size:
            weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1 / members.size), size=n_boot)
    return weights


# ------------------------------------------------------------------------------------------- image level
def image_auroc_replicates(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                           weights: np.ndarray) -> np.ndarray:
    """AUROC of the scores under each row of ``weights`` (B, N): the weighted Mann-Whitney statistic
    sum w_i w_j ([s_i > s_j] + ½[s_i = s_j]) / (W_anomalous W_normal) over anomalous i, normal j.
    NaN where a class has no weight."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if not pos.size or not neg.size:
        return np.full(w.shape[0], np.nan)
    wins = (s[pos, None] > s[None, neg]) + 0.5 * (s[pos, None] == s[None, neg])
    wp, wn = w[:, pos], w[:, neg]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("bi,ij,bj->b", wp, wins, wn) / (wp.sum(1) * wn.sum(1))


def operating_point_replicates(labels: Sequence[int] | np.ndarray, flagged: Sequence[int] | np.ndarray,
                               weights: np.ndarray) -> dict[str, np.ndarray]:
    """TPR, FPR and balanced accuracy (TPR + 1 − FPR) / 2 of fixed decisions (``flagged``: 1 = anomalous)
    under each row of ``weights``."""
    y = np.asarray(labels).reshape(-1)
    f = np.asarray(flagged, dtype=np.float64).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    wp, wn = w * (y == 1), w * (y == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = wp @ f / wp.sum(1)
        fpr = wn @ f / wn.sum(1)
    return {"tpr": tpr, "fpr": fpr, "balanced_accuracy": (tpr + 1 - fpr) / 2}


# ------------------------------------------------------------------------------------------- pixel level
def pixel_summary(masks: np.ndarray, maps: np.ndarray, bins: int = PIXEL_BINS) -> dict[str, np.ndarray]:
    """Per-image sums from which pixel AUROC and AUPRO of any weighting of the images follow.

    ``masks`` (N, H, W) bool, ``maps`` (N, H, W) float. Returns ``edges`` (the bin edges: quantiles of the
    defect and of the normal pixels' scores; bin k holds scores in [edges[k-1], edges[k])), and per image
    (rows) and bin (columns): ``normal`` and ``defect`` pixel counts, ``region_overlap`` (the sum over the
    image's 8-connected defect regions of the fraction of the region in the bin) and ``regions`` (N,).
    """
    g = np.asarray(masks) != 0
    m = np.asarray(maps, dtype=np.float32)
    if g.shape != m.shape or g.ndim != 3:
        raise ValueError(f"masks {g.shape} and maps {m.shape} must both have shape (N, H, W)")
    n = g.shape[0]
    levels = np.linspace(0, 1, bins // 2 + 1)
    negatives, positives = m[~g], m[g]
    parts = [np.quantile(negatives, levels)] if negatives.size else []
    parts += [np.quantile(positives, levels)] if positives.size else []
    edges = np.unique(np.concatenate(parts)) if parts else np.zeros(1)
    k = edges.size + 1
    index = np.searchsorted(edges, m, side="right")  # bin of every pixel, 0 .. edges.size
    row = np.arange(n)[:, None, None] * k + index
    normal = np.bincount(row[~g], minlength=n * k).reshape(n, k)
    defect = np.bincount(row[g], minlength=n * k).reshape(n, k)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    regions, n_regions = ndimage.label(g, structure=structure)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1).astype(np.float64)
    share = 1.0 / np.maximum(sizes, 1)
    overlap = np.bincount(row[g], weights=share[regions[g]], minlength=n * k).reshape(n, k)
    first_image = np.zeros(n_regions + 1, dtype=np.int64)
    labelled = regions > 0
    first_image[regions[labelled]] = np.nonzero(labelled)[0]
    per_image = np.bincount(first_image[1:], minlength=n)[:n] if n_regions else np.zeros(n, dtype=np.int64)
    return {"edges": edges, "normal": normal.astype(np.float64), "defect": defect.astype(np.float64),
            "region_overlap": overlap, "regions": per_image.astype(np.float64)}


def pixel_auroc_replicates(summary: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Pixel AUROC of the binned scores (scores in one bin count as ties) under each row of ``weights``."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    positive = w @ summary["defect"]
    negative = w @ summary["normal"]
    below = np.cumsum(negative, axis=1) - negative
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive * (below + 0.5 * negative)).sum(1) / (positive.sum(1) * negative.sum(1))


def aupro_replicates(summary: dict[str, np.ndarray], weights: np.ndarray,
                     fpr_limit: float = AUPRO_FPR_LIMIT) -> np.ndarray:
    """Normalised area under the PRO curve up to ``fpr_limit`` under each row of ``weights``: thresholds at
    the bin edges, the point at the limit interpolated, trapezoids, divided by the limit."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    negative = w @ summary["normal"]
    overlap = w @ summary["region_overlap"]
    regions = w @ summary["regions"]
    # flagged = bins >= k; k from the top bin down: FPR and PRO grow from 0 to 1
    fpr = np.cumsum(negative[:, ::-1], axis=1)
    pro = np.cumsum(overlap[:, ::-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = np.concatenate([np.zeros((w.shape[0], 1)), fpr / fpr[:, -1:]], axis=1)
        pro = np.concatenate([np.zeros((w.shape[0], 1)), pro / regions[:, None]], axis=1)
    return _area_up_to(fpr, np.minimum(pro, 1.0), fpr_limit) / fpr_limit


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> np.ndarray:
    """Row-wise trapezoidal area under y(x) for x in [0, limit] (x non-decreasing along each row)."""
    x0, x1, y0, y1 = x[:, :-1], x[:, 1:], y[:, :-1], y[:, 1:]
    end = np.minimum(x1, limit)
    width = np.clip(end - x0, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(x1 > x0, (end - x0) / (x1 - x0), 1.0)
    y_end = y0 + (y1 - y0) * np.clip(fraction, 0, 1)
    return (width * (y0 + y_end) / 2).sum(1)


# ------------------------------------------------------------------------------------------- intervals
def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of the replicates (NaN ones left out)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if not r.size:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(r, [tail, 100 - tail])
    return float(low), float(high)


def seed_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student-t interval of the mean over training seeds; None with fewer than two seeds."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return None
    mean, sem = float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))
    half = float(scipy_stats.t.ppf((1 + level) / 2, v.size - 1)) * sem
    return mean - half, mean + half


# ------------------------------------------------------------------------------------------- tests
def paired_test(replicates_a: np.ndarray, replicates_b: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """Two figures computed on the same resamples: their difference's percentile interval and the
    two-sided bootstrap p-value of "no difference" (see the module docstring)."""
    d = np.asarray(replicates_a, dtype=np.float64) - np.asarray(replicates_b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return {"ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    low, high = percentile_interval(d, level)
    at_most, at_least = np.count_nonzero(d <= 0), np.count_nonzero(d >= 0)
    p = min(1.0, 2 * (min(at_most, at_least) + 1) / (d.size + 1))
    return {"ci_low": low, "ci_high": high, "p_value": float(p)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
