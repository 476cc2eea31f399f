"""Reader for one object of VisA (Zou et al., "SPot-the-Difference", ECCV 2022), exactly as it ships.

Layout (anything else beside these is ignored)::

    <VisA>/split_csv/1cls.csv                   columns object,split,label,image,mask; paths relative to <VisA>
    <VisA>/<object>/Data/Images/Normal/*.JPG    normal images (train and test, as the csv says)
    <VisA>/<object>/Data/Images/Anomaly/*.JPG   anomalous images (test)
    <VisA>/<object>/Data/Masks/Anomaly/*.png    their masks (non-zero = defect)

The split is the one-class protocol of ``1cls.csv`` (``split`` = train / test, ``label`` = normal /
anomaly). DATA is the object folder (``VisA/candle``): the csv is looked up in its parent. From
Python, :func:`load_visa_object` also takes the VisA root and an object name.
"""

from __future__ import annotations

import csv
from pathlib import Path

from anomalens.data.mvtec import GOOD, check_mask_size, reading_masks, require_dataset_folder
from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError

__all__ = ["SPLIT_CSV", "is_visa_object", "is_visa_root", "load_visa_object", "visa_objects"]

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
ANOMALY = "anomaly"


def is_visa_object(folder: str | Path) -> bool:
    """True for a VisA object folder (it has ``Data/Images``)."""
    return (Path(folder) / "Data" / "Images").is_dir()


def is_visa_root(folder: str | Path) -> bool:
    """True for the VisA root (it has ``split_csv/1cls.csv``)."""
    return (Path(folder) / SPLIT_CSV).is_file()


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every row of the split csv, its header checked."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                                f"(expected the header {','.join(COLUMNS)})")
            return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read: {exc}") from None


def visa_objects(root: str | Path) -> list[str]:
    """The objects that the VisA root's ``split_csv/1cls.csv`` lists, sorted."""
    return sorted({row["object"] for _, row in _read_rows(Path(root) / SPLIT_CSV) if row["object"]})


def load_visa_object(path: str | Path, object_name: str | None = None) -> AnomalyDataset:
    """Load one VisA object with the 1cls split: ``path`` is the object folder, or the VisA root with
    ``object_name``.

    Every row of the object must name an existing image (and, for anomalies with a mask, an existing
    mask of the image's size): a missing file is a DataError naming the csv line and the file.
    """
    path = require_dataset_folder(path, "a VisA object")
    if object_name is None and is_visa_root(path):
        objects = visa_objects(path)
        shown = ", ".join(objects[:5]) + (", ..." if len(objects) > 5 else "")
        raise DataError(f"{path}: is the VisA root with {len(objects)} objects ({shown}); pass one object folder, "
                        f"e.g. {path / (objects[0] if objects else 'candle')}")
    if object_name is None:
        if not is_visa_object(path):
            raise DataError(f"{path / 'Data' / 'Images'}: folder missing; a VisA object folder needs "
                            "Data/Images/{Normal,Anomaly}/ and ../split_csv/1cls.csv")
        root, object_name = path.parent, path.name
    else:
        root = path
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: missing; VisA's split file must stay in the VisA root, next to the "
                        f"object folder {root / object_name}")
    rows = [(line, row) for line, row in _read_rows(csv_path) if row["object"] == object_name]
    if not rows:
        raise DataError(f"{csv_path}: no rows for object '{object_name}' (objects: {', '.join(visa_objects(root))})")

    train: list[ImageRecord] = []
    test: list[ImageRecord] = []
    for line, row in rows:
        where = f"{csv_path}, line {line}"
        label = {"normal": 0, ANOMALY: 1}.get(row["label"].lower())
        if label is None:
            raise DataError(f"{where}: label must be normal or anomaly, got {row['label']!r}")
        split = row["split"].lower()
        if split not in ("train", "test"):
            raise DataError(f"{where}: split must be train or test, got {row['split']!r}")
        if split == "train" and label == 1:
            raise DataError(f"{where}: an anomalous image in the training split ({row['image']})")
        image = root / row["image"]
        if not image.is_file():
            raise DataError(f"{where}: {image}: image file does not exist")
        mask = None
        if label == 1 and row["mask"]:
            mask = root / row["mask"]
            if not mask.is_file() and reading_masks():  # fit (masks_unread) never reads the test masks
                raise DataError(f"{where}: {mask}: mask file does not exist (mask of {image})")
            check_mask_size(image, mask)
        name = Path(row["image"]).as_posix()
        record = ImageRecord(source=image, label=label, mask=mask, name=name, defect_type=ANOMALY if label else GOOD)
        (train if split == "train" else test).append(record)
    if not train:
        raise DataError(f"{csv_path}: no training images for object '{object_name}'")
    return AnomalyDataset(name=object_name, train=train, test=test, layout="visa")
