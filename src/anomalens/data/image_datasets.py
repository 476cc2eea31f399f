"""What one item of a loop over images is: the torch datasets that decode a record, and the batch types.

- ``TensorImageDataset``: a record → ``{"image", "mask", "label", "index"}`` at a fixed size (fit, test,
  calibrate, ``Detector.score``);
- ``ImageBatch``: images already decoded and sized (a tensor or array batch given to ``score`` / ``predict``),
  cut into the same batch dicts without decoding;
- ``DecodedImages`` and its ``DecodedBatch``: a record → its model input and, on request, the picture for its
  heatmap, with an unreadable file reported in the batch instead of raised (``anomalens predict``).

These run inside the decoding worker processes; how many workers there are, how they are started and watched,
and the loops over batches are ``anomalens.data.torch_dataset``. Decoding one image (tiles, large frames, the
decode mode) is ``anomalens.data.model_input``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from anomalens.data.io import describe_source, load_mask
from anomalens.data.model_input import as_hw, current_decode_mode, decode_for_model, resize_image
from anomalens.data.records import ImageRecord
from anomalens.errors import DataError

#: Pictures larger than this (pixels) are not sent back from a decoding worker for heatmaps: they would
#: fill the prefetch queue with hundreds of MB; their heatmap writer reads the file again instead.
DISPLAY_PIXEL_LIMIT = 4_500_000


class TensorImageDataset(Dataset):
    """Records as dicts of tensors, resized to ``image_size``.

    Item ``i`` is ``{"image": float32 (C, H, W) in [0, 1] (bilinear, antialiased),
    "mask": float32 (1, H, W) of 0/1 (nearest; zeros without a mask), "label": int,
    "index": i}``. A mask whose size differs from its image raises DataError naming both.
    """

    def __init__(self, records: Sequence[ImageRecord], image_size: int | tuple[int, int], channels: int = 3,
                 decode: str | None = None) -> None:
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        self.records = list(records)
        self.image_size = as_hw(image_size)
        self.channels = channels
        # Fixed now (not read from the enclosing decoding_mode when an item is decoded): worker processes
        # get the dataset, not this process's context.
        self.decode = current_decode_mode(decode)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        rec = self.records[i]
        image, _, original = decode_for_model(rec.source, self.image_size, self.channels, decode=self.decode)
        h, w = self.image_size
        if rec.mask is None:
            mask = torch.zeros((1, h, w), dtype=torch.float32)
        else:
            m = load_mask(rec.mask)
            if m.shape != original:
                raise DataError(
                    f"{describe_source(rec.mask)}: mask size {m.shape[1]}x{m.shape[0]} (WxH) does not match "
                    f"image {describe_source(rec.source)} size {original[1]}x{original[0]}"
                )
            mask = torch.from_numpy(m.astype(np.float32))[None]
            if mask.shape[1:] != (h, w):
                # "nearest-exact" samples pixel centres (like PIL/skimage); plain "nearest"
                # shifts masks by up to a pixel when downscaling.
                mask = F.interpolate(mask[None], size=(h, w), mode="nearest-exact")[0]
        return {"image": image, "mask": mask, "label": int(rec.label), "index": i}


class ImageBatch:
    """Images already decoded and sized: float32 (N, C, H, W) in [0, 1]. ``Detector.score`` / ``predict``
    take one (``anomalens.data.as_image_inputs`` makes it from a tensor or array batch) and run it without
    any decoding or resizing; it slices like a list, so ``predict_in_chunks`` works on it too."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise DataError(f"an image batch must be (N, C, H, W), got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: slice | int) -> ImageBatch:
        if isinstance(index, slice):
            return ImageBatch(self.images[index])
        return ImageBatch(self.images[index : index + 1])

    def __iter__(self) -> Iterator[ImageBatch]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"ImageBatch({'x'.join(map(str, self.images.shape))} {self.images.dtype})"

    def batch_dicts(self, size: tuple[int, int], channels: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """The images as ``iterate_batches`` yields decoded ones: grey expanded to RGB where ``channels`` is 3,
        resized only when not already ``size``; no mask (zeros), label -1."""
        images = self.images
        if images.shape[1] != channels:
            if channels == 3 and images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            else:
                raise DataError(f"images have {images.shape[1]} channels; this detector takes {channels}")
        for start in range(0, len(self), batch_size):
            chunk = images[start : start + batch_size]
            if tuple(chunk.shape[2:]) != size:
                chunk = torch.stack([resize_image(image.float(), size) for image in chunk])
            n = len(chunk)
            yield {"image": chunk.float().contiguous(), "mask": torch.zeros((n, 1, *size)),
                   "label": torch.full((n,), -1), "index": torch.arange(start, start + n)}


@dataclass
class DecodedBatch:
    """One batch of ``iterate_decoded``: for each of its records (``indices`` into the list), the model
    input (a row of ``images``), the uint8 picture for its heatmap (``pictures[k]``, None when not asked for,
    when unreadable or — larger than ``DISPLAY_PIXEL_LIMIT`` — left for the writer to read), its original
    (height, width) and, for a file that could not be read, the one-line reason in ``errors[k]`` (its row of
    ``images`` is then zeros)."""

    indices: list[int]
    images: torch.Tensor
    pictures: list[np.ndarray | None]
    sizes: list[tuple[int, int]]
    errors: list[str | None]

    def pin_memory(self) -> DecodedBatch:  # called by the DataLoader's pinning thread on CUDA
        self.images = self.images.pin_memory()
        return self


class DecodedImages(Dataset):
    """Records → (index, model input, picture or None, original size, error or None): an unreadable file
    becomes a zero image and its one-line reason, so the loop goes on (``collate`` makes a ``DecodedBatch``)."""

    def __init__(self, records: Sequence[ImageRecord], image_size: tuple[int, int], channels: int, pictures: bool,
                 decode: str) -> None:
        self.records, self.image_size, self.channels, self.pictures = records, image_size, channels, pictures
        self.decode = decode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple:
        try:
            image, picture, size = decode_for_model(self.records[i].source, self.image_size, self.channels,
                                                    self.pictures, self.decode)
        except DataError as exc:
            return i, torch.zeros((self.channels, *self.image_size)), None, (0, 0), str(exc)
        if picture is not None and picture.shape[0] * picture.shape[1] > DISPLAY_PIXEL_LIMIT:
            picture = None
        # A tensor travels through shared memory; a numpy array would be pickled through a pipe.
        if picture is not None and not picture.flags.writeable:
            picture = picture.copy()  # Pillow's pixels are read-only; torch wants its own
        return i, image, None if picture is None else torch.from_numpy(np.ascontiguousarray(picture)), size, None

    @staticmethod
    def collate(items: list[tuple]) -> DecodedBatch:
        """The DataLoader's ``collate_fn``: items → one ``DecodedBatch``."""
        return DecodedBatch(
            indices=[item[0] for item in items],
            images=torch.stack([item[1] for item in items]),
            pictures=[item[2] for item in items],
            sizes=[item[3] for item in items],
            errors=[item[4] for item in items],
        )
