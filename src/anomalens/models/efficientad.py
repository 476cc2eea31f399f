"""EfficientAD — Batzner, Heckler & König, "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024.

1. Teacher T: a patch description network (PDN, Sec. 3.1) distilled from a pretrained network's features,
   frozen. Its output is normalised per channel with the mean μ and standard deviation σ of T over the
   training images (Algorithm 1, lines 1-4): T̂(I) = (T(I) − μ) / σ, C channels (the paper: 384).
2. Student S: a PDN of the same size with 2C output channels, trained from scratch. Its first C channels
   predict T̂ (Sec. 3.2), the last C predict the autoencoder (Sec. 3.3).
3. Hard-feature loss (Sec. 3.2): D = (T̂(I) − S(I)[:C])²; d_hard = the ``hard_quantile`` (0.999) quantile of
   D's elements; L_hard = mean of the elements D ≥ d_hard.
   Pretraining penalty: L_ST = L_hard + (1 / (C h w)) Σ S(P)[:C]² for a penalty image P (the paper: an
   ImageNet image; here ``penalty_images``).
4. Autoencoder A (Sec. 3.3) on an augmented image I' (one of brightness, contrast, saturation jitter, factor
   0.8-1.2): L_AE = mean (T̂(I') − A(I'))², L_STAE = mean (A(I') − S(I')[C:])². Loss L = L_ST + L_AE + L_STAE.
   Adam, lr 1e-4, weight decay 1e-5, batch 1, 70,000 steps, lr × 0.1 after 95 % of them (Sec. 4.2).
5. Test (Algorithm 2): M_ST = mean_c (T̂(I) − S(I)[:C])², M_AE = mean_c (A(I) − S(I)[C:])². Quantile
   normalisation on held-out normal images: with q_a, q_b the 0.9 and 0.995 quantiles of every pixel of their
   maps, M̂ = 0.1 (M − q_a) / (q_b − q_a), for both maps; M = ½ M̂_ST + ½ M̂_AE, padded by the cells the PDN
   does not cover (4 at 256 px, as in the authors' code) and resized bilinearly to the image size. Image
   score = the maximum of M. Deviation: the authors pad the *normalised* map with 0 — the 90 % quantile q_a of
   normal pixels, above most of them — so the uncovered border (23 % of a 256 px map, 44 % at 128 px) outranks
   most normal pixels, and every normal image whose map stays below q_a gets the score 0, tied. Here the raw
   maps are padded with a zero distance before the normalisation (as anomalib does): the border is below
   every covered pixel. Re-scoring the same fitted runs (benchmarks/results/compare_efficientad/border.md)
   moved pixel AUROC from 0.609 to 0.781 on average at 128 px (anomalib 0.790), image AUROC unchanged.
   Second deviation (``quantile_pixels``): "every pixel of their maps" is read as every pixel of the map that
   is scored — padded and resized to the image, the border's zero distance included (as anomalib) — where the
   authors' code takes the PDN's output cells only (``quantile_pixels="grid"``). The same fitted networks,
   3 seeds × 5 categories (benchmarks/results/efficientad_gap): image AUROC +0.006 on the mean (12 of 15 runs
   up or level), pixel AUROC +0.001. Runs saved before this default read as "grid" (``persistence``).
   Teacher, student, autoencoder and all of step 5 are one module, ``EfficientADGraph``
   (``inference_module()``): what ``predict`` runs and what is exported.

Teacher (the ``teacher`` parameter). The paper's teacher is a PDN distilled on ImageNet from a
WideResNet-101; neither is on an offline machine. ``anomalens distill-teacher`` runs that distillation
(``models.components.pdn.distil_teacher``) on any image pool and writes a ``.safetensors`` file this
parameter accepts. The default — chosen by measurement, docs/detectors/efficientad.md — is the bundled
EfficientNet-Lite0's own early levels (``teacher_layers`` (1, 2): strides 4 and 8, 24 + 40 = 64 channels)
resampled onto the PDN's stride-4 grid: it needs no distillation and no file, and it is cheap to run (the
student, a full PDN, is the cost). What that costs against the paper's setup: the teacher is not a PDN, so the
student cannot match it exactly on normal images (its receptive field differs), and C is 64, not 384.

Penalty images (``penalty_images``): the paper's are ImageNet images; by default here the 16 photos that
ship with scikit-image and scikit-learn (without the five the synthetic benchmark categories are cut from),
random crops at the input size, 30 % grey, as the authors' transform; or any folder; ``none`` disables it.
A step draws one crop per training image of the batch (``penalty_batch`` = null: the paper's one image per step at
batch 1, at any batch size), or ``penalty_batch`` crops: the student runs on them too, so they cost time and
memory in proportion (anomalib draws one image per step, whatever the batch).

Quantile normalisation: on the threshold hold-out (held-out normal images: the paper's validation set),
else on the validation split, else on the training images.

Deviations: ``epochs`` replaces the step count (a step = one batch: at batch 1 the paper's 70,000 steps are
70,000 / N epochs, 583 for N = 120). The paper's PDN is heavy on a CPU (measured here: one 256-px student
forward ≈ 2-5 s on 2 shared cores, docs/detectors/efficientad.md), so the default budget is a CPU one,
``epochs`` = 2, far from the paper's; the lr drops at the first epoch boundary at or after 95 % of the
epochs (so not within a budget under 20 epochs). The autoencoder's sizes are the paper's fractions of the
image size (identical at 256 px). The elements at or above d_hard are found with ``kthvalue`` (the same
elements as ``torch.quantile``, which stops at 16 M elements).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomalens.backbones import FeatureExtractor
from anomalens.errors import ConfigError
from anomalens.models.components.pdn import (
    BackboneTeacher,
    PatchAutoencoder,
    PatchDescriptionNetwork,
    grid_margins,
    image_pool,
    load_teacher,
    pdn_from_state,
    random_crops,
)
from anomalens.models.components.trained import TrainedDetector
from anomalens.params import Choice, Float, Int, Ints, Text
from anomalens.registry import register_detector
from anomalens.models.components.shared_params import EARLY_STOPPING

QUANTILE_LOW, QUANTILE_HIGH = 0.9, 0.995  # Algorithm 2: q_a and q_b, mapped to 0 and 0.1
MIN_SIDE = 64  # the autoencoder's five stride-2 convolutions and the PDN's 33-px patches need this much


def is_teacher_file(teacher: str) -> bool:
    return Path(teacher).suffix == ".safetensors"


def hard_feature_loss(distance: torch.Tensor, quantile: float) -> torch.Tensor:
    """Sec. 3.2: the mean of the elements of ``distance`` at or above its ``quantile`` quantile."""
    flat = distance.flatten()
    # The smallest element at or above torch.quantile's value: the same elements count, at any size.
    rank = int(np.ceil(quantile * (flat.numel() - 1))) + 1
    d_hard = flat.detach().kthvalue(rank).values
    return flat[flat >= d_hard].mean()


def colour_jitter(images: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Sec. 3.3's autoencoder augmentation: per image, one of brightness, contrast or saturation changed by a
    random factor in [1 − strength, 1 + strength] (torchvision's ColorJitter formulas), clamped to [0, 1]."""
    out = []
    for image in images:
        factor = 1 + strength * (2 * float(torch.rand(())) - 1)
        kind = int(torch.randint(3, ()))
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
        if kind == 0:
            image = image * factor
        elif kind == 1:
            image = grey.mean() + factor * (image - grey.mean())
        else:
            image = grey + factor * (image - grey)
        out.append(image.clamp(0, 1))
    return torch.stack(out)


class EfficientADGraph(nn.Module):
    """Images in [0, 1] → (image scores, anomaly maps): Algorithm 2 (module docstring, step 5)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, autoencoder: nn.Module, teacher_mean: torch.Tensor,
                 teacher_std: torch.Tensor, map_quantiles: torch.Tensor, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.teacher, self.student, self.autoencoder = teacher, student, autoencoder
        self.register_buffer("teacher_mean", teacher_mean)
        self.register_buffer("teacher_std", teacher_std)
        self.register_buffer("map_quantiles", map_quantiles)  # q_a^ST, q_b^ST, q_a^AE, q_b^AE
        self.input_size = tuple(input_size)
        self.margins = grid_margins(self.input_size)

    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_ST, M_AE) on the PDN grid, before the quantile normalisation."""
        teacher = (self.teacher(images) - self.teacher_mean) / self.teacher_std
        student = self.student(images)
        channels = teacher.shape[1]
        map_st = (teacher - student[:, :channels]).pow(2).mean(1)
        map_ae = (self.autoencoder(images) - student[:, channels:]).pow(2).mean(1)
        return map_st, map_ae

    def on_image(self, grid_map: torch.Tensor) -> torch.Tensor:
        """(B, h, w) map on the PDN grid → (B, H, W): padded by the uncovered border as a zero distance and
        resized bilinearly to the input, as ``forward`` places the normalised map (anomalib's quantile pixels)."""
        return F.interpolate(F.pad(grid_map.unsqueeze(1), self.margins), size=self.input_size, mode="bilinear").squeeze(1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The uncovered border padded as a zero distance, before the normalisation (a deviation, module docstring)
        map_st, map_ae = (F.pad(m.unsqueeze(1), self.margins) for m in self.raw_maps(images))
        q = self.map_quantiles
        map_st = 0.1 * (map_st - q[0]) / (q[1] - q[0])
        map_ae = 0.1 * (map_ae - q[2]) / (q[3] - q[2])
        amap = F.interpolate(0.5 * map_st + 0.5 * map_ae, size=self.input_size, mode="bilinear").squeeze(1)
        return amap.flatten(1).amax(1), amap


@register_detector
class EfficientAD(TrainedDetector):
    """A PDN student mimics a teacher and an autoencoder; anomalies where they disagree (see the module)."""

    name = "efficientad"
    score_is_map_max = True
    tiles = True  # tile_size / tile_overlap: the networks learn on tiles (anomalens.tiling)
    holdout_validates = True  # with validation_fraction > 0 the threshold hold-out is the validation set
    hyperparameters = {
        "teacher": Text("efficientnet_lite0", "the teacher: a backbone name (its teacher_layers on the PDN grid; the "
                        "offline default) or a .safetensors PDN from 'anomalens distill-teacher' (the paper's kind)"),
        "teacher_layers": Ints((1, 2), "backbone levels that make a backbone teacher (strides 4, 8 for (1, 2))", low=0),
        "model_size": Choice("small", ("small", "medium"), "student PDN: small (EfficientAD-S) or medium (EfficientAD-M)"),
        "epochs": Int(2, "training epochs (the paper: 70,000 steps at batch 1, i.e. 70,000 / N epochs; 2 is a CPU "
                      "budget, see the docs)", low=1),
        "batch_size": Int(1, "images per training step (the paper: 1) and per scoring batch", low=1),
        "lr": Float(1e-4, "Adam learning rate (× 0.1 after 95 % of the epochs)", low=0.0, low_open=True),
        "weight_decay": Float(1e-5, "Adam weight decay", low=0.0),
        "hard_quantile": Float(0.999, "hard-feature loss: only distances at or above this quantile count", low=0.0, high=1.0),
        "penalty_images": Text(None, "pretraining-penalty images: null = the photos bundled with scikit-image and "
                               "scikit-learn, a folder of images, or 'none' (no penalty)", optional=True),
        "penalty_batch": Int(None, "penalty crops per training step: null = one per training image of the step (the "
                             "paper: one image per step at batch 1)", low=1, optional=True),
        "validation_fraction": Float(
            0.0, "> 0: the validation loss selects the best epoch, on the threshold hold-out when there is one; "
            "0: train every epoch and keep the last (the paper)", low=0.0, high=0.9),
        "quantile_pixels": Choice("image", ("image", "grid"), "pixels whose 0.9 / 0.995 quantiles normalise the maps: "
                                  "image = the padded map resized to the image, uncovered border included (anomalib; "
                                  "measured better, see the docs), grid = the PDN's output cells (the authors' code)"),
        **EARLY_STOPPING,
    }

    _training_records: Sequence | None = None  # set while training: the teacher statistics come from them
    _quantile_records: Sequence | None = None  # set by a fit with a hold-out: the quantiles come from them
    _saved_teacher: dict | None = None  # set while loading a run whose teacher is a PDN file

    def _check_params(self) -> None:
        if min(self.model_input_size) < MIN_SIDE:
            raise ConfigError(f"{self.name}: image (or tile) sides must be at least {MIN_SIDE} px, got {self.model_input_size}")

    # -- networks -------------------------------------------------------------------------------
    def _make_teacher(self) -> nn.Module:
        if self._saved_teacher is not None:
            return pdn_from_state(self._saved_teacher, "the run's teacher")
        if is_teacher_file(self.teacher):
            return load_teacher(self.teacher)
        extractor = FeatureExtractor.prepared(self.teacher, self.teacher_layers, image_size=self.model_input_size)
        return BackboneTeacher(extractor, self.model_input_size)

    def _build_networks(self) -> None:
        self.teacher_ = self._make_teacher().to(self.device).eval().requires_grad_(False)
        channels = self.teacher_.out_channels
        self.student_ = PatchDescriptionNetwork(self.model_size, 2 * channels).to(self.device)
        self.autoencoder_ = PatchAutoencoder(self.model_input_size, channels).to(self.device)
        self.teacher_mean_ = torch.zeros(1, channels, 1, 1, device=self.device)
        self.teacher_std_ = torch.ones(1, channels, 1, 1, device=self.device)
        self.map_quantiles_ = torch.tensor([0.0, 1.0, 0.0, 1.0], device=self.device)
        self._penalty_pool = None
        if self._training_records is not None:
            self._set_teacher_statistics(self._training_records)
            penalty = self.penalty_images
            if penalty not in (None, "none") and not Path(penalty).is_dir():  # checked at fit: a saved run loads without it
                raise ConfigError(f"{self.name}: penalty_images: {penalty}: not a folder (or null, or 'none')")
            if penalty != "none":
                self._penalty_pool = image_pool(penalty, self.model_input_size, seed=self.params["seed"])

    def _networks(self) -> dict[str, nn.Module]:
        return {"student": self.student_, "autoencoder": self.autoencoder_}  # the teacher stays frozen

    def _set_teacher_statistics(self, records: Sequence) -> None:
        """Algorithm 1, lines 1-4: μ and σ of every teacher channel over the training images."""
        total, squares, count = 0.0, 0.0, 0
        with torch.no_grad():
            for images in self._image_batches(records, False, "teacher statistics"):
                out = self.teacher_(images).double()
                total = total + out.sum(dim=(0, 2, 3))
                squares = squares + out.pow(2).sum(dim=(0, 2, 3))
                count += out.shape[0] * out.shape[2] * out.shape[3]
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
        self.teacher_mean_ = mean.float().view(1, -1, 1, 1).to(self.device)
        self.teacher_std_ = std.float().view(1, -1, 1, 1).to(self.device)

    # -- training (Sec. 3.2-3.3) ------------------------------------------------------------------
    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool):
        # The quantiles come from held-out normal images, as the paper's from its validation set.
        self._quantile_records = holdout if holdout is not fit_records else None
        try:
            return super()._fit_and_score_holdout(fit_records, holdout, progress)
        finally:
            self._quantile_records = None

    def _train(self, fit_records: Sequence, val_records: Sequence, progress: bool) -> None:
        self._training_records = fit_records
        try:
            super()._train(fit_records, val_records, progress)
        finally:
            self._training_records = None
            self._penalty_pool = None
        self._set_map_quantiles(self._quantile_records or val_records or fit_records)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        parameters = [*self.student_.parameters(), *self.autoencoder_.parameters()]
        return {"adam": torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)}

    def _schedulers(self, optimizers: dict) -> dict:
        # The first epoch boundary at or after 95 % of the budget: never earlier than the paper's drop (rounding
        # down would run the last epoch of any budget under 20 epochs at lr / 10: half of the default 2).
        drop = math.ceil(95 * self.epochs / 100)
        return {"lr_drop": torch.optim.lr_scheduler.MultiStepLR(optimizers["adam"], milestones=[drop], gamma=0.1)}

    def _losses(self, images: torch.Tensor, augmented: torch.Tensor, penalty: torch.Tensor | None) -> dict[str, torch.Tensor]:
        n, p = len(images), 0 if penalty is None else len(penalty)
        with torch.no_grad():
            teacher = (self.teacher_(torch.cat([images, augmented])) - self.teacher_mean_) / self.teacher_std_
        channels = teacher.shape[1]
        # One student call for the three inputs (no BatchNorm in a PDN: batching changes nothing), so a
        # data-parallel wrapper sees one forward per backward.
        student = self.student_(torch.cat([images, augmented] + ([penalty] if p else [])))
        autoencoder = self.autoencoder_(augmented)
        losses = {"hard": hard_feature_loss((teacher[:n] - student[:n, :channels]).pow(2), self.hard_quantile)}
        if p:
            losses["penalty"] = student[2 * n:, :channels].pow(2).mean()
        losses["ae"] = (teacher[n:] - autoencoder).pow(2).mean()
        losses["stae"] = (autoencoder - student[n: 2 * n, channels:]).pow(2).mean()
        return losses

    def _train_step(self, x: torch.Tensor, optimizers: dict) -> dict[str, float]:
        penalty = None
        if self._penalty_pool is not None:
            count = self.penalty_batch or len(x)
            penalty = random_crops(self._penalty_pool, count, self.model_input_size).to(self.device)
        losses = self._losses(x, colour_jitter(x), penalty)
        loss = sum(losses.values())
        optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["adam"].step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _validation_loss(self, x: torch.Tensor) -> float:
        return float(sum(self._losses(x, x, None).values())) * len(x)

    def _set_map_quantiles(self, records: Sequence) -> None:
        """Algorithm 2's q_a, q_b of M_ST and M_AE over every pixel of ``records``' maps."""
        graph = self._graph().eval()
        st, ae = [], []
        with torch.inference_mode():
            for images in self._image_batches(records, False, "map quantiles"):
                map_st, map_ae = graph.raw_maps(images)
                if self.quantile_pixels == "image":
                    map_st, map_ae = graph.on_image(map_st), graph.on_image(map_ae)
                st.append(map_st.flatten().cpu().numpy())
                ae.append(map_ae.flatten().cpu().numpy())
        st, ae = np.concatenate(st), np.concatenate(ae)
        q = [*np.quantile(st, [QUANTILE_LOW, QUANTILE_HIGH]), *np.quantile(ae, [QUANTILE_LOW, QUANTILE_HIGH])]
        for low in (0, 2):  # identical maps (a constant image set) would divide by zero
            q[low + 1] = max(q[low + 1], q[low] + 1e-12)
        self.map_quantiles_ = torch.tensor(q, dtype=torch.float32, device=self.device)

    # -- score (Algorithm 2) ----------------------------------------------------------------------
    def _graph(self) -> EfficientADGraph:
        return EfficientADGraph(self.teacher_, self.student_, self.autoencoder_, self.teacher_mean_,
                                self.teacher_std_, self.map_quantiles_, self.model_input_size)

    def inference_module(self) -> nn.Module:
        return self.tiled(self._graph())

    # -- persistence ------------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"teacher_mean": self.teacher_mean_, "teacher_std": self.teacher_std_, "map_quantiles": self.map_quantiles_}
        if isinstance(self.teacher_, PatchDescriptionNetwork):  # the run keeps its teacher: the file may move
            tensors.update({f"teacher.{k}": v for k, v in self.teacher_.state_dict().items()})
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        saved = {k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")}
        self._saved_teacher = saved or None
        try:
            super()._load_state_tensors(tensors)
        finally:
            self._saved_teacher = None

    def _load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.teacher_mean_ = tensors["teacher_mean"].to(self.device)
        self.teacher_std_ = tensors["teacher_std"].to(self.device)
        self.map_quantiles_ = tensors["map_quantiles"].to(self.device)
