"""The dataset layouts as they ship (MVTec AD 2, MVTec LOCO AD, VisA, BTAD, labelled folders): recognition,
records, ``--layout``, the benchmarks' own metrics (LOCO sPRO) and the answers to bad input.

Each layout is built on the fly as a tiny fixture with the real dataset's folder and file naming (JPEG for
VisA, BMP images with PNG masks for BTAD, one mask folder per image for LOCO, ...).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.benchmark_protocols import benchmark_metrics, loco_regions
from anomalens.cli import main
from anomalens.data import (
    LAYOUT_HELP,
    LAYOUT_NAMES,
    DatasetSource,
    data_source,
    detect_layout,
    find_categories,
    load_dataset,
    load_mask,
    load_visa_object,
    make_synthetic_category,
)
from anomalens.decision import DetectionResult
from anomalens.errors import ConfigError, DataError
from tests.conftest import FIT

W, H = 80, 64  # not square: the detector's 64 x 64 input resizes both ways


def _image(path: Path, seed: int, defect: tuple[int, int, int, int] | None = None, size=(W, H)) -> None:
    """A smooth stripe texture (every image differs), with a green box where ``defect`` (x0, y0, x1, y1) is."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / size[0]
    gray = 0.5 + 0.25 * np.sin(2 * np.pi * 4 * (x + 0.1 * y) + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 0.02, x.shape)
    pixels = (np.clip(np.stack([gray, gray * 0.9, gray * 0.8], -1), 0, 1) * 255).astype(np.uint8)
    if defect is not None:
        x0, y0, x1, y1 = defect
        pixels[y0:y1, x0:x1] = (20, 160, 30)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)  # the format follows the suffix: PNG, JPEG, BMP


def _mask(path: Path, box: tuple[int, int, int, int], value: int = 255, size=(W, H)) -> None:
    pixels = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


BOXES = [(8, 8, 24, 24), (40, 30, 60, 50), (20, 36, 36, 56), (50, 6, 70, 22)]


def make_loco(root: Path, n_train: int = 12) -> Path:
    """breakfast_box: 2 good, 3 logical (one with two defect files), 2 structural test images."""
    cat = root / "breakfast_box"
    for i in range(n_train):
        _image(cat / "train" / "good" / f"{i:03d}.png", i)
    for i in range(2):
        _image(cat / "validation" / "good" / f"{i:03d}.png", 100 + i)
        _image(cat / "test" / "good" / f"{i:03d}.png", 200 + i)
    for i in range(3):
        _image(cat / "test" / "logical_anomalies" / f"{i:03d}.png", 300 + i, BOXES[i])
        _mask(cat / "ground_truth" / "logical_anomalies" / f"{i:03d}" / "000.png", BOXES[i], value=255)
    _mask(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", BOXES[3], value=254)  # a second defect
    for i in range(2):
        _image(cat / "test" / "structural_anomalies" / f"{i:03d}.png", 400 + i, BOXES[i + 1])
        _mask(cat / "ground_truth" / "structural_anomalies" / f"{i:03d}" / "000.png", BOXES[i + 1], value=253)
    (cat / "defects_config.json").write_text(json.dumps([
        {"defect_name": "missing_banana", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True},
        {"defect_name": "extra_almond", "pixel_value": 254, "saturation_threshold": 100, "relative_saturation": False},
        {"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
    ]))
    return cat


def make_mvtec_ad2(root: Path) -> Path:
    obj = root / "can"
    for i in range(3):
        _image(obj / "train" / "good" / f"{i:03d}_regular.png", i)
    _image(obj / "validation" / "good" / "000_regular.png", 10)
    _image(obj / "test_public" / "good" / "000_regular.png", 20)
    for i in range(2):
        _image(obj / "test_public" / "bad" / f"{i:03d}_regular.png", 30 + i, BOXES[i])
        _mask(obj / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", BOXES[i])
    _image(obj / "test_private" / "000_regular.png", 40)
    _image(obj / "test_private_mixed" / "000_overexposed.png", 41)
    return obj


def make_visa(root: Path) -> Path:
    """VisA root with two objects in split_csv/1cls.csv; only candle has files."""
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        _image(root / "candle" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", i)
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    _image(root / "candle" / "Data" / "Images" / "Normal" / "0003.JPG", 3)
    rows.append("candle,test,normal,candle/Data/Images/Normal/0003.JPG,")
    for i in range(2):
        _image(root / "candle" / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG", 10 + i, BOXES[i])
        _mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", BOXES[i], value=1 + i)
        rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,candle/Data/Masks/Anomaly/{i:03d}.png")
    rows.append("capsules,train,normal,capsules/Data/Images/Normal/0000.JPG,")
    (root / "capsules" / "Data" / "Images").mkdir(parents=True)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root / "candle"


def make_btad(root: Path) -> Path:
    product = root / "01"
    for i in range(3):
        _image(product / "train" / "ok" / f"{i:04d}.bmp", i)
    _image(product / "test" / "ok" / "0000.bmp", 10)
    for i in range(2):
        _image(product / "test" / "ko" / f"{i:04d}.bmp", 20 + i, BOXES[i])
        _mask(product / "ground_truth" / "ko" / f"{i:04d}.png", BOXES[i])
    return product


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    mvtec = make_synthetic_category(root / "mvtec", source="brick", n_train=3, n_test_good=1, n_test_defect=1,
                                    image_size=32, seed=0)
    plain = root / "photos"
    for i in range(2):
        _image(plain / f"{i}.png", i)
    return {
        "mvtec_loco": make_loco(root / "loco"),
        "mvtec_ad2": make_mvtec_ad2(root / "ad2"),
        "visa": make_visa(root / "VisA"),
        "btad": make_btad(root / "btad"),
        "mvtec": mvtec,
        "folder": plain,
    }


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------- recognition
def test_each_layout_is_recognised(layouts):
    for name, folder in layouts.items():
        assert detect_layout(folder) == name, folder
        assert load_dataset(folder).layout == name
    assert set(layouts) == set(LAYOUT_NAMES)
    assert detect_layout(layouts["visa"].parent) is None  # the VisA root holds objects, it is not one


def test_dataset_roots_list_their_categories(layouts):
    assert find_categories(layouts["visa"].parent) == [("candle", layouts["visa"], "visa"),
                                                       ("capsules", layouts["visa"].parent / "capsules", "visa")]
    assert find_categories(layouts["btad"].parent) == [("01", layouts["btad"], "btad")]
    assert find_categories(layouts["mvtec_loco"].parent, layout="mvtec_loco") == [
        ("breakfast_box", layouts["mvtec_loco"], "mvtec_loco")]
    with pytest.raises(DataError, match=r"holds 1 dataset categories \(breakfast_box\); pass one category folder"):
        load_dataset(layouts["mvtec_loco"].parent)
    with pytest.raises(DataError, match="is the VisA root with 2 objects .*pass one object folder"):
        load_dataset(layouts["visa"].parent, layout="visa")


# ----------------------------------------------------------------------------------- records
def test_loco_records_masks_and_defect_configs(layouts):
    ds = load_dataset(layouts["mvtec_loco"])
    assert (ds.name, len(ds.train), len(ds.validation), len(ds.test)) == ("breakfast_box", 12, 2, 7)
    assert ds.defect_types == ["logical_anomalies", "structural_anomalies"]
    assert [r.label for r in ds.test] == [0, 0, 1, 1, 1, 1, 1] and ds.has_masks
    two = next(r for r in ds.test if r.name == "test/logical_anomalies/000.png")
    assert [p.name for p in two.defect_masks] == ["000.png", "001.png"]
    expected = load_mask(two.defect_masks[0]) | load_mask(two.defect_masks[1])
    assert isinstance(two.mask, np.ndarray) and np.array_equal(two.mask, expected)  # the union of both files
    one = next(r for r in ds.test if r.name == "test/structural_anomalies/000.png")
    assert one.mask == one.defect_masks[0] and isinstance(one.mask, Path)
    assert ds.defect_configs[254].name == "extra_almond" and ds.defect_configs[254].saturation_area(400) == 100
    assert ds.defect_configs[255].saturation_area(256) == 128  # relative: half of the region


def test_mvtec_ad2_records_and_private_splits(layouts):
    ds = load_dataset(layouts["mvtec_ad2"])
    assert (len(ds.train), len(ds.validation)) == (3, 1)
    assert [(r.name, r.label) for r in ds.test] == [
        ("test_public/good/000_regular.png", 0), ("test_public/bad/000_regular.png", 1),
        ("test_public/bad/001_regular.png", 1)]
    assert ds.test[1].mask.name == "000_regular_mask.png" and ds.has_masks
    assert {k: [r.label for r in v] for k, v in ds.unlabelled.items()} == {"test_private": [-1], "test_private_mixed": [-1]}


def test_visa_object_from_its_folder_or_the_root(layouts):
    ds = load_dataset(layouts["visa"])
    assert (ds.name, len(ds.train), len(ds.test)) == ("candle", 3, 3)
    assert [r.label for r in ds.test] == [0, 1, 1] and ds.has_masks
    assert ds.test[1].source.suffix == ".JPG" and ds.test[1].mask.name == "000.png"
    same = load_visa_object(layouts["visa"].parent, "candle")
    assert [r.name for r in same.test] == [r.name for r in ds.test]
    assert load_mask(ds.test[2].mask).sum() == 20 * 20  # mask value 2 (VisA: one value per region) is defect


def test_btad_bmp_images_with_png_masks(layouts):
    ds = load_dataset(layouts["btad"])
    assert (len(ds.train), [r.label for r in ds.test], ds.defect_types) == (3, [0, 1, 1], ["ko"])
    assert ds.train[0].source.suffix == ".bmp" and ds.test[1].mask.suffix == ".png"
    assert ds.test[0].defect_type == "good"


# -------------------------------------------------------------------------- --layout override
def test_layout_override(layouts, tmp_path):
    both = tmp_path / "both"  # images at the top and an MVTec train/good: recognised as MVTec
    shutil.copytree(layouts["mvtec"], both)
    for i in range(2):
        _image(both / f"top{i}.png", i)
    assert load_dataset(both).layout == "mvtec"
    forced = load_dataset(both, layout="folder")
    assert forced.layout == "folder" and [r.name for r in forced.train] == ["train/top0.png", "train/top1.png"]
    with pytest.raises(DataError, match=r"train/ok: folder missing; a BTAD product needs train/ok/"):
        load_dataset(layouts["mvtec"], layout="btad")
    with pytest.raises(DataError, match=r"Data/Images: folder missing; a VisA object folder"):
        load_dataset(layouts["btad"], layout="visa")
    with pytest.raises(ConfigError, match="unknown layout 'lococo'; choose one of mvtec_loco, mvtec_ad2, mvtec"):
        load_dataset(layouts["mvtec"], layout="lococo")


def test_data_source_keeps_a_plain_data_argument_and_checks_the_options(layouts):
    assert data_source("cat") == "cat"
    source = data_source(None, normal="good", abnormal=["bad"], masks="m")
    assert source == DatasetSource("good", "folder", ("bad",), None, "m")
    assert str(source) == "--normal good --abnormal bad --masks m"
    assert str(data_source("VisA/candle", layout="visa")) == "VisA/candle --layout visa"
    with pytest.raises(ConfigError, match="not both"):
        data_source("cat", normal="good")
    with pytest.raises(ConfigError, match="no data"):
        data_source(None)
    with pytest.raises(ConfigError, match="--masks .* give --abnormal DIR too"):
        data_source(None, normal="good", masks="m")
    with pytest.raises(ConfigError, match="do not combine with --layout btad"):
        data_source("x", layout="btad", abnormal=["bad"])


# ------------------------------------------------------------------------------- bad input
def test_a_folder_of_no_layout_lists_what_was_looked_for(tmp_path, capsys):
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    assert main(["fit", "padim", str(tmp_path / "nothing"), "-o", str(tmp_path / "r"), *FIT]) == 2
    err = _one_line_error(capsys, "no images and not an MVTec AD category or any other known layout")
    for name in LAYOUT_NAMES:
        assert f"({name}:" in err and f"({name}:" in LAYOUT_HELP
    assert not (tmp_path / "r").exists()


def test_a_named_layout_whose_split_is_missing_names_the_folder(layouts, tmp_path, capsys):
    assert main(["fit", "padim", str(layouts["btad"]), "--layout", "mvtec_loco", "-o", str(tmp_path / "r"), *FIT]) == 2
    _one_line_error(capsys, str(layouts["btad"] / "train" / "good"), "folder missing; an MVTec LOCO AD category needs train/good/")
    assert main(["fit", "padim", str(layouts["btad"]), "--layout", "nope", "-o", str(tmp_path / "r"), *FIT]) == 2
    _one_line_error(capsys, "unknown layout 'nope'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("layout", ["mvtec_loco", "btad", "mvtec_ad2", "visa"])
def test_a_mask_of_the_wrong_size_names_both_files(layouts, layout, tmp_path):
    copy = tmp_path / "copy"
    source = layouts[layout].parent if layout == "visa" else layouts[layout]
    shutil.copytree(source, copy)
    folder = copy / "candle" if layout == "visa" else copy
    mask = {
        "mvtec_loco": folder / "ground_truth" / "structural_anomalies" / "001" / "000.png",
        "btad": folder / "ground_truth" / "ko" / "0001.png",
        "mvtec_ad2": folder / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png",
        "visa": folder / "Data" / "Masks" / "Anomaly" / "001.png",
    }[layout]
    _mask(mask, (0, 0, 4, 4), size=(W // 2, H))
    with pytest.raises(DataError) as excinfo:
        load_dataset(folder)
    message = str(excinfo.value)
    assert str(mask) in message and "does not match image" in message and "001" in message.split("image", 1)[1]


@pytest.mark.parametrize("layout", ["mvtec_loco", "btad", "mvtec_ad2", "visa"])
def test_a_missing_test_mask_stops_test_but_not_fit(layouts, layout, tmp_path):
    from anomalens.data.mvtec import masks_unread

    copy = tmp_path / "copy"
    source = layouts[layout].parent if layout == "visa" else layouts[layout]
    shutil.copytree(source, copy)
    folder = copy / "candle" if layout == "visa" else copy
    missing = {
        "mvtec_loco": folder / "ground_truth" / "structural_anomalies" / "001",
        "btad": folder / "ground_truth" / "ko" / "0001.png",
        "mvtec_ad2": folder / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png",
        "visa": folder / "Data" / "Masks" / "Anomaly" / "001.png",
    }[layout]
    shutil.rmtree(missing) if missing.is_dir() else missing.unlink()
    with masks_unread():  # what fit reads: the training images only
        assert load_dataset(folder).train
    with pytest.raises(DataError, match="001"):
        load_dataset(folder)


def test_visa_rows_pointing_to_missing_files(layouts, tmp_path):
    root = tmp_path / "VisA"
    shutil.copytree(layouts["visa"].parent, root)
    (root / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG").unlink()
    with pytest.raises(DataError, match=r"1cls.csv, line 7: .*Anomaly/001.JPG: image file does not exist"):
        load_dataset(root / "candle")
    shutil.copytree(layouts["visa"].parent, root, dirs_exist_ok=True)
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError, match=r"line 6: .*Masks/Anomaly/000.png: mask file does not exist"):
        load_dataset(root / "candle")
    lonely = tmp_path / "lonely"
    shutil.copytree(layouts["visa"], lonely / "candle")
    with pytest.raises(DataError, match=r"split_csv/1cls.csv: missing; VisA's split file"):
        load_dataset(lonely / "candle")


def test_loco_without_defects_config_or_with_a_bad_one(layouts, tmp_path):
    copy = tmp_path / "box"
    shutil.copytree(layouts["mvtec_loco"], copy)
    (copy / "defects_config.json").write_text('[{"defect_name": "x", "pixel_value": 300, '
                                              '"saturation_threshold": 1, "relative_saturation": true}]')
    with pytest.raises(DataError, match=r"defects_config.json: entry 0: pixel_value must be an integer in 1..255"):
        load_dataset(copy)
    (copy / "defects_config.json").unlink()
    with pytest.raises(DataError, match=r"defects_config.json: missing; MVTec LOCO AD needs it"):
        load_dataset(copy)
    shutil.copy(layouts["mvtec_loco"] / "defects_config.json", copy)
    shutil.rmtree(copy / "ground_truth" / "logical_anomalies" / "001")
    with pytest.raises(DataError, match=r"logical_anomalies/001: no ground-truth mask for anomalous test image"):
        load_dataset(copy, layout="mvtec_loco")


# ------------------------------------------------------------------------- benchmark metrics
def test_loco_regions_scale_saturation_and_refuse_unknown_pixel_values(layouts, tmp_path):
    ds = load_dataset(layouts["mvtec_loco"])
    regions = loco_regions(ds.test, ds.defect_configs, (32, 40))  # half the size each way
    assert len(regions) == 6  # five anomalous images, one of them with two defect files
    first = [r for r in regions if r.image == 2]
    assert [int(r.mask.sum()) for r in first] == [64, 80]  # 16 x 16 and 20 x 16 boxes, halved each way
    # relative 0.5 of the region; absolute 100 px of a 320 px region → 25 px at a quarter of the area
    assert [r.saturation_area for r in first] == [32.0, 25.0]
    copy = tmp_path / "box"
    shutil.copytree(layouts["mvtec_loco"], copy)
    _mask(copy / "ground_truth" / "structural_anomalies" / "000" / "000.png", BOXES[1], value=17)
    bad = load_dataset(copy)
    with pytest.raises(DataError, match=r"000/000.png: pixel value 17 is not a defect type .* lists 253, 254, 255"):
        loco_regions(bad.test, bad.defect_configs, (32, 40))


def test_mvtec_ad2_metrics_on_test_public(layouts):
    ds = load_dataset(layouts["mvtec_ad2"])
    masks = np.zeros((3, 8, 8), bool)
    masks[1, :4, :4] = masks[2, 4:, 4:] = True
    maps = masks.astype(np.float32) + 0.1
    predicted = maps > 0.5
    predicted[0, 0, 0] = True  # one false-positive pixel
    result = DetectionResult(scores=np.array([0.1, 0.9, 0.8]), labels=np.array([0, 1, 1]), maps=maps, masks=predicted)
    out = benchmark_metrics(ds, result, masks)
    assert out["layout"] == "mvtec_ad2" and out["image_auroc_test_public"] == 1.0
    assert out["aupro_0.05_test_public"] == pytest.approx(1.0)
    assert out["seg_f1_test_public"] == pytest.approx(2 * 32 / (2 * 32 + 1))


# ------------------------------------------------------------------------------ CLI round trip
@pytest.fixture(scope="module")
def loco_run(layouts, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "box"
    assert main(["fit", "padim", str(layouts["mvtec_loco"]), "-o", str(run), *FIT]) == 0
    return run


def test_fit_and_test_on_mvtec_loco_report_spro_per_split(loco_run, layouts, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["test", str(loco_run), str(layouts["mvtec_loco"]), "-o", str(out), "-q", "--no-report"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layout"] == "mvtec_loco" and metrics["n_images"] == 7
    for key in ("spro_0.05", "spro_0.05_logical_anomalies", "spro_0.05_structural_anomalies",
                "spro_0.05_mean_of_splits", "image_auroc_logical_anomalies", "image_auroc_structural_anomalies",
                "image_auroc_mean_of_splits", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["pixel_auroc"] > 0.8  # the green boxes are found
    run_info = json.loads((loco_run / "run.json").read_text())
    assert run_info["data"] == str(layouts["mvtec_loco"]) and run_info["n_train_images"] == 12


def test_labelled_folder_flags(loco_run, layouts, tmp_path, capsys):
    btad = layouts["btad"]
    out = tmp_path / "report"
    assert main(["test", str(loco_run), "--normal", str(btad / "train" / "ok"), "--abnormal", str(btad / "test" / "ko"),
                 "--test-normal", str(btad / "test" / "ok"), "--masks", str(btad / "ground_truth"),
                 "-o", str(out), "-q", "--no-report"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["layout"], metrics["n_images"], metrics["n_anomalous"]) == ("folder", 3, 2)
    assert "pixel_auroc" in metrics  # the masks were found under ground_truth/ko/
    copy = tmp_path / "calibrated"
    shutil.copytree(loco_run, copy)
    assert main(["calibrate", str(copy), "--normal", str(btad / "train" / "ok"), "--abnormal",
                 str(btad / "test" / "ko"), "--test-normal", str(btad / "test" / "ok"), "-q"]) == 0
    assert json.loads((copy / "calibration.json").read_text())["n_anomalous"] == 2
    capsys.readouterr()  # calibrate's own warning (a threshold set on 2 defects)
    assert main(["test", str(loco_run), str(btad), "--normal", str(btad), "-o", str(tmp_path / "x"), "-q"]) == 2
    _one_line_error(capsys, "not both")
    assert main(["test", str(loco_run), "--abnormal", str(btad / "test" / "ko"), "-o", str(tmp_path / "x"), "-q"]) == 2
    _one_line_error(capsys, "no data")
    assert main(["test", str(loco_run), str(layouts["mvtec_loco"]), "--abnormal", str(btad / "test" / "ko"),
                 "-o", str(tmp_path / "x"), "-q"]) == 2
    _one_line_error(capsys, "is an MVTec LOCO AD category; options abnormal_dirs only apply to plain image folders")
    assert not (tmp_path / "x").exists()


@pytest.mark.jobs  # a benchmark job in a fresh process
def test_benchmark_harness_runs_every_category_of_a_dataset_root(layouts, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "bench"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    proc = subprocess.run([sys.executable, str(script), "--dataset-root", str(layouts["btad"].parent), "--models", "padim",
                           "--param", "padim.image_size=64", "--param", "padim.device=cpu", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((out / "results.json").read_text())["results"]
    assert (row["model"], row["dataset"], row["layout"], row["n_test"]) == ("padim", "01", "btad", 3)
    table = (out / "results.md").read_text()
    assert "| padim | 01 | " in table and "pixel AUROC" in table


def test_a_data_source_names_every_folder_it_reads():
    source = data_source(None, normal="n", abnormal=["a", "b"], test_normal="t", masks="m")
    assert source.paths == (Path("n"), Path("a"), Path("b"), Path("t"), Path("m"))
