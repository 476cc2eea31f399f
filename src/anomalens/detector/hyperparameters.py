"""The hyper-parameters every detector declares, and how a class's declarations add up.

A detector class declares its own ``hyperparameters`` (name → ``anomalens.params.Param``); they add to, or
override, those of its base classes and the common ones below (``COMMON``); the detectors that ``tiles``
get ``anomalens.tiling.TILING_PARAMS`` too, the others never. Each declared name reads as an attribute
(``det.epochs`` is ``det.params["epochs"]``, read-only: ``HyperParameterAttribute``).
``checked_params`` is what a detector's constructor does with the values it is given.
"""

from __future__ import annotations

import logging
from typing import Any

from anomalens.devices import check_device_name
from anomalens.errors import ConfigError
from anomalens.params import Choice, Float, Int, Param, Size, Text, check_params
from anomalens.persistence import rename_deprecated_params
from anomalens.tiling import TILING_PARAMS

logger = logging.getLogger("anomalens")

#: The hyper-parameters of every detector.
COMMON: dict[str, Param] = {
    "image_size": Size(256, "input size in pixels: one side, or [height, width]"),
    "resize": Choice("squash", ("squash", "keep_aspect"), "squash: every image resized to image_size; keep_aspect: "
                     "to the largest size inside image_size with the training images' aspect ratio (set by fit)"),
    "decode": Choice("exact", ("exact", "fast"), "exact: every pixel of a file decoded, then resized; fast: a "
                     "large file shrunk while decoding (JPEG at 1/2-1/8 scale, others box-reduced), never below "
                     "twice the working size — much faster on large frames, values differ slightly"),
    "batch_size": Int(16, "images per batch when scoring (and training)", low=1),
    "device": Text("auto", "auto (CUDA when available), cpu, cuda or cuda:N"),
    "seed": Int(0, "random seed: same seed, same model", low=0),
    "false_alarm_rate": Float(
        0.01, "target share of normal images flagged: the threshold is the (1 - rate) quantile of normal scores "
        "from models that did not see them (replaces threshold_quantile = 1 - rate)", low=0.0, high=1.0
    ),
    "threshold_folds": Int(
        10, "k of the cross-fitted threshold (padim, patchcore): every training image is scored by the model "
        "fitted without its fold; 0 = leave-one-out, 1 = hold-out only; others use the hold-out", low=0
    ),
    "holdout_fraction": Float(
        0.1, "share of the training normals held out to set the thresholds when not cross-fitting (0: none)",
        low=0.0, high=0.9
    ),
}


class HyperParameterAttribute:
    """Read-only attribute for a declared hyper-parameter: ``det.epochs`` is ``det.params["epochs"]``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return owner.declared_params()[self.name]
        return instance.params[self.name]

    def __set__(self, instance: Any, value: Any) -> None:
        raise AttributeError(f"hyper-parameter '{self.name}' is set when the detector is created")


def declared_by(cls: type, inherited: dict[str, Param]) -> dict[str, Param]:
    """Every hyper-parameter of ``cls``: ``inherited`` plus its own declarations (with the tiling ones when it
    ``tiles``, without them when it does not); its own names become attributes of the class."""
    own = dict(cls.__dict__.get("hyperparameters", {}))
    if cls.tiles:  # declared once, for every detector that tiles
        own = {**{k: v for k, v in TILING_PARAMS.items() if k not in inherited}, **own}
    declared = {**inherited, **own}
    if not cls.tiles:
        declared = {k: v for k, v in declared.items() if k not in TILING_PARAMS}
    for key in own:
        existing = getattr(cls, key, None)
        if existing is not None and not isinstance(existing, (HyperParameterAttribute, Param)):
            raise TypeError(f"{cls.__qualname__}: hyper-parameter '{key}' clashes with attribute {cls.__qualname__}.{key}")
        setattr(cls, key, HyperParameterAttribute(key))
    return declared


def checked_params(owner: str, declared: dict[str, Param], params: dict[str, Any]) -> dict[str, Any]:
    """Every ``declared`` hyper-parameter of the detector ``owner``, the given ``params`` converted and checked
    (``anomalens.params.check_params``), defaults for the rest; ConfigError (one line) for a value that does
    not fit, a tiling parameter given to a detector that does not tile, or an unknown device. The deprecated
    ``threshold_quantile`` q is accepted as ``false_alarm_rate`` 1 − q, with a warning (and never saved)."""
    if "threshold_quantile" in params:
        try:
            params = rename_deprecated_params(params)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
        logger.warning("%s: threshold_quantile is deprecated: use false_alarm_rate = 1 - threshold_quantile (%g)",
                       owner, params["false_alarm_rate"])
    offered = [key for key in TILING_PARAMS if key in params and key not in declared]
    if offered:
        raise ConfigError(f"{owner}: does not tile (no {', '.join(offered)}): tiling is offered by the detectors "
                          "whose 'anomalens params NAME' lists tile_size; use resize / image_size here")
    checked = check_params(owner, declared, params)
    check_device_name(checked["device"])
    return checked
