"""The documented commands on a test folder of sub-folders (issue 29: ``predict RUN data/brick/test`` and
``verify-export EXPORT data/brick/test`` used to stop with "no images found").

The rule (``anomalens.data.inputs``): a folder argument is searched into its sub-folders — its own images
first, by name, then each sub-folder, depth first, sorted; hidden folders and folders anomalens wrote are
skipped. ``predict``'s ``image`` column is the path of each image as reached from the argument, so rows stay
distinct across sub-folders and a flat folder's rows are what they always were (``FOLDER/NAME``)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from anomalens.cli import main


def _image_column(out: Path) -> list[str]:
    with open(out / "predictions.csv", newline="") as handle:
        return [row["image"] for row in csv.DictReader(handle)]


def _expected(test: Path) -> list[str]:
    """Sorted, a folder's own images before its sub-folders' (the MVTec test folder has none of its own)."""
    return [str(path) for folder in sorted(p for p in test.iterdir() if p.is_dir())
            for path in sorted(folder.glob("*.png"))]


def test_predict_on_a_test_folder_scores_every_sub_folder_in_sorted_order(run, category, tmp_path):
    test = category / "test"
    out = tmp_path / "preds"
    assert main(["predict", str(run), str(test), "-o", str(out), "-q", "--workers", "0"]) == 0
    rows = _image_column(out)
    assert rows == _expected(test)
    assert len(set(rows)) == len(rows)  # same file names (000.png) in good/ and hole/ stay distinct rows


def test_a_flat_folder_keeps_its_rows_and_a_rerun_gives_the_same_order(run, category, tmp_path):
    flat = category / "test" / "good"
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert main(["predict", str(run), str(flat), "-o", str(out), "-q", "--workers", "0"]) == 0
    assert _image_column(first) == _image_column(second) == [str(p) for p in sorted(flat.glob("*.png"))]


def test_hidden_folders_and_anomalens_outputs_inside_the_folder_are_not_scored(run, category, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(category / "test", images)
    expected = _expected(images)
    (images / ".thumbnails").mkdir()
    shutil.copy(next((images / "good").glob("*.png")), images / ".thumbnails" / "000.png")
    written = tmp_path / "predictions"
    assert main(["predict", str(run), str(images), "-o", str(written), "-q", "--workers", "0",
                 "--heatmaps", "all"]) == 0
    assert any((written / "heatmaps").iterdir())
    shutil.move(str(written), str(images / "predictions"))  # filed beside the images: heatmaps are PNGs too
    again = tmp_path / "again"
    assert main(["predict", str(run), str(images), "-o", str(again), "-q", "--workers", "0"]) == 0
    assert _image_column(again) == expected  # neither .thumbnails/ nor predictions/heatmaps


def test_verify_export_on_a_test_folder_reads_labels_from_its_sub_folders(run, category, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install 'anomalens[export]'")
    export = tmp_path / "exports" / "brick"
    assert main(["export", str(run), "--format", "onnx", "-o", str(export), "-q"]) == 0
    capsys.readouterr()
    assert main(["verify-export", str(export), str(category / "test"), "-q"]) == 0
    report = capsys.readouterr().out
    n_images = len(_expected(category / "test"))
    assert f"on {n_images} images" in report
    assert "AUROC: torch" in report  # every image sat in good/ or a defect folder: labels known
