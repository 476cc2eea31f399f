"""Locally aware patch features (PatchCore, Roth et al. 2022, Sec. 3.1, eq. 1-3), written once for PatchCore
and for the detectors that take them from it (SimpleNet, GLASS: ``feature_discrimination``).

Each backbone level's feature map is averaged over a p × p neighbourhood (stride 1, zero padding as in the
reference code), pooled along the channels to the width ``embedding_dims`` allows, bilinearly resized onto the
first level's grid, and the levels concatenated: one vector per first-level position. The reference code pools
every level to ``pretrain_embed_dimension`` channels and the concatenation to ``target_embed_dimension``; here a
level is only ever *reduced* (the reference would up-sample a small level by repeating channels, which merely
re-weights the levels), so EfficientNet-Lite0's 40 + 112 channels stay 152.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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
