"""The validation set a tune scores its trials on (``anomalens.tuning``'s docstring: what it is): labelled
images of another dataset, kept apart from DATA's test split, or held-out normals written once with and
without a pasted synthetic defect. Only training or validation images of DATA are read."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from anomalens.errors import DataError
from anomalens.tuning.space import Dimension

logger = logging.getLogger("anomalens")


def validation_size(detector: str, fixed: Mapping[str, Any], dimensions: Sequence[Dimension]) -> tuple[int, int]:
    """(height, width) the validation images are written at: the detector's input size, the largest one when
    the size is searched."""
    from anomalens.catalog import detector_class

    sizes = [fixed["image_size"]] if "image_size" in fixed else []
    for dim in dimensions:
        if dim.name == "image_size":
            sizes = list(dim.choices) if dim.choices is not None else [dim.high]
    if not sizes:
        sizes = [detector_class(detector).declared_params()["image_size"].default]
    pairs = [(s, s) if isinstance(s, int) else tuple(s) for s in sizes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def build_validation(dataset: Any, folder: Path, size: tuple[int, int], holdout: float, seed: int,
                     labelled: Any = None) -> tuple[list, str]:
    """Write the validation images into ``folder`` (``anomalens.tuning``); returns (training records the trials
    fit on, what the validation is, in words). Only training or validation images are read."""
    import numpy as np
    from PIL import Image

    from anomalens.data import DEFECT_TYPES, add_defect
    from anomalens.data.io import load_image
    from anomalens.data.records import split_records
    from anomalens.outputs import write_bytes, write_json

    if labelled is not None:  # labelled images of their own: nothing to write
        return list(dataset.train), f"the labelled images of {labelled.name} ({len(labelled.test)})"
    if dataset.validation:
        train, normals = list(dataset.train), list(dataset.validation)
        origin = f"its {len(normals)} validation normals"
    else:
        train, normals = split_records(dataset.train, holdout, seed, stream=2)
        origin = f"{len(normals)} training normals held out ({holdout:.0%}; no trial fits on them)"
    if len(normals) < 2 or not train:
        raise DataError(f"{dataset.name}: too few training images to hold {holdout:.0%} out for validation "
                        f"({len(dataset.train)}); give more images or --validation DATA")
    if len(normals) < 8:
        logger.warning("tune: the validation set has only %d normal images: its AUROC moves in steps of "
                       "1/%d", len(normals), len(normals) ** 2)
    rng = np.random.default_rng((seed, 29))
    rows = []
    for folder_name in ("good", "defect", "masks"):
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(normals):
        image = load_image(record.source, channels=3)
        pixels = np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(size[::-1], Image.BILINEAR))
        image = pixels.astype(np.float32) / 255.0
        defect = DEFECT_TYPES[index % len(DEFECT_TYPES)]
        damaged, mask = add_defect(image, defect, rng, source="brick")
        stem = f"{index:03d}"
        for sub, picture in (("good", pixels), ("defect", np.round(damaged * 255).astype(np.uint8)),
                             ("masks", mask.astype(np.uint8) * 255)):
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
            write_bytes(folder / sub / f"{stem}.png", buffer.getvalue())
        rows.append({"image": stem, "from": record.name, "defect": defect, "defect_pixels": int(mask.sum())})
    write_json(folder / "validation.json", {"origin": origin, "images": rows})
    return train, f"{origin}, each also with a pasted synthetic defect ({2 * len(normals)} images)"


def validation_records(folder: Path | None, labelled: Any = None) -> list:
    """The records of the validation set (written by :func:`build_validation`, or given labelled)."""
    from anomalens.data import ImageRecord

    if labelled is not None:
        return list(labelled.test)
    stems = sorted(p.stem for p in (folder / "good").glob("*.png"))
    return ([ImageRecord(folder / "good" / f"{s}.png", 0, name=f"good/{s}") for s in stems]
            + [ImageRecord(folder / "defect" / f"{s}.png", 1, mask=folder / "masks" / f"{s}.png", name=f"defect/{s}",
                           defect_type="pasted") for s in stems])


def check_apart(labelled: Any, dataset: Any) -> None:
    """A labelled validation set may share no file with the test split of the data it tunes for."""
    test_files = {Path(r.source).resolve() for r in dataset.test if isinstance(r.source, (str, Path))}
    shared = [r.name for r in labelled.test if isinstance(r.source, (str, Path)) and Path(r.source).resolve() in test_files]
    if shared:
        raise DataError(f"--validation {labelled.name}: {len(shared)} of its images are test images of {dataset.name} "
                        f"(e.g. {shared[0]}); tuning on them would make the test figures optimistic")
    if not labelled.test or len({r.label for r in labelled.test}) < 2:
        raise DataError(f"--validation {labelled.name}: needs labelled normal and anomalous images (a test split)")
