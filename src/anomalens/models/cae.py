"""Convolutional autoencoders (CAE) of the MVTec AD reference code the seed runs
("semi-supervised Anomaly Detection and Segmentation in images based on Deep Learning",
AdneneBoumessouer/MVTec-Anomaly-Detection, TensorFlow/Keras), ported to PyTorch.

Five architectures, one detector each (``mvtec_cae``, ``baseline_cae``, ``inception_cae``,
``resnet_cae``, ``skip_cae``). They share everything but the network — data, augmentation, training,
residual maps, persistence — so one detector class serves the five networks (``components/cae_networks.py``):
the detectors differ only in their ``network`` attribute.

Networks: ``components/cae_networks.py`` (Keras layer by layer; each one's architecture is described there).

Input sizes: each network states the sizes it takes (``size_problem``, described in ``cae_networks``);
other sizes raise ConfigError when the detector is created.

Training (reference: ``train.py`` / ``autoencoder.py`` / ``config.py``): inputs in [0, 1], grayscale
(``channels=1``, the seed's run) or RGB; loss ``ssim`` (1 − SSIM), ``mssim`` (1 − MS-SSIM) or ``l2``
(see ``components/ssim.py``); batch 8; augmentation of each training image: rotation ±5°, shifts ±5 %
of width and height, brightness × [0.95, 1.05], out-of-image pixels filled with the nearest edge pixel
(Keras ``fill_mode="nearest"``); 10 % of the fit images held out for the validation loss, which drives
early stopping (patience 12), halving of the learning rate on plateau (patience 6) and the choice of
the best epoch, whose weights are kept; at most 1024 epochs (ktrain's cap when training "until early
stopping"). Adam (Keras ε = 1e-7) with a fixed learning rate of 1e-3, Keras' Adam default.

Scoring: the residual map is 1 − SSIM (for ``ssim``/``mssim``; window 11, Gaussian σ 1.5) or the
squared error (``l2``), averaged over channels, at the input resolution; ``residual`` picks the map
independently of the loss, as the reference's finetune/test ``--method`` does. The image score is the
*maximum* of the residual map (``image_score="max"``; ``"mean"`` is the alternative), leaving out a
``score_margin`` of 5 px along the border: a continuous score for AUROC that rises with the strongest
local defect, where the reference classifies by "any connected region above a threshold with area ≥
min_area" (that rule is ``calibrate(method="area")``, shared by every localising detector). The border
band is where reconstructions are least reliable (zero-padded convolutions; the SSIM training loss
only sees windows that fit inside the image) and where the 1 − SSIM map mirrors the image; the
reference's area rule discards regions that touch the border for the same reason. Maps keep the band.

Deviations from the reference, and why:
- no learning-rate finder and no cyclical (triangular) schedule with cycling momentum: a fixed Adam
  rate plus reduce-on-plateau. The seed's hazelnut run ended with a max rate of 1.7e-4 after its
  reductions; pass ``lr`` to change it.
- Keras BatchNorm's ε = 1e-3 is kept, but its running averages use PyTorch's momentum (0.1) instead
  of Keras' 0.99, so that the statistics used at evaluation settle within a few batches on the small
  training sets this library is used with (a reference run does ~44 batches per epoch).
- validation images are a seeded random 10 % of the fit images (Keras takes the first 10 % of the
  files in name order); the detector's threshold hold-out (``holdout_fraction``) comes on top.
- 1 − SSIM maps: see ``components/ssim.py`` (per-channel maps averaged instead of a grey conversion).
- integer-pixel shifts (torchvision's RandomAffine) where Keras shifts by fractional pixels.

Cost: training images are decoded once and kept in memory as float32 (400 grayscale 256-px images
≈ 105 MB; sets over 2 GiB are decoded batch by batch, see ``components.trained``, which also owns the
seeded batching: a trailing batch of one image joins the previous one, for BatchNorm). These networks learn slowly from scratch — the seed's hazelnut run needed ~1,600 batches
(37 epochs) — so CPU training at 256 px takes hours; at 64 px, mvtec_cae needed ~300 batches of 8 to
fit 16 images (measured on 2 cores). Forward cost per grayscale 256-px image (torch's FLOP counter) and
parameters: mvtec 1.5 GMAC / 0.75 M, baseline 0.6 / 0.71 M, inception 9.6 / 11.5 M, resnet 6.8 / 15.0 M,
skip 0.16 / 3.0 M.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import torch
from torch import nn

from anomalens.errors import ConfigError
from anomalens.models.components.cae_networks import (BaselineCAENet, CAENetwork, InceptionCAENet, MvtecCAENet,
                                                      ResnetCAENet, SkipCAENet)
from anomalens.models.components.ssim import LOSSES, RESIDUALS, check_loss, reconstruction_loss, residual_map
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Bool, Choice, Float, Floats, Int, Size
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING, with_default


# --------------------------------------------------------------------------------------- detector
def _interior(maps: torch.Tensor, margin: int) -> torch.Tensor:
    """(B, H, W) maps without a ``margin``-pixel band along the border."""
    return maps[:, margin : maps.shape[1] - margin, margin : maps.shape[2] - margin] if margin else maps


class ConvAutoencoderGraph(nn.Module):
    """Images in [0, 1] → (image scores, residual maps): rebuild, residual map, score of its interior."""

    def __init__(self, net: nn.Module, residual: str, image_score: str, margin: int):
        super().__init__()
        self.net, self.residual, self.image_score, self.margin = net, residual, image_score, margin

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = residual_map(images, self.net(images), self.residual).float()
        interior = _interior(amap, self.margin).flatten(1)
        return (interior.amax(1) if self.image_score == "max" else interior.mean(1)), amap


class ConvAutoencoder(TrainedDetector):
    """Shared detector of the five CAEs; subclasses set ``name`` and ``network``."""

    network: ClassVar[type[CAENetwork]]
    localizes = True
    reconstructs = True
    score_is_map_max = False  # the score leaves out a border band of the map (``score_margin``)
    hyperparameters = {
        "image_size": Size(256, "input size in pixels: one side, or [height, width] (see the supported sizes)"),
        "batch_size": Int(8, "images per training (and scoring) batch", low=1),
        "channels": Choice(1, (1, 3), "1 = grayscale (the seed's run), 3 = RGB"),
        "loss": Choice("ssim", LOSSES, "training loss: 1 − SSIM, 1 − MS-SSIM or L2"),
        "residual": Choice(None, RESIDUALS, "residual map; null = from the loss (ssim/mssim → ssim, l2 → l2)",
                           optional=True),
        "epochs": Int(1024, "upper bound on the epochs; early stopping ends training", low=1),
        "lr": Float(1e-3, "Adam learning rate (Keras' default)", low=0.0, low_open=True),
        **with_default(EARLY_STOPPING, patience=12),
        "lr_patience": Int(6, "reduce-on-plateau patience, in epochs", low=0),
        "lr_factor": Float(0.5, "reduce-on-plateau factor (ktrain's reduce_factor 2)", low=0.0, high=1.0, low_open=True),
        "validation_fraction": Float(0.1, "share of the fit images held out for the validation loss", low=0.0, high=0.9),
        "augment": Bool(True, "random rotation, shift and brightness of training images"),
        "rotation": Float(5.0, "augmentation: rotation range in degrees, ±", low=0.0),
        "shift": Float(0.05, "augmentation: shift range as a fraction of width / height, ±", low=0.0, high=0.5),
        "brightness": Floats((0.95, 1.05), "augmentation: multiplicative brightness range [low, high]", low=0.0, length=2),
        "image_score": Choice("max", ("max", "mean"), "image score from the residual map's interior"),
        "score_margin": Int(5, "border pixels left out of the image score (the SSIM window's half-width)", low=0),
    }

    def _check_params(self) -> None:
        height, width = self.input_size
        check_loss(self.loss, height, width)
        problem = self.network.size_problem(height, width)
        if problem:
            raise ConfigError(f"{self.name}: image size {height}x{width} is not supported: {problem}")
        if 2 * self.score_margin >= min(height, width):
            raise ConfigError(
                f"{self.name}: score_margin must be in 0..{(min(height, width) - 1) // 2}, got {self.score_margin}"
            )

    @property
    def residual_method(self) -> str:
        return self.residual or ("l2" if self.loss == "l2" else "ssim")

    def _build_networks(self) -> None:
        self.net_ = self.network(self.channels, *self.input_size).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"net": self.net_}

    # -- training -------------------------------------------------------------------------------
    @functools.cached_property
    def augmentation(self):
        """Per-image random transform (torchvision v2) of a (C, H, W) tensor, or None."""
        from torchvision.transforms import InterpolationMode, v2

        if not self.augment:
            return None
        h, w = self.input_size
        angle, shift = math.radians(self.rotation), self.shift
        steps = []
        if angle or shift:
            # Edge-replicating pad wide enough that every output pixel samples inside it, affine, crop back:
            # Keras' fill_mode="nearest". Padding needed: R⁻¹(p − t) for p at a corner, t the largest shift.
            cos, sin = math.cos(angle), math.sin(angle)
            pad_w = math.ceil(w / 2 * (cos - 1) + shift * w * cos + (h / 2 + shift * h) * sin) + 2
            pad_h = math.ceil(h / 2 * (cos - 1) + shift * h * cos + (w / 2 + shift * w) * sin) + 2
            steps += [
                v2.Pad([pad_w, pad_h], padding_mode="edge"),
                v2.RandomAffine(
                    degrees=self.rotation,
                    translate=(shift * w / (w + 2 * pad_w), shift * h / (h + 2 * pad_h)),
                    interpolation=InterpolationMode.BILINEAR,
                ),
                v2.CenterCrop([h, w]),
            ]
        low, high = self.brightness
        if (low, high) != (1.0, 1.0):
            steps.append(v2.ColorJitter(brightness=(low, high)))
        return v2.Compose(steps) if steps else None

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        augment = self.augmentation
        return images if augment is None else torch.stack([augment(image) for image in images])

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        regularized = {id(p): factor for p, factor in self.net_.regularized}
        groups = [{"params": [p for p in self.net_.parameters() if id(p) not in regularized], "weight_decay": 0.0}]
        for factor in sorted(set(regularized.values())):
            # Keras' L2 regulariser adds factor·Σw² to the loss: gradient 2·factor·w = Adam's weight_decay.
            params = [p for p, f in self.net_.regularized if f == factor]
            groups.append({"params": params, "weight_decay": 2 * factor})
        return {"adam": torch.optim.Adam(groups, lr=self.lr, eps=1e-7)}

    def _schedulers(self, optimizers: dict) -> dict:
        return {"plateau": torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizers["adam"], mode="min", factor=self.lr_factor, patience=self.lr_patience
        )}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        loss = reconstruction_loss(x, self.net_(x), self.loss)
        optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["adam"].step()
        return {"loss": loss.item()}

    def _validation_loss(self, x: torch.Tensor) -> float:
        return reconstruction_loss(x, self.net_(x), self.loss).item() * len(x)

    # -- score ----------------------------------------------------------------------------------
    def _reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.net_(x)

    def inference_module(self) -> ConvAutoencoderGraph:
        return ConvAutoencoderGraph(self.net_, self.residual_method, self.image_score, self.score_margin)


@register_detector
class MvtecCAE(ConvAutoencoder):
    """mvtecCAE: the MVTec AD paper's autoencoder (746,210 parameters, grayscale 256 px)."""

    name = "mvtec_cae"
    network = MvtecCAENet


@register_detector
class BaselineCAE(ConvAutoencoder):
    """baselineCAE: conv–BN–LeakyReLU–maxpool blocks around a Dense-64 bottleneck."""

    name = "baseline_cae"
    network = BaselineCAENet


@register_detector
class InceptionCAE(ConvAutoencoder):
    """inceptionCAE: inception blocks (filters 32, 64, 128) with pooling / upsampling."""

    name = "inception_cae"
    network = InceptionCAENet


@register_detector
class ResnetCAE(ConvAutoencoder):
    """resnetCAE: the reference's ResNet-18-style encoder, transposed-conv decoder with additive skips."""

    name = "resnet_cae"
    network = ResnetCAENet


@register_detector
class SkipCAE(ConvAutoencoder):
    """skipCAE: strided convs, Dense-64 latent, transposed-conv decoder with two encoder skips."""

    name = "skip_cae"
    network = SkipCAENet
