"""What a model file implements: the hooks ``Detector`` calls, with their defaults (``ModelHooks``).

``Detector`` (``anomalens.detector.contract``) is what a user calls; a detector class is a ``Detector`` that
fills in these hooks — its fit (``_fit``), its whole inference as one module (``inference_module``), its
fitted tensors (``_state_tensors`` / ``_load_state_tensors``) — and, where it can do better than the
defaults, how it scores held-out or out-of-fold normal images (``_fit_and_score_holdout``,
``_fit_and_score_out_of_fold`` for the detectors that ``crossfits``). The defaults here also run the
inference module over batches of records (``_image_batches``, ``_score``), tiles and all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ContextManager, Iterator, Sequence

import numpy as np
import torch

from anomalens.data import iterate_batches
from anomalens.tiling import TiledInference, is_tile_records


class ModelHooks(ABC):
    """The model side of the detector contract (module docstring); ``Detector`` provides ``params``,
    ``name``, ``device`` and ``sizing``, which the defaults read."""

    params: dict[str, Any]
    name: str

    def _check_params(self) -> None:
        """Checks that involve several parameters (e.g. a network's supported sizes); ConfigError if not met."""

    @abstractmethod
    def _fit(self, records: Sequence, progress: bool) -> None:
        """Learn what normal looks like from ``records`` (normal images)."""

    @abstractmethod
    def inference_module(self) -> torch.nn.Module:
        """The fitted detector's inference as one ``nn.Module`` on ``device`` (see the package docstring).

        Input: float32 images (N, ``image_channels``, H, W) in [0, 1], (H, W) = ``input_size``. Output: the
        tuple ``(scores (N,), maps (N, H, W))`` when the detector ``localizes``, else ``(scores (N,),)``;
        float32. The module holds (references to) the fitted tensors, so build it after ``fit`` / load.
        """

    def export_refusal(self) -> str | None:
        """Why ``inference_module()`` cannot be exported as a static graph (one line), or None if it can."""
        return None

    @property
    def image_channels(self) -> int:
        """Channels images are decoded to before they enter the inference module (1 grey, 3 RGB)."""
        return 3

    def _inference(self) -> ContextManager:
        """The autograd context the inference module runs in (AnoGAN's latent search needs gradients)."""
        return torch.inference_mode()

    def _image_batches(self, records: Sequence, progress: bool, what: str) -> Iterator[torch.Tensor]:
        """Batches of ``records`` in order, as (B, C, H, W) images in [0, 1] on the device (tiles at the tile
        size, images at ``input_size``: ``Sizing.batch_plan``)."""
        desc = f"{self.name} {what}" if progress else None
        device = self.device
        cuda = device.type == "cuda"  # pinned batches, copied while the previous one runs
        size, per_batch = self.sizing.batch_plan(records, self.setting("batch_size"))
        batches = iterate_batches(records, size, per_batch, channels=self.image_channels, desc=desc, pin_memory=cuda)
        for batch in batches:
            yield batch["image"].to(device, non_blocking=cuda)

    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores (N,), maps (N, H, W) float32 or None): ``inference_module()`` over batches of ``records``;
        tile records (inside a tiled fit) go through the model's own tile-level module instead."""
        module = self.inference_module().eval()
        if isinstance(module, TiledInference) and is_tile_records(records):
            module = module.tile_module
        scores, maps = [], []
        with self._inference():
            for images in self._image_batches(records, progress, "score"):
                outputs = module(images)
                scores.append(outputs[0].detach().float().cpu().numpy())
                if len(outputs) > 1:
                    maps.append(outputs[1].detach().float().cpu().numpy())
        return np.concatenate(scores), (np.concatenate(maps) if maps else None)

    @abstractmethod
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to persist (safetensors)."""

    @abstractmethod
    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore fitted tensors saved by ``_state_tensors``."""

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit on ``fit_records``; return the scores and maps of ``holdout`` from a model that never saw them.

        Detectors whose fit is a sum over images override this to fit the final model on every image
        (the held-out ones too) while still scoring the held-out images without them (PaDiM).
        ``holdout is fit_records`` when nothing is held out.
        """
        self._fit(fit_records, progress)
        return self._score(holdout, progress)

    def _fit_and_score_out_of_fold(self, parts: list[list], folds: list[np.ndarray],
                                   progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit the final model on every image of ``parts`` (lists of records, in this order); return the
        scores (N,) and maps (N, H, W) or None of all N images, each from the model fitted without its fold
        (``folds``: index arrays into the concatenation of ``parts``). Only for ``crossfits`` detectors."""
        raise NotImplementedError(f"{self.name} does not cross-fit its threshold")
