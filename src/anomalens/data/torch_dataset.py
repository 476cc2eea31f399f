"""PyTorch view of image records: fixed-size float tensors, masks and labels, batched with progress."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from anomalens.data.io import describe_source, load_image, load_mask
from anomalens.data.records import ImageRecord
from anomalens.errors import DataError

__all__ = ["TensorImageDataset", "iterate_batches"]


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise DataError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(hw) < 1:
        raise DataError(f"image_size must be positive, got {image_size!r}")
    return hw


class TensorImageDataset(Dataset):
    """Records as dicts of tensors, resized to ``image_size``.

    Item ``i`` is ``{"image": float32 (C, H, W) in [0, 1] (bilinear, antialiased),
    "mask": float32 (1, H, W) of 0/1 (nearest; zeros without a mask), "label": int,
    "index": i}``. A mask whose size differs from its image raises DataError naming both.
    """

    def __init__(self, records: Sequence[ImageRecord], image_size: int | tuple[int, int], channels: int = 3) -> None:
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        self.records = list(records)
        self.image_size = _as_hw(image_size)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        rec = self.records[i]
        arr = load_image(rec.source, self.channels)
        image = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        h, w = self.image_size
        if image.shape[1:] != (h, w):
            image = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
            # Bilinear interpolation stays within the input range, but rounding can step
            # just outside [0, 1]; detectors assume the closed interval.
            image = image.clamp_(0.0, 1.0)

        if rec.mask is None:
            mask = torch.zeros((1, h, w), dtype=torch.float32)
        else:
            m = load_mask(rec.mask)
            if m.shape != arr.shape[:2]:
                raise DataError(
                    f"{describe_source(rec.mask)}: mask size {m.shape[1]}x{m.shape[0]} (WxH) does not match "
                    f"image {describe_source(rec.source)} size {arr.shape[1]}x{arr.shape[0]}"
                )
            mask = torch.from_numpy(m.astype(np.float32))[None]
            if mask.shape[1:] != (h, w):
                # "nearest-exact" samples pixel centres (like PIL/skimage); plain "nearest"
                # shifts masks by up to a pixel when downscaling.
                mask = F.interpolate(mask[None], size=(h, w), mode="nearest-exact")[0]
        return {"image": image, "mask": mask, "label": int(rec.label), "index": i}


def _unwrap_worker_error(exc: DataError) -> DataError:
    """DataLoader workers re-raise with a multi-line traceback; keep the original one-line message."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    _, sep, message = last.partition("DataError: ")
    return DataError(message if sep else last)


def iterate_batches(
    records: Sequence[ImageRecord],
    image_size: int | tuple[int, int],
    batch_size: int,
    channels: int = 3,
    desc: str | None = None,
    num_workers: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batched dicts (``image`` (B, C, H, W), ``mask`` (B, 1, H, W), ``label`` (B,),
    ``index`` (B,)) in record order, with a tqdm bar labelled ``desc``.

    ``desc=None`` means no bar (callers pass ``desc if progress else None``). Otherwise the bar
    shows only on a terminal (tqdm's ``disable=None``) and never when the environment variable
    ``ANOMALENS_NO_PROGRESS=1`` is set.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    dataset = TensorImageDataset(records, image_size, channels)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    quiet = desc is None or os.environ.get("ANOMALENS_NO_PROGRESS", "") not in ("", "0")
    disable = True if quiet else None
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=disable, leave=False) as bar:
        try:
            for batch in loader:
                yield batch
                bar.update(len(batch["label"]))
        except DataError as exc:
            raise _unwrap_worker_error(exc) from None
