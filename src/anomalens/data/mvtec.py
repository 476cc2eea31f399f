"""Reader for one category of the MVTec AD layout, and the folder helpers the other layouts share.

Layout, exactly as MVTec AD ships it (anything else beside these is ignored)::

    <root>/train/good/*.png                      normal training images
    <root>/test/good/*.png                       normal test images
    <root>/test/<defect_type>/*.png              anomalous test images
    <root>/ground_truth/<defect_type>/<stem>_mask.png   optional pixel masks
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path

from anomalens.data.io import IMAGE_SUFFIXES, image_size, list_images
from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError

__all__ = ["is_mvtec_category", "load_mvtec_category", "check_mask_size", "masks_unread", "reading_masks", "with_mask",
           "find_mask", "records_in", "require_images"]

GOOD = "good"


def is_mvtec_category(root: str | Path) -> bool:
    """True when ``root`` looks like an MVTec AD category (it has a ``train/good`` folder)."""
    return (Path(root) / "train" / GOOD).is_dir()


_MASKS_UNREAD: ContextVar[bool] = ContextVar("anomalens_masks_unread", default=False)


@contextmanager
def masks_unread() -> Iterator[None]:
    """While active, loaders neither open nor require the test split's ground-truth masks: ``fit`` reads only
    training images, so a broken, missing or mismatched mask — a problem of the test set — is reported by
    ``test`` and ``calibrate``, which read it, not by a fit that never does."""
    token = _MASKS_UNREAD.set(True)
    try:
        yield
    finally:
        _MASKS_UNREAD.reset(token)


def reading_masks() -> bool:
    """False inside :func:`masks_unread`."""
    return not _MASKS_UNREAD.get()


def check_mask_size(image: Path, mask: Path) -> None:
    """Raise DataError naming both files when their (H, W) differ (headers only, no decoding); nothing
    inside :func:`masks_unread`."""
    if not reading_masks():
        return
    img_hw, mask_hw = image_size(image), image_size(mask)
    if img_hw != mask_hw:
        raise DataError(
            f"{mask}: mask size {mask_hw[1]}x{mask_hw[0]} (WxH) does not match image "
            f"{image} size {img_hw[1]}x{img_hw[0]}"
        )


def with_mask(record: ImageRecord, folder: Path, pattern: str) -> ImageRecord:
    """``record`` (an anomalous test image) with its mask ``folder/<pattern % stem>.<image suffix>``, checked to
    exist and to have the image's size — except inside :func:`masks_unread`, where neither is required."""
    image = record.source
    assert isinstance(image, Path)
    mask = find_mask(folder, image.stem, (pattern,))
    if mask is None and reading_masks():
        raise DataError(f"{folder / (pattern.format(stem=image.stem) + '.png')}: mask missing for anomalous test "
                        f"image {image}")
    check_mask_size(image, mask)
    return replace(record, mask=mask)


def find_mask(folder: Path, stem: str, patterns: tuple[str, ...]) -> Path | None:
    """First existing ``folder/<pattern % stem><suffix>`` for any image suffix, or None.

    ``.png`` is tried first because it is what datasets ship; other suffixes (any case) are
    accepted so a user's ``.bmp``/``.PNG`` masks are not reported as missing.
    """
    if not folder.is_dir():
        return None
    suffixes = [".png"] + sorted(IMAGE_SUFFIXES - {".png"})
    for pattern in patterns:
        base = pattern.format(stem=stem)
        for suffix in suffixes:
            candidate = folder / f"{base}{suffix}"
            if candidate.is_file():
                return candidate
        # Case-insensitive suffix match (e.g. 000_mask.PNG) without listing every time
        # for the common case above.
        for candidate in folder.glob(f"{base}.*"):
            if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
                return candidate
    return None


def records_in(root: Path, folder: Path, label: int, defect_type: str) -> list[ImageRecord]:
    """Records for every image in ``folder``; names are paths relative to ``root`` (with /)."""
    return [
        ImageRecord(
            source=path,
            label=label,
            name=path.relative_to(root).as_posix(),
            defect_type=defect_type,
        )
        for path in list_images(folder)
    ]


def require_dataset_folder(root: str | Path, what: str) -> Path:
    """``root`` as a Path when it is a folder; else a DataError saying it is missing or a file, naming ``what``
    it should be ("an MVTec AD category")."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected {what} folder, found a file")
    return root


def require_images(root: Path, folder: Path, what: str) -> list[ImageRecord]:
    """Normal records (label 0) of a split the layout cannot do without, e.g. ``train/good``; a missing
    or empty folder is a DataError naming it and what needs it (``what``: "an MVTec AD category")."""
    if not folder.is_dir():
        split = folder.relative_to(root).as_posix()
        raise DataError(f"{folder}: folder missing; {what} needs {split}/ with normal images")
    records = records_in(root, folder, 0, GOOD)
    if not records:
        raise DataError(f"{folder}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    return records


def load_mvtec_category(root: str | Path) -> AnomalyDataset:
    """Load one MVTec-AD-layout category folder into an :class:`AnomalyDataset`.

    * ``train/good`` must exist and hold images.
    * ``test/`` is optional (missing -> empty test set, for fit-only use).
    * ``ground_truth/`` is optional; when present every anomalous test image needs its
      ``<stem>_mask.png`` of the same size as the image, otherwise DataError.
    """
    root = require_dataset_folder(root, "an MVTec AD category")
    train = require_images(root, root / "train" / GOOD, "an MVTec AD category")

    test: list[ImageRecord] = []
    test_dir = root / "test"
    gt_dir = root / "ground_truth"
    has_gt = gt_dir.is_dir()
    if test_dir.is_dir():
        # Sorted so record order (and thus reports) is stable across file systems.
        defect_dirs = sorted(
            (d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.name,
        )
        for defect_dir in defect_dirs:
            defect = defect_dir.name
            label = 0 if defect == GOOD else 1
            for rec in records_in(root, defect_dir, label, defect):
                if label == 1 and has_gt:
                    rec = with_mask(rec, gt_dir / defect, "{stem}_mask")
                test.append(rec)
    name = root.resolve().name or str(root)
    return AnomalyDataset(name=name, train=train, test=test, layout="mvtec")
