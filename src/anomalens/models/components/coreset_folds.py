"""Out-of-fold scores of a coreset memory bank: PatchCore's cross-fitted threshold (``Detector.fit``).

The bank is built from every training image (more data, better coverage); the images are cut into seeded
folds (``threshold_folds``, default 10) and each fold is scored, exactly, against the bank of a model fitted
without it (``fold_banks``): the final bank less the fold's entries, its holes filled. Where one of the fold's
patches became a centre, the other images' patches nearby were skipped as covered; without that centre they
are farther from the bank than the final bank left them, and the fold's images would meet holes that new
images do not (scores too high: benchmarks/results/operating_point, coffee and chelsea, KS 0.68 and 0.80
between the out-of-fold and the test normal scores when the holes were left). So the greedy k-center rule is
continued over those orphaned patches, farthest first, until each is within the radius its centre covered
(the distance of the centre's farthest patch): the coverage a fresh selection on the other folds' patches
gives, with no new selection. Measured against that fresh selection (the previous definition: k more coreset
selections), on the 15 PatchCore rows of benchmarks/results/operating_point: KS between out-of-fold and test
normal scores median 0.119 → 0.115, mean 0.133 → 0.127, max 0.29 → 0.23; shift of the medians (test normals'
IQRs) median |shift| 0.116 → 0.133, largest 0.50 → 0.27; the final model and every test score bit-identical.
Fit time against a plain fit (model alone, fit_time.md, side by side): 1 % coreset 1.27× (was 4.2×), 10 % 2.2×
(was 6.8×; medians of 2, the same loaded machine): at 10 % the exact distance pass below (N·P × ⌈0.1·N·P⌉ × D,
4.6·10¹¹ flops for 120 images of 256 px) costs about as much as the coreset selection itself — the floor of
scoring every training patch exactly.

Cost beyond the plain fit: one exact distance pass of the N·P training patches against the bank
(``nearest_in_two_groups``: every fold's masked nearest neighbour at once, from the features kept in memory,
no second backbone pass), the fills (∝ orphans × fills × D), and per fold the eq. 7 neighbours of each image's
worst patch and the N maps. Memory: the N·P patch vectors and four numbers per patch until the folds are
scored, one fold's bank at a time, and the N maps returned to ``fit``. ``threshold_folds=1``: the seeded
``holdout_fraction`` scored the same way (one fold), as before cross-fitting. On shards (``--engine ray``) the
pool the holes are filled from is the union of the shards' coresets (``coreset_parts``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from anomalens.models.components.coreset import fill_coverage_holes
from anomalens.models.components.knn import (
    ExactNearest,
    nearest_in_two_groups,
    nearest_neighbors,
)

#: (patch distances (B, P), patches (B, P, D), exact search over the fold's bank) → (scores (B,), maps (B, H, W)):
#: the model's own image scoring, given the distances to the fold's bank.
ScoreBatch = Callable[[torch.Tensor, torch.Tensor, ExactNearest], tuple[torch.Tensor, torch.Tensor]]


def score_out_of_fold(patches: torch.Tensor, image_ids: np.ndarray, folds: list[np.ndarray], pool: torch.Tensor,
                      pool_image: torch.Tensor, bank: torch.Tensor, bank_origin: torch.Tensor, patches_per_image: int,
                      batch_size: int, score_batch: ScoreBatch, bank_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n,) and maps (n, H, W) of n images whose patch vectors ``patches`` (n·P, D, in order) are given
    (``image_ids``: their numbers among the training images): each fold (index arrays into the n images,
    together covering them) scored, exactly, against its own bank (``fold_banks``), ``batch_size`` images at a
    time by ``score_batch``. ``bank`` (M, D): the final memory bank, ``bank_origin`` (M,) the training image of
    each entry. ``pool``: the patches the folds' banks may fill their holes from, ``pool_image`` their training
    images (``patches`` itself when the images scored are the pool's: one distance pass serves both).
    ``bank_chunk``: bank rows per distance block of the fold banks' exact search."""
    n_patches = patches_per_image
    image_ids = np.asarray(image_ids)
    n_images = int(max(image_ids.max(), int(pool_image.max()), int(bank_origin.max()))) + 1
    fold_of = np.full(n_images, len(folds))  # the fold of each training image; len(folds): in none
    for f, fold in enumerate(folds):
        fold_of[image_ids[fold]] = f
    fold_of = torch.as_tensor(fold_of)
    bank_fold = fold_of[bank_origin].to(bank.device)
    pool_fold = fold_of[pool_image].to(pool.device)
    with torch.inference_mode():
        nearest = nearest_in_two_groups(pool, bank, bank_fold)
        scored = nearest if patches is pool else nearest_in_two_groups(patches, bank, bank_fold)
        # the radius each bank entry covers: its farthest pool patch (those nearer to it than to any other)
        radius = torch.zeros(len(bank), device=pool.device).scatter_reduce_(0, nearest[1], nearest[0], "amax")
        scores, maps = np.empty(len(image_ids), np.float32), None
        banks = fold_banks(len(folds), bank, bank_fold, pool, pool_fold, nearest, radius)
        for f, (fold, fold_bank) in enumerate(zip(folds, banks)):
            fold = np.asarray(fold)
            rows = torch.as_tensor((fold[:, None] * n_patches + np.arange(n_patches)).reshape(-1))
            d1, _, g1, d2 = (t[rows.to(t.device)] for t in scored)
            dist = torch.where(g1 == f, d2, d1)  # to the bank less the fold's entries ...
            added = fold_bank[int((bank_fold != f).sum()):]
            fold_patches = patches[rows.to(patches.device)]
            if len(added):  # ... and to the entries that filled its holes
                dist = torch.minimum(dist, nearest_neighbors(fold_patches, added, 1)[0].squeeze(1))
            search = ExactNearest(fold_bank, bank_chunk=bank_chunk)
            for b0 in range(0, len(fold), batch_size):
                chunk = slice(b0 * n_patches, min(len(fold), b0 + batch_size) * n_patches)
                emb = fold_patches[chunk].reshape(-1, n_patches, bank.shape[1])
                fold_scores, fold_maps = score_batch(dist[chunk].reshape(-1, n_patches), emb, search)
                if maps is None:
                    maps = np.empty((len(image_ids), *fold_maps.shape[1:]), np.float32)
                where = fold[b0 : b0 + batch_size]
                scores[where], maps[where] = fold_scores.cpu().numpy(), fold_maps.cpu().numpy()
    return scores, maps


def fold_banks(n_folds: int, bank: torch.Tensor, bank_fold: torch.Tensor, pool: torch.Tensor, pool_fold: torch.Tensor,
               nearest: tuple[torch.Tensor, ...], radius: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield, for each fold f < ``n_folds``, the bank of a model fitted without the fold's images: the final bank
    less the fold's entries (``bank_fold == f``), then its holes filled — the greedy k-center rule continued
    (``fill_coverage_holes``) over the other folds' ``pool`` patches whose nearest entry was one of the
    fold's, until each is as near the bank as that entry's farthest patch was to it (``radius[owner]``).
    ``nearest``: (d1, i1, g1, d2) of the pool against the bank (``nearest_in_two_groups``). The kept entries
    come first, then the added ones.

    Why not the final bank less the fold's entries alone: where a fold's patch became a centre, the other
    images' patches nearby were skipped as covered, and without it the fold's images meet holes that new
    images do not (out-of-fold scores too high). Why not a fresh coreset of the other folds' patches (the
    previous definition): k more selections made the fit 3× longer; the holes are where the two differ,
    and filling them to the final bank's radius keeps the threshold as honest on the committed table
    (module docstring).
    """
    _, owner, g1, d2 = nearest
    for f in range(n_folds):
        kept = bank[bank_fold != f]
        # The other folds' patches whose nearest bank entry was the fold's, now d2 away (inf: nothing kept)
        orphan = (g1 == f) & (pool_fold != f)
        gap = torch.where(orphan, d2, torch.zeros_like(d2))
        added = pool[fill_coverage_holes(pool, gap, radius[owner])]
        if not len(kept) and not len(added):
            raise ValueError("patchcore: every memory-bank candidate came from one threshold fold: raise "
                             "threshold_folds")
        yield torch.cat([kept, added]) if len(added) else kept
