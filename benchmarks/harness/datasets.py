"""The data the suites share, built once under ``benchmarks/_work`` (ignored by git).

- the synthetic MVTec-layout categories made from scikit-image photos (3 textures, 2 objects): 120 normal
  training images, 30 normal + 40 defective test images each, 256 px, seed 0 (``_work/data/<name>``);
- the larger ``brick`` of the scaling runs: 900 training images, seed 1 (``_work/data-scale/brick``);
- Fashion-MNIST one-class, all 10 classes (normal = one class, anomalous = the other nine), from the Debian
  package dataset-fashion-mnist: 1 000 training images of the normal class, 100 test images per class, seed 0.
"""

from __future__ import annotations

from pathlib import Path

from .paths import WORK

SYNTHETIC = ["brick", "grass", "gravel", "coffee", "chelsea"]
FMNIST = [f"fmnist-{c}" for c in range(10)]
SYNTHETIC_SIZES = {"n_train": 120, "n_test_good": 30, "n_test_defect": 40, "image_size": 256}
FMNIST_SUBSAMPLE = {"max_train_per_class": 1000, "max_test_per_class": 100, "seed": 0}
DATA = WORK / "data"
SCALE_DATA = WORK / "data-scale"


def synthetic_category(name: str, n_train: int = 120) -> Path:
    """The folder of the synthetic category ``name`` (built when missing): 120 training images (seed 0), or
    the scaling runs' 900 (seed 1)."""
    if n_train not in (120, 900):
        raise ValueError(f"synthetic_category: {n_train} training images: the suites use 120 or 900")
    root = DATA if n_train == 120 else SCALE_DATA
    folder = root / name
    if not folder.exists():
        from anomalens.data import make_synthetic_category

        make_synthetic_category(root, source=name, seed=0 if n_train == 120 else 1,
                                **{**SYNTHETIC_SIZES, "n_train": n_train})
    return folder


def benchmark_dataset(name: str, layout: str | None = None):
    """A built-in benchmark dataset by name (a synthetic category, ``fmnist-<class>``), or (``layout`` given)
    the dataset category folder ``name`` in that layout."""
    from anomalens.data import load_dataset, load_fashion_mnist, load_mvtec_category

    if layout is not None:
        return load_dataset(name, layout=layout)
    if name.startswith("fmnist-"):
        return load_fashion_mnist(normal_classes=(int(name.split("-")[1]),), **FMNIST_SUBSAMPLE)
    return load_mvtec_category(synthetic_category(name))
