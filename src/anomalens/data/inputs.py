"""What ``Detector.score`` / ``predict`` accept, turned into records or a decoded batch in one place.

Accepted, alone or in a list / tuple (one image per element):

* ``ImageRecord`` — as is;
* a file path (``str`` / ``Path``) — one image; a folder — its images (sorted, as ``anomalens predict``);
* a numpy array ``(H, W)`` or ``(H, W, 1|2|3|4)`` (uint8, uint16, bool or float in [0, 1]) — one image,
  and alone a 4-D array ``(N, H, W, C)`` — N images;
* a PIL image — one image (its mode converted as a file's would be);
* a torch tensor ``(C, H, W)`` — one image, and alone a 4-D tensor ``(N, C, H, W)`` — N images; float in
  [0, 1] or uint8 (scaled by 1/255), channels first as in torch.

A float32 4-D tensor already at the detector's input size and channels goes to the model as it is (an
:class:`~anomalens.data.torch_dataset.ImageBatch`: no decode, no resize, no copy); everything else becomes
``ImageRecord`` s (arrays in memory, files read lazily) and is resized the one way the library resizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomalens.data.io import check_unit_range, list_images, pil_to_float
from anomalens.data.records import ImageRecord
from anomalens.errors import DataError

__all__ = ["as_image_inputs"]


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL") and hasattr(value, "getbands")


def _tensor_to_hwc(tensor: Any, name: str) -> np.ndarray:
    """(C, H, W) tensor → (H, W, C) numpy in its own dtype (uint8 stays uint8)."""
    array = tensor.detach().cpu().numpy()
    if array.ndim != 3:
        raise DataError(f"{name}: an image tensor must be (C, H, W), got shape {tuple(array.shape)}")
    return np.moveaxis(array, 0, -1)


def _record(item: Any, index: int) -> list[ImageRecord]:
    if isinstance(item, ImageRecord):
        return [item]
    if isinstance(item, (str, Path)):
        path = Path(item)
        if path.is_dir():
            return [ImageRecord(source=p, label=-1, name=p.name) for p in list_images(path)]
        return [ImageRecord(source=path, label=-1, name=path.name)]
    name = f"image {index}"
    if isinstance(item, np.ndarray):
        return [ImageRecord(source=item, label=-1, name=name)]
    if _is_pil(item):
        return [ImageRecord(source=pil_to_float(item, name), label=-1, name=name)]
    if _is_tensor(item):
        return [ImageRecord(source=_tensor_to_hwc(item, name), label=-1, name=name)]
    raise DataError(f"{name}: cannot use a {type(item).__name__} as an image; give file paths, numpy arrays, "
                    "PIL images, torch tensors or ImageRecords")


def as_image_inputs(images: Any, input_size: tuple[int, int] | None = None, channels: int = 3) -> Any:
    """``images`` (see the module docstring) → a list of ``ImageRecord`` s, or an ``ImageBatch`` when they
    are a float32 tensor batch already at ``input_size`` with ``channels`` (checked to be finite, in [0, 1])."""
    from anomalens.data.torch_dataset import ImageBatch

    if isinstance(images, ImageBatch):
        return images
    if _is_tensor(images) and images.ndim == 4:
        import torch

        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise DataError(f"an image tensor must be float in [0, 1] or uint8, got {images.dtype}")
        batch = images.float()
        if batch.numel():
            check_unit_range(np.array([float(batch.min()), float(batch.max())]) if bool(torch.isfinite(batch).all())
                              else np.array([np.nan]), "image tensor")
        if input_size is None or (tuple(batch.shape[2:]) == tuple(input_size) and batch.shape[1] == channels):
            return ImageBatch(batch)
        return [ImageRecord(source=np.moveaxis(image.detach().cpu().numpy(), 0, -1), label=-1, name=f"image {i}")
                for i, image in enumerate(batch)]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [ImageRecord(source=image, label=-1, name=f"image {i}") for i, image in enumerate(images)]
    if isinstance(images, (str, Path, np.ndarray, ImageRecord)) or _is_pil(images) or _is_tensor(images):
        return _record(images, 0)
    if not isinstance(images, Sequence) and not hasattr(images, "__iter__"):
        raise DataError(f"cannot use a {type(images).__name__} as images; give a list of paths, arrays, "
                        "PIL images, tensors or ImageRecords")
    records: list[ImageRecord] = []
    for i, item in enumerate(images):
        records.extend(_record(item, i))
    return records
