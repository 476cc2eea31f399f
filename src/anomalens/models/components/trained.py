"""The base of every detector that trains networks: STPM, the MLP and convolutional autoencoders, the GANs.

``TrainedDetector`` owns everything the trained detectors share around the loop of ``training.train``,
so that a model file keeps only its networks, its optimisation step (the losses) and its score:

- validation split: a seeded ``validation_fraction`` of the fit images (``split_records(..., stream=1)``,
  a draw independent of the threshold hold-out) whose loss, after every epoch, chooses the kept epoch,
  drives early stopping (``patience``) and reduce-on-plateau schedules. With ``holdout_validates`` the
  threshold hold-out doubles as the validation set instead (STPM: no second share of images is lost).
  Detectors without a ``validation_fraction`` parameter train without validation (AnoGAN).
- preloading (``TrainingImages``): the training images are decoded once into one float32 tensor when it
  takes at most ``PRELOAD_BYTES`` (2 GiB: ≈ 2,700 RGB images at 256 px), else decoded batch by batch
  every epoch; both give the same tensors.
- batching: the order of epoch e is ``np.random.default_rng((seed, 0, e)).permutation(n)`` — the seed
  and the epoch alone, so that a resumed run replays it — cut into batches of ``batch_size``; a trailing
  batch of one image joins the previous one (``batch_slices``): every image is used and BatchNorm never
  sees a batch of one. Validation images go through the same slices, in order.
- input scaling: images come in [0, 1]; ``network_range = "[-1, 1]"`` gives the networks 2x − 1 (the
  GANs' Normalize(0.5, 0.5), the range of a Tanh output) and maps their output back for ``reconstruct``;
  ``_augment`` changes training images before that (CAE).
- bookkeeping: ``history_`` (per-epoch curves of ``train``) and ``kept_epoch_``, the 0-based epoch whose
  weights the networks hold (the best validation epoch when it was restored, else the last one).
- saved tensors: every network (``module_tensors``), ``kept_epoch`` and a model's extras; runs saved
  before this base that call it ``best_epoch`` (STPM, the CAEs) still load.
- ``reconstruct()`` for the detectors that set ``reconstructs = True``.

What a subclass writes:
    _build_networks()          create its networks (``fit`` has seeded torch) as attributes
    _networks()                {name: module}: what trains, is checkpointed, saved and restored
    _optimizers()              {name: optimiser}; ``_schedulers(optimizers)`` optionally
    _train_step(x, optimizers) one optimisation step on a training batch → {loss name: float}
    _validation_loss(x)        the validation loss of a batch, summed over its images (if it validates)
    inference_module()         the fitted networks and the score as one nn.Module: images in [0, 1] →
                               (scores (B,), maps (B, H, W)) (``Detector.inference_module``); a model
                               without one may define ``_score_batch(images)`` instead (not exportable)
    _reconstruct_batch(x)      the networks' rebuild of x, in the network's scale (if it reconstructs)
where ``x`` is a batch as the networks see it (scaled, on the device).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from anomalens.data import TensorImageDataset, iterate_batches, split_records
from anomalens.detector import Detector
from anomalens.detector.normal_scores import CrossFit
from anomalens.models.components.training import (TrainingSetup, load_module_tensors, module_tensors,
                                                  multi_tensor_updates, train)
from anomalens.params import Int, Text

PRELOAD_BYTES = 2 * 1024**3


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) slices of ``batch_size``; a trailing slice of one item joins the previous
    one (when ``n mod batch_size == 1``; with ``batch_size`` 1 every slice has one item, as asked)."""
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else n) for i, start in enumerate(starts)]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` training images in ``epoch``: fixed by (seed, epoch) alone."""
    return np.random.default_rng((seed, 0, epoch)).permutation(n)


class TrainingPlan(Protocol):
    """How the processes of one fit share its training (``OneProcess``; ``anomalens.distributed.ddp``'s
    ``DataParallelPlan`` for one process of a torchrun job)."""

    checkpoint: str | None  # the job's own checkpoint file, used when no ``checkpoint`` parameter is given
    writes_checkpoints: bool
    replicates: bool  # networks run wrapped (``wrap``) while they train

    def shard_size(self, n: int) -> int: ...
    def epoch_indices(self, order: np.ndarray, epoch: int, seed: int) -> np.ndarray: ...
    def agree(self, value: Any) -> Any: ...
    def broadcast_module(self, module: nn.Module) -> None: ...
    def wrap(self, module: nn.Module) -> nn.Module: ...


class OneProcess:
    """The training plan of a fit in one process: every image in every epoch, nothing to share."""

    checkpoint = None
    writes_checkpoints = True
    replicates = False

    def shard_size(self, n: int) -> int:
        return n

    def epoch_indices(self, order: np.ndarray, epoch: int, seed: int) -> np.ndarray:
        return order

    def agree(self, value: Any) -> Any:
        return value

    def broadcast_module(self, module: nn.Module) -> None:
        """Nothing to broadcast to."""

    def wrap(self, module: nn.Module) -> nn.Module:
        return module


ONE_PROCESS = OneProcess()


class TrainingImages:
    """Images by index, in [0, 1]: one preloaded float32 tensor when it fits ``PRELOAD_BYTES``, else
    decoded on each ``take``."""

    def __init__(self, records: Sequence, image_size, channels: int, progress: bool = False, desc: str = ""):
        self.dataset = TensorImageDataset(records, image_size, channels)
        h, w = self.dataset.image_size
        self.tensor: torch.Tensor | None = None
        if len(self.dataset) and len(self.dataset) * channels * h * w * 4 <= PRELOAD_BYTES:
            batches = iterate_batches(self.dataset.records, image_size, 64, channels=channels, desc=desc if progress else None)
            self.tensor = torch.cat([b["image"] for b in batches])

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, index: np.ndarray) -> torch.Tensor:
        """(len(index), C, H, W) float32 images in [0, 1]."""
        if self.tensor is not None:
            return self.tensor[torch.as_tensor(index, dtype=torch.long)]
        return torch.stack([self.dataset[int(i)]["image"] for i in index])


class TrainedDetector(Detector):
    """A detector whose networks are trained on the normal images (see the module docstring).

    Class attributes:
        network_range: "[0, 1]" or "[-1, 1]", the scale the networks see images in.
        holdout_validates: the threshold hold-out doubles as the validation set (when
            ``validation_fraction`` > 0 and something is held out).
        min_training_images: fewer training images than this raise ValueError (2 where BatchNorm needs
            two images in every batch).
    Optional hyper-parameters read here when a subclass declares them: ``validation_fraction`` (0 when
    absent: no validation), ``patience`` (None), ``restore_best`` (True: keep the best validation epoch).
    """

    network_range: ClassVar[str] = "[0, 1]"
    holdout_validates: ClassVar[bool] = False
    min_training_images: ClassVar[int] = 1
    hyperparameters = {
        "epochs": Int(100, "training epochs (an upper bound when patience stops training early)", low=1),
        "checkpoint": Text(None, "file to save the training state to after every epoch and resume from", optional=True),
    }

    # -- what subclasses implement ----------------------------------------------------------------
    def _build_networks(self) -> None:
        raise NotImplementedError

    def _networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def _schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Learning-rate schedulers (a ReduceLROnPlateau is stepped with the validation loss)."""
        return {}

    def _train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        raise NotImplementedError

    def _validation_loss(self, x: torch.Tensor) -> float:
        """The validation loss of a batch, summed over its images (networks in eval mode, no grad)."""
        raise NotImplementedError(f"{self.name} defines no validation loss")

    def _score_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inference_module(self) -> nn.Module:
        """Default: ``_score_batch`` wrapped as a module (runs in Python, cannot be exported)."""
        return _ScoreBatchModule(self)

    def export_refusal(self) -> str | None:
        if type(self).inference_module is TrainedDetector.inference_module:
            return f"{self.name} defines no inference graph (only a Python scoring function)"
        return None

    def _reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """Training images (B, C, H, W) in [0, 1], on the CPU, before scaling: none by default."""
        return images

    def _training_finished(self, steps_per_epoch: int) -> None:
        """Called after training, with ``history_`` and ``kept_epoch_`` set."""

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors besides the networks and the kept epoch, to save."""
        return {}

    def _load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``_extra_tensors`` saved."""

    # -- settings ---------------------------------------------------------------------------------
    @property
    def image_channels(self) -> int:
        """Channels the images are decoded to: the ``channels`` parameter where declared, else RGB."""
        return self.params.get("channels", 3)

    def _to_network(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → the network's input scale."""
        return images * 2 - 1 if self.network_range == "[-1, 1]" else images

    def _from_network(self, values: torch.Tensor) -> torch.Tensor:
        """Network outputs → the [0, 1] image scale (not clamped)."""
        return (values + 1) / 2 if self.network_range == "[-1, 1]" else values

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, records: Any, progress: bool = True, *, cross_fit: CrossFit | None = None,
            data_parallel: TrainingPlan | None = None, abnormal: Any = None) -> "TrainedDetector":
        """``Detector.fit``; ``data_parallel``: the plan of one process of a data-parallel job, which an engine
        passes (``anomalens.distributed.DataParallel``); None: the whole fit in this process."""
        self._plan = data_parallel or ONE_PROCESS
        try:
            return super().fit(records, progress, cross_fit=cross_fit, abnormal=abnormal)
        finally:
            self._plan = ONE_PROCESS

    def validation_split(self, records: Sequence) -> tuple[list, list]:
        """(trained on, validation): the seeded ``validation_fraction`` of ``records`` (stream 1)."""
        return split_records(list(records), self.params.get("validation_fraction", 0.0), self.params["seed"], stream=1)

    def _fit(self, records: Sequence, progress: bool) -> None:
        self._train(*self.validation_split(records), progress)

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.holdout_validates and holdout is not fit_records and self.params.get("validation_fraction", 0.0) > 0:
            self._train(fit_records, holdout, progress)
            return self._score(holdout, progress)
        return super()._fit_and_score_holdout(fit_records, holdout, progress)

    def _train(self, fit_records: Sequence, val_records: Sequence, progress: bool) -> None:
        """Build the networks and train them on ``fit_records``, validating on ``val_records`` (if any)."""
        self._build_networks()
        channels = self.image_channels
        images = TrainingImages(fit_records, self.model_input_size, channels, progress, f"{self.name} load")
        if len(images) < self.min_training_images:
            raise ValueError(f"{self.name}: needs at least {self.min_training_images} training images, got {len(images)}")
        val_images = TrainingImages(val_records, self.model_input_size, channels, progress, f"{self.name} load val") if val_records else None
        optimizers = multi_tensor_updates(self._optimizers())
        setup = TrainingSetup(
            modules=self._networks(),
            optimizers=optimizers,
            step=lambda batch: self._train_step(self._network_batch(self._augment(batch["x"])), optimizers),
            batches=lambda epoch: self._epoch_batches(images, epoch),
            validate=None if val_images is None else lambda: self.agreed(self._mean_validation_loss(val_images)),
            schedulers=self._schedulers(optimizers),
            save_checkpoints=self._plan.writes_checkpoints,
        )
        with self._replicated_networks():  # DistributedDataParallel wrappers under a data-parallel plan (below)
            result = train(
                setup, self.setting("epochs"), self.params["seed"], self.params.get("patience"), self._training_checkpoint(),
                progress, desc=self.name, restore_best=self.params.get("restore_best", True),
            )
        self.history_, self.kept_epoch_ = result.history, result.kept_epoch
        self._training_finished(len(batch_slices(self._plan.shard_size(len(images)), self.setting("batch_size"))))

    def _epoch_batches(self, images: TrainingImages, epoch: int) -> Iterator[dict]:
        order = self._epoch_indices(len(images), epoch)
        for start, stop in batch_slices(len(order), self.setting("batch_size")):
            yield {"x": images.take(order[start:stop])}

    def _network_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self._to_network(images.to(self.device))

    def _mean_validation_loss(self, images: TrainingImages) -> float:
        total = 0.0
        for start, stop in batch_slices(len(images), self.setting("batch_size")):
            total += self._validation_loss(self._network_batch(images.take(np.arange(start, stop))))
        return total / len(images)

    # -- score and reconstruct ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        for module in self._networks().values():
            module.eval()
        with self._inference():
            yield

    def _image_batches(self, records: Sequence, progress: bool, what: str) -> Iterator[torch.Tensor]:
        """Batches of ``records`` in order, as (B, C, H, W) images in [0, 1] on the device."""
        desc = f"{self.name} {what}" if progress else None
        size, per_batch = self.sizing.batch_plan(records, self.setting("batch_size"))  # tiles, or working images
        for batch in iterate_batches(records, size, per_batch, channels=self.image_channels, desc=desc):
            yield batch["image"].to(self.device)

    def _rebuild(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → the networks' reconstructions in the [0, 1] scale (not clamped)."""
        return self._from_network(self._reconstruct_batch(self._to_network(images)))

    def reconstruct(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, reconstructions) as float32 (N, C, H, W) arrays in [0, 1], for inspection figures."""
        if not self.reconstructs:
            return super().reconstruct(records, progress)
        self._check_fitted()
        inputs, outputs = [], []
        with self._evaluating():
            for images in self._image_batches(list(records), progress, "reconstruct"):
                inputs.append(images.float().cpu())
                outputs.append(self._rebuild(images).clamp(0, 1).float().cpu())
        return torch.cat(inputs).numpy(), torch.cat(outputs).numpy()

    def preprocessing(self) -> dict:
        info = super().preprocessing()
        info["channels"] = "grayscale (ITU-R 601-2 luma)" if self.image_channels == 1 else "RGB"
        info["network_input"] = "[-1, 1] (2x - 1)" if self.network_range == "[-1, 1]" else "[0, 1]"
        return info

    # -- persistence --------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors(self._networks())
        if self.kept_epoch_ is not None:
            tensors["kept_epoch"] = torch.tensor(self.kept_epoch_)
        return {**tensors, **self._extra_tensors()}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._build_networks()
        load_module_tensors(self._networks(), tensors, self.device)
        # "best_epoch": the name STPM and the CAEs saved it under; AnoGAN runs saved before had neither.
        epoch = tensors.get("kept_epoch", tensors.get("best_epoch"))
        self.kept_epoch_ = None if epoch is None else int(epoch)
        self._load_extra_tensors(tensors)

    # -- data-parallel training ---------------------------------------------------------------------------
    # The training plan (``TrainingPlan``) of the fit in progress: ``OneProcess``, or the plan an engine passes
    # to ``fit`` (``anomalens.distributed.DataParallel``: one process of a torchrun job). Under a data-parallel
    # plan each process steps through its own shard of every epoch's images, its networks run the steps
    # wrapped in DistributedDataParallel (gradients averaged across processes before every optimiser step),
    # the validation loss — and so early stopping and the kept epoch — is rank 0's on every rank (``agreed``),
    # and rank 0 alone writes the checkpoint, which every rank resumes from.
    _plan: TrainingPlan = ONE_PROCESS

    def _epoch_indices(self, n: int, epoch: int) -> np.ndarray:
        """The training images this process steps through in ``epoch``, in order: the plan's share of the
        seeded epoch order."""
        return self._plan.epoch_indices(epoch_order(n, self.params["seed"], epoch), epoch, self.params["seed"])

    def resynchronised(self, network: nn.Module) -> None:
        """Under a data-parallel plan, ``network``'s weights become rank 0's on every rank (after a step that
        changed them outside the averaged gradients, e.g. GANomaly's re-initialisation of D); else nothing."""
        self._plan.broadcast_module(network)

    def agreed(self, value: float) -> float:
        """``value`` as rank 0 computed it (under a data-parallel plan), so every rank takes the same decisions."""
        return self._plan.agree(value)

    def _training_checkpoint(self) -> str | None:
        """The checkpoint file training saves to and resumes from: the ``checkpoint`` parameter, else the
        data-parallel job's own (None: none)."""
        return self.params["checkpoint"] or self._plan.checkpoint

    @contextlib.contextmanager
    def _replicated_networks(self) -> Iterator[None]:
        """Under a plan that ``replicates``, each network's attribute (``<name>_`` for the names of
        ``_networks()``) holds its DistributedDataParallel wrapper while the block runs, so the steps go
        through it."""
        plan = self._plan
        if not plan.replicates:
            yield
            return
        networks = self._networks()
        for name, module in networks.items():
            if getattr(self, f"{name}_", None) is not module:
                raise TypeError(f"{self.name}: network '{name}' is not held in attribute '{name}_', so data-parallel "
                                "training cannot route the training steps through its wrapper")
        try:
            for name, module in networks.items():
                setattr(self, f"{name}_", plan.wrap(module))
            yield
        finally:
            for name, module in networks.items():
                setattr(self, f"{name}_", module)


class _ScoreBatchModule(nn.Module):
    """A detector's ``_score_batch`` as a module (its networks registered, so ``eval()`` reaches them)."""

    def __init__(self, detector: TrainedDetector) -> None:
        super().__init__()
        self.networks = nn.ModuleDict(detector._networks())
        self._detector = [detector]  # a list: not registered as a submodule

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._detector[0]._score_batch(images)
