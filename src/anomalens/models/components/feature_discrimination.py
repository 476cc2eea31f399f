"""What SimpleNet (Liu et al., CVPR 2023) and GLASS (Chen et al., ECCV 2024) share, written once: a frozen
pretrained backbone's locally aware patch features, a feature adaptor, a discriminator trained to tell them
from synthetic anomalous features, and the score it gives at every position.

1. Local features (SimpleNet Sec. 3.1, taken from PatchCore eq. 1-3): backbone levels 2 and 3 (timm
   ``out_indices`` (2, 3): strides 8 and 16), each averaged over a 3 × 3 neighbourhood, the deeper one
   resized onto the level-2 grid, concatenated: one vector o_ij per level-2 position
   (``patch_features.patch_embedding``, the same function PatchCore uses). The papers pool each level to 1536
   channels and the concatenation to 1536 (their ``pretrain_embed_dimension`` / ``target_embed_dimension``);
   here a level is only ever reduced, as in PatchCore (``embedding_dims``): EfficientNet-Lite0's 40 + 112
   channels stay 152, where the reference code would repeat channels to reach 1536.
   ``aggregation="reference"`` instead pools exactly as the reference codes do (``ReferenceEmbedding``): each
   level's 3 × 3 neighbourhood unfolded into a (C·9) vector and average-pooled along it to
   ``pretrain_embed_dimension`` entries, the levels pooled together to ``target_embed_dimension`` — both capped at
   the levels' channel count (152 here; WideResNet-50's 1536 gives the papers' sizes). A pooled entry averages a
   few entries of one channel's neighbourhood, so the feature keeps part of the neighbourhood's layout. GLASS's
   default (with ``standardise=False``: the authors' features exactly), measured better than the mean there
   (benchmarks/results/glass_gap); SimpleNet keeps the mean, with which its rows were measured.
   Standardisation (not in the papers; ``standardise``, on by default): each channel of o_ij is standardised
   with its mean and standard deviation over every position of the training images, fixed at fit, saved with
   the run and part of the exported graph. The papers' noise σ = 0.015 is absolute, set for WideResNet-50's
   post-ReLU features; EfficientNet-Lite0's levels end in linear projections of a much larger scale (the
   152-d local features of the synthetic brick images have a norm of about 55), next to which that noise is
   invisible: measured without standardisation (brick, 256 px, 5 epochs) SimpleNet's loss stayed at its
   starting value (1.075 → 1.001) and its maps came out inverted (image AUROC 0.60, pixel AUROC 0.19).
2. Feature adaptor G_θ (Sec. 3.2): one linear layer, q_ij = G_θ(o_ij), D → D.
3. Anomalous features (Sec. 3.3): q⁻_ij = q_ij + ε, ε ~ N(0, σ² I), σ = 0.015 (``gaussian_feature_noise``).
4. Discriminator D_ψ (Sec. 3.4): a two-layer MLP, Linear(D, 1024) → BatchNorm → LeakyReLU(0.2) →
   Linear(1024, 1, no bias), Xavier-normal weights as in both reference codes; one logit per position.
   SimpleNet trains it with the truncated L1 loss (eq. 4, ``truncated_l1_loss``); GLASS with BCE and focal
   losses on the sigmoid of the same logit.
5. Score (Sec. 3.5): a per-position anomaly score s_ij (SimpleNet −D(q_ij), GLASS sigmoid(D(q_ij))),
   bilinearly upsampled to the input size and blurred (Gaussian σ = 4): the anomaly map; image score = the
   maximum of s_ij over positions, before upsampling and blur, as both reference codes compute it.
   Backbone, adaptor, discriminator and the map are one module, ``DiscriminationGraph``: what ``predict``
   runs and what is exported.

``FeatureDiscriminator`` is the base of both detectors: networks, hyper-parameters they share, the score, and
one saving made possible because the backbone is frozen and the normal images are not augmented — each training
image's local features are computed once, the first time the image is drawn, and kept (N·D·h·w floats: 120
images of 256 px at D = 152 take 75 MB), so an epoch runs the backbone only on what changes (GLASS's
locally-synthesised images), not on the normal images again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import FeatureExtractor
from anomalens.errors import ConfigError
from anomalens.models.components.maps import check_blur_fits, upsample_and_blur
from anomalens.models.components.patch_features import ReferenceEmbedding, embedding_dims, patch_embedding
from anomalens.models.components.shared_params import EARLY_STOPPING, MAP_BLUR, PRETRAINED_BACKBONE
from anomalens.models.components.trained import TrainedDetector, TrainingImages, batch_slices
from anomalens.models.components.training import descend
from anomalens.params import Bool, Choice, Float, Int, Ints

PAPER_EMBED_DIMENSION = 1536  # both papers' pretrain_embed_dimension and target_embed_dimension


def positions(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) feature maps → (B·h·w, D) rows, one per position, image by image."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def aggregation_param(default: str) -> Choice:
    """How a position's neighbourhood becomes its feature (step 1); each detector states its own default."""
    return Choice(default, ("reference", "mean"), "reference = the papers' code: the p × p neighbourhood unfolded and "
                  "average-pooled along the flattened vector (keeps part of its layout; at most as wide as the "
                  "levels' channels), mean = PatchCore's mean over the neighbourhood per channel")


class LocalFeatures(nn.Module):
    """Images in [0, 1] → (B, D, h, w) locally aware features of a frozen backbone (step 1): the per-channel
    neighbourhood mean (``patch_embedding`` with ``dims``) or the reference codes' pooling (``reference``),
    standardised per channel with the training images' mean and standard deviation (``mean`` / ``std``: 0 and
    1 until set)."""

    def __init__(self, extractor: FeatureExtractor, dims: Sequence[int], patch_size: int,
                 reference: ReferenceEmbedding | None = None) -> None:
        super().__init__()
        self.extractor, self.dims, self.patch_size, self.reference = extractor, list(dims), patch_size, reference
        self.register_buffer("mean", torch.zeros(1, self.dim, 1, 1))
        self.register_buffer("std", torch.ones(1, self.dim, 1, 1))

    @property
    def dim(self) -> int:
        return self.reference.dim if self.reference is not None else sum(self.dims)

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The features before standardisation."""
        if self.reference is not None:
            return self.reference(self.extractor(images))
        return patch_embedding(self.extractor(images), self.dims, self.patch_size)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.raw(images))


def _xavier(module: nn.Module) -> None:
    """The reference codes' initialisation: Xavier-normal linear weights, zero biases, BatchNorm γ ~ N(1, 0.02)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class FeatureAdaptor(nn.Module):
    """G_θ (step 2): one linear layer on each position's feature, (N, D) → (N, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.apply(_xavier)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.linear(rows)


class Discriminator(nn.Module):
    """D_ψ (step 4): Linear → BatchNorm → LeakyReLU(0.2) → Linear(·, 1, no bias); (N, D) → (N,) logits."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2))
        self.tail = nn.Linear(hidden, 1, bias=False)
        self.apply(_xavier)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(rows)).squeeze(1)


def gaussian_feature_noise(rows: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Step 3: ε ~ N(0, std² I) of the shape of ``rows`` (from ``generator``, else torch's global one, which a
    resumed run restores)."""
    return std * torch.randn(rows.shape, generator=generator).to(rows.device, rows.dtype)


def truncated_l1_loss(normal_logits: torch.Tensor, anomalous_logits: torch.Tensor, margin_normal: float,
                      margin_anomalous: float) -> torch.Tensor:
    """SimpleNet eq. 4: mean of max(0, th⁺ − D(q)) + mean of max(0, −th⁻ + D(q⁻)) — normal features pushed above
    th⁺, anomalous ones below −th⁻, no gradient once they are past their margin."""
    return (F.relu(margin_normal - normal_logits).mean() + F.relu(margin_anomalous + anomalous_logits).mean())


class DiscriminationGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): local features, adaptor, discriminator, the position
    score (``score``: "negated" = −D, "probability" = sigmoid(D)), the upsampled blurred map and the maximum."""

    def __init__(self, local: LocalFeatures, adaptor: FeatureAdaptor, discriminator: Discriminator, score: str,
                 input_size: tuple[int, int], blur_sigma: float) -> None:
        super().__init__()
        self.local, self.adaptor, self.discriminator = local, adaptor, discriminator
        self.score, self.input_size, self.blur_sigma = score, tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.local(images)
        batch, _, height, width = features.shape
        logits = self.discriminator(self.adaptor(positions(features))).reshape(batch, height, width)
        patch_scores = -logits if self.score == "negated" else torch.sigmoid(logits)
        amap = upsample_and_blur(patch_scores, self.input_size, self.blur_sigma)
        return patch_scores.flatten(1).amax(1), amap


@dataclass
class NormalBatch:
    """A training batch as both models' steps take it: the normal images (in [0, 1], on the CPU: GLASS draws
    its local anomalies on them) and their local features (on the device)."""

    images: torch.Tensor
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


class FeatureDiscriminator(TrainedDetector):
    """The base of SimpleNet and GLASS (module docstring). A subclass writes its optimisers, ``_losses(batch,
    generator) -> {"loss": ..., ...}`` and ``patch_score``; ``_train_step`` and the validation loss are here."""

    score_is_map_max = False  # the maximum of the position scores, before upsampling and blur
    tiles = True  # tile_size / tile_overlap: features, adaptor and discriminator work on tiles (anomalens.tiling)
    holdout_validates = True  # with validation_fraction > 0 the threshold hold-out is the validation set
    patch_score = "negated"
    hyperparameters = {
        **PRETRAINED_BACKBONE,
        "layers": Ints((2, 3), "backbone levels (timm out_indices) of the local features; the first sets the grid "
                       "(the papers: WideResNet-50 layer2 + layer3, strides 8 and 16)", low=0),
        "patch_size": Int(3, "odd side of the neighbourhood each feature is averaged over (the papers: 3)", low=1),
        "pretrain_embed_dimension": Int(PAPER_EMBED_DIMENSION, "channels kept per level at most (the papers: 1536; "
                                        "never increased; reference aggregation: each level's pooled width)", low=1),
        "target_embed_dimension": Int(PAPER_EMBED_DIMENSION, "channels of the concatenation at most (the papers: "
                                      "1536)", low=1),
        "discriminator_hidden": Int(1024, "width of the discriminator's hidden layer (the papers: 1024)", low=1),
        "noise_std": Float(0.015, "σ of the Gaussian noise that makes anomalous features (the papers: 0.015)",
                           low=0.0, low_open=True),
        "batch_size": Int(8, "images per training (and scoring) batch (the papers: 8)", low=1),
        "adaptor_lr": Float(1e-4, "Adam learning rate of the feature adaptor (the papers: 1e-4)", low=0.0,
                            low_open=True),
        "discriminator_lr": Float(2e-4, "learning rate of the discriminator (the papers: 2e-4)", low=0.0,
                                  low_open=True),
        "standardise": Bool(True, "standardise each feature channel with its mean and std over the training images "
                            "(not in the papers: see the module docstring); false = the backbone's own scale"),
        "validation_fraction": Float(
            0.0, "> 0: the loss on held-out normals (fixed noise and anomalies) selects the kept epoch, on the "
            "threshold hold-out when there is one; 0: keep the last epoch, as the papers", low=0.0, high=0.9),
        **EARLY_STOPPING,
        **MAP_BLUR,
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)
        if self.patch_size % 2 == 0:
            raise ConfigError(f"{self.name}: parameter patch_size must be an odd integer >= 1, got {self.patch_size}")
        if self.target_embed_dimension < len(self.layers):
            raise ConfigError(f"{self.name}: parameter target_embed_dimension must be >= the number of layers "
                              f"({len(self.layers)}), got {self.target_embed_dimension}")

    # -- networks ---------------------------------------------------------------------------------
    def _build_networks(self) -> None:
        extractor = FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)
        dims = embedding_dims(extractor.channels, self.pretrain_embed_dimension, self.target_embed_dimension)
        reference = None
        if self.params.get("aggregation", "mean") == "reference":  # never wider than the levels' channels
            width = sum(extractor.channels)
            reference = ReferenceEmbedding(extractor.channels, min(self.pretrain_embed_dimension, width),
                                           min(self.target_embed_dimension, width), self.patch_size).to(self.device)
        self.local_ = LocalFeatures(extractor, dims, self.patch_size, reference)
        self.adaptor_ = FeatureAdaptor(self.local_.dim).to(self.device)
        self.discriminator_ = Discriminator(self.local_.dim, self.discriminator_hidden).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"adaptor": self.adaptor_, "discriminator": self.discriminator_}  # the backbone stays as pretrained

    def local_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] → (B, D, h, w) local features on the device (no gradient)."""
        with torch.no_grad():
            return self.local_(images.to(self.device))

    # -- training ----------------------------------------------------------------------------------
    def _train(self, fit_records, val_records, progress: bool) -> None:
        self._feature_cache: dict[int, torch.Tensor] = {}  # training image index → its raw local features
        self._standardised = False
        try:
            super()._train(fit_records, val_records, progress)
        finally:
            del self._feature_cache, self._standardised

    def _cached_features(self, images: TrainingImages, index: np.ndarray, batch: torch.Tensor) -> torch.Tensor:
        """The standardised local features of training images ``index`` (``batch`` their pixels); each image's
        raw features are computed once per fit."""
        missing = [i for i, k in enumerate(index.tolist()) if k not in self._feature_cache]
        if missing:
            with torch.no_grad():
                raw = self.local_.raw(batch[missing].to(self.device))
            for i, features in zip(missing, raw):
                self._feature_cache[int(index[i])] = features
        return self.local_.standardise(torch.stack([self._feature_cache[int(k)] for k in index.tolist()]))

    def _set_standardisation(self, images: TrainingImages) -> None:
        """The per-channel mean and standard deviation of every training image's raw local features."""
        total = total_sq = None
        count = 0
        for start, stop in batch_slices(len(images), self.setting("batch_size")):
            index = np.arange(start, stop)
            pixels = images.take(index)
            self._cached_features(images, index, pixels)
            raw = torch.stack([self._feature_cache[int(k)] for k in index.tolist()]).double()
            total = raw.sum((0, 2, 3)) if total is None else total + raw.sum((0, 2, 3))
            total_sq = raw.pow(2).sum((0, 2, 3)) if total_sq is None else total_sq + raw.pow(2).sum((0, 2, 3))
            count += raw.shape[0] * raw.shape[2] * raw.shape[3]
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp(min=0).sqrt().clamp(min=1e-6)
        self.local_.mean.copy_(mean.view(1, -1, 1, 1))
        self.local_.std.copy_(std.view(1, -1, 1, 1))

    def _start_epoch(self, images: TrainingImages) -> None:
        """Called before each epoch's batches, once the features are standardised (a subclass may add to it)."""

    def _epoch_batches(self, images: TrainingImages, epoch: int) -> Iterator[dict]:
        if self.standardise and not self._standardised:  # the first epoch of this fit (or of a resumed one)
            self._set_standardisation(images)
            self._standardised = True
        self._start_epoch(images)
        order = self._epoch_indices(len(images), epoch)
        for start, stop in batch_slices(len(order), self.setting("batch_size")):
            index = order[start:stop]
            pixels = images.take(index)
            yield {"x": NormalBatch(pixels, self._cached_features(images, index, pixels))}

    def _network_batch(self, batch: NormalBatch) -> NormalBatch:
        return batch  # images stay in [0, 1] on the CPU; features are on the device already

    def _mean_validation_loss(self, images: TrainingImages) -> float:
        # A freshly seeded generator per pass: every epoch is validated on the same noise and anomalies.
        generator = torch.Generator().manual_seed(self.seed)
        total = 0.0
        for start, stop in batch_slices(len(images), self.setting("batch_size")):
            pixels = images.take(np.arange(start, stop))
            batch = NormalBatch(pixels, self.local_features(pixels))
            total += self._losses(batch, generator)["loss"].item() * len(batch)
        return total / len(images)

    def _losses(self, batch: NormalBatch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _train_step(self, batch: NormalBatch, optimizers: dict) -> dict[str, float]:
        # torch's global generator: a resumed run replays the same draws
        return descend(self._losses(batch, None), optimizers)

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"feature_mean": self.local_.mean, "feature_std": self.local_.std}

    def _load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.local_.mean.copy_(tensors["feature_mean"])
        self.local_.std.copy_(tensors["feature_std"])

    # -- score (step 5) ------------------------------------------------------------------------------
    def inference_module(self) -> DiscriminationGraph:
        graph = DiscriminationGraph(self.local_, self.adaptor_, self.discriminator_, self.patch_score,
                                    self.model_input_size, self.blur_sigma)
        return self.tiled(graph)
