"""Heatmap overlays and mask contours drawn directly into RGB arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage.segmentation import find_boundaries

__all__ = ["overlay_heatmap", "draw_mask_contours", "heatmap_range"]


def as_float_rgb(image: ArrayLike) -> np.ndarray:
    """(H, W) or (H, W, 1|3) image -> float (H, W, 3) in [0, 1]; uint8 is rescaled."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img / 255.0
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {img.shape}")
    return np.clip(img, 0.0, 1.0)


def overlay_heatmap(
    image: ArrayLike,
    amap: ArrayLike,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image.

    ``image`` is float (H, W, 3) or (H, W) in [0, 1] (uint8 is accepted too);
    ``amap`` is (H, W).  The map is scaled with the *fixed* range
    [vmin, vmax] (values outside are clipped) rather than per image, so that
    overlays of different images are comparable: a normal image stays blue
    instead of having its noise stretched to red.  Returns uint8 (H, W, 3).
    """
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = as_float_rgb(image)
    heat = np.asarray(amap, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"anomaly map {heat.shape} does not match image {rgb.shape[:2]}")
    norm = np.clip((heat - vmin) / (vmax - vmin), 0.0, 1.0)
    colored = colormaps[cmap](norm)[..., :3]
    out = (1.0 - alpha) * rgb + alpha * colored
    return np.round(out * 255.0).astype(np.uint8)


def draw_mask_contours(
    rgb_uint8: ArrayLike,
    mask: ArrayLike,
    color: Sequence[int] = (0, 255, 0),
    width: int = 2,
) -> np.ndarray:
    """Return a copy of ``rgb_uint8`` (H, W, 3) with the outline of a bool mask drawn in ``color``.

    ``width=1`` draws a 1 px line just inside the mask, ``width=2`` a 2 px line
    straddling its border; larger widths thicken that line (useful for big
    images displayed small).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = np.array(rgb_uint8, dtype=np.uint8, copy=True)
    m = np.asarray(mask, dtype=bool)
    if out.ndim != 3 or out.shape[2] != 3 or m.shape != out.shape[:2]:
        raise ValueError(f"need rgb (H, W, 3) and mask (H, W), got {out.shape} and {m.shape}")
    boundary = find_boundaries(m, mode="inner" if width == 1 else "thick")
    if width > 2 and boundary.any():
        boundary = ndimage.binary_dilation(boundary, iterations=(width - 1) // 2)
    out[boundary] = np.asarray(color, dtype=np.uint8)
    return out


def heatmap_range(
    maps: ArrayLike, labels: ArrayLike | None = None, low: float = 1.0, high: float = 99.9
) -> tuple[float, float]:
    """One colour range for all heatmaps of a report.

    ``vmin`` = the ``low`` percentile of the normal images' maps (of all maps
    when there are no labels or no normal image): typical normal texture
    maps to the bottom of the colour scale.  ``vmax`` = the ``high``
    percentile of all maps, so a few extreme pixels do not wash out the rest.
    Always returns ``vmax > vmin``.
    """
    m = np.asarray(maps)
    if labels is not None:
        normal = np.asarray(labels).reshape(-1) == 0
        base = m[normal] if normal.any() else m
    else:
        base = m
    # Percentiles of a subsample are plenty for a colour scale and keep
    # this fast for hundreds of full-resolution maps.
    step_base = max(1, base.size // 2_000_000)
    step_all = max(1, m.size // 2_000_000)
    vmin = float(np.percentile(base.reshape(-1)[::step_base], low))
    vmax = float(np.percentile(m.reshape(-1)[::step_all], high))
    if not vmax > vmin:
        vmax = max(float(m.max()), vmin)
        if not vmax > vmin:  # constant maps
            vmax = vmin + 1.0
    return vmin, vmax
