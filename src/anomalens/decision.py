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

Every kind of rule is built here: the quantile rule of normal scores (``DecisionRule.from_normal_scores``,
what ``fit`` sets), the F1-optimal rule and its fallback (``f1_rule``), the minimum-area rule (``area_rule``);
``anomalens.detector.calibration`` only gathers the labelled scores they are built from. So is the one list
of a rule's weaknesses (``weaknesses``: too few normal scores, scores of the training images themselves,
normal scores all alike, a calibration on few defects) that ``fit`` and ``calibrate`` log, the test report
prints and the service can show — the same sentences everywhere.

``DetectionResult``, what applying the rule gives, lives here too: this module imports no torch, so the
loader of exported models (``anomalens.exported``) returns the very same type as ``Detector.predict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anomalens.thresholds import area_threshold_search, f1_threshold, largest_defect_areas, quantile_threshold

SOURCES = ("quantile", "f1", "area")
#: Below this many normal scores a quantile threshold is weak (``weaknesses``).
MIN_THRESHOLD_SCORES = 30
#: Below this many defective images a labelled calibration is weak (``weaknesses``).
MIN_CALIBRATION_DEFECTS = 10
#: Normal scores this close (relative) to each other count as all alike (identical images).
ALIKE_TOLERANCE = 1e-5


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
            # the scores themselves: the reference of the service's drift test (anomalens.monitoring)
            evidence={"false_alarm_rate": false_alarm_rate, "n_normal": int(len(scores)), "folds": int(folds),
                      "normal_scores": [float(v) for v in scores.reshape(-1)]},
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


# -- the calibrated rules ------------------------------------------------------------------------------
def f1_rule(current: DecisionRule, labels: np.ndarray, scores: np.ndarray, maps: np.ndarray | None,
            false_alarm_rate: float, pixel_is_image_threshold: bool) -> tuple[DecisionRule, str]:
    """(rule, note): the F1-optimal image threshold on labelled ``scores`` (labels 0 normal, 1 defective).

    ``pixel_is_image_threshold``: the image score is the maximum of the map, so the image threshold is a
    pixel threshold too; else the pixel threshold of ``current`` stays. Without both classes the F1 rule is
    undefined: the fallback is the quantile rule of the normal scores (and of their maps) at
    ``false_alarm_rate`` — never a threshold that flags everything — and the note says so.
    """
    threshold = f1_threshold(labels, scores)
    if threshold is None:
        normal = scores[labels == 0]
        if len(normal) == 0:
            raise ValueError("calibration data has no normal image; cannot set a threshold")
        rule = DecisionRule.from_normal_scores(normal, None if maps is None else maps[labels == 0], false_alarm_rate,
                                               "calibration normal images")
        note = (f"calibration data has no anomalous image: threshold set to the {1 - false_alarm_rate:g} quantile of "
                f"its {len(normal)} normal scores (false-alarm rate {false_alarm_rate:g})")
        return rule, note
    description = f"F1-optimal on {len(labels)} labelled images ({int(labels.sum())} anomalous)"
    pixel = threshold if maps is not None and pixel_is_image_threshold else current.pixel_threshold
    rule = current.with_changes(
        source="f1", image_threshold=threshold, pixel_threshold=pixel, min_area=None, clear_border=False,
        description=description, evidence={"n_labelled": len(labels), "n_anomalous": int(labels.sum())},
    )
    return rule, description


def area_rule(current: DecisionRule, normal_maps: np.ndarray, maps: np.ndarray, labels: np.ndarray,
              clear_border: bool = False, progress: bool = False) -> tuple[DecisionRule, dict[str, Any]]:
    """(rule, search result): the seed's minimum-area rule — a pixel threshold and a minimum defect area
    found by ``thresholds.area_threshold_search`` on validation ``normal_maps`` and labelled ``maps``; the
    image threshold of ``current`` stays (it still normalises the scores)."""
    if normal_maps is None or len(normal_maps) == 0:
        raise ValueError("the area calibration needs normal images")
    found = area_threshold_search(normal_maps, maps, labels, clear_border=clear_border, progress=progress)
    rule = current.with_changes(
        source="area",
        pixel_threshold=float(found["threshold"]),
        min_area=int(found["min_area"]),
        clear_border=clear_border,
        description=f"area rule: region ≥ {found['min_area']} px above {found['threshold']:.4g}; {found['note']}",
        evidence={"n_labelled": len(labels), "n_anomalous": int(labels.sum()), "n_normal_validation": len(normal_maps),
                  "balanced_accuracy": float(found["score"])},
    )
    return rule, found


# -- what makes a rule weak ------------------------------------------------------------------------------
def weaknesses(rule: DecisionRule, min_threshold_scores: int = MIN_THRESHOLD_SCORES) -> list[str]:
    """What makes ``rule`` less trustworthy, one plain sentence each (empty for a sound rule), read from the
    numbers it rests on (``evidence``): ``fit`` and ``calibrate`` log these, the test report prints them
    (``anomalens.report.operator_warnings``) and the service can show them — one list, one wording.

    - a quantile rule on fewer than ``min_threshold_scores`` normal scores: its false-alarm rate on new
      normal images may be far from the one aimed at;
    - a quantile rule on scores of the training images themselves (``folds`` 0): optimistic;
    - a quantile rule whose threshold is the median normal score (to ``ALIKE_TOLERANCE``): the normal
      images scored alike — identical copies? — so it cannot separate new normal images from defects;
    - a calibrated rule (F1 or area) on fewer than ``MIN_CALIBRATION_DEFECTS`` defective images.
    """
    evidence = rule.evidence or {}
    out: list[str] = []
    if rule.source == "quantile":
        rate = evidence.get("false_alarm_rate")
        n_normal = evidence.get("n_normal")
        aim = f"the {rate:g} aimed at" if isinstance(rate, (int, float)) else "its aim"
        if isinstance(n_normal, int) and n_normal < min_threshold_scores:
            out.append(f"The threshold rests on only {n_normal} normal score(s), fewer than {min_threshold_scores}: "
                       f"on new normal images the false-alarm rate may be far from {aim}. Fit on more normal "
                       "images, or calibrate on labelled images.")
        if evidence.get("folds") == 0:
            out.append("The threshold comes from the training images themselves (none could be held out), which "
                       f"the model fits better than new images: expect more false alarms than {aim}.")
        reference, threshold = rule.score_reference, rule.image_threshold
        if (reference is not None and isinstance(n_normal, int) and n_normal > 1
                and threshold - reference <= ALIKE_TOLERANCE * max(1.0, abs(threshold))):
            out.append(f"The threshold equals the median of the {n_normal} normal scores it comes from "
                       f"({threshold:.6g}): those images scored (nearly) alike — identical copies? — so it cannot "
                       "separate new normal images from defects reliably.")
    elif rule.source in ("f1", "area"):
        n_defects = evidence.get("n_anomalous")
        if isinstance(n_defects, int) and n_defects < MIN_CALIBRATION_DEFECTS:
            out.append(f"The threshold was calibrated on only {n_defects} defective image(s): it may be tuned to "
                       "those few. Calibrate on more labelled defects, or keep the threshold from the normal "
                       "images (fit).")
    return out


def _number(value: Any, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"decision rule: {name} must be a number, got {value!r}")
    return float(value)
