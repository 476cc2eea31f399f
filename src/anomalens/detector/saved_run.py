"""A detector as a run folder: what ``save`` writes and ``load_fitted_state`` restores (``SavedRun``).

``Detector`` (``anomalens.detector.contract``) inherits these methods, as it inherits the model hooks
(``anomalens.detector.model_hooks``): a user still calls ``detector.save(...)``. They are apart because they
are one job — turning the fitted detector into ``detector.json`` + ``weights.safetensors`` and back — which
the file format itself (hashes, atomic writes, older formats) leaves to ``anomalens.persistence`` and the
tensors' own checks to each model's ``_load_state_tensors``. Turning a folder into a detector of the right
class is ``anomalens.catalog.load_detector``, which calls ``load_fitted_state``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomalens.decision import DecisionRule
from anomalens.detector.sizing import WORKING_SIZE_TENSOR, Sizing
from anomalens.persistence import write_decision, write_run_files
from anomalens.version import __version__

if TYPE_CHECKING:  # annotations only: the contract imports this module
    from anomalens.detector.contract import Detector


class SavedRun:
    """The run-folder side of the detector contract (module docstring); ``Detector`` provides ``params``,
    ``name``, ``sizing``, the fitted decision rule (``_fitted_decision``) and the model's hooks
    ``_state_tensors`` / ``_load_state_tensors``, which these methods call."""

    params: dict[str, Any]
    name: str
    sizing: Sizing
    score_is_map_max: bool
    working_size_: tuple[int, int] | None
    decision_: DecisionRule | None
    history_: dict[str, list[float]]

    def preprocessing(self) -> dict[str, Any]:
        """How images are turned into tensors (saved for users re-implementing the pipeline): the working
        size every image is resized to (``input_size``) and, when tiling, how it is cut."""
        return self.sizing.preprocessing(self.params["resize"], self.params["decode"], self.score_is_map_max)

    def save(self, directory: str | Path) -> Path:
        """Write ``detector.json`` (everything but the tensors) + ``weights.safetensors`` into ``directory``
        (no pickle, atomic)."""
        config = {
            "library": "anomalens",
            "library_version": __version__,
            "detector": self.name,
            "params": self.params,
            "decision": self._fitted_decision().to_dict(),
            "history": self.history_,
            "preprocessing": self.preprocessing(),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        if self.working_size_ is not None:
            tensors[WORKING_SIZE_TENSOR] = torch.tensor(self.working_size_)
        return write_run_files(directory, config, tensors)

    def save_decision(self, directory: str | Path) -> None:
        """Rewrite only the decision rule in ``directory``'s ``detector.json`` (after calibrate), atomically."""
        write_decision(directory, self._fitted_decision().to_dict())

    def load_fitted_state(self, tensors: dict[str, torch.Tensor], decision: DecisionRule, history: dict) -> "Detector":
        """Restore what ``save`` wrote (used by ``anomalens.catalog.load_detector``). Returns self.

        Torch is seeded as ``fit`` seeds it, so that anything rebuilt rather than saved (a backbone with
        ``weights="random"``) is drawn exactly as it was when the detector was fitted.
        """
        torch.manual_seed(self.params["seed"])
        tensors = dict(tensors)
        working = tensors.pop(WORKING_SIZE_TENSOR, None)
        if (working is None) != (self.params["resize"] != "keep_aspect"):
            raise ValueError(f"resize={self.params['resize']} but the file {'lacks' if working is None else 'holds'} "
                             "a working size")
        self.working_size_ = None if working is None else (int(working[0]), int(working[1]))
        self.sizing.check()
        self._load_state_tensors(tensors)
        self.decision_ = decision
        self.history_ = history
        return self
