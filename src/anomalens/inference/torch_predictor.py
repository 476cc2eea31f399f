"""The ``Predictor`` of a fitted ``Detector``: the run folder's model, run by torch.

It wraps the detector through its public contract only: ``score`` runs a batch (an ``ImageBatch`` goes to the
detector's inference module without decoding or resizing, in the detector's own batches and tiles, on its
device), ``decision_`` is read at each use (a ``calibrate`` that replaces the rule is seen at once), and images
are decoded by ``anomalens.data.model_input.decode_for_model`` — the decode and resize of the detector's own
dataset, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anomalens.data.model_input import decode_for_model
from anomalens.data.torch_dataset import ImageBatch
from anomalens.decision import DecisionRule
from anomalens.errors import NotFittedError
from anomalens.inference.protocol import batch_size_of


class TorchPredictor:
    """A fitted ``Detector`` as a ``Predictor`` (module docstring); ``detector`` is the wrapped detector."""

    runtime = "torch"
    packages = ("torch", "timm")
    details: dict[str, Any] = {}

    def __init__(self, detector: Any) -> None:
        if getattr(detector, "decision_", None) is None:
            raise NotFittedError(f"{getattr(detector, 'name', 'the detector')}: not fitted; fit or load a run first")
        self.detector = detector
        self.name: str = detector.name
        self.params = detector.params
        self.input_size: tuple[int, int] = tuple(detector.input_size)  # type: ignore[assignment]
        self.image_channels = int(detector.image_channels)
        self.localizes = bool(detector.localizes)
        self.batch_size = batch_size_of(detector.params)

    def __repr__(self) -> str:
        return f"TorchPredictor({self.detector!r})"

    @property
    def device(self) -> str:
        return str(self.detector.device)

    @property
    def decision_(self) -> DecisionRule:
        return self.detector.decision_

    def load(self, source: Any) -> np.ndarray:
        """An image file or array → (C, H, W) float32 at ``input_size``, as the detector's dataset decodes it."""
        image = decode_for_model(source, self.input_size, self.image_channels, decode=self.params.get("decode"))[0]
        return image.numpy()

    def run(self, images: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch of any length (a numpy array or a torch tensor, float32 (N, C, H, W) at ``input_size``) →
        (scores (N,), maps or None): ``Detector.score`` on it, in the detector's batches."""
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.ascontiguousarray(images, np.float32))
        return self.detector.score(ImageBatch(images), progress=False)


__all__ = ["TorchPredictor"]
