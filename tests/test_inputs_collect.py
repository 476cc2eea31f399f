"""User inputs → images, in one place (``anomalens.data.inputs``): files, folders searched into their
sub-folders, glob patterns, arrays — the same for ``Detector.fit`` / ``predict`` and the command line."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from anomalens import create_detector
from anomalens.data import (
    AnomalyDataset,
    ImageRecord,
    as_image_inputs,
    as_image_records,
    collect_images,
    find_images,
)
from anomalens.errors import DataError
from tests.conftest import TINY_PARAMS, make_records


def _image(path, value: int = 128, size: int = 8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """test/ as MVTec ships it: no image at the top, one folder per kind, same file names in each."""
    root = tmp_path / "test"
    for folder in ("good", "crack", "scratch"):
        for name in ("000.png", "001.png"):
            _image(root / folder / name)
    _image(root / "crack" / "deeper" / "000.png")
    return root


def _names(records):
    return [r.name for r in records]


def test_a_folder_is_searched_into_its_sub_folders_in_sorted_order(tree):
    records = collect_images(tree)
    assert _names(records) == ["crack/000.png", "crack/001.png", "crack/deeper/000.png", "good/000.png",
                               "good/001.png", "scratch/000.png", "scratch/001.png"]
    assert [r.source for r in records] == [tree / n for n in _names(records)]
    assert all(r.label == -1 and r.mask is None for r in records)
    assert len({r.name for r in records}) == len(records)  # same-named files stay distinct


def test_a_folders_own_images_come_first_named_by_file_name(tree):
    _image(tree / "zz.png")
    _image(tree / "aa.jpg")
    assert _names(collect_images(tree))[:3] == ["aa.jpg", "zz.png", "crack/000.png"]
    assert _names(collect_images(tree / "good")) == ["000.png", "001.png"]  # a flat folder: as before


def test_hidden_entries_non_images_and_anomalens_outputs_are_skipped(tree):
    _image(tree / ".hidden" / "000.png")
    _image(tree / "good" / ".x.png")
    (tree / "good" / "notes.txt").write_text("not an image")
    predictions = tree / "predictions"
    _image(predictions / "heatmaps" / "00000_000.png")
    (predictions / ".anomalens-output.json").write_text('{"kind": "predictions"}')
    names = _names(collect_images(tree))
    assert not any(n.startswith((".hidden", "predictions")) or ".x" in n or n.endswith(".txt") for n in names)
    # An output folder given itself is searched, as asked.
    assert _names(collect_images(predictions)) == ["heatmaps/00000_000.png"]


def test_files_folders_and_patterns_mix_in_the_order_given(tree):
    records = collect_images([tree / "good" / "001.png", str(tree / "scratch"), str(tree / "*" / "000.png")])
    assert _names(records) == ["001.png", "000.png", "001.png", "crack/000.png", "good/000.png", "scratch/000.png"]


def test_glob_patterns(tree, tmp_path):
    assert _names(collect_images(str(tree / "**" / "000.png"))) == [
        "crack/000.png", "crack/deeper/000.png", "good/000.png", "scratch/000.png"]
    assert _names(collect_images(str(tree / "g*"))) == ["good/000.png", "good/001.png"]  # a matched folder
    with pytest.raises(DataError, match=r"no images match this pattern") as info:
        collect_images(str(tree / "*" / "*.jpg"))
    assert "\n" not in str(info.value)
    literal = _image(tmp_path / "odd[1].png")  # a file whose name looks like a pattern is that file
    assert [r.source for r in collect_images(str(literal))] == [literal]


@pytest.mark.parametrize("make, says", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "empty" / "sub").mkdir(parents=True) or p / "empty", "no images found"),
    (lambda p: (p / "dangling").symlink_to(p / "nowhere") or p / "dangling", "no such file or folder (a link to"),
    (lambda p: os.mkfifo(p / "pipe.png") or p / "pipe.png", "not a regular file or a folder"),
])
def test_nothing_to_score_is_one_line_naming_the_path(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        collect_images(path)
    message = str(info.value)
    assert message.startswith(str(path)) and says in message and "\n" not in message


def test_an_empty_list_is_refused_and_a_non_path_is_named():
    with pytest.raises(DataError, match="no images given"):
        collect_images([])
    with pytest.raises(DataError, match="cannot use a int as an image path"):
        collect_images([3])


def test_a_folder_linked_into_itself_is_searched_once(tree):
    (tree / "good" / "loop").symlink_to(tree, target_is_directory=True)
    names = _names(collect_images(tree))
    assert len(names) == 7 and len(set(names)) == 7


def test_a_linked_folder_is_followed(tree, tmp_path):
    outside = tmp_path / "elsewhere"
    _image(outside / "x.png")
    (tree / "linked").symlink_to(outside, target_is_directory=True)
    assert "linked/x.png" in _names(collect_images(tree))


def test_an_unreadable_sub_folder_stops_with_one_line(tree, monkeypatch):
    real_walk = os.walk

    def walk(top, onerror=None, followlinks=False):  # what os.walk does for a folder it may not list
        for entry in real_walk(top, onerror=onerror, followlinks=followlinks):
            if entry[0].endswith("good"):
                onerror(PermissionError(13, "Permission denied", entry[0]))
                continue
            yield entry

    monkeypatch.setattr("anomalens.data.inputs.os.walk", walk)
    with pytest.raises(DataError, match=r"good: cannot list folder: Permission denied$") as info:
        find_images(tree)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- arrays and the rest
def test_numpy_stacks_are_n_images_and_a_single_image_is_one():
    rgb = np.zeros((5, 16, 16, 3), np.uint8)
    assert _names(as_image_inputs(rgb)) == [f"image {i}" for i in range(5)]
    assert len(as_image_inputs(np.zeros((5, 16, 16), np.uint8))) == 5  # (N, H, W): grey images
    assert len(as_image_inputs(np.zeros((16, 16, 3), np.uint8))) == 1
    assert len(as_image_inputs(np.zeros((16, 16), np.uint8))) == 1
    mixed = as_image_inputs([np.zeros((16, 16), np.uint8), rgb[:2]])
    assert _names(mixed) == ["image 0", "image 1: 0", "image 1: 1"]


def test_a_channels_first_numpy_array_is_refused_not_misread():
    with pytest.raises(DataError, match=r"looks channels-first \(C, H, W\)"):
        as_image_inputs(np.zeros((3, 32, 32), np.float32))


def test_a_dataset_or_an_unknown_object_is_refused_with_a_hint():
    with pytest.raises(DataError, match=r"give its \.train \(fit\) or \.test"):
        as_image_inputs(AnomalyDataset("x", train=[]))
    with pytest.raises(DataError, match="cannot use a dict as images"):
        as_image_inputs({"a": 1})
    with pytest.raises(DataError, match="cannot use a object as an image"):
        as_image_inputs([object()])


def test_records_keep_their_labels_and_new_ones_get_the_label_asked(tree):
    given = ImageRecord(np.zeros((4, 4), np.uint8), 1, name="given")
    records = as_image_records([given, tree / "good" / "000.png", np.zeros((2, 4, 4, 3), np.uint8)], label=0)
    assert [r.label for r in records] == [1, 0, 0, 0]


# ------------------------------------------------------------------------------- the Detector API
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The conftest's stripe textures as files: train/ flat, test/ with good/ and defect/ sub-folders."""
    root = tmp_path_factory.mktemp("images")
    for i, record in enumerate(make_records(16, 0, seed=1)):
        Image.fromarray(record.source).save(_image(root / "train" / f"{i:03d}.png"))
    for record in make_records(3, 3, seed=2):
        kind, index = record.name.split("/")
        Image.fromarray(record.source).save(_image(root / "test" / ("good" if kind == "normal" else kind) /
                                                   f"{int(index):03d}.png"))
    return root


@pytest.fixture(scope="module")
def fitted(image_folder):
    return create_detector("padim", **TINY_PARAMS["padim"]).fit(str(image_folder / "train"), progress=False)


def test_fit_on_a_folder_path(fitted, image_folder):
    assert fitted.is_fitted and fitted.decision_.evidence["n_normal"] == 16
    # The same images as records fit the same model.
    records = [ImageRecord(p, 0, name=p.name) for p in sorted((image_folder / "train").iterdir())]
    again = create_detector("padim", **TINY_PARAMS["padim"]).fit(records, progress=False)
    assert again.threshold_ == pytest.approx(fitted.threshold_)


def test_predict_on_a_folder_with_sub_folders_scores_what_the_cli_would(fitted, image_folder):
    result = fitted.predict(image_folder / "test", progress=False)
    assert len(result.scores) == len(collect_images(image_folder / "test")) == 6
    by_path = fitted.predict(sorted(str(p) for p in (image_folder / "test").rglob("*.png")), progress=False)
    np.testing.assert_allclose(np.sort(result.scores), np.sort(by_path.scores), rtol=1e-6)


def test_fit_and_predict_on_an_empty_folder_are_one_line(fitted, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    detector = create_detector("padim", **TINY_PARAMS["padim"])
    for call in (lambda: detector.fit(str(tmp_path / "empty"), progress=False),
                 lambda: fitted.predict(tmp_path / "empty", progress=False),
                 lambda: detector.fit(tmp_path / "missing", progress=False)):
        with pytest.raises(DataError) as info:
            call()
        assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_fit_and_predict_take_numpy_stacks(fitted, train_records, test_records):
    stack = np.stack([r.source for r in train_records])  # (N, H, W, 3) uint8
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(stack, progress=False)
    reference = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    assert detector.threshold_ == pytest.approx(reference.threshold_)
    images = np.stack([r.source for r in test_records])
    np.testing.assert_allclose(detector.predict(images, progress=False).scores,
                               reference.predict(test_records, progress=False).scores, rtol=1e-5)
    grey = detector.predict(images.mean(axis=-1).astype(np.uint8), progress=False)  # (N, H, W)
    assert grey.scores.shape == (len(test_records),)


def test_calibrate_refuses_unlabelled_images(fitted, image_folder):
    with pytest.raises(DataError, match="calibrate needs labelled images") as info:
        fitted.calibrate(str(image_folder / "test"), progress=False)
    assert "\n" not in str(info.value)


def test_calibrate_takes_a_folder_of_validation_normals(image_folder, test_records):
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(str(image_folder / "train"), progress=False)
    info = detector.calibrate(test_records, method="area", normal_records=str(image_folder / "test" / "good"),
                              progress=False)
    assert detector.decision_.source == "area" and detector.decision_.evidence["n_normal_validation"] == 3
    assert info["min_area"] >= 1


def test_input_roots_name_what_is_read(tree):
    from anomalens.data.inputs import input_roots

    pattern = str(tree / "*" / "000.png")
    assert input_roots([tree / "good", pattern, str(tree / "good" / "000.png")]) == [
        tree / "good", tree, tree / "good" / "000.png"]
    assert input_roots(str(tree / "**" / "*.png")) == [tree]
