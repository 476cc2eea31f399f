"""Reverse Distillation — Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding",
CVPR 2022.

1. Teacher encoder E: a pretrained CNN, frozen (eval mode); its levels k = 1, 2, 3 (timm ``out_indices``
   (1, 2, 3): WideResNet-50's layer1-3, EfficientNet(-Lite)'s blocks ending at strides 4, 8, 16) give f_E^k.
2. One-class bottleneck embedding (OCBE, Sec. 3.3): multi-scale feature fusion of the three levels and a
   ResNet stage (OCE) compress them to one low-resolution code φ (``components.reverse_resnet``).
3. Student decoder D (Sec. 3.2): the encoder run in reverse, from φ back to every level: f_D^k. OCBE and
   D are trained together from random initialisation; E never changes.
4. Loss (eq. 2-3): each level flattened to one vector per image,
       L = Σ_k [ 1 − vec(f_E^k)ᵀ vec(f_D^k) / (‖vec(f_E^k)‖ ‖vec(f_D^k)‖) ],
   averaged over the images of a batch (the reference code's ``loss_fucntion``; ``rd_loss``).
5. Map (eq. 1, 4): per level and position, M^k(h, w) = 1 − cos(f_E^k(h, w), f_D^k(h, w)) over channels,
   upsampled bilinearly (align_corners, as the reference) to the input size and *summed* over levels, then
   smoothed by a Gaussian of σ = 4. Image score = the maximum of the smoothed map. E, OCBE, D and the map
   are one module, ``ReverseDistillationGraph`` (``inference_module()``): what ``predict`` runs and exports.
Paper's training (Sec. 4.1): Adam, lr 0.005, β = (0.5, 0.999), batch 16, 200 epochs, 256 px, WideResNet-50.

Deviations, and why:
- Encoder: the bundled, offline ``efficientnet_lite0`` (WideResNet-50's weights are not on this machine;
  ``backbone="wide_resnet50_2"`` builds the paper's network when timm can fetch its weights or with
  ``weights=FILE``). The OCBE and decoder take the encoder's channel counts (c1, c2, c3) in the reference's
  proportions (MFF to c3, OCE to 2·c3); ``block`` null = the reference's choice per backbone: wide
  Bottlenecks (3 OCE blocks, decoder depths 3-4-6) for ResNet-50-class encoders, BasicBlocks (2 OCE blocks,
  depths 2-2-2, the reference's ResNet-18 decoder) for ResNet-18/34 and for any other backbone — a
  Bottleneck's 4× channel reduction would leave EfficientNet-Lite's 24-channel level with 6 channels.
  EfficientNet stages end in a linear projection (signed features), so for non-ResNet encoders the decoder's
  stage outputs leave out their last ReLU (``components.reverse_resnet``).
- Epochs: the paper's 200 is the reference (``epochs=200``); the CPU default (``EPOCHS``) trains a 120-image
  256-px category in a few minutes on 2 cores (benchmarks/results/compare_reverse_distillation).
- Kept epoch: the paper trains a fixed budget and reports the last epoch; here, as for STPM, the loss of eq. 3
  on the threshold hold-out (``validation_fraction``) picks the kept epoch — normal images only, never test
  data; ``validation_fraction=0`` keeps the last epoch as the paper does.
- anomalib's implementation uses β₂ = 0.99; the default here is the paper's 0.999.
Training state, resumable checkpoints (``checkpoint``), preloading and batching: ``components.trained``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor, timm_architecture
from anomalens.errors import ConfigError
from anomalens.models.components.maps import check_blur_fits, gaussian_blur
from anomalens.models.components.reverse_resnet import BLOCKS, OneClassBottleneck, ReverseDecoder
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Choice, Float, Floats, Int, Ints, Text
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

EPOCHS = 20  # the CPU default; the paper trains 200
# The reference's decoder per block kind: (OCE blocks, decoder depths from the deepest level up).
REFERENCE_DEPTHS = {"bottleneck": (3, (3, 4, 6)), "basic": (2, (2, 2, 2))}
_RESNET_BOTTLENECK = ("resnet50", "resnet101", "resnet152", "wide_resnet", "resnext")


def rd_loss(encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 2-3: Σ_k mean over the batch of 1 − cos(vec f_E^k, vec f_D^k), each level one vector per image."""
    return sum(
        (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
        for e, d in zip(encoder, decoder, strict=True)
    )


def rd_map(encoder: list[torch.Tensor], decoder: list[torch.Tensor], size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Eq. 1, 4: (B, H, W) sum over levels of the upsampled channel-wise 1 − cos(f_E^k, f_D^k), blurred (σ)."""
    amap = 0
    for e, d in zip(encoder, decoder, strict=True):
        # ½‖ê − d̂‖² = 1 − cos, computed that way so that it is never negative (and exports as plain ops).
        distance = 0.5 * (F.normalize(e, dim=1) - F.normalize(d, dim=1)).pow(2).sum(1, keepdim=True)
        amap = amap + F.interpolate(distance, size=size, mode="bilinear", align_corners=True)
    if sigma > 0:
        amap = gaussian_blur(amap, sigma)
    return amap.squeeze(1)


class ReverseDistillationGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): E, OCBE, D, the map of eq. 4 and its maximum."""

    def __init__(self, encoder: FeatureExtractor, bottleneck: OneClassBottleneck, decoder: ReverseDecoder,
                 input_size: tuple[int, int], blur_sigma: float):
        super().__init__()
        self.encoder, self.bottleneck, self.decoder = encoder, bottleneck, decoder
        self.input_size, self.blur_sigma = tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encoder(images)
        decoded = self.decoder(self.bottleneck(encoded), [f.shape[-2:] for f in encoded])
        amap = rd_map(encoded, decoded, self.input_size, self.blur_sigma)
        return amap.flatten(1).amax(1), amap


@register_detector
class ReverseDistillation(TrainedDetector):
    """A decoder rebuilds a frozen encoder's features from a one-class code; anomalies where it cannot."""

    name = "reverse_distillation"
    score_is_map_max = True
    tiles = True  # tile_size / tile_overlap: OCBE and decoder learn the encoder on tiles (anomalens.tiling)
    holdout_validates = True  # the threshold hold-out is the validation set (see the module docstring)
    min_training_images = 2  # BatchNorm in OCBE and decoder needs two images per batch
    hyperparameters = {
        "backbone": Text(DEFAULT_BACKBONE, "the frozen encoder: a bundled or timm backbone name (the paper: "
                         "wide_resnet50_2)"),
        "weights": Text(None, "encoder weights: null = bundled/timm pretrained, or a file path", optional=True),
        "layers": Ints((1, 2, 3), "the encoder's three levels (strides 4, 8, 16) that are fused and rebuilt", low=0,
                       length=3),
        "block": Choice(None, BLOCKS, "residual block of OCE and decoder: null = the reference's for the backbone "
                        "(bottleneck for ResNet-50-class, else basic)", optional=True),
        "oce_blocks": Int(None, "blocks of the one-class embedding: null = the reference's (3 bottleneck, 2 basic)",
                          low=1, optional=True),
        "decoder_depths": Ints(None, "blocks of the decoder's stages, deepest first: null = the reference's "
                               "(3-4-6 bottleneck, 2-2-2 basic)", low=1, length=3, optional=True),
        "epochs": Int(EPOCHS, "training epochs (the paper: 200; this CPU default trains a 120-image 256-px "
                      "category in minutes)", low=1),
        "batch_size": Int(16, "images per training (and scoring) batch (the paper: 16)", low=1),
        "lr": Float(0.005, "Adam learning rate (the paper: 0.005)", low=0.0, low_open=True),
        "betas": Floats((0.5, 0.999), "Adam β1, β2 (the paper: 0.5, 0.999; anomalib: 0.5, 0.99)", low=0.0, high=0.9999,
                        length=2),
        "validation_fraction": Float(
            0.1, "> 0: the validation loss selects the kept epoch, on the threshold hold-out when there is one, "
            "else on this share of the fit images; 0: keep the last epoch (the paper)", low=0.0, high=0.9),
        **EARLY_STOPPING,
        "blur_sigma": Float(4.0, "Gaussian blur of the map in pixels (the paper: 4)", low=0.0),
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)

    # -- architecture -----------------------------------------------------------------------------
    @property
    def block_kind(self) -> str:
        if self.block:
            return self.block
        arch = timm_architecture(self.backbone)
        return "bottleneck" if arch.startswith(_RESNET_BOTTLENECK) else "basic"

    @property
    def depths(self) -> tuple[int, tuple[int, int, int]]:
        """(OCE blocks, decoder depths): the parameters, else the reference's for the block kind."""
        oce, decoder = REFERENCE_DEPTHS[self.block_kind]
        return self.oce_blocks or oce, tuple(self.decoder_depths or decoder)

    def _build_networks(self) -> None:
        self.encoder_ = FeatureExtractor(self.backbone, self.layers, self.weights).to(self.device).optimize()
        strides = self.encoder_.strides
        if strides[1] != 2 * strides[0] or strides[2] != 2 * strides[1]:
            raise ConfigError(f"{self.name}: layers {list(self.layers)} of '{self.backbone}' have strides {strides}; "
                              "the bottleneck fuses three levels whose strides double (e.g. 4, 8, 16)")
        channels = tuple(self.encoder_.channels)
        oce_blocks, decoder_depths = self.depths
        # ResNet stages end in a ReLU; other backbones' (EfficientNet's linear projections) do not.
        rectified = timm_architecture(self.backbone).startswith(("resnet", "wide_resnet", "resnext"))
        self.bottleneck_ = OneClassBottleneck(channels, self.block_kind, oce_blocks).to(self.device)
        self.decoder_ = ReverseDecoder(channels, self.block_kind, decoder_depths, rectified).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"bottleneck": self.bottleneck_, "decoder": self.decoder_}  # the encoder stays as pretrained

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            encoded = self.encoder_(images.to(self.device))
        decoded = self.decoder_(self.bottleneck_(encoded), [f.shape[-2:] for f in encoded])
        return encoded, decoded

    # -- training (Sec. 4.1, eq. 3) ---------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        parameters = [*self.bottleneck_.parameters(), *self.decoder_.parameters()]
        return {"adam": torch.optim.Adam(parameters, lr=self.lr, betas=tuple(self.betas))}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        loss = rd_loss(*self._features(x))
        optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["adam"].step()
        return {"loss": loss.item()}

    def _validation_loss(self, x: torch.Tensor) -> float:
        return rd_loss(*self._features(x)).item() * len(x)  # summed over the batch's images

    # -- score (eq. 4) ----------------------------------------------------------------------------
    def inference_module(self) -> ReverseDistillationGraph:
        graph = ReverseDistillationGraph(self.encoder_, self.bottleneck_, self.decoder_, self.model_input_size,
                                         self.blur_sigma)
        return self.tiled(graph)

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] at the input size → (B, H, W) maps (eval mode, no grad)."""
        return self.inference_module().eval()(images.to(self.device))[1]
