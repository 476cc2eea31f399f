"""The command line reads images as the API does: folders searched into their sub-folders (the README's
``predict exports/brick data/brick/test``), large frames without Pillow's warning under ``-q``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from anomalens.cli import main
from anomalens.data import collect_images

ROOT = Path(__file__).resolve().parents[1]


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_on_a_test_folder_of_sub_folders(run, category, tmp_path):
    test = category / "test"
    assert not any(p.is_file() for p in test.iterdir())  # only good/ and defect folders, as MVTec ships it
    out = tmp_path / "predictions"
    assert main(["predict", str(run), str(test), "-o", str(out), "-q", "--workers", "0"]) == 0
    rows = _rows(out)
    assert [row["image"] for row in rows] == [str(r.source) for r in collect_images(test)]
    assert len(rows) == 8


def test_predictions_kept_beside_the_images_are_not_scored_again(run, category, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(category / "test", images)
    out = tmp_path / "predictions"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--workers", "0",
                 "--heatmaps", "all"]) == 0
    assert any((out / "heatmaps").iterdir())
    shutil.move(str(out), str(images / "predictions"))  # the outputs filed next to the images they are of
    again = tmp_path / "again"
    assert main(["predict", str(run), str(images), "-o", str(again), "-q", "--workers", "0"]) == 0
    assert len(_rows(again)) == 8  # the heatmaps under predictions/ are not images to score


_PREDICT_WITH_A_SMALL_PILLOW_LIMIT = """
import sys
from PIL import Image
Image.MAX_IMAGE_PIXELS = 1000  # warn above 1000 pixels, refuse above 2000 (as at 89 / 179 megapixels)
from anomalens.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _predict(run: Path, images: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PREDICT_WITH_A_SMALL_PILLOW_LIMIT, "predict", str(run), str(images),
                           "-o", str(out), "-q", "--workers", "0", "--heatmaps", "all"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


def test_a_large_frame_under_q_prints_nothing_and_one_beyond_the_limit_is_one_line(run, tmp_path, capsys,
                                                                                   monkeypatch):
    large = tmp_path / "large"
    large.mkdir()
    Image.new("RGB", (40, 40), (90, 80, 70)).save(large / "40x40.png")  # above the warning, below the refusal
    done = _predict(run, large, tmp_path / "out")  # a real process: its stderr is all a user would see
    assert done.returncode == 0 and done.stderr == "", done.stderr
    huge = tmp_path / "huge"
    huge.mkdir()
    Image.new("RGB", (50, 50)).save(huge / "50x50.png")  # beyond the refusal
    # The refusal is an error line, not a warning: the command in this process says it as a process would.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    returncode = main(["predict", str(run), str(huge), "-o", str(tmp_path / "out2"), "-q", "--workers", "0",
                       "--heatmaps", "all"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert returncode != 0 and len(lines) == 1 and "image too large" in lines[0], err


@pytest.mark.parametrize("content", [
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n",
    b"P6\n8 8\n255\n" + bytes(8 * 8 * 3),
])
def test_predict_refuses_a_file_of_another_format_named_png_in_one_line(run, tmp_path, capsys, content):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "drawing.png").write_bytes(content)
    assert main(["predict", str(run), str(folder), "-o", str(tmp_path / "out"), "-q", "--workers", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "drawing.png: cannot read image: not a recognised image format" in err, err
