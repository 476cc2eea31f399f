"""Export to ONNX / OpenVINO: parity with the torch model on real image files, the torch-free loader, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalens.catalog import create_detector
from anomalens.cli import main
from anomalens.data import TensorImageDataset
from anomalens.errors import AnomalensError, ConfigError, DataError, ModelFileError
from anomalens.export import DEFAULT_TOLERANCE, export_run, verify_export
from anomalens.exported import load_export, load_input
from tests.conftest import TINY_PARAMS, make_records

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

# Every detector whose inference is a fixed graph, with settings smaller still than TINY_PARAMS where a
# model trains (parity does not need a good model; one epoch keeps the suite short).
EXPORTABLE = ["padim", "patchcore", "mahalanobis", "stpm", "mlp_ae", "mvtec_cae", "baseline_cae", "inception_cae",
              "resnet_cae", "skip_cae", "ganomaly", "efficientgan", "ensemble"]
REFUSED = {"anogan": "latent search", "spade": "retrieves its K nearest training images"}
SHORT = {"epochs": 1}


def _params(name: str) -> dict:
    params = dict(TINY_PARAMS[name])
    if "epochs" in params:
        params.update(SHORT)
    return params


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """Real PNG files, larger than the 64-px models and not square: the resize is part of what is checked."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, record in enumerate(make_records(3, 3, seed=5, size=96)):
        path = folder / f"{i}.png"
        Image.fromarray(record.source[:, :80]).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Fit and save a detector once per module (by name, on first use)."""
    root, done = tmp_path_factory.mktemp("runs"), {}

    def get(name: str, **extra) -> Path:
        key = (name, tuple(sorted(extra.items())))
        if key not in done:
            detector = create_detector(name, **{**_params(name), **extra})
            detector.fit(make_records(10, 0, seed=1), progress=False)
            done[key] = detector.save(root / f"{name}-{len(done)}")
        return done[key]

    return get


@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_export_agrees_with_torch_on_both_runtimes(name, runs, image_files, tmp_path):
    out = export_run(runs(name), tmp_path / "export")
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["detector"] == name and manifest["onnx_opset"] == 17 and manifest["format"] == "onnx"
    assert [o["name"] for o in manifest["outputs"]] == (["scores", "maps"] if name != "mahalanobis" else ["scores"])
    for runtime in ("onnxruntime", "openvino"):
        report = verify_export(out, image_files, runtime=runtime)
        assert report["ok"], report
        assert report["scores_rel"] <= DEFAULT_TOLERANCE and report["maps_rel"] <= DEFAULT_TOLERANCE


@pytest.mark.parametrize("channels", [1, 3])
def test_the_autoencoders_ssim_residual_exports_and_agrees(channels, runs, image_files, tmp_path):
    """The CAEs' default residual map (1 − SSIM; the contract's tiny settings use L2): its Gaussian window
    and mirrored borders must keep static shapes in the graph (the export once failed with a traceback)."""
    out = export_run(runs("mvtec_cae", channels=channels, residual="ssim", epochs=1), tmp_path / "export")
    for runtime in ("onnxruntime", "openvino"):
        report = verify_export(out, image_files, runtime=runtime)
        assert report["ok"], report


@pytest.mark.parametrize("name", ["padim", "mahalanobis"])
def test_openvino_ir_export(name, runs, image_files, tmp_path, capsys):
    out = tmp_path / "ir"
    assert main(["export", str(runs(name)), "--format", "openvino", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["export.json", "model.bin", "model.xml"]
    assert main(["verify-export", str(out), *map(str, image_files)]) == 0
    assert "OK: within the tolerance" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="runtime openvino only"):
        load_export(out, runtime="onnxruntime")


def test_the_loader_returns_what_predict_returns_without_importing_torch(runs, image_files, tmp_path):
    run = runs("padim")
    out = export_run(run, tmp_path / "export")
    from anomalens.catalog import load_detector
    from anomalens.data import ImageRecord

    expected = load_detector(run).predict([ImageRecord(p, 0) for p in image_files], progress=False)
    model = load_export(out)
    chunks = list(model.predict_in_chunks(image_files, chunk_size=4))
    assert [offset for offset, _ in chunks] == [0, 4]
    result = model.predict(image_files)
    assert type(result) is type(expected)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.masks, expected.masks)
    assert model.decision_ == load_detector(run).decision_ and model.input_size == (64, 64) and model.localizes
    script = (
        "import sys, json; from anomalens.exported import load_export; "
        f"r = load_export({str(out)!r}).predict({[str(p) for p in image_files]!r}); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'scores': r.scores.tolist()}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False
    np.testing.assert_allclose(answer["scores"], expected.scores, rtol=DEFAULT_TOLERANCE)


@pytest.mark.parametrize("size, target, channels", [((96, 80), (64, 64), 3), ((50, 70), (64, 48), 3),
                                                    ((64, 64), (64, 64), 3), ((300, 257), (32, 40), 1)])
def test_numpy_resize_is_the_torch_resize(size, target, channels):
    rng = np.random.default_rng(0)
    image = (rng.random((*size, 3)) * 255).astype(np.uint8)
    expected = TensorImageDataset([image_record(image)], target, channels)[0]["image"].numpy()
    got = load_input(image, target, channels)
    assert got.shape == expected.shape == (channels, *target) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 2e-6


def image_record(array: np.ndarray):
    from anomalens.data import ImageRecord

    return ImageRecord(array, 0)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_detectors_without_a_static_graph_are_refused_in_one_line(name, runs, tmp_path, capsys):
    run = runs(name)
    capsys.readouterr()  # the fit's own warnings
    assert main(["export", str(run), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "\n" not in err and REFUSED[name] in err, err
    assert list(tmp_path.iterdir()) == []


def test_patchcore_with_the_hnsw_search_is_refused(runs, tmp_path):
    pytest.importorskip("faiss")
    with pytest.raises(ConfigError, match="search='hnsw' cannot be exported"):
        export_run(runs("patchcore", search="hnsw"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_clear_error_and_nothing_is_written(runs, image_files, tmp_path, monkeypatch):
    run = runs("padim")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_run(run, tmp_path / "out", format="tflite")
    not_a_run = tmp_path / "tampered"  # empty for now: a folder without a run
    not_a_run.mkdir()
    with pytest.raises(ModelFileError, match="detector.json: not found"):
        export_run(not_a_run, tmp_path / "out")
    tampered = tmp_path / "tampered"
    for file in run.iterdir():
        (tampered / file.name).write_bytes(file.read_bytes())
    weights = tampered / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        export_run(tampered, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # A missing optional runtime names the extra that installs it.
    import importlib

    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name == "openvino" else real_import(name, *a))
    with pytest.raises(ConfigError, match=r"'openvino'.*pip install 'anomalens\[export\]'"):
        export_run(run, tmp_path / "out", format="openvino")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tampered"]

    out = export_run(run, tmp_path / "out")
    with pytest.raises(AnomalensError, match="already exists"):
        export_run(run, out)
    model = load_export(out)
    with pytest.raises(DataError, match=r"expects images of shape \(N, 3, 64, 64\)"):
        model.run(np.zeros((1, 3, 32, 32), np.float32))
    # An export changed after it was written, or written by another version, is refused.
    manifest = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**manifest, "anomalens_version": "0.0.1"}))
    with pytest.raises(ModelFileError, match="exported by anomalens 0.0.1"):
        load_export(out)
    (out / "export.json").write_text(json.dumps(manifest))
    with open(out / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        load_export(out)


def test_verify_export_fails_on_disagreement(runs, image_files, tmp_path, capsys):
    run = runs("padim")
    out = export_run(run, tmp_path / "export")
    manifest = json.loads((out / "export.json").read_text())
    # A different decision rule, in the manifest and in its copy inside the model (hashes kept in step; the
    # manifest alone edited is refused, tests/test_integrity_exports.py): the same scores, different labels —
    # every flip is listed.
    import hashlib

    import onnx

    manifest["decision"]["image_threshold"] = 1e30
    model = onnx.load(str(out / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == "anomalens":
            entry.value = json.dumps({k: v for k, v in manifest.items() if k != "files"})
    onnx.save_model(model, str(out / "model.onnx"))
    manifest["files"]["model.onnx"] = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    (out / "export.json").write_text(json.dumps(manifest))
    assert main(["verify-export", str(out), *map(str, image_files), "--run", str(run)]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("label flips:") >= 1 and "label(s) flipped" in captured.err


def test_the_inference_module_is_what_predict_runs():
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(make_records(10, 0, seed=1), progress=False)
    records = make_records(2, 2, seed=3)
    images = torch.stack([TensorImageDataset(records, 64)[i]["image"] for i in range(4)])
    with torch.inference_mode():
        scores, maps = detector.inference_module().eval()(images)
    result = detector.predict(records, progress=False)
    np.testing.assert_array_equal(result.scores, scores.numpy())
    np.testing.assert_array_equal(result.maps, maps.numpy())


def test_exact_nearest_graph_search_equals_the_chunked_search():
    from anomalens.models.components.knn import ExactNearest, nearest_neighbors

    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    for chunk in (7, 50, 64):
        dist, index = ExactNearest(bank, bank_chunk=chunk)(queries)
        ref_dist, ref_index = nearest_neighbors(queries, bank, 1, bank_chunk=chunk)
        torch.testing.assert_close(dist, ref_dist[:, 0])
        assert torch.equal(index, ref_index[:, 0])
    search = ExactNearest(bank, bank_chunk=7)
    assert torch.equal(search.k_nearest(queries, 4), nearest_neighbors(queries, bank, 4)[1])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_runs_an_export_with_the_same_results_as_the_run(runtime, runs, image_files, tmp_path, capsys):
    """`anomalens predict EXPORT IMAGES --runtime R` writes what `predict RUN IMAGES` writes."""
    import csv

    from anomalens.cli import main

    run = runs("padim")
    export = tmp_path / "export"
    assert main(["export", str(run), "--format", "onnx" if runtime == "onnxruntime" else "openvino", "-o", str(export)]) == 0
    images = [str(p) for p in image_files]
    assert main(["predict", str(run), *images, "-o", str(tmp_path / "torch"), "--heatmaps", "all", "-q"]) == 0
    assert main(["predict", str(export), *images, "-o", str(tmp_path / "export_out"), "--runtime", runtime,
                 "--heatmaps", "all", "-q"]) == 0

    def rows(folder):
        with open(folder / "predictions.csv") as fh:
            return list(csv.DictReader(fh))

    torch_rows, export_rows = rows(tmp_path / "torch"), rows(tmp_path / "export_out")
    assert [r["image"] for r in torch_rows] == [r["image"] for r in export_rows]
    np.testing.assert_allclose([float(r["score"]) for r in export_rows], [float(r["score"]) for r in torch_rows], rtol=1e-4)
    assert [r["anomalous"] for r in export_rows] == [r["anomalous"] for r in torch_rows]
    assert all(r["heatmap"] for r in export_rows)


def test_predict_with_a_runtime_that_does_not_fit_the_folder_is_one_line(runs, image_files, tmp_path, capsys):
    from anomalens.cli import main

    run = runs("padim")
    assert main(["predict", str(run), str(image_files[0]), "-o", str(tmp_path / "out"), "--runtime", "onnxruntime", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "is not an export folder" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
