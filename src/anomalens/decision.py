"""The decision rule: how a detector's scores and maps become "defective" / "normal" and defect masks.

One value object owns every number of the decision, so that ``fit`` creates it, ``calibrate`` replaces it
whole, ``predict`` applies it and save / load round-trip it together — no loose attribute survives a
refit by accident.

- image threshold: an image is anomalous when ``score > image_threshold``;
- pixel threshold: a pixel is in the predicted defect mask when ``map > pixel_threshold``;
- minimum-area rule (the seed's finetune, ``calibrate(method="area")``): instead of the image
  threshold, an image is anomalous when a connected region of its mask (optionally not touching the
  border) has at least ``min_area`` pixels;
- where it came from (``source``: "quantile", "f1" or "area"), in words (``description``) and the
  numbers it rests on (``evidence``: how many images, which quantile, the calibration's accuracy, ...);
- ``map_reference``: the typical anomaly-map value on normal images (the cold end of heatmap colours).

``DetectionResult``, what applying the rule gives, lives here too: this module imports no torch, so the
loader of exported models (``anomalens.exported``) returns the very same type as ``Detector.predict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anomalens.thresholds import largest_defect_areas, quantile_threshold

SOURCES = ("quantile", "f1", "area")


@dataclass
class DetectionResult:
    """Per-image outputs of a detector, for N images.

    scores: (N,) float, higher = more anomalous.
    labels: (N,) int, 1 for images the decision rule flags.
    maps:   (N, H, W) float32 anomaly maps at the input resolution, or None (image-level detector).
    masks:  (N, H, W) bool predicted defect masks (``map > pixel_threshold``), or None.
    """

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class DecisionRule:
    image_threshold: float
    source: str
    description: str
    pixel_threshold: float | None = None
    min_area: int | None = None
    clear_border: bool = False
    map_reference: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"decision rule source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        for name in ("image_threshold", "pixel_threshold", "map_reference"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"decision rule: {name} must be a finite number, got {value!r}")
        if self.min_area is not None and (self.pixel_threshold is None or self.min_area < 1):
            raise ValueError("decision rule: the minimum-area rule needs a pixel threshold and min_area >= 1")

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_normal_scores(
        cls, scores: np.ndarray, maps: np.ndarray | None, quantile: float, what: str = "held-out normal images"
    ) -> "DecisionRule":
        """Both thresholds at the ``quantile`` of normal images' scores (and of their maps' maxima)."""
        pixel_threshold = map_reference = None
        if maps is not None:
            pixel_threshold = quantile_threshold(maps.reshape(len(maps), -1).max(axis=1), quantile)
            map_reference = float(np.median(maps))
        return cls(
            image_threshold=quantile_threshold(scores, quantile),
            source="quantile",
            description=f"quantile {quantile} of {len(scores)} {what}",
            pixel_threshold=pixel_threshold,
            map_reference=map_reference,
            evidence={"quantile": quantile, "n_normal": int(len(scores))},
        )

    def with_changes(self, **changes: Any) -> "DecisionRule":
        """A new rule with some fields replaced (the rule itself never changes)."""
        return DecisionRule(**{**asdict(self), **changes})

    # -- applying it --------------------------------------------------------------------------------
    def apply(self, scores: np.ndarray, maps: np.ndarray | None) -> DetectionResult:
        """The result of this rule on raw scores (N,) and maps (N, H, W) or None."""
        return DetectionResult(scores=scores, labels=self.labels(scores, maps), maps=maps, masks=self.masks(maps))

    @property
    def uses_area(self) -> bool:
        return self.min_area is not None

    def masks(self, maps: np.ndarray | None) -> np.ndarray | None:
        """(N, H, W) bool predicted defect masks, or None without maps or pixel threshold."""
        if maps is None or self.pixel_threshold is None:
            return None
        return maps > self.pixel_threshold

    def labels(self, scores: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
        """(N,) int64: 1 for anomalous images under this rule."""
        if self.uses_area:
            if maps is None:
                raise ValueError("the minimum-area rule needs anomaly maps")
            flagged = largest_defect_areas(maps, self.pixel_threshold, self.clear_border) >= self.min_area
        else:
            flagged = np.asarray(scores) > self.image_threshold
        return flagged.astype(np.int64)

    # -- persistence --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecisionRule":
        """The rule saved by ``to_dict``; ValueError naming the problem for a malformed one."""
        if not isinstance(data, dict):
            raise ValueError("the decision rule is not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"the decision rule has unknown field(s) {', '.join(unknown)}")
        try:
            return cls(
                image_threshold=_number(data.get("image_threshold"), "image_threshold"),
                source=str(data.get("source")),
                description=str(data.get("description", "")),
                pixel_threshold=_number(data.get("pixel_threshold"), "pixel_threshold", optional=True),
                min_area=None if data.get("min_area") is None else int(data["min_area"]),
                clear_border=bool(data.get("clear_border", False)),
                map_reference=_number(data.get("map_reference"), "map_reference", optional=True),
                evidence=dict(data.get("evidence") or {}),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


def _number(value: Any, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"decision rule: {name} must be a number, got {value!r}")
    return float(value)
