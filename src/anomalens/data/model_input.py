"""One image → the tensor a model sees: decode once, convert each channel to float on its own, resize with
the library's one resize (bilinear, antialiased, clamped to [0, 1]).

:func:`decode_for_model` is what every path that reads images uses, through ``anomalens.data.torch_dataset``'s
loaders, the torch ``Predictor`` and Ray's workers: the same pixels everywhere, bit for bit.

Tiles (:class:`ImageTile`, the source of a record that is one tile of a larger image; ``anomalens.tiling``
makes them) decode as the crop of their image *after* it is resized to the working size, so a tile is
bit for bit the crop the tiled inference module cuts from that image. Consecutive tiles of one image are
cut from one decode: each process keeps the last working image it decoded.

Large frames: the float copy of a frame is never whole — each channel is converted (in row strips) and
resized on its own (interpolation is per channel, so the result is the same bit for bit), so a 12000² RGB
PNG needs its uint8 pixels plus one float channel, not three. ``decode="fast"`` (a detector's ``decode``
hyper-parameter, set for a block by :func:`decoding_mode`) shrinks large files while decoding
(``anomalens.data.io``, "fast"); the mode is fixed when a dataset is made, so worker processes use it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomalens.data.io import check_decode_mode, describe_source, image_size as stored_image_size, read_pixels, to_float_channels
from anomalens.data.pictures import display_picture
from anomalens.errors import DataError

__all__ = ["ImageTile", "as_hw", "current_decode_mode", "decode_for_model", "decoding_mode", "forget_working_image",
           "resize_image"]

_decode_override: str | None = None

# Float pixels converted at a time when a channel is made: a strip of rows, not the whole frame.
_STRIP_PIXELS = 4 << 20


@contextlib.contextmanager
def decoding_mode(decode: str | None) -> Iterator[None]:
    """Within the block, decode files the ``decode`` way ("exact" or "fast", ``anomalens.data.io``) wherever a
    caller does not say (None: leave it as it is). A detector runs its fit, scoring and calibration inside
    one, so models that build their own loops decode as the run says."""
    global _decode_override
    if decode is not None:
        check_decode_mode(decode)
    previous = _decode_override
    if decode is not None:
        _decode_override = decode
    try:
        yield
    finally:
        _decode_override = previous


def current_decode_mode(decode: str | None = None) -> str:
    """``decode`` when given (checked), else the enclosing :func:`decoding_mode`'s, else "exact"."""
    if decode is not None:
        return check_decode_mode(decode)
    return _decode_override or "exact"


@dataclass(frozen=True, eq=False)
class ImageTile:
    """The source of one tile: ``image`` (a file path or an array) resized to ``working_size`` (the one
    resize of the library), then cropped to ``size`` at (``top``, ``left``) — (height, width) pairs.

    A record whose ``source`` is an ImageTile goes through every data path like an image of ``size``.
    """

    image: Path | str | np.ndarray
    working_size: tuple[int, int]
    top: int
    left: int
    size: tuple[int, int]

    def __post_init__(self) -> None:
        (height, width), (tile_h, tile_w) = self.working_size, self.size
        if not (0 <= self.top <= height - tile_h and 0 <= self.left <= width - tile_w):
            raise DataError(f"{describe_source(self.image)}: tile {tile_h}x{tile_w} at ({self.top}, {self.left}) "
                            f"is outside the working image {height}x{width}")

    def __str__(self) -> str:
        return (f"{describe_source(self.image)} (tile {self.size[0]}x{self.size[1]} at y={self.top}, x={self.left} "
                f"of the image resized to {self.working_size[0]}x{self.working_size[1]})")


# The last working image this process decoded for tiles: (identity of its source, size, channels and decode
# mode, image).
# The tiles of one image are consecutive in a record list, and a DataLoader gives consecutive records to
# one worker, so each image is decoded about once per worker, not once per tile.
_last_working_image: list[tuple[Any, tuple[int, int], tuple[int, str], torch.Tensor]] = []


def _source_identity(source: Any) -> Any:
    """What tells one decoded source from another: the array object itself, or a file's path, size and
    modification time (a file rewritten between two fits is decoded again)."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    try:
        stat = path.stat()
    except OSError:
        return (str(path), None)  # decoding it reports the problem
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _same_identity(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    return a == b and a[1] is not None


def _working_image(tile: ImageTile, channels: int, decode: str) -> torch.Tensor:
    """``tile.image`` decoded and resized to ``tile.working_size`` (C, H, W), from the cache when it is the
    last one this process decoded."""
    identity = _source_identity(tile.image)
    size = tuple(tile.working_size)
    how = (channels, decode)
    if _last_working_image:
        cached_identity, cached_size, cached_how, image = _last_working_image[0]
        if cached_size == size and cached_how == how and _same_identity(cached_identity, identity):
            return image
    pixels = read_pixels(tile.image, fast_for=size if decode == "fast" else None)
    image = _resized_channels(pixels, channels, size)
    _last_working_image[:] = [(identity, size, how, image)]
    return image


def forget_working_image() -> None:
    """Drop this process's cached working image (the end of a loop over tiles: it can be tens of MB)."""
    _last_working_image.clear()


def as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise DataError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(hw) < 1:
        raise DataError(f"image_size must be positive, got {image_size!r}")
    return hw


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) float → (C, H, W): bilinear, antialiased, clamped to [0, 1] (the one resize of the library)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    # Bilinear interpolation stays within the input range, but rounding can step just outside [0, 1];
    # detectors assume the closed interval.
    return image.clamp_(0.0, 1.0)


def _float_planes(pixels: np.ndarray, channels: int) -> Iterator[np.ndarray]:
    """What ``read_pixels`` gave → the float32 (h, w) planes of ``load_image(...)``, one at a time, each
    converted a strip of rows at a time (a 12000² frame is 0.58 GB per float plane, 1.7 GB for three).

    Grey stored pixels give one plane even for ``channels=3`` (the three would be equal). The strips go
    through ``to_float_channels`` itself, so every value is the one ``load_image`` computes. Every plane is
    the same buffer, refilled: use each before asking for the next.
    """
    stored = pixels[..., None] if pixels.ndim == 2 else pixels
    height, width, have = stored.shape
    rows = max(1, _STRIP_PIXELS // max(1, width * have))
    luma = channels == 1 and have == 3
    plane = np.empty((height, width), np.float32)  # one buffer, refilled for each channel
    for c in range(1 if luma or have == 1 else channels):
        if stored.dtype == np.uint8 and not luma:
            # What to_float_channels computes for 8-bit pixels (float32 / 255, already in [0, 1]), in one pass.
            plane[...] = stored[..., c]  # exact: every uint8 is a float32
            plane /= np.float32(255.0)
        else:
            source = stored if luma else stored[..., c : c + 1]
            for top in range(0, height, rows):
                plane[top : top + rows] = to_float_channels(source[top : top + rows], 1)[..., 0]
        yield plane


def _resized_channels(pixels: np.ndarray, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """What ``read_pixels`` gave → the model input float32 (C, H, W) at ``size``: each channel converted and
    resized on its own, so only one float plane of a large frame exists at a time. Equal, bit for bit, to
    resizing ``load_image(...)`` permuted to (C, h, w) as a whole (the resize treats channels separately)."""
    at_size = tuple(pixels.shape[:2]) == tuple(size)  # no resize: keep a copy, the buffer is refilled
    planes = [torch.from_numpy(plane.copy()) if at_size else resize_image(torch.from_numpy(plane)[None], size)[0]
              for plane in _float_planes(pixels, channels)]
    image = torch.stack(planes)
    if image.shape[0] == 1 and channels == 3:
        image = image.expand(3, -1, -1).contiguous()
    return image


def decode_for_model(source: Any, image_size: int | tuple[int, int], channels: int = 3,
                     display: bool = False, decode: str | None = None
                     ) -> tuple[torch.Tensor, np.ndarray | None, tuple[int, int]]:
    """Read ``source`` once → (model input (C, H, W) float32 at ``image_size``, the uint8 picture for a
    heatmap when ``display`` (else None), the original (height, width)).

    The model input equals ``TensorImageDataset``'s (same decode, same resize), bit for bit. An
    :class:`ImageTile` gives its crop of the working image (no picture; its "original" size is the tile's).
    ``decode``: "exact" or "fast" (None: :func:`current_decode_mode`). A file the fast decode shrank has no
    picture here (it is not the file's own resolution): the heatmap writer reads the file for it.
    """
    decode = current_decode_mode(decode)
    size = as_hw(image_size)
    if isinstance(source, ImageTile):
        top, left = source.top, source.left
        crop = _working_image(source, channels, decode)[:, top : top + source.size[0], left : left + source.size[1]]
        return resize_image(crop.clone(), size), None, tuple(source.size)
    fast = decode == "fast" and not isinstance(source, np.ndarray)
    pixels = read_pixels(source, fast_for=size) if fast else read_pixels(source)
    decoded = (int(pixels.shape[0]), int(pixels.shape[1]))
    original = stored_image_size(source) if fast else decoded
    picture = display_picture(pixels) if display and decoded == original else None
    image = _resized_channels(pixels, channels, size)
    return image, picture, original
