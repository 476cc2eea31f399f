"""A ResNet run backwards, for Reverse Distillation (Deng & Li, CVPR 2022, Sec. 3.2-3.3): the trainable
one-class bottleneck embedding (OCBE) and the student decoder.

Shapes follow the reference code (hq-deng/RD4AD) written for any three encoder levels of channels
(c1, c2, c3) at strides (s, 2s, 4s) — for WideResNet-50 (256, 512, 1024), for ResNet-18 (64, 128, 256), for
EfficientNet-Lite0 (24, 40, 112):

- multi-scale feature fusion (MFF): level 1 through two 3×3 stride-2 convs (c1 → c2 → c3), level 2
  through one (c2 → c3), each followed by BatchNorm + ReLU; concatenated with level 3: 3·c3 channels;
- one-class embedding (OCE): a ResNet stage of ``oce_blocks`` residual blocks, the first with stride 2,
  to 2·c3 channels (WideResNet-50: 3 Bottlenecks to 2048; ResNet-18: 2 BasicBlocks to 512);
- the decoder: three stages in reverse (to c3, c2, c1), each opening with a block that upsamples by 2 with
  2×2 transposed convolutions (main path and shortcut), then ``depth - 1`` blocks at that size.

Blocks are ResNet's BasicBlock (two 3×3 convs) or the wide Bottleneck (1×1 → 3×3 → 1×1, inner width
half the output, WideResNet-50-2's ratio); the encoder-side ones are torchvision's own. Initialisation
as the reference: Kaiming-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0.

``rectified_outputs``: a ResNet's stages end in a ReLU, so the reference decoder's stages do too; an
EfficientNet's stages end in a linear projection whose features are signed, which a ReLU'd output could
never match in direction. With ``rectified_outputs=False`` the last block of each decoder stage leaves
out its final ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

BLOCKS = ("basic", "bottleneck")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _up2x2(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)


def _resized(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``x`` at the spatial ``size`` of the encoder level it pairs with: stride-2 stages round odd sizes up,
    so an input whose side is not a multiple of the deepest stride gives maps one cell off."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _encoder_block(block: str, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """A torchvision residual block from ``in_ch`` to ``out_ch`` (its shortcut a 1×1 conv when they differ)."""
    shortcut = None
    if stride != 1 or in_ch != out_ch:
        shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    if block == "basic":
        return BasicBlock(in_ch, out_ch, stride, shortcut)
    # planes = out / 4 (expansion 4); base_width 128 makes the inner width planes · 2 = out / 2 (wide).
    return Bottleneck(in_ch, out_ch // Bottleneck.expansion, stride, shortcut, base_width=128)


class DecoderBlock(nn.Module):
    """A residual block of the decoder; ``upsample``: twice the spatial size, by 2×2 transposed convs."""

    def __init__(self, block: str, in_ch: int, out_ch: int, upsample: bool, final_relu: bool = True):
        super().__init__()
        if block == "basic":
            first = _up2x2(in_ch, out_ch) if upsample else _conv3x3(in_ch, out_ch)
            self.body = nn.Sequential(first, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                                      _conv3x3(out_ch, out_ch), nn.BatchNorm2d(out_ch))
        else:
            width = out_ch // 2
            middle = _up2x2(width, width) if upsample else _conv3x3(width, width)
            self.body = nn.Sequential(
                nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                middle, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
            )
        self.shortcut = None
        if upsample:
            self.shortcut = nn.Sequential(_up2x2(in_ch, out_ch), nn.BatchNorm2d(out_ch))
        elif in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out) if self.final_relu else out


class OneClassBottleneck(nn.Module):
    """OCBE (Sec. 3.3): the encoder's three levels fused (MFF) and embedded (OCE) into one low-resolution,
    2·c3-channel code, from which the decoder must rebuild every level."""

    def __init__(self, channels: tuple[int, int, int], block: str, oce_blocks: int):
        super().__init__()
        c1, c2, c3 = channels
        relu = lambda: nn.ReLU(inplace=True)
        self.fuse_level1 = nn.Sequential(_conv3x3(c1, c2, 2), nn.BatchNorm2d(c2), relu(),
                                         _conv3x3(c2, c3, 2), nn.BatchNorm2d(c3), relu())
        self.fuse_level2 = nn.Sequential(_conv3x3(c2, c3, 2), nn.BatchNorm2d(c3), relu())
        stages = [_encoder_block(block, 3 * c3, 2 * c3, stride=2)]
        stages += [_encoder_block(block, 2 * c3, 2 * c3, stride=1) for _ in range(oce_blocks - 1)]
        self.embed = nn.Sequential(*stages)
        _init_weights(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[2].shape[-2:]
        fused = torch.cat([_resized(self.fuse_level1(features[0]), size),
                           _resized(self.fuse_level2(features[1]), size), features[2]], dim=1)
        return self.embed(fused)


class ReverseDecoder(nn.Module):
    """The student (Sec. 3.2): from the one-class code back up to the encoder's levels 3, 2, 1; returns
    them in the encoder's order (level 1 first), each at its encoder level's spatial size."""

    def __init__(self, channels: tuple[int, int, int], block: str, depths: tuple[int, int, int],
                 rectified_outputs: bool = True):
        super().__init__()
        c1, c2, c3 = channels
        stages, in_ch = [], 2 * c3
        for out_ch, depth in zip((c3, c2, c1), depths, strict=True):
            blocks = [DecoderBlock(block, in_ch, out_ch, upsample=True, final_relu=rectified_outputs or depth > 1)]
            blocks += [DecoderBlock(block, out_ch, out_ch, upsample=False, final_relu=rectified_outputs or i < depth - 1)
                       for i in range(1, depth)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        _init_weights(self)

    def forward(self, code: torch.Tensor, sizes: list[torch.Size]) -> list[torch.Tensor]:
        """``sizes``: the spatial sizes of the encoder's levels 1, 2, 3."""
        out, x = [], code
        for stage, size in zip(self.stages, reversed(sizes)):
            x = _resized(stage(x), size)
            out.append(x)
        return out[::-1]
