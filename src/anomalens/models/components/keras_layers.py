"""Keras layers and initialisers as PyTorch modules: what a network ported from the Keras reference code needs
to compute what it computed there (the seed's five CAEs, ``cae_networks``).

- 'same' padding by TensorFlow's rule — output = ceil(size / stride), the odd pixel of padding at the
  bottom / right — for convolutions (``Conv2dSame``), transposed convolutions (``ConvTranspose2dSame``,
  cropped as TensorFlow crops) and max-pooling (``MaxPool2dSame``, padded with −∞); PyTorch's symmetric
  ``padding=`` differs for even kernels and strided layers;
- ``keras_batch_norm``: BatchNorm with Keras' ε = 1e-3 (momentum: PyTorch's, why is in ``anomalens.models.cae``);
- ``keras_init``: Keras' default initialisation (Glorot-uniform kernels, zero biases); ``he_normal``: its
  'he_normal' (a truncated normal, corrected for the truncation);
- ``upsample``: ``UpSampling2D`` (nearest neighbour).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KERAS_BN_EPS = 1e-3
BN_MOMENTUM = 0.1  # PyTorch's default; see anomalens.models.cae


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' rule: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with Keras 'same' padding (uneven padding puts the extra row/column bottom/right)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int] = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
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
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(x, self.kernel, self.stride)


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNormalization with Keras' ε and PyTorch's momentum."""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=BN_MOMENTUM)


def upsample(factor: int = 2) -> nn.Upsample:
    """UpSampling2D: each pixel repeated ``factor`` times along both axes."""
    return nn.Upsample(scale_factor=factor, mode="nearest")


def keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases (BatchNorm keeps γ = 1, β = 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def he_normal(conv: nn.Conv2d) -> nn.Conv2d:
    """Keras 'he_normal': truncated normal (±2σ), σ = √(2 / fan_in) / 0.8796 (the truncation correction)."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(conv.weight, 0.0, std, -2 * std, 2 * std)
    nn.init.zeros_(conv.bias)
    return conv
