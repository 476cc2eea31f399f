"""Synthetic-defect generator: determinism, layout, masks aligned with changed pixels, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.data import (
    DEFECT_TYPES,
    SYNTHETIC_SOURCES,
    add_defect,
    load_mvtec_category,
    make_synthetic_category,
    make_synthetic_dataset,
    synthetic,
)
from anomalens.errors import DataError

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_defect": 4, "image_size": 48}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sources_are_offline_images() -> None:
    assert {"brick", "grass", "gravel"} <= {s for s, k in SYNTHETIC_SOURCES.items() if k == "texture"}
    assert sum(k == "object" for k in SYNTHETIC_SOURCES.values()) >= 2


@pytest.mark.parametrize("source", ["gravel", "coffee"])
def test_deterministic_for_a_seed(tmp_path: Path, source: str) -> None:
    a = make_synthetic_category(tmp_path / "a", source, seed=3, **SMALL)
    b = make_synthetic_category(tmp_path / "b", source, seed=3, **SMALL)
    c = make_synthetic_category(tmp_path / "c", source, seed=4, **SMALL)
    assert a == tmp_path / "a" / source
    files_a = _files(a)
    assert files_a == _files(b)
    files_c = _files(c)
    assert files_a.keys() == files_c.keys()
    assert sum(files_a[k] != files_c[k] for k in files_a if k.endswith(".png")) == len(
        [k for k in files_a if k.endswith(".png")]
    )


def test_layout_is_readable_mvtec(tmp_path: Path) -> None:
    root = make_synthetic_category(tmp_path, "coffee", **SMALL)
    ds = load_mvtec_category(root)
    assert ds.name == "coffee" and len(ds.train) == 3
    assert sum(r.label == 0 for r in ds.test) == 2 and sum(r.label == 1 for r in ds.test) == 4
    assert ds.has_masks and ds.defect_types == sorted(DEFECT_TYPES)
    assert (root / "train" / "good" / "000.png").is_file()
    assert not (root / "ground_truth" / "good").exists()
    img = Image.open(root / "test" / "scratch" / "000.png")
    assert img.size == (48, 48) and img.mode == "RGB"
    tex = Image.open(make_synthetic_category(tmp_path, "brick", **SMALL) / "train" / "good" / "000.png")
    assert tex.mode == "L"


def test_masks_match_changed_pixels(tmp_path: Path) -> None:
    """Rebuild each defect image's clean version and compare with the written files."""
    size = 64
    for source in ("grass", "chelsea"):
        root = make_synthetic_category(
            tmp_path, source, n_train=1, n_test_good=0, n_test_defect=8, image_size=size, seed=7
        )
        for defect in DEFECT_TYPES:
            for k in range(2):
                rng = synthetic._rng(7, source, f"test/{defect}", k)
                clean = synthetic.quantise(synthetic.make_normal_image(source, size, rng))
                img = np.asarray(Image.open(root / "test" / defect / f"{k:03d}.png"), dtype=np.float32) / 255
                mask_px = np.asarray(Image.open(root / "ground_truth" / defect / f"{k:03d}_mask.png"))
                assert mask_px.dtype == np.uint8 and set(np.unique(mask_px)) == {0, 255}
                mask = mask_px > 0
                diff = np.abs(img.reshape(clean.shape) - clean).max(-1)
                assert 0.002 <= mask.mean() <= 0.05, (source, defect, k, mask.mean())
                assert diff[~mask].max() <= synthetic.MASK_THRESHOLD + 1e-6
                assert (diff[mask] > synthetic.MASK_THRESHOLD).mean() > 0.8
        for p in (root / "train" / "good").glob("*.png"):
            assert not (root / "ground_truth" / "good" / f"{p.stem}_mask.png").exists()


def test_add_defect_directly() -> None:
    rng = np.random.default_rng(0)
    clean = synthetic.quantise(synthetic.make_normal_image("brick", 64, rng))
    for defect in DEFECT_TYPES:
        out, mask = add_defect(clean, defect, rng, "brick")
        assert out.shape == clean.shape and mask.shape == (64, 64) and mask.any()
        assert np.abs(out - clean).max(-1)[~mask].max() <= synthetic.MASK_THRESHOLD + 1e-6
    with pytest.raises(DataError, match="unknown defect"):
        add_defect(clean, "rust", rng, "brick")


def test_overwrite_and_no_leftovers(tmp_path: Path) -> None:
    root = make_synthetic_category(tmp_path, "brick", seed=0, **SMALL)
    with pytest.raises(DataError, match="already exists") as excinfo:
        make_synthetic_category(tmp_path, "brick", **SMALL)
    assert str(root) in str(excinfo.value)
    first = _files(root)
    make_synthetic_category(tmp_path, "brick", seed=1, overwrite=True, **SMALL)
    assert _files(root) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brick"]  # no temp folders left


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_save = synthetic._save_png

    def failing_save(arr: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        real_save(arr, path)

    monkeypatch.setattr(synthetic, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_category(tmp_path, "grass", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown synthetic source"):
        make_synthetic_category(tmp_path, "brain")
    with pytest.raises(DataError, match="unknown defect type"):
        make_synthetic_category(tmp_path, "brick", defect_types=["rust"])
    with pytest.raises(DataError, match="image_size"):
        make_synthetic_category(tmp_path, "brick", image_size=8)
    with pytest.raises(DataError, match="unknown synthetic source"):
        make_synthetic_dataset(tmp_path, sources=["brick", "eagle"])
    assert list(tmp_path.iterdir()) == []


def test_dataset_subset_of_defects(tmp_path: Path) -> None:
    paths = make_synthetic_dataset(
        tmp_path,
        sources=["brick", "chelsea"],
        defect_types=["hole", "stain"],
        n_train=2,
        n_test_good=1,
        n_test_defect=3,
        image_size=32,
    )
    assert [p.name for p in paths] == ["brick", "chelsea"]
    for p in paths:
        ds = load_mvtec_category(p)
        assert ds.defect_types == ["hole", "stain"]
        assert [r.defect_type for r in ds.test].count("hole") == 2
