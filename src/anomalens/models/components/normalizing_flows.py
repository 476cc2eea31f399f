"""Normalising flows, written once for FastFlow (2-D flows over feature maps) and CFlow-AD (conditional flows
over feature vectors): the coupling block, a sequence of them, the Gaussian log-likelihood, CFlow's 2-D
positional encoding, and the training side both share (``FlowDetector``: flows trained on a frozen encoder's
features, encoded once per fit).

A normalising flow f maps a feature x to z = f(x) with a tractable Jacobian; with a standard normal prior the
exact log-likelihood is (change of variables)

    log p(x) = log N(z; 0, I) + log |det ∂f/∂x| = −½‖z‖² − (D/2) log 2π + log |det J|.

The block is the "all-in-one" affine coupling block of FrEIA (Ardizzone et al.; the one the FastFlow and
CFlow-AD reference codes and anomalib build from), with the options those models use:

1. split the channels x = (x₁, x₂), x₁ the first ⌈C/2⌉;
2. (s, t) = 0.1 · subnet([x₁, c]) — c the condition, when there is one (CFlow), concatenated on the channels;
3. soft-clamped affine coupling: x₂' = x₂ ⊙ exp(α tanh s) + t, log-det Σ α tanh s (α = ``clamp``: the scale
   factor stays within e^±α, which keeps training stable);
4. a learned global affine (the "ActNorm-like" part): y = γ ⊙ [x₁, x₂'] + β with γ = 0.2 softplus(0.5 g) > 0
   (g initialised so that γ = 1), log-det (positions) · Σ log γ;
5. a fixed random channel permutation (drawn once from the seeded generator, saved with the weights), so the
   next block transforms the other channels.
The log-determinants add up over the blocks.

Written here rather than imported from FrEIA (measured 2026-12-06, notes in docs/detectors/fastflow.md):
FrEIA 0.2 installs from PyPI and its ``SequenceINN`` of ``AllInOneBlock`` s exports to ONNX (opset 17) with
onnxruntime parity, but its last release is from 2022, it would be a new dependency for about a hundred lines,
and it permutes channels with a dense C × C 1×1 convolution; here the permutation is an index gather. Given
FrEIA's weights this block gives exactly FrEIA's outputs and log-determinants (measured: difference 0.0).
Every operation is a fixed tensor operation (no data-dependent Python control flow): the flows export.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import FeatureExtractor
from anomalens.models.components.trained import PRELOAD_BYTES, TrainedDetector, TrainingImages, batch_slices

#: subnet(in_channels, out_channels) → the network that predicts (s, t) of a coupling.
SubnetFactory = Callable[[int, int], nn.Module]

_LOG_2PI = math.log(2 * math.pi)
# γ = 0.2 softplus(0.5 g) = 1 at g = 2 log(e⁵ − 1): every block starts as the identity's scale.
_GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(5.0) - 1.0)


def _global_scale(raw: torch.Tensor) -> torch.Tensor:
    """γ = 0.2 · softplus(0.5 g) (FrEIA's "SOFTPLUS" global affine): positive, 1 at initialisation."""
    return 0.1 * F.softplus(raw, beta=0.5)


class AffineCouplingBlock(nn.Module):
    """One flow step on (N, C) vectors or (N, C, H, W) maps (``spatial``): soft-clamped affine coupling, global
    affine, fixed channel permutation (the module docstring). ``forward(x, condition)`` → (y, log|det J|) with
    log|det J| of shape (N,), summed over every dimension but the first."""

    def __init__(self, channels: int, subnet: SubnetFactory, clamp: float, spatial: bool,
                 condition_channels: int = 0) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling block needs at least 2 channels, got {channels}")
        self.passive = channels - channels // 2  # x₁: left unchanged, conditions the coupling
        self.clamp = clamp
        self.condition_channels = condition_channels
        self.subnet = subnet(self.passive + condition_channels, 2 * (channels // 2))
        shape = (1, channels, 1, 1) if spatial else (1, channels)
        self.global_scale = nn.Parameter(torch.full(shape, _GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(shape))
        self.register_buffer("permutation", torch.randperm(channels))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.passive], x[:, self.passive :]
        inputs = x1 if condition is None else torch.cat([x1, condition], 1)
        coefficients = 0.1 * self.subnet(inputs)
        half = x2.shape[1]
        log_scale = self.clamp * torch.tanh(coefficients[:, :half])
        x2 = x2 * torch.exp(log_scale) + coefficients[:, half:]
        gamma = _global_scale(self.global_scale)
        y = torch.cat([x1, x2], 1) * gamma + self.global_offset
        positions = x[0, 0].numel()  # H·W for maps, 1 for vectors: γ acts at every position
        log_det = log_scale.flatten(1).sum(1) + positions * torch.log(gamma).sum()
        return y.index_select(1, self.permutation), log_det  # backward: index_add_, cheaper than y[:, p]'s index_put_


class Flow(nn.Module):
    """A sequence of coupling blocks, one per subnet factory: ``forward(x, condition)`` → (z, Σ log|det J|),
    z of x's shape and the log-determinant of shape (N,)."""

    def __init__(self, channels: int, subnets: Sequence[SubnetFactory], clamp: float, spatial: bool,
                 condition_channels: int = 0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            AffineCouplingBlock(channels, subnet, clamp, spatial, condition_channels) for subnet in subnets
        )

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_log_det = block(x, condition)
            log_det = log_det + block_log_det
        return x, log_det


def gaussian_log_likelihood(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """log p(x) = −½‖z‖² − (D/2) log 2π + log|det J| per sample (N,), D the dimensions of one sample of z."""
    dims = z[0].numel()
    return -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * dims * _LOG_2PI + log_det


def positional_encoding_2d(channels: int, height: int, width: int) -> torch.Tensor:
    """(channels, height, width) sinusoidal encoding of each position (CFlow-AD Sec. 3.3, after Vaswani et al.):
    the first half of the channels encodes the column, the second the row, each as interleaved
    sin(p · ω_k), cos(p · ω_k) with ω_k = 10000^(−2k / (channels/2)). ``channels`` must be a multiple of 4."""
    if channels % 4:
        raise ValueError(f"the positional encoding needs a multiple of 4 channels, got {channels}")
    half = channels // 2
    frequencies = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(1e4) / half))  # (half/2,)
    columns = torch.arange(width, dtype=torch.float32)[:, None] * frequencies  # (W, half/2)
    rows = torch.arange(height, dtype=torch.float32)[:, None] * frequencies  # (H, half/2)
    encoding = torch.zeros(channels, height, width)
    encoding[0:half:2] = torch.sin(columns).T[:, None, :].expand(-1, height, -1)
    encoding[1:half:2] = torch.cos(columns).T[:, None, :].expand(-1, height, -1)
    encoding[half::2] = torch.sin(rows).T[:, :, None].expand(-1, -1, width)
    encoding[half + 1 :: 2] = torch.cos(rows).T[:, :, None].expand(-1, -1, width)
    return encoding


# -- training flows on a frozen encoder -----------------------------------------------------------------------
class EncodedImages:
    """The frozen encoder's features of a set of training images, by index: each image is encoded the first
    time a batch asks for it and kept (while the whole set fits ``limit_bytes``), so the epochs after the
    first cost only the flows. Exact: the encoder is frozen and the images are not augmented, so every epoch
    would compute the same features."""

    def __init__(self, encode: Callable[[torch.Tensor], list[torch.Tensor]], images: TrainingImages,
                 limit_bytes: int = PRELOAD_BYTES) -> None:
        self.encode, self.images, self.limit_bytes = encode, images, limit_bytes
        self.levels: list[torch.Tensor] | None = None
        self.encoded = torch.zeros(len(images), dtype=torch.bool)
        self.keeps = True

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: np.ndarray) -> list[torch.Tensor]:
        """The features of ``index``: one (len(index), C_l, h_l, w_l) tensor per level."""
        index_t = torch.as_tensor(index, dtype=torch.long)
        if not self.keeps:
            return self.encode(self.images.take(index))
        missing = index_t[~self.encoded[index_t]]
        if len(missing):
            features = self.encode(self.images.take(missing.numpy()))
            if self.levels is None:
                per_image = sum(f[0].numel() * f.element_size() for f in features)
                if per_image * len(self) > self.limit_bytes:
                    self.keeps = False
                    return features if len(missing) == len(index_t) else self.encode(self.images.take(index))
                self.levels = [f.new_empty((len(self), *f.shape[1:])) for f in features]
            for level, values in zip(self.levels, features):
                level[missing.to(level.device)] = values
            self.encoded[missing] = True
        return [level[index_t.to(level.device)] for level in self.levels]


class FlowDetector(TrainedDetector):
    """What the flow detectors (FastFlow, CFlow-AD) share: flows trained on the features of a frozen,
    pretrained encoder ``encoder_`` (a ``FeatureExtractor``), those features computed once per fit
    (``EncodedImages``). A network batch is the list of the encoder's feature levels; a subclass writes
    ``_negative_log_likelihood(features)`` (a batch's loss, averaged over its images) and its step."""

    encoder_: FeatureExtractor

    def _negative_log_likelihood(self, features: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.contiguous() for f in self.encoder_(images.to(self.device))]

    def feature_sizes(self) -> list[tuple[int, int]]:
        """(h_l, w_l) of each encoder level at ``model_input_size`` (what the flows are built for)."""
        probe = torch.zeros(1, self.image_channels, *self.model_input_size, device=self.device)
        return [tuple(f.shape[-2:]) for f in self._encode(probe)]

    def _train(self, fit_records, val_records, progress: bool) -> None:
        self._encoded: dict[int, EncodedImages] = {}  # per set of training images (fit, validation)
        self._fit_records, self._fit_features = fit_records, None
        try:
            super()._train(fit_records, val_records, progress)
        finally:
            del self._encoded
            self._fit_records = self._fit_features = None

    def _encoded_images(self, images: TrainingImages) -> EncodedImages:
        if id(images) not in self._encoded:
            self._encoded[id(images)] = EncodedImages(self._encode, images)
        return self._encoded[id(images)]

    def _epoch_batches(self, images: TrainingImages, epoch: int) -> Iterator[dict]:
        encoded = self._encoded_images(images)
        self._fit_features = encoded  # what ``_training_finished`` may read (CFlow's per-scale reference)
        order = self._epoch_indices(len(images), epoch)
        for start, stop in batch_slices(len(order), self.setting("batch_size")):
            yield {"x": encoded.take(order[start:stop])}

    def _network_batch(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f.to(self.device) for f in features]

    def _mean_validation_loss(self, images: TrainingImages) -> float:
        encoded, total = self._encoded_images(images), 0.0
        for start, stop in batch_slices(len(images), self.setting("batch_size")):
            features = self._network_batch(encoded.take(np.arange(start, stop)))
            total += self._negative_log_likelihood(features).item() * (stop - start)
        return total / len(images)

    def _training_batches(self) -> Iterator[list[torch.Tensor]]:
        """Every fit image's features, in order, by batches (for ``_training_finished``)."""
        encoded = self._fit_features
        if encoded is None:  # no epoch ran here (resumed from the checkpoint of a finished training)
            images = TrainingImages(self._fit_records, self.model_input_size, self.image_channels)
            encoded = EncodedImages(self._encode, images)
        for start, stop in batch_slices(len(encoded), self.setting("batch_size")):
            yield self._network_batch(encoded.take(np.arange(start, stop)))
