"""Calibration: replacing a fitted detector's decision rule with one set on labelled images.

``Detector.calibrate`` scores the images; this module checks what it was given and turns the labelled
scores into a rule through ``anomalens.decision`` (where every kind of rule is built):

- ``method="f1"``: the F1-optimal image threshold (``decision.f1_rule``); without defective images the F1
  rule is undefined and the thresholds are re-estimated as the normal-score quantile instead of flagging
  everything;
- ``method="area"`` (localising detectors): the seed's minimum-area rule (``decision.area_rule``), its
  first step on validation normals' maps (by default those of the normal images among the labelled ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomalens.data import as_image_records
from anomalens.decision import DecisionRule, area_rule, f1_rule
from anomalens.errors import ConfigError, DataError

logger = logging.getLogger("anomalens")

METHODS = ("f1", "area")


@dataclass(frozen=True)
class Calibration:
    """One calibration of the detector ``owner`` by ``method``; ConfigError at once for a method it cannot
    take (unknown, or ``area`` for a detector that gives no maps)."""

    owner: str
    method: str
    localizes: bool

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method '{self.method}'; use f1 or area")
        if self.method == "area" and not self.localizes:
            raise ConfigError(f"{self.owner} gives no anomaly maps: use calibrate method 'f1'")

    @property
    def uses_normal_maps(self) -> bool:
        """Whether the rule needs the maps of validation normals (the area rule)."""
        return self.method == "area"

    def labelled(self, records: Any) -> tuple[list, np.ndarray]:
        """(records, labels (N,) int64): every record labelled 0 (normal) or 1 (defective), else DataError.
        A set without defective images is warned about: it cannot weigh missed defects against false alarms."""
        records = as_image_records(records)
        unlabelled = [r for r in records if r.label not in (0, 1)]
        if unlabelled:
            raise DataError(
                f"{self.owner}: calibrate needs labelled images (ImageRecords with label 0 normal or 1 defective, "
                f"e.g. load_dataset(DATA).test); {len(unlabelled)} of {len(records)} have none (first: "
                f"{unlabelled[0].name or 'image'})")
        labels = np.array([r.label for r in records], dtype=np.int64)
        if len(labels) and not labels.any():
            logger.warning(
                "%s: the calibration data has no defective image (%d normal): the %s calibration cannot weigh "
                "missed defects against false alarms — calibrate on labelled images with defects", self.owner,
                len(labels), self.method,
            )
        return records, labels

    def rule(self, current: DecisionRule, scores: np.ndarray, maps: np.ndarray | None, labels: np.ndarray,
             normal_maps: np.ndarray | None = None, *, false_alarm_rate: float, pixel_is_image_threshold: bool,
             clear_border: bool = False, progress: bool = False) -> tuple[DecisionRule, dict[str, Any]]:
        """(the new rule, what ``calibrate`` returns) from the labelled ``scores`` / ``maps``; ``normal_maps``:
        the validation normals' maps of the area rule (``uses_normal_maps``)."""
        if self.method == "area":
            rule, found = area_rule(current, normal_maps, maps, labels, clear_border=clear_border, progress=progress)
            return rule, {"threshold": rule.image_threshold, "pixel_threshold": rule.pixel_threshold,
                          "min_area": found["min_area"], "balanced_accuracy": found["score"], "note": found["note"]}
        rule, note = f1_rule(current, labels, scores, maps, false_alarm_rate, pixel_is_image_threshold)
        return rule, {"threshold": rule.image_threshold, "pixel_threshold": rule.pixel_threshold, "note": note}
