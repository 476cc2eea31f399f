"""Plain data records that every loader produces and every detector consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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


def split_records(records: Sequence[ImageRecord], fraction: float, seed: int, stream: int = 0) -> tuple[list, list]:
    """Seeded random split into (kept, held out): ``fraction`` of the records held out (at least one,
    never all); nothing held out when ``fraction`` <= 0 or fewer than two records.

    ``stream`` gives independent splits from one seed (0: the threshold hold-out of ``Detector.fit``,
    1: a model's validation set), so the two do not pick the same images.
    """
    records = list(records)
    if fraction <= 0 or len(records) < 2:
        return records, []
    n_held = min(len(records) - 1, max(1, int(round(len(records) * fraction))))
    order = np.random.default_rng(int(seed) if stream == 0 else (int(seed), stream)).permutation(len(records))
    return [records[i] for i in sorted(order[n_held:])], [records[i] for i in sorted(order[:n_held])]

