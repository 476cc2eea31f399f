"""Data layer: records, image/mask I/O, dataset loaders, synthetic data and torch batching.

``torch`` is imported only when :class:`TensorImageDataset` / :func:`iterate_batches` (and the other
torch-side names: ``ImageBatch``, ``iterate_decoded``, ``decoding_workers``, ``default_workers``) are
first used, so loading or generating data (and the CLI's argument checks) stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomalens.data.btad import is_btad_product, load_btad_product
from anomalens.data.folder import load_folder_dataset
from anomalens.data.io import (
    IMAGE_SUFFIXES,
    SUPPORTED_FORMATS,
    image_size,
    is_image_file,
    list_images,
    load_image,
    load_mask,
)
from anomalens.data.layouts import (
    LAYOUT_HELP,
    LAYOUT_NAMES,
    LAYOUTS,
    detect_layout,
    find_categories,
    load_dataset,
)
from anomalens.data.sources import DatasetSource, data_source
from anomalens.data.unified import load_unified
from anomalens.data.loco import is_loco_category, load_loco_category, read_defects_config
from anomalens.data.mvtec import is_mvtec_category, load_mvtec_category
from anomalens.data.mvtec_ad2 import is_mvtec_ad2_category, load_mvtec_ad2_category
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
from anomalens.data.records import AnomalyDataset, DefectConfig, ImageRecord, split_records
from anomalens.data.visa import is_visa_object, load_visa_object
from anomalens.errors import DataError

from anomalens.data.inputs import as_image_inputs, as_image_records, collect_images, find_images, input_roots

if TYPE_CHECKING:
    from anomalens.data.synthetic import (
        DEFECT_TYPES,
        SYNTHETIC_SOURCES,
        add_defect,
        make_synthetic_category,
        make_synthetic_dataset,
    )
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
    "DatasetSource",
    "DefectConfig",
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "ImageBatch",
    "ImageRecord",
    "LAYOUT_HELP",
    "MNIST_CLASSES",
    "LAYOUTS",
    "LAYOUT_NAMES",
    "MNIST_SUBSET_NOTE",
    "SPEC_HELP",
    "SUPPORTED_FORMATS",
    "SYNTHETIC_SOURCES",
    "TensorImageDataset",
    "add_defect",
    "as_image_inputs",
    "as_image_records",
    "collect_images",
    "data_source",
    "detect_layout",
    "find_categories",
    "find_images",
    "input_roots",
    "decoding_workers",
    "default_workers",
    "image_size",
    "is_btad_product",
    "is_image_file",
    "is_loco_category",
    "is_mvtec_ad2_category",
    "is_mvtec_category",
    "is_visa_object",
    "iterate_batches",
    "load_unified",
    "iterate_decoded",
    "list_images",
    "load_btad_product",
    "load_builtin",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_folder_dataset",
    "load_image",
    "load_loco_category",
    "load_mask",
    "load_mnist",
    "load_mvtec_ad2_category",
    "load_mvtec_category",
    "load_visa_object",
    "make_synthetic_category",
    "make_synthetic_dataset",
    "read_defects_config",
    "read_idx",
    "split_records",
]

# PEP 562 lazy attributes: torch costs ~1-2 s and the synthetic data's scikit-image / SciPy ~0.3 s, neither
# needed to read a folder (nor by predict on an export, which must not import torch at all).
_LAZY = {**dict.fromkeys(["ImageBatch", "TensorImageDataset", "decoding_workers", "default_workers",
                          "iterate_batches", "iterate_decoded"], "torch_dataset"),
         **dict.fromkeys(["DEFECT_TYPES", "SYNTHETIC_SOURCES", "add_defect", "make_synthetic_category",
                          "make_synthetic_dataset"], "synthetic")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"anomalens.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'anomalens.data' has no attribute {name!r}")
