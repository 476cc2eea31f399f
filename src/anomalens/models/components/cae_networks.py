"""The five convolutional-autoencoder networks of the MVTec AD reference code the seed runs, in PyTorch
(the detector that trains and scores them is ``anomalens.models.cae``).

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

BatchNorm: Keras' ε = 1e-3, PyTorch's momentum (0.1) — why is in ``anomalens.models.cae``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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


class CAENetwork(nn.Module):
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
class MvtecCAENet(CAENetwork):
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


class BaselineCAENet(CAENetwork):
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


class InceptionCAENet(CAENetwork):
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


class ResnetCAENet(CAENetwork):
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


class SkipCAENet(CAENetwork):
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
