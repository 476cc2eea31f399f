"""The ``Predictor`` protocol (``anomalens.inference``): one adapter per runtime (torch, ONNX Runtime, OpenVINO),
and ``predict`` — the NaN / inf check, the decision, the result rows — written once on top of them, so that the
local ``predict``, the service and Ray take any predictor and never ask which runtime it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.catalog import create_detector, load_detector
from anomalens.decision import DecisionRule
from anomalens.errors import NotFittedError, NumericalError
from anomalens.inference import Predictor, as_predictor, load_predictor, predict
from anomalens.inference.rows import RESULT_FIELDS, predict_inputs, refuse_non_finite, result_rows
from tests.conftest import TINY_PARAMS, make_records


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PaDiM run (64 px, batch_size 8), real PNG files of another size, and (when installed) its exports."""
    root = tmp_path_factory.mktemp("predictor")
    create_detector("padim", **TINY_PARAMS["padim"]).fit(make_records(10, 0, seed=1), progress=False).save(root / "run")
    images = root / "images"
    images.mkdir()
    for i, record in enumerate(make_records(5, 5, seed=5, size=96)):
        Image.fromarray(record.source[:, :80]).save(images / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def exports(saved):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from anomalens.export import export_run

    export_run(saved / "run", saved / "onnx")
    export_run(saved / "run", saved / "openvino", format="openvino")
    return {"onnxruntime": saved / "onnx", "openvino": saved / "openvino"}


def _files(saved: Path) -> list[str]:
    return sorted(str(p) for p in (saved / "images").glob("*.png"))


def _predictors(saved: Path, exports: dict[str, Path]) -> dict[str, Predictor]:
    return {"torch": load_predictor(saved / "run"), "onnxruntime": load_predictor(exports["onnxruntime"]),
            "openvino": load_predictor(exports["openvino"]), "openvino (onnx)": load_predictor(exports["onnxruntime"],
                                                                                             runtime="openvino")}


class NumpyPredictor:
    """A runtime that is nothing but numpy: the score is the mean of the image, the map its first channel.
    What a new runtime has to write to be predicted with, served and written like the others."""

    name = "numpy-mean"
    runtime = "numpy"
    device = "cpu"
    input_size = (8, 8)
    image_channels = 3
    localizes = True
    params = {"batch_size": 4, "decode": "exact"}
    batch_size = 4
    packages = ("numpy",)
    details = {"toy": {"what": "mean of the pixels"}}

    def __init__(self, poison: float | None = None) -> None:
        self.decision_ = DecisionRule(source="quantile", image_threshold=0.5, pixel_threshold=0.5,
                                      description="0.5 on the mean", map_reference=0.0, score_reference=0.25)
        self.poison = poison
        self.calls: list[int] = []

    def load(self, source):
        pixels = np.asarray(source, np.float32)
        pixels = pixels / 255.0 if pixels.max() > 1 else pixels
        pixels = np.broadcast_to(pixels[..., None] if pixels.ndim == 2 else pixels, (*pixels.shape[:2], 3))
        return np.ascontiguousarray(np.resize(pixels, (8, 8, 3)).transpose(2, 0, 1), np.float32)

    def run(self, images):
        images = np.asarray(images, np.float32)
        self.calls.append(len(images))
        scores = images.mean(axis=(1, 2, 3)).astype(np.float32)
        maps = images[:, 0].copy()
        if self.poison is not None:
            scores[1:2] = self.poison
        return scores, maps


# -------------------------------------------------------------------------------------- the protocol
@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_every_runtime_is_a_predictor_stating_what_it_takes(saved, exports):
    predictors = _predictors(saved, exports)
    rules = set()
    for label, predictor in predictors.items():
        assert isinstance(predictor, Predictor), label
        assert predictor.runtime == label.split(" ")[0]
        assert (predictor.name, predictor.input_size, predictor.image_channels, predictor.localizes,
                predictor.batch_size) == ("padim", (64, 64), 3, True, 8)
        rules.add(json.dumps(predictor.decision_.to_dict(), sort_keys=True))
    assert len(rules) == 1  # the export carries the run's decision rule
    assert predictors["torch"].packages == ("torch", "timm") and predictors["torch"].details == {}
    assert predictors["openvino"].packages == ("openvino",)
    assert predictors["openvino (onnx)"].details == {"export": {"format": "onnx", "precision": "fp32"}}
    assert isinstance(NumpyPredictor(), Predictor)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_the_runtimes_agree_on_real_images_through_the_one_predict(saved, exports):
    """Parity: the export's graph equals the torch model on real files, each decoded by its own runtime."""
    files = _files(saved)
    predictors = _predictors(saved, exports)
    reference = predict_inputs(predictors["torch"], files)
    torch_inputs = np.stack([predictors["torch"].load(f) for f in files])
    for label, predictor in predictors.items():
        inputs = np.stack([predictor.load(f) for f in files])
        assert np.abs(inputs - torch_inputs).max() <= 2e-6, label  # the numpy twin of the torch resize
        result = predict(predictor, inputs)
        np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-4, err_msg=label)
        np.testing.assert_allclose(result.maps, reference.maps, rtol=1e-3, atol=1e-3 * np.abs(reference.maps).max())
        np.testing.assert_array_equal(result.labels, reference.labels)
        # decoding and scoring in one call gives what decoding first gives
        from_files = predict_inputs(predictor, files)
        np.testing.assert_array_equal(from_files.scores, result.scores)
        np.testing.assert_array_equal(from_files.maps, result.maps)


def test_a_torch_predictor_gives_what_the_detector_gives(saved):
    detector = load_detector(saved / "run")
    predictor = as_predictor(detector)
    assert predictor.detector is detector and as_predictor(predictor) is predictor
    files = _files(saved)
    expected = detector.predict(files, progress=False)
    result = predict(predictor, np.stack([predictor.load(f) for f in files]))
    np.testing.assert_array_equal(result.scores, expected.scores)
    np.testing.assert_array_equal(result.masks, expected.masks)
    np.testing.assert_array_equal(result.normalized_scores, expected.normalized_scores)


def test_what_is_not_a_fitted_model_is_refused():
    with pytest.raises(TypeError, match="cannot predict with a dict"):
        as_predictor({"scores": [1.0]})
    with pytest.raises(NotFittedError, match="padim: not fitted"):
        as_predictor(create_detector("padim", **TINY_PARAMS["padim"]))


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_an_export_runs_in_graph_calls_of_its_batch_size(saved, exports):
    """``run`` cuts any batch at ``batch_size`` (as the torch detector does); ``run_graph`` is one call."""
    predictor = load_predictor(exports["onnxruntime"])
    calls = []
    real = predictor.session

    def counting(images):
        calls.append(len(images))
        return real(images)

    predictor.session = counting
    images = np.stack([predictor.load(f) for f in _files(saved)])
    scores, maps = predictor.run(images)
    assert calls == [8, 2] and scores.shape == (10,) and maps.shape == (10, 64, 64)
    calls.clear()
    assert predictor.run_graph(images)[0].shape == (10,) and calls == [10]


# --------------------------------------------------------------------------- one check for NaN / inf
def test_nan_or_inf_is_refused_in_one_line_naming_the_first_image():
    for poison in (float("nan"), float("inf")):
        with pytest.raises(NumericalError) as caught:
            predict(NumpyPredictor(poison), np.zeros((3, 3, 8, 8), np.float32), names=["a.png", "b.png", "c.png"])
        assert str(caught.value).startswith("numpy-mean (numpy): NaN or infinite anomaly scores or maps for 1 of 3 "
                                            "images (first: b.png)")
        assert "\n" not in str(caught.value)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 1] = np.inf
    with pytest.raises(NumericalError, match=r"x: NaN or infinite anomaly scores or maps for 1 of 2 images \(first: image 0\)"):
        refuse_non_finite("x", np.zeros(2, np.float32), maps)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_an_export_giving_nan_is_refused_by_its_predict_the_cli_and_the_service(saved, exports, tmp_path, capsys,
                                                                                 monkeypatch):
    from anomalens.cli import main
    from anomalens.inference.runtimes import OnnxRuntimeSession

    real = OnnxRuntimeSession.__call__

    def broken(self, images):
        scores, maps = real(self, images)
        scores = scores.copy()
        scores[-1] = np.nan
        return [scores, maps]

    monkeypatch.setattr(OnnxRuntimeSession, "__call__", broken)
    files = _files(saved)
    with pytest.raises(NumericalError, match=r"padim \(onnxruntime\): NaN or infinite anomaly scores or maps for 2 of 10 "
                                             r"images \(first: .*7\.png\)"):
        load_predictor(exports["onnxruntime"]).predict(files)  # the export's own predict: the shared one
    assert main(["predict", str(exports["onnxruntime"]), *files, "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "padim (onnxruntime): NaN or infinite" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from anomalens.serve import create_app

    with TestClient(create_app(load_predictor(exports["onnxruntime"]), max_wait_ms=2),
                    base_url="http://127.0.0.1:8000") as client:
        answer = client.post("/predict", content=Path(files[0]).read_bytes())
    assert answer.status_code == 500 and "NaN or infinite" in answer.json()["detail"]


def test_a_torch_model_gone_numerically_wrong_is_refused(saved):
    import torch

    detector = load_detector(saved / "run")
    with torch.inference_mode():
        detector.mean_[0, 0] = float("nan")
    predictor = as_predictor(detector)
    with pytest.raises(NumericalError, match="NaN or infinite anomaly scores or maps"):
        predict(predictor, np.stack([predictor.load(f) for f in _files(saved)]))


# ------------------------------------------------------------------ what is built on the protocol
def test_result_rows_are_the_columns_every_writer_shares():
    from anomalens.outputs.predictions import PREDICTION_FIELDS

    predictor = NumpyPredictor()
    result = predict(predictor, np.full((2, 3, 8, 8), 0.75, np.float32))
    rows = result_rows(["a", "b"], result.scores, result.normalized_scores, result.labels,
                       predictor.decision_.image_threshold)
    assert [list(row) for row in rows] == [list(RESULT_FIELDS)] * 2
    assert rows[0] == {"image": "a", "score": 0.75, "normalized_score": pytest.approx(0.95), "anomalous": True,
                       "threshold": 0.5}
    assert PREDICTION_FIELDS[: len(RESULT_FIELDS)] == list(RESULT_FIELDS)


def test_the_service_takes_any_predictor(saved):
    """A new runtime is one class: the service scores, decides and describes it without knowing it."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import io

    from fastapi.testclient import TestClient

    from anomalens.serve import create_app

    predictor = NumpyPredictor()
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 204, np.uint8)).save(buffer, format="PNG")
    with TestClient(create_app(predictor, max_wait_ms=2), base_url="http://127.0.0.1:8000") as client:
        answer = client.post("/predict?name=bright.png", content=buffer.getvalue()).json()
        model = client.get("/model").json()
    assert answer["image"] == "bright.png" and answer["score"] == pytest.approx(0.8) and answer["anomalous"]
    assert list(answer)[:6] == ["image", "score", "normalized_score", "anomalous", "label", "threshold"]
    assert model["runtime"] == "numpy" and model["device"] == "cpu" and model["toy"] == {"what": "mean of the pixels"}
    assert "numpy" in model["versions"] and "torch" not in model["versions"]
    assert predictor.calls == [1]


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_the_export_side_imports_no_torch_and_the_old_names_stay(exports, saved):
    import anomalens.exported as exported
    from anomalens.inference import export_predictor, loading, manifest, parity, preprocess

    assert exported.load_export is export_predictor.load_export and exported.ExportedDetector is export_predictor.ExportedDetector
    assert exported.load_model is loading.load_model and exported.is_export is manifest.is_export
    assert exported.read_manifest is manifest.read_manifest and exported.load_input is preprocess.load_input
    assert exported.compare_outputs is parity.compare_outputs
    script = (
        "import sys, json\n"
        "from anomalens.exported import load_export\n"
        "from anomalens.inference import load_predictor, predict_inputs\n"
        f"files = {_files(saved)!r}\n"
        f"a = load_export({str(exports['openvino'])!r}).predict(files)\n"
        f"b = predict_inputs(load_predictor({str(exports['onnxruntime'])!r}), files)\n"
        "print(json.dumps({'torch': sorted(m for m in sys.modules if m.split('.')[0] == 'torch'), 'n': [len(a), len(b)]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"torch": [], "n": [10, 10]}


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_openvino_exports_opened_and_dropped_leave_signals_working(exports):
    """Each OpenVINO ``Core`` installs an alternate signal stack and puts the previous one back when destroyed:
    two of them dropped in the order they were created left a freed stack installed, and the next signal handled in Python (here a
    subprocess's SIGCHLD; in the CLI, SIGTERM) killed the process with SIGSEGV. Every export shares one Core."""
    script = (
        "import gc, signal, subprocess, sys\n"
        "from anomalens.exported import load_export\n"
        f"first = load_export({str(exports['openvino'])!r})\n"
        f"second = load_export({str(exports['onnxruntime'])!r}, runtime='openvino')\n"
        "del first  # dropped in the order they were opened (not the reverse)\n"
        "del second\n"
        "gc.collect()\n"
        "signal.signal(signal.SIGCHLD, lambda *args: None)\n"
        "subprocess.run([sys.executable, '-c', 'pass'], check=True, timeout=60)\n"
        "print('signals work')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "signals work", (done.returncode, done.stderr[-2000:])
