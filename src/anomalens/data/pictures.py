"""The pictures ``predict`` draws heatmaps on: the file's own 8-bit pixels, bounded in size. Torch-free
(numpy and Pillow), so predicting with an export never imports torch."""

from __future__ import annotations

from typing import Any

import numpy as np

from anomalens.data.io import image_size as stored_image_size
from anomalens.data.io import read_pixels

#: Heatmaps and masks of larger frames are drawn scaled down to this many pixels (4096 x 4096), so the
#: memory of writing one is bounded whatever the frame (a 144-megapixel frame's would need ~1.6 GB more).
HEATMAP_MAX_PIXELS = 4096 * 4096


def display_picture(pixels: np.ndarray) -> np.ndarray:
    """The picture a heatmap is drawn on: uint8 (h, w) or (h, w, 3) (the file's own 8-bit pixels when it has them)."""
    if pixels.dtype == np.uint8:
        return pixels
    grey = pixels.shape[-1] == 1
    out = np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5
    out = out.astype(np.uint8)
    return out[..., 0] if grey else out


def heatmap_size(height: int, width: int, max_pixels: int = HEATMAP_MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) a heatmap of a ``height`` x ``width`` image is drawn at: its own size up to
    ``max_pixels``, else scaled down (same aspect) to fit."""
    if height * width <= max_pixels:
        return height, width
    scale = (max_pixels / (height * width)) ** 0.5
    return max(1, int(height * scale)), max(1, int(width * scale))


def bounded_picture(picture: np.ndarray, max_pixels: int = HEATMAP_MAX_PIXELS) -> np.ndarray:
    """A uint8 picture scaled down (antialiased) to at most ``max_pixels``; unchanged when within."""
    from PIL import Image

    height, width = picture.shape[:2]
    target = heatmap_size(height, width, max_pixels)
    if target == (height, width):
        return picture
    with Image.fromarray(np.ascontiguousarray(picture)) as image:
        return np.asarray(image.resize((target[1], target[0]), Image.Resampling.BILINEAR, reducing_gap=2.0))


def heatmap_picture(source: Any, max_pixels: int = HEATMAP_MAX_PIXELS) -> np.ndarray:
    """The picture ``predict`` draws a heatmap on, read from ``source``: its own pixels up to ``max_pixels``;
    a larger frame is shrunk while decoding (``read_pixels``' fast path: JPEG at 1/2-1/8 scale, others
    box-reduced by a whole factor) and then scaled to fit, so a 144-megapixel frame never exists twice
    at full size in this process."""
    height, width = stored_image_size(source)
    target = heatmap_size(height, width, max_pixels)
    if target == (height, width) or isinstance(source, np.ndarray):
        return bounded_picture(display_picture(read_pixels(source)), max_pixels)
    # fast_for keeps at least twice the size asked for: ask for half the heatmap's size
    half = (max(1, target[0] // 2), max(1, target[1] // 2))
    return bounded_picture(display_picture(read_pixels(source, fast_for=half)), max_pixels)
