"""One dataset out of every category under a dataset root: one model for many products.

``fit DETECTOR ROOT --unified`` trains on the normal training images of all categories together (PatchCore
then holds one class-agnostic memory bank, PaDiM one Gaussian per position over every product, a trained
detector one network), and ``test RUN ROOT`` scores every category's test split with that one model and
reports each category and the whole. Every record keeps its category (``ImageRecord.category``) and is named
``<category>/<name>`` so that rows of different categories never collide.

The categories are those :func:`anomalens.data.layouts.find_categories` finds (MVTec AD, VisA, BTAD, ... or
the synthetic categories of ``anomalens demo``), each read in its own layout.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError

__all__ = ["load_unified", "categories_of"]


def _in_category(record: ImageRecord, category: str) -> ImageRecord:
    # A defect type names its product too: brick's scratches and coffee's are different defects.
    defect_type = record.defect_type if record.label == 0 else f"{category}/{record.defect_type}"
    return dataclasses.replace(record, name=f"{category}/{record.name}", category=category, defect_type=defect_type)


def load_unified(root: str | Path, layout: str | None = None, name: str | None = None) -> AnomalyDataset:
    """Every category under ``root`` as one dataset: the union of their training normals and of their test
    splits, each record carrying its category. A root with fewer than two categories is refused: a unified
    model of one category is the category's own model."""
    from anomalens.data.layouts import detect_layout, find_categories, load_dataset

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (--unified reads a dataset root that holds several categories)")
    found = find_categories(root, layout)
    if len(found) < 2:
        own_layout = detect_layout(root) if not found else None
        if own_layout not in (None, "folder"):
            raise DataError(f"{root}: is one dataset category ({own_layout} layout), not a root of categories; "
                            "without --unified it is read as it is")
        what = f"one category ({found[0][0]})" if found else "no dataset category"
        raise DataError(f"{root}: holds {what}; a unified model reads the categories of a dataset root (two or "
                        "more category folders, e.g. the output of 'anomalens demo' or an MVTec AD root); give one "
                        "category's own folder to fit or test it alone")
    train: list[ImageRecord] = []
    test: list[ImageRecord] = []
    for category, folder, category_layout in found:
        dataset = load_dataset(folder, layout=category_layout)
        train.extend(_in_category(r, category) for r in dataset.train)
        test.extend(_in_category(r, category) for r in dataset.test)
    layouts = {category_layout for _, _, category_layout in found}
    return AnomalyDataset(name=name or root.name, train=train, test=test,
                          layout=layouts.pop() if len(layouts) == 1 else "")


def categories_of(records: list[ImageRecord]) -> list[str]:
    """The sorted categories of ``records`` (empty for a dataset of one category)."""
    return sorted({r.category for r in records if r.category})
