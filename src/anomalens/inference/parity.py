"""How far one runtime's outputs are from another's: what ``anomalens export`` and ``verify-export`` check an
export against the torch model with."""

from __future__ import annotations

import numpy as np

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


__all__ = ["compare_outputs"]
