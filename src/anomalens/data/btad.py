"""Reader for one product of BTAD (beanTech Anomaly Detection; Mishra et al., "VT-ADL", 2021), as it ships.

Layout (anything else beside these is ignored)::

    <NN>/train/ok/*.bmp|*.png          normal training images (BMP or PNG, depending on the product)
    <NN>/test/ok/*                     normal test images
    <NN>/test/ko/*                     anomalous test images
    <NN>/ground_truth/ko/<stem>.png    their masks (always PNG, whatever the image format)
"""

from __future__ import annotations

from pathlib import Path

from anomalens.data.mvtec import GOOD, records_in, require_dataset_folder, require_images, with_mask
from anomalens.data.records import AnomalyDataset, ImageRecord

__all__ = ["is_btad_product", "load_btad_product"]

OK, KO = "ok", "ko"


def is_btad_product(root: str | Path) -> bool:
    """True for a folder with BTAD's ``train/ok``."""
    return (Path(root) / "train" / OK).is_dir()


def load_btad_product(root: str | Path) -> AnomalyDataset:
    """Load one BTAD product: train = ``train/ok``, test = ``test/ok`` (defect type ``good``) + ``test/ko``.

    When ``ground_truth/`` exists every ``ko`` image needs ``ground_truth/ko/<stem>.png`` of its size.
    """
    root = require_dataset_folder(root, "a BTAD product")
    train = require_images(root, root / "train" / OK, "a BTAD product")
    test: list[ImageRecord] = []
    if (root / "test" / OK).is_dir():
        test += records_in(root, root / "test" / OK, 0, GOOD)
    gt_root = root / "ground_truth"
    if (root / "test" / KO).is_dir():
        for rec in records_in(root, root / "test" / KO, 1, KO):
            if gt_root.is_dir():
                rec = with_mask(rec, gt_root / KO, "{stem}")
            test.append(rec)
    name = root.resolve().name or str(root)
    return AnomalyDataset(name=name, train=train, test=test, layout="btad")
