"""Plain data records that every loader produces and every detector consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, with its label and optional ground-truth mask.

    ``source`` and ``mask`` are either file paths (read lazily, so a dataset of
    thousands of images costs nothing until iterated) or in-memory arrays (used by
    the one-class protocols of MNIST-like datasets).
    """

    source: Path | np.ndarray
    label: int
    mask: Path | np.ndarray | None = None
    name: str = ""
    defect_type: str = "good"

    def __repr__(self) -> str:
        # Summarise arrays: the default repr would print every pixel.
        def show(x: object) -> str:
            return f"<array {'x'.join(map(str, x.shape))} {x.dtype}>" if isinstance(x, np.ndarray) else repr(x)

        return (
            f"ImageRecord(source={show(self.source)}, label={self.label}, mask={show(self.mask)}, "
            f"name={self.name!r}, defect_type={self.defect_type!r})"
        )

    @property
    def is_anomalous(self) -> bool:
        """True for anomalous (label 1) records."""
        return self.label == 1


@dataclass
class AnomalyDataset:
    """A named dataset: normal-only training records and a (possibly empty) labelled test set."""

    name: str
    train: list[ImageRecord]
    test: list[ImageRecord] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        """True when the test set has >= 1 anomalous image and every anomalous one has a mask."""
        anomalous = [r for r in self.test if r.label == 1]
        return bool(anomalous) and all(r.mask is not None for r in anomalous)

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present in the test set (excluding ``"good"``)."""
        return sorted({r.defect_type for r in self.test if r.label == 1})

    def __repr__(self) -> str:
        n_bad = sum(r.label == 1 for r in self.test)
        return (
            f"AnomalyDataset(name={self.name!r}, train={len(self.train)}, "
            f"test={len(self.test)} ({n_bad} anomalous), has_masks={self.has_masks})"
        )
