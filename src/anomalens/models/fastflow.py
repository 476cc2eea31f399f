"""FastFlow — Yu, Zheng, Wang, Zhou & Wu, "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows", arXiv 2111.07677 (2021).

1. Feature extractor (Sec. 3.2): a pretrained CNN, frozen; for ResNet-like networks the feature maps of three
   stages (strides 4, 8, 16: timm ``out_indices`` (1, 2, 3)), each normalised by a trainable LayerNorm over
   (C, h, w) as in the authors' code (``norms``).
2. 2-D flow model (Sec. 3.3): per scale, a normalising flow f_l of ``flow_steps`` affine coupling blocks that
   keeps the map's spatial layout, z_l = f_l(x_l) of shape (C_l, h_l, w_l). The coupling subnets are two
   convolutions with a ReLU between, C/2 → hidden_ratio·C/2 → C; their kernels alternate between 3×3 (even
   steps) and 1×1 (odd steps) — "conv3x3_only" uses 3×3 everywhere (the paper's setting for transformers).
   Blocks: soft-clamped coupling (α = 2), global affine and a fixed channel permutation
   (``components.normalizing_flows``).
3. Loss: the negative log-likelihood under a standard normal prior, summed over scales, averaged over images:
       L = Σ_l [ ½‖z_l‖² − log|det ∂f_l/∂x_l| ]   (the constant (D/2) log 2π dropped).
   Adam, lr 1e-3, weight decay 1e-5, batch 32 (Sec. 4.1).
4. Map (Sec. 3.3, the authors' code): per scale and position the likelihood p_l = exp(−½ mean_c z_l²),
   upsampled bilinearly to the input size and averaged over scales; the code's map is −mean_l p_l, here
   1 − mean_l p_l (the same order, in [0, 1]). Image score = the map's maximum. Encoder, norms, flows and the
   map are one module, ``FastFlowGraph`` (``inference_module()``): what ``predict`` runs and what is exported.

Paper defaults (ResNet-18): 8 flow steps, hidden ratio 1.0, 3×3 and 1×1 alternating, 500 epochs at 256 px.

Deviations, and why:
- Backbone: the bundled, offline ``efficientnet_lite0`` at levels 1-3 (strides 4, 8, 16; 24, 40, 112
  channels), the backbone of the other detectors here; the paper's ResNet-18 / WideResNet-50 are
  ``backbone="resnet18"`` with timm's or a local weights file (CaiT / DeiT are not supported: one level of a
  transformer's tokens is not a timm feature pyramid).
- Budget: ``epochs`` = ``EPOCHS`` on CPU, not 500: the frozen encoder's features of the training images are
  computed once per fit (``FlowDetector``: exact, as nothing is augmented), so an epoch costs only the flows.
- Kept epoch: the validation loss (the NLL of eq. 3 on the threshold hold-out, normal images only) picks it;
  ``validation_fraction=0`` keeps the last epoch as the paper does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor
from anomalens.models.components.normalizing_flows import Flow, FlowDetector
from anomalens.params import Bool, Float, Int, Ints, Text
from anomalens.registry import register_detector

EPOCHS = 20  # the CPU default; the paper trains 500 (see the module docstring)


def conv_subnet(kernel: int, hidden_ratio: float):
    """A coupling subnet: conv(kernel) → ReLU → conv(kernel), 'same' padding (Sec. 3.3)."""
    def build(in_channels: int, out_channels: int) -> nn.Module:
        hidden = max(1, int(in_channels * hidden_ratio))
        return nn.Sequential(nn.Conv2d(in_channels, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                             nn.Conv2d(hidden, out_channels, kernel, padding=kernel // 2))
    return build


def fastflow_loss(hidden: list[torch.Tensor], log_dets: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l mean over images of ½‖z_l‖² − log|det J_l| (the NLL without its constant)."""
    return sum((0.5 * z.pow(2).flatten(1).sum(1) - log_det).mean() for z, log_det in zip(hidden, log_dets, strict=True))


def fastflow_map(hidden: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) map 1 − mean_l upsample(exp(−½ mean_c z_l²)) (bilinear, align_corners=False as the code)."""
    likelihood = 0
    for z in hidden:
        p = torch.exp(-0.5 * z.pow(2).mean(1, keepdim=True))
        likelihood = likelihood + F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return 1 - likelihood.squeeze(1) / len(hidden)


class FastFlowHead(nn.Module):
    """What trains: per scale, LayerNorm over (C, h, w) and a 2-D flow. Features → (z per scale, log-det per scale)."""

    def __init__(self, channels: list[int], sizes: list[tuple[int, int]], steps: int, hidden_ratio: float,
                 conv3x3_only: bool, clamp: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm([c, *hw]) for c, hw in zip(channels, sizes, strict=True))
        kernels = [3 if step % 2 == 0 or conv3x3_only else 1 for step in range(steps)]
        self.flows = nn.ModuleList(
            Flow(c, [conv_subnet(k, hidden_ratio) for k in kernels], clamp, spatial=True) for c in channels
        )

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outputs = [flow(norm(f)) for norm, flow, f in zip(self.norms, self.flows, features, strict=True)]
        return [z for z, _ in outputs], [log_det for _, log_det in outputs]


class FastFlowGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): encoder, norms and flows, the map of step 4, its maximum."""

    def __init__(self, encoder: FeatureExtractor, head: FastFlowHead, input_size: tuple[int, int]):
        super().__init__()
        self.encoder, self.head, self.input_size = encoder, head, tuple(input_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, _ = self.head(self.encoder(images))
        amap = fastflow_map(hidden, self.input_size)
        return amap.flatten(1).amax(1), amap


@register_detector
class FastFlow(FlowDetector):
    """2-D normalising flows on a frozen encoder's feature maps; anomalies where the likelihood is low."""

    name = "fastflow"
    score_is_map_max = True
    tiles = True  # tile_size / tile_overlap: the flows learn the encoder's features of tiles (anomalens.tiling)
    holdout_validates = True  # the threshold hold-out is the validation set (see the module docstring)
    hyperparameters = {
        "backbone": Text(DEFAULT_BACKBONE, "the frozen encoder: a bundled or timm backbone name (the paper: resnet18, "
                         "wide_resnet50_2)"),
        "weights": Text(None, "encoder weights: null = bundled/timm pretrained, or a file path", optional=True),
        "layers": Ints((1, 2, 3), "encoder levels with a flow each (the paper: ResNet stages 1-3, strides 4, 8, 16)",
                       low=0),
        "flow_steps": Int(8, "coupling blocks per flow (the paper: 8 for ResNets, 20 for transformers)", low=1),
        "hidden_ratio": Float(1.0, "the subnets' hidden channels as a share of their input channels (the paper: 1.0 "
                              "for ResNets, 0.16 for transformers)", low=0.0, low_open=True),
        "conv3x3_only": Bool(False, "3x3 convolutions in every subnet instead of alternating 3x3 and 1x1 (the "
                             "paper: false for ResNets)"),
        "clamp": Float(2.0, "α of the soft clamp: each coupling scales by at most e^±α", low=0.0, low_open=True),
        "epochs": Int(EPOCHS, "training epochs (the paper: 500; this CPU default trains a 120-image 256-px category "
                      "in minutes)", low=1),
        "batch_size": Int(32, "images per training (and scoring) batch (the paper: 32)", low=1),
        "lr": Float(1e-3, "Adam learning rate (the paper: 1e-3)", low=0.0, low_open=True),
        "weight_decay": Float(1e-5, "Adam weight decay (the paper: 1e-5)", low=0.0),
        "validation_fraction": Float(
            0.1, "> 0: the validation loss selects the kept epoch, on the threshold hold-out when there is one, "
            "else on this share of the fit images; 0: keep the last epoch (the paper)", low=0.0, high=0.9),
        "patience": Int(None, "epochs without validation improvement before stopping; null = never", low=1, optional=True),
    }

    # -- networks -------------------------------------------------------------------------------
    def _build_networks(self) -> None:
        self.encoder_ = FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)
        self.head_ = FastFlowHead(self.encoder_.channels, self.feature_sizes(), self.flow_steps, self.hidden_ratio,
                                  self.conv3x3_only, self.clamp).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"head": self.head_}  # the encoder stays as pretrained

    # -- training (eq. 3) -------------------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.head_.parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def _negative_log_likelihood(self, features: list[torch.Tensor]) -> torch.Tensor:
        return fastflow_loss(*self.head_(features))

    def _train_step(self, features: list[torch.Tensor], optimizers: dict) -> dict[str, float]:
        loss = self._negative_log_likelihood(features)
        optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["adam"].step()
        return {"loss": loss.item()}

    # -- score ----------------------------------------------------------------------------------
    def inference_module(self) -> nn.Module:
        return self.tiled(FastFlowGraph(self.encoder_, self.head_, self.model_input_size))

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] at the input size → (B, H, W) maps (eval mode, no grad)."""
        return self.inference_module().eval()(images.to(self.device))[1]
