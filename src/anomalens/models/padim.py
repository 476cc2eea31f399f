"""PaDiM — Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2020.

1. Features of layers 1-3 of a pretrained CNN; deeper layers upsampled (nearest) onto the layer-1 grid
   and concatenated, so each grid position has one embedding vector (Sec. 3.1).
2. A random subset of d embedding channels, fixed by a seed (Sec. 3.1, "dimensionality reduction").
3. Per position (i, j), a Gaussian N(μ_ij, Σ_ij) fitted on the normal images, with Σ_ij + εI, ε = 0.01
   (eq. 1).
4. Test: Mahalanobis distance of each position's embedding to its Gaussian (eq. 2), bilinear
   upsampling to the input size, Gaussian blur σ = 4; image score = the maximum of the map.

Memory: the fitted state is P·d·(d + 1) floats for P = (H/4)·(W/4) positions — for 256 px and
d = 100 that is 4096·100·101·4 B ≈ 165 MB; fitting streams the images and keeps only running sums
(float32, ≈ 165 MB for the same setting, turned into the fitted state in place) plus one batch of
features, independent of the number of training images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor
from anomalens.data import iterate_batches
from anomalens.detector import Detector, register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.gaussian import inverse_sqrt
from anomalens.models.components.maps import upsample_and_blur

# The paper's channel counts for its backbones (d of the concatenated layers 1-3).
PAPER_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}


@register_detector
class PaDiM(Detector):
    """Per-position Gaussians of pretrained features; Mahalanobis distance map (Defard et al. 2020)."""

    name = "padim"
    score_is_map_max = True
    defaults = {
        "backbone": DEFAULT_BACKBONE,
        "weights": None,  # None = bundled/timm pretrained; a file path; or "random"
        "layers": (1, 2, 3),
        "n_features": None,  # None = the paper's d for its backbones, else min(100, all channels)
        "epsilon": 0.01,  # Σ + εI regulariser (eq. 1)
        "blur_sigma": 4.0,
    }

    def _build_extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.backbone, self.layers, self.weights).to(self.device).optimize()

    def _choose_channels(self, total: int) -> torch.Tensor:
        d = self.n_features or PAPER_N_FEATURES.get(self.backbone, min(100, total))
        if not 0 < d <= total:
            raise ConfigError(f"padim: n_features must be in 1..{total} for backbone '{self.backbone}', got {d}")
        generator = torch.Generator().manual_seed(int(self.seed))
        return torch.randperm(total, generator=generator)[:d].sort().values

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, P, d) embeddings on the layer-1 grid, only the selected channels."""
        features = self.extractor_(images.to(self.device))
        grid = features[0].shape[-2:]
        parts, offset = [], 0
        for fmap in features:
            # Select this layer's share of the random channels before upsampling: same result, less work.
            local = self.channel_index_[(self.channel_index_ >= offset) & (self.channel_index_ < offset + fmap.shape[1])] - offset
            offset += fmap.shape[1]
            if len(local) == 0:
                continue
            fmap = fmap[:, local.to(fmap.device)]
            if fmap.shape[-2:] != grid:
                fmap = F.interpolate(fmap, size=grid, mode="nearest")
            parts.append(fmap)
        embedding = torch.cat(parts, dim=1)  # (B, d, h, w)
        self.grid_size_ = tuple(grid)
        return embedding.flatten(2).transpose(1, 2)  # (B, P, d)

    def _fit(self, records: Sequence, progress: bool) -> None:
        self.extractor_ = self._build_extractor()
        self.channel_index_ = self._choose_channels(sum(self.extractor_.channels))
        count, shift, total, outer = 0, None, None, None
        with torch.inference_mode():
            for batch in iterate_batches(records, self.image_size, self.batch_size, desc="padim fit" if progress else None):
                emb = self._embed(batch["image"])  # (B, P, d)
                if shift is None:
                    # Accumulate around a reference mean: Σ = E[(x-s)(x-s)ᵀ] - (μ-s)(μ-s)ᵀ cancels far less.
                    # The running sum of products is float32 (the centring keeps its terms small, so float32
                    # sums of a few thousand images lose < 1e-6 relative); the sum of vectors is float64.
                    shift = emb.mean(0)
                    total = torch.zeros(shift.shape, dtype=torch.float64, device=shift.device)
                    outer = torch.zeros(shift.shape + shift.shape[-1:], dtype=torch.float32, device=shift.device)
                centred = (emb - shift).transpose(0, 1)  # (P, B, d)
                total += centred.sum(1)
                # In chunks of positions, so the product is never a second full-size (P, d, d) tensor.
                for start in range(0, len(centred), 512):
                    part = centred[start : start + 512]
                    outer[start : start + 512].baddbmm_(part.transpose(1, 2), part)
                count += emb.shape[0]
            if count < 2:
                raise ValueError("padim: needs at least 2 training images to estimate covariances")
            mean_c = total / count
            self.mean_ = (mean_c + shift.double()).float()
            # Σ = (Σ(x-s)(x-s)ᵀ - n(μ-s)(μ-s)ᵀ) / (n-1) + εI per chunk of positions, in float64; its whitener
            # W (WᵀW = Σ⁻¹, so ‖W(x-μ)‖² is one batched matmul at test time) overwrites the chunk of the
            # accumulator it came from: the fitted state never needs a second (P, d, d) buffer.
            eye = torch.eye(outer.shape[-1], dtype=torch.float64, device=outer.device)
            for start in range(0, len(outer), 256):
                m = mean_c[start : start + 256]
                cov = (outer[start : start + 256].double() - count * m.unsqueeze(2) * m.unsqueeze(1)) / (count - 1)
                outer[start : start + 256] = inverse_sqrt(cov + self.epsilon * eye)
            self.whitener_ = outer

    def mahalanobis(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, P, d) embeddings → (B, P) Mahalanobis distances to the per-position Gaussians (eq. 2)."""
        centred = (embedding - self.mean_).permute(1, 2, 0)  # (P, d, B)
        whitened = torch.bmm(self.whitener_, centred)  # (P, d, B)
        return whitened.pow(2).sum(1).clamp_min(0).sqrt().transpose(0, 1)

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        with torch.inference_mode():
            for batch in iterate_batches(records, self.image_size, self.batch_size, desc="padim score" if progress else None):
                dist = self.mahalanobis(self._embed(batch["image"]))
                grid = dist.reshape(-1, *self.grid_size_)
                amap = upsample_and_blur(grid, self.input_size, self.blur_sigma)
                maps.append(amap.cpu())
                scores.append(amap.flatten(1).max(1).values.cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": self.mean_,
            "whitener": self.whitener_,
            "channel_index": self.channel_index_,
            "grid_size": torch.tensor(self.grid_size_),
        }

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.extractor_ = self._build_extractor()
        self.channel_index_ = tensors["channel_index"].long()
        self.mean_ = tensors["mean"].float().to(self.device)
        self.whitener_ = tensors["whitener"].float().to(self.device)
        self.grid_size_ = tuple(tensors["grid_size"].tolist())
        d = len(self.channel_index_)
        if self.mean_.shape[-1] != d or self.whitener_.shape[-2:] != (d, d):
            raise ValueError(f"inconsistent shapes: mean {tuple(self.mean_.shape)}, whitener {tuple(self.whitener_.shape)}")
