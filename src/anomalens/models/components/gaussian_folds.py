"""Out-of-fold distances of per-position Gaussians: PaDiM's cross-fitted threshold (``Detector.fit``).

With n training images per position and d ≈ n, every image counts for the covariances, so the final Gaussians
use all images, and each training image is scored by Gaussians from the running sums (``GaussianSums``)
*minus its own terms* — exactly the model refitted without it, without refitting:

- ``threshold_folds=0`` (PaDiM's default), leave-one-out in closed form. With r = x − μ (μ, S: mean and
  scatter Σ(x − μ)(x − μ)ᵀ of all n images at one position), the model without x has mean μ − r/(n − 1)
  and covariance A − c·r rᵀ, A = S/(n − 2) + εI, c = n/((n − 1)(n − 2)); by Sherman–Morrison its squared
  Mahalanobis distance of x is (n/(n − 1))²·q/(1 − c·q), q = rᵀA⁻¹r. Cost: one more batch of P Cholesky
  factorisations of A and the triangular solves for q; the training embeddings of the accumulating pass are kept for them
  (P·d floats per image, up to PaDiM's ``LEAVE_ONE_OUT_KEEP_BYTES``: ``leave_one_out_products``), beyond
  that a second feature pass and a second P·d² buffer (``leave_one_out_whiteners``, ``batch_products``).
  Why leave-one-out: with n ≈ d the distances of new images grow steeply as n shrinks (the covariance
  estimate is barely determined), so a model fitted on 90 % of the images scores normal images higher
  than the final model does, and a threshold from it misses defects (the benchmark's operating points).
- ``threshold_folds=k``: k seeded folds; per fold, a pass over its images accumulates its sums (same
  reference mean), the Gaussians of the sums minus them are inverted into that buffer (``fold_gaussians``),
  and a second pass scores the fold's images with them through the inference graph. Cost: k batches of P
  inversions and two more feature passes; memory: the same second P·d² buffer, whatever n and k.
- ``threshold_folds=1``: the seeded ``holdout_fraction`` of the images, scored with the sums minus their
  terms (``GaussianSums.finish`` with the held embeddings kept: 1.6 MB per image at 256 px, d = 100).

A (its factors or whiteners) is taken before ``GaussianSums.finish`` turns the sums' ``outer`` into the final
whiteners; ``count``, ``total`` and ``shift``, which the residuals need, stay.
"""

from __future__ import annotations

import torch

from anomalens.models.components.gaussian import squared_norms_whitened
from anomalens.models.components.gaussian_sums import (
    GaussianSums,
    KeptEmbeddings,
    mean_and_covariance,
    mean_and_whitener,
    position_chunks,
)
from anomalens.threads import map_on_threads

# Positions per chunk of the (P, d, d) products: never a second full-size float64 (P, d, d) tensor.
# 64 for the chunks spread over threads (``map_on_threads``, a chunk per core at a time): their float64
# temporaries stay small — a 256 px fit peaked at 1,330 MB with 64 and 1,770 MB with 256, at the same speed.
CHUNK = 64


def residuals(embeddings: torch.Tensor, shift: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(p, m, d) embeddings → x − μ in float64 (``mean`` about ``shift``), contiguous: ``bmm`` on the
    transposed layout was measured 3x slower, and the leave-one-out products are most of the fit's arithmetic."""
    return ((embeddings - shift.unsqueeze(1)).double() - mean.unsqueeze(1)).contiguous()


def _whitener_of_a(sums: GaussianSums, chunk: slice, epsilon: float) -> torch.Tensor:
    """(p, d, d) float64 whiteners of A = S/(n − 2) + εI at the positions ``chunk`` (before ``finish``)."""
    n = sums.count
    return mean_and_whitener(sums.outer[chunk], sums.total[chunk], n, epsilon, denominator=n - 2)[1]


def _check_leave_one_out(sums: GaussianSums) -> None:
    """The closed form divides by n − 2: ValueError for fewer than 3 images."""
    if sums.count < 3:
        raise ValueError("padim: leave-one-out needs at least 3 training images")


@torch.inference_mode()
def leave_one_out_products(sums: GaussianSums, kept: KeptEmbeddings, epsilon: float) -> torch.Tensor:
    """(P, n) q = rᵀA⁻¹r of every image the sums hold, from its ``kept`` embeddings (before ``finish``).

    Position chunk by chunk over all n images at once: each whitener of A is made and used once, in float64,
    and the products are few large matrix products."""
    _check_leave_one_out(sums)
    n, mean = sums.count, sums.total / sums.count  # (P, d) about the shift, float64
    q = torch.empty((len(mean), n), dtype=torch.float64, device=mean.device)

    def products(chunk: slice) -> None:
        a = mean_and_covariance(sums.outer[chunk], sums.total[chunk], n, epsilon, denominator=n - 2)[1]
        r = residuals(kept.positions(chunk).transpose(0, 1), sums.shift[chunk], mean[chunk])
        q[chunk] = squared_norms_whitened(a, r)  # A is used once: solved, never inverted

    map_on_threads(products, position_chunks(len(mean), CHUNK), mean.device)
    return q


@torch.inference_mode()
def leave_one_out_whiteners(sums: GaussianSums, epsilon: float) -> torch.Tensor:
    """(P, d, d) float32 whiteners of A = S/(n − 2) + εI (before ``finish``), for ``batch_products``: the
    second P·d² buffer of a leave-one-out whose embeddings were not kept."""
    _check_leave_one_out(sums)
    whiteners = torch.empty_like(sums.outer)

    def whiten(chunk: slice) -> None:
        whiteners[chunk] = _whitener_of_a(sums, chunk, epsilon)

    map_on_threads(whiten, position_chunks(len(whiteners), CHUNK), whiteners.device)
    return whiteners


@torch.inference_mode()
def batch_products(embeddings: torch.Tensor, sums: GaussianSums, whiteners: torch.Tensor) -> torch.Tensor:
    """(P, B) q = rᵀA⁻¹r of a batch of (B, P, d) training embeddings, from ``leave_one_out_whiteners``."""
    r = residuals(embeddings.transpose(0, 1), sums.shift, sums.total / sums.count)  # (P, B, d)
    q = torch.empty(r.shape[:2], dtype=torch.float64, device=r.device)
    for start in range(0, len(r), CHUNK):
        chunk = slice(start, start + CHUNK)
        q[chunk] = torch.bmm(r[chunk], whiteners[chunk].double().transpose(1, 2)).pow(2).sum(2)
    return q


def leave_one_out_distances(q: torch.Tensor, n: int) -> torch.Tensor:
    """(P, m) q = rᵀA⁻¹r → (m, P) float32 distances of the m images under the Gaussians without each of them."""
    c = n / ((n - 1) * (n - 2))
    # c·q < 1 in exact arithmetic (the covariance without the image is positive definite).
    squared = (n / (n - 1)) ** 2 * q / (1.0 - c * q).clamp_min(torch.finfo(torch.float64).eps)
    return squared.sqrt().float().transpose(0, 1)


def fold_gaussians(sums: GaussianSums, fold_sums: GaussianSums, fold_size: int,
                   epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (P, d) float32, whitener (P, d, d)): the Gaussians of ``sums`` minus ``fold_sums`` (the sums of
    the fold's ``fold_size`` images, about the same shift) — the model fitted without the fold. The whiteners
    are written in place of ``fold_sums.outer``; ``sums`` is not changed."""
    mean = torch.empty_like(sums.total)

    def fold_chunk(chunk: slice) -> None:
        with torch.inference_mode():
            mean[chunk], whitener = mean_and_whitener(
                sums.outer[chunk].double() - fold_sums.outer[chunk].double(),
                sums.total[chunk] - fold_sums.total[chunk], sums.count - fold_size, epsilon)
            fold_sums.outer[chunk] = whitener

    map_on_threads(fold_chunk, position_chunks(len(mean), CHUNK), mean.device)
    return (mean + sums.shift.double()).float(), fold_sums.outer
