"""What users give as images — to ``Detector.fit`` / ``score`` / ``predict``, to ``anomalens predict`` and
``verify-export`` — turned into records (or a decoded batch) in one place, so the API and the CLI agree.

Accepted, alone or in a list / tuple (one entry per element):

* ``ImageRecord`` — as is;
* a file path (``str`` / ``Path``) — that one file, whatever its suffix (the decoder decides by content,
  among :data:`anomalens.data.io.SUPPORTED_FORMATS`), named by its file name;
* a folder — every image under it, **searched into its sub-folders** (``anomalens predict RUN
  data/brick/test`` scores ``good/`` and every defect folder), in sorted order: a folder's own images first
  (by name), then each sub-folder's, depth first, by name. Hidden files and folders (``.name``) and
  folders anomalens wrote (those carrying its ``.anomalens-output.json`` marker: predictions, reports,
  runs) are skipped, the given folder itself excepted; links to folders are followed, each real folder
  searched once. An image is named by its path relative to the given folder (``good/000.png``,
  ``crack/000.png``), so same-named files in different sub-folders stay distinct. A folder with no image
  anywhere under it is an error (one line), not an empty result. Everything under the folder counts: a
  dataset's root brings its training images and mask files too — give its test folder;
* a glob pattern (``"data/*/test/*.png"``, ``"data/**/*.jpg"``; ``**`` spans folders), when no file of
  that exact name exists — the files it matches (images by suffix), and the folders it matches as above,
  named relative to the pattern's first folder without wildcards (hidden names and anomalens output
  folders skipped as above); matching no image is an error;
* a numpy array: ``(H, W)`` or ``(H, W, 1|2|3|4)`` is one image; ``(N, H, W, C)`` — and ``(N, H, W)``
  (grey) — are N images (uint8, uint16, bool or float in [0, 1]). A 3-D array whose last axis is 1-4 is one
  image; one whose first axis is 1 or 3 and last axis larger looks channels-first and is refused (numpy
  images are channels-last: transpose it, or give a 4-D array);
* a PIL image — one image (its mode converted as a file's would be);
* a torch tensor ``(C, H, W)`` — one image, and alone a 4-D tensor ``(N, C, H, W)`` — N images; float in
  [0, 1] or uint8 (scaled by 1/255), channels first as in torch.

A missing path is an error naming it. The same image given twice (a folder and a file in it, or a folder
twice) is scored twice, as asked.

:func:`collect_images` is the file-system part (paths, folders, globs → records) that the CLI's
``predict`` / ``verify-export`` / Ray prediction call; :func:`as_image_inputs` is everything above, for
``score`` / ``predict`` (a float32 4-D tensor already at the detector's input size and channels goes to
the model as it is: an ``ImageBatch``, no decode, no resize, no copy); :func:`as_image_records` is the
same but always records (``fit``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.data.io import (
    IMAGE_SUFFIXES,
    check_unit_range,
    is_image_file,
    pil_to_float,
)
from anomalens.data.records import AnomalyDataset, ImageRecord
from anomalens.errors import DataError
from anomalens.names import file_label

__all__ = ["as_image_inputs", "as_image_records", "collect_images", "find_images", "input_roots"]

_WILDCARDS = frozenset("*?[")
_SUFFIX_LIST = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))


def _marker_file() -> str:
    from anomalens.outputs.names import (
        MARKER_FILE,  # import-free module; imported here, not at the top
    )

    return MARKER_FILE


def find_images(folder: str | Path) -> list[tuple[Path, str]]:
    """(path, name relative to ``folder``) of every image under ``folder``, by the rules of the module
    docstring (sub-folders searched, sorted, hidden and anomalens output folders skipped). [] when there
    is none; DataError when ``folder`` is not a folder or cannot be listed."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of images, found a file")
    marker = _marker_file()
    found: list[tuple[Path, str]] = []
    seen: set[str] = set()
    failures: list[OSError] = []
    for top, dirs, files in os.walk(folder, onerror=failures.append, followlinks=True):
        if failures:
            break
        real = os.path.realpath(top)
        if real in seen:  # a link back to a folder already searched (or a loop)
            dirs[:] = []
            continue
        seen.add(real)
        here = Path(top)
        relative = here.relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d / marker).is_file())
        for name in sorted(files):
            path = here / name
            if is_image_file(path):
                found.append((path, (relative / name).as_posix()))
    if failures:
        exc = failures[0]
        where = exc.filename or folder
        raise DataError(f"{where}: cannot list folder: {exc.strerror or type(exc).__name__}") from None
    return found


def _in_output_folder(path: Path, root: Path, marker: str) -> bool:
    """True when a folder between ``root`` (excluded) and ``path`` carries anomalens' output marker."""
    for parent in path.parents:
        if parent == root or parent == Path(parent.anchor) or parent == Path("."):
            return False
        if (parent / marker).is_file():
            return True
    return False


def _glob_root(pattern: str) -> Path:
    """The leading folders of ``pattern`` that hold no wildcard (names are relative to it)."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if _WILDCARDS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _is_pattern(item: str | Path) -> bool:
    return bool(_WILDCARDS & set(str(item))) and not os.path.lexists(item)


def _path_records(item: str | Path, label: int) -> list[ImageRecord]:
    """One path argument (file, folder or glob pattern) → its records."""
    path = Path(item)
    if _is_pattern(item):
        pattern, root, marker = str(item), _glob_root(str(item)), _marker_file()
        records: list[ImageRecord] = []
        for match in sorted(glob.glob(pattern, recursive=True)):
            found = Path(match)
            if _in_output_folder(found, root, marker):
                continue
            if found.is_dir():
                records += [ImageRecord(source=p, label=label, name=file_label((found.relative_to(root) / name).as_posix()))
                            for p, name in find_images(found)]
            elif is_image_file(found):
                records.append(ImageRecord(source=found, label=label, name=file_label(found.relative_to(root).as_posix())))
        if not records:
            raise DataError(f"{item}: no images match this pattern ({_SUFFIX_LIST})")
        return records
    if path.is_dir():
        found_images = find_images(path)
        if not found_images:
            raise DataError(f"{path}: no images found ({_SUFFIX_LIST}) in this folder or its sub-folders")
        return [ImageRecord(source=p, label=label, name=file_label(name)) for p, name in found_images]
    if path.is_file():
        return [ImageRecord(source=path, label=label, name=file_label(path.name))]
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path}: no such file or folder (a link to {os.readlink(path)}, which does not exist)")
    if os.path.lexists(path):  # a FIFO would block the decoder forever; a device is no image either
        raise DataError(f"{path}: not a regular file or a folder")
    raise DataError(f"{path}: no such file or folder")


def collect_images(inputs: str | Path | Sequence[str | Path], label: int = -1) -> list[ImageRecord]:
    """Files, folders and glob patterns (one, or a list of them) → one ``ImageRecord`` (``label``) per
    image, in order, by the rules of the module docstring: folders searched into their sub-folders,
    images named relative to the folder (or pattern root) given. DataError (one line, naming the path)
    for a missing path, a folder without images, a pattern matching none, or an empty list."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise DataError("no images given (give image files, folders or glob patterns)")
    records: list[ImageRecord] = []
    for item in items:
        if not isinstance(item, (str, Path)):
            raise DataError(f"cannot use a {type(item).__name__} as an image path; give files, folders or glob "
                            "patterns")
        records += _path_records(item, label)
    return records


def input_roots(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The paths that :func:`collect_images` reads ``inputs`` from: each file or folder as given, and for
    a glob pattern the folder it is searched from (its first folder without wildcards). For the checks
    that an output folder is not one of a command's inputs, or inside one."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    return [_glob_root(str(item)) if _is_pattern(item) else Path(item) for item in items
            if isinstance(item, (str, Path))]


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL") and hasattr(value, "getbands")


def _tensor_to_hwc(tensor: Any, name: str) -> np.ndarray:
    """(C, H, W) tensor → (H, W, C) numpy in its own dtype (uint8 stays uint8)."""
    array = tensor.detach().cpu().numpy()
    if array.ndim != 3:
        raise DataError(f"{name}: an image tensor must be (C, H, W), got shape {tuple(array.shape)}")
    return np.moveaxis(array, 0, -1)


def _array_images(array: np.ndarray, name: str) -> list[np.ndarray]:
    """A numpy array → the images in it (module docstring: one image, or a stack of N)."""
    if array.ndim == 4:
        return list(array)
    if array.ndim == 3 and array.shape[-1] > 4:
        if array.shape[0] in (1, 3):
            raise DataError(f"{name}: shape {tuple(array.shape)} looks channels-first (C, H, W); numpy images are "
                            "(H, W, C): transpose it, or give N grey images as an (N, H, W, 1) array")
        return list(array)  # (N, H, W): N grey images
    return [array]


def _records(item: Any, index: int, label: int, alone: bool) -> list[ImageRecord]:
    if isinstance(item, ImageRecord):
        return [item]
    if isinstance(item, (str, Path)):
        return _path_records(item, label)
    name = "image" if alone else f"image {index}"
    if isinstance(item, np.ndarray):
        images = _array_images(item, name)
        if len(images) == 1 and item.ndim < 4:
            return [ImageRecord(source=item, label=label, name=name)]
        prefix = "image" if alone else f"image {index}:"
        return [ImageRecord(source=image, label=label, name=f"{prefix} {i}") for i, image in enumerate(images)]
    if _is_pil(item):
        return [ImageRecord(source=pil_to_float(item, name), label=label, name=name)]
    if _is_tensor(item):
        return [ImageRecord(source=_tensor_to_hwc(item, name), label=label, name=name)]
    if isinstance(item, AnomalyDataset):
        raise DataError(f"cannot use a whole dataset ({item.name}) as images: give its .train (fit) or .test "
                        "(predict, calibrate) records")
    raise DataError(f"{name}: cannot use a {type(item).__name__} as an image; give file paths, folders, numpy "
                    "arrays, PIL images, torch tensors or ImageRecords")


def _tensor_batch(images: Any, input_size: tuple[int, int] | None, channels: int, as_records: bool) -> Any:
    import torch

    from anomalens.data.torch_dataset import ImageBatch

    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise DataError(f"an image tensor must be float in [0, 1] or uint8, got {images.dtype}")
    batch = images.float()
    if batch.numel():
        check_unit_range(np.array([float(batch.min()), float(batch.max())]) if bool(torch.isfinite(batch).all())
                         else np.array([np.nan]), "image tensor")
    if not as_records and (input_size is None or (tuple(batch.shape[2:]) == tuple(input_size)
                                                  and batch.shape[1] == channels)):
        return ImageBatch(batch)
    return [ImageRecord(source=np.moveaxis(image.detach().cpu().numpy(), 0, -1), label=-1, name=f"image {i}")
            for i, image in enumerate(batch)]


def _as_inputs(images: Any, input_size: tuple[int, int] | None, channels: int, as_records: bool,
               label: int) -> Any:
    from anomalens.data.torch_dataset import ImageBatch

    if isinstance(images, ImageBatch):
        if as_records:
            return [ImageRecord(source=np.moveaxis(image.numpy(), 0, -1), label=label, name=f"image {i}")
                    for i, image in enumerate(images.images)]
        return images
    if _is_tensor(images) and images.ndim == 4:
        return _tensor_batch(images, input_size, channels, as_records)
    if isinstance(images, (str, Path, np.ndarray, ImageRecord, AnomalyDataset)) or _is_pil(images) \
            or _is_tensor(images):
        return _records(images, 0, label, alone=True)
    if isinstance(images, (dict, bytes)) or not hasattr(images, "__iter__"):
        raise DataError(f"cannot use a {type(images).__name__} as images; give file paths, folders, numpy arrays, "
                        "PIL images, torch tensors or ImageRecords (or a list of them)")
    records: list[ImageRecord] = []
    for i, item in enumerate(images):
        records.extend(_records(item, i, label, alone=False))
    return records


def as_image_inputs(images: Any, input_size: tuple[int, int] | None = None, channels: int = 3) -> Any:
    """``images`` (see the module docstring) → a list of ``ImageRecord`` s, or an ``ImageBatch`` when they
    are a float32 tensor batch already at ``input_size`` with ``channels`` (checked to be finite, in [0, 1])."""
    return _as_inputs(images, input_size, channels, as_records=False, label=-1)


def as_image_records(images: Any, label: int = -1) -> list[ImageRecord]:
    """``images`` (see the module docstring) → a list of ``ImageRecord`` s (``label`` for those made here;
    given records keep theirs), never a tensor batch: what ``Detector.fit`` works from."""
    return _as_inputs(images, None, 3, as_records=True, label=label)
