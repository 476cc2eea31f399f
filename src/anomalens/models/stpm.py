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
   (``blur_sigma`` = 0; set it > 0 to smooth). Image score = maximum of the map.

Training protocol: a seeded ``validation_fraction`` of the fit images is held out; after each epoch the
loss of eq. 3 on it is the validation loss, and the student of the best epoch is kept (the authors hold out
20 % and select on the mean anomaly map of those images, which is the same idea). ``patience`` = None
trains all ``epochs`` as the paper does; set it to stop after that many epochs without improvement.
``checkpoint`` = a file path saves the training state after each epoch and resumes from it.
Training images are decoded once and kept in memory as float32 when they take at most ``PRELOAD_BYTES``
(2 GiB: ≈ 2,700 images at 256 px); larger sets are decoded batch by batch each epoch.

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

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anomalens.backbones import DEFAULT_BACKBONE, FeatureExtractor, create_backbone_model, drop_unused_blocks
from anomalens.data import TensorImageDataset, iterate_batches, split_records
from anomalens.detector import Detector, register_detector
from anomalens.errors import ConfigError
from anomalens.models.components.maps import upsample_and_blur
from anomalens.models.components.training import TrainingSetup, load_module_tensors, module_tensors, train

PRELOAD_BYTES = 2 * 1024**3


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


class _Images:
    """Training images by index: one preloaded tensor when small enough, else decoded per batch."""

    def __init__(self, records: Sequence, image_size, progress: bool, desc: str):
        self.dataset = TensorImageDataset(records, image_size)
        h, w = self.dataset.image_size
        self.tensor = None
        if len(records) * 3 * h * w * 4 <= PRELOAD_BYTES:
            batches = iterate_batches(records, image_size, 64, desc=desc if progress else None)
            self.tensor = torch.cat([b["image"] for b in batches])

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, index: np.ndarray) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[torch.as_tensor(index, dtype=torch.long)]
        return torch.stack([self.dataset[int(i)]["image"] for i in index])


@register_detector
class STPM(Detector):
    """Student trained to match a pretrained teacher's feature pyramid; anomalies where they disagree."""

    name = "stpm"
    score_is_map_max = True
    defaults = {
        "backbone": DEFAULT_BACKBONE,
        "weights": None,  # teacher weights: None = bundled/timm pretrained; a file path
        "layers": (1, 2, 3),
        "epochs": 100,
        "batch_size": 32,
        "lr": 0.4,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "validation_fraction": 0.1,  # >0: validation loss selects the best epoch (on the threshold hold-out
        # when there is one, else on this share of the fit images); 0: keep the last epoch
        "patience": None,  # epochs without validation improvement before stopping; None = never
        "checkpoint": None,  # file to save training state to after each epoch and resume from
        "blur_sigma": 0.0,  # Gaussian blur of the map in pixels; the paper uses none
    }

    # -- modules --------------------------------------------------------------------------------
    def _build(self) -> None:
        if int(self.epochs) < 1:
            raise ConfigError(f"stpm: epochs must be >= 1, got {self.epochs}")
        self.teacher_ = FeatureExtractor(self.backbone, self.layers, self.weights).to(self.device).optimize()
        # The student: same architecture and layers, random init (trained from scratch, Sec. 3.1).
        self.student_ = drop_unused_blocks(create_backbone_model(
            self.backbone, weights="random", features_only=True, out_indices=tuple(int(i) for i in self.layers)
        )).to(self.device)

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images = images.to(self.device)
        with torch.no_grad():
            teacher = self.teacher_(images)
        # The student sees the teacher's input normalisation, so both match the same pixels.
        student = self.student_(self.teacher_.normalise(images))
        return teacher, student

    # -- fit ------------------------------------------------------------------------------------
    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """The threshold hold-out doubles as the validation set (when ``validation_fraction`` > 0): the
        student trains on every other image instead of losing a second 10 % to a separate split."""
        if holdout is fit_records or float(self.validation_fraction) <= 0:
            return super()._fit_and_score_holdout(fit_records, holdout, progress)
        self._fit(fit_records, progress, val_records=holdout)
        return self._score(holdout, progress)

    def _fit(self, records: Sequence, progress: bool, val_records: Sequence | None = None) -> None:
        self._build()
        if val_records is None:
            fit_records, val_records = split_records(records, float(self.validation_fraction), int(self.seed), stream=1)
        else:
            fit_records = list(records)
        images = _Images(fit_records, self.image_size, progress, "stpm load")
        val_images = _Images(val_records, self.image_size, progress, "stpm load val") if val_records else None
        batch_size, seed = int(self.batch_size), int(self.seed)
        optimizer = torch.optim.SGD(
            self.student_.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

        def batches(epoch: int):
            # Seeded by (seed, epoch) alone, so a resumed run replays exactly the same order.
            order = np.random.default_rng((seed, 0, epoch)).permutation(len(images))
            for start in range(0, len(order), batch_size):
                yield {"image": images.take(order[start : start + batch_size])}

        def step(batch: dict) -> dict[str, float]:
            loss = stpm_loss(*self._features(batch["image"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.item() / len(batch["image"])}  # per image, comparable with val_loss

        def validate() -> float:
            total = 0.0
            for start in range(0, len(val_images), batch_size):
                chunk = val_images.take(np.arange(start, min(start + batch_size, len(val_images))))
                total += stpm_loss(*self._features(chunk)).item()
            return total / len(val_images)

        setup = TrainingSetup(
            modules={"student": self.student_},
            optimizers={"sgd": optimizer},
            step=step,
            batches=batches,
            validate=validate if val_images is not None else None,
        )
        result = train(setup, int(self.epochs), seed, self.patience, self.checkpoint, progress, desc="stpm")
        self.best_epoch_, self.history_ = result.kept_epoch, result.history

    # -- score ----------------------------------------------------------------------------------
    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] → (B, H, W) maps at the input size (eval mode, no grad)."""
        teacher, student = self._features(images)
        amap = stpm_map(teacher, student, tuple(images.shape[-2:]))
        return upsample_and_blur(amap, tuple(images.shape[-2:]), float(self.blur_sigma)) if self.blur_sigma else amap

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        self.student_.eval()
        scores, maps = [], []
        with torch.inference_mode():
            for batch in iterate_batches(records, self.image_size, self.batch_size, desc="stpm score" if progress else None):
                amap = self.anomaly_maps(batch["image"])
                maps.append(amap.float().cpu())
                scores.append(amap.flatten(1).max(1).values.cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    # -- persistence ----------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors({"student": self.student_})
        tensors["best_epoch"] = torch.tensor(self.best_epoch_)
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._build()
        load_module_tensors({"student": self.student_}, tensors, self.device)
        self.best_epoch_ = int(tensors["best_epoch"])
