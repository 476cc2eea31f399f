"""Reader for one category of MVTec LOCO AD (Bergmann et al., "Beyond Dents and Scratches", IJCV 2022).

Layout, exactly as it ships (anything else beside these is ignored)::

    <category>/train/good/*.png                            normal training images
    <category>/validation/good/*.png                       normal validation images
    <category>/test/good/*.png                             normal test images
    <category>/test/logical_anomalies/*.png                anomalous test images, one folder per split
    <category>/test/structural_anomalies/*.png
    <category>/ground_truth/<split>/<stem>/000.png, ...    one mask per defect of image <stem>
    <category>/defects_config.json                         the defect types: pixel value -> saturation

Every defect of an image has its own mask file, whose non-zero pixels all carry the defect type's
``pixel_value``. The record's ``mask`` is the union of those files (what pixel AUROC and AUPRO use:
the file itself when there is one, an in-memory bool array when there are several), and its
``defect_masks`` keeps the files, which sPRO scores one by one with the saturation of their type
(``dataset.defect_configs``, read from ``defects_config.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from anomalens.data.io import list_images, load_mask
from anomalens.data.mvtec import (
    GOOD,
    check_mask_size,
    reading_masks,
    records_in,
    require_dataset_folder,
    require_images,
)
from anomalens.data.records import AnomalyDataset, DefectConfig, ImageRecord
from anomalens.errors import DataError

__all__ = ["DEFECTS_CONFIG", "LOCO_SPLITS", "is_loco_category", "load_loco_category", "read_defects_config"]

DEFECTS_CONFIG = "defects_config.json"
LOCO_SPLITS = ("logical_anomalies", "structural_anomalies")


def is_loco_category(root: str | Path) -> bool:
    """True for a folder with ``train/good`` and LOCO's ``defects_config.json`` or one of its test splits."""
    root = Path(root)
    if not (root / "train" / GOOD).is_dir():
        return False
    return (root / DEFECTS_CONFIG).is_file() or any((root / "test" / split).is_dir() for split in LOCO_SPLITS)


def read_defects_config(path: str | Path) -> dict[int, DefectConfig]:
    """``defects_config.json`` → its defect types by pixel value.

    The file is a JSON list of ``{"defect_name", "pixel_value", "saturation_threshold",
    "relative_saturation"}`` objects; anything else is a DataError naming the file and the entry.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty JSON list of defect types")
    configs: dict[int, DefectConfig] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [k for k in ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")
                   if k not in entry]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}")
        value, threshold, relative = entry["pixel_value"], entry["saturation_threshold"], entry["relative_saturation"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise DataError(f"{where}: pixel_value must be an integer in 1..255, got {value!r}")
        if (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
                or threshold <= 0):
            raise DataError(f"{where}: saturation_threshold must be a number > 0, got {threshold!r}")
        if not isinstance(relative, bool):
            raise DataError(f"{where}: relative_saturation must be true or false, got {relative!r}")
        if value in configs:
            raise DataError(f"{where}: pixel_value {value} is also used by '{configs[value].name}'")
        configs[value] = DefectConfig(str(entry["defect_name"]), value, float(threshold), relative)
    return configs


def _union_of(files: list[Path]) -> Path | np.ndarray:
    """The one mask file itself, or the union of several as a bool array (decoded now: ``mask`` is one
    file or one array)."""
    if len(files) == 1:
        return files[0]
    union = load_mask(files[0])
    for other in files[1:]:
        union = union | load_mask(other)
    return union


def load_loco_category(root: str | Path) -> AnomalyDataset:
    """Load one MVTec LOCO AD category.

    * ``train/good`` must exist and hold images; ``validation/good`` goes to ``dataset.validation``.
    * ``test/`` is optional; every folder in it but ``good`` is an anomalous split (defect type = its
      name: ``logical_anomalies`` / ``structural_anomalies``).
    * ``ground_truth/`` is optional; when present ``defects_config.json`` must be too, and every
      anomalous image needs ``ground_truth/<split>/<stem>/`` with at least one mask, each of the
      image's size.
    """
    root = require_dataset_folder(root, "an MVTec LOCO AD category")
    train = require_images(root, root / "train" / GOOD, "an MVTec LOCO AD category")
    validation_dir = root / "validation" / GOOD
    validation = records_in(root, validation_dir, 0, GOOD) if validation_dir.is_dir() else []

    gt_root = root / "ground_truth"
    has_gt = gt_root.is_dir()
    configs: dict[int, DefectConfig] = {}
    if has_gt:
        config_path = root / DEFECTS_CONFIG
        if not config_path.is_file():
            raise DataError(f"{config_path}: missing; MVTec LOCO AD needs it to tell the defect types of "
                            f"{gt_root} apart (one pixel value per type)")
        configs = read_defects_config(config_path)

    test: list[ImageRecord] = []
    test_dir = root / "test"
    if test_dir.is_dir():
        splits = sorted((d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
        for split_dir in splits:
            split = split_dir.name
            label = 0 if split == GOOD else 1
            for rec in records_in(root, split_dir, label, split):
                if label == 1 and has_gt:
                    image = rec.source
                    assert isinstance(image, Path)
                    folder = gt_root / split / image.stem
                    files = list_images(folder) if folder.is_dir() else []
                    if not files and reading_masks():
                        raise DataError(f"{folder}: no ground-truth mask for anomalous test image {image} "
                                        "(expected 000.png, one file per defect)")
                    for mask in files:
                        check_mask_size(image, mask)
                    if files and reading_masks():  # fit (masks_unread) never opens them
                        rec = replace(rec, mask=_union_of(files), defect_masks=tuple(files))
                test.append(rec)
    name = root.resolve().name or str(root)
    return AnomalyDataset(name=name, train=train, test=test, layout="mvtec_loco", validation=validation,
                          defect_configs=configs)
