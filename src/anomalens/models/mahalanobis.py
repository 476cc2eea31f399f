"""Mahalanobis AD — Rippel, Mertens & Merhof, "Modeling the Distribution of Normal Data in Pre-Trained
Deep Features for Anomaly Detection", ICPR 2020. Image-level only: no anomaly maps.

1. Features of a pretrained CNN, globally average-pooled at several levels (Sec. 3). The paper uses all
   9 levels of EfficientNet-B4: the stem, the output of each of its 7 stages and the head conv. Here
   (``anomalens.backbones.PooledFeatureExtractor``): for the EfficientNet family — including the default
   ``efficientnet_lite0`` — the same 9 levels (stem 32, stages 16/24/40/80/112/192/320, head 1280
   channels for Lite0); for ResNets the stem and layer1..layer4 (5 levels; the stem is taken before the
   max-pool, the paper's code after it).
2. Per level l, a multivariate Gaussian N(μ_l, Σ_l) of the normal images' pooled features, with Σ_l the
   Ledoit-Wolf shrinkage estimate (Sec. 3.2): Σ = (1 − α)·S + α·tr(S)/p·I, α chosen in closed form
   (``components.gaussian.ledoit_wolf``, identical to scikit-learn's ``LedoitWolf``).
3. Score (eq. 2 per level, summed over levels): s(x) = Σ_l √((f_l(x) − μ_l)ᵀ Σ_l⁻¹ (f_l(x) − μ_l)).
   The distances are *not* squared, as in the authors' code (``dist.sqrt()``); their code averages the
   levels instead of summing, which only rescales the score by 1/L.

Inference graph (``MahalanobisGraph``, what ``predict`` runs and what is exported): images → pooled
levels → Σ_l distances, computed in float64 like the fit, the score returned as float32. The method is
image-level, so the graph has one output, the scores — no map is invented.

Deviations: the default backbone is the bundled, offline ``efficientnet_lite0`` rather than EfficientNet-B4
(any timm name works where its weights can be had, e.g. ``--weights`` for a local file); the default input
is the library's 256 px rather than B4's native 380 px.

Memory: images are streamed in batches; what grows with the number N of training images is only the
pooled vectors, N × Σ_l C_l float64 (2096 channels for Lite0: ≈ 16 KB per image). The fitted state is
Σ_l C_l² + C_l floats (≈ 14 MB in float64 for Lite0, dominated by the 1280-channel head).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from anomalens.backbones import PooledFeatureExtractor
from anomalens.data import iterate_batches
from anomalens.detector import Detector
from anomalens.registry import register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.gaussian import inverse_sqrt, ledoit_wolf, mahalanobis
from anomalens.params import Ints
from anomalens.models.components.shared_params import PRETRAINED_BACKBONE


class MahalanobisGraph(nn.Module):
    """Images in [0, 1] → (image scores,): pooled levels, per-level Mahalanobis distance (eq. 2), summed."""

    def __init__(self, extractor: PooledFeatureExtractor, levels: Sequence[int] | None,
                 means: list[torch.Tensor], whiteners: list[torch.Tensor]):
        super().__init__()
        self.extractor = extractor
        self.levels = None if levels is None else list(levels)
        for i, (mean, whitener) in enumerate(zip(means, whiteners, strict=True)):
            self.register_buffer(f"mean_{i}", mean, persistent=False)
            self.register_buffer(f"whitener_{i}", whitener, persistent=False)
        self.n_levels = len(means)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        pooled = self.extractor(images)
        if self.levels is not None:
            pooled = [pooled[i] for i in self.levels]
        total = None
        for i, f in enumerate(pooled):
            distance = mahalanobis(f.double(), getattr(self, f"mean_{i}"), getattr(self, f"whitener_{i}"))
            total = distance if total is None else total + distance
        return (total.float(),)


@register_detector
class MahalanobisAD(Detector):
    """Gaussian of globally pooled pretrained features per level, Mahalanobis distance (image-level only)."""

    name = "mahalanobis"
    min_fit_images = 2  # a covariance needs two samples
    localizes = False
    hyperparameters = {
        **PRETRAINED_BACKBONE,
        "levels": Ints(None, "pooled levels used, as indices into the backbone's levels (negative from the end); "
                       "null = all of them (paper)", optional=True),
    }

    def _build_extractor(self) -> PooledFeatureExtractor:
        return PooledFeatureExtractor.prepared(self.backbone, self.weights, device=self.device)

    def _select(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.levels is None:
            return pooled
        # The number of levels is the backbone's (9 for EfficientNets, 5 for ResNets): known once it runs.
        if any(not -len(pooled) <= i < len(pooled) for i in self.levels):
            raise ConfigError(
                f"mahalanobis: parameter levels must be indices in 0..{len(pooled) - 1} (or -{len(pooled)}..-1) "
                f"for backbone '{self.backbone}', got {list(self.levels)}"
            )
        return [pooled[i] for i in self.levels]

    def _pooled(self, records: Sequence, progress: bool, desc: str):
        """Yield, per batch, the selected levels' pooled features [(B, C_l)] in float64 on the device."""
        for batch in iterate_batches(records, self.input_size, self.batch_size, desc=desc if progress else None):
            yield [f.double() for f in self._select(self.extractor_(batch["image"].to(self.device)))]

    def _fit(self, records: Sequence, progress: bool) -> None:
        if len(records) < 2:
            raise ValueError("mahalanobis: needs at least 2 training images to estimate covariances")
        self.extractor_ = self._build_extractor()
        per_level: list[list[torch.Tensor]] | None = None
        with torch.inference_mode():
            for levels in self._pooled(records, progress, "mahalanobis fit"):
                # Only the pooled vectors are kept (Ledoit-Wolf's shrinkage needs 4th moments of the centred
                # data, so the samples themselves rather than running sums); feature maps are dropped per batch.
                per_level = [[] for _ in levels] if per_level is None else per_level
                for store, f in zip(per_level, levels, strict=True):
                    store.append(f.cpu())
        self.means_, self.whiteners_, shrinkages = [], [], []
        for store in per_level:
            mean, cov, shrinkage = ledoit_wolf(torch.cat(store))
            self.means_.append(mean.to(self.device))
            self.whiteners_.append(inverse_sqrt(cov).to(self.device))
            shrinkages.append(shrinkage)
        self.shrinkage_ = torch.tensor(shrinkages, dtype=torch.float64)

    def inference_module(self) -> MahalanobisGraph:
        return MahalanobisGraph(self.extractor_, self.levels, self.means_, self.whiteners_)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"shrinkage": self.shrinkage_}
        for i, (mean, whitener) in enumerate(zip(self.means_, self.whiteners_)):
            tensors[f"mean.{i}"] = mean
            tensors[f"whitener.{i}"] = whitener
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors["shrinkage"].ndim != 1:
            raise ValueError(f"tensor 'shrinkage' must be one value per level, got shape {tuple(tensors['shrinkage'].shape)}")
        n = len(tensors["shrinkage"])
        if n == 0 or set(tensors) != {"shrinkage"} | {f"{k}.{i}" for k in ("mean", "whitener") for i in range(n)}:
            raise KeyError(f"expected shrinkage, mean.i and whitener.i for {n} levels, got {sorted(tensors)}")
        self.extractor_ = self._build_extractor()
        # The levels and their widths, as the backbone gives them (run once): each Gaussian must fit its level.
        with torch.inference_mode():
            widths = [f.shape[1] for f in self._select(self.extractor_(torch.zeros(1, 3, *self.input_size, device=self.device)))]
        if n != len(widths):
            raise ValueError(f"the file holds Gaussians of {n} levels, these parameters select {len(widths)}")
        for i, width in enumerate(widths):
            mean, whitener = tensors[f"mean.{i}"], tensors[f"whitener.{i}"]
            if (not mean.is_floating_point() or not whitener.is_floating_point() or tuple(mean.shape) != (width,)
                    or tuple(whitener.shape) != (width, width)):
                raise ValueError(f"level {i}: mean {mean.dtype} {tuple(mean.shape)}, whitener {whitener.dtype} "
                                 f"{tuple(whitener.shape)}; expected floats of shapes ({width},) and ({width}, {width})")
        self.shrinkage_ = tensors["shrinkage"].double()
        self.means_ = [tensors[f"mean.{i}"].double().to(self.device) for i in range(n)]
        self.whiteners_ = [tensors[f"whitener.{i}"].double().to(self.device) for i in range(n)]
