"""Convolutional autoencoders (CAE) of the MVTec AD reference code the seed runs
("semi-supervised Anomaly Detection and Segmentation in images based on Deep Learning",
AdneneBoumessouer/MVTec-Anomaly-Detection, TensorFlow/Keras), ported to PyTorch.

Five architectures, one detector each (``mvtec_cae``, ``baseline_cae``, ``inception_cae``,
``resnet_cae``, ``skip_cae``). They share everything but the network — data, augmentation, training,
residual maps, persistence — so the five networks and one detector class live in this one file: the
detectors differ only in their ``network`` attribute.

Networks (Keras layer by layer; Keras 'same' padding reproduced exactly, including its extra
bottom/right row for even kernels and stride-2 convolutions):

- ``mvtec_cae`` (Bergmann et al., the MVTec AD paper's AE): 4×4 stride-2 and 3×3 convolutions, ReLU,
  an 8×8×1 linear bottleneck for 256 px, a decoder of nearest-neighbour upsamplings and convolutions,
  sigmoid output. 746,210 parameters for grayscale 256 px, as the seed's Keras summary prints.
- ``baseline_cae``: six conv3×3–BN–LeakyReLU(0.1)–maxpool blocks (32, 32, 64, 64, 128, 128), a Dense-64
  bottleneck reshaped to a 4×4×4 grid, the mirror decoder with upsampling, conv–BN–sigmoid output;
  L2 kernel regularisation 1e-6.
- ``inception_cae``: inception blocks (1×1, 3×3, 5×5 and pool→1×1 branches, each conv–BN–LeakyReLU(0.1),
  concatenated), filters 32, 32, 64, 64, 128, 128 with max-pooling, mirrored with upsampling; L2 1e-6.
- ``resnet_cae``: the reference's ResNet-18 builder as it is in that code: pre-activation basic blocks
  whose shortcut is *concatenated* with the residual branch (so each block doubles its channels), and
  a last stage reduced to its strided 1×1 shortcut projection (the builder's ``is_last_layer`` returns
  the shortcut alone; its other layers are not connected to the output, so Keras drops them). He-normal
  initialisation and L2 1e-4 in the encoder; then two 1×1 conv-512 (ReLU); decoder of 4×4 stride-2 and
  3×3 transposed convolutions with BN, ReLU and additive skips, sigmoid output.
- ``skip_cae``: eight 3×3 stride-2 convolutions (32, 32, 64, 64, 128, 128, 256, 256, LeakyReLU 0.3 — the
  Keras default), Dense-64 latent (ReLU), transposed-convolution decoder with two additive skips from the
  encoder (the outputs of the 3rd and 5th convolutions, before their activation), sigmoid output.
  The reference warns that ``resnet_cae`` and ``skip_cae`` can learn the identity and miss defects.

Input sizes (height and width separately): multiples of 32 for mvtec/resnet, of 64 for
baseline/inception (baseline also needs (H/64)·(W/64) to divide 64, the Dense-64 bottleneck being
reshaped onto that grid: 4×4×4 at 256 px, 1×1×64 at 64 px). ``skip_cae`` halves each side at each of
its eight convolutions while it is even and keeps it otherwise (mirrored in the decoder), which is the
reference network at 256 px and lets 64 px images end at 1×1; the bottleneck grid must stay ≤ 256
positions. Other sizes raise ConfigError when the detector is created.

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
import torch.nn.functional as F
from torch import nn

from anomalens.errors import ConfigError
from anomalens.models.components.ssim import LOSSES, RESIDUALS, check_loss, reconstruction_loss, residual_map
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Bool, Choice, Float, Floats, Int, Size
from anomalens.registry import register_detector

KERAS_BN_EPS = 1e-3
BN_MOMENTUM = 0.1  # PyTorch's default; see the module docstring


# --------------------------------------------------------------------------- Keras-equivalent layers
def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' rule: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with Keras 'same' padding (uneven padding puts the extra row/column bottom/right)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int] = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """ConvTranspose2d with Keras 'same' padding: output = input × stride, cropped as TensorFlow does."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int] = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, left = (kh - sh) // 2, (kw - sw) // 2
        return y[..., top : top + x.shape[-2] * sh, left : left + x.shape[-1] * sw]


class MaxPool2dSame(nn.Module):
    """Keras MaxPooling2D(padding='same'): pads with −∞ by TensorFlow's rule, then pools."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = _same_padding(x.shape[-1], self.kernel, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(x, self.kernel, self.stride)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=BN_MOMENTUM)


def _up(factor: int = 2) -> nn.Upsample:
    return nn.Upsample(scale_factor=factor, mode="nearest")


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases (BatchNorm keeps γ = 1, β = 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _he_normal(conv: nn.Conv2d) -> nn.Conv2d:
    """Keras 'he_normal': truncated normal (±2σ), σ = √(2 / fan_in) / 0.8796 (the truncation correction)."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(conv.weight, 0.0, std, -2 * std, 2 * std)
    nn.init.zeros_(conv.bias)
    return conv


class _Network(nn.Module):
    """Base of the five networks: ``regularized`` lists (kernel, L2 factor) pairs of Keras regularisers."""

    @staticmethod
    def size_problem(height: int, width: int) -> str | None:
        """Why this input size cannot be used, or None."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.regularized: list[tuple[nn.Parameter, float]] = []

    def regularize(self, factor: float, *layers: nn.Module) -> None:
        for layer in layers:
            self.regularized.append((layer.weight, factor))


def _multiple_of(height: int, width: int, n: int) -> str | None:
    if height % n or width % n:
        return f"height and width must be multiples of {n}"
    return None


# --------------------------------------------------------------------------------------- mvtecCAE
class MvtecCAENet(_Network):
    @staticmethod
    def size_problem(height: int, width: int) -> str | None:
        return _multiple_of(height, width, 32)

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()

        def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
            return [Conv2dSame(cin, cout, kernel, stride), nn.ReLU()]

        self.encoder = nn.Sequential(
            *conv(channels, 32, 4, 2), *conv(32, 32, 4, 2), *conv(32, 32, 4, 2), *conv(32, 32, 3),
            *conv(32, 64, 4, 2), *conv(64, 64, 3), *conv(64, 128, 4, 2), *conv(128, 64, 3), *conv(64, 32, 3),
            Conv2dSame(32, 1, 8),  # the 8×8×1 bottleneck (at 256 px), linear
        )
        self.decoder = nn.Sequential(
            *conv(1, 32, 3), *conv(32, 64, 3), _up(),
            *conv(64, 128, 4, 2), _up(),
            *conv(128, 64, 3), _up(),
            *conv(64, 64, 4, 2), _up(),
            *conv(64, 32, 3), _up(),
            *conv(32, 32, 4, 2), _up(4),
            *conv(32, 32, 4, 2), _up(),
            *conv(32, 32, 8), _up(),
            Conv2dSame(32, channels, 8), nn.Sigmoid(),
        )
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ------------------------------------------------------------------------------------ baselineCAE
BASELINE_LATENT = 64


def _conv_bn_lrelu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(Conv2dSame(cin, cout, kernel), _bn(cout), nn.LeakyReLU(0.1))


class BaselineCAENet(_Network):
    @staticmethod
    def size_problem(height: int, width: int) -> str | None:
        problem = _multiple_of(height, width, 64)
        if problem is None and BASELINE_LATENT % ((height // 64) * (width // 64)):
            problem = (
                f"the Dense-{BASELINE_LATENT} bottleneck is reshaped onto a (H/64)x(W/64) grid, "
                f"so (H/64)·(W/64) must divide {BASELINE_LATENT} (e.g. 64, 128 or 256 px)"
            )
        return problem

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.grid = (height // 64, width // 64)
        self.grid_channels = BASELINE_LATENT // (self.grid[0] * self.grid[1])
        widths = [32, 32, 64, 64, 128, 128]
        blocks, cin = [], channels
        for cout in widths:
            blocks += [_conv_bn_lrelu(cin, cout), MaxPool2dSame(2, 2)]
            cin = cout
        self.encoder = nn.Sequential(*blocks)
        self.to_latent = nn.Linear(128 * self.grid[0] * self.grid[1], BASELINE_LATENT)
        blocks, cin = [], self.grid_channels
        for cout in reversed(widths):
            blocks += [_conv_bn_lrelu(cin, cout), _up()]
            cin = cout
        self.decoder = nn.Sequential(*blocks, Conv2dSame(32, channels, 3), _bn(channels), nn.Sigmoid())
        _keras_init(self)
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        self.regularize(1e-6, *convs, self.to_latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.leaky_relu(self.to_latent(self.encoder(x).flatten(1)), 0.1)
        return self.decoder(z.view(-1, self.grid_channels, *self.grid))


# ----------------------------------------------------------------------------------- inceptionCAE
class _Inception(nn.Module):
    """1×1, 3×3, 5×5 and 3×3-maxpool→1×1 branches (conv–BN–LeakyReLU 0.1), concatenated: 4·filters out."""

    def __init__(self, cin: int, filters: int) -> None:
        super().__init__()
        self.b1 = _conv_bn_lrelu(cin, filters, 1)
        self.b3 = _conv_bn_lrelu(cin, filters, 3)
        self.b5 = _conv_bn_lrelu(cin, filters, 5)
        self.pool = MaxPool2dSame(3, 1)
        self.bp = _conv_bn_lrelu(cin, filters, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(self.pool(x))], dim=1)


class InceptionCAENet(_Network):
    FILTERS = (32, 64, 128)

    @staticmethod
    def size_problem(height: int, width: int) -> str | None:
        return _multiple_of(height, width, 64)

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        f0, f1, f2 = self.FILTERS
        layers, cin = [], channels
        for f in (f0, f0, f1, f1, f2, f2):
            layers += [_Inception(cin, f), MaxPool2dSame(2, 2)]
            cin = 4 * f
        self.encoder = nn.Sequential(*layers)
        layers = []
        for f in (f2, f2, f1, f1, f0, f0):
            layers += [_Inception(cin, f), _up()]
            cin = 4 * f
        self.decoder = nn.Sequential(*layers, Conv2dSame(cin, channels, 3), _bn(channels), nn.Sigmoid())
        _keras_init(self)
        self.regularize(1e-6, *[m for m in self.modules() if isinstance(m, nn.Conv2d)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# -------------------------------------------------------------------------------------- resnetCAE
class _ConcatBasicBlock(nn.Module):
    """The reference builder's basic block: [BN-ReLU]-conv3×3 → BN-ReLU-conv3×3, shortcut concatenated.

    The shortcut is the input, or a strided 1×1 projection when the stride or the channel count differ.
    The first block of the network skips the leading BN-ReLU (its input was just BN-ReLU-pooled).
    """

    def __init__(self, cin: int, filters: int, stride: int, first: bool) -> None:
        super().__init__()
        self.pre = nn.Identity() if first else nn.Sequential(_bn(cin), nn.ReLU())
        self.conv1 = Conv2dSame(cin, filters, 3, stride)
        self.post = nn.Sequential(_bn(filters), nn.ReLU())
        self.conv2 = Conv2dSame(filters, filters, 3)
        self.shortcut = nn.Conv2d(cin, filters, 1, stride) if stride > 1 or cin != filters else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(self.post(self.conv1(self.pre(x))))
        return torch.cat([self.shortcut(x), residual], dim=1)


class _UpBlock(nn.Module):
    """Decoder step: t = ConvT4×4/2(x); out = t + ReLU(BN(ConvT3×3(ReLU(BN(t)))))."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = ConvTranspose2dSame(cin, cout, 4, 2)
        self.body = nn.Sequential(_bn(cout), nn.ReLU(), ConvTranspose2dSame(cout, cout, 3, 1), _bn(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.up(x)
        return t + self.body(t)


class ResnetCAENet(_Network):
    @staticmethod
    def size_problem(height: int, width: int) -> str | None:
        return _multiple_of(height, width, 32)

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        stem = Conv2dSame(channels, 64, 7, 2)
        blocks, cin = [], 64
        for stage, filters in enumerate((64, 128, 256)):
            for i in range(2):
                blocks.append(_ConcatBasicBlock(cin, filters, 2 if (i == 0 and stage > 0) else 1, stage == 0 and i == 0))
                cin = 2 * filters
        # Stage 4 (512 filters) keeps only its first block's strided 1×1 shortcut (see the module docstring).
        last = nn.Conv2d(cin, 512, 1, 2)
        self.encoder = nn.Sequential(stem, _bn(64), nn.ReLU(), MaxPool2dSame(3, 2), *blocks, last)
        self.bottleneck = nn.Sequential(nn.Conv2d(512, 512, 1), nn.ReLU(), nn.Conv2d(512, 512, 1), nn.ReLU())
        self.decoder = nn.Sequential(
            _UpBlock(512, 512), _UpBlock(512, 256), _UpBlock(256, 128), _UpBlock(128, 64),
            ConvTranspose2dSame(64, channels, 4, 2), nn.Sigmoid(),
        )
        _keras_init(self)
        resnet_convs = [m for m in self.encoder.modules() if isinstance(m, nn.Conv2d)]
        for conv in resnet_convs:
            _he_normal(conv)
        self.regularize(1e-4, *resnet_convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck(self.encoder(x)))


# ---------------------------------------------------------------------------------------- skipCAE
SKIP_WIDTHS = (32, 32, 64, 64, 128, 128, 256, 256)
SKIP_MAX_GRID = 256


def _halving_strides(size: int, steps: int) -> tuple[list[int], int]:
    """Stride 2 while the size is even, else 1, for ``steps`` convolutions; also the final size."""
    strides = []
    for _ in range(steps):
        stride = 2 if size % 2 == 0 else 1
        strides.append(stride)
        size //= stride
    return strides, size


class SkipCAENet(_Network):
    @staticmethod
    def size_problem(height: int, width: int) -> str | None:
        gh = _halving_strides(height, len(SKIP_WIDTHS))[1]
        gw = _halving_strides(width, len(SKIP_WIDTHS))[1]
        if gh * gw > SKIP_MAX_GRID:
            return (
                f"the bottleneck grid would be {gh}x{gw} (each side is halved 8 times while even); "
                f"use sizes with more factors of 2, e.g. a power of two or a multiple of 256"
            )
        return None

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        sh, gh = _halving_strides(height, len(SKIP_WIDTHS))
        sw, gw = _halving_strides(width, len(SKIP_WIDTHS))
        strides = list(zip(sh, sw))
        self.grid = (gh, gw)
        cin, convs = channels, []
        for cout, stride in zip(SKIP_WIDTHS, strides):
            convs.append(Conv2dSame(cin, cout, 3, stride))
            cin = cout
        self.convs = nn.ModuleList(convs)
        flat = 256 * gh * gw
        self.to_latent = nn.Linear(flat, 64)
        self.from_latent = nn.Linear(64, flat)
        # Decoder transposed convs mirror encoder convs 8..1 (their strides); the first one has stride 1.
        self.dec_in = ConvTranspose2dSame(256, 256, 3, 1)
        widths_out = (256, 128, 128, 64, 64, 32, 32, channels)
        deconvs, cin = [], 256
        for cout, stride in zip(widths_out, reversed(strides)):
            deconvs.append(ConvTranspose2dSame(cin, cout, 3, stride))
            cin = cout
        self.deconvs = nn.ModuleList(deconvs)
        self.bn_skip2, self.bn_skip1 = _bn(128), _bn(64)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lrelu = nn.functional.leaky_relu
        skips = {}
        y = x
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i in (2, 4):  # outputs of the 3rd and 5th convolutions, before their activation
                skips[i] = y
            y = lrelu(y, 0.3)
        z = F.relu(self.to_latent(y.flatten(1)))
        y = F.relu(self.from_latent(z)).view(-1, 256, *self.grid)
        y = lrelu(self.dec_in(y), 0.3)
        d = self.deconvs
        y = lrelu(d[0](y), 0.3)
        y = lrelu(d[1](y), 0.3)
        y = self.bn_skip2(lrelu(d[2](y) + skips[4], 0.3))
        y = lrelu(d[3](y), 0.3)
        y = self.bn_skip1(lrelu(d[4](y) + skips[2], 0.3))
        y = lrelu(d[5](y), 0.3)
        y = lrelu(d[6](y), 0.3)
        return torch.sigmoid(d[7](y))


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

    network: ClassVar[type[_Network]]
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
        "patience": Int(12, "epochs without validation improvement before stopping; null = never", low=1, optional=True),
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
