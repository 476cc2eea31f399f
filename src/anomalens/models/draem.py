"""DRAEM — Zavrtanik, Kristan & Skočaj, "DRAEM – A discriminatively trained reconstruction embedding for
surface anomaly detection", ICCV 2021.

1. Simulated anomalies (Sec. 3.3): a Perlin-noise mask M filled with an augmented anomaly-source texture A
   and blended into a normal image I (eq. 2): I_a = M̄ ⊙ I + (1 − β)(M ⊙ A) + β(M ⊙ I), β ~ U[0.1, 1.0];
   ``components.perlin_anomalies`` draws them.
2. Reconstructive sub-network (Sec. 3.1): an encoder–decoder without skip connections (five conv–BN–ReLU
   blocks, four 2× poolings; the mirror decoder with bilinear upsampling), trained to give back I from I_a:
       L_rec(I, I_r) = λ L_SSIM(I, I_r) + l2(I, I_r),   L_SSIM = 1 − SSIM (11-px window),  λ = 1 (eq. 1, 3),
   l2 the mean squared error, as in the authors' code.
3. Discriminative sub-network (Sec. 3.2): a U-Net (six blocks, five poolings, skip connections) on the
   channel concatenation of I_a and its reconstruction I_r, two output channels; its softmax is trained
   against M with the focal loss (γ = 2, Lin et al. 2017): L_seg = mean over pixels of −(1 − p_t)^γ log p_t.
   The total loss is L = L_rec + L_seg (eq. 4).
4. Score (Sec. 3.4): the anomaly map is the discriminator's anomaly channel M_o (softmax); the image score is
   the maximum of M_o smoothed by a ``score_pool`` × ``score_pool`` mean filter (the paper: 21 × 21).

Paper defaults: 700 epochs, batch 8, Adam lr 1e-4 multiplied by 0.2 after 80 % and 90 % of the epochs, 256 px,
Perlin scales 2^[0, 6), threshold 0.5, half of the training images left unchanged (authors' code), widths 128
(reconstructive) and 64 (discriminative). Sub-networks, softmax and the pooled score are
one module, ``DRAEMGraph`` (``inference_module()``): what ``predict`` runs and what is exported.

Deviations, and why:
- Budget: ``epochs`` defaults to 10, not 700, and the widths to 16 / 8, not 128 / 64. A forward pass at
  256 px costs 396 GFLOP per image at the paper's widths (97 M parameters, as the paper counts), 6.4 GFLOP at
  16 / 8 (1.5 M); training costs about three forward passes, so an epoch of 120 images is ~140 TFLOP at the
  paper's widths (about an hour on two CPU cores) and ~2.3 TFLOP at the default ones (about a minute).
  ``reconstruction_width=128, discriminative_width=64, epochs=700`` is the paper's recipe (a GPU's).
- Anomaly source: the paper's DTD textures are not on an offline machine. The default pool is twelve photos
  bundled with scikit-image (``perlin_anomalies.BUILTIN_SOURCES``; none is a benchmark category), each crop a
  random 25-100 % of the photo so that twelve images give varied textures; ``anomaly_source`` = a folder
  (DTD's images, for the paper's recipe) replaces them.
- β ~ U[0.1, 1.0] as the paper writes (the authors' code draws U[0, 0.8]); the authors' code also rotates
  30 % of the normal training images by ±90°, which the paper does not mention and which is wrong for
  oriented objects: not done.
- Sizes that are not a multiple of 32 (the discriminator pools five times) are padded at the bottom and right
  by edge replication before the networks and cropped back after, so every ``image_size`` works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from anomalens.errors import ConfigError
from anomalens.models.components.perlin_anomalies import AnomalySynthesizer, load_anomaly_sources
from anomalens.models.components.ssim import reconstruction_loss
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Float, Floats, Int, Ints, Text
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

#: The discriminator halves the size five times: the networks see sizes that are multiples of this.
SIZE_MULTIPLE = 32


def _conv_block(cin: int, cout: int, convs: int = 2) -> nn.Sequential:
    """``convs`` × (3×3 conv, BatchNorm, ReLU); the first changes the channels."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _narrowing_block(cin: int, cout: int) -> nn.Sequential:
    """Two (3×3 conv, BatchNorm, ReLU); the second changes the channels (the reconstructive decoder's blocks)."""
    return nn.Sequential(*_conv_block(cin, cin, 1), *_conv_block(cin, cout, 1))


def _up(cin: int, cout: int) -> nn.Sequential:
    """2× bilinear upsampling, then one conv block (the decoders' "up" step)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv_block(cin, cout, 1))


class ReconstructiveSubNetwork(nn.Module):
    """Sec. 3.1: encoder (widths w, 2w, 4w, 8w, 8w; four max-poolings) and decoder, no skip connections."""

    def __init__(self, width: int, channels: int = 3) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _conv_block(channels, w), nn.MaxPool2d(2), _conv_block(w, 2 * w), nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w), nn.MaxPool2d(2), _conv_block(4 * w, 8 * w), nn.MaxPool2d(2),
            _conv_block(8 * w, 8 * w),
        )
        self.decoder = nn.Sequential(
            _up(8 * w, 8 * w), _narrowing_block(8 * w, 4 * w),
            _up(4 * w, 4 * w), _narrowing_block(4 * w, 2 * w),
            _up(2 * w, 2 * w), _narrowing_block(2 * w, w),
            _up(w, w), _narrowing_block(w, w),
            nn.Conv2d(w, channels, 3, padding=1),  # linear output, as in the authors' code
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


class DiscriminativeSubNetwork(nn.Module):
    """Sec. 3.2: U-Net, encoder widths w, 2w, 4w, 8w, 8w, 8w (five max-poolings), decoder with skip
    connections to every encoder level, two output channels (normal, anomalous) as logits."""

    def __init__(self, width: int, in_channels: int = 6) -> None:
        super().__init__()
        w = width
        widths = (w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w)
        self.down = nn.ModuleList(_conv_block(cin, cout) for cin, cout in zip((in_channels, *widths[:-1]), widths))
        # From the deepest level up: upsample to ``outs[l]`` channels, concatenate the encoder's output of the
        # same size (``skips[l]`` channels), conv block to ``outs[l]`` (the authors' widths).
        outs, skips = (8 * w, 4 * w, 2 * w, w, w), widths[-2::-1]
        self.up = nn.ModuleList(_up(cin, cout) for cin, cout in zip((8 * w, *outs[:-1]), outs))
        self.merge = nn.ModuleList(_conv_block(cout + skip, cout) for cout, skip in zip(outs, skips))
        self.out = nn.Conv2d(w, 2, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips, x = [], images
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], 1))
        return self.out(x)


def _pad_to_multiple(images: torch.Tensor) -> torch.Tensor:
    """Edge-replicate the bottom and right so both sides are multiples of ``SIZE_MULTIPLE`` (no-op if they are)."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
    return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images


def reconstruct_and_segment(reconstructive: nn.Module, discriminative: nn.Module,
                            images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstructions I_r, discriminator logits (B, 2, H, W)) of (B, C, H, W) images, any size."""
    height, width = images.shape[-2:]
    padded = _pad_to_multiple(images)
    rebuilt = reconstructive(padded)
    logits = discriminative(torch.cat([padded, rebuilt], 1))
    return rebuilt[..., :height, :width], logits[..., :height, :width]


def focal_loss(logits: torch.Tensor, masks: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over pixels of −(1 − p_t)^γ log p_t for the two-channel softmax against (B, 1, H, W) masks.

    A two-way softmax is the sigmoid of the logit difference, so torchvision's binary focal loss (without
    its α weighting, as the paper) computes it exactly."""
    return sigmoid_focal_loss(logits[:, 1] - logits[:, 0], masks[:, 0], alpha=-1, gamma=gamma, reduction="mean")


def draem_loss(images: torch.Tensor, rebuilt: torch.Tensor, logits: torch.Tensor, masks: torch.Tensor,
               ssim_weight: float, gamma: float) -> dict[str, torch.Tensor]:
    """Eq. 1, 3, 4: the reconstruction terms and the focal loss, and their sum ``loss``."""
    l2 = (rebuilt - images).pow(2).mean()
    ssim = reconstruction_loss(images, rebuilt, "ssim")  # 1 − SSIM
    focal = focal_loss(logits, masks, gamma)
    return {"loss": l2 + ssim_weight * ssim + focal, "l2": l2, "ssim": ssim, "focal": focal}


class DRAEMGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): M_o = softmax(D(I ⊕ R(I)))[anomalous]; score = max of
    M_o after a ``pool`` × ``pool`` mean filter (Sec. 3.4)."""

    def __init__(self, reconstructive: nn.Module, discriminative: nn.Module, pool: int):
        super().__init__()
        self.reconstructive, self.discriminative, self.pool = reconstructive, discriminative, pool

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, logits = reconstruct_and_segment(self.reconstructive, self.discriminative, images)
        amap = torch.softmax(logits, 1)[:, 1]
        return mean_filtered(amap[:, None], self.pool).flatten(1).amax(1), amap


def mean_filtered(maps: torch.Tensor, pool: int) -> torch.Tensor:
    """The authors' ``avg_pool2d(pool, stride 1, padding pool // 2)`` — zero padding counted in the mean at the
    borders — as a row pass then a column pass: the same box mean (to 1e-6 on maps in [0, 1], a different order
    of float32 sums), 7-8× faster on this CPU (32 maps of 256 px: 0.04 against 0.32 s, quiet)."""
    half = pool // 2
    rows = F.avg_pool2d(maps, (1, pool), stride=1, padding=(0, half))
    return F.avg_pool2d(rows, (pool, 1), stride=1, padding=(half, 0))


@register_detector
class DRAEM(TrainedDetector):
    """Reconstruction plus a discriminator trained on simulated Perlin-noise anomalies; needs no pretrained weights."""

    name = "draem"
    score_is_map_max = False  # the score is the maximum of the mean-filtered map
    holdout_validates = True  # with validation_fraction > 0 the threshold hold-out is the validation set
    min_training_images = 2  # BatchNorm
    hyperparameters = {
        "epochs": Int(10, "training epochs; the paper trains 700 (a CPU default: see the docstring)", low=1),
        "batch_size": Int(8, "images per training (and scoring) batch (the paper's 8)", low=1),
        "lr": Float(1e-4, "Adam learning rate (the paper's)", low=0.0, low_open=True),
        "lr_milestones": Floats((0.8, 0.9), "fractions of the epochs after which the learning rate is multiplied "
                                "by lr_factor (the paper's 80 % and 90 %)", low=0.0),
        "lr_factor": Float(0.2, "learning-rate factor at each milestone (the paper's 0.2)", low=0.0, high=1.0, low_open=True),
        "reconstruction_width": Int(16, "base channel width of the reconstructive sub-network (the paper's 128)", low=1),
        "discriminative_width": Int(8, "base channel width of the discriminative sub-network (the paper's 64)", low=1),
        "anomaly_source": Text(None, "folder of images whose textures fill the simulated anomalies (the paper: DTD); "
                               "null = photos bundled with scikit-image", optional=True),
        "perlin_scales": Ints((0, 6), "Perlin lattice of 2^a x 2^b cells, a and b drawn from [first, second) "
                              "(the paper's 2^[0, 6))", low=0, length=2),
        "perlin_threshold": Float(0.5, "Perlin noise above this is the anomaly mask (the paper's 0.5)", low=-1.0, high=1.0),
        "blend": Floats((0.1, 1.0), "range of β, the share of the normal image kept inside the mask (eq. 2)",
                        low=0.0, high=1.0, length=2),
        "anomaly_probability": Float(0.5, "share of training images given a simulated anomaly; the others stay "
                                     "normal (the authors' code: 0.5)", low=0.0, high=1.0, low_open=True),
        "ssim_weight": Float(1.0, "λ, the weight of 1 − SSIM in the reconstruction loss (eq. 1)", low=0.0),
        "focal_gamma": Float(2.0, "γ of the focal loss (eq. 4)", low=0.0),
        "score_pool": Int(21, "side of the mean filter applied to the map before its maximum (the paper's 21)", low=1),
        "validation_fraction": Float(
            0.0, "> 0: the loss on held-out normals given fixed simulated anomalies selects the best epoch (on "
            "the threshold hold-out when there is one); 0: keep the last epoch, as the paper", low=0.0, high=0.9),
        **EARLY_STOPPING,
    }

    def _check_params(self) -> None:
        low, high = self.perlin_scales
        if low >= high:
            raise ConfigError(f"{self.name}: perlin_scales must be [low, high) with low < high, got [{low}, {high}]")
        if self.blend[0] > self.blend[1]:
            raise ConfigError(f"{self.name}: blend must be [low, high] with low <= high, got {list(self.blend)}")
        if self.score_pool % 2 == 0:
            raise ConfigError(f"{self.name}: score_pool must be odd (a centred window), got {self.score_pool}")

    # -- networks -------------------------------------------------------------------------------
    def _build_networks(self) -> None:
        self.reconstructive_ = ReconstructiveSubNetwork(self.reconstruction_width).to(self.device)
        self.discriminative_ = DiscriminativeSubNetwork(self.discriminative_width).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"reconstructive": self.reconstructive_, "discriminative": self.discriminative_}

    # -- training (Sec. 3, eq. 1-4) ---------------------------------------------------------------
    def _synthesizer(self) -> AnomalySynthesizer:
        sources = load_anomaly_sources(self.anomaly_source, 2 * max(self.model_input_size))
        return AnomalySynthesizer(sources, tuple(self.perlin_scales), self.perlin_threshold, tuple(self.blend),
                                  self.anomaly_probability)

    def _train(self, fit_records, val_records, progress: bool) -> None:
        self.synthesizer_ = self._synthesizer()  # the source images are loaded once per fit
        try:
            super()._train(fit_records, val_records, progress)
        finally:
            del self.synthesizer_

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [*self.reconstructive_.parameters(), *self.discriminative_.parameters()]
        return {"adam": torch.optim.Adam(params, lr=self.lr)}

    def _schedulers(self, optimizers: dict) -> dict:
        milestones = sorted({max(1, round(f * self.epochs)) for f in self.lr_milestones})
        return {"steps": torch.optim.lr_scheduler.MultiStepLR(optimizers["adam"], milestones, gamma=self.lr_factor)}

    def _losses(self, images: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        augmented, masks = self.synthesizer_(images.cpu(), generator)
        rebuilt, logits = reconstruct_and_segment(self.reconstructive_, self.discriminative_, augmented.to(self.device))
        return draem_loss(images, rebuilt, logits, masks.to(self.device), self.ssim_weight, self.focal_gamma)

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        losses = self._losses(x, None)  # torch's global generator: a resumed run replays the same anomalies
        optimizers["adam"].zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizers["adam"].step()
        return {name: value.item() for name, value in losses.items()}

    def _mean_validation_loss(self, images) -> float:
        # A freshly seeded generator per pass: every epoch is validated on the same simulated anomalies.
        self._validation_generator = torch.Generator().manual_seed(self.seed)
        return super()._mean_validation_loss(images)

    def _validation_loss(self, x: torch.Tensor) -> float:
        return self._losses(x, self._validation_generator)["loss"].item() * len(x)

    # -- score (Sec. 3.4) -------------------------------------------------------------------------
    def inference_module(self) -> DRAEMGraph:
        return DRAEMGraph(self.reconstructive_, self.discriminative_, self.score_pool)
