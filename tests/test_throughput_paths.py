"""Issue 19: parallel decoding gives the same numbers, each image is decoded once, predict streams its
results and resumes, bad images and dead workers end in one line, the API takes paths, arrays, PIL
images and tensors, and large heatmaps stay small in memory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anomalens.data.model_input as model_input
import anomalens.data.torch_dataset as torch_dataset
from anomalens.catalog import load_detector
from anomalens.cli import main
from anomalens.data import ImageRecord, TensorImageDataset, iterate_batches, load_image, make_synthetic_category
from anomalens.data.torch_dataset import WorkerError, decode_for_model
from anomalens.workflow import MARKER_FILE, predict_images
from tests.conftest import FIT



@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return make_synthetic_category(root, source="brick", n_train=12, n_test_good=6, n_test_defect=6, image_size=64, seed=0)


@pytest.fixture(scope="module")
def run(category, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "brick"
    assert main(["fit", "padim", str(category), "-o", str(run), *FIT]) == 0
    assert main(["calibrate", str(run), str(category), "-q"]) == 0  # F1 threshold: some images flagged, not all
    return run


@pytest.fixture
def images(category, tmp_path) -> Path:
    """12 test images (good and defective, some RGB, some grey) in one folder."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for sub in sorted((category / "test").iterdir()):
        for path in sorted(sub.iterdir()):
            shutil.copy(path, folder / f"{sub.name}_{path.name}")
    Image.fromarray(np.asarray(Image.open(next(folder.iterdir())).convert("RGB"))).save(folder / "zz_rgb.png")
    return folder


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "predictions.jsonl")]


def _reference(run: Path, folder: Path, chunk_size: int = 64) -> dict[str, tuple[float, bool]]:
    """What the code before issue 19 gave (``predict_in_chunks`` in process, as its ``predict`` did). The
    chunk size matters to the last bit: the model's float sums depend on how images are batched."""
    detector = load_detector(run, device="cpu")
    paths = sorted(p for p in folder.iterdir())
    found = {}
    for start, result in detector.predict_in_chunks([ImageRecord(p, -1) for p in paths], chunk_size):
        for p, s, l in zip(paths[start:], result.scores, result.labels):
            found[str(p)] = (float(s), bool(l))
    return found


# ---------------------------------------------------------------------------- decode once, in parallel
def test_the_one_decode_equals_load_image_for_every_mode(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    files = {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "grey16.png": Image.fromarray(rng.integers(0, 65535, (37, 45), dtype=np.uint16)),
        "photo.jpg": Image.fromarray(rgb),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    for name in files:
        for channels in (1, 3):
            for size in ((37, 45), (16, 20), (50, 64)):
                image, picture, original = decode_for_model(tmp_path / name, size, channels, display=True)
                expected = TensorImageDataset([ImageRecord(tmp_path / name, 0)], size, channels)[0]["image"]
                assert torch.equal(image, expected), (name, channels, size)
                if size == (37, 45):
                    assert torch.equal(image, torch.from_numpy(load_image(tmp_path / name, channels)).permute(2, 0, 1))
                assert original == (37, 45) and picture.dtype == np.uint8 and picture.shape[:2] == (37, 45)


def test_workers_do_not_change_batches(category):
    records = [ImageRecord(p, 0) for p in sorted((category / "train" / "good").iterdir())]
    in_process = list(iterate_batches(records, 48, batch_size=4, num_workers=0))
    parallel = list(iterate_batches(records, 48, batch_size=4, num_workers=2))
    assert len(in_process) == len(parallel) == 3
    for a, b in zip(in_process, parallel):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])


def test_automatic_workers_follow_the_cores(monkeypatch):
    monkeypatch.delenv("ANOMALENS_WORKERS", raising=False)
    # CUDA: the model runs on the GPU, every core but one decodes (at most 8)
    assert torch_dataset.automatic_workers(16, cuda=True, torch_threads=16) == 8
    assert torch_dataset.automatic_workers(2, cuda=True, torch_threads=2) == 1
    # CPU: the cores torch's own threads leave free, none when they use every core
    assert torch_dataset.automatic_workers(2, cuda=False, torch_threads=2) == 0
    assert torch_dataset.automatic_workers(16, cuda=False, torch_threads=16) == 0
    assert torch_dataset.automatic_workers(16, cuda=False, torch_threads=4) == 8
    assert torch_dataset.automatic_workers(8, cuda=False, torch_threads=5) == 3
    assert torch_dataset.automatic_workers(1, cuda=True, torch_threads=1) == 0
    monkeypatch.setattr(torch_dataset, "available_cores", lambda: 16)
    monkeypatch.setattr(torch_dataset.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch_dataset.torch, "get_num_threads", lambda: 12)
    assert torch_dataset.default_workers() == 4
    monkeypatch.setattr(torch_dataset.torch.cuda, "is_available", lambda: True)
    assert torch_dataset.default_workers() == 8
    with torch_dataset.decoding_workers(0):
        assert torch_dataset.default_workers() == 0
    monkeypatch.setenv("ANOMALENS_WORKERS", "3")
    assert torch_dataset.default_workers() == 3
    records = [ImageRecord(Path(f"{i}.png"), 0) for i in range(10)]
    assert torch_dataset.resolve_workers(None, records, 4) == 3
    assert torch_dataset.resolve_workers(None, records[:4], 4) == 0  # one batch: not worth a process
    assert torch_dataset.resolve_workers(None, [ImageRecord(np.zeros((4, 4)), 0)] * 10, 4) == 0  # in memory


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_scores_equal_the_api_and_each_image_is_decoded_once(workers, run, images, tmp_path, monkeypatch):
    expected = _reference(run, images, chunk_size=5)
    decoded: list[str] = []
    real = model_input.read_pixels

    def counting(source):
        decoded.append(str(source))
        return real(source)

    monkeypatch.setattr(model_input, "read_pixels", counting)
    out = tmp_path / "out"
    rows = predict_images(run, images, out, device="cpu", heatmaps="all", chunk_size=5, progress=False, workers=workers)
    assert {r["image"]: (r["score"], r["anomalous"]) for r in rows} == expected  # identical, not close
    assert [r["image"] for r in _rows(out)] == sorted(expected)
    if workers == 0:  # worker processes count in their own memory
        assert sorted(decoded) == sorted(expected), "each image is read once, for the model and its heatmap"
    assert len(list((out / "heatmaps").iterdir())) == len(expected) == len(list((out / "masks").iterdir()))
    heatmap, picture = Image.open(out / rows[-1]["heatmap"]), Image.open(rows[-1]["image"])
    # the overlay at the image's own size, plus its colour scale and the caption with the score
    assert heatmap.width > picture.width and heatmap.height > picture.height and heatmap.mode == "RGB"
    assert Image.open(out / rows[-1]["mask"]).size == picture.size


def test_heatmap_modes(run, images, tmp_path, capsys):
    flagged = sum(anomalous for _, anomalous in _reference(run, images).values())
    assert 0 < flagged < len(list(images.iterdir()))
    counts = {}
    for mode in ("anomalous", "all", "none"):
        out = tmp_path / mode
        assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--heatmaps", mode, "--workers", "0"]) == 0
        counts[mode] = len(list((out / "heatmaps").iterdir())) if (out / "heatmaps").exists() else 0
        rows = list(csv.DictReader(open(out / "predictions.csv")))
        assert all(bool(r["heatmap"]) == (mode == "all" or r["anomalous"] == "True") for r in rows if mode != "none")
    assert counts == {"anomalous": flagged, "all": len(list(images.iterdir())), "none": 0}
    out = tmp_path / "alias"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--no-heatmaps"]) == 0
    assert not (out / "heatmaps").exists()
    assert main(["predict", str(run), str(images), "-o", str(out), "-q"]) == 2  # default: no --overwrite


# ------------------------------------------------------------------------------- bad input, resume
def _corrupt(images: Path, position: int) -> Path:
    bad = sorted(images.iterdir())[position]
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    return bad


def _partials(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_bad_image_stops_with_one_line_and_resume_skip_bad_finishes(workers, run, images, tmp_path, capsys):
    bad = _corrupt(images, 7)
    out = tmp_path / "out"
    args = ["predict", str(run), str(images), "-o", str(out), "-q", "--workers", workers]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "\n" not in err and str(bad) in err and "--resume" in err, err
    assert not out.exists()
    (kept,) = _partials(tmp_path)
    assert len(_rows(kept)) == 7, "the results of the images before the bad one are kept"
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # no silent restart over kept results
    assert main([*args, "--resume", "--skip-bad"]) == 0
    rows = _rows(out)
    assert len(rows) == len(list(images.iterdir())) - 1 and len({r["image"] for r in rows}) == len(rows)
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert [e["image"] for e in errors] == [str(bad)] and "cannot read image" in errors[0]["error"]
    assert "1 unreadable images listed" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == len(rows)
    assert "resume" not in json.loads((out / MARKER_FILE).read_text()) and not _partials(tmp_path)


def test_an_interrupted_predict_resumes_without_redoing_images(run, images, tmp_path, monkeypatch):
    import anomalens.outputs.predictions as workflow

    expected = _reference(run, images, chunk_size=3)
    out = tmp_path / "out"
    real_append = workflow.PredictionStage.append
    calls = {"n": 0}

    def crash_after_two_chunks(self, rows, errors):
        real_append(self, rows, errors)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(workflow.PredictionStage, "append", crash_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        predict_images(run, images, out, device="cpu", heatmaps="all", chunk_size=3, progress=False, workers=0)
    monkeypatch.setattr(workflow.PredictionStage, "append", real_append)
    (kept,) = _partials(tmp_path)
    with open(kept / "predictions.jsonl", "a") as fh:
        fh.write('{"image": "torn')  # a line cut short by the crash
    decoded: list[str] = []
    real = model_input.read_pixels
    monkeypatch.setattr(model_input, "read_pixels", lambda s: decoded.append(str(s)) or real(s))
    rows = predict_images(run, images, out, device="cpu", heatmaps="all", chunk_size=3, progress=False, workers=0,
                          resume=True)
    assert len(decoded) == len(expected) - 6, "the 6 images done before the crash are not read again"
    assert {r["image"]: (r["score"], r["anomalous"]) for r in rows} == expected
    assert [r["image"] for r in _rows(out)] == sorted(expected)
    assert len(list((out / "heatmaps").iterdir())) == len(expected)
    with pytest.raises(Exception, match="already exists"):  # done: resuming again changes nothing
        predict_images(run, images, out, device="cpu", resume=True, progress=False)


def test_resume_refuses_another_job_and_overwrite_discards_the_kept_results(run, images, tmp_path, capsys):
    _corrupt(images, 7)
    out = tmp_path / "out"
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--workers", "0"]) == 2
    capsys.readouterr()
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--resume", "--heatmaps", "all"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["predict", str(run), str(images), "-o", str(out), "-q", "--overwrite", "--skip-bad"]) == 0
    assert not _partials(tmp_path) and len(_rows(out)) == len(list(images.iterdir())) - 1


def test_a_dead_worker_is_reported_not_a_hang(run, images, tmp_path, monkeypatch, capsys):
    victim = str(sorted(images.iterdir())[9])
    real = model_input.read_pixels

    def die_on_victim(source):
        if str(source) == victim and torch.utils.data.get_worker_info() is not None:
            os._exit(9)  # as the kernel's out-of-memory killer would end it
        return real(source)

    monkeypatch.setattr(model_input, "read_pixels", die_on_victim)
    out = tmp_path / "out"
    with pytest.raises(WorkerError) as excinfo:  # an AnomalensError: the CLI prints it as one line, exit 2
        predict_images(run, images, out, device="cpu", chunk_size=3, progress=False, workers=2)
    message = str(excinfo.value)
    assert "worker process died" in message and "\n" not in message and "--workers" in message, message
    kept = [row for partial in _partials(tmp_path) for row in _rows(partial)]
    assert len(kept) <= 9, "at most the chunks before the dead worker's are kept (how many: when it is noticed)"


# ---------------------------------------------------------------------------------------- API inputs
def test_predict_accepts_paths_arrays_pil_images_and_tensors(run, images):
    detector = load_detector(run, device="cpu")
    paths = sorted(images.iterdir())[:4]
    expected = detector.predict([ImageRecord(p, -1) for p in paths], progress=False)
    arrays = [np.asarray(Image.open(p)) for p in paths]
    pils = [Image.open(p) for p in paths]
    tensors = [torch.from_numpy(load_image(p)).permute(2, 0, 1) for p in paths]
    for inputs in ([str(p) for p in paths], paths, arrays, pils, tensors, torch.stack(tensors), np.stack([np.atleast_3d(a) for a in arrays])):
        result = detector.predict(inputs, progress=False)
        n = len(result.scores)
        assert np.array_equal(result.scores, expected.scores[:n]) and np.array_equal(result.maps, expected.maps[:n])
    folder = detector.predict(images, progress=False)
    assert len(folder.scores) == len(list(images.iterdir()))
    half = torch.nn.functional.interpolate(torch.stack(tensors), scale_factor=0.5)  # another size: resized
    assert detector.predict(half, progress=False).maps.shape == (4, 64, 64)
    # one image alone is another batch: float sums may differ in the last bits
    assert np.allclose(detector.predict(arrays[0], progress=False).scores, expected.scores[:1], rtol=1e-5)


# --------------------------------------------------------------------------------------- large images
def test_a_large_heatmap_costs_a_few_bytes_per_pixel():
    from anomalens.report import render_heatmap

    height, width = 3000, 4000
    picture = np.full((height, width, 3), 120, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[20:40, 20:40] = 3.0
    tracemalloc.start()
    try:
        overlay, mask = render_heatmap(picture, amap, 0.0, 2.0, pixel_threshold=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert overlay.shape == (height, width, 3) and mask.shape == (height, width) and mask.any()
    assert (overlay[mask] != 120).any()
    assert peak / (height * width) < 16, f"{peak / (height * width):.1f} bytes per pixel"


@pytest.mark.parametrize("name", ["padim", "mlp_ae", "mahalanobis"])
def test_a_decoded_batch_goes_straight_to_any_detector(name, train_records, test_records):
    """A float32 (N, C, H, W) batch at the input size skips decoding and resizing, for every kind of detector
    (trained ones batch through their own ``_image_batches``) and gives the records' results."""
    from anomalens import create_detector
    from anomalens.data import ImageBatch, as_image_inputs
    from conftest import TINY_PARAMS

    detector = create_detector(name, **TINY_PARAMS[name]).fit(train_records, progress=False)
    batch = torch.stack([TensorImageDataset(test_records, detector.input_size, detector.image_channels)[i]["image"]
                         for i in range(len(test_records))])
    assert isinstance(as_image_inputs(batch, detector.input_size, detector.image_channels), ImageBatch)
    expected = detector.predict(test_records, progress=False)
    result = detector.predict(batch, progress=False)
    assert np.array_equal(result.scores, expected.scores) and np.array_equal(result.labels, expected.labels)
    if expected.maps is not None:
        assert np.array_equal(result.maps, expected.maps)
    chunks = list(detector.predict_in_chunks(batch, chunk_size=3))
    assert [offset for offset, _ in chunks] == list(range(0, len(test_records), 3))
