"""TensorImageDataset / iterate_batches: shapes, resizing, masks and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalens.data import ImageRecord, TensorImageDataset, iterate_batches
from anomalens.errors import DataError


def _records(tmp_path: Path) -> list[ImageRecord]:
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, 15:] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 0:12] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    return [
        ImageRecord(tmp_path / "a.png", 1, tmp_path / "a_mask.png", "a"),
        ImageRecord(np.full((8, 8), 51, np.uint8), 0, None, "b"),
        ImageRecord(np.full((10, 10), 255, np.uint8), 1, np.eye(10, dtype=bool), "c"),
    ]


def test_items(tmp_path: Path) -> None:
    ds = TensorImageDataset(_records(tmp_path), image_size=(10, 15))
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 10, 15) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert float(item["image"][0, 0, 0]) == 0.0 and float(item["image"][0, 0, -1]) == 1.0
    assert item["mask"].shape == (1, 10, 15) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}  # nearest: still binary
    assert item["mask"][0, 2:5, 0:6].all() and item["mask"].sum() == 18
    assert item["label"] == 1 and item["index"] == 0
    other = ds[1]
    assert torch.allclose(other["image"], torch.full((3, 10, 15), 0.2))  # upscaled constant
    assert other["mask"].sum() == 0 and other["label"] == 0
    grey = TensorImageDataset(_records(tmp_path), 12, channels=1)[2]
    assert grey["image"].shape == (1, 12, 12)


def test_mask_size_mismatch_names_both(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "img.png")
    Image.new("L", (9, 8)).save(tmp_path / "m.png")
    ds = TensorImageDataset([ImageRecord(tmp_path / "img.png", 1, tmp_path / "m.png")], 8)
    with pytest.raises(DataError, match="does not match") as excinfo:
        ds[0]
    msg = str(excinfo.value)
    assert str(tmp_path / "img.png") in msg and str(tmp_path / "m.png") in msg


def test_iterate_batches(tmp_path: Path) -> None:
    batches = list(iterate_batches(_records(tmp_path), 16, batch_size=2, desc="test"))
    assert [len(b["label"]) for b in batches] == [2, 1]
    assert batches[0]["image"].shape == (2, 3, 16, 16) and batches[0]["mask"].shape == (2, 1, 16, 16)
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2]
    assert torch.cat([b["label"] for b in batches]).tolist() == [1, 0, 1]


def test_iterate_batches_worker_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    records = [ImageRecord(np.zeros((4, 4), np.uint8), 0), ImageRecord(bad, 0)]
    for workers in (0, 1):
        with pytest.raises(DataError) as excinfo:
            list(iterate_batches(records, 4, batch_size=1, num_workers=workers))
        assert str(excinfo.value) == f"{bad}: cannot read image: not a recognised image format"


def test_bad_sizes() -> None:
    with pytest.raises(DataError):
        TensorImageDataset([], 0)
    with pytest.raises(DataError):
        TensorImageDataset([], (1, 2, 3))  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_loop_with_breaks_yields_the_batches_of_one_loop_per_part(tmp_path, workers):
    records = []
    for i in range(7):  # files, so that the workers have something to decode
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        records.append(ImageRecord(tmp_path / f"{i}.png", 0, None, f"{i}"))
    parts = [records[:3], records[3:]]
    per_part = [b["image"] for part in parts for b in iterate_batches(part, 8, 2, num_workers=workers)]
    one_loop = [b["image"] for b in iterate_batches(records, 8, 2, num_workers=workers, breaks=[3])]
    assert [len(b) for b in one_loop] == [2, 1, 2, 2]
    assert all(torch.equal(a, b) for a, b in zip(per_part, one_loop, strict=True))
