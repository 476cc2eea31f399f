"""STPM — Wang, Han, Ding & Huang, "Student-Teacher Feature Pyramid Matching for Anomaly Detection",
BMVC 2021.

1. Teacher: a pretrained CNN, frozen (eval mode). Student: the same architecture, randomly initialised
   and trained from scratch on normal images only. Both give the feature maps of layers 1-3 (timm
   ``out_indices`` (1, 2, 3): ResNet layer1-3; for EfficientNet(-Lite) the blocks ending at strides 4, 8
   and 16), on the teacher's input normalisation.
2. Loss (eq. 1-3): with F̂ the channel-wise L2-normalised features at position (i, j) of layer l,
       ℓ_l = 1 / (2 h_l w_l) · Σ_ij ‖F̂_t(i, j) − F̂_s(i, j)‖²,     L = Σ_l ℓ_l,
   summed over the images of a batch as the reference code does (``stpm_loss``; curves show it per image).
   SGD, lr 0.4, momentum 0.9, weight decay 1e-4,
   batch 32, 100 epochs (Sec. 4.1).
3. Test (eq. 4-5): per layer and position, 1 − cos(F_t, F_s) (= ½‖F̂_t − F̂_s‖², computed that way so it
   is never negative), upsampled bilinearly to the input size and *multiplied* across layers — as in the
   paper, the authors' code and anomalib (none of them sums). No Gaussian blur in the paper or its code
   (``blur_sigma`` = 0; set it > 0 to smooth). Image score = maximum of the map. Teacher, student and
   eq. 4-5 are one module, ``STPMGraph`` (``inference_module()``): what ``predict`` runs and what is exported.

Training protocol: a seeded ``validation_fraction`` of the fit images is held out; after each epoch the
loss of eq. 3 on it is the validation loss, and the student of the best epoch is kept (the authors hold out
20 % and select on the mean anomaly map of those images, which is the same idea). ``patience`` = None
trains all ``epochs`` as the paper does; set it to stop after that many epochs without improvement.
``checkpoint`` = a file path saves the training state after each epoch and resumes from it. The epoch
whose student is kept is ``kept_epoch_``. Training images are decoded once and kept in memory as float32
when they take at most 2 GiB (≈ 2,700 images at 256 px); larger sets are decoded batch by batch each
epoch (``components.trained``, which also owns the seeded batching: a trailing batch of one image joins
the previous one).

Weight decay: the paper's 1e-4 is the default (anomalib uses 1e-3). It matters a lot on a short budget:
measured at 10 epochs on the synthetic categories (120 images, 256 px, efficientnet_lite0), 1e-3 gives
image AUROC brick 0.951 / coffee 0.903 / chelsea 0.908 where 1e-4 gives 0.928 / 0.698 / 0.462 (three seeds
on chelsea: 0.46-0.56); at the paper's 100 epochs 1e-4 reaches 1.000 on chelsea
(benchmarks/results/stpm_settings). With few epochs, try ``weight_decay=1e-3``.

Deviations: the default backbone is the bundled, offline ``efficientnet_lite0`` (the paper: ResNet-18,
usable here with ``backbone="resnet18"`` and its weights from timm or a local file). Eq. 1 is
implemented as printed (with its ½, as anomalib has it), summed over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor, create_backbone_model, drop_unused_blocks
from anomalens.models.components.maps import check_blur_fits, upsample_and_blur
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Float, Int, Ints, Text
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING


def _position_errors(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, (B, h_l, w_l) maps of ½‖F̂_t − F̂_s‖² = 1 − cos(F_t, F_s)."""
    return [
        0.5 * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(1)
        for t, s in zip(teacher, student, strict=True)
    ]


def stpm_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 1-3: Σ_l 1/(2 h_l w_l) Σ_ij ‖F̂_t − F̂_s‖², *summed* over the images of the batch (a scalar).

    The sum is the reference implementations' reduction (``MSELoss(reduction="sum")``, anomalib's too):
    the paper's lr 0.4 goes with it. A batch mean would make every step 32× smaller at batch 32.
    """
    return sum(err.mean(dim=(1, 2)) for err in _position_errors(teacher, student)).sum()


def stpm_map(teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Eq. 4-5: (B, H, W) product over layers of the upsampled 1 − cos(F_t, F_s) maps."""
    amap = None
    for err in _position_errors(teacher, student):
        up = upsample_and_blur(err, size, 0.0)  # bilinear only
        amap = up if amap is None else amap * up
    return amap


class STPMGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): teacher and student features, eq. 4-5, optional blur,
    score = the map's maximum."""

    def __init__(self, teacher: FeatureExtractor, student: nn.Module, input_size: tuple[int, int], blur_sigma: float):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.input_size, self.blur_sigma = tuple(input_size), blur_sigma

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self.teacher(images)
        # The student sees the teacher's input normalisation, so both match the same pixels.
        student = self.student(self.teacher.normalise(images))
        amap = stpm_map(teacher, student, self.input_size)
        if self.blur_sigma:
            amap = upsample_and_blur(amap, self.input_size, self.blur_sigma)
        return amap.flatten(1).amax(1), amap


@register_detector
class STPM(TrainedDetector):
    """Student trained to match a pretrained teacher's feature pyramid; anomalies where they disagree."""

    name = "stpm"
    score_is_map_max = True
    tiles = True  # tile_size / tile_overlap: the student learns the teacher on tiles (anomalens.tiling)
    holdout_validates = True  # the threshold hold-out is the validation set (see the module docstring)
    hyperparameters = {
        "backbone": Text(DEFAULT_BACKBONE, "teacher and student architecture: a bundled or timm backbone name"),
        "weights": Text(None, "teacher weights: null = bundled/timm pretrained, or a file path", optional=True),
        "layers": Ints((1, 2, 3), "backbone levels whose features are matched", low=0),
        "epochs": Int(100, "training epochs (Sec. 4.1)", low=1),
        "batch_size": Int(32, "images per training (and scoring) batch", low=1),
        "lr": Float(0.4, "SGD learning rate", low=0.0, low_open=True),
        "momentum": Float(0.9, "SGD momentum", low=0.0),
        "weight_decay": Float(1e-4, "SGD weight decay (the paper's; anomalib uses 1e-3)", low=0.0),
        "validation_fraction": Float(
            0.1, "> 0: the validation loss selects the best epoch, on the threshold hold-out when there is one, "
            "else on this share of the fit images; 0: keep the last epoch", low=0.0, high=0.9),
        **EARLY_STOPPING,
        "blur_sigma": Float(0.0, "Gaussian blur of the map in pixels; the paper uses none", low=0.0),
    }

    def _check_params(self) -> None:
        check_blur_fits(self.name, self.model_input_size, self.blur_sigma)

    # -- networks -------------------------------------------------------------------------------
    def _build_networks(self) -> None:
        self.teacher_ = FeatureExtractor.prepared(self.backbone, self.layers, self.weights, device=self.device)
        # The student: same architecture and layers, random init (trained from scratch, Sec. 3.1).
        self.student_ = drop_unused_blocks(create_backbone_model(
            self.backbone, weights="random", features_only=True, out_indices=self.layers
        )).to(self.device)

    def _networks(self) -> dict[str, nn.Module]:
        return {"student": self.student_}  # the teacher stays as pretrained

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images = images.to(self.device)
        with torch.no_grad():
            teacher = self.teacher_(images)
        # The student sees the teacher's input normalisation, so both match the same pixels.
        student = self.student_(self.teacher_.normalise(images))
        return teacher, student

    # -- training (Sec. 3.1, eq. 3) -------------------------------------------------------------
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"sgd": torch.optim.SGD(
            self.student_.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )}

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        loss = stpm_loss(*self._features(x))
        optimizers["sgd"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["sgd"].step()
        return {"loss": loss.item() / len(x)}  # per image, comparable with val_loss

    def _validation_loss(self, x: torch.Tensor) -> float:
        return stpm_loss(*self._features(x)).item()

    # -- score (eq. 4-5) ------------------------------------------------------------------------
    def inference_module(self) -> STPMGraph:
        return self.tiled(STPMGraph(self.teacher_, self.student_, self.model_input_size, self.blur_sigma))

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] at the input size → (B, H, W) maps (eval mode, no grad)."""
        return self.inference_module().eval()(images.to(self.device))[1]
