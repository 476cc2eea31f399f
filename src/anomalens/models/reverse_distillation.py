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

RD++ — Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR 2023 (``variant="rd++"``):
6. Multiple projection layers (MPL, Sec. 3.1): a trainable φ_k between E's level k and the OCBE, which sees
   φ_k(f_E^k); D still rebuilds f_E^k (L_KD = eq. 3, now through φ). φ_k (``ProjectionLayers``): four 3×3
   convolutions c → c/2 → c/4 → c/2 → c, each followed by instance normalisation and a leaky ReLU.
7. Pseudo-anomalies (Sec. 3.3): each training image x also enters as x̃, x plus a patch of fractal simplex noise
   (``components.simplex_noise``); f_k = E^k(x), f̃_k = E^k(x̃).
8. Losses on the projections (``projection_losses``), each a mean over the images i and the levels k:
       L_SSOT  = S_ε(σ(φ_k(f_i,k)), σ(φ_k(f_j,k)))    compact normal features: the debiased Sinkhorn divergence
                 (``components.optimal_transport``) between two normal images' softmaxed projections;
       L_recon = 1 − cos(φ_k(f̃_i,k), φ_k(f_i,k))      the projection removes the noise (per position);
       L_con   = max(0, cos(vec φ_k(f_i,k), vec f̃_i,k) − m)   projected normal features turn away from the noisy
                 image's raw ones;
       L = L_KD + λ (α L_SSOT + β L_recon + γ L_con) / (α + β + γ),
   with two Adam optimisers: OCBE and D at ``lr``, the projections at ``projection_lr``.
9. Inference: E → φ → OCBE → D and the map of eq. 4, as RD's (no noise, no other loss); the graph holds φ.
Defaults are the numbers of the authors' code (tientrandinh/Revisiting-Reverse-Distillation): λ = 0.2,
(α, β, γ) = (1, 0.01, 0.1), m = −0.5, projection lr 0.001 (OCBE and D 0.005), Adam β = (0.5, 0.999), Sinkhorn blur
0.05; noise of 6 octaves, persistence 0.6, strength 0.2 on [0, 1] images, patches 10-31 px at 256 px.

RD++'s deviations, and why:
- The SSOT measures: the paper does not say what σ(φ_k(f_i,k)) is a distribution over; here image i's level k
  is the uniform cloud of its positions' channel vectors, each softmaxed over the channels (bounded costs, so the
  blur has one meaning), paired with the next image of a random cyclic order of the batch. The authors' code hands
  the batch's flattened softmaxed vectors to GeomLoss as *one* cloud, against the same cloud shuffled — one
  measure against itself, whose debiased divergence is 0: its SSOT term is constant.
- Cost on a CPU: at most ``SSOT_POINTS`` random positions per image and level, and ε-scaling by 0.5 (GeomLoss'
  default; the authors' 0.95 runs 11× the iterations).
- The three terms are means over the levels, as the paper writes them; the authors' code sums them (3×).
- Every batch steps both optimisers; the authors' code zeroes the gradients before each backward but steps every
  second batch ("accumulation"), so half of its batches train nothing.
- Each image gets its own noise field (the authors' code seeds one per dataset: the same pattern, cropped
  differently, every time); the patch sizes and the noise period are fractions of the image side.
- Validation (the kept epoch): L_KD through φ on the normal hold-out images — what the map measures.
Training state, resumable checkpoints (``checkpoint``), preloading and batching: ``components.trained``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor, timm_architecture
from anomalens.errors import ConfigError
from anomalens.models.components.maps import check_blur_fits, gaussian_blur
from anomalens.models.components.optimal_transport import sinkhorn_divergence
from anomalens.models.components.reverse_resnet import BLOCKS, OneClassBottleneck, ReverseDecoder
from anomalens.models.components.simplex_noise import add_simplex_patches
from anomalens.models.components.trained import TrainedDetector
from anomalens.models.components.training import descend
from anomalens.params import Choice, Float, Floats, Int, Ints, Text
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

EPOCHS = 20  # the CPU default; the paper trains 200
# The reference's decoder per block kind: (OCE blocks, decoder depths from the deepest level up).
REFERENCE_DEPTHS = {"bottleneck": (3, (3, 4, 6)), "basic": (2, (2, 2, 2))}
_RESNET_BOTTLENECK = ("resnet50", "resnet101", "resnet152", "wide_resnet", "resnext")
VARIANTS = ("rd", "rd++")
SSOT_POINTS = 128  # positions per image and level in L_SSOT (a random subset of larger levels: the CPU's budget)
SINKHORN_BLUR, SINKHORN_SCALING = 0.05, 0.5  # ε = blur²: the authors' blur; GeomLoss' default ε-scaling


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


class ProjectionLayers(nn.Module):
    """RD++'s MPL (Sec. 3.1): per encoder level of c channels, 3×3 convolutions c → c/2 → c/4 → c/2 → c, each
    followed by instance normalisation and a leaky ReLU (the authors' code)."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()

        def projection(c: int) -> nn.Sequential:
            widths = (c, max(1, c // 2), max(1, c // 4), max(1, c // 2), c)
            layers: list[nn.Module] = []
            for cin, cout in zip(widths, widths[1:]):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.LeakyReLU()]
            return nn.Sequential(*layers)

        self.levels = nn.ModuleList(projection(c) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(f) for project, f in zip(self.levels, features, strict=True)]


def ssot_loss(projected: list[torch.Tensor], points: int = SSOT_POINTS) -> torch.Tensor:
    """L_SSOT: the mean over levels and images of S_ε between image i's and its partner's clouds of softmaxed
    channel vectors (at most ``points`` random positions); partners: the next image of a random cyclic order."""
    order = torch.randperm(projected[0].shape[0])
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # never the image itself
    total = 0
    for level in projected:
        cloud = torch.softmax(level.flatten(2), dim=1).transpose(1, 2)  # (B, positions, channels)
        if cloud.shape[1] > points:
            cloud = cloud[:, torch.randperm(cloud.shape[1])[:points].to(cloud.device)]
        total = total + sinkhorn_divergence(cloud, cloud[partner.to(cloud.device)], SINKHORN_BLUR, SINKHORN_SCALING).mean()
    return total / len(projected)


def projection_losses(projected: list[torch.Tensor], projected_noisy: list[torch.Tensor],
                      encoded_noisy: list[torch.Tensor], margin: float) -> dict[str, torch.Tensor]:
    """RD++'s L_SSOT, L_recon and L_con (module docstring, 8.), each a mean over images and levels."""
    levels = len(projected)
    reconstruction = sum((1 - F.cosine_similarity(noisy, normal, dim=1)).mean()
                         for noisy, normal in zip(projected_noisy, projected, strict=True)) / levels
    contrast = sum(F.relu(F.cosine_similarity(normal.flatten(1), noisy.flatten(1), dim=1) - margin).mean()
                   for normal, noisy in zip(projected, encoded_noisy, strict=True)) / levels
    return {"ssot": ssot_loss(projected), "reconstruction": reconstruction, "contrast": contrast}


class ReverseDistillationGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): E, (RD++: φ,) OCBE, D, the map of eq. 4 and its maximum."""

    def __init__(self, encoder: FeatureExtractor, bottleneck: OneClassBottleneck, decoder: ReverseDecoder,
                 input_size: tuple[int, int], blur_sigma: float, projection: ProjectionLayers | None = None):
        super().__init__()
        self.encoder, self.bottleneck, self.decoder, self.projection = encoder, bottleneck, decoder, projection
        self.input_size, self.blur_sigma = tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encoder(images)
        code = self.bottleneck(encoded if self.projection is None else self.projection(encoded))
        decoded = self.decoder(code, [f.shape[-2:] for f in encoded])
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
        "variant": Choice("rd", VARIANTS, "rd: Deng & Li 2022; rd++: Tien et al. 2023, projection layers before the "
                          "bottleneck trained on simplex-noise pseudo-anomalies (SSOT, reconstruction, contrast losses)"),
        "projection_weight": Float(0.2, "rd++: λ, the weight of the projection losses beside L_KD (the authors' code: "
                                   "0.2)", low=0.0),
        "ssot_weight": Float(1.0, "rd++: α, the weight of the optimal-transport compactness loss L_SSOT (the authors' "
                             "code: 1)", low=0.0),
        "reconstruction_weight": Float(0.01, "rd++: β, the weight of L_recon, noisy vs normal projections (the "
                                       "authors' code: 0.01)", low=0.0),
        "contrast_weight": Float(0.1, "rd++: γ, the weight of L_con, normal projections vs noisy features (the "
                                 "authors' code: 0.1)", low=0.0),
        "contrast_margin": Float(-0.5, "rd++: m of L_con = max(0, cos - m) (the authors' code: -0.5)", low=-1.0,
                                 high=1.0),
        "projection_lr": Float(0.001, "rd++: Adam learning rate of the projection layers (the authors' code: 0.001)",
                               low=0.0, low_open=True),
        "noise_strength": Float(0.2, "rd++: the simplex noise's factor, added to images in [0, 1] (the authors' "
                                "code: 0.2)", low=0.0),
        "noise_extent": Floats((0.04, 0.125), "rd++: sides of the noise patch as shares of the image's, drawn in "
                               "[low, high) (the authors' code: 10-31 px at 256 px)", low=0.0, high=1.0,
                               low_open=True, length=2),
        "noise_octaves": Int(6, "rd++: octaves of the fractal simplex noise, each half the period of the last (the "
                             "authors' code: 6)", low=1),
        "noise_persistence": Float(0.6, "rd++: amplitude ratio of successive octaves (the authors' code: 0.6)",
                                   low=0.0, high=1.0),
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)
        if self.noise_extent[0] > self.noise_extent[1]:
            raise ConfigError(f"{self.name}: noise_extent must be [low, high] with low <= high, "
                              f"got {list(self.noise_extent)}")
        if self.ssot_weight + self.reconstruction_weight + self.contrast_weight == 0:
            raise ConfigError(f"{self.name}: ssot_weight, reconstruction_weight and contrast_weight are all 0; "
                              "set projection_weight=0 to train the projections by L_KD alone")

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
        self.encoder_ = FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)
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
        if self.variant == "rd++":
            self.projection_ = ProjectionLayers(channels).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        networks = {"bottleneck": self.bottleneck_, "decoder": self.decoder_}  # the encoder stays as pretrained
        return {**networks, "projection": self.projection_} if self.variant == "rd++" else networks

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            encoded = self.encoder_(images.to(self.device))
        code = self.bottleneck_(self.projection_(encoded) if self.variant == "rd++" else encoded)
        return encoded, self.decoder_(code, [f.shape[-2:] for f in encoded])

    # -- training (Sec. 4.1, eq. 3; RD++ 8.) ------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        parameters = [*self.bottleneck_.parameters(), *self.decoder_.parameters()]
        optimizers = {"adam": torch.optim.Adam(parameters, lr=self.lr, betas=tuple(self.betas))}
        if self.variant == "rd++":
            optimizers["projection"] = torch.optim.Adam(self.projection_.parameters(), lr=self.projection_lr,
                                                        betas=tuple(self.betas))
        return optimizers

    def _rdpp_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RD++'s L and its terms on a batch x (in [0, 1], on the device). Each network's forward runs once, as a
        DistributedDataParallel wrapper needs: the normal and the noisy images go through as one batch."""
        # Torch's global generator: a resumed run (the checkpoint restores its state) replays the same noise.
        noisy = add_simplex_patches(x.cpu(), tuple(self.noise_extent), self.noise_octaves, self.noise_persistence,
                                    self.noise_strength).to(self.device)
        with torch.no_grad():
            features = self.encoder_(torch.cat([x, noisy]))
        projections = self.projection_(features)
        encoded, encoded_noisy = zip(*(f.chunk(2) for f in features))
        projected, projected_noisy = zip(*(p.chunk(2) for p in projections))
        decoded = self.decoder_(self.bottleneck_(list(projected)), [f.shape[-2:] for f in encoded])
        distillation = rd_loss(encoded, decoded)
        terms = projection_losses(list(projected), list(projected_noisy), list(encoded_noisy), self.contrast_margin)
        weights = {"ssot": self.ssot_weight, "reconstruction": self.reconstruction_weight,
                   "contrast": self.contrast_weight}
        projection = sum(weights[name] * terms[name] for name in weights) / sum(weights.values())
        return {"loss": distillation + self.projection_weight * projection, "distillation": distillation, **terms}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        return descend(self._rdpp_losses(x) if self.variant == "rd++" else {"loss": rd_loss(*self._features(x))},
                       optimizers)

    def _validation_loss(self, x: torch.Tensor) -> float:
        return rd_loss(*self._features(x)).item() * len(x)  # summed over the batch's images

    # -- score (eq. 4) ----------------------------------------------------------------------------
    def inference_module(self) -> ReverseDistillationGraph:
        graph = ReverseDistillationGraph(self.encoder_, self.bottleneck_, self.decoder_, self.model_input_size,
                                         self.blur_sigma, self.projection_ if self.variant == "rd++" else None)
        return self.tiled(graph)

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] at the input size → (B, H, W) maps (eval mode, no grad)."""
        return self.inference_module().eval()(images.to(self.device))[1]
