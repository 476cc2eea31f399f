"""Plain data records that every loader produces and every detector consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from anomalens.names import printable


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, with its label and optional ground-truth mask.

    ``source`` and ``mask`` are either file paths (read lazily, so a dataset of
    thousands of images costs nothing until iterated) or in-memory arrays (used by
    the one-class protocols of MNIST-like datasets).

    ``category``: in a unified dataset (one model for many products, :mod:`anomalens.data.unified`) the
    category the image belongs to; empty otherwise.

    ``defect_masks``: the image's defects one file each, for layouts that annotate them separately
    (MVTec LOCO: ``ground_truth/<split>/<stem>/000.png, 001.png, ...``, the pixel value naming the
    defect type). ``mask`` is then their union, what pixel AUROC / AUPRO use; sPRO needs each defect
    on its own. Empty for every other layout.
    """

    source: Path | np.ndarray
    label: int
    mask: Path | np.ndarray | None = None
    name: str = ""
    defect_type: str = "good"
    defect_masks: tuple[Path, ...] = ()
    category: str = ""  # the dataset category of an image in a unified (many-category) dataset, else ""

    def __post_init__(self) -> None:
        # Names go into CSV, JSON and HTML files: a file name that is not UTF-8 is spelt with \xNN escapes.
        object.__setattr__(self, "name", printable(self.name))
        object.__setattr__(self, "defect_type", printable(self.defect_type))

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


@dataclass(frozen=True)
class DefectConfig:
    """One defect type of an MVTec LOCO category, as its ``defects_config.json`` lists it.

    Its masks carry ``pixel_value``; sPRO counts one of its regions as fully found once
    :meth:`saturation_area` of its pixels are flagged (Bergmann et al. 2022, "Beyond Dents and
    Scratches"): a fraction of the region when ``relative_saturation``, else a number of pixels
    (never more than the region).
    """

    name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def saturation_area(self, defect_area: float) -> float:
        """Pixels of a region of ``defect_area`` pixels that must be detected for it to count as found."""
        if self.relative_saturation:
            return self.saturation_threshold * defect_area
        return min(self.saturation_threshold, defect_area)


@dataclass
class AnomalyDataset:
    """A named dataset: normal-only training records and a (possibly empty) labelled test set.

    What some benchmark layouts ship beyond that (empty otherwise):

    * ``layout``: the name of the layout it was read from (``"mvtec"``, ``"mvtec_loco"``, ...), which
      decides the benchmark's own metrics (:mod:`anomalens.benchmark_protocols`);
    * ``validation``: the normal validation images (MVTec LOCO / AD 2 ``validation/good``);
    * ``unlabelled``: test splits shipped without labels, by name (MVTec AD 2 ``test_private`` and
      ``test_private_mixed``, label -1): for ``predict``, not for metrics;
    * ``defect_configs``: MVTec LOCO's defect types by mask pixel value (for sPRO).
    """

    name: str
    train: list[ImageRecord]
    test: list[ImageRecord] = field(default_factory=list)
    layout: str = ""
    validation: list[ImageRecord] = field(default_factory=list)
    unlabelled: dict[str, list[ImageRecord]] = field(default_factory=dict)
    defect_configs: dict[int, DefectConfig] = field(default_factory=dict)

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

