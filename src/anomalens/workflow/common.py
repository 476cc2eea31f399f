"""What the workflow's commands share: reading DATA, an image's content key, the peak memory figure."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from anomalens.data import AnomalyDataset, ImageRecord, load_dataset


def as_dataset(data: str | Path | AnomalyDataset) -> AnomalyDataset:
    return data if isinstance(data, AnomalyDataset) else load_dataset(data)


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
