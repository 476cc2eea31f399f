"""GLASS — Chen, Luo, Lei, Wang, Shen & Zhou, "A Unified Anomaly Synthesis Strategy with Gradient Ascent for
Industrial Anomaly Detection and Localization", ECCV 2024.

SimpleNet's frame (``components.feature_discrimination``): frozen backbone levels 2-3 with 3 × 3 neighbourhood
aggregation, a one-layer feature adaptor, a two-layer MLP discriminator; what GLASS adds is how the anomalies
the discriminator learns from are made, on three branches per training batch (Sec. 3):

1. Normal branch: adapted normal features u = G(o) of the training images, label 0.
2. Global Anomaly Synthesis, GAS (Sec. 3.2): Gaussian noise g = u + ε, ε ~ N(0, σ² I), σ = 0.015, then
   ``ascent_steps`` (20) steps of gradient *ascent* on the discriminator's loss for g,
       g ← g + η ∇_g L_bce(D(g), 1) / ‖∇_g L_bce(D(g), 1)‖,   η = 0.001 (``ascent_step``),
   which moves the synthetic anomalies towards the normal features, where the discriminator is least sure;
   every 5 steps a truncated projection keeps them in a band around the normal data:
   - ``constraint="manifold"`` (the paper's choice for most categories): the offset h = g − u is rescaled
     to a length in [r, 2r], r = 0.5;
   - ``constraint="hypersphere"``: with c the mean adapted feature of each position over the training images
     (recomputed every epoch) and r' the 0.75 quantile of the normal features' distances to c, g − c is
     rescaled to a length in [r', 2r']; local anomalies (below) are pushed to [2r', 4r'] from c.
   Label 1. L_bce = BCE(D(u), 0) + BCE(D(g), 1) (eq. 7).
3. Local Anomaly Synthesis, LAS (Sec. 3.3): DRAEM's image-level anomalies — a Perlin-noise mask (here, with
   probability 1/3 each, one mask, the union of two or their intersection, as the authors' code) filled with
   an augmented texture and blended into the normal image (``components.perlin_anomalies``); the image goes
   through backbone and adaptor, each position labelled by whether the mask covers it (max-pooled onto the
   feature grid). The focal loss (γ = 2) on the positions whose squared error (sigmoid(D) − label)² is at or
   above its 0.5 quantile (the authors' hard mining): L_focal (eq. 8).
Loss L = L_bce + L_focal. Score: sigmoid(D(u)) per position, upsampled, Gaussian σ = 4 (the map); image score
= its maximum before upsampling (the authors' code).

Paper's training (Sec. 4.1, the authors' code): Adam for the adaptor (lr 1e-4, weight decay 1e-5), AdamW
for the discriminator (lr 2e-4), batch 8, 288 px, WideResNet-50, 640 epochs.

Deviations, and why:
- Backbone and dimension: as SimpleNet (``simplenet`` module docstring): the bundled ``efficientnet_lite0``
  levels 2-3, D = 152. Unlike SimpleNet here, the features are the authors' exactly: pooled as their code pools
  them (``aggregation="reference"``, ``feature_discrimination`` step 1) and not standardised
  (``standardise=False``: the local-anomaly branch trains the discriminator whatever the scale). Both measured
  better than SimpleNet's per-channel mean, standardised, which GLASS used until session 20
  (benchmarks/results/glass_gap, and the synthetic rows of benchmarks/results/results.md). Runs saved before read
  as ``aggregation="mean"`` (``persistence``); their ``standardise`` was saved with them.
- Budget: ``epochs`` defaults to ``EPOCHS`` (a CPU budget: the gradient ascent's 20 extra discriminator passes
  make an epoch ~25× SimpleNet's; benchmarks/results/compare_glass); ``epochs=640`` is the authors'. Their code keeps the epoch with the best *test* metrics; here the last one, or with
  ``validation_fraction`` > 0 the lowest loss on held-out normal images (fixed draws).
- Texture source: the paper's DTD is not on an offline machine; as DRAEM, twelve photos bundled with
  scikit-image, or ``anomaly_source`` = a folder (DTD for the paper's recipe); DRAEM's ten augmentations
  (three drawn per texture) stand in for the authors' torchvision list. The blend factor β is drawn from
  U[``blend``] = U[0.2, 0.8] — the authors' N(0.5, 0.1²) clipped to [0.2, 0.8] has the same range. No
  foreground masks for object categories (the authors use them on a few MVTec objects).
- Gradient ascent: the offset it finds is a constant for back-propagation (the adaptor learns through u, as in
  the authors' code, but not through the ascent's own steps).
- Speed: the normal images' features are computed once per fit (``FeatureDiscriminator``); each step runs the
  backbone only on the LAS images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from anomalens.errors import ConfigError
from anomalens.models.components.feature_discrimination import (
    FeatureDiscriminator,
    NormalBatch,
    aggregation_param,
    gaussian_feature_noise,
    positions,
)
from anomalens.models.components.perlin_anomalies import AnomalySynthesizer, load_anomaly_sources
from anomalens.models.components.trained import TrainingImages, batch_slices
from anomalens.params import Bool, Choice, Float, Floats, Int, Ints, Text
from anomalens.registry import register_detector

# The CPU default; the authors train 640. An epoch costs ~5 TFLOP at 256 px for 120 images (20 ascent steps of the
# 1024-wide discriminator over 2 × 1024 positions per image dominate it): ~2 minutes on two idle cores.
EPOCHS = 3
PROJECT_EVERY = 5  # ascent steps between truncated projections (the authors' code)
MANIFOLD_RADIUS = 0.5  # r of the manifold constraint (the authors' code)


class LocalAnomalySynthesizer(AnomalySynthesizer):
    """DRAEM's synthesis with GLASS's masks: one Perlin mask, the union of two, or their intersection (1/3 each)."""

    def mask(self, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        first = super().mask(height, width, generator)
        kind = torch.rand((), generator=generator).item()
        if kind < 1 / 3:
            return first
        second = super().mask(height, width, generator)
        if kind < 2 / 3:
            return torch.maximum(first, second)
        both = first * second
        return both if both.any() else first  # an empty intersection would be a normal image


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _rescaled(offset: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """``offset`` rows rescaled so that their lengths lie in [low, high] (the truncated projection)."""
    length = offset.norm(dim=1, keepdim=True)
    return offset * (length.clamp(low, high) / (length + 1e-10))


def global_anomalies(discriminator: nn.Module, normal: torch.Tensor, noise: torch.Tensor, steps: int, step_size: float,
                     centre: torch.Tensor | None, radius: torch.Tensor | None) -> torch.Tensor:
    """GAS (Sec. 3.2): normal + noise moved by ``steps`` normalised gradient-ascent steps on BCE(D(g), 1), with
    the truncated projection every ``PROJECT_EVERY`` steps — onto [r, 2r] around each normal feature
    (manifold, ``centre`` None) or onto [r', 2r'] around ``centre`` (hypersphere). Returns normal + offset with
    the offset detached (module docstring)."""
    anchor = normal.detach()
    points = anchor + noise
    with torch.enable_grad():  # validation runs under no_grad; the ascent needs gradients all the same
        for step in range(steps):
            points = points.detach().requires_grad_(True)
            # With the normal features in the same pass, as the authors' code: BatchNorm sees both.
            logits = discriminator(torch.cat([anchor, points]))[len(anchor):]
            (gradient,) = torch.autograd.grad(_bce(logits, 1.0), points)
            points = points.detach() + step_size * gradient / (gradient.norm(dim=1, keepdim=True) + 1e-10)
            if (step + 1) % PROJECT_EVERY == 0:
                if centre is None:
                    points = anchor + _rescaled(points - anchor, MANIFOLD_RADIUS, 2 * MANIFOLD_RADIUS)
                else:
                    points = centre + _rescaled(points - centre, radius, 2 * radius)
    return normal + (points - anchor).detach()


def hard_focal_loss(logits: torch.Tensor, labels: torch.Tensor, quantile: float, gamma: float) -> torch.Tensor:
    """Eq. 8 with the authors' hard mining: the focal loss over the positions whose (sigmoid(D) − label)² is at
    or above its ``quantile`` quantile (all of them when ``quantile`` is 0)."""
    if quantile > 0:
        error = (torch.sigmoid(logits.detach()) - labels).pow(2)
        hard = error >= torch.quantile(error, quantile)
        logits, labels = logits[hard], labels[hard]
    return sigmoid_focal_loss(logits, labels, alpha=-1, gamma=gamma, reduction="mean")


def _plain(module: nn.Module) -> nn.Module:
    """The network itself when data-parallel training wraps it (the ascent's extra passes stay local)."""
    return getattr(module, "module", module)


@register_detector
class GLASS(FeatureDiscriminator):
    """SimpleNet's discriminator trained on gradient-ascent feature anomalies and Perlin-noise image anomalies."""

    name = "glass"
    patch_score = "probability"  # sigmoid(D(u)): the probability that a position is anomalous
    hyperparameters = {
        "aggregation": aggregation_param("reference"),
        "standardise": Bool(False, "standardise each feature channel with the training images' mean and std (not in "
                            "the papers; SimpleNet's default here); false = the backbone's own scale, as the authors' "
                            "code (measured better for GLASS: benchmarks/results/glass_gap)"),
        "epochs": Int(EPOCHS, "training epochs (the authors: 640; this CPU default trains a 120-image 256-px "
                      "category in minutes)", low=1),
        "ascent_steps": Int(20, "gradient-ascent steps of the global anomaly synthesis (the paper: 20; 0: plain "
                            "Gaussian noise)", low=0),
        "ascent_step": Float(0.001, "η, the length of each normalised ascent step (the authors' code: 0.001)", low=0.0),
        "constraint": Choice("manifold", ("manifold", "hypersphere"), "truncated projection of the ascent: around "
                             "each normal feature (manifold) or around the mean feature (hypersphere)"),
        "radius_quantile": Float(0.75, "hypersphere: r' is this quantile of the normal features' distances to the "
                                 "centre (the authors' code: 0.75)", low=0.0, high=1.0, low_open=True),
        "focal_quantile": Float(0.5, "hard mining: the focal loss counts the positions whose error is at or above "
                                "this quantile (the authors' 0.5; 0: all)", low=0.0, high=1.0),
        "focal_gamma": Float(2.0, "γ of the focal loss (the paper: 2)", low=0.0),
        "anomaly_source": Text(None, "folder of images whose textures fill the local anomalies (the paper: DTD); "
                               "null = photos bundled with scikit-image", optional=True),
        "perlin_scales": Ints((0, 6), "Perlin lattice of 2^a x 2^b cells, a and b drawn from [first, second) "
                              "(the paper's 2^[0, 6))", low=0, length=2),
        "blend": Floats((0.2, 0.8), "range of β, the share of the normal image kept inside the mask (the authors' "
                        "[0.2, 0.8])", low=0.0, high=1.0, length=2),
    }

    def _check_params(self) -> None:
        super()._check_params()
        low, high = self.perlin_scales
        if low >= high:
            raise ConfigError(f"{self.name}: perlin_scales must be [low, high) with low < high, got [{low}, {high}]")
        if self.blend[0] > self.blend[1]:
            raise ConfigError(f"{self.name}: blend must be [low, high] with low <= high, got {list(self.blend)}")

    # -- training (Sec. 3.2-3.4) --------------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adaptor": torch.optim.Adam(self.adaptor_.parameters(), lr=self.adaptor_lr, weight_decay=1e-5),
                "discriminator": torch.optim.AdamW(self.discriminator_.parameters(), lr=self.discriminator_lr)}

    def _train(self, fit_records, val_records, progress: bool) -> None:
        sources = load_anomaly_sources(self.anomaly_source, 2 * max(self.model_input_size))
        self.synthesizer_ = LocalAnomalySynthesizer(sources, tuple(self.perlin_scales), blend=tuple(self.blend),
                                                   probability=1.0)
        self._centre: torch.Tensor | None = None
        try:
            super()._train(fit_records, val_records, progress)
        finally:
            del self.synthesizer_, self._centre

    def _start_epoch(self, images: TrainingImages) -> None:
        if self.constraint == "hypersphere":  # the centre follows the adaptor: recomputed every epoch
            self._centre = self._mean_adapted_features(images)

    def _mean_adapted_features(self, images: TrainingImages) -> torch.Tensor:
        """c: the mean adapted feature of every grid position over the training images, (h·w, D)."""
        total = 0
        with torch.no_grad():
            for start, stop in batch_slices(len(images), self.batch_size):
                index = np.arange(start, stop)
                features = self._cached_features(images, index, images.take(index))
                total = total + self.adaptor_(positions(features)).reshape(len(index), -1, features.shape[1]).sum(0)
        return total / len(images)

    def _losses(self, batch: NormalBatch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Eq. 7-8 for one batch: the normal, global and local branches (module docstring)."""
        # LAS: anomalous images and, per feature position, whether the mask covers it.
        augmented, masks = self.synthesizer_(batch.images, generator)
        local = self.local_features(augmented)
        labels = positions(F.adaptive_max_pool2d(masks, local.shape[-2:]).to(self.device)).squeeze(1)
        normal = self.adaptor_(positions(batch.features))  # u
        synthetic_local = self.adaptor_(positions(local))
        centre = radius = None
        if self.constraint == "hypersphere":
            if self._centre is None:  # validation before the first epoch's centre: this batch's mean
                self._centre = normal.detach().reshape(len(batch), -1, normal.shape[1]).mean(0)
            centre = self._centre.repeat(len(batch), 1)
            covered = labels > 0
            distances = torch.cat([(synthetic_local - centre)[~covered], normal - centre]).detach().norm(dim=1)
            radius = torch.quantile(distances, self.radius_quantile)
            # Local anomalies outside the band [2r', 4r'] around the centre are moved onto it.
            pushed = centre + _rescaled(synthetic_local - centre, 2 * radius, 4 * radius)
            synthetic_local = torch.where(covered[:, None], pushed, synthetic_local)
        noise = gaussian_feature_noise(normal, self.noise_std, generator)
        synthetic_global = global_anomalies(_plain(self.discriminator_), normal, noise, self.ascent_steps,
                                            self.ascent_step, centre, radius)
        logits = self.discriminator_(torch.cat([normal, synthetic_global]))
        normal_logits, global_logits = logits.split(len(normal))
        normal_loss, global_loss = _bce(normal_logits, 0.0), _bce(global_logits, 1.0)
        local_loss = hard_focal_loss(self.discriminator_(synthetic_local), labels, self.focal_quantile, self.focal_gamma)
        return {"loss": normal_loss + global_loss + local_loss, "normal": normal_loss, "global": global_loss,
                "local": local_loss}
