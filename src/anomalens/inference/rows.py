"""``predict`` on a ``Predictor``, written once for every runtime and every caller: the local ``predict``, the
service, Ray's scoring actors and the exports' own ``predict``.

- ``predict(predictor, images)``: the predictor's raw outputs on decoded images, refused with one line when a
  score or a map holds NaN or inf (``refuse_non_finite``: the one check of every runtime's outputs), then
  judged by its decision rule (``DecisionRule.apply``: labels, masks, normalised scores);
- ``predict_inputs(predictor, inputs)``: the same from image files or arrays, decoded batch by batch by the
  predictor's own ``load``;
- ``result_row`` / ``result_rows``: the columns every result shares (``RESULT_FIELDS``, named with the other
  columns in ``anomalens.outputs.predictions``) — ``predictions.csv`` / ``.jsonl`` of the local ``predict`` and
  of Ray, and the service's JSON answer, each adding its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalens.errors import NumericalError
from anomalens.outputs.predictions import RESULT_FIELDS

if TYPE_CHECKING:
    from anomalens.decision import DetectionResult
    from anomalens.inference.protocol import Predictor

def _source_name(source: Any) -> str:
    from anomalens.data.io import describe_source

    return source if isinstance(source, str) else describe_source(getattr(source, "source", source))


def refuse_non_finite(what: str, scores: np.ndarray, maps: np.ndarray | None,
                      names: Sequence[Any] | None = None) -> None:
    """NumericalError (one line) when a score or a map of the batch holds NaN or inf: such a result would be
    decided silently (NaN is never above a threshold). ``names``: the images' names or sources, for the message."""
    broken = ~np.isfinite(scores)
    if maps is not None:
        broken |= ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
    if broken.any():
        index = int(np.argmax(broken))
        first = _source_name(names[index]) if names is not None else f"image {index}"
        raise NumericalError(f"{what}: NaN or infinite anomaly scores or maps for {int(broken.sum())} of "
                             f"{len(scores)} images (first: {first}); the model is numerically broken — refit (check "
                             "the parameters and the training images)")


def predict(predictor: Predictor, images: Any, names: Sequence[Any] | None = None) -> DetectionResult:
    """Scores, labels, maps and masks of ``images`` — float32 (N, C, H, W) at the predictor's input size, as its
    ``load`` gives them stacked — under its decision rule; NumericalError for NaN / inf outputs (``names``: the
    images', for its message)."""
    scores, maps = predictor.run(images)
    refuse_non_finite(f"{predictor.name} ({predictor.runtime})", scores, maps, names)
    return predictor.decision_.apply(scores, maps)


def score_inputs(predictor: Predictor, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw scores (N,) and maps (N, H, W) or None of image files, arrays or ``ImageRecord`` s, decoded by the
    predictor's ``load`` one batch (``batch_size``) at a time; NumericalError for NaN / inf outputs."""
    inputs = list(inputs)
    if not inputs:
        return np.zeros(0, np.float32), None
    scores, maps = [], []
    for start in range(0, len(inputs), predictor.batch_size):
        s, m = predictor.run(np.stack([predictor.load(x) for x in inputs[start : start + predictor.batch_size]]))
        scores.append(s)
        if m is not None:
            maps.append(m)
    all_scores, all_maps = np.concatenate(scores), (np.concatenate(maps) if maps else None)
    refuse_non_finite(f"{predictor.name} ({predictor.runtime})", all_scores, all_maps, inputs)
    return all_scores, all_maps


def predict_inputs(predictor: Predictor, inputs: Sequence[Any]) -> DetectionResult:
    """``predict`` from image files, arrays or ``ImageRecord`` s (decoded as ``score_inputs`` does)."""
    return predictor.decision_.apply(*score_inputs(predictor, inputs))


def predict_inputs_in_chunks(predictor: Predictor, inputs: Sequence[Any], chunk_size: int = 64
                             ) -> Iterator[tuple[int, DetectionResult]]:
    """``predict_inputs`` over ``inputs`` in chunks: yields (offset of the chunk, its DetectionResult)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, len(inputs), chunk_size):
        yield start, predict_inputs(predictor, inputs[start : start + chunk_size])


def result_row(image: str, score: float, normalized_score: float, anomalous: Any, threshold: Any) -> dict[str, Any]:
    """One image's result (``RESULT_FIELDS``): its name, raw and normalised score, verdict, image threshold."""
    return {"image": image, "score": float(score), "normalized_score": float(normalized_score),
            "anomalous": bool(anomalous), "threshold": threshold}


def result_rows(images: Sequence[str], scores: np.ndarray, normalized: np.ndarray, labels: np.ndarray,
                threshold: Any) -> list[dict[str, Any]]:
    """``result_row`` of each image, in order (``normalized``: ``DecisionRule.normalized`` of ``scores``)."""
    return [result_row(image, scores[i], normalized[i], labels[i], threshold) for i, image in enumerate(images)]


__all__ = ["RESULT_FIELDS", "predict", "predict_inputs", "predict_inputs_in_chunks", "refuse_non_finite", "result_row",
           "result_rows", "score_inputs"]
