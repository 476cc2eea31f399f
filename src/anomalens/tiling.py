"""Tiling: high-resolution images scored as overlapping tiles by a detector's own tile-level module.

A detector that ``tiles`` (PaDiM, PatchCore, SPADE, STPM) takes ``-p tile_size=T`` (one side, or
[height, width]; 0 or null: no tiling) and ``-p tile_overlap=f`` (a fraction of the tile, in [0, 0.9]):

- ``image_size`` stays the working resolution: every image is resized to it, as without tiling (e.g.
  ``image_size=2048``, or ``[1536, 2048]``);
- that working image is cut into tiles of ``tile_size`` — the size the model itself works at — laid out by
  :meth:`TileLayout.plan`: along each axis as few tiles as give at least ``round(f·T)`` pixels of overlap
  between neighbours, spread evenly from the first pixel to the last (so the real overlap is that or a
  little more, and no tile sticks out of the image);
- fit: every tile of every normal image is one normal training sample (the model's fit sees tile records,
  ``ImageTile`` sources, exactly as it would see images of ``tile_size``); the decision rule is then set,
  as without tiling, from *image* scores of normal images not seen by the model that scored them — the
  cross-fitting folds and the hold-out are drawn over images, and all tiles of an image fall in one fold;
- inference (:class:`TiledInference`, what ``inference_module()`` returns): the working image's tiles are
  scored, a chunk of ``batch_size`` tiles at a time, by the detector's tile-level module; the tile maps
  are blended back into one map at the working size; the image score comes from it.

Blending: each tile's map is weighted by a separable window, flat in the middle and ramping down linearly
over ``round(f·T)`` pixels towards each edge (never to zero), divided by the sum of the windows of all
tiles covering the pixel — so the weights of every pixel sum to 1, a map that agrees across tiles comes
back unchanged, and where tiles disagree (a tile's border sees less context) the tile that has the pixel
further from its edge counts more: no seams. Blurring, as each model does, happens per tile, before.

Image score: for the detectors whose score is the maximum of their map (``score_is_map_max``: PaDiM,
STPM) it is the maximum of the blended map, so the image threshold is still a pixel threshold. For the
others it is the largest of their own tile scores (PatchCore: eq. 7 of the tile's worst patch; SPADE: the
kNN distance of the tile's pooled feature): the image is as anomalous as its most anomalous tile.

Positions (PaDiM): its Gaussians are per position *within the tile*: every tile of every training image
is one sample of the Gaussian at each of its positions. So the model no longer knows where in the image a
tile was taken — a texture or a repeated pattern is modelled with many more samples per Gaussian, but an
aligned object larger than a tile is modelled as the mixture of all its parts at each tile position (wider
Gaussians, less sensitive than a per-image-position model). What it buys: the fitted state is P·d² floats
for the P positions of one tile (165 MB for 256 px tiles and d = 100) instead of those of the whole working
image (10 GB at 2048 px).

One inference graph: :class:`TiledInference` is plain torch (slices, the tile module, products, padding,
sums), so ``score`` / ``predict``, the service and ``anomalens export`` all run it. Traced for export it
calls the tile module once per tile position on the whole batch and adds each weighted tile map padded to
full size (nothing depends on the traced batch size; the graph holds the tile module once per position,
its weights once); run eagerly it scores ``batch_size`` tiles at a time and adds them in place, so a 4096²
image never holds all its tiles at once. Both add the tiles in the same order: the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.data.records import ImageRecord
from anomalens.data.model_input import ImageTile
from anomalens.params import Float, Param, Size

#: The hyper-parameters every detector that ``tiles`` declares (``Detector.__init_subclass__`` adds them).
TILING_PARAMS: dict[str, Param] = {
    "tile_size": Size(None, "tiles the model works at, cut from the image at image_size: one side, or [height, "
                      "width]; 0 or null = no tiling (see anomalens.tiling)", low=0, optional=True),
    "tile_overlap": Float(0.25, "overlap between neighbouring tiles, as a fraction of the tile (blended, no seams)",
                          low=0.0, high=0.9),
}


def tile_starts(length: int, tile: int, overlap: float) -> tuple[int, ...]:
    """Offsets of the tiles along one axis of ``length`` pixels: the fewest tiles of ``tile`` pixels that
    overlap by at least ``round(overlap · tile)`` pixels, spread evenly from 0 to ``length − tile``."""
    if not 1 <= tile <= length:
        raise ValueError(f"tile of {tile} pixels does not fit in {length}")
    if tile == length:
        return (0,)
    stride = max(1, tile - round(overlap * tile))
    count = math.ceil((length - tile) / stride) + 1
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


def edge_window(tile: int, ramp: int) -> np.ndarray:
    """(tile,) float64 blending window: 1 in the middle, ramping linearly over ``ramp`` pixels to
    1 / (2·ramp) at each edge — never 0, so a pixel covered by one tile only keeps its value."""
    index = np.arange(tile, dtype=np.float64)
    ramp = max(1, ramp)
    return np.minimum(1.0, np.minimum(index + 0.5, tile - index - 0.5) / ramp)


def normalised_axis_weights(length: int, tile: int, starts: Sequence[int], ramp: int) -> np.ndarray:
    """(len(starts), tile) float32: each tile's window divided by the sum of the windows covering each pixel
    of the axis, so that, placed at their offsets, the rows sum to 1 at every pixel."""
    window = edge_window(tile, ramp)
    total = np.zeros(length, np.float64)
    for start in starts:
        total[start : start + tile] += window
    return np.stack([window / total[start : start + tile] for start in starts]).astype(np.float32)


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of a working image of ``image_size`` lie: row offsets × column offsets, row-major."""

    image_size: tuple[int, int]
    tile_size: tuple[int, int]
    overlap: float
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def plan(cls, image_size: Sequence[int], tile_size: Sequence[int], overlap: float) -> "TileLayout":
        (height, width), (tile_h, tile_w) = tuple(image_size), tuple(tile_size)
        return cls((height, width), (tile_h, tile_w), overlap,
                   tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def boxes(self) -> list[tuple[int, int]]:
        """(top, left) of every tile, row-major: the order of tile records and of the module's tiles."""
        return [(top, left) for top in self.rows for left in self.cols]

    def axis_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n_rows, tile_h), columns (n_cols, tile_w)): tile (i, j) weighs pixel (y, x) of its map by
        rows[i, y] · columns[j, x]; over all tiles covering a pixel these products sum to 1."""
        (height, width), (tile_h, tile_w) = self.image_size, self.tile_size
        return (normalised_axis_weights(height, tile_h, self.rows, round(self.overlap * tile_h)),
                normalised_axis_weights(width, tile_w, self.cols, round(self.overlap * tile_w)))

    def tile_records(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """Each record's tiles, image by image in ``boxes`` order: records the model sees as images of
        ``tile_size`` (their label and defect type are the image's)."""
        tiles = []
        for record in records:
            for top, left in self.boxes:
                source = ImageTile(record.source, self.image_size, top, left, self.tile_size)
                tiles.append(ImageRecord(source=source, label=record.label, name=f"{record.name}@{top},{left}",
                                         defect_type=record.defect_type))
        return tiles

    def tile_indices(self, image_indices: Sequence[int]) -> np.ndarray:
        """Indices, into the tile records of a list of images, of all tiles of the images ``image_indices``."""
        per_image = len(self)
        return (np.asarray(image_indices, dtype=np.int64)[:, None] * per_image + np.arange(per_image)).reshape(-1)


def is_tile_records(records: Any) -> bool:
    """True when ``records`` are tiles (``TileLayout.tile_records``): the model's own input, not images."""
    return (isinstance(records, (list, tuple)) and len(records) > 0 and isinstance(records[0], ImageRecord)
            and isinstance(records[0].source, ImageTile))


class TiledInference(nn.Module):
    """Working images (N, C, H, W) in [0, 1] → (image scores (N,), blended maps (N, H, W)): tiles cut by
    ``layout``, scored ``tile_batch`` at a time by ``tile_module`` (the detector's own module at the tile
    size), maps blended (module docstring); the score is the blended map's maximum when
    ``score_from_map``, else the largest tile score."""

    def __init__(self, tile_module: nn.Module, layout: TileLayout, tile_batch: int, score_from_map: bool,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.tile_module = tile_module
        self.layout, self.tile_batch, self.score_from_map = layout, max(1, int(tile_batch)), score_from_map
        rows, cols = layout.axis_weights()
        self.register_buffer("row_weights", torch.from_numpy(rows).to(device), persistent=False)
        self.register_buffer("col_weights", torch.from_numpy(cols).to(device), persistent=False)

    def tile_weight(self, index: int) -> torch.Tensor:
        """(tile_h, tile_w) blending weights of tile ``index`` (row-major in ``layout.boxes``)."""
        row, col = divmod(index, len(self.layout.cols))
        return self.row_weights[row].unsqueeze(1) * self.col_weights[col].unsqueeze(0)

    def add_tiles(self, blended: torch.Tensor | None, tile_maps: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Add the weighted maps (len(indices), N, tile_h, tile_w) of tiles ``indices`` to ``blended`` (N, H, W;
        None: start from zeros), in order. Eagerly in place; while tracing, as padded full-size maps."""
        (height, width), (tile_h, tile_w) = self.layout.image_size, self.layout.tile_size
        boxes = self.layout.boxes
        tracing = torch.jit.is_tracing()
        if blended is None and not tracing:
            blended = tile_maps.new_zeros((tile_maps.shape[1], height, width))
        for k, index in enumerate(indices):
            top, left = boxes[index]
            weighted = tile_maps[k] * self.tile_weight(index)
            if tracing:
                padded = F.pad(weighted, (left, width - left - tile_w, top, height - top - tile_h))
                blended = padded if blended is None else blended + padded
            else:
                blended[:, top : top + tile_h, left : left + tile_w] += weighted
        return blended

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (tile_h, tile_w), boxes = self.layout.tile_size, self.layout.boxes
        n = images.shape[0]
        if torch.jit.is_tracing():
            # One call per tile position on the N images: nothing in the graph depends on the traced N
            # (a call on all N·T tiles would record the backbone's micro-batch split for the traced N).
            chunks = [[i] for i in range(len(boxes))]
        else:
            per_call = max(1, self.tile_batch // max(1, int(n)))
            chunks = [list(range(s, min(len(boxes), s + per_call))) for s in range(0, len(boxes), per_call)]
        blended, tile_scores = None, []
        for chunk in chunks:
            crops = torch.cat([images[:, :, top : top + tile_h, left : left + tile_w]
                               for top, left in (boxes[i] for i in chunk)])  # tile-major: (len(chunk)·N, C, h, w)
            scores, maps = self.tile_module(crops)[:2]
            tile_scores.append(scores.reshape(len(chunk), -1))
            blended = self.add_tiles(blended, maps.reshape(len(chunk), -1, tile_h, tile_w), chunk)
        if self.score_from_map:
            return blended.flatten(1).amax(1), blended
        return torch.cat(tile_scores).amax(0), blended

    def blend_outputs(self, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile-level outputs of whole images — scores (N·T,), maps (N·T, h, w), image by image in ``boxes``
        order — → image scores (N,) and blended maps (N, H, W), as ``forward`` computes them from the tiles."""
        count = len(self.layout)
        if len(scores) % count:
            raise ValueError(f"{len(scores)} tile outputs are not whole images of {count} tiles")
        device = self.row_weights.device
        image_scores, image_maps = [], []
        with torch.inference_mode():
            for start in range(0, len(scores), count):
                tiles = torch.from_numpy(np.ascontiguousarray(maps[start : start + count])).to(device).unsqueeze(1)
                blended = self.add_tiles(None, tiles, range(count))[0]
                image_maps.append(blended.cpu().numpy())
                image_scores.append(float(blended.max()) if self.score_from_map else float(scores[start : start + count].max()))
        return np.asarray(image_scores, np.float32), np.stack(image_maps)
