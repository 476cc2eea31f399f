"""What the workflow's commands share: reading DATA, an image's content key, the peak memory figure."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import numpy as np

from anomalens.data import AnomalyDataset, ImageRecord, load_dataset

logger = logging.getLogger("anomalens")


def as_dataset(data: str | Path | AnomalyDataset) -> AnomalyDataset:
    return data if isinstance(data, AnomalyDataset) else load_dataset(data)


def as_test_dataset(data: str | Path | AnomalyDataset, run_categories: list[str] | None) -> AnomalyDataset:
    """DATA for a run's test or calibration: as :func:`as_dataset`, except that a plain dataset root given to a
    unified run (one model for many products: ``run_categories``) is read as that run was fitted, every category
    under it as one dataset (``anomalens.data.unified``). One category folder stays one category."""
    if run_categories and isinstance(data, (str, Path)) and Path(data).is_dir():
        from anomalens.data.layouts import detect_layout
        from anomalens.data.unified import load_unified

        if detect_layout(data) is None:
            dataset = load_unified(data)
            tested = {r.category for r in dataset.test}
            notes = []
            if missing := sorted(set(run_categories) - tested):
                notes.append(f"no test images of {', '.join(missing)}, which the run was fitted on")
            if unseen := sorted(tested - set(run_categories)):
                notes.append(f"{', '.join(unseen)}: not among the run's categories (scored by the one model all the same)")
            if notes:
                logger.warning("%s: %s", data, "; ".join(notes))
            return dataset
    return as_dataset(data)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux/macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def image_key(record: ImageRecord) -> str:
    """A short key of an image's content (its file's bytes, or an in-memory array's pixels): the same image
    copied elsewhere has the same key. '' when it cannot be read (the scoring path reports that)."""
    source = record.source
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else np.ascontiguousarray(source).tobytes()
    except (OSError, TypeError, ValueError):
        return ""
    return hashlib.sha1(data).hexdigest()[:16]


def read_dataset(data: str | Path | AnomalyDataset) -> AnomalyDataset:
    """DATA as ``fit_run`` reads it (a folder, a one-class protocol, a data source or a dataset)."""
    return as_dataset(data)


def run_categories(run_dir: str | Path) -> list[str] | None:
    """The categories a unified run was fitted on (run.json ``categories``), or None for any other run."""
    import json

    from anomalens.outputs.names import RUN_INFO_FILE

    try:
        info = json.loads((Path(run_dir) / RUN_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the run reports a missing or broken run folder in its own words
    categories = info.get("categories") if isinstance(info, dict) else None
    return [str(c) for c in categories] if isinstance(categories, list) and categories else None
