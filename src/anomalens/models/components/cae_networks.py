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

Layers, initialisers and BatchNorm (Keras' ε = 1e-3, PyTorch's momentum (0.1) — why is in
``anomalens.models.cae``) as Keras computes them: ``keras_layers`` (its 'same'-padded layers are importable
from here too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.models.components.keras_layers import (
    Conv2dSame,
    ConvTranspose2dSame,
    MaxPool2dSame,
    he_normal,
    keras_batch_norm,
    keras_init,
    upsample,
)


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
            *conv(1, 32, 3), *conv(32, 64, 3), upsample(),
            *conv(64, 128, 4, 2), upsample(),
            *conv(128, 64, 3), upsample(),
            *conv(64, 64, 4, 2), upsample(),
            *conv(64, 32, 3), upsample(),
            *conv(32, 32, 4, 2), upsample(4),
            *conv(32, 32, 4, 2), upsample(),
            *conv(32, 32, 8), upsample(),
            Conv2dSame(32, channels, 8), nn.Sigmoid(),
        )
        keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ------------------------------------------------------------------------------------ baselineCAE
BASELINE_LATENT = 64


def _conv_bn_lrelu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(Conv2dSame(cin, cout, kernel), keras_batch_norm(cout), nn.LeakyReLU(0.1))


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
            blocks += [_conv_bn_lrelu(cin, cout), upsample()]
            cin = cout
        self.decoder = nn.Sequential(*blocks, Conv2dSame(32, channels, 3), keras_batch_norm(channels), nn.Sigmoid())
        keras_init(self)
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
            layers += [_Inception(cin, f), upsample()]
            cin = 4 * f
        self.decoder = nn.Sequential(*layers, Conv2dSame(cin, channels, 3), keras_batch_norm(channels), nn.Sigmoid())
        keras_init(self)
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
        self.pre = nn.Identity() if first else nn.Sequential(keras_batch_norm(cin), nn.ReLU())
        self.conv1 = Conv2dSame(cin, filters, 3, stride)
        self.post = nn.Sequential(keras_batch_norm(filters), nn.ReLU())
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
        self.body = nn.Sequential(keras_batch_norm(cout), nn.ReLU(), ConvTranspose2dSame(cout, cout, 3, 1), keras_batch_norm(cout), nn.ReLU())

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
        self.encoder = nn.Sequential(stem, keras_batch_norm(64), nn.ReLU(), MaxPool2dSame(3, 2), *blocks, last)
        self.bottleneck = nn.Sequential(nn.Conv2d(512, 512, 1), nn.ReLU(), nn.Conv2d(512, 512, 1), nn.ReLU())
        self.decoder = nn.Sequential(
            _UpBlock(512, 512), _UpBlock(512, 256), _UpBlock(256, 128), _UpBlock(128, 64),
            ConvTranspose2dSame(64, channels, 4, 2), nn.Sigmoid(),
        )
        keras_init(self)
        resnet_convs = [m for m in self.encoder.modules() if isinstance(m, nn.Conv2d)]
        for conv in resnet_convs:
            he_normal(conv)
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
        self.bn_skip2, self.bn_skip1 = keras_batch_norm(128), keras_batch_norm(64)
        keras_init(self)

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
