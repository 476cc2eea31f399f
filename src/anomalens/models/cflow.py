"""CFlow-AD — Gudovskiy, Ishizaka & Kozuka, "CFLOW-AD: Real-Time Unsupervised Anomaly Detection with
Localization via Conditional Normalizing Flows", WACV 2022.

1. Encoder (Sec. 3.3): a pretrained CNN, frozen, gives a pyramid of K feature maps (the paper: the last three
   stages of WideResNet-50, strides 8, 16, 32); each position's C_k-vector x_k^i is one sample.
2. Conditional positional encoding: c^i, a P-channel 2-D sinusoidal encoding of the position (half the
   channels encode the column, half the row; ``positional_encoding_2d``).
3. Decoders (Sec. 3.3-3.4): per scale k a conditional normalising flow g_k of ``coupling_blocks`` affine
   coupling blocks on vectors, each subnet fully connected (C/2 + P → 2(C/2 + P) → C, ReLU) and seeing c^i
   (``components.normalizing_flows``: soft clamp α = 1.9, global affine, fixed permutation). With z = g_k(x, c):
       log p_k(x | c) = −½‖z‖² − (C_k/2) log 2π + log|det J|   (eq. 6),
   divided by C_k (a log-likelihood per dimension, as the authors' code: scales of different widths compare).
4. Training (Sec. 3.4, Alg. 1): maximum likelihood on random subsets of N positions ("fiber batches")
   drawn from the images of a batch; the authors' code minimises −log σ(log p / C) (a bounded form of the
   NLL). Adam, lr 2e-4, batch 32 images, N = 256, P = 128, 8 coupling blocks.
5. Map (Sec. 3.4): per scale, the likelihood exp(log p_k − max log p_k) upsampled bilinearly (align_corners,
   as the code) to the input size and summed over scales; the map is (max − sum). Image score = the map's
   maximum. Encoder, decoders and the map are one module, ``CFlowGraph`` (``inference_module()``): what
   ``predict`` runs and what is exported.

Deviations, and why:
- Normalisation of step 5: the authors' code (and anomalib) take max log p_k and the final max over the whole
  test set (anomalib: over the batch being scored), so an image's map depends on the other images scored with
  it. Here the reference of each scale is fixed at fit time, the maximum of log p_k over the training images'
  positions (``reference``), and the map is K − Σ_k up(exp(log p_k − reference_k)): the same per-scale
  normalisation, one map per image whatever it is scored with (and one exportable graph).
- Fiber batches: the code loops over the scales, each with its own optimiser steps. Here each step takes N
  random positions of the finest scale and, at every coarser scale, the same share of its positions, so one
  step trains every decoder (each position of every scale is visited once per epoch; one forward call, as
  data-parallel training needs).
- Encoder: the bundled, offline ``efficientnet_lite0`` at levels 2-4 (strides 8, 16, 32: the counterpart of
  WideResNet-50's last three stages; 40, 112, 320 channels); ``backbone="wide_resnet50_2"`` with
  ``weights=FILE`` (or timm online) is the paper's.
- Budget: the code trains 25 meta-epochs of 8 sub-epochs with warm-up and cosine decay; here ``epochs`` =
  ``EPOCHS`` at a constant rate (as anomalib), the encoder's features computed once per fit
  (``FlowDetector``), and the epoch kept by the validation loss (the loss of step 4 on the threshold hold-out;
  ``validation_fraction=0`` keeps the last).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor
from anomalens.errors import ConfigError
from anomalens.models.components.normalizing_flows import Flow, FlowDetector, gaussian_log_likelihood, \
    positional_encoding_2d
from anomalens.params import Float, Int, Ints, Text
from anomalens.registry import register_detector

EPOCHS = 10  # the CPU default; the authors' code trains 25 x 8 epochs (see the module docstring)


def fc_subnet(in_channels: int, out_channels: int) -> nn.Module:
    """The coupling subnet of the authors' code: Linear(in, 2·in) → ReLU → Linear(2·in, out)."""
    return nn.Sequential(nn.Linear(in_channels, 2 * in_channels), nn.ReLU(), nn.Linear(2 * in_channels, out_channels))


def cflow_loss(log_likelihoods: list[torch.Tensor]) -> torch.Tensor:
    """Σ_k mean over positions of −log σ(log p_k / C_k) (the authors' code; inputs already per dimension)."""
    return sum(-F.logsigmoid(logp).mean() for logp in log_likelihoods)


def cflow_map(log_likelihoods: list[torch.Tensor], reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) map K − Σ_k up(exp(log p_k − reference_k)) from (B, h_k, w_k) per-dimension log-likelihoods."""
    likelihood = 0
    for k, logp in enumerate(log_likelihoods):
        p = torch.exp(logp - reference[k]).unsqueeze(1)
        likelihood = likelihood + F.interpolate(p, size=size, mode="bilinear", align_corners=True)
    return len(log_likelihoods) - likelihood.squeeze(1)


class CFlowDecoders(nn.Module):
    """What trains: one conditional flow per scale, with each scale's positional encodings (fixed) and the
    per-scale likelihood reference of the map (set after training)."""

    def __init__(self, channels: list[int], sizes: list[tuple[int, int]], condition_channels: int, blocks: int,
                 clamp: float) -> None:
        super().__init__()
        self.flows = nn.ModuleList(
            Flow(c, [fc_subnet] * blocks, clamp, spatial=False, condition_channels=condition_channels) for c in channels
        )
        for k, (h, w) in enumerate(sizes):  # (h·w, P): one condition per position, row-major as the fibers
            encoding = positional_encoding_2d(condition_channels, h, w).flatten(1).T.contiguous()
            self.register_buffer(f"encoding_{k}", encoding, persistent=False)
        self.register_buffer("reference", torch.zeros(len(channels)))

    def forward(self, features: list[torch.Tensor], positions: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per-dimension log-likelihoods of every position of the (B, C_k, h_k, w_k) ``features``, as (B, h_k, w_k)
        maps; or, given ``positions``, of those positions only, as (n_k,) vectors: ``features`` are then each
        scale's (B·h_k·w_k, C_k) fibers (image-major, as ``fibers_of``) and ``positions[k]`` index them. One
        method for both, because a training step must go through ``forward`` under DistributedDataParallel."""
        if positions is not None:
            return self._fiber_log_likelihoods(features, positions)
        out = []
        for k, (flow, f) in enumerate(zip(self.flows, features, strict=True)):
            batch, channels, h, w = f.shape
            conditions = getattr(self, f"encoding_{k}").repeat(batch, 1)
            logp = gaussian_log_likelihood(*flow(fibers_of(f), conditions)) / channels
            out.append(logp.reshape(batch, h, w))
        return out

    def _fiber_log_likelihoods(self, fibers: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k, (flow, f, chosen) in enumerate(zip(self.flows, fibers, positions, strict=True)):
            encoding = getattr(self, f"encoding_{k}")
            conditions = encoding[chosen % encoding.shape[0]]  # a fiber's condition is its position in its image
            out.append(gaussian_log_likelihood(*flow(f[chosen], conditions)) / f.shape[1])
        return out


def fibers_of(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B·h·w, C): one row per position, image-major then row-major (the encodings' order)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


class CFlowGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): encoder, decoders, the map of step 5, its maximum."""

    def __init__(self, encoder: FeatureExtractor, decoders: CFlowDecoders, input_size: tuple[int, int]):
        super().__init__()
        self.encoder, self.decoders, self.input_size = encoder, decoders, tuple(input_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = cflow_map(self.decoders(self.encoder(images)), self.decoders.reference, self.input_size)
        return amap.flatten(1).amax(1), amap


@register_detector
class CFlow(FlowDetector):
    """Conditional normalising flows on a frozen encoder's feature vectors, conditioned on their position."""

    name = "cflow"
    score_is_map_max = True
    tiles = True  # tile_size / tile_overlap: the decoders learn the encoder's features of tiles (anomalens.tiling)
    holdout_validates = True  # the threshold hold-out is the validation set (see the module docstring)
    hyperparameters = {
        "backbone": Text(DEFAULT_BACKBONE, "the frozen encoder: a bundled or timm backbone name (the paper: "
                         "wide_resnet50_2)"),
        "weights": Text(None, "encoder weights: null = bundled/timm pretrained, or a file path", optional=True),
        "layers": Ints((2, 3, 4), "encoder levels with a decoder each (the paper: the last three stages, strides "
                       "8, 16, 32)", low=0),
        "condition_channels": Int(128, "P, channels of the positional encoding, a multiple of 4 (the paper: 128)",
                                  low=4),
        "coupling_blocks": Int(8, "coupling blocks per decoder (the paper: 8)", low=1),
        "clamp": Float(1.9, "α of the soft clamp: each coupling scales by at most e^±α (the paper's code: 1.9)",
                       low=0.0, low_open=True),
        "fiber_batch_size": Int(256, "N, positions per optimisation step at the finest scale (the paper: 256; "
                                "anomalib: 64)", low=1),
        "epochs": Int(EPOCHS, "training epochs (the paper's code: 25 x 8; this CPU default trains a 120-image 256-px "
                      "category in minutes)", low=1),
        "batch_size": Int(32, "images per training batch whose positions are sampled (and per scoring batch)", low=1),
        "lr": Float(2e-4, "Adam learning rate (the paper's code: 2e-4; anomalib: 1e-4)", low=0.0, low_open=True),
        "validation_fraction": Float(
            0.1, "> 0: the validation loss selects the kept epoch, on the threshold hold-out when there is one, "
            "else on this share of the fit images; 0: keep the last epoch", low=0.0, high=0.9),
        "patience": Int(None, "epochs without validation improvement before stopping; null = never", low=1, optional=True),
    }

    def _check_params(self) -> None:
        if self.condition_channels % 4:
            raise ConfigError(f"{self.name}: condition_channels must be a multiple of 4 (sin and cos of rows and "
                              f"columns), got {self.condition_channels}")

    # -- networks -------------------------------------------------------------------------------
    def _build_networks(self) -> None:
        self.encoder_ = FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)
        self.decoders_ = CFlowDecoders(self.encoder_.channels, self.feature_sizes(), self.condition_channels,
                                       self.coupling_blocks, self.clamp).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"decoders": self.decoders_}  # the encoder stays as pretrained

    # -- training (Sec. 3.4) ----------------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # Fused: a step makes ~4 M parameter updates for 256 fibers, so the optimiser was a quarter of the fit
        # (1.15 of 4.5 s per 32-image batch at 256 px); the fused kernel takes 0.46 s (same update, one pass).
        return {"adam": torch.optim.Adam(self.decoders_.parameters(), lr=self.lr, fused=True)}

    def _negative_log_likelihood(self, features: list[torch.Tensor]) -> torch.Tensor:
        return cflow_loss(self.decoders_(features))

    def _fiber_batches(self, features: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Random positions for each step: N of the finest scale's B·h·w per step, every coarser scale cut into
        as many parts (each position of every scale once per batch of images)."""
        counts = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        steps = math.ceil(max(counts) / self.fiber_batch_size)
        parts = [torch.randperm(n).tensor_split(min(steps, n)) for n in counts]
        device = features[0].device
        return [[p[i * len(p) // steps].to(device) for p in parts] for i in range(steps)]

    def _train_step(self, features: list[torch.Tensor], optimizers: dict) -> dict[str, float]:
        total, batches = 0.0, self._fiber_batches(features)
        fibers = [fibers_of(f) for f in features]  # once per image batch, not per step: the steps only index
        for positions in batches:
            loss = cflow_loss(self.decoders_(fibers, positions))
            optimizers["adam"].zero_grad(set_to_none=True)
            loss.backward()
            optimizers["adam"].step()
            total += loss.item()
        return {"loss": total / len(batches)}

    def _training_finished(self, steps_per_epoch: int) -> None:
        """Step 5's reference: each scale's largest log-likelihood over the training images' positions."""
        peaks = None
        with torch.no_grad():
            for features in self._training_batches():
                batch = torch.stack([logp.amax() for logp in self.decoders_(features)])
                peaks = batch if peaks is None else torch.maximum(peaks, batch)
        self.decoders_.reference.copy_(peaks)

    # -- score ----------------------------------------------------------------------------------
    def inference_module(self) -> nn.Module:
        return self.tiled(CFlowGraph(self.encoder_, self.decoders_, self.model_input_size))

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] at the input size → (B, H, W) maps (eval mode, no grad)."""
        return self.inference_module().eval()(images.to(self.device))[1]
