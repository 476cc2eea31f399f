"""Data layer: records, image/mask I/O, dataset loaders, synthetic data and torch batching.

``torch`` is imported only when :class:`TensorImageDataset` / :func:`iterate_batches` (and the other
torch-side names: ``ImageBatch``, ``iterate_decoded``, ``decoding_workers``, ``default_workers``) are
first used, so loading or generating data (and the CLI's argument checks) stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomalens.data.folder import LAYOUT_HELP, load_dataset, load_folder_dataset
from anomalens.data.io import IMAGE_SUFFIXES, image_size, is_image_file, list_images, load_image, load_mask
from anomalens.data.mvtec import is_mvtec_category, load_mvtec_category
from anomalens.data.oneclass import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    MNIST_SUBSET_NOTE,
    SPEC_HELP,
    load_builtin,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from anomalens.data.records import AnomalyDataset, ImageRecord, split_records
from anomalens.data.synthetic import (
    DEFECT_TYPES,
    SYNTHETIC_SOURCES,
    add_defect,
    make_synthetic_category,
    make_synthetic_dataset,
)
from anomalens.errors import DataError

from anomalens.data.inputs import as_image_inputs

if TYPE_CHECKING:
    from anomalens.data.torch_dataset import (
        ImageBatch,
        TensorImageDataset,
        decoding_workers,
        default_workers,
        iterate_batches,
        iterate_decoded,
    )

__all__ = [
    "AnomalyDataset",
    "CIFAR10_CLASSES",
    "DEFECT_TYPES",
    "DataError",
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "ImageBatch",
    "ImageRecord",
    "LAYOUT_HELP",
    "MNIST_CLASSES",
    "MNIST_SUBSET_NOTE",
    "SPEC_HELP",
    "SYNTHETIC_SOURCES",
    "TensorImageDataset",
    "add_defect",
    "as_image_inputs",
    "decoding_workers",
    "default_workers",
    "image_size",
    "is_image_file",
    "is_mvtec_category",
    "iterate_batches",
    "iterate_decoded",
    "list_images",
    "load_builtin",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_folder_dataset",
    "load_image",
    "load_mask",
    "load_mnist",
    "load_mvtec_category",
    "make_synthetic_category",
    "make_synthetic_dataset",
    "read_idx",
    "split_records",
]

_LAZY = {"ImageBatch", "TensorImageDataset", "decoding_workers", "default_workers", "iterate_batches", "iterate_decoded"}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attribute: importing torch costs ~1-2 s, not needed to read a folder.
    if name in _LAZY:
        from anomalens.data import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module 'anomalens.data' has no attribute {name!r}")
