"""The command line end to end on a tiny synthetic category, and its answers to bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.cli import main
from tests.conftest import FIT



def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_fit_writes_a_loadable_run(run):
    config = json.loads((run / "detector.json").read_text())
    assert config["detector"] == "padim" and config["params"]["image_size"] == 64
    assert (run / "weights.safetensors").stat().st_size > 0
    assert json.loads((run / "run.json").read_text())["n_train_images"] == 12
    assert not [p for p in run.parent.iterdir() if ".partial" in p.name]


def test_test_writes_metrics_and_report(run, category, capsys):
    assert main(["test", str(run), str(category), "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "threshold", "tpr", "tnr"):
        assert key in metrics
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["n_images"] == 8
    assert metrics["pixel_auroc"] > 0.8  # PaDiM localises the synthetic defects even at 64 px
    with open(run / "scores.csv") as fh:  # normalised score next to the raw one (0.5 = the threshold)
        rows = list(csv.DictReader(fh))
    assert rows and all((float(r["normalized_score"]) > 0.5) == (r["predicted"] == "1") for r in rows)
    for name in ("report.html", "scores.csv", "roc.png", "score_histogram.png"):
        assert (run / name).is_file()
    assert "image_auroc=" in capsys.readouterr().out


def test_test_without_ground_truth_is_image_level(run, category, tmp_path):
    copy = tmp_path / "nogt"
    shutil.copytree(category, copy)
    shutil.rmtree(copy / "ground_truth")
    assert main(["test", str(run), str(copy), "-o", str(tmp_path / "out"), "-q", "--no-report"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "image_auroc" in metrics and "pixel_auroc" not in metrics and "aupro" not in metrics


def test_predict_writes_scores_heatmaps_and_masks(run, category, tmp_path):
    out = tmp_path / "pred"
    images = category / "test" / "hole"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == len(list(images.iterdir()))
    jsonl = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert [r["score"] for r in jsonl] == pytest.approx([float(r["score"]) for r in rows])
    # normalised score: 0.5 at the threshold, so above 0.5 exactly where the score rule flags
    for row in jsonl:
        assert 0 <= row["normalized_score"] <= 1 and (row["normalized_score"] > 0.5) == row["anomalous"]
    heatmap = Image.open(out / rows[0]["heatmap"])
    picture = Image.open(rows[0]["image"])
    # the overlay at the image's own size, plus its colour scale bar (right) and score strip (below)
    assert heatmap.width > picture.width and heatmap.height > picture.height and heatmap.mode == "RGB"
    assert Image.open(out / rows[0]["mask"]).size == picture.size


def test_predict_accepts_single_files_and_refuses_to_overwrite(run, category, tmp_path, capsys):
    image = next((category / "test" / "good").iterdir())
    out = tmp_path / "single"
    assert main(["predict", str(run), str(image), "-o", str(out), "-q", "--no-heatmaps"]) == 0
    assert main(["predict", str(run), str(image), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "already exists")


def test_calibrate_with_and_without_defects(run, category, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["calibrate", str(copy), str(category), "-q"]) == 0
    assert "F1-optimal" in json.loads((copy / "detector.json").read_text())["decision"]["description"]
    # A calibration set with new normal images only: no threshold that flags everything.
    normals = tmp_path / "normals"
    shutil.copytree(category / "test" / "good", normals)
    assert main(["calibrate", str(copy), str(normals), "-q"]) == 0
    out = capsys.readouterr().out
    assert "no anomalous image" in out
    threshold = json.loads((copy / "detector.json").read_text())["decision"]["image_threshold"]
    from anomalens import load_detector
    from anomalens.data import load_dataset

    scores = load_detector(copy).score(load_dataset(normals).train, progress=False)[0]
    assert (scores > threshold).mean() <= 0.1


def test_calibrate_on_the_training_images_is_refused(run, category, tmp_path, capsys):
    """Regression (issue 15, item 2): calibrating on the training folder set PaDiM's threshold from images
    the model had seen (338 → 4.25) and flagged every new normal image, with no warning."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = (copy / "detector.json").read_text()
    for data in (category / "train" / "good", tmp_path / "copied"):  # the folder itself, or a copy of it
        if data.name == "copied":
            shutil.copytree(category / "train" / "good", data)
        assert main(["calibrate", str(copy), str(data), "-q"]) == 2
        _one_line_error(capsys, "every calibration image is a training image of this run")
        assert (copy / "detector.json").read_text() == before


# ------------------------------------------------------------------------------------ bad input
def _assert_no_run(parent: Path) -> None:
    assert not any(parent.iterdir()), list(parent.iterdir())


def test_missing_folder(tmp_path, capsys):
    assert main(["fit", "padim", str(tmp_path / "nowhere"), "-o", str(tmp_path / "runs" / "r"), *FIT]) == 2
    _one_line_error(capsys, "nowhere")
    assert not (tmp_path / "runs" / "r").exists()


def test_empty_train_good(tmp_path, capsys):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "test" / "good").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    assert main(["fit", "padim", str(tmp_path / "cat"), "-o", str(tmp_path / "runs" / "r"), *FIT]) == 2
    _one_line_error(capsys, "train")
    _assert_no_run(tmp_path / "runs")


def test_corrupt_png_in_training_images(category, tmp_path, capsys):
    copy = tmp_path / "cat"
    shutil.copytree(category, copy)
    bad = copy / "train" / "good" / "005.png"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    (tmp_path / "runs").mkdir()
    assert main(["fit", "padim", str(copy), "-o", str(tmp_path / "runs" / "r"), *FIT]) == 2
    _one_line_error(capsys, "005.png")
    _assert_no_run(tmp_path / "runs")


def test_mask_of_the_wrong_size(run, category, tmp_path, capsys):
    copy = tmp_path / "cat"
    shutil.copytree(category, copy)
    mask = next((copy / "ground_truth" / "hole").iterdir())
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    out = tmp_path / "out"
    assert main(["test", str(run), str(copy), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, mask.name)
    assert not out.exists() or not any(out.iterdir())


def test_wrong_model_name(category, tmp_path, capsys):
    assert main(["fit", "padimm", str(category), "-o", str(tmp_path / "r"), *FIT]) == 2
    _one_line_error(capsys, "unknown detector 'padimm'", "did you mean 'padim'?", "available:")
    assert not (tmp_path / "r").exists()


def test_an_out_of_range_parameter_is_one_line_before_any_work(category, tmp_path, capsys):
    assert main(["fit", "padim", str(category), "-o", str(tmp_path / "r"), *FIT, "-p", "epsilon=-1"]) == 2
    _one_line_error(capsys, "padim: parameter epsilon must be a number > 0, got -1")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["params", "stpm"], ["list", "stpm"]])
def test_params_prints_the_declared_table(command, capsys):
    from anomalens.catalog import detector_class

    assert main(command) == 0
    out = capsys.readouterr().out
    for key, param in detector_class("stpm").declared_params().items():
        line = next(line for line in out.splitlines() if line.split()[:1] == [key])
        assert param.help in line and param.accepts() in line


def test_list_names_every_detector_with_a_summary(capsys):
    from anomalens.catalog import list_detectors

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_detectors()
    assert all(len(line.split()) > 2 for line in lines), "a detector without a one-line description"


def test_not_a_run_folder(category, tmp_path, capsys):
    assert main(["test", str(tmp_path), str(category), "-q"]) == 2
    _one_line_error(capsys, "detector.json")


def test_calibrate_area_rule_then_test(run, category, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["calibrate", str(copy), str(category), "--method", "area", "-q"]) == 0
    assert "min_area" in capsys.readouterr().out
    saved = json.loads((copy / "calibration.json").read_text())
    assert saved["method"] == "area" and saved["min_area"] >= 1
    assert main(["test", str(copy), str(category), "-q", "--no-report"]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["min_area"] == saved["min_area"]
    assert metrics["tp"] + metrics["fn"] == 4 and metrics["tn"] + metrics["fp"] == 4


def test_fit_and_test_on_a_one_class_protocol_spec(tmp_path, monkeypatch, capsys):
    """DATA may name a one-class protocol; fit and test read the same deterministic split."""
    from test_data_oneclass import _fake_mnist  # tests/ is on sys.path (pytest prepend import mode)

    _fake_mnist(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("ANOMALENS_DATA", str(tmp_path / "env"))
    spec = "fashion-mnist:normal=1,2,3:abnormal=0"
    run = tmp_path / "run"
    assert main(["fit", "mlp_ae", spec, "-o", str(run), "-p", "epochs=1", "-q"]) == 0
    assert main(["test", str(run), spec, "--no-report", "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_images"] == 16 and metrics["n_anomalous"] == 4  # 4 test images per class
    assert 0.0 <= metrics["image_auroc"] <= 1.0


def test_a_memory_limit_the_command_cannot_meet_gives_one_line(run, category, tmp_path):
    """Under an address-space limit too small for it (an edge box), predict fails with one line, exit 2:
    whether torch's libraries cannot be mapped or an allocation fails later, never a traceback."""
    import os
    import resource
    import subprocess
    import sys

    limit = 1_200_000_000

    def small_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "anomalens.cli", "predict", str(run), str(category / "test" / "hole"),
                           "-o", str(tmp_path / "out"), "--workers", "0", "-q"], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=small_address_space)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anomalens: error: predict:"), proc.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
