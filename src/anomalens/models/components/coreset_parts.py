"""A coreset memory bank built on shards (PatchCore with ``--engine ray``), as typed parts.

A composable coreset (Indyk et al. 2014; Malkomes et al. 2015 for k-center): every shard selects a greedy
coreset of its own patches, a few times the final fraction (``CoresetPart``); the final coreset, as large as
a single fit keeps, is selected from their union (``MergedCoreset.of``). An approximation: a patch is within
r_shard + r_final of the bank instead of the single greedy's r (both 2-approximations of the optimal radius,
so at most a 4-approximation together); ``benchmarks/distributed.py`` measures the radius and the AUROC
against a single fit. The union itself is kept (``candidates``): the threshold folds' banks (the merged bank
less the fold's entries) fill their holes from its entries that did not come from the fold's images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class CoresetPart:
    """One shard's share: its coreset ``bank`` (M, D) on the CPU, each entry's training image (``origin``, in
    the numbering of all training images), the number of patches it was selected from and their ``grid``."""

    bank: torch.Tensor
    origin: torch.Tensor
    n_patches: int
    grid: tuple[int, int]


@dataclass
class MergedCoreset:
    """The final ``bank`` and each entry's training image (``origin``), and the union of the shards' coresets
    (``candidates``, ``candidate_origin``) the threshold folds fill their banks' holes from."""

    bank: torch.Tensor
    origin: torch.Tensor
    candidates: torch.Tensor
    candidate_origin: torch.Tensor
    grid: tuple[int, int]

    @classmethod
    def of(cls, parts: Iterable[CoresetPart], bank_size: Callable[[int], int],
           select: Callable[[torch.Tensor, int], torch.Tensor], device: torch.device | str) -> "MergedCoreset":
        """The greedy coreset (``select(pool, n)``: indices) of ``bank_size(all patches)`` entries of the union
        of ``parts``, on ``device``; the whole union when that is no smaller."""
        parts = list(parts)
        if not parts:
            raise ValueError("patchcore: no shard coresets to merge")
        union = torch.cat([part.bank for part in parts]).to(device)
        union_origin = torch.cat([part.origin for part in parts])
        bank, origin = union, union_origin
        n_select = bank_size(sum(part.n_patches for part in parts))
        if n_select < len(union):
            index = select(union, n_select)
            bank, origin = union[index.to(union.device)].contiguous(), union_origin[index]
        return cls(bank, origin, union, union_origin, tuple(parts[0].grid))
