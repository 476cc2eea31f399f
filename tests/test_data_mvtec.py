"""MVTec-layout and plain-folder loaders, and the load_dataset entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from anomalens.data import (
    is_mvtec_category,
    load_dataset,
    load_folder_dataset,
    load_mvtec_category,
)
from anomalens.errors import DataError

SIZE = 16


def _png(path: Path, size: tuple[int, int] = (SIZE, SIZE), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size[1], size[0]), value).save(path)
    return path


def _category(root: Path, ground_truth: bool = True, n_train: int = 3) -> Path:
    """A tiny MVTec category with 2 defect types, extras that must be ignored."""
    (root / "train" / "good").mkdir(parents=True)
    for i in range(n_train):
        _png(root / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        _png(root / "test" / "good" / f"{i:03d}.png")
    for defect, n in (("crack", 2), ("hole", 1)):
        for i in range(n):
            _png(root / "test" / defect / f"{i:03d}.png", value=10)
            if ground_truth:
                _png(root / "ground_truth" / defect / f"{i:03d}_mask.png", value=255)
    # Extras shipped with or added to real datasets.
    (root / "license.txt").write_text("CC BY-NC-SA")
    (root / "readme.md").write_text("# category")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "train" / "good" / ".DS_Store").write_bytes(b"\0")
    (root / "test" / "crack" / "Thumbs.db").write_bytes(b"\0")
    (root / "test" / ".ipynb_checkpoints").mkdir()
    _png(root / "test" / ".ipynb_checkpoints" / "000.png")
    _png(root / "validation" / "good" / "000.png")
    return root


def test_load_category_with_ground_truth(tmp_path: Path) -> None:
    root = _category(tmp_path / "widget")
    assert is_mvtec_category(root)
    ds = load_mvtec_category(root)
    assert ds.name == "widget"
    assert [r.name for r in ds.train] == ["train/good/000.png", "train/good/001.png", "train/good/002.png"]
    assert all(r.label == 0 and r.defect_type == "good" and r.mask is None for r in ds.train)
    assert [(r.name, r.label, r.defect_type) for r in ds.test] == [
        ("test/crack/000.png", 1, "crack"),
        ("test/crack/001.png", 1, "crack"),
        ("test/good/000.png", 0, "good"),
        ("test/good/001.png", 0, "good"),
        ("test/hole/000.png", 1, "hole"),
    ]
    masks = {r.name: r.mask for r in ds.test}
    assert masks["test/crack/001.png"] == root / "ground_truth" / "crack" / "001_mask.png"
    assert masks["test/good/000.png"] is None
    assert ds.has_masks
    assert ds.defect_types == ["crack", "hole"]


def test_load_category_without_ground_truth(tmp_path: Path) -> None:
    ds = load_mvtec_category(_category(tmp_path / "widget", ground_truth=False))
    assert len(ds.test) == 5 and all(r.mask is None for r in ds.test)
    assert not ds.has_masks


def test_missing_test_folder_is_fit_only(tmp_path: Path) -> None:
    root = tmp_path / "widget"
    _png(root / "train" / "good" / "000.png")
    ds = load_mvtec_category(str(root))
    assert len(ds.train) == 1 and ds.test == [] and not ds.has_masks


def test_missing_mask(tmp_path: Path) -> None:
    root = _category(tmp_path / "widget")
    missing = root / "ground_truth" / "hole" / "000_mask.png"
    missing.unlink()
    with pytest.raises(DataError, match="mask missing") as excinfo:
        load_mvtec_category(root)
    assert str(missing) in str(excinfo.value)


def test_wrong_size_mask(tmp_path: Path) -> None:
    root = _category(tmp_path / "widget")
    mask = _png(root / "ground_truth" / "crack" / "001_mask.png", size=(SIZE, SIZE + 1))
    with pytest.raises(DataError, match="does not match") as excinfo:
        load_mvtec_category(root)
    msg = str(excinfo.value)
    assert str(mask) in msg and str(root / "test" / "crack" / "001.png") in msg and "\n" not in msg


def test_mask_that_is_not_an_image(tmp_path: Path) -> None:
    root = _category(tmp_path / "widget")
    mask = root / "ground_truth" / "crack" / "000_mask.png"
    mask.write_text("oops")
    with pytest.raises(DataError, match="cannot read") as excinfo:
        load_mvtec_category(root)
    assert str(mask) in str(excinfo.value)


def test_empty_or_missing_train(tmp_path: Path) -> None:
    root = _category(tmp_path / "widget", n_train=0)
    with pytest.raises(DataError, match="no images") as excinfo:
        load_mvtec_category(root)
    assert str(root / "train" / "good") in str(excinfo.value)
    (root / "train" / "good" / ".DS_Store").unlink()
    (root / "train" / "good").rmdir()
    with pytest.raises(DataError, match="train/good"):
        load_mvtec_category(root)
    assert not is_mvtec_category(root)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as excinfo:
        load_mvtec_category(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(excinfo.value)


# ----------------------------------------------------------------------------- folder layout


def test_folder_dataset_with_masks(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "ok" / f"n{i}.png")
    _png(tmp_path / "ok_test" / "t0.png")
    _png(tmp_path / "scratch" / "000.png")
    _png(tmp_path / "dent" / "000.png")
    _png(tmp_path / "dent" / "a.png")
    _png(tmp_path / "masks" / "scratch" / "000.png", value=255)  # per-defect subfolder
    _png(tmp_path / "masks" / "dent" / "000_mask.png", value=255)
    _png(tmp_path / "masks" / "a_mask.png", value=255)  # flat
    ds = load_folder_dataset(
        tmp_path / "ok",
        abnormal_dirs=[tmp_path / "scratch", tmp_path / "dent"],
        test_normal_dir=tmp_path / "ok_test",
        mask_dir=tmp_path / "masks",
        name="parts",
    )
    assert ds.name == "parts"
    assert [r.name for r in ds.train] == ["train/n0.png", "train/n1.png", "train/n2.png"]
    by_name = {r.name: r for r in ds.test}
    assert set(by_name) == {"test/good/t0.png", "test/scratch/000.png", "test/dent/000.png", "test/dent/a.png"}
    assert by_name["test/scratch/000.png"].mask == tmp_path / "masks" / "scratch" / "000.png"
    assert by_name["test/dent/000.png"].mask == tmp_path / "masks" / "dent" / "000_mask.png"
    assert by_name["test/dent/a.png"].mask == tmp_path / "masks" / "a_mask.png"
    assert by_name["test/dent/a.png"].defect_type == "dent" and by_name["test/dent/a.png"].label == 1
    assert ds.has_masks


def test_folder_dataset_errors(tmp_path: Path) -> None:
    _png(tmp_path / "ok" / "n0.png")
    _png(tmp_path / "a" / "crack" / "000.png")
    _png(tmp_path / "b" / "crack" / "000.png")
    _png(tmp_path / "masks" / "000.png", value=255)
    with pytest.raises(DataError, match="used twice"):
        load_folder_dataset(tmp_path / "ok", [tmp_path / "a" / "crack", tmp_path / "b" / "crack"])
    _png(tmp_path / "hole" / "000.png")
    with pytest.raises(DataError, match="matches two images"):  # one flat mask, two images
        load_folder_dataset(tmp_path / "ok", [tmp_path / "a" / "crack", tmp_path / "hole"], mask_dir=tmp_path / "masks")
    _png(tmp_path / "dent" / "zzz.png")
    with pytest.raises(DataError, match="mask missing") as excinfo:
        load_folder_dataset(tmp_path / "ok", [tmp_path / "dent"], mask_dir=tmp_path / "masks")
    assert "zzz" in str(excinfo.value)
    _png(tmp_path / "masks" / "zzz.png", size=(4, 4))
    with pytest.raises(DataError, match="does not match"):
        load_folder_dataset(tmp_path / "ok", [tmp_path / "dent"], mask_dir=tmp_path / "masks")
    with pytest.raises(DataError, match="training folder"):
        load_folder_dataset(tmp_path / "ok", test_normal_dir=tmp_path / "ok")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_folder_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_folder_dataset(tmp_path / "ok", [tmp_path / "missing"])


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    root = _category(tmp_path / "widget")
    assert len(load_dataset(root).test) == 5
    assert load_dataset(root, name="w2").name == "w2"

    plain = tmp_path / "photos"
    for i in range(2):
        _png(plain / f"{i}.jpg")
    ds = load_dataset(plain)
    assert ds.name == "photos" and len(ds.train) == 2 and ds.test == []

    with pytest.raises(DataError, match="pass one category folder"):
        load_dataset(tmp_path)  # the dataset root holding categories
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="MVTec AD category") as excinfo:
        load_dataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(excinfo.value)
    with pytest.raises(DataError, match="is a file"):
        load_dataset(plain / "0.jpg")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_default_folder_name_skips_generic_names(tmp_path: Path) -> None:
    _png(tmp_path / "bottle" / "train" / "good" / "x" / "0.png")
    ds = load_folder_dataset(tmp_path / "bottle" / "train" / "good" / "x")
    assert ds.name == "x"
    _png(tmp_path / "screws" / "normal" / "0.png")
    assert load_folder_dataset(tmp_path / "screws" / "normal").name == "screws"
