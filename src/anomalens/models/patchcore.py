"""PatchCore — Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

1. Locally aware patch features (Sec. 3.1, eq. 1-3): feature maps of backbone layers 2 and 3 (timm
   out_indices (2, 3): strides 8 and 16 for ResNets and EfficientNet-Lite), each averaged over a p × p
   neighbourhood (p = 3, stride 1, zero padding as in the reference code), the deeper map bilinearly
   resized onto the layer-2 grid and concatenated: one vector per layer-2 position
   (``components/patch_features.py``, which SimpleNet and GLASS share).
   Dimension: the reference code pools every layer to ``pretrain_embed_dimension`` (1024) along the
   channels and the concatenation to ``target_embed_dimension`` (1024), which for WRN50 (512 + 1024
   channels) gives 512 channels of layer 2 and pairwise means of layer 3 (512). We compute exactly that,
   but only ever *reduce*: a layer keeps min(C, pretrain_embed_dimension) channels, and only if their
   sum exceeds the target does each layer get pooled to target // n_layers. The reference would
   instead up-sample small layers by repeating channels, which merely re-weights the layers; so
   efficientnet_lite0 (40 + 112 = 152) and resnet18 (128 + 256) keep all their channels unchanged.
2. Memory bank (Sec. 3.2, Alg. 1): greedy k-center coreset of all training patches, ``coreset_fraction``
   of them (10%, the paper's main setting), selected on a seeded 128-d Gaussian random projection from a
   seeded random first point; see ``components/coreset.py`` (exact and fast; a documented partitioned
   approximation above ``coreset_partition_size`` patches).
3. Scoring (Sec. 3.3): s_patch = min_{m ∈ M} ‖m_test − m‖₂ (exact L2 nearest neighbour, eq. 6; with
   ``search="hnsw"`` an approximate HNSW graph from faiss, worth it only for banks of ~100 000 entries
   and more: see ``components/ann.py``; held-out threshold images are always scored exactly), map =
   patch scores on the layer-2 grid, bilinearly upsampled, Gaussian blur σ = 4. Image score (eq. 7):
       s = (1 − exp‖m_test,* − m*‖ / Σ_{m ∈ N_b(m*)} exp‖m_test,* − m‖) · s*,
   with m_test,* the test patch of largest s_patch, m* its nearest memory-bank patch, s* their distance
   and N_b(m*) the b = ``num_neighbors`` (9) nearest memory-bank patches of m* — which include m* itself
   (distance 0), as in anomalib; otherwise the ratio could exceed 1 and the weight turn negative. The
   ratio is evaluated with the largest distance subtracted first, so large distances cannot overflow. anomalib computes
   the same formula (its weight is 1 − softmax(d)[0]); the authors' own code skips the re-weighting
   (image score = s*), which is what ``num_neighbors=1`` gives here.

Memory: the fitted state is the bank, ⌈f·N·P⌉·D·4 bytes (N training images, P patches per image, D
dimensions: 1 000 images of 256 px with efficientnet_lite0 → 102 400 × 152 × 4 B ≈ 62 MB). Fitting holds
all N·P patch vectors (N·P·D·4 B, ≈ 620 MB for that example) plus their 128-d projection (N·P·128·4 B)
during the coreset selection. Scoring is bounded independently of the number of test images: per batch
of B images the B·P·D embedding, one distance block of B·P × 1024 floats per bank chunk (4 MiB per
image at 256 px, P = 1024; ``components/knn.py: ExactNearest``) and the B maps; only the returned (N, H, W) float32 maps grow with N (``predict_in_chunks`` avoids that).

Threshold (cross-fitted, ``Detector.fit``): the bank is built from every training image; each of the
``threshold_folds`` seeded folds (default 10) is scored, exactly, against the bank of a model fitted without
it — the final bank less the fold's entries, its holes filled by continuing the greedy k-center rule
(``components/coreset_folds.py``, which measures the choice); ``threshold_folds=1``: the seeded
``holdout_fraction`` scored the same way (one fold).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from anomalens.backbones import FeatureExtractor
from anomalens.data import iterate_batches
from anomalens.detector import Detector
from anomalens.registry import register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.ann import HNSWIndex, HNSWSearch  # faiss itself is imported only when used
from anomalens.models.components.coreset import greedy_coreset
from anomalens.models.components.coreset_folds import score_out_of_fold
from anomalens.models.components.coreset_parts import CoresetPart, MergedCoreset
from anomalens.models.components.knn import ExactNearest
from anomalens.models.components.maps import check_blur_fits, upsample_and_blur
from anomalens.models.components.patch_features import embedding_dims, patch_embedding
from anomalens.models.components.saved_state import check_backbone_grid, check_tensor_names
from anomalens.params import Choice, Float, Int, Ints
from anomalens.models.components.shared_params import MAP_BLUR, PRETRAINED_BACKBONE


def reweighted_score(test_patches: torch.Tensor, nearest: torch.Tensor, bank: torch.Tensor, num_neighbors: int,
                     search: ExactNearest | None = None) -> torch.Tensor:
    """Image scores by eq. 7 for B images: ``test_patches`` (B, D) are the m_test,*, ``nearest`` (B,) the
    indices of their nearest bank patches m*. ``num_neighbors`` ≤ 1 returns s* unweighted. ``search``: an
    ``ExactNearest`` over ``bank`` (built here when not given)."""
    m_star = bank[nearest]
    s_star = (test_patches - m_star).norm(dim=1)
    b = min(num_neighbors, bank.shape[0])
    if b <= 1:
        return s_star
    support = (search if search is not None else ExactNearest(bank)).k_nearest(m_star, b)
    # The nearest bank patch of m* is m* itself or an exact duplicate; naming m* makes d[:, 0] = s*.
    support = torch.cat([nearest.unsqueeze(1), support[:, 1:]], dim=1)
    d = (test_patches.unsqueeze(1) - bank[support]).norm(dim=2)  # (B, b)
    # exp(d₀) / Σ exp(d) with the largest d subtracted first: no overflow. (Spelt out rather than
    # torch.logsumexp, whose ONNX ReduceLogSumExp OpenVINO 2026.4 reduces over the batch axis too.)
    shifted = d - d.amax(dim=1, keepdim=True)
    weight = 1.0 - torch.exp(shifted[:, 0]) / torch.exp(shifted).sum(dim=1)
    return weight * s_star


# Bank rows per distance block of the graph: B·P × 1024 floats per block (64 MiB for 16 images of 256 px).
PATCH_BANK_CHUNK = 1024


class PatchCoreGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): patch features, nearest bank patch per test patch
    (eq. 6), the re-weighted image score (eq. 7), upsampled and blurred map."""

    def __init__(self, extractor: FeatureExtractor, dims: Sequence[int], patch_size: int, bank: torch.Tensor,
                 num_neighbors: int, grid: tuple[int, int], input_size: tuple[int, int], blur_sigma: float,
                 ann_index: HNSWIndex | None = None):
        super().__init__()
        self.extractor = extractor
        self.dims, self.patch_size, self.num_neighbors = list(dims), patch_size, num_neighbors
        self.exact = ExactNearest(bank, bank_chunk=PATCH_BANK_CHUNK)
        self.search = self.exact if ann_index is None else HNSWSearch(ann_index)
        self.grid, self.input_size, self.blur_sigma = tuple(grid), tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = patch_embedding(self.extractor(images), self.dims, self.patch_size).flatten(2).transpose(1, 2)
        patches, dim = self.grid[0] * self.grid[1], emb.shape[2]
        if self.search is self.exact:  # eq. 7 needs the nearest bank row of one patch per image: found for those
            dist = self.exact.distances(emb.reshape(-1, dim)).reshape(-1, patches)
            return image_outputs(dist, emb, lambda worst, test: self.exact.nearest_index(test), self.exact,
                                 self.num_neighbors, self.grid, self.input_size, self.blur_sigma)
        dist, nearest = self.search(emb.reshape(-1, dim))
        dist, nearest = dist.reshape(-1, patches), nearest.reshape(-1, patches)
        return image_outputs(dist, emb, lambda worst, test: nearest.gather(1, worst).squeeze(1), self.exact,
                             self.num_neighbors, self.grid, self.input_size, self.blur_sigma)


def image_outputs(dist: torch.Tensor, emb: torch.Tensor, nearest_of, search: ExactNearest, num_neighbors: int,
                  grid: tuple[int, int], input_size: tuple[int, int],
                  blur_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (B,) and maps (B, H, W) from the patch distances ``dist`` (B, P) to a bank (``search.bank``)
    of the patches ``emb`` (B, P, D): the re-weighted score of each image's farthest patch (eq. 7; its nearest
    bank row from ``nearest_of(worst index (B, 1), worst patch (B, D))``) and the upsampled, blurred map."""
    worst = dist.argmax(1, keepdim=True)  # (B, 1): the patch m_test,* of each image
    test = emb.gather(1, worst.unsqueeze(2).expand(-1, -1, emb.shape[2])).squeeze(1)
    scores = reweighted_score(test, nearest_of(worst, test), search.bank, num_neighbors, search)
    return scores, upsample_and_blur(dist.reshape(-1, *grid), input_size, blur_sigma)


@register_detector
class PatchCore(Detector):
    """Coreset memory bank of locally aware patch features; nearest-neighbour distance map (Roth et al. 2022)."""

    name = "patchcore"
    score_is_map_max = False  # eq. 7 re-weights s*, and the map is blurred
    tiles = True  # tile_size / tile_overlap: a bank of tile patches; image score = largest tile score
    final_fit_includes_holdout = True  # the bank holds every image's patches (see _fit_and_score_holdout)
    crossfits = True  # the threshold from every training image, out of fold (module docstring)
    ann_index_ = None  # HNSW graph over the bank when search == "hnsw"
    hyperparameters = {
        **PRETRAINED_BACKBONE,
        "layers": Ints((2, 3), "backbone levels (timm out_indices) of the patch features; the first sets the grid", low=0),
        "patch_size": Int(3, "p: odd side of the neighbourhood each feature is averaged over (eq. 2)", low=1),
        "pretrain_embed_dimension": Int(1024, "channels kept per layer at most (reference code)", low=1),
        "target_embed_dimension": Int(1024, "channels of the concatenation at most (reference code)", low=1),
        "coreset_fraction": Float(0.1, "share of all training patches kept in the memory bank (1: every patch)",
                                  low=0.0, high=1.0, low_open=True),
        "projection_dim": Int(128, "random projection used only to select the coreset (0: none)", low=0),
        "coreset_partition_size": Int(131072, "exact greedy coreset up to this many patches, partitioned above "
                                      "(null or 0: always exact)", low=0, optional=True),
        "num_neighbors": Int(9, "b of eq. 7, bank neighbours of m* in the re-weighting (1: none, score = s*)", low=1),
        "search": Choice("exact", ("exact", "hnsw"), "patch nearest neighbours: exact, or hnsw (approximate, needs faiss)"),
        **MAP_BLUR,
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patchcore: parameter patch_size must be an odd integer >= 1, got {self.patch_size}")
        if self.target_embed_dimension < len(self.layers):
            raise ConfigError(
                f"patchcore: parameter target_embed_dimension must be >= the number of layers ({len(self.layers)}),"
                f" got {self.target_embed_dimension}"
            )

    # -- features -----------------------------------------------------------------------------
    def _build_extractor(self) -> FeatureExtractor:
        return FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)

    def layer_dims(self, channels: Sequence[int]) -> list[int]:
        """Channels kept per layer: only reductions, matching the reference pooling (module docstring)."""
        return embedding_dims(channels, self.pretrain_embed_dimension, self.target_embed_dimension)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, P, D) locally aware patch features on the first layer's grid."""
        features = self.extractor_(images.to(self.device))
        emb = patch_embedding(features, self.layer_dims([f.shape[1] for f in features]), self.patch_size)
        self.grid_size_ = tuple(int(g) for g in emb.shape[-2:])
        return emb.flatten(2).transpose(1, 2)

    # -- fit / score ----------------------------------------------------------------------------
    def _fit(self, records: Sequence, progress: bool) -> None:
        self._choose_bank(self._training_patches(records, progress), progress)

    def _training_patches(self, records: Sequence, progress: bool) -> torch.Tensor:
        """(N·P, D) patch features of every record, in order (P per record); builds the extractor."""
        self.extractor_ = self._build_extractor()
        features, offset = None, 0
        with torch.inference_mode():
            for batch in iterate_batches(records, self.model_input_size, self.batch_size, desc="patchcore features" if progress else None):
                emb = self.embed(batch["image"])
                if features is None:  # preallocated: no second copy from concatenating a list
                    features = torch.empty((len(records) * emb.shape[1], emb.shape[2]), device=emb.device)
                flat = emb.reshape(-1, emb.shape[2])
                features[offset : offset + flat.shape[0]] = flat
                offset += flat.shape[0]
        return features

    def _choose_bank(self, features: torch.Tensor, progress: bool) -> None:
        """The memory bank: the greedy coreset of ``features`` (every record's patches, in order)."""
        total = features.shape[0]
        patches_per_image = self.grid_size_[0] * self.grid_size_[1]
        n_select = self.coreset_size(total)
        if n_select == total:
            self.memory_bank_ = features
            self.bank_origin_ = torch.arange(total) // patches_per_image
        else:
            index = self._coreset(features, n_select, progress)
            self.memory_bank_ = features[index.to(features.device)].contiguous()
            self.bank_origin_ = index.cpu() // patches_per_image  # training image of each bank entry (not saved)
        self.ann_index_ = HNSWIndex.build(self.memory_bank_) if self.search == "hnsw" else None

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """The memory bank is built from every training image; the held-out images are scored against
        the bank a fit on the other images alone selects (``score_folds``: one fold, the hold-out)."""
        if holdout is fit_records:
            return super()._fit_and_score_holdout(fit_records, holdout, progress)
        records = list(fit_records) + list(holdout)
        held = np.arange(len(fit_records), len(records))
        features = self._training_patches(records, progress)
        self._choose_bank(features, progress)
        n_patches = self.grid_size_[0] * self.grid_size_[1]
        return self.score_folds(features[len(fit_records) * n_patches:], held, [np.arange(len(holdout))], features,
                                self.patch_origin(len(records)))

    def _fit_and_score_out_of_fold(self, parts: list[list], folds: list[np.ndarray],
                                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """The bank from every image; each fold scored against the bank of the other folds' images."""
        records = [r for part in parts for r in part]
        features = self._training_patches(records, progress)
        self._choose_bank(features, progress)
        return self.score_folds(features, np.arange(len(records)), folds, features, self.patch_origin(len(records)))

    def patch_origin(self, n_records: int) -> torch.Tensor:
        """The record each row of ``_training_patches`` came from."""
        return torch.arange(n_records * self.grid_size_[0] * self.grid_size_[1]) // (self.grid_size_[0] * self.grid_size_[1])

    def inference_module(self) -> PatchCoreGraph:
        return self.tiled(PatchCoreGraph(
            self.extractor_, self.layer_dims(self.extractor_.channels), self.patch_size, self.memory_bank_,
            self.num_neighbors, self.grid_size_, self.model_input_size, self.blur_sigma, ann_index=self.ann_index_))

    def export_refusal(self) -> str | None:
        if self.ann_index_ is not None:
            return ("patchcore with search='hnsw' cannot be exported: the approximate HNSW search (faiss) is not a "
                    "graph operation; refit with search='exact' (the exact search is exported)")
        return None

    # -- persistence ------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"memory_bank": self.memory_bank_, "grid_size": torch.tensor(self.grid_size_)}
        if self.ann_index_ is not None:
            tensors["hnsw_index"] = self.ann_index_.to_tensor()
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the memory bank and grid, checked against the parameters: the bank (M, D) floats with D the
        embedding width of this backbone, the grid the one it gives at the input size (found by running it
        once). ValueError naming the tensor that does not fit (the loader's one line)."""
        if self.search == "hnsw" and "hnsw_index" not in tensors:
            raise ValueError("search='hnsw' but the file holds no HNSW index")
        check_tensor_names(tensors, {"memory_bank", "grid_size"} | ({"hnsw_index"} if self.search == "hnsw" else set()))
        self.extractor_ = self._build_extractor()
        bank = tensors["memory_bank"]
        expected = sum(self.layer_dims(self.extractor_.channels))
        if not bank.is_floating_point() or bank.ndim != 2 or bank.shape[1] != expected or bank.shape[0] < 1:
            raise ValueError(f"memory bank of {bank.dtype} and shape {tuple(bank.shape)}, expected floats of shape "
                             f"(M, {expected}) for this backbone")
        self.memory_bank_ = bank = bank.float().to(self.device)
        check_backbone_grid(self, tensors["grid_size"])
        self.ann_index_ = None
        if self.search == "hnsw":
            self.ann_index_ = HNSWIndex.from_tensor(tensors["hnsw_index"], bank)

    def score_folds(self, patches: torch.Tensor, image_ids: np.ndarray, folds: list[np.ndarray], pool: torch.Tensor,
                    pool_image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n,) and maps (n, H, W) of n training images (``image_ids``) whose patch vectors ``patches``
        (n·P, D, in order) are given, each fold against the bank of a model fitted without it, its holes filled
        from ``pool`` (patches of the training images ``pool_image``): ``coreset_folds.score_out_of_fold``, with
        this model's image score (eq. 7) and map."""

        def score_batch(dist: torch.Tensor, emb: torch.Tensor, search: ExactNearest) -> tuple[torch.Tensor, torch.Tensor]:
            return image_outputs(dist, emb, lambda worst, test: search(test)[1], search, self.num_neighbors,
                                 self.grid_size_, self.model_input_size, self.blur_sigma)

        return score_out_of_fold(patches, image_ids, folds, pool, pool_image, self.memory_bank_, self.bank_origin_,
                                 self.grid_size_[0] * self.grid_size_[1], self.batch_size, score_batch,
                                 bank_chunk=PATCH_BANK_CHUNK)

    def _coreset(self, pool: torch.Tensor, n_select: int, progress: bool = False) -> torch.Tensor:
        """Indices of the greedy coreset of ``n_select`` rows of ``pool`` (this detector's seed, projection and
        partitions): the one selection the fit, the threshold folds and the merged shards all make."""
        return greedy_coreset(pool, n_select, seed=self.seed, projection_dim=self.projection_dim,
                              partition_size=self.coreset_partition_size, progress=progress)

    def coreset_size(self, n_patches: int) -> int:
        """⌈f·n⌉ bank entries for n patches (f = ``coreset_fraction``), robust to f·n landing a hair above an
        integer in floating point."""
        return min(n_patches, max(1, math.ceil(round(self.coreset_fraction * n_patches, 6))))

    # -- fitting on shards (anomalens.distributed.sharded_fit) -------------------------------------------
    # Each shard selects a coreset of its patches, ``SHARD_OVERSAMPLING`` times the final fraction
    # (``shard_part``); the final bank is the coreset of their union (``merge_shard_parts``; the approximation
    # is described in ``components/coreset_parts.py``); each shard then scores its folds, each against the
    # merged bank less the fold's entries, its holes filled from the union's entries of other images
    # (``score_shard_folds``, ``coreset_folds.fold_banks``).

    #: Per-shard coreset fraction = min(1, SHARD_OVERSAMPLING × coreset_fraction).
    SHARD_OVERSAMPLING = 2

    def shard_params(self) -> dict:
        """The hyper-parameters of a shard worker's detector: this one's, with the oversampled fraction and the
        exact search (the final bank's search is built by the driver)."""
        return {**self.params, "coreset_fraction": min(1.0, self.SHARD_OVERSAMPLING * self.coreset_fraction),
                "search": "exact"}

    def shard_part(self, records: Sequence, global_index: np.ndarray, progress: bool = False) -> CoresetPart:
        """One shard's share of the fit: its coreset (on the CPU), each entry's training image (``global_index``
        numbering) and its number of patches."""
        torch.manual_seed(self.seed)  # as fit seeds it: a backbone with weights='random' is the driver's
        self._fit(records, progress)
        patches = len(records) * self.grid_size_[0] * self.grid_size_[1]
        origin = torch.tensor(np.asarray(global_index), dtype=torch.long)[self.bank_origin_]
        return CoresetPart(self.memory_bank_.cpu(), origin, patches, tuple(self.grid_size_))

    def merge_shard_parts(self, parts: Sequence[CoresetPart]) -> MergedCoreset:
        """The final bank: the greedy coreset of ⌈f·N·P⌉ entries (this detector's parameters and seed) of the
        union of the shards' coresets, the union kept for the threshold folds' banks."""
        return MergedCoreset.of(parts, self.coreset_size, self._coreset, self.device)

    def adopt_merged(self, state: MergedCoreset) -> None:
        """Make the merged bank this detector's memory bank (the HNSW graph built over it when asked for)."""
        self.extractor_ = self._build_extractor()
        self.memory_bank_ = state.bank.to(self.device).contiguous()
        self.bank_origin_ = state.origin.cpu()
        self.grid_size_ = tuple(state.grid)
        self.ann_index_ = HNSWIndex.build(self.memory_bank_) if self.search == "hnsw" else None

    def score_shard_folds(self, records: list, state: MergedCoreset, folds: list[np.ndarray], global_index: np.ndarray,
                          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Scores and maps of one shard's ``records``, each fold against its own bank (``score_folds``): the merged
        bank less the fold's entries, its holes filled from the shards' coreset entries of other images — what
        ``fit`` computes for these images, with the union of the shards' coresets in the place of every
        patch. ``state`` is not changed."""
        torch.manual_seed(self.seed)  # as fit seeds it: a backbone with weights='random' is the driver's
        patches = self._training_patches(records, progress)
        self.memory_bank_ = state.bank.to(self.device, copy=True)
        self.bank_origin_ = state.origin.clone()
        self.grid_size_ = tuple(state.grid)
        self.ann_index_ = None
        return self.score_folds(patches, np.asarray(global_index), folds, state.candidates.to(self.device),
                                state.candidate_origin)
