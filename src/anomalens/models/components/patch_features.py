"""Locally aware patch features (PatchCore, Roth et al. 2022, Sec. 3.1, eq. 1-3), written once for PatchCore
and for the detectors that take them from it (SimpleNet, GLASS: ``feature_discrimination``).

Each backbone level's feature map is averaged over a p × p neighbourhood (stride 1, zero padding as in the
reference code), pooled along the channels to the width ``embedding_dims`` allows, bilinearly resized onto the
first level's grid, and the levels concatenated: one vector per first-level position. The reference code pools
every level to ``pretrain_embed_dimension`` channels and the concatenation to ``target_embed_dimension``; here a
level is only ever *reduced* (the reference would up-sample a small level by repeating channels, which merely
re-weights the levels), so EfficientNet-Lite0's 40 + 112 channels stay 152.

``ReferenceEmbedding`` is the reference codes' own aggregation, element for element (SimpleNet's and GLASS's
``aggregation="reference"``): it keeps part of each neighbourhood's layout, where the mean above keeps none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def embedding_dims(channels: Sequence[int], pretrain_dim: int, target_dim: int) -> list[int]:
    """Channels kept per level: at most ``pretrain_dim`` each, and ``target_dim // levels`` each when their sum
    exceeds ``target_dim`` — the reference pooling, never an increase (module docstring)."""
    dims = [min(int(c), pretrain_dim) for c in channels]
    if sum(dims) > target_dim:
        dims = [min(d, target_dim // len(dims)) for d in dims]
    return dims


def patch_embedding(features: list[torch.Tensor], dims: Sequence[int], patch_size: int) -> torch.Tensor:
    """Level features → (B, D, h, w) locally aware patch features on the first level's grid (eq. 1-3)."""
    grid = features[0].shape[-2:]
    p = patch_size
    parts = []
    for fmap, dim in zip(features, dims, strict=True):
        fmap = F.avg_pool2d(fmap, p, stride=1, padding=p // 2) if p > 1 else fmap
        if dim < fmap.shape[1]:
            # Average groups of adjacent channels (adaptive pooling along C), before resizing: cheaper.
            _, c, h, w = fmap.shape
            flat = fmap.permute(0, 2, 3, 1).reshape(-1, 1, c)
            fmap = F.adaptive_avg_pool1d(flat, dim).reshape(-1, h, w, dim).permute(0, 3, 1, 2)
        if fmap.shape[-2:] != grid:
            fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        parts.append(fmap)
    return torch.cat(parts, dim=1)


def pooling_matrix(length: int, size: int) -> torch.Tensor:
    """(length, size) M such that x @ M is ``F.adaptive_avg_pool1d`` of the row x to ``size`` entries."""
    return F.adaptive_avg_pool1d(torch.eye(length).unsqueeze(1), size).squeeze(1)


class ReferenceEmbedding(nn.Module):
    """The reference codes' locally aware features (PatchCore's ``patchify`` + ``MeanMapper`` + ``Aggregator``,
    which SimpleNet and GLASS reuse): each level's p × p neighbourhood unfolded into one channel-major
    (C·p·p) vector (zero padding), resized onto the first level's grid, average-pooled along that vector to
    ``pretrain_dim`` entries; the levels' vectors concatenated and pooled to ``target_dim``. A pooled entry
    averages C·p²/pretrain_dim adjacent entries — part of one channel's neighbourhood — so the vector keeps
    some of the neighbourhood's layout. All of it is linear along the channels, so it runs as one convolution
    per level (weights = the one-hot unfolding times both poolings) and a sum after the resize: the same
    numbers as unfolding (``tests/test_feature_discrimination.py``), without the C·p²-wide intermediate."""

    def __init__(self, channels: Sequence[int], pretrain_dim: int, target_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size, self.dim = patch_size, target_dim
        final = pooling_matrix(len(channels) * pretrain_dim, target_dim)
        self.levels = len(channels)
        for level, c in enumerate(channels):  # fixed by the sizes: rebuilt at load, never saved
            block = pooling_matrix(c * patch_size ** 2, pretrain_dim) @ final[level * pretrain_dim:(level + 1) * pretrain_dim]
            weight = block.T.reshape(target_dim, c, patch_size, patch_size).contiguous()
            self.register_buffer(f"weight{level}", weight, persistent=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        grid = features[0].shape[-2:]
        total = None
        if len(features) != self.levels:
            raise ValueError(f"expected {self.levels} feature levels, got {len(features)}")
        for index, fmap in enumerate(features):
            level = F.conv2d(fmap, getattr(self, f"weight{index}"), padding=self.patch_size // 2)
            if level.shape[-2:] != grid:
                level = F.interpolate(level, size=grid, mode="bilinear", align_corners=False)
            total = level if total is None else total + level
        return total
