"""The files of the classic classification datasets: where they are looked for, how they are read.

(Fashion-)MNIST come as four idx files (``train-images-idx3-ubyte[.gz]`` …), looked for in ``root`` when given,
else in ``$ANOMALENS_DATA/<name>``, Debian's ``/usr/share/datasets/<name>`` (package ``dataset-fashion-mnist``)
and ``~/.cache/anomalens/<name>``; ``download=True`` fetches them from the official hosts, each file written under
a temporary name and renamed only once its MD5 matches. CIFAR-10 comes as its binary batches (no pickle). The
one-class protocols built on them are ``anomalens.data.oneclass``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from anomalens.errors import DataError
from anomalens.outputs.atomic import atomic_path

__all__ = ["CIFAR_HOW_TO", "CIFAR_TEST", "CIFAR_TRAIN", "SYSTEM_DATA_DIR", "data_dirs", "find_cifar_dir", "load_idx_split",
           "read_cifar_batch", "read_idx", "resolve_idx_root"]

#: Where Debian's dataset packages (e.g. ``dataset-fashion-mnist``) install their files.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

# The four idx files of (Fashion-)MNIST: split -> (images file, labels file).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the .gz files as served by the official hosts (checked after download only: the
# Debian package re-compresses them, so installed copies have other checksums).
_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}
_MIRRORS = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
}

# idx magic = 0x0000 (2 zero bytes), type code, number of dimensions.
_IDX_UBYTE = 0x08
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


# --------------------------------------------------------------------------------------------
# File formats


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an idx-ubyte file (gzip-compressed or not) as a uint8 array.

    Validates the magic number, the number of dimensions (``ndim`` when given) and that the
    payload size matches the header; any mismatch raises DataError naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: idx file does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt idx file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: corrupt idx file: bad magic number")
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"{path}: corrupt idx file: element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise DataError(f"{path}: corrupt idx file: {dims_n} dimensions, expected {ndim}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DataError(f"{path}: corrupt idx file: header truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims_n, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: corrupt idx file: header says {'x'.join(map(str, shape))} = {expected} bytes, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem`` (also the ``stem.idx3-ubyte`` dot-variant)."""
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def has_idx_files(folder: Path) -> bool:
    return all(find_idx_file(folder, f) is not None for pair in _IDX_FILES.values() for f in pair)


def load_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) uint8) of one split of an idx folder."""
    img_stem, lbl_stem = _IDX_FILES[split]
    img_path, lbl_path = find_idx_file(folder, img_stem), find_idx_file(folder, lbl_stem)
    if img_path is None or lbl_path is None:
        missing = img_stem if img_path is None else lbl_stem
        raise DataError(f"{folder / (missing + '.gz')}: idx file missing")
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{lbl_path}: {len(labels)} labels but {img_path} has {len(images)} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} out of range 0..9")
    return images, labels


def data_dirs(subdir: str) -> list[Path]:
    """Folders searched (in order) when the caller gives no root."""
    dirs = []
    env = os.environ.get("ANOMALENS_DATA")
    if env:
        dirs.append(Path(env) / subdir)
    dirs.append(SYSTEM_DATA_DIR / subdir)
    dirs.append(cache_dir(subdir))
    return dirs


def cache_dir(subdir: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anomalens" / subdir


def download_idx(dataset: str, target: Path) -> None:
    """Fetch the four idx .gz files into ``target``, verifying MD5 before each file appears.

    Each file is written to a temporary name and renamed only once complete and verified, so
    an interrupted download never leaves a file that later looks valid.
    """
    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in _MD5[dataset].items():
        dest = target / filename
        if dest.is_file() and hashlib.md5(dest.read_bytes(), usedforsecurity=False).hexdigest() == md5:
            continue
        errors = []
        for mirror in _MIRRORS[dataset]:
            try:
                with atomic_path(dest) as tmp:
                    with open(tmp, "wb") as out, urllib.request.urlopen(mirror + filename, timeout=60) as resp:
                        shutil.copyfileobj(resp, out)
                    digest = hashlib.md5(tmp.read_bytes(), usedforsecurity=False).hexdigest()
                    if digest != md5:
                        raise OSError(f"MD5 {digest} does not match {md5}")
                break
            except OSError as exc:  # URLError and timeouts are OSError subclasses
                errors.append(f"{mirror}{filename}: {exc}")
        else:
            raise DataError(f"{dest}: download failed ({'; '.join(errors)})")


def resolve_idx_root(dataset: str, subdir: str, root: str | Path | None, download: bool, how_to: str) -> Path | None:
    """Folder holding the idx files: ``root`` if given, else the first search dir that has them.

    Returns None when nothing is found and ``download`` is False (the caller decides whether
    that is an error or there is a fallback).
    """
    if root is not None:
        folder = Path(root)
        if has_idx_files(folder):
            return folder
        if download:
            download_idx(dataset, folder)
            return folder
        raise DataError(f"{folder}: no {dataset} idx files (train-images-idx3-ubyte.gz, ...) found; {how_to}")
    for folder in data_dirs(subdir):
        if has_idx_files(folder):
            return folder
    if download:
        folder = cache_dir(subdir)
        download_idx(dataset, folder)
        return folder
    return None


# --------------------------------------------------------------------------------------------
# CIFAR-10 binary batches

_CIFAR_RECORD = 1 + 32 * 32 * 3
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_HOW_TO = (
    "download the binary version 'CIFAR-10 binary version (suitable for C programs)' "
    "(cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html and extract it"
)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch -> (images (N, 32, 32, 3) uint8, labels (N,) uint8)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 batch: {exc}") from None
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DataError(f"{path}: corrupt CIFAR-10 batch: {raw.size} bytes is not a multiple of {_CIFAR_RECORD}")
    rows = raw.reshape(-1, _CIFAR_RECORD)
    labels = rows[:, 0].copy()
    if labels.max() > 9:
        raise DataError(f"{path}: corrupt CIFAR-10 batch: label {int(labels.max())} out of range 0..9")
    # Each record stores the red plane, then green, then blue (row-major 32x32 each).
    images = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels


def find_cifar_dir(root: str | Path | None) -> Path:
    """The folder holding the ``*.bin`` batches: ``root`` itself or its ``cifar-10-batches-bin``."""
    candidates: list[Path]
    if root is not None:
        candidates = [Path(root), Path(root) / "cifar-10-batches-bin"]
    else:
        env = os.environ.get("ANOMALENS_DATA")
        candidates = [Path(env) / "cifar-10-batches-bin"] if env else []
        candidates.append(cache_dir("cifar-10-batches-bin"))
    for c in candidates:
        if (c / CIFAR_TEST).is_file():
            return c
    where = candidates[0]
    if root is not None and (Path(root) / "data_batch_1").exists():
        raise DataError(f"{root}: looks like the Python (pickle) version of CIFAR-10; {CIFAR_HOW_TO}")
    raise DataError(f"{where}: no CIFAR-10 binary batches (test_batch.bin) found; {CIFAR_HOW_TO}")
