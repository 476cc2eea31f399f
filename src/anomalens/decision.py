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
- ``map_reference``: the typical anomaly-map value on normal images (the cold end of heatmap colours);
- ``score_reference``: the median image score of the normal images the fit's threshold came from (their
  out-of-fold scores), the anchor of the normalised score below.

Normalised score (``DecisionRule.normalized``, ``DetectionResult.normalized_scores``): a number in (0, 1),
monotone in the raw score, equal to 0.5 exactly at the image threshold t, with the median normal score m
(``score_reference``) at 0.05:

    normalized(s) = 1 / (1 + exp(−(s − t) / w)),   w = (t − m) / ln 19

so a typical normal image reads 0.05, the threshold 0.5, and a score as far above t as m is below it
0.95. The rule is the same after ``calibrate``: t moves, m stays the fit's. Degenerate cases: when
t ≤ m (all normal scores equal, or a calibrated threshold below the median normal) or m is unknown (runs
saved before it existed), w = 10⁻³·max(|t|, 1): still monotone with 0.5 at t, close to a step. Under the
minimum-area rule the label follows the region size, not this score.

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
    normalized_scores: (N,) float64 in [0, 1], monotone in ``scores``, 0.5 at the image threshold
        (``DecisionRule.normalized``; the module docstring has the formula), or None.
    """

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    normalized_scores: np.ndarray | None = None

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
    score_reference: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"decision rule source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        for name in ("image_threshold", "pixel_threshold", "map_reference", "score_reference"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"decision rule: {name} must be a finite number, got {value!r}")
        if self.min_area is not None and (self.pixel_threshold is None or self.min_area < 1):
            raise ValueError("decision rule: the minimum-area rule needs a pixel threshold and min_area >= 1")

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_normal_scores(
        cls, scores: np.ndarray, maps: np.ndarray | None, false_alarm_rate: float,
        what: str = "held-out normal images", folds: int = 1,
    ) -> "DecisionRule":
        """Both thresholds at the (1 − ``false_alarm_rate``) quantile of normal images' scores (and of their
        maps' maxima): about that share of new normal images is flagged, if these scores are like theirs.

        ``folds``: how many models the scores came from, recorded in ``evidence`` — k for out-of-fold
        scores (every training image scored by the model fitted without its fold; k = the number of images
        for leave-one-out), 1 for a single hold-out, 0 for scores of the very images the model was fitted on
        (optimistic).
        """
        quantile = 1.0 - false_alarm_rate
        scores = np.asarray(scores)
        pixel_threshold = map_reference = None
        if maps is not None:
            pixel_threshold = quantile_threshold(maps.reshape(len(maps), -1).max(axis=1), quantile)
            map_reference = float(np.median(maps))
        return cls(
            image_threshold=quantile_threshold(scores, quantile),
            source="quantile",
            description=f"false-alarm rate {false_alarm_rate:g}: quantile {quantile:g} of {len(scores)} {what}",
            pixel_threshold=pixel_threshold,
            map_reference=map_reference,
            evidence={"false_alarm_rate": false_alarm_rate, "n_normal": int(len(scores)), "folds": int(folds)},
            score_reference=float(np.median(scores)),
        )

    def with_changes(self, **changes: Any) -> "DecisionRule":
        """A new rule with some fields replaced (the rule itself never changes)."""
        return DecisionRule(**{**asdict(self), **changes})

    # -- applying it --------------------------------------------------------------------------------
    def apply(self, scores: np.ndarray, maps: np.ndarray | None) -> DetectionResult:
        """The result of this rule on raw scores (N,) and maps (N, H, W) or None."""
        return DetectionResult(scores=scores, labels=self.labels(scores, maps), maps=maps, masks=self.masks(maps),
                               normalized_scores=self.normalized(scores))

    @property
    def normalization_width(self) -> float:
        """w of the normalised score (module docstring): (t − m) / ln 19, or the degenerate fallback."""
        t, m = self.image_threshold, self.score_reference
        if m is not None and t - m > 0 and math.isfinite((t - m) / math.log(19.0)):
            return (t - m) / math.log(19.0)
        return 1e-3 * max(abs(t), 1.0)

    def normalized(self, scores: np.ndarray) -> np.ndarray:
        """(N,) float64 normalised scores: monotone in ``scores``, exactly 0.5 at the image threshold, the
        median normal score at 0.05 (the module docstring has the formula and the degenerate cases)."""
        with np.errstate(over="ignore"):  # far beyond the threshold: z = ±inf, tanh = ±1
            z = (np.asarray(scores, dtype=np.float64) - self.image_threshold) / self.normalization_width
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(−z)), without overflow

    def heatmap_colour_range(self) -> tuple[float, float]:
        """The fixed colour scale of every heatmap of ``predict`` and the service: from the typical value of
        normal maps (blue) to twice the distance up to the pixel threshold (red), so the threshold sits
        mid-scale and a colour means the same in every picture."""
        low = self.map_reference if self.map_reference is not None else 0.0
        high = 2 * (self.pixel_threshold or 1.0) - low
        if not high > low:  # a pixel threshold at or below the reference: any positive span will do
            high = low + 1.0
        return float(low), float(high)

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
                score_reference=_number(data.get("score_reference"), "score_reference", optional=True),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


def _number(value: Any, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"decision rule: {name} must be a number, got {value!r}")
    return float(value)
