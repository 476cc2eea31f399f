"""The ``Predictor`` protocol: a fitted model in one runtime, as everything that predicts sees it.

A predictor states what it takes (``input_size``, ``image_channels``), what it gives (``localizes``: maps
besides scores), how it decides (``decision_``, the frozen ``DecisionRule``) and runs a batch (``run``:
images → raw scores and maps). What is done with those outputs — refusing NaN / inf, applying the rule,
building the result rows — is written once on top of it (``anomalens.inference.predict``), so the local
``predict``, the service and Ray take a predictor and never ask which runtime it is.

One adapter per runtime (anomalib's ``Inferencer`` with a subclass per runtime, as a ``typing.Protocol``):

- ``anomalens.inference.torch_predictor.TorchPredictor``: a fitted ``Detector`` (torch);
- ``anomalens.inference.export_predictor.ExportedDetector``: an export folder run by ONNX Runtime or OpenVINO
  (``anomalens.inference.runtimes``), without torch.

A new runtime is one new adapter module that satisfies this protocol, and one line in
``anomalens.inference.loading.load_predictor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from anomalens.decision import DecisionRule

#: Images per batch when a run's ``batch_size`` is null.
DEFAULT_BATCH_SIZE = 16


def batch_size_of(params: Mapping[str, Any]) -> int:
    """The images per batch a model runs, from its hyper-parameters (``batch_size``, or the default when null)."""
    return int(params.get("batch_size") or DEFAULT_BATCH_SIZE)


@runtime_checkable
class Predictor(Protocol):
    """A fitted detector in one runtime (module docstring)."""

    #: The detector's registry name ("padim").
    name: str
    #: What runs it: "torch", "onnxruntime" or "openvino".
    runtime: str
    #: Where it runs, in words ("cpu", "cuda:0").
    device: str
    #: (height, width) of the images ``run`` takes, and of its maps.
    input_size: tuple[int, int]
    #: Channels of the images ``run`` takes (1 grey, 3 RGB).
    image_channels: int
    #: True when ``run`` gives an anomaly map per image besides its score.
    localizes: bool
    #: The decision rule its scores and maps are judged by.
    decision_: DecisionRule
    #: The detector's hyper-parameters (``decode``: how files are decoded; ``batch_size``).
    params: Mapping[str, Any]
    #: Images per call of the model (``batch_size_of(params)``).
    batch_size: int
    #: The installed packages whose versions describe this runtime (the service reports them).
    packages: tuple[str, ...]
    #: Facts particular to the runtime the service reports besides (an export's format), or {}.
    details: Mapping[str, Any]

    def load(self, source: Any) -> np.ndarray:
        """One image (a file path or decoded pixels as an (H, W[, C]) array) → the (C, H, W) float32 model
        input at ``input_size``, decoded and resized exactly as this runtime's ``predict`` does."""
        ...

    def run(self, images: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch of any length, float32 (N, C, H, W) in [0, 1] at ``input_size`` (a numpy array, or what
        ``load`` returns stacked) → (scores (N,) float32, maps (N, H, W) float32 or None), raw: neither
        checked for NaN nor decided. The adapter cuts the batch into its own calls of the model."""
        ...


def model_id(predictor: Any) -> str:
    """``<detector>-<12 hex>``: a hash of a fitted model's name, hyper-parameters and decision rule — the same
    for a run and its exports, different after a refit or a recalibration — so the service's history and
    metrics and the line's records (``anomalens watch``) name the model alike."""
    import hashlib
    import json

    from anomalens.jsonvalues import plain_json

    identity = json.dumps(plain_json({"detector": predictor.name, "params": dict(predictor.params),
                                      "decision": predictor.decision_.to_dict()}), sort_keys=True)
    return f"{predictor.name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


__all__ = ["DEFAULT_BATCH_SIZE", "Predictor", "batch_size_of", "model_id"]
