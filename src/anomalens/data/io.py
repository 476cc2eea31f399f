"""Image and mask I/O: one place that turns any supported file or array into float / bool numpy.

Every failure becomes a one-line :class:`~anomalens.errors.DataError` that names the file,
so the CLI can print it instead of a PIL/numpy traceback.

Conventions (documented here because detectors rely on them):

* Images are float32 ``(H, W, channels)`` in ``[0, 1]``.
* Alpha (modes LA, PA, RGBA, palette with transparency) is *composited onto black*
  (``colour * alpha``), so a fully transparent pixel reads as 0 whatever colour the file
  stored under it. One rule for all alpha modes keeps train and test images consistent.
* 16-bit data (``I;16*``, or mode ``I`` holding 16-bit PNG/TIFF values) is divided by 65535,
  the maximum of the type, never by the image's own maximum (that would change the
  brightness of each image differently).
* EXIF orientation is *not* applied: pixels are used as stored, matching how masks are stored
  and what :func:`image_size` reports.

Opening files (formats, large frames, the fast decode): ``anomalens.data.image_files``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalens.data.image_files import (DECODE_MODES, FAST_DECODE_MARGIN, IMAGE_SUFFIXES, SUPPORTED_FORMATS,
                                        ImageSource, check_decode_mode, describe_source, error_reason, is_image_file,
                                        list_images, open_decoded, open_image, quiet_large_frames, supported_formats)
from anomalens.errors import DataError

__all__ = [
    "DECODE_MODES",
    "FAST_DECODE_MARGIN",
    "IMAGE_SUFFIXES",
    "SUPPORTED_FORMATS",
    "ImageSource",
    "check_decode_mode",
    "check_unit_range",
    "describe_source",
    "image_size",
    "is_image_file",
    "list_images",
    "load_image",
    "load_mask",
    "open_image",
    "pil_to_float",
    "quiet_large_frames",
    "read_pixels",
    "supported_formats",
    "to_float_channels",
]

# ITU-R 601-2 luma weights, the same ones Pillow uses for RGB -> L, so channels=1 matches
# what users get from ``Image.convert("L")``.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Pillow formats whose compression leaves small non-zero values around mask edges; their masks
# are thresholded at mid-grey instead of > 0 so ringing does not inflate the defect region.
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})

# Rows copied out of Pillow at a time: a strip of the frame, not a second whole copy of it.
_STRIP_BYTES = 32 << 20


def _stored_pixels(img: Image.Image) -> np.ndarray:
    """A loaded 8-bit L / RGB image → its pixels, uint8 (H, W) / (H, W, 3), copied out a strip of rows at a time.

    ``np.asarray(img)`` goes through ``Image.tobytes()``, which joins the encoder's chunks into one bytes
    object: two whole extra copies of the frame alive at once (1.4 GB for a 12000² RGB frame, on top of
    Pillow's own). Strips keep the extra memory to one strip; the values are the same bytes.
    """
    width, height = img.size
    bands = len(img.getbands())
    out = np.empty((height, width, bands) if bands > 1 else (height, width), np.uint8)
    rows = max(1, _STRIP_BYTES // max(1, width * 4))  # Pillow keeps RGB as 4 bytes a pixel
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        with img.crop((0, top, width, bottom)) as strip:
            out[top:bottom] = np.asarray(strip)
    return out


def _composite_alpha(arr: np.ndarray) -> np.ndarray:
    """(H, W, 2|4) float colour+alpha -> (H, W, 1|3) composited onto black."""
    return arr[..., :-1] * arr[..., -1:]


def _pil_to_float(img: Image.Image, path: Path) -> np.ndarray:
    """Decoded Pillow image -> float32 (H, W, 1|3) in [0, 1] (alpha composited)."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        # Palette transparency may be per-index (bytes) or a single index: RGBA covers both.
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode == "1":
        arr = np.asarray(img, dtype=np.float32)[..., None]
    elif mode in ("L", "LA", "RGB", "RGBA", "RGBX"):
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if mode == "RGBX":
            arr = arr[..., :3]
        elif arr.ndim == 2:
            arr = arr[..., None]
    elif mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32)[..., None] / 65535.0
    elif mode == "I":
        # Pillow (depending on version) opens 16-bit PNG/TIFF as 32-bit "I"; the values are
        # still 16-bit, so scale by the 16-bit maximum. Anything outside that range is
        # ambiguous (no known white level), so refuse instead of guessing.
        raw = np.asarray(img)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi > 65535:
            raise DataError(
                f"{path}: cannot read image: 32-bit integer pixels outside 0..65535 "
                f"(min {lo}, max {hi}); convert it to 8- or 16-bit"
            )
        arr = raw.astype(np.float32)[..., None] / 65535.0
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)[..., None]
        _check_unit_range(arr, path)
    else:
        # CMYK, YCbCr, LAB, HSV, ...: Pillow knows how to get to RGB.
        try:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image: unsupported mode {mode} ({error_reason(exc)})") from None
    if arr.shape[-1] in (2, 4):
        arr = _composite_alpha(arr)
    return arr


def _check_unit_range(arr: np.ndarray, name: str | Path) -> None:
    """Float pixels must already be in [0, 1]; anything else has an unknown scale."""
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: cannot read image: float pixels contain NaN or infinity")
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{name}: cannot read image: float pixels must be in [0, 1], found min {lo:.4g}, max {hi:.4g}")


def _array_to_float(arr: np.ndarray) -> np.ndarray:
    """In-memory uint8/uint16/bool/float array -> float32 (H, W, 1|3) in [0, 1]."""
    name = describe_source(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name}: cannot read image: expected shape (H, W) or (H, W, 1|2|3|4)")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        _check_unit_range(out, name)
    else:
        raise DataError(
            f"{name}: cannot read image: unsupported dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])"
        )
    if out.shape[-1] in (2, 4):
        out = _composite_alpha(out)
    return out


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 1|3) -> (H, W, channels): replicate grey, or luminance of RGB."""
    have = arr.shape[-1]
    if have == channels:
        out = arr
    elif channels == 3:
        out = np.repeat(arr, 3, axis=-1)
    else:
        out = (arr @ _LUMA)[..., None]
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def load_image(source: ImageSource, channels: int = 3, fast_for: tuple[int, int] | None = None) -> np.ndarray:
    """Load an image file or array as float32 ``(H, W, channels)`` in ``[0, 1]``.

    ``channels=1`` gives luminance (ITU-R 601-2 weights); ``channels=3`` replicates grey
    images into RGB. Unreadable, truncated or non-image files raise
    ``DataError("<path>: cannot read image: <reason>")``. ``fast_for``: the (height, width) the
    image will be resized to, for the "fast" decode (module docstring); arrays are never shrunk.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(source, np.ndarray):
        return _to_channels(_array_to_float(source), channels)
    path = Path(source)
    with open_decoded(path, fast_for=fast_for) as img:
        arr = _pil_to_float(img, path)
    return _to_channels(arr, channels)


def pil_to_float(img: Image.Image, name: str | Path = "image") -> np.ndarray:
    """An opened Pillow image → float32 (H, W, 1|3) in [0, 1], by the rules of this module (alpha composited)."""
    img.load()
    return _pil_to_float(img, Path(name))


def check_unit_range(arr: np.ndarray, name: str | Path) -> None:
    """DataError unless the float pixels ``arr`` are finite and in [0, 1]."""
    _check_unit_range(arr, name)


def read_pixels(source: ImageSource, fast_for: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image once, as cheaply as possible: the stored 8-bit pixels when the file is plain 8-bit
    grey (mode L) or RGB — uint8 ``(H, W)`` / ``(H, W, 3)``, no float copy of a large frame — and otherwise
    exactly what :func:`load_image` works from (float32 ``(H, W, 1|3)`` in [0, 1], alpha composited).

    :func:`to_float_channels` turns either into :func:`load_image`'s result, bit for bit; the uint8 form
    also serves as the picture a heatmap is drawn on, so a file is read once for both.

    ``fast_for``: the (height, width) the image will be resized to, for the "fast" decode (module
    docstring; the result is then the shrunk image); arrays are never shrunk.
    """
    if isinstance(source, np.ndarray):
        return _array_to_float(source)
    path = Path(source)
    with open_decoded(path, fast_for=fast_for) as img:
        if img.mode in ("L", "RGB"):
            return _stored_pixels(img)
        return _pil_to_float(img, path)


def to_float_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """What :func:`read_pixels` returned → float32 ``(H, W, channels)`` in [0, 1], equal to ``load_image``."""
    if pixels.dtype == np.uint8:
        pixels = np.asarray(pixels, dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[..., None]
    return _to_channels(pixels, channels)


def load_mask(source: ImageSource) -> np.ndarray:
    """Load a ground-truth mask as bool ``(H, W)``: True where the mask value is > 0.

    Colour masks count a pixel as defective when any colour channel is > 0 (and, with an
    alpha channel, the pixel is not fully transparent). JPEG masks are thresholded at
    mid-grey instead, because compression ringing leaves small non-zero values.
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2 or 0 in arr.shape:
            raise DataError(f"{describe_source(source)}: cannot read mask: expected shape (H, W)")
        if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
            raise DataError(f"{describe_source(source)}: cannot read mask: unsupported dtype {arr.dtype}")
        return np.ascontiguousarray(arr > 0)
    path = Path(source)
    with open_decoded(path, what="mask") as img:
        lossy = img.format in _LOSSY_FORMATS
        mode = img.mode
        if mode in ("P", "PA"):
            img = img.convert("RGBA")
            mode = "RGBA"
        if mode in ("1", "L", "RGB", "I", "F") or mode.startswith("I;16"):
            raw = np.asarray(img)
            alpha = None
        elif mode in ("LA", "RGBA"):
            raw = np.asarray(img)
            raw, alpha = raw[..., :-1], raw[..., -1]
        else:
            raw = np.asarray(img.convert("RGB"))
            alpha = None
    threshold = 127 if lossy else 0
    mask = raw > threshold
    if mask.ndim == 3:
        mask = mask.any(axis=-1)
    if alpha is not None:
        mask &= alpha > 0
    return np.ascontiguousarray(mask)


def image_size(source: ImageSource) -> tuple[int, int]:
    """``(height, width)`` of an image or mask, read from the file header only (no decoding)."""
    if isinstance(source, np.ndarray):
        if source.ndim < 2:
            raise DataError(f"{describe_source(source)}: expected an image array of shape (H, W[, C])")
        return int(source.shape[0]), int(source.shape[1])
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: cannot read image: file does not exist")
    try:
        with open_image(path) as img:
            width, height = img.size
    except UnidentifiedImageError:
        raise DataError(f"{path}: cannot read image: not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: cannot read image: image too large ({error_reason(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read image: {error_reason(exc)}") from None
    return int(height), int(width)
