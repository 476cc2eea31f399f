"""Running sums of per-position Gaussians: ``GaussianSums``, the state of a PaDiM fit before it becomes
means and whiteners — the same class whether the images are summed in this process (the fit, its
hold-out, its cross-fit folds) or on shards and merged (``anomalens.distributed.sharded_fit``).

For P positions and d channels the sums are taken about a shift s (the first batch's mean), per position:
the count n, Σ(x − s) in float64 and Σ(x − s)(x − s)ᵀ in float32. About s, Σ = E[(x−s)(x−s)ᵀ] − (μ−s)(μ−s)ᵀ
cancels far less, and the float32 sum of products of a few thousand images loses < 1e-6 relative.
Memory: P·d² floats, whatever the number of images.

- ``GaussianSums.about(batch)`` starts them, ``add(batch)`` adds a batch of (B, P, d) embeddings;
- ``merge(parts)``: the sums of several parts (shards) about the first part's shift, in float64;
- ``finish(epsilon)``: the Gaussians (eq. 1 of PaDiM: Σ + εI) as means and whiteners, in place of the
  (P, d, d) accumulator, and optionally the distances of held-out images included in the sums, from the
  Gaussians of the others (the sums minus their own terms);
- ``mean_and_whitener``: the Gaussian of a chunk of positions from sums, in float64.

``KeptEmbeddings`` keeps the embedding batches of a pass for a second use, within a memory bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from anomalens.models.components.gaussian import inverse_sqrt
from anomalens.threads import map_on_threads

# Positions per chunk of the (P, d, d) products: never a second full-size (P, d, d) tensor.
# 64 for the chunks spread over threads (``map_on_threads``, a chunk per core at a time): their float64
# temporaries stay small — a 256 px fit peaked at 1,330 MB with 64 and 1,770 MB with 256, at the same speed.
ADD_CHUNK = 512
FINISH_CHUNK = 64


def position_chunks(positions: int, size: int) -> list[slice]:
    """Slices of ``size`` positions covering ``positions``: the units the per-position work is done in (and
    spread over threads by ``map_on_threads``: disjoint outputs, one thread each, the same bits)."""
    return [slice(start, start + size) for start in range(0, positions, size)]


def mean_and_whitener(outer: torch.Tensor, total: torch.Tensor, count: int, epsilon: float,
                      denominator: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean about s, whitener W with WᵀW = Σ⁻¹) of a chunk of positions, in float64 (PaDiM eq. 1).

    Σ = scatter / (count − 1) + εI; ``denominator`` replaces count − 1 (leave-one-out: count − 2)."""
    mean, cov = mean_and_covariance(outer, total, count, epsilon, denominator)
    return mean, inverse_sqrt(cov)


def mean_and_covariance(outer: torch.Tensor, total: torch.Tensor, count: int, epsilon: float,
                        denominator: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean about s, Σ) of a chunk of positions in float64, as ``mean_and_whitener`` takes them."""
    if count < 2:
        raise ValueError("padim: needs at least 2 training images to estimate covariances")
    mean = total / count
    cov = (outer.double() - count * mean.unsqueeze(2) * mean.unsqueeze(1)) / (denominator or count - 1)
    cov.diagonal(dim1=-2, dim2=-1).add_(epsilon)
    return mean, cov


@dataclass
class GaussianSums:
    """Per-position running sums about ``shift`` (module docstring): ``count`` images, ``total`` (P, d)
    float64 = Σ(x − s), ``outer`` (P, d, d) float32 = Σ(x − s)(x − s)ᵀ; ``grid``: the (h, w) of the P
    positions, when known (the shards' parts carry it)."""

    count: int
    shift: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor
    grid: tuple[int, int] | None = None

    @classmethod
    def about(cls, embeddings: torch.Tensor) -> "GaussianSums":
        """Empty sums about the mean of a first (B, P, d) batch (which ``add`` then adds like any other)."""
        shift = embeddings.mean(0)
        return cls(0, shift, torch.zeros(shift.shape, dtype=torch.float64, device=shift.device),
                   torch.zeros(shift.shape + shift.shape[-1:], dtype=torch.float32, device=shift.device))

    def add(self, embeddings: torch.Tensor) -> None:
        """Add a (B, P, d) batch of embeddings."""
        # contiguous: the embedding's layout leaves neither matrix dimension unit-strided, and baddbmm on it
        # was measured 6-50x slower
        centred = (embeddings - self.shift).transpose(0, 1).contiguous()  # (P, B, d)
        self.total += centred.sum(1)
        for start in range(0, len(centred), ADD_CHUNK):
            part = centred[start : start + ADD_CHUNK]
            self.outer[start : start + ADD_CHUNK].baddbmm_(part.transpose(1, 2), part)
        self.count += embeddings.shape[0]

    def empty_part(self) -> "GaussianSums":
        """Sums of no image about the same shift, with buffers of the same shape (a fold's, to be filled)."""
        return GaussianSums(0, self.shift, torch.zeros_like(self.total), torch.empty_like(self.outer), self.grid)

    def clear(self) -> None:
        """Back to the sums of no image (same shift, buffers reused)."""
        self.count = 0
        self.total.zero_()
        self.outer.zero_()

    def to(self, device: torch.device | str, copy: bool = False) -> "GaussianSums":
        """The sums on ``device`` (the same tensors when already there, unless ``copy``)."""
        return GaussianSums(self.count, self.shift.to(device, copy=copy), self.total.to(device, copy=copy),
                            self.outer.to(device, copy=copy), self.grid)

    @property
    def mean(self) -> torch.Tensor:
        """(P, d) mean about the shift, float64."""
        return self.total / self.count

    @classmethod
    def merge(cls, parts: Iterable["GaussianSums"]) -> "GaussianSums":
        """The sums of every part's images, about the first part's shift s, computed in float64: a part's sums
        about its own s_k become Σ(x − s) = t_k + n_k·δ and Σ(x − s)(x − s)ᵀ = O_k + t_k·δᵀ + δ·t_kᵀ + n_k·δδᵀ,
        with δ = s_k − s. Parts are read one at a time (each holds P·d² floats) and not changed."""
        merged: GaussianSums | None = None
        for part in parts:
            if merged is None:
                merged = cls(part.count, part.shift.clone(), part.total.clone(), part.outer.clone(), part.grid)
                continue
            if tuple(part.grid) != tuple(merged.grid):
                raise ValueError(f"padim: shards disagree on the feature grid ({part.grid} vs {merged.grid})")
            delta = part.shift.double() - merged.shift.double()  # (P, d)
            total, count = part.total.double(), part.count
            for start in range(0, len(delta), FINISH_CHUNK):
                chunk = slice(start, start + FINISH_CHUNK)
                cross = total[chunk].unsqueeze(2) * delta[chunk].unsqueeze(1)  # t·δᵀ, (p, d, d)
                outer = (part.outer[chunk].double() + cross + cross.transpose(1, 2)
                         + count * delta[chunk].unsqueeze(2) * delta[chunk].unsqueeze(1))
                merged.outer[chunk] = (merged.outer[chunk].double() + outer).float()
            merged.total += total + count * delta
            merged.count += count
        if merged is None:
            raise ValueError("padim: no shard sums to merge")
        return merged

    @torch.inference_mode()
    def finish(self, epsilon: float,
               holdout: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(mean (P, d), whitener (P, d, d), held-out distances (n, P) or None): the Gaussians of the sums, the
        whiteners written in place of ``outer`` (no second (P, d, d) buffer; ``count``, ``total`` and ``shift``
        stay).

        ``holdout``: (n, P, d) embeddings of held-out images that are *included* in the sums. Their Mahalanobis
        distances are returned, computed with the Gaussians of the other images only (sums minus their own
        terms): the final model uses every image, the threshold still comes from images its estimate did not see.
        """
        outer, total, count, shift = self.outer, self.total, self.count, self.shift
        mean = (total / count + shift.double()).float()
        held = None if holdout is None else (holdout - shift).transpose(0, 1)  # (P, n, d)
        distances = None if held is None else torch.empty(held.shape[:2], device=outer.device)  # (P, n)
        def finish_chunk(chunk: slice) -> None:
            if held is not None:
                h = held[chunk]
                leave_out_outer = outer[chunk].double() - torch.bmm(h.transpose(1, 2), h).double()
                held_mean, whitener = mean_and_whitener(leave_out_outer, total[chunk] - h.double().sum(1),
                                                        count - h.shape[1], epsilon)
                diff = (h.double() - held_mean.unsqueeze(1)).transpose(1, 2)  # (p, d, n)
                distances[chunk] = torch.bmm(whitener, diff).pow(2).sum(1).sqrt().float()
            outer[chunk] = mean_and_whitener(outer[chunk], total[chunk], count, epsilon)[1]

        map_on_threads(finish_chunk, position_chunks(len(outer), FINISH_CHUNK), outer.device)
        return mean, outer, None if distances is None else distances.transpose(0, 1)


class KeptEmbeddings:
    """(B, P, d) embedding batches of a feature pass kept for a second use — all of them, or none once they
    would exceed ``limit`` bytes (so memory stays bounded whatever the number of images)."""

    def __init__(self, limit: int | None = None) -> None:
        self.batches: list[torch.Tensor] = []
        self.limit = limit
        self.overflowed = False
        self.nbytes = 0

    def add(self, embeddings: torch.Tensor) -> None:
        if self.overflowed:
            return
        self.nbytes += embeddings.numel() * embeddings.element_size()
        if self.limit is not None and self.nbytes > self.limit:
            self.batches.clear()
            self.overflowed = True
            return
        self.batches.append(embeddings)

    def complete(self, count: int) -> bool:
        return not self.overflowed and sum(len(b) for b in self.batches) == count

    def positions(self, chunk: slice) -> torch.Tensor:
        """(n, p, d): every kept image's embeddings at the positions ``chunk``."""
        return torch.cat([b[:, chunk] for b in self.batches])

    def all(self) -> torch.Tensor:
        return torch.cat(self.batches)
