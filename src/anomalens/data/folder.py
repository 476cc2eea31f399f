"""Plain folders of images: all normal (the ``folder`` layout), or labelled by folder (``--normal``,
``--abnormal``, ``--test-normal``, ``--masks``). :func:`anomalens.data.layouts.load_dataset` dispatches here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from anomalens.data.io import list_images
from anomalens.data.mvtec import GOOD, check_mask_size, find_mask
from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError

__all__ = ["has_images", "load_folder_dataset"]

# Folder names too generic to name a dataset; the dataset takes its parent's name instead.
_GENERIC_NAMES = frozenset({"good", "normal", "ok", "train", "images", "img", "imgs", "data", "."})


def _default_name(folder: Path) -> str:
    """A readable dataset name from the normal folder (``bottle/train/good`` -> ``bottle``)."""
    path = folder.resolve()
    while path.name.lower() in _GENERIC_NAMES and path.parent != path:
        path = path.parent
    return path.name or "dataset"


def has_images(folder: str | Path) -> bool:
    """True for a folder that directly contains at least one image (the ``folder`` layout)."""
    return Path(folder).is_dir() and bool(list_images(folder))


def _folder_records(folder: Path, label: int, defect_type: str, prefix: str, what: str) -> list[ImageRecord]:
    """Records for every image in ``folder``; an explicitly given but empty folder is an error."""
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder}: no images found in the {what} folder")
    return [ImageRecord(source=p, label=label, name=f"{prefix}/{p.name}", defect_type=defect_type) for p in paths]


def load_folder_dataset(
    normal_dir: str | Path,
    abnormal_dirs: Iterable[str | Path] = (),
    test_normal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    name: str | None = None,
) -> AnomalyDataset:
    """Build a dataset from plain folders of images.

    * ``normal_dir``: normal training images (required, non-empty).
    * ``test_normal_dir``: normal test images (label 0, defect type ``"good"``).
    * ``abnormal_dirs``: anomalous test images, defect type = folder name.
    * ``mask_dir``: masks looked up per anomalous image by stem, first in
      ``mask_dir/<defect_type>/`` then in ``mask_dir/``, as ``<stem>.png`` or
      ``<stem>_mask.png`` (any image suffix). When given, every anomalous image needs one
      of the same size. Without it masks are None (image-level evaluation only).

    Record names are ``train/<file>``, ``test/good/<file>`` and ``test/<defect>/<file>``.
    """
    normal_dir = Path(normal_dir)
    abnormal = [Path(d) for d in ([abnormal_dirs] if isinstance(abnormal_dirs, (str, Path)) else abnormal_dirs)]
    train = _folder_records(normal_dir, 0, GOOD, "train", "normal (training)")

    # Guard against evaluating on the training images (silently perfect scores) and against
    # two defect folders that would merge under one name in reports.
    normal_resolved = normal_dir.resolve()
    if test_normal_dir is not None and Path(test_normal_dir).resolve() == normal_resolved:
        raise DataError(f"{test_normal_dir}: test normal folder is the training folder; use separate images")
    seen: dict[str, Path] = {}
    for d in abnormal:
        if d.resolve() == normal_resolved:
            raise DataError(f"{d}: abnormal folder is the normal training folder")
        if d.name == GOOD:
            raise DataError(f"{d}: an abnormal folder cannot be named '{GOOD}' (reserved for normal images)")
        if d.name in seen:
            raise DataError(f"{d}: abnormal folder name '{d.name}' is used twice (also {seen[d.name]})")
        seen[d.name] = d

    test: list[ImageRecord] = []
    if test_normal_dir is not None:
        test += _folder_records(Path(test_normal_dir), 0, GOOD, f"test/{GOOD}", "test normal")

    mask_root = Path(mask_dir) if mask_dir is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise DataError(f"{mask_root}: mask folder does not exist")
    # A flat mask folder keyed by stem is ambiguous when two defect folders share a file
    # stem (e.g. both have 000.png); remember which image claimed each mask.
    claimed: dict[Path, Path] = {}
    for d in abnormal:
        for rec in _folder_records(d, 1, d.name, f"test/{d.name}", "abnormal"):
            if mask_root is not None:
                image = rec.source
                assert isinstance(image, Path)
                patterns = ("{stem}", "{stem}_mask")
                mask = find_mask(mask_root / d.name, image.stem, patterns) or find_mask(mask_root, image.stem, patterns)
                if mask is None:
                    raise DataError(
                        f"{mask_root / (image.stem + '.png')}: mask missing for anomalous image {image} "
                        f"(looked for <stem>.png / <stem>_mask.png in {mask_root / d.name} and {mask_root})"
                    )
                if mask in claimed:
                    raise DataError(
                        f"{mask}: mask matches two images ({claimed[mask]} and {image}); "
                        f"put masks in {mask_root}/<defect_type>/ subfolders"
                    )
                claimed[mask] = image
                check_mask_size(image, mask)
                rec = replace(rec, mask=mask)
            test.append(rec)

    return AnomalyDataset(name=name or _default_name(normal_dir), train=train, test=test, layout="folder")
