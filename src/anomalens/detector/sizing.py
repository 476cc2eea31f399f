"""The sizes a detector works at, as one value object: ``Sizing``.

- the working size ``input_size``: every image is resized to it — ``image_size`` (one side, or [height,
  width]), or with ``resize="keep_aspect"`` the largest size inside it with the training images' aspect
  ratio (``aspect_kept_size``: chosen by ``fit``, saved with the run as the ``working_size`` tensor);
- tiling (``tile_size`` / ``tile_overlap``, ``anomalens.tiling``): the working image cut into tiles the
  model works at — ``model_input_size`` is the tile size when tiling, else ``input_size``;
- the batch plan: at which size a list of records is decoded and how many go in one batch (tiles at the
  tile size, working images at ``input_size`` — with tiling only as many as give about a batch of tiles).

``Detector.sizing`` builds it from the detector's parameters and its fitted working size; the detector's
``input_size``, ``model_input_size`` and ``tiled()`` read it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from anomalens.data.io import image_size as stored_image_size
from anomalens.errors import ConfigError
from anomalens.tiling import TiledInference, TileLayout, is_tile_records

logger = logging.getLogger("anomalens")

#: The saved tensor holding the working size ``fit`` chose with ``resize="keep_aspect"``.
WORKING_SIZE_TENSOR = "working_size"
#: Training images whose aspect ratios differ by more than this share get a warning with keep_aspect.
ASPECT_TOLERANCE = 0.01


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a size given as one side or as a pair."""
    return (size, size) if isinstance(size, int) else (size[0], size[1])


@dataclass(frozen=True)
class Sizing:
    """The working size, the tiles and the batch plan of one detector (module docstring).

    ``image_size``: the parameter (one int or a pair); ``tile_size`` / ``tile_overlap``: the parameters (None
    or 0: no tiling); ``working_size``: the size ``fit`` chose with keep_aspect (None: ``image_size``).
    """

    owner: str
    image_size: int | tuple[int, int]
    tile_size: int | tuple[int, int] | None = None
    tile_overlap: float = 0.0
    working_size: tuple[int, int] | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) every image is resized to: the working size."""
        return self.working_size if self.working_size is not None else pair(self.image_size)

    @property
    def tile_shape(self) -> tuple[int, int] | None:
        """(height, width) of the tiles, or None without tiling."""
        if self.tile_size is None or self.tile_size == 0:
            return None
        return pair(self.tile_size)

    @property
    def tiling(self) -> bool:
        return self.tile_shape is not None

    @property
    def model_input_size(self) -> tuple[int, int]:
        """(height, width) the model itself works at: the tile size when tiling, else ``input_size``."""
        return self.tile_shape or self.input_size

    def check(self) -> None:
        """ConfigError (one line, both sizes) unless the tile fits in the working image."""
        tile = self.tile_size
        if tile is None or tile == 0:
            return
        if not isinstance(tile, int) and min(tile) < 1:
            raise ConfigError(f"{self.owner}: parameter tile_size must be 0 or null (no tiling), a positive integer or "
                              f"a [height, width] pair of them, got {list(tile)}")
        (tile_h, tile_w), (height, width) = self.tile_shape, self.input_size
        if tile_h > height or tile_w > width:
            raise ConfigError(
                f"{self.owner}: tile_size {tile_h}x{tile_w} is larger than the working image {height}x{width} "
                f"(image_size{', aspect kept' if self.working_size else ''}; height x width): use a tile_size of at "
                "most the image size, or a larger image_size"
            )

    def tile_layout(self) -> TileLayout:
        """Where the tiles of a working image lie (``anomalens.tiling``); only when tiling."""
        if self.tile_shape is None:
            raise ConfigError(f"{self.owner}: no tile_size set: this detector does not tile")
        return TileLayout.plan(self.input_size, self.tile_shape, self.tile_overlap)

    def tiled(self, tile_module: torch.nn.Module, tile_batch: int, score_from_map: bool,
              device: torch.device | str) -> torch.nn.Module:
        """The whole-image inference around a model's own module (at ``model_input_size``): the module
        itself without tiling, else a ``TiledInference`` that cuts, scores and blends the tiles."""
        if not self.tiling:
            return tile_module
        return TiledInference(tile_module, self.tile_layout(), tile_batch, score_from_map, device)

    def batch_plan(self, records: Any, batch_size: int) -> tuple[tuple[int, int], int]:
        """(size to decode ``records`` at, records per batch): tiles at the tile size, ``batch_size`` of them;
        images at ``input_size`` — with tiling only as many per batch as give about ``batch_size`` tiles (at
        least one), since a working image is large and its tiles are chunked anyway."""
        if is_tile_records(records):
            return self.model_input_size, batch_size
        if self.tiling:
            return self.input_size, max(1, batch_size // len(self.tile_layout()))
        return self.input_size, batch_size

    def preprocessing(self, resize_mode: str, decode: str, score_from_map: bool) -> dict[str, Any]:
        """How images become the model's tensors, as saved with a run (for users re-implementing the
        pipeline): the working size every image is resized to and, when tiling, how it is cut and blended."""
        info: dict[str, Any] = {"resize": self.image_size, "scale": "[0, 1]", "interpolation": "bilinear, antialiased",
                                "resize_mode": resize_mode, "decode": decode, "working_size": list(self.input_size)}
        if self.tiling:
            layout = self.tile_layout()
            info["tiles"] = {"size": list(layout.tile_size), "overlap": layout.overlap, "rows": list(layout.rows),
                             "cols": list(layout.cols), "blend": "edge-ramp windows, normalised to sum 1",
                             "image_score": "max of the blended map" if score_from_map else "max of the tile scores"}
        return info


def aspect_kept_size(owner: str, records: Sequence, bound: tuple[int, int]) -> tuple[int, int]:
    """The largest (height, width) inside ``bound`` with the median aspect ratio of ``records`` (sizes read
    from the file headers), rounded to whole pixels. Mixed aspect ratios get a warning: the others will be
    resized to this one, distorted as with ``squash``."""
    sizes = []
    for record in records:
        source = getattr(record, "source", record)
        sizes.append(stored_image_size(source))
    ratios = np.array([width / height for height, width in sizes])
    ratio = float(np.median(ratios))
    low, high = float(ratios.min()), float(ratios.max())
    if high > low * (1 + ASPECT_TOLERANCE):
        odd = sizes[int(np.argmax(np.abs(np.log(ratios / ratio))))]
        logger.warning(
            "%s: resize=keep_aspect: the training images' aspect ratios (width / height) range from %.3g to %.3g; "
            "the working size follows their median %.3g, and images of another shape (e.g. one of %dx%d) are "
            "resized to it, distorted", owner, low, high, ratio, odd[1], odd[0])
    height, width = bound
    if width / height > ratio:  # the bound is wider than the images: their height fills it
        return height, max(1, round(height * ratio))
    return max(1, round(width / ratio)), width
