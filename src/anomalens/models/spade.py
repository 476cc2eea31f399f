"""SPADE — Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

1. Image level (Sec. 3.1): the global feature f_y = average-pooled deepest feature map (ResNets: the
   layer-4 output, i.e. the pooled vector before the classifier; EfficientNet-Lite: the last stage before
   the head; both timm out_index 4). Score d(y) = (1/K) Σ_{f ∈ N_K(f_y)} ‖f − f_y‖₂, the mean distance to
   the K = ``top_k`` nearest training images (paper: K = 50; min(K, N_train) is used).
2. Pixel level (Sec. 3.2-3.3): for each layer of the pyramid (layers 1-3, timm out_indices 1, 2, 3) the
   gallery G = all feature vectors of those K nearest training images at that layer; the score of test
   position p is d(y, p) = (1/κ) Σ_{f ∈ N_κ(F(y, p))} ‖f − F(y, p)‖₂ with κ = 1 (the nearest gallery
   vector, exact, chunked: ``components/knn.py``). Each layer's score grid is upsampled (bilinear) to the
   input size, the layers are averaged, then Gaussian blur σ = 4.
   The image score is not the map maximum (``score_is_map_max = False``): the pixel threshold is the
   base class's quantile of held-out normal map maxima.

Memory: the fitted model keeps every training image's feature maps and global vector,
    N_train · (Σ_l C_l · h_l · w_l + C_global) · 4 bytes,
for 256 px with efficientnet_lite0 (24·64² + 40·32² + 112·16² + 320 floats) ≈ 0.67 MB per training image,
0.67 GB for 1 000; with wide_resnet50_2 ≈ 7.4 MB per image. Scoring is bounded per test image: the kNN
block (16 MiB) plus one gathered gallery chunk of 4096·C_l floats; only the returned maps grow with N.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import FeatureExtractor
from anomalens.data import iterate_batches
from anomalens.detector import Detector
from anomalens.registry import register_detector
from anomalens.models.components.knn import nearest_neighbors
from anomalens.models.components.maps import check_blur_fits, upsample_and_blur
from anomalens.models.components.saved_state import check_tensor_names, checked_grid
from anomalens.params import Int, Ints
from anomalens.models.components.shared_params import MAP_BLUR, PRETRAINED_BACKBONE


@register_detector
class SPADE(Detector):
    """kNN of pooled pretrained features for images, of feature pyramids for pixels (Cohen & Hoshen 2020)."""

    name = "spade"
    score_is_map_max = False
    tiles = True  # tile_size / tile_overlap: tiles are the gallery; image score = largest tile score
    hyperparameters = {
        **PRETRAINED_BACKBONE,
        "layers": Ints((1, 2, 3), "backbone levels (timm out_indices) of the pixel-level pyramid", low=0),
        "global_layer": Int(4, "backbone level average-pooled for the image-level kNN", low=0),
        "top_k": Int(50, "K nearest training images (paper: 50; at most the number of training images is used)", low=1),
        **MAP_BLUR,
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)

    def _indices(self) -> tuple[list[int], list[int], int]:
        """(extractor out_indices, position of each pyramid layer, position of the global layer)."""
        indices = sorted(set(self.layers) | {self.global_layer})
        return indices, [indices.index(i) for i in self.layers], indices.index(self.global_layer)

    def _build_extractor(self) -> FeatureExtractor:
        return FeatureExtractor.prepared(self.backbone, self._indices()[0], self.weights, device=self.device)

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) → global vectors (B, C_g) and per-layer (B, h·w, C_l) channels-last maps."""
        _, pyramid, glob = self._indices()
        features = self.extractor_(images.to(self.device))
        global_vec = features[glob].mean(dim=(2, 3))
        maps = [features[i] for i in pyramid]
        self.grid_sizes_ = [tuple(int(s) for s in m.shape[-2:]) for m in maps]
        return global_vec, [m.flatten(2).transpose(1, 2).contiguous() for m in maps]

    def _fit(self, records: Sequence, progress: bool) -> None:
        self.extractor_ = self._build_extractor()
        n, offset = len(records), 0
        with torch.inference_mode():
            for batch in iterate_batches(records, self.model_input_size, self.batch_size, desc="spade fit" if progress else None):
                global_vec, maps = self._features(batch["image"])
                if offset == 0:  # preallocated: no second copy from concatenating a list
                    self.global_features_ = global_vec.new_empty((n, global_vec.shape[1]))
                    self.galleries_ = [m.new_empty((n,) + m.shape[1:]) for m in maps]
                b = global_vec.shape[0]
                self.global_features_[offset : offset + b] = global_vec
                for gallery, m in zip(self.galleries_, maps):
                    gallery[offset : offset + b] = m
                offset += b

    def inference_module(self) -> nn.Module:
        return self.tiled(SPADERetrieval(self))

    def export_refusal(self) -> str | None:
        return ("spade cannot be exported: each test image first retrieves its K nearest training images, then "
                "searches their feature maps — a gallery chosen per image at test time, which this version does not "
                "express as a static graph; padim or patchcore export")

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"global_features": self.global_features_, "grid_sizes": torch.tensor(self.grid_sizes_)}
        tensors.update({f"gallery_{i}": g for i, g in enumerate(self.galleries_)})
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the galleries, checked against the parameters: the grids must be those the backbone gives at
        the input size (found by running it once), the galleries (N, h·w, C) floats of those grids and channels.
        ValueError naming the tensor that does not fit (the loader's one line)."""
        indices, pyramid, glob = self._indices()
        check_tensor_names(tensors, {"global_features", "grid_sizes"} | {f"gallery_{i}" for i in range(len(pyramid))})
        self.extractor_ = self._build_extractor()
        channels = self.extractor_.channels
        grids = tensors["grid_sizes"]
        if tuple(grids.shape) != (len(pyramid), 2):
            raise ValueError(f"tensor 'grid_sizes' must be of shape ({len(pyramid)}, 2), got {tuple(grids.shape)}")
        stored_grids = [checked_grid(row, "grid_sizes") for row in grids]
        with torch.inference_mode():
            self._features(torch.zeros(1, 3, *self.model_input_size))  # sets grid_sizes_ to the backbone's grids
        if stored_grids != self.grid_sizes_:
            raise ValueError(f"tensor 'grid_sizes' is {stored_grids}, but the backbone gives {self.grid_sizes_} at "
                             f"{self.model_input_size[0]}×{self.model_input_size[1]}")
        features = tensors["global_features"]
        if not features.is_floating_point() or features.ndim != 2 or features.shape[1] != channels[glob] or not len(features):
            raise ValueError(f"tensor 'global_features' must be floats of shape (N, {channels[glob]}), got "
                             f"{features.dtype} of shape {tuple(features.shape)}")
        n = features.shape[0]
        self.global_features_ = features.float().to(self.device)
        for i, (pos, grid) in enumerate(zip(pyramid, self.grid_sizes_)):
            gallery = tensors[f"gallery_{i}"]
            if not gallery.is_floating_point() or gallery.shape != (n, grid[0] * grid[1], channels[pos]):
                raise ValueError(f"gallery of {gallery.dtype} and shape {tuple(gallery.shape)} does not match {n} images "
                                 f"× grid {grid} × {channels[pos]} channels")
        self.galleries_ = [tensors[f"gallery_{i}"].float().to(self.device) for i in range(len(pyramid))]


class SPADERetrieval(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps) by test-time retrieval (Python: a per-image gallery)."""

    def __init__(self, detector: SPADE) -> None:
        super().__init__()
        self.extractor = detector.extractor_
        self.galleries, self.global_features = detector.galleries_, detector.global_features_
        self.grid_sizes, self.input_size, self.blur_sigma = detector.grid_sizes_, detector.model_input_size, detector.blur_sigma
        self.top_k = min(detector.top_k, detector.global_features_.shape[0])
        self._detector = [detector]  # a list: not registered as a submodule

    def _pixel_scores(self, maps: list[torch.Tensor], neighbours: torch.Tensor) -> torch.Tensor:
        """One test image: per-layer maps (h·w, C_l), K training indices → (H, W) unblurred layer mean."""
        total = None
        for query, gallery, grid in zip(maps, self.galleries, self.grid_sizes):
            positions = gallery.shape[1]
            # Rows of the flattened gallery that belong to the K neighbours: gathered chunk by chunk.
            rows = (neighbours[:, None] * positions + torch.arange(positions, device=neighbours.device)).reshape(-1)
            dist, _ = nearest_neighbors(query, gallery.reshape(-1, gallery.shape[2]), 1, rows=rows)
            up = F.interpolate(dist.view(1, 1, *grid), size=self.input_size, mode="bilinear", align_corners=False)[0, 0]
            total = up if total is None else total + up
        return total / len(maps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        global_vec, maps = self._detector[0]._features(images)
        dist, neighbours = nearest_neighbors(global_vec, self.global_features, self.top_k)
        pixel = torch.stack([self._pixel_scores([m[i] for m in maps], neighbours[i]) for i in range(len(images))])
        # Blur is linear: blurring the layer mean equals averaging blurred layers, at a third of the cost.
        return dist.mean(1), upsample_and_blur(pixel, self.input_size, self.blur_sigma)
