"""SuperSimpleNet — Rolih, Kristan & Skočaj, "SuperSimpleNet: Unifying Unsupervised and Supervised Learning for
Fast and Reliable Surface Defect Detection", ICPR 2024.

SimpleNet's frame (``components.feature_discrimination``) made denser and given a second head, so that the same
model learns from normal images alone (unsupervised) or from normal images plus labelled defects (supervised):

1. Upscaled local features (Sec. 3.1): frozen backbone levels 2 and 3, each bilinearly resized to *twice* the
   level-2 grid (stride 4 instead of 8: small defects cover more positions), concatenated, then averaged over
   each position's 3 × 3 neighbourhood: o (B, D, h, w).
2. Feature adaptor (Sec. 3.2): a 1 × 1 convolution D → D, u = A(o) (``FeatureAdaptor``, per position).
3. Synthetic anomalies in feature space (Sec. 3.3): the batch's adapted features are duplicated; on every copy
   a binarised Perlin mask P = [Perlin > 0.2] at the feature grid (``components.perlin_anomalies``), emptied
   with probability 0.5 so that half of the copies stay normal, marks where Gaussian noise ε ~ N(0, 0.015² I)
   is added: ũ = u + ε ⊙ P ⊙ (1 − M), M the real defect mask (zero for normal images; the noise never overlaps
   a real defect). The segmentation target is max(M, P ⊙ (1 − M)) and an image's label is 1 when it holds a
   real defect or a synthetic one.
4. Segmentation head (Sec. 3.4): 1 × 1 conv D → 1024, BatchNorm, LeakyReLU(0.2), 1 × 1 conv 1024 → 1 (no
   bias): one logit per position, the anomaly map m (the ``Discriminator`` MLP of SimpleNet, per position).
5. Classification head (Sec. 3.4): the adapted features concatenated with m go through a 5 × 5 conv (128
   channels), BatchNorm and ReLU; global max and average pooling of its output and of m (four vectors,
   128 + 128 + 1 + 1) feed one linear layer: the image logit s. In the unsupervised setting the gradient from
   this head into m is stopped (the synthetic masks would otherwise teach the map to serve the classifier);
   with real defects it flows (the paper's two settings).
6. Losses (Sec. 3.5): L = L_focal(m, target) + L_trunc-L1(m, target) + L_focal(s, label), the focal loss with
   γ = 4 (no α weighting), and the truncated L1 loss with margin 0.5 on the map's logits:
       L_trunc = mean over normal positions of max(0, m + 0.5) + mean over anomalous ones of max(0, 0.5 − m).
   Supervised: real masks enter the segmentation terms, image labels the classification term; a labelled
   defect without a mask enters only the classification term (its positions are not known).
7. Inference (Sec. 3.6): no synthesis; the anomaly map is m bilinearly upsampled to the input size and
   Gaussian-blurred (σ = 4); the image score is s. Features, adaptor and both heads are one module,
   ``SuperSimpleNetGraph``: what ``predict`` runs and what is exported.

Paper's training (Sec. 4, the authors' code): AdamW, lr 1e-4 for the adaptor (its weight decay torch's 0.01) and
2e-4 for the heads (weight decay 1e-5), the learning rates multiplied by 0.4 after 80 % and 90 % of the epochs,
300 epochs, batch 32, 256 px, WideResNet-50 (torchvision V1 weights); supervised: gradient norm clipped to 1.

Deviations, and why:
- Backbone: the bundled, offline ``efficientnet_lite0`` levels 2-3 (strides 8 and 16; 40 + 112 = 152 channels)
  instead of WideResNet-50 (no weights offline; ``backbone="wide_resnet50_2"`` with ``weights=FILE`` builds the
  paper's). Channels are standardised with the training images' statistics (``standardise``, as SimpleNet
  here; the paper does not), so σ = 0.015 has the same meaning for every backbone.
- Budget: ``epochs`` defaults to ``EPOCHS``, a CPU budget; ``epochs=300`` is the paper's. At 256 px an epoch of
  120 images is about 4 TFLOP of head training (the 5 × 5 classification convolution on the 64 × 64 upscaled
  grid dominates); what a CPU budget reaches: benchmarks/results/supervised_defects. AdamW moves a weight by about
  its lr per step: after a few dozen, s still ranks much as its seeded initial draw (results/supersimplenet_gap).
- Scores: the logits s and m, not their sigmoid (anomalib's): the same order, no float32 saturation at 1.0.
- Labelled defects per batch: the paper does not say how they are mixed in; here each batch of normal images
  gets up to half as many labelled defects (at least one), drawn in a seeded order that cycles through them, so
  that even a single labelled defect is seen every step. Masks are resized to the feature grid bilinearly and
  binarised at 0.5 (the authors' code).
- ``image_score="map_max"`` scores an image by the largest logit of its map instead of s (the authors' evaluation
  reports both, "I-AUROC" and "seg-I-AUROC"); the default is the paper's s.
- Speed: the backbone is frozen, nothing is augmented in pixels: features are computed once per fit (the base's).
- Kept epoch: the last one, or with ``validation_fraction`` > 0 the one with the lowest loss on held-out normal
  images (fixed draws); the threshold comes from normal images only, never from the labelled defects.
- What changes the draws, not the method (the authors' code): the adaptor and segmentation head are initialised as
  SimpleNet's (zero biases, BatchNorm γ ~ N(1, 0.02); theirs: torch's biases, γ = 1), Perlin masks rotated at the
  grid (theirs unrotated, resized), map blur ±4σ (theirs 25 taps), lr milestones rounded (theirs floats). Given
  anomalib's trained weights, outputs and gradients agree within float32 rounding (supersimplenet_gap).
Training state, resumable checkpoints (``checkpoint``) and batching: ``components.trained``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from anomalens.backbones import FeatureExtractor
from anomalens.data import TensorImageDataset
from anomalens.errors import ConfigError
from anomalens.models.components.feature_discrimination import (
    Discriminator,
    FeatureAdaptor,
    FeatureDiscriminator,
    LocalFeatures,
    embedding_dims,
    gaussian_feature_noise,
    positions,
)
from anomalens.models.components.maps import upsample_and_blur
from anomalens.models.components.perlin_anomalies import AnomalySynthesizer
from anomalens.models.components.trained import TrainingImages, batch_slices
from anomalens.params import Bool, Choice, Float, Int, Ints
from anomalens.registry import register_detector

EPOCHS = 6  # the CPU default; the paper trains 300
PAPER_EPOCHS = 300
LR_MILESTONES = (0.8, 0.9)  # shares of the epochs after which the learning rates are multiplied by LR_FACTOR
LR_FACTOR = 0.4
HEAD_WEIGHT_DECAY = 1e-5
SUPERVISED_CLIP_NORM = 1.0  # the authors' gradient clipping when real defects are learnt from


class UpscaledFeatures(LocalFeatures):
    """Step 1: every level resized to twice the first level's grid, concatenated, 3 × 3-averaged; channels
    standardised as ``LocalFeatures`` does."""

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        levels = self.extractor(images)
        height, width = levels[0].shape[-2:]
        parts = []
        for fmap, dim in zip(levels, self.dims, strict=True):
            if dim < fmap.shape[1]:  # the reference pooling of channels (embedding_dims): adjacent ones averaged
                b, c, h, w = fmap.shape
                fmap = F.adaptive_avg_pool1d(fmap.permute(0, 2, 3, 1).reshape(-1, 1, c), dim)
                fmap = fmap.reshape(b, h, w, dim).permute(0, 3, 1, 2)
            parts.append(F.interpolate(fmap, size=(2 * height, 2 * width), mode="bilinear", align_corners=False))
        features = torch.cat(parts, dim=1)
        p = self.patch_size
        return F.avg_pool2d(features, p, stride=1, padding=p // 2) if p > 1 else features


def per_position(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A module on rows (N, D) → (N, D') applied at every position of (B, D, h, w): a 1 × 1 convolution."""
    batch, _, height, width = features.shape
    rows = module(positions(features))
    return rows.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


class ClassificationHead(nn.Module):
    """Step 5: (features (B, D, h, w), map logits (B, 1, h, w)) → image logits (B,)."""

    def __init__(self, dim: int, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(dim + 1, channels, kernel, padding=kernel // 2), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.linear = nn.Linear(2 * channels + 2, 1)
        for module in self.modules():  # the authors' initialisation: Xavier-normal weights, BatchNorm γ = 1
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(module.weight)

    def forward(self, features: torch.Tensor, map_logits: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        if stop_gradient:
            map_logits = map_logits.detach()
        hidden = self.conv(torch.cat([features, map_logits], dim=1))
        pooled = [hidden.amax((2, 3)), hidden.mean((2, 3)), map_logits.amax((2, 3)), map_logits.mean((2, 3))]
        return self.linear(torch.cat(pooled, dim=1)).squeeze(1)


class SuperSimpleNetGraph(nn.Module):
    """Images in [0, 1] → (image logits s, anomaly maps): features, adaptor, both heads, the upsampled blurred map."""

    def __init__(self, local: LocalFeatures, adaptor: nn.Module, segmentation: nn.Module, classifier: ClassificationHead,
                 classify_adapted: bool, image_score: str, input_size: tuple[int, int], blur_sigma: float) -> None:
        super().__init__()
        self.local, self.adaptor, self.segmentation, self.classifier = local, adaptor, segmentation, classifier
        self.classify_adapted, self.image_score = classify_adapted, image_score
        self.input_size, self.blur_sigma = tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.local(images)
        adapted = per_position(self.adaptor, features)
        map_logits = per_position(self.segmentation, adapted)
        if self.image_score == "classifier":
            scores = self.classifier(adapted if self.classify_adapted else features, map_logits)
        else:  # "map_max": the largest position logit of the map, before upsampling and blur (SimpleNet's score)
            scores = map_logits.flatten(1).amax(1)
        return scores, upsample_and_blur(map_logits[:, 0], self.input_size, self.blur_sigma)


def feature_masks(synthesizer: AnomalySynthesizer, count: int, height: int, width: int, probability: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Step 3's (count, 1, h, w) binary Perlin masks at the feature grid, each emptied with 1 − ``probability``."""
    masks = torch.zeros(count, 1, height, width)
    for i in range(count):
        mask = synthesizer.mask(height, width, generator)
        if torch.rand((), generator=generator).item() < probability:
            masks[i, 0] = mask
    return masks


def truncated_l1(map_logits: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Step 6: mean of max(0, m + margin) over normal positions + mean of max(0, margin − m) over anomalous ones
    (a side without positions adds nothing)."""
    normal, anomalous = map_logits[targets == 0], map_logits[targets > 0]
    loss = map_logits.new_zeros(())
    if len(normal):
        loss = loss + F.relu(normal + margin).mean()
    if len(anomalous):
        loss = loss + F.relu(margin - anomalous).mean()
    return loss


def feature_grid_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, 1, H, W) pixel masks → (K, 1, h, w): bilinear, binarised at 0.5 (the authors' code)."""
    return (F.interpolate(masks.float(), size=(height, width), mode="bilinear", align_corners=False) >= 0.5).float()


@dataclass
class LabelledBatch:
    """A training batch: standardised features (N, D, h, w) of normal images then labelled defects, their real
    defect masks at the feature grid (zeros for normal images), image labels and whether a mask is known."""

    features: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    known: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class LabelledDefects:
    """The fit's labelled defects: images in [0, 1], pixel masks (zeros where none is known), mask known or not."""

    images: torch.Tensor
    masks: torch.Tensor
    known: torch.Tensor

    @classmethod
    def read(cls, records: Sequence, size: tuple[int, int], channels: int) -> LabelledDefects:
        dataset = TensorImageDataset(list(records), size, channels)
        items = [dataset[i] for i in range(len(dataset))]
        return cls(torch.stack([item["image"] for item in items]), torch.stack([item["mask"] for item in items]),
                   torch.tensor([record.mask is not None for record in records]))


@register_detector
class SuperSimpleNet(FeatureDiscriminator):
    """SimpleNet with upscaled features, Perlin-shaped feature noise, a segmentation and a classification head;
    learns from labelled defects too (``fit(..., abnormal=...)``)."""

    name = "supersimplenet"
    accepts_abnormal = True
    hyperparameters = {
        "epochs": Int(EPOCHS, f"training epochs (the paper: {PAPER_EPOCHS}; this CPU default, estimated at minutes "
                      "for a 120-image 256-px category, is far from converged)", low=1),
        "batch_size": Int(32, "normal images per training (and scoring) batch (the paper: 32)", low=1),
        "discriminator_hidden": Int(1024, "width of the segmentation head's hidden 1 x 1 convolution (the paper: "
                                    "1024)", low=1),
        "discriminator_lr": Float(2e-4, "AdamW learning rate of the segmentation and classification heads (the "
                                  "paper: 2e-4)", low=0.0, low_open=True),
        "adaptor_lr": Float(1e-4, "AdamW learning rate of the feature adaptor (the paper: 1e-4)", low=0.0,
                            low_open=True),
        "noise_std": Float(0.015, "σ of the Gaussian noise added under the Perlin masks (the paper: 0.015)",
                           low=0.0, low_open=True),
        "perlin_threshold": Float(0.2, "the Perlin noise is binarised above this value (the paper: 0.2)",
                                  low=-1.0, high=1.0),
        "perlin_scales": Ints((0, 6), "Perlin lattice of 2^a x 2^b cells, a and b drawn from [first, second) (the "
                              "reference Perlin generator's 2^[0, 6))", low=0, length=2),
        "anomaly_probability": Float(0.5, "share of the duplicated feature maps that get a synthetic anomaly (the "
                                     "paper: 0.5)", low=0.0, high=1.0),
        "classifier_channels": Int(128, "channels of the classification head's convolution (the paper: 128)", low=1),
        "classifier_kernel": Int(5, "odd side of the classification head's convolution (the paper: 5)", low=1),
        "classify_adapted": Bool(True, "the classification head sees the adapted features (the ICPR paper); false: "
                                 "the backbone's (the authors' later journal version, anomalib's default)"),
        "image_score": Choice("classifier", ("classifier", "map_max"), "the image score: the classification head's "
                              "logit s (the paper), or the largest logit of the anomaly map (the head still trains)"),
        "focal_gamma": Float(4.0, "γ of the focal losses on the map and the image logit (the paper: 4)", low=0.0),
        "truncation": Float(0.5, "margin of the truncated L1 loss on the map's logits (the paper: 0.5)", low=0.0),
    }

    def _check_params(self) -> None:
        super()._check_params()
        if self.classifier_kernel % 2 == 0:
            raise ConfigError(f"{self.name}: parameter classifier_kernel must be an odd integer >= 1, got "
                              f"{self.classifier_kernel}")
        low, high = self.perlin_scales
        if low >= high:
            raise ConfigError(f"{self.name}: perlin_scales must be [low, high) with low < high, got [{low}, {high}]")

    # -- networks (steps 1, 2, 4, 5) ------------------------------------------------------------------
    def _build_networks(self) -> None:
        extractor = FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)
        dims = embedding_dims(extractor.channels, self.pretrain_embed_dimension, self.target_embed_dimension)
        self.local_ = UpscaledFeatures(extractor, dims, self.patch_size)
        dim = self.local_.dim
        self.adaptor_ = FeatureAdaptor(dim).to(self.device)
        self.segmentation_ = Discriminator(dim, self.discriminator_hidden).to(self.device)
        self.classifier_ = ClassificationHead(dim, self.classifier_channels, self.classifier_kernel).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"adaptor": self.adaptor_, "segmentation": self.segmentation_, "classifier": self.classifier_}

    def inference_module(self) -> nn.Module:
        graph = SuperSimpleNetGraph(self.local_, self.adaptor_, self.segmentation_, self.classifier_,
                                    self.classify_adapted, self.image_score, self.model_input_size, self.blur_sigma)
        return self.tiled(graph)

    # -- training (steps 3 and 6) -------------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        heads = [*self.segmentation_.parameters(), *self.classifier_.parameters()]
        return {"adamw": torch.optim.AdamW([
            {"params": self.adaptor_.parameters(), "lr": self.adaptor_lr},
            {"params": heads, "lr": self.discriminator_lr, "weight_decay": HEAD_WEIGHT_DECAY},
        ])}

    def _schedulers(self, optimizers: dict) -> dict:
        # Rounded and deduplicated (anomalib's int() and the authors' floats give the same epochs at 300): a short
        # run is then the start of a longer one, so a checkpoint resumes into more epochs exactly.
        milestones = sorted({max(1, round(share * self.epochs)) for share in LR_MILESTONES})
        return {"steps": torch.optim.lr_scheduler.MultiStepLR(optimizers["adamw"], milestones, gamma=LR_FACTOR)}

    @property
    def supervised(self) -> bool:
        """Whether this fit learns from labelled defects (the paper's supervised setting)."""
        return bool(self.abnormal_records)

    def _train(self, fit_records, val_records, progress: bool) -> None:
        if self.supervised and self.sizing.tiling:
            raise ConfigError(f"{self.name}: labelled defects (abnormal=) do not combine with tiling (tile_size)")
        self.synthesizer_ = AnomalySynthesizer([], tuple(self.perlin_scales), threshold=self.perlin_threshold)
        self._defects = (LabelledDefects.read(self.abnormal_records, self.model_input_size, self.image_channels)
                         if self.supervised else None)
        self._defect_features: torch.Tensor | None = None
        try:
            super()._train(fit_records, val_records, progress)
        finally:
            del self.synthesizer_, self._defects, self._defect_features

    def _epoch_batches(self, images: TrainingImages, epoch: int) -> Iterator[dict]:
        order = None
        if self._defects is not None:
            order = np.random.default_rng((self.seed, 3, epoch)).permutation(len(self._defects.images))
        drawn = 0
        for batch in super()._epoch_batches(images, epoch):  # the normal images' cached features
            features = batch["x"].features
            count = len(features)
            masks = torch.zeros(count, 1, *features.shape[-2:], device=self.device)
            labels = torch.zeros(count, device=self.device)
            known = torch.ones(count, dtype=torch.bool, device=self.device)
            if order is not None:
                take = max(1, count // 2)
                index = order[np.arange(drawn, drawn + take) % len(order)]
                drawn += take
                defects = self._defect_batch(index)
                features, masks = torch.cat([features, defects.features]), torch.cat([masks, defects.masks])
                labels, known = torch.cat([labels, defects.labels]), torch.cat([known, defects.known])
            yield {"x": LabelledBatch(features, masks, labels, known)}

    def _defect_batch(self, index: np.ndarray) -> LabelledBatch:
        """Labelled defects ``index``: their standardised features (computed once per fit), masks at the grid."""
        defects = self._defects
        if self._defect_features is None:
            with torch.no_grad():
                self._defect_features = torch.cat([self.local_.raw(defects.images[start:stop].to(self.device))
                                                   for start, stop in batch_slices(len(defects.images), 8)])
        index_t = torch.as_tensor(index, dtype=torch.long)
        features = self.local_.standardise(self._defect_features[index_t.to(self.device)])
        masks = feature_grid_masks(defects.masks[index_t], *features.shape[-2:]).to(self.device)
        return LabelledBatch(features, masks, torch.ones(len(index), device=self.device),
                             defects.known[index_t].to(self.device))

    def _network_batch(self, batch: LabelledBatch) -> LabelledBatch:
        return batch  # features on the device already

    def _losses(self, batch: LabelledBatch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Steps 3 and 6 on one batch: the duplicated features, noise under Perlin masks, both heads' losses."""
        adapted = per_position(self.adaptor_, batch.features)  # u
        features, adapted = torch.cat([batch.features, batch.features]), torch.cat([adapted, adapted])
        real, labels, known = (torch.cat([batch.masks] * 2), torch.cat([batch.labels] * 2),
                               torch.cat([batch.known] * 2))
        perlin = feature_masks(self.synthesizer_, len(adapted), *adapted.shape[-2:], self.anomaly_probability,
                               generator).to(self.device)
        region = perlin * (1 - real)  # P ⊙ (1 − M): no noise over a real defect
        noise = gaussian_feature_noise(adapted, self.noise_std, generator) * region
        targets = torch.maximum(real, region)
        labels = torch.maximum(labels, region.flatten(1).amax(1))
        noised = adapted + noise
        map_logits = per_position(self.segmentation_, noised)
        scores = self.classifier_(noised if self.classify_adapted else features + noise, map_logits,
                                  stop_gradient=not self.supervised)
        # Segmentation terms on the images whose masks are known (all but labelled defects without one).
        map_known, target_known = map_logits[known], targets[known]
        map_focal = sigmoid_focal_loss(map_known, target_known, alpha=-1, gamma=self.focal_gamma, reduction="mean")
        map_l1 = truncated_l1(map_known, target_known, self.truncation)
        score_focal = sigmoid_focal_loss(scores, labels, alpha=-1, gamma=self.focal_gamma, reduction="mean")
        return {"loss": map_focal + map_l1 + score_focal, "map_focal": map_focal, "map_l1": map_l1,
                "score_focal": score_focal}

    def _train_step(self, batch: LabelledBatch, optimizers: dict) -> dict[str, float]:
        losses = self._losses(batch, None)  # torch's global generator: a resumed run replays the same draws
        optimizer = optimizers["adamw"]
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.supervised:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, SUPERVISED_CLIP_NORM)
        optimizer.step()
        return {name: value.item() for name, value in losses.items()}

    def _mean_validation_loss(self, images: TrainingImages) -> float:
        # A freshly seeded generator per pass: every epoch is validated on the same masks and noise.
        generator = torch.Generator().manual_seed(self.seed)
        total = 0.0
        for start, stop in batch_slices(len(images), self.setting("batch_size")):
            features = self.local_features(images.take(np.arange(start, stop)))
            count = len(features)
            batch = LabelledBatch(features, torch.zeros(count, 1, *features.shape[-2:], device=self.device),
                                  torch.zeros(count, device=self.device),
                                  torch.ones(count, dtype=torch.bool, device=self.device))
            total += self._losses(batch, generator)["loss"].item() * count
        return total / len(images)
