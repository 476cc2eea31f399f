"""Heatmap overlays and mask contours drawn directly into RGB arrays with numpy (matplotlib only lends its
colour tables), a map brought back to its image's size, and the colour range shared by a set of heatmaps.
The annotated pictures built on them (score and verdict, thumbnails, case figures) are in
:mod:`anomalens.report.annotated`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage.segmentation import find_boundaries


__all__ = ["overlay_heatmap", "draw_mask_contours", "draw_boundaries", "heatmap_range", "to_original_size",
           "render_heatmap", "colour_lut", "as_float_rgb"]

# Pixels blended at a time: the float64 temporaries of a strip stay ~6 MB each, whatever the frame size.
_STRIP_PIXELS = 262_144
_LUTS: dict[str, np.ndarray] = {}


def colour_lut(cmap: str) -> np.ndarray:
    """The colour map's own table (N, 3) float64: ``cmap(x)`` for x in [0, 1] is ``lut[min(int(x * N), N - 1)]``."""
    if cmap not in _LUTS:
        from matplotlib import colormaps  # here, not at import: a program that draws nothing never loads matplotlib

        colormap = colormaps[cmap]
        _LUTS[cmap] = np.asarray(colormap(np.arange(colormap.N)), dtype=np.float64)[:, :3]
    return _LUTS[cmap]


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
    img = np.asarray(image)
    heat = np.asarray(amap)
    if heat.shape != img.shape[:2] or img.ndim not in (2, 3):
        raise ValueError(f"anomaly map {heat.shape} does not match image {img.shape[:2]}")
    lut = colour_lut(cmap)
    n = len(lut)
    height, width = heat.shape
    out = np.empty((height, width, 3), np.uint8)
    # Strip by strip, the same float64 arithmetic as blending whole arrays (colormap lookup = its table),
    # so a large frame never has full-size float64 copies (a 12000² one would need 3.5 GB for each).
    step = max(1, _STRIP_PIXELS // max(1, width))
    for y0 in range(0, height, step):
        rows = slice(y0, y0 + step)
        rgb = as_float_rgb(img[rows])
        norm = np.clip((np.asarray(heat[rows], dtype=np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
        colored = lut[np.minimum((norm * n).astype(np.intp), n - 1)]
        blend = (1.0 - alpha) * rgb + alpha * colored
        out[rows] = np.round(blend * 255.0).astype(np.uint8)
    return out


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
    draw_boundaries(out, m, color, width)
    return out


def _boundary(m: np.ndarray, width: int) -> np.ndarray:
    boundary = find_boundaries(m, mode="inner" if width == 1 else "thick")
    if width > 2 and boundary.any():
        boundary = ndimage.binary_dilation(boundary, iterations=(width - 1) // 2)
    return boundary


def draw_boundaries(out: np.ndarray, m: np.ndarray, color: Sequence[int], width: int) -> None:
    """Draw the outline of ``m`` into ``out`` in place, strip by strip (each strip sees ``margin`` rows of its
    neighbours, so the outline equals the whole-image one) — the temporaries stay small for large frames."""
    colour = np.asarray(color, dtype=np.uint8)
    height, cols = m.shape
    margin = 2 + (width - 1) // 2
    step = max(4 * margin, _STRIP_PIXELS // max(1, cols))
    for y0 in range(0, height, step):
        y1 = min(height, y0 + step)
        lo, hi = max(0, y0 - margin), min(height, y1 + margin)
        part = m[lo:hi]
        if not part.any() or part.all():
            continue
        boundary = _boundary(part, width)[y0 - lo : y1 - lo]
        out[y0:y1][boundary] = colour


def to_original_size(amap: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """An anomaly map (h, w) at the model's input size → float32 (H, W) at the image's own ``size``
    (bilinear, as Pillow resizes float images): what ``anomalens predict`` draws and thresholds."""
    from PIL import Image

    amap = np.asarray(amap, dtype=np.float32)
    height, width = int(size[0]), int(size[1])
    if amap.shape == (height, width):
        return amap
    return np.asarray(Image.fromarray(amap).resize((width, height), Image.BILINEAR))


def render_heatmap(
    picture: ArrayLike,
    amap: ArrayLike,
    vmin: float,
    vmax: float,
    pixel_threshold: float | None = None,
    contour_color: Sequence[int] = (255, 255, 255),
) -> tuple[np.ndarray, np.ndarray | None]:
    """The heatmap overlay of ``anomalens predict`` at the picture's own resolution: (uint8 (H, W, 3),
    the predicted mask (H, W) bool, outlined on the overlay, or None without ``pixel_threshold``).

    ``amap`` is at the model's input size; it is brought to the picture's size once (float32), and the
    colouring and outlining run in strips, so the memory is a few bytes per pixel, not tens.
    """
    img = np.asarray(picture)
    full = to_original_size(amap, img.shape[:2])
    overlay = overlay_heatmap(img, full, vmin, vmax)
    if pixel_threshold is None:
        return overlay, None
    mask = full > pixel_threshold
    del full
    draw_boundaries(overlay, mask, contour_color, 2)
    return overlay, mask


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
