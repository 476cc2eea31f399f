"""Synthetic-defect generator: writes MVTec-layout categories built from scikit-image's bundled photos.

Three parts: the defect-free images (``synthetic_images``: texture crops and object views), the defects
painted on them with their ground-truth masks (``synthetic_defects``), and, here, the category writer. Its
public names are this module's (``from anomalens.data.synthetic import add_defect`` and the rest).

Everything is driven by ``numpy.random.default_rng`` seeded from ``(seed, source, split,
index)``, so the same arguments always give byte-identical files, and one image does not
depend on how many others are generated.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anomalens.data.synthetic_defects import (
    DEFECT_TYPES,
    MASK_THRESHOLD,
    add_defect,
    check_defect_type,
    quantise,
)
from anomalens.data.synthetic_images import (
    SYNTHETIC_SOURCES,
    check_source,
    make_normal_image,
)
from anomalens.errors import DataError
from anomalens.outputs import staged_directory, write_json

__all__ = [
    "DEFECT_TYPES",
    "MASK_THRESHOLD",
    "SYNTHETIC_SOURCES",
    "add_defect",
    "make_normal_image",
    "make_synthetic_category",
    "make_synthetic_dataset",
]


def _rng(seed: int, source: str, split: str, index: int) -> np.random.Generator:
    # crc32 rather than hash(): Python's str hash is randomised per process.
    return np.random.default_rng([seed, zlib.crc32(source.encode()), zlib.crc32(split.encode()), index])


def _save_png(arr: np.ndarray, path: Path) -> None:
    """float [0, 1] (H, W, 1|3) or bool (H, W) -> 8-bit PNG (no metadata, so bytes are stable)."""
    if arr.dtype == np.bool_:
        pixels = arr.astype(np.uint8) * 255
    else:
        pixels = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    # Level 1: encoding dominates generation time and noisy images barely compress anyway.
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def make_synthetic_category(
    out_dir: str | Path,
    source: str = "brick",
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    image_size: int = 256,
    seed: int = 0,
    defect_types: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an MVTec-AD-layout category ``out_dir/<source>`` and return its path.

    Layout: ``train/good/000.png ...``, ``test/good/``, ``test/<defect>/`` (the
    ``n_test_defect`` images are spread round-robin over ``defect_types``, default all of
    :data:`DEFECT_TYPES`) and ``ground_truth/<defect>/<stem>_mask.png`` (uint8 0/255).
    Textures are written as greyscale PNGs, objects as RGB. The folder is built beside the
    target and renamed into place, so an interrupted run leaves nothing half-written; an
    existing category raises DataError unless ``overwrite=True``.
    """
    check_source(source)
    defects = list(DEFECT_TYPES if defect_types is None else defect_types)
    if not defects and n_test_defect:
        raise DataError("defect_types is empty but n_test_defect > 0")
    for d in defects:
        check_defect_type(d)
    if len(set(defects)) != len(defects):
        raise DataError(f"defect_types has duplicates: {defects}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise DataError("n_train must be >= 1 and n_test_good, n_test_defect >= 0")
    if not 32 <= image_size <= 1024:
        raise DataError(f"image_size must be between 32 and 1024, got {image_size}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / source
    if final.exists() and not overwrite:
        raise DataError(f"{final}: already exists; pass overwrite=True to replace it")

    width = max(3, len(str(max(n_train, n_test_good, n_test_defect) - 1)))
    with staged_directory(final, overwrite=overwrite, kind="dataset") as tmp:
        train_dir = tmp / "train" / "good"
        train_dir.mkdir(parents=True)
        for i in range(n_train):
            img = make_normal_image(source, image_size, _rng(seed, source, "train", i))
            _save_png(img, train_dir / f"{i:0{width}d}.png")
        good_dir = tmp / "test" / "good"
        good_dir.mkdir(parents=True)
        for i in range(n_test_good):
            img = make_normal_image(source, image_size, _rng(seed, source, "test/good", i))
            _save_png(img, good_dir / f"{i:0{width}d}.png")
        counters = dict.fromkeys(defects, 0)
        for i in range(n_test_defect):
            defect = defects[i % len(defects)]
            k = counters[defect]
            counters[defect] += 1
            rng = _rng(seed, source, f"test/{defect}", k)
            clean = quantise(make_normal_image(source, image_size, rng))
            img, mask = add_defect(clean, defect, rng, source)
            for sub in ("test", "ground_truth"):
                (tmp / sub / defect).mkdir(parents=True, exist_ok=True)
            _save_png(img, tmp / "test" / defect / f"{k:0{width}d}.png")
            _save_png(mask, tmp / "ground_truth" / defect / f"{k:0{width}d}_mask.png")
        info = {
            "generator": "anomalens.data.synthetic",
            "source": source,
            "kind": SYNTHETIC_SOURCES[source],
            "seed": seed,
            "image_size": image_size,
            "n_train": n_train,
            "n_test_good": n_test_good,
            "n_test_defect": n_test_defect,
            "defect_types": defects,
        }
        write_json(tmp / "synthetic.json", info)
    return final


def make_synthetic_dataset(
    out_dir: str | Path, sources: Iterable[str] = tuple(SYNTHETIC_SOURCES), **kw: object
) -> list[Path]:
    """Write several categories (default: all of :data:`SYNTHETIC_SOURCES`); returns their paths.

    Keyword arguments are those of :func:`make_synthetic_category`.
    """
    sources = list(sources)
    for s in sources:
        check_source(s)
    return [make_synthetic_category(out_dir, source=s, **kw) for s in sources]  # type: ignore[arg-type]
