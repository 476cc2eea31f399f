"""Images → the model input of an export, in numpy: the twin of ``anomalens.data``'s torch decode and resize.

Images are decoded by ``anomalens.data.io.load_image`` (what fit and predict use) and resized to the graph's
input size by ``resize_bilinear_antialiased``, a numpy re-implementation of the resize that
``anomalens.data.TensorImageDataset`` does with torch (``F.interpolate(mode="bilinear", antialias=True)``,
then clamped to [0, 1]); the tests check the two agree to float32 rounding. So an image of any size is
resized exactly as ``predict`` resizes it, and an export runs without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomalens.data.io import check_decode_mode, load_image


def _antialiased_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (out_size, taps): the bilinear filter of torch's antialiased resize.

    As torch's ``_compute_weights_aa`` (and Pillow's resampling): with scale = in/out, output pixel i is
    centred at scale·(i + 0.5); when shrinking, the triangle filter is widened to ``scale`` input pixels
    on each side; taps outside the image are dropped and the weights renormalised to sum 1. In float32
    like torch's float path.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    centers = scale * (np.arange(out_size, dtype=f32) + f32(0.5))
    xmin = np.maximum((centers - support + f32(0.5)).astype(np.int64), 0)
    xmax = np.minimum((centers + support + f32(0.5)).astype(np.int64), in_size)
    taps = int((xmax - xmin).max())
    offsets = np.arange(taps)
    positions = xmin[:, None] + offsets
    x = ((positions - centers[:, None]).astype(f32) + f32(0.5)) * invscale
    weights = np.clip(f32(1.0) - np.abs(x), f32(0.0), None).astype(f32)
    weights[offsets[None, :] >= (xmax - xmin)[:, None]] = 0.0
    total = np.zeros(out_size, f32)
    for j in range(taps):  # summed in tap order, as torch does
        total += weights[:, j]
    weights = np.where(total[:, None] != 0, weights / total[:, None], weights).astype(f32)
    return np.minimum(positions, in_size - 1), weights


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weights = _antialiased_taps(image.shape[axis], out_size)
    shape = [1] * image.ndim
    shape[axis] = out_size
    out = None
    for j in range(index.shape[1]):  # accumulated tap by tap in float32, as torch's loop
        term = np.take(image, index[:, j], axis=axis) * weights[:, j].reshape(shape)
        out = term if out is None else out + term
    return out


def resize_bilinear_antialiased(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float32 → (h, w, C): the antialiased bilinear resize of ``anomalens.data``, clamped to [0, 1].

    Width first, then height (torch's order); an axis already at its size is left alone, and an image
    already at ``size`` is returned unchanged (not clamped), as ``TensorImageDataset`` does.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    out = image.astype(np.float32, copy=False)
    if out.shape[1] != width:
        out = _resample_axis(out, width, axis=1)
    if out.shape[0] != height:
        out = _resample_axis(out, height, axis=0)
    return np.clip(out, 0.0, 1.0)


def load_input(source: Any, input_size: tuple[int, int], channels: int, decode: str = "exact") -> np.ndarray:
    """An image file or array (or an ``ImageRecord``) → (channels, H, W) float32 in [0, 1] at ``input_size``.

    ``decode``: the run's ``decode`` hyper-parameter — "fast" shrinks a large file while decoding, as the
    torch path does (``anomalens.data.io``), so an export scores the pixels its detector was fitted on."""
    source = getattr(source, "source", source)
    fast_for = tuple(input_size) if check_decode_mode(decode) == "fast" else None
    image = resize_bilinear_antialiased(load_image(source, channels, fast_for=fast_for), input_size)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


__all__ = ["load_input", "resize_bilinear_antialiased"]
