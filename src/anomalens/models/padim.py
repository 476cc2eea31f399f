"""PaDiM — Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2020.

1. Features of layers 1-3 of a pretrained CNN; deeper layers upsampled (nearest) onto the layer-1 grid
   and concatenated, so each grid position has one embedding vector (Sec. 3.1).
2. A random subset of d embedding channels, fixed by a seed (Sec. 3.1, "dimensionality reduction").
   Kept at d = 100 even for a backbone with few channels (EfficientNet-Lite0: 176 at layers 1-3), where all
   of them would spare the draw (up to 0.012 AUROC between draws on some categories): the fit inverts P
   covariances of d × d twice (final Gaussians and leave-one-out), d³ — 5.4× the work at 176 — and that
   already dominates; measured on 120 images of 256 px (2 threads, a loaded machine, 2026-12-06): at
   d = 176 the whiteners took 387 s of a 615 s fit, the feature passes 129 s. Scoring costs d² per position
   (3.1×) and the fitted state P·d² (165 MB → 507 MB at 256 px). Against the issue's time target (fit +
   test ≤ 1/3 of anomalib's at d = 100, 0.43–0.50 before the faster maps) that does not fit.
3. Per position (i, j), a Gaussian N(μ_ij, Σ_ij) fitted on the normal images, with Σ_ij + εI, ε = 0.01
   (eq. 1).
4. Test: Mahalanobis distance of each position's embedding to its Gaussian (eq. 2), bilinear
   upsampling to the input size, Gaussian blur σ = 4; image score = the maximum of the map. Steps 1, 2
   and 4 are one module, ``PaDiMGraph`` (``inference_module()``): what ``predict`` runs and what is exported.

Memory: the fitted state is P·d·(d + 1) floats for P = (H/4)·(W/4) positions — for 256 px and
d = 100 that is 4096·100·101·4 B ≈ 165 MB; fitting streams the images and keeps only running sums
(float32, ≈ 165 MB for the same setting, turned into the fitted state in place) plus one batch of
features, independent of the number of training images.

Tiling (``tile_size``, ``anomalens.tiling``): the positions are those *within a tile* — every tile of every
training image is one sample of the Gaussian at each of its positions, so P is a tile's grid, not the
working image's (165 MB instead of ≈ 10 GB for 256 px tiles of a 2048 px image), and the model no longer
knows where in the image a tile was cut: textures get many samples per Gaussian, an aligned object larger
than a tile is modelled as the mixture of its parts (wider Gaussians). Leave-one-out then leaves one
*image* (all its tiles) out, fold by fold (no closed form for several samples at once).

Threshold (cross-fitted, ``Detector.fit``): the final Gaussians use every image, and each training image is
scored by the Gaussians of the running sums *minus its own terms* — exactly the model refitted without it,
without refitting: leave-one-out in closed form (``threshold_folds=0``, Sherman–Morrison), k seeded folds, or
the hold-out (``components/gaussian_folds.py`` derives each and states its cost). The N out-of-fold maps are returned
to ``fit`` (N·H·W float32, as ``predict`` on the training images).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import FeatureExtractor
from anomalens.data import iterate_batches
from anomalens.detector import Detector
from anomalens.registry import register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.gaussian_folds import (
    batch_products,
    fold_gaussians,
    leave_one_out_distances,
    leave_one_out_products,
    leave_one_out_whiteners,
)
from anomalens.models.components.gaussian_sums import GaussianSums, KeptEmbeddings
from anomalens.models.components.maps import check_blur_fits, upsample_and_blur
from anomalens.models.components.saved_state import (
    check_backbone_grid,
    check_tensor_names,
    checked_channel_index,
    checked_float,
    packed_lower,
    unpacked_lower,
)
from anomalens.params import Float, Int, Ints
from anomalens.models.components.shared_params import MAP_BLUR, PRETRAINED_BACKBONE

# The paper's channel counts for its backbones (d of the concatenated layers 1-3).
PAPER_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}


def layer_channel_indices(channel_index: torch.Tensor, channels: Sequence[int]) -> list[torch.Tensor]:
    """The selected channels (indices into the concatenation of all layers) as per-layer local indices."""
    local, offset = [], 0
    for count in channels:
        local.append(channel_index[(channel_index >= offset) & (channel_index < offset + count)] - offset)
        offset += count
    return local


def padim_embedding(features: list[torch.Tensor], local_indices: list[torch.Tensor]) -> torch.Tensor:
    """Layer features → (B, d, h, w): each layer's selected channels, nearest-upsampled onto the first grid.

    Channels are selected before upsampling: the same result as selecting after it, with less work. The result
    is laid out channels last (a (B, h, w, d) tensor seen as (B, d, h, w)), so that ``flatten(2).transpose(1, 2)``
    gives the (B, P, d) embeddings contiguous: the per-position Gaussians then read whole d-vectors, where the
    channels-first layout made every later transposition a gather (97 against 70 ms per batch of 32 for the
    sums' one, measured).
    """
    grid = tuple(features[0].shape[-2:])
    parts = []
    for fmap, local in zip(features, local_indices, strict=True):
        if len(local) == 0:
            continue
        fmap = fmap.permute(0, 2, 3, 1)[..., local.to(fmap.device)]  # (B, h, w, c)
        if tuple(fmap.shape[1:3]) != grid:
            fmap = nearest_upsampled(fmap, grid)
        parts.append(fmap)
    return torch.cat(parts, dim=-1).permute(0, 3, 1, 2)


def nearest_upsampled(fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, c) → (B, *grid, c) nearest-neighbour; an integer factor as a broadcast copy (the values of
    ``F.interpolate(mode="nearest")``, 4-7× faster on CPU: 4 against 26 ms for a 256 px batch of 32)."""
    b, h, w, c = fmap.shape
    height, width = grid
    if height % h or width % w:
        return F.interpolate(fmap.permute(0, 3, 1, 2), size=grid, mode="nearest").permute(0, 2, 3, 1)
    fy, fx = height // h, width // w
    return fmap.reshape(b, h, 1, w, 1, c).expand(b, h, fy, w, fx, c).reshape(b, height, width, c)


def mahalanobis_map(embedding: torch.Tensor, mean: torch.Tensor, whitener: torch.Tensor) -> torch.Tensor:
    """(B, P, d) embeddings → (B, P) Mahalanobis distances to the per-position Gaussians (eq. 2)."""
    # (P, B, d), contiguous: the copy moves whole d-vectors (copying into (P, d, B) gathered single floats), and
    # the product reads it transposed for free. The whiteners stay the first operand: as the second, OpenVINO kept
    # a repacked copy (+230 MB at 256 px; benchmarks/results/padim_graph_layout). Contiguous: bmm on a permuted
    # view stalled for 6-126 s per batch on a loaded machine.
    centred = (embedding - mean).transpose(0, 1).contiguous()
    whitened = torch.matmul(whitener, centred.transpose(1, 2))  # (P, d, B)
    return whitened.pow(2).sum(1).clamp_min(0).sqrt().transpose(0, 1)


class PaDiMGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): features, channel subset, eq. 2, upsampling, blur."""

    def __init__(self, extractor: FeatureExtractor, local_indices: list[torch.Tensor], mean: torch.Tensor,
                 whitener: torch.Tensor, grid: tuple[int, int], input_size: tuple[int, int], blur_sigma: float):
        super().__init__()
        self.extractor = extractor
        self.local_indices = local_indices
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("whitener", whitener, persistent=False)
        self.grid, self.input_size, self.blur_sigma = tuple(grid), tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, P, d) from the channels-last tensor padim_embedding views as (B, d, h, w): in a traced graph the two
        # permutations cancel, where flatten + transpose left two real transpositions
        embedding = padim_embedding(self.extractor(images), self.local_indices).permute(0, 2, 3, 1).flatten(1, 2)
        amap = upsample_and_blur(mahalanobis_map(embedding, self.mean, self.whitener).reshape(-1, *self.grid),
                                 self.input_size, self.blur_sigma)
        return amap.flatten(1).amax(1), amap


# Leave-one-out keeps the training embeddings of the accumulating pass up to this size (120 images of 256 px at
# d = 100: 197 MB) instead of extracting every feature a second time; beyond it, a second pass.
LEAVE_ONE_OUT_KEEP_BYTES = 512 * 2**20


@register_detector
class PaDiM(Detector):
    """Per-position Gaussians of pretrained features; Mahalanobis distance map (Defard et al. 2020)."""

    name = "padim"
    min_fit_images = 2  # a covariance needs two samples
    score_is_map_max = True
    tiles = True  # tile_size / tile_overlap: Gaussians per position within the tile (anomalens.tiling)
    final_fit_includes_holdout = True  # the final model uses every image (see _fit_and_score_holdout)
    crossfits = True  # the threshold from every training image, out of fold (module docstring)
    hyperparameters = {
        "threshold_folds": Int(0, "k of the cross-fitted threshold: each training image scored by the Gaussians "
                               "without its fold; 0 = leave-one-out (exact, closed form: the default; with tiling one "
                               "image out at a time, fold by fold), 1 = hold-out only",
                               low=0),
        **PRETRAINED_BACKBONE,
        "layers": Ints((1, 2, 3), "backbone levels whose features are concatenated", low=0),
        "n_features": Int(None, "d, random channels kept: null = the paper's d for its backbones, else min(100, all)",
                          low=1, optional=True),
        "epsilon": Float(0.01, "ε of the Σ + εI regulariser (eq. 1)", low=0.0, low_open=True),
        **MAP_BLUR,
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)

    def _build_extractor(self) -> FeatureExtractor:
        return FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)

    def _n_features_for(self, total: int) -> int:
        """d of a backbone with ``total`` channels in its ``layers``: ``n_features``, else the paper's d."""
        return self.n_features or PAPER_N_FEATURES.get(self.backbone, min(100, total))

    def _choose_channels(self, total: int) -> torch.Tensor:
        # The backbone's channel count is known once it is built: checked when fit starts, before any image.
        d = self._n_features_for(total)
        if d > total:
            raise ConfigError(
                f"padim: parameter n_features must be in 1..{total} for backbone '{self.backbone}' "
                f"with layers {list(self.layers)}, got {d}"
            )
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(total, generator=generator)[:d].sort().values

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, P, d) embeddings on the layer-1 grid, only the selected channels."""
        features = self.extractor_(images.to(self.device))
        embedding = padim_embedding(features, layer_channel_indices(self.channel_index_, self.extractor_.channels))
        self.grid_size_ = tuple(int(g) for g in embedding.shape[-2:])
        return embedding.flatten(2).transpose(1, 2)  # (B, P, d)

    def _accumulate(self, records: Sequence, progress: bool, sums: GaussianSums | None = None,
                    keep: KeptEmbeddings | None = None, breaks: Sequence[int] = ()) -> GaussianSums:
        """Add ``records`` to the running sums (``GaussianSums``; started about the first batch's mean when
        ``sums`` is None). ``keep``: where the records' embeddings are kept for a second use (the held-out
        images, whose own terms ``GaussianSums.finish`` subtracts again; the training images for
        leave-one-out)."""
        with torch.inference_mode():
            for batch in iterate_batches(records, self.model_input_size, self.batch_size,
                                         desc="padim fit" if progress else None, breaks=breaks):
                emb = self.embed(batch["image"])  # (B, P, d)
                if keep is not None:
                    keep.add(emb)
                if sums is None:
                    sums = GaussianSums.about(emb)
                sums.add(emb)
        return sums

    def _finish(self, sums: GaussianSums, holdout: torch.Tensor | None = None) -> torch.Tensor | None:
        """The fitted state from ``sums``, in place of their accumulator (``GaussianSums.finish``); returns the
        distances of the held-out images ``holdout`` included in the sums, from the Gaussians without them."""
        self.mean_, self.whitener_, distances = sums.finish(self.epsilon, holdout)
        return distances

    def _prepare(self) -> None:
        self.extractor_ = self._build_extractor()
        self.channel_index_ = self._choose_channels(sum(self.extractor_.channels))

    def _fit(self, records: Sequence, progress: bool) -> None:
        self._prepare()
        self._finish(self._accumulate(records, progress))

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        if holdout is fit_records:
            return super()._fit_and_score_holdout(fit_records, holdout, progress)
        self._prepare()
        sums = self._accumulate(fit_records, progress)
        held = KeptEmbeddings()
        sums = self._accumulate(holdout, progress, sums, keep=held)
        with torch.inference_mode():
            return self._scores_and_maps(self._finish(sums, held.all()))

    def _fit_and_score_out_of_fold(self, parts: list[list], folds: list[np.ndarray],
                                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Final Gaussians from every image; each image scored without its fold (module docstring)."""
        self._prepare()
        records = [r for part in parts for r in part]
        leave_one_out = len(folds) == len(records)
        kept = KeptEmbeddings(LEAVE_ONE_OUT_KEEP_BYTES) if leave_one_out else None
        # Batches within each part: the same float32 sums, batch for batch, as the hold-out fit made; one loop
        # over the parts, as records to decode, starts the decoding workers once.
        if all(isinstance(part, list) for part in parts):
            sums = self._accumulate(records, progress, keep=kept, breaks=np.cumsum([len(p) for p in parts])[:-1].tolist())
        else:
            sums = None
            for part in parts:
                sums = self._accumulate(part, progress, sums, keep=kept)
        if leave_one_out:
            return self._leave_one_out(records, sums, progress, kept)
        scores, maps = self.score_folds(records, sums, folds, progress)
        self._finish(sums)  # the final model: every image
        return scores, maps

    @torch.inference_mode()
    def _leave_one_out(self, records: list, sums: GaussianSums, progress: bool,
                       kept: KeptEmbeddings | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The final model from ``sums``; every image's distances from the Gaussians of the others, in
        closed form (``components/gaussian_folds.py``): from the embeddings ``kept`` of the accumulating
        pass when it kept them all, else in a second feature pass."""
        n = sums.count
        if kept is not None and kept.complete(len(records)):
            q = leave_one_out_products(sums, kept, self.epsilon)  # (P, n)
            self._finish(sums)
            parts = [self._scores_and_maps(leave_one_out_distances(q[:, i : i + self.batch_size], n))
                     for i in range(0, n, self.batch_size)]
        else:
            whiteners = leave_one_out_whiteners(sums, self.epsilon)
            self._finish(sums)  # sums.outer becomes the final whitener; total, count and shift stay
            parts = []
            for batch in iterate_batches(records, self.model_input_size, self.batch_size,
                                         desc="padim threshold" if progress else None):
                q = batch_products(self.embed(batch["image"]), sums, whiteners)  # (P, B)
                parts.append(self._scores_and_maps(leave_one_out_distances(q, n)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _scores_and_maps(self, dist: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, P) distances → (B,) image scores (the maxima of the maps) and (B, H, W) maps (eq. 2 + blur)."""
        amap = upsample_and_blur(dist.reshape(-1, *self.grid_size_), self.model_input_size, self.blur_sigma)
        return amap.flatten(1).amax(1).cpu().numpy(), amap.cpu().numpy()

    def mahalanobis(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, P, d) embeddings → (B, P) Mahalanobis distances to the per-position Gaussians (eq. 2)."""
        return mahalanobis_map(embedding, self.mean_, self.whitener_)

    def inference_module(self) -> PaDiMGraph:
        local = layer_channel_indices(self.channel_index_.cpu(), self.extractor_.channels)
        return self.tiled(PaDiMGraph(self.extractor_, local, self.mean_, self.whitener_, self.grid_size_,
                                     self.model_input_size, self.blur_sigma))

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        # The Cholesky whiteners L⁻¹ are lower triangular: their packed triangles halve the run (165 → 83 MB at
        # 256 px, d = 100) and its write. A position whose Σ needed the eigendecomposition keeps the full form.
        packed = packed_lower(self.whitener_)
        whitener = {"whitener": self.whitener_} if packed is None else {"whitener_lower": packed}
        return {
            "mean": self.mean_,
            **whitener,
            "channel_index": self.channel_index_,
            "grid_size": torch.tensor(self.grid_size_),
        }

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the fitted state, checked against the parameters: the channel subset must be d distinct,
        sorted channels of this backbone (d as ``_choose_channels`` picks it), the grid the one the backbone
        gives at the input size (found by running it once), and mean / whitener (P, d) / (P, d, d) floats for
        its P positions. ValueError naming the first tensor that does not fit (the loader's one line)."""
        # packed triangles (``_state_tensors``), or the full matrices: runs saved before the packing, or a
        # position whose Σ needed the eigendecomposition
        whitener_name = "whitener_lower" if "whitener_lower" in tensors else "whitener"
        check_tensor_names(tensors, {"mean", whitener_name, "channel_index", "grid_size"})
        self.extractor_ = self._build_extractor()
        total = sum(self.extractor_.channels)
        d = self._n_features_for(total)
        self.channel_index_ = checked_channel_index(tensors["channel_index"], d, total)
        check_backbone_grid(self, tensors["grid_size"])
        positions = self.grid_size_[0] * self.grid_size_[1]
        self.mean_ = checked_float(tensors["mean"], "mean", (positions, d)).to(self.device)
        if whitener_name == "whitener":
            # a fresh copy, as unpacked triangles are: the product's kernel rounds by the operand's alignment
            self.whitener_ = checked_float(tensors["whitener"], "whitener", (positions, d, d)).to(self.device).clone()
        else:
            self.whitener_ = unpacked_lower(tensors["whitener_lower"], "whitener_lower", (positions, d, d)).to(self.device)

    def score_folds(self, records: list, sums: GaussianSums, folds: list[np.ndarray],
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and maps (N, H, W) of ``records``: each fold (index arrays into ``records``, together
        covering them) scored through the inference graph by the Gaussians of ``sums`` minus the fold's own
        sums, accumulated here about the same shift (``fold_gaussians``). ``sums`` is left as it was;
        ``mean_`` / ``whitener_`` hold the last fold's model afterwards (``_finish`` sets the final one)."""
        scores, maps = np.empty(len(records), np.float32), None
        fold_sums = sums.empty_part()  # the one extra P·d² buffer, reused by every fold
        for fold in folds:
            members = [records[i] for i in fold]
            fold_sums.clear()
            self._accumulate(members, progress, fold_sums)
            self.mean_, self.whitener_ = fold_gaussians(sums, fold_sums, len(fold), self.epsilon)
            fold_scores, fold_maps = self._score(members, progress)  # the inference graph, as predict runs it
            if maps is None:
                maps = np.empty((len(records), *fold_maps.shape[1:]), np.float32)
            scores[fold], maps[fold] = fold_scores, fold_maps
        return scores, maps

    # -- fitting on shards (anomalens.distributed.sharded_fit) -------------------------------------------
    # The fit is a sum over images, so shards can share it: each shard worker accumulates the sums of its
    # images (``shard_part``), the driver merges them into the sums of one fit (``merge_shard_parts``:
    # ``GaussianSums.merge``, the same numbers up to float rounding) and turns them into the Gaussians
    # (``adopt_merged``), and each shard scores its images out of fold from the merged sums
    # (``score_shard_folds``) with the code ``fit`` runs: leave-one-out in closed form, or the folds through
    # the inference graph. Whatever engine runs them, these are plain methods of the fit's arithmetic.

    def shard_params(self) -> dict[str, Any]:
        """The hyper-parameters of a shard worker's detector: this one's."""
        return dict(self.params)

    def shard_part(self, records: Sequence, global_index: np.ndarray, progress: bool = False) -> GaussianSums:
        """One shard's share of the fit: the running sums of its ``records`` about its own shift, on the CPU."""
        torch.manual_seed(self.seed)  # as fit seeds it: a backbone with weights='random' is the driver's
        self._prepare()
        sums = self._accumulate(records, progress)
        sums.grid = tuple(self.grid_size_)
        return sums.to("cpu")

    @staticmethod
    def merge_shard_parts(parts: Iterable[GaussianSums]) -> GaussianSums:
        """The sums of every shard's images (``GaussianSums.merge``); the parts are not changed."""
        return GaussianSums.merge(parts)

    def adopt_merged(self, state: GaussianSums) -> None:
        """The final Gaussians from merged sums (``state`` is consumed: its ``outer`` becomes the whitener)."""
        self._prepare()
        self.grid_size_ = tuple(state.grid)
        self._finish(state.to(self.device))

    def score_shard_folds(self, records: list, state: GaussianSums, folds: list[np.ndarray], global_index: np.ndarray,
                          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Scores and maps of one shard's ``records``, each by the merged ``state`` without its fold (``folds``:
        index arrays into ``records`` covering them; one image per fold is leave-one-out, in closed form) —
        what ``fit`` computes for these images. ``state`` is not changed."""
        if not hasattr(self, "extractor_"):  # a worker that has not built it (a restarted one)
            torch.manual_seed(self.seed)
            self._prepare()
        self.grid_size_ = tuple(state.grid)
        sums = state.to(self.device, copy=True)
        if len(folds) == len(records):
            return self._leave_one_out(records, sums, progress)
        return self.score_folds(records, sums, folds, progress)
