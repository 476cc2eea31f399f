"""Reader for one object of MVTec AD 2 (Heckler-Kram et al., "The MVTec AD 2 Dataset", 2025), as it ships.

Layout (anything else beside these is ignored)::

    <object>/train/good/*.png                                  normal training images
    <object>/validation/good/*.png                             normal validation images
    <object>/test_public/good/*.png                            normal test images
    <object>/test_public/bad/*.png                             anomalous test images
    <object>/test_public/ground_truth/bad/<stem>_mask.png      their masks
    <object>/test_private/*.png                                test images without labels
    <object>/test_private_mixed/*.png                          the same under mixed lighting, no labels

The naming was checked against MVTec's own dataset class (``mvtec_ad_2_public_offline.py``) and
anomalib's ``MVTecAD2``: images are called like ``000_regular.png``, masks add ``_mask``, and the two
private splits are flat folders whose labels only MVTec's evaluation server knows. Only
``test_public`` is therefore a test split here; the private splits are kept, unlabelled, in
``AnomalyDataset.unlabelled`` for ``anomalens predict`` (or pass their folder to it directly).
"""

from __future__ import annotations

from pathlib import Path

from anomalens.data.mvtec import GOOD, records_in, require_dataset_folder, require_images, with_mask
from anomalens.data.records import AnomalyDataset, ImageRecord

__all__ = ["PUBLIC_TEST_SPLIT", "PRIVATE_TEST_SPLITS", "is_mvtec_ad2_category", "load_mvtec_ad2_category"]

PUBLIC_TEST_SPLIT = "test_public"
PRIVATE_TEST_SPLITS = ("test_private", "test_private_mixed")
BAD = "bad"


def is_mvtec_ad2_category(root: str | Path) -> bool:
    """True for a folder with ``train/good`` and at least one of MVTec AD 2's test splits."""
    root = Path(root)
    return (root / "train" / GOOD).is_dir() and any(
        (root / split).is_dir() for split in (PUBLIC_TEST_SPLIT, *PRIVATE_TEST_SPLITS)
    )


def load_mvtec_ad2_category(root: str | Path) -> AnomalyDataset:
    """Load one MVTec AD 2 object: train = ``train/good``, test = ``test_public`` (good and bad).

    ``validation/good`` goes to ``dataset.validation``, the private splits to ``dataset.unlabelled``
    (label -1). When ``test_public/ground_truth`` exists every ``bad`` image needs its
    ``<stem>_mask.png`` of the image's size; without it evaluation is image-level only.
    """
    root = require_dataset_folder(root, "an MVTec AD 2 object")
    train = require_images(root, root / "train" / GOOD, "an MVTec AD 2 object")
    validation_dir = root / "validation" / GOOD
    validation = records_in(root, validation_dir, 0, GOOD) if validation_dir.is_dir() else []

    test: list[ImageRecord] = []
    public = root / PUBLIC_TEST_SPLIT
    if (public / GOOD).is_dir():
        test += records_in(root, public / GOOD, 0, GOOD)
    if (public / BAD).is_dir():
        gt_root = public / "ground_truth"
        for rec in records_in(root, public / BAD, 1, BAD):
            if gt_root.is_dir():
                rec = with_mask(rec, gt_root / BAD, "{stem}_mask")
            test.append(rec)
    unlabelled = {
        split: records_in(root, root / split, -1, "unlabelled")
        for split in PRIVATE_TEST_SPLITS
        if (root / split).is_dir()
    }
    name = root.resolve().name or str(root)
    return AnomalyDataset(name=name, train=train, test=test, layout="mvtec_ad2", validation=validation,
                          unlabelled=unlabelled)
