"""Generic folder datasets, and :func:`load_dataset`, the single entry point for a DATA argument."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from anomalens.data.io import list_images
from anomalens.data.mvtec import GOOD, check_mask_size, find_mask, is_mvtec_category, load_mvtec_category
from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError

__all__ = ["load_folder_dataset", "load_dataset", "LAYOUT_HELP"]

#: Printed when a DATA argument matches no supported layout.
LAYOUT_HELP = (
    "expected an MVTec AD category folder (train/good/*.png, optional test/<defect>/*.png "
    "and ground_truth/<defect>/<stem>_mask.png), a folder that directly contains normal images, or a "
    "one-class protocol such as mnist:normal=7,8:abnormal=2"
)

# Folder names too generic to name a dataset; the dataset takes its parent's name instead.
_GENERIC_NAMES = frozenset({"good", "normal", "ok", "train", "images", "img", "imgs", "data", "."})


def _default_name(folder: Path) -> str:
    """A readable dataset name from the normal folder (``bottle/train/good`` -> ``bottle``)."""
    path = folder.resolve()
    while path.name.lower() in _GENERIC_NAMES and path.parent != path:
        path = path.parent
    return path.name or "dataset"


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

    return AnomalyDataset(name=name or _default_name(normal_dir), train=train, test=test)


def load_dataset(path: str | Path, name: str | None = None, **kw: object) -> AnomalyDataset:
    """Load a DATA argument: an MVTec-layout category, a plain folder of normal images, or a one-class
    protocol by name (``mnist:normal=7,8:abnormal=2``; see :func:`anomalens.data.oneclass.load_builtin`).
    An existing folder of the same name wins over a protocol name.

    Extra keyword arguments (``abnormal_dirs``, ``test_normal_dir``, ``mask_dir``) are passed
    to :func:`load_folder_dataset` for plain folders; they do not apply to MVTec layouts.
    ``name`` overrides the dataset name in both cases.
    """
    from anomalens.data.oneclass import is_builtin_spec, load_builtin  # here, not at the top: oneclass imports records

    if not Path(path).exists() and is_builtin_spec(str(path)):
        if kw:
            raise DataError(f"{path}: options {', '.join(sorted(kw))} only apply to plain image folders")
        dataset = load_builtin(str(path))
        if name:
            dataset.name = name
        return dataset
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist; {LAYOUT_HELP}")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a dataset folder; {LAYOUT_HELP}")
    if is_mvtec_category(path):
        if kw:
            raise DataError(
                f"{path}: is an MVTec AD category; options {', '.join(sorted(kw))} only apply to plain image folders"
            )
        dataset = load_mvtec_category(path)
        if name:
            dataset.name = name
        return dataset
    if list_images(path):
        return load_folder_dataset(path, name=name, **kw)  # type: ignore[arg-type]
    # Nothing usable: say what was found, e.g. the MVTec root with all categories inside.
    categories = sorted(d.name for d in path.iterdir() if d.is_dir() and is_mvtec_category(d))
    if categories:
        shown = ", ".join(categories[:5]) + (", ..." if len(categories) > 5 else "")
        raise DataError(f"{path}: holds {len(categories)} dataset categories ({shown}); pass one category folder")
    raise DataError(f"{path}: no images and not an MVTec AD category; {LAYOUT_HELP}")
