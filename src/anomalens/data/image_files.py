"""Image files: which files are images, which decoders may open them, and how a file is opened and decoded —
every failure a one-line :class:`~anomalens.errors.DataError` naming the file. Turning the decoded pixels into
float arrays is ``anomalens.data.io``.

* Files are opened by content, never by suffix, and only by the decoders of :data:`SUPPORTED_FORMATS`
  (PNG, JPEG, BMP, TIFF, WebP — what the suffixes of :data:`IMAGE_SUFFIXES` promise; the service accepts
  the same list): a file of any other format — a PostScript file named ``.png``, whose Pillow plugin starts
  Ghostscript, say — is "not a recognised image format", and no other decoder is ever reached.
* Large frames: Pillow warns (``DecompressionBombWarning``) above ``Image.MAX_IMAGE_PIXELS`` and refuses
  above twice that. Here a frame up to the refusal is read silently — the warning is switched off while
  anomalens opens and decodes a file, so nothing reaches stderr (``-q`` means quiet) — and one beyond it is a
  one-line DataError ("image too large"). ``Image.MAX_IMAGE_PIXELS`` stays the one setting of the limit.

Two ways to decode a file for a model (a detector's ``decode`` hyper-parameter, :data:`DECODE_MODES`):

* ``"exact"`` (default): every stored pixel, then the one resize of the library.
* ``"fast"``: a large frame is first shrunk while decoding — JPEG through Pillow's ``draft`` (the
  decoder scales by 1/2, 1/4 or 1/8 in the DCT domain, skipping most of the work), other formats
  through ``Image.reduce`` (integer box averaging) — but never below :data:`FAST_DECODE_MARGIN` times
  the working size on either side, so the antialiased resize that follows still averages at least
  2×2 reduced pixels per output pixel and smooths the reduction's own rounding and blocking away.
  Values differ slightly from ``"exact"`` (measured in ``benchmarks/results/large_images.md``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalens.errors import ConfigError, DataError

__all__ = ["DECODE_MODES", "FAST_DECODE_MARGIN", "IMAGE_SUFFIXES", "SUPPORTED_FORMATS", "ImageSource", "check_decode_mode",
           "describe_source", "error_reason", "is_image_file", "list_images", "open_decoded", "open_image",
           "quiet_large_frames", "supported_formats"]

#: Lower-case file suffixes treated as images (matched case-insensitively).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Pillow format names anomalens decodes — files from disk (predict, fit, test, ...) and the service's uploads
#: alike (module docstring). MPO (multi-picture JPEG from cameras) is JPEG's own opener in recent Pillow
#: releases and a separate one in older ones.
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP")

ImageSource = Path | str | np.ndarray

#: How files are decoded for a model: every pixel ("exact") or shrunk while decoding ("fast", module docstring).
DECODE_MODES: tuple[str, ...] = ("exact", "fast")

#: The fast decode stops shrinking while the image is still at least this many times the working size on
#: each side. 2 keeps every output pixel of the final antialiased resize an average of >= 2x2 reduced pixels
#: (the reduction's blocking and rounding are averaged out); 1 would let the draft's own 8x8 DCT scaling
#: or the box filter set output pixels nearly alone; more than 2 gives up most of the JPEG speed-up
#: (draft scales only by powers of two).
FAST_DECODE_MARGIN = 2

# Pillow formats whose decoder can scale while decoding (``Image.draft``).
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Modes ``Image.reduce`` averages correctly (palette indices and 1-bit pixels cannot be averaged; 16-bit
# integer images are widened to "I" first).
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"})

def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image suffix (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path | str) -> list[Path]:
    """Sorted image files directly inside ``folder`` (hidden and non-image files ignored)."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of images, found a file")
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder: {error_reason(exc)}") from None
    return sorted((p for p in entries if is_image_file(p)), key=lambda p: p.name)


def describe_source(source: ImageSource) -> str:
    """Short human-readable name of an image source for error messages."""
    if isinstance(source, np.ndarray):
        return f"<in-memory array {'x'.join(map(str, source.shape))} {source.dtype}>"
    return str(source)


def error_reason(exc: BaseException) -> str:
    """First line of an exception message (PIL messages can span lines or be empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def supported_formats() -> list[str]:
    """:data:`SUPPORTED_FORMATS` that this Pillow registers: what ``Image.open(..., formats=)`` may be given."""
    Image.init()  # registers every plugin (it returns at once once done)
    return [name for name in SUPPORTED_FORMATS if name in Image.OPEN]


_quiet_lock = threading.Lock()
_quiet_users = 0
_QUIET_FILTER = ("ignore", None, Image.DecompressionBombWarning, None, 0)  # a warnings.filters entry


@contextlib.contextmanager
def quiet_large_frames() -> Iterator[None]:
    """Pillow's DecompressionBombWarning off while the block runs (module docstring: frames up to Pillow's
    refusal are read without a word; beyond it Pillow raises, and the callers make that one line).

    Thread-safe, unlike ``warnings.catch_warnings``: the first of the threads inside installs one filter,
    the last one out removes that filter (and nothing else), so decoders and heatmap writers running at
    once never restore each other's filter lists.
    """
    global _quiet_users
    with _quiet_lock:
        if _quiet_users == 0:
            warnings.filters.insert(0, _QUIET_FILTER)  # first: whatever else is set, this warning is off
            _filters_changed()
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            if _quiet_users > 0:  # 0 in a forked child whose parent was inside (see _after_fork)
                _quiet_users -= 1
                if _quiet_users == 0:
                    _remove_quiet_filter()


def _remove_quiet_filter() -> None:
    with contextlib.suppress(ValueError):
        warnings.filters.remove(_QUIET_FILTER)  # the first such entry: ours (a user's own stays)
    _filters_changed()


def _after_fork() -> None:
    """In a forked child (a decoding worker): a fresh lock — another thread of the parent may have held it
    at the fork, and nobody would release it here — and no quiet block in progress."""
    global _quiet_lock, _quiet_users
    _quiet_lock = threading.Lock()
    if _quiet_users:
        _quiet_users = 0
        _remove_quiet_filter()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _filters_changed() -> None:
    """Tell ``warnings`` its filter list changed (as ``filterwarnings`` does), so that nothing it cached
    under the old list — "this warning was ignored here" — outlives the change."""
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()


def open_image(source: Path | str | object) -> Image.Image:
    """``Image.open`` restricted to :data:`SUPPORTED_FORMATS`, without the large-frame warning (module
    docstring). ``source``: a path or a binary file object. Pillow's own exceptions pass through (callers
    turn them into one line): ``UnidentifiedImageError`` for any other format, ``DecompressionBombError``
    beyond the limit."""
    with quiet_large_frames():
        return Image.open(source, formats=supported_formats())


@contextlib.contextmanager
def open_decoded(path: Path, what: str = "image", fast_for: tuple[int, int] | None = None) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow and fully decode it, turning any failure into DataError.

    ``load()`` is called inside the ``try`` because Pillow opens lazily: a truncated file only
    fails when pixels are decoded, and that must happen here, not deep inside a detector.
    ``fast_for``: the (height, width) the image is going to be resized to — decode it shrunk
    (module docstring, "fast"); None decodes every pixel.
    """
    if not path.exists():
        raise DataError(f"{path}: cannot read {what}: file does not exist")
    if path.is_dir():
        raise DataError(f"{path}: cannot read {what}: is a folder, not an image file")
    try:
        with quiet_large_frames():  # decoding too: TIFF checks its strips, MPO its frames
            img = open_image(path)
            if fast_for is not None:
                img = _shrunk_while_decoding(img, fast_for)
            img.load()
    except UnidentifiedImageError:
        raise DataError(f"{path}: cannot read {what}: not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: cannot read {what}: image too large ({error_reason(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Pillow signals corrupt/truncated data with all of these depending on the codec.
        raise DataError(f"{path}: cannot read {what}: {error_reason(exc)}") from None
    try:
        with quiet_large_frames():  # what callers do with the image (conversions, strips) stays quiet too
            yield img
    finally:
        img.close()


def _shrunk_while_decoding(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """The "fast" decode of an opened (not yet loaded) image for a working size ``target`` (height, width):
    JPEG decoded at 1/2, 1/4 or 1/8 scale, other formats box-reduced by a whole factor, never below
    ``FAST_DECODE_MARGIN`` times ``target``. Modes that cannot be averaged are left whole."""
    height, width = target
    floor = (width * FAST_DECODE_MARGIN, height * FAST_DECODE_MARGIN)  # Pillow sizes are (width, height)
    if img.format in _DRAFT_FORMATS:
        # draft picks the largest scale whose result is still >= the requested size on both sides.
        img.draft(img.mode, floor)
        return img
    factor = min(img.size[0] // floor[0], img.size[1] // floor[1])
    if factor < 2:
        return img
    img.load()
    mode = "I" if img.mode.startswith("I;16") else img.mode  # 16-bit: same values in a mode reduce can average
    if mode not in _REDUCIBLE_MODES:
        return img
    with img, (img.convert(mode) if mode != img.mode else contextlib.nullcontext(img)) as whole:
        return whole.reduce(factor)  # the whole frame (and its file) closed as soon as it is reduced


def check_decode_mode(decode: str) -> str:
    """``decode`` when it is one of :data:`DECODE_MODES`, else a one-line ConfigError."""
    if decode not in DECODE_MODES:
        raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    return decode
