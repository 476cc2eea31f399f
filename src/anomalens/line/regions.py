"""Defect regions of one verdict, for the line's records: the anomaly map brought to the image's own size,
thresholded at the rule's pixel threshold (the mask ``anomalens predict`` writes), and its 8-connected
components (``scipy.ndimage.label``) as boxes with their areas in image pixels — the same regions the service
answers (``anomalens.serve.inference.defect_regions``, reused here)."""

from __future__ import annotations

import numpy as np


def record_regions(amap: np.ndarray | None, pixel_threshold: float | None, size: tuple[int, int]) -> list[dict[str, int]]:
    """[{x, y, width, height, area}], largest first, of the map's mask at ``size`` (height, width); [] when the
    detector does not localise (no map) or the rule has no pixel threshold."""
    if amap is None or pixel_threshold is None:
        return []
    from anomalens.report.overlay import to_original_size
    from anomalens.serve.inference import defect_regions

    mask = to_original_size(amap, size) > pixel_threshold
    regions, _ = defect_regions(mask)
    return regions


__all__ = ["record_regions"]
