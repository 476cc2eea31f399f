"""How far one runtime's outputs are from another's: what ``anomalens export`` and ``verify-export`` check an
export against the torch model with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParityRule:
    """When an export agrees with its run in torch, per precision.

    ``max_relative``: largest relative difference of scores and maps (``compare_outputs``), None when raw
    differences are reported but do not decide (fp16 / int8 move every score a little; what matters is the
    decision); ``max_flip_fraction``: share of images whose label may differ; ``max_auroc_change``: largest
    |AUROC change| when the images have labels (None: not checked)."""

    max_relative: float | None
    max_flip_fraction: float
    max_auroc_change: float | None

    def describe(self) -> str:
        parts = [f"relative difference ≤ {self.max_relative:g}" if self.max_relative is not None
                 else "score differences reported, not limited"]
        parts.append("no label flipped" if self.max_flip_fraction == 0 else
                     f"≤ {self.max_flip_fraction:.0%} of labels flipped")
        if self.max_auroc_change is not None:
            parts.append(f"|AUROC change| ≤ {self.max_auroc_change:g} when the images have labels")
        return ", ".join(parts)


#: The stated tolerance of each precision: fp32 is the traced graph (only rounding may differ); fp16 / int8
#: are held to the targets of their use — the same decisions, the same ranking.
PARITY: dict[str, ParityRule] = {
    "fp32": ParityRule(max_relative=1e-4, max_flip_fraction=0.0, max_auroc_change=None),
    "fp16": ParityRule(max_relative=None, max_flip_fraction=0.01, max_auroc_change=0.005),
    "int8": ParityRule(max_relative=None, max_flip_fraction=0.01, max_auroc_change=0.005),
}


def compare_outputs(ref_scores: np.ndarray, scores: np.ndarray, ref_maps: np.ndarray | None,
                    maps: np.ndarray | None) -> dict[str, float]:
    """Largest absolute and relative differences of scores and maps (runtime vs torch).

    Relative differences are taken against the scale of the reference — the largest |score| of the
    images, the largest |map value| of each image — so that values near zero (most of a map, a score
    near 0) do not inflate them.
    """
    ref_scores, scores = np.asarray(ref_scores, np.float64), np.asarray(scores, np.float64)
    score_diff = np.abs(scores - ref_scores)
    score_scale = max(float(np.abs(ref_scores).max(initial=0.0)), 1e-12)
    out = {"scores_abs": float(score_diff.max(initial=0.0)), "scores_rel": float(score_diff.max(initial=0.0)) / score_scale,
           "maps_abs": 0.0, "maps_rel": 0.0}
    if ref_maps is not None and maps is not None:
        ref, got = np.asarray(ref_maps, np.float64), np.asarray(maps, np.float64)
        diff = np.abs(got - ref).reshape(len(ref), -1)
        scale = np.maximum(np.abs(ref).reshape(len(ref), -1).max(axis=1), 1e-12)
        out["maps_abs"] = float(diff.max(initial=0.0))
        out["maps_rel"] = float((diff.max(axis=1, initial=0.0) / scale).max(initial=0.0))
    return out


__all__ = ["PARITY", "ParityRule", "compare_outputs"]
