"""Half-precision and INT8 exports: the precision recorded and verified with the export, calibration on the run's
training normals, predict and verify-export on such exports, one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from anomalens.cli import main
from anomalens.errors import ConfigError, ModelFileError
from anomalens.export import export_run, verify_export
from anomalens.exported import load_export, read_manifest
from anomalens.quantization import INT8_REFUSALS
from anomalens.workflow.fit import fit_run
from tests.conftest import TINY_PARAMS

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    from anomalens.data import make_synthetic_category

    return make_synthetic_category(tmp_path_factory.mktemp("data"), source="brick", n_train=12, n_test_good=4,
                                   n_test_defect=4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def run(category, tmp_path_factory) -> Path:
    """A PaDiM run fitted by ``fit_run``: its run.json names the training data, which INT8 calibrates on."""
    folder = tmp_path_factory.mktemp("runs") / "padim"
    fit_run("padim", category, folder, params=TINY_PARAMS["padim"], progress=False)
    return folder


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory):
    root, done = tmp_path_factory.mktemp("exports"), {}

    def get(format: str, precision: str) -> Path:
        if (format, precision) not in done:
            done[format, precision] = export_run(run, root / f"{format}-{precision}", format=format,
                                                 precision=precision, progress=False)
        return done[format, precision]

    return get


def test_fp32_records_its_precision_and_no_calibration(exports):
    manifest = read_manifest(exports("openvino", "fp32"))
    assert manifest["precision"] == "fp32" and "calibration" not in manifest


def test_openvino_fp16_halves_the_weights_and_verifies(exports, category):
    fp32, fp16 = exports("openvino", "fp32"), exports("openvino", "fp16")
    assert read_manifest(fp16)["precision"] == "fp16"
    size32, size16 = (fp32 / "model.bin").stat().st_size, (fp16 / "model.bin").stat().st_size
    assert 0.4 * size32 < size16 < 0.6 * size32
    report = verify_export(fp16, category / "test", progress=False)
    assert report["precision"] == "fp16" and report["auroc_change"] is not None  # good/ and defect sub-folders
    assert report["ok"], report


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_int8_is_calibrated_on_the_training_normals(exports, run, category, format):
    folder = exports(format, "int8")
    manifest = read_manifest(folder)
    recorded = json.loads((run / "run.json").read_text())["provenance"]["training_images_sha256"]
    assert manifest["precision"] == "int8"
    assert manifest["calibration"]["images"] == 12 and manifest["calibration"]["training_images_sha256"] == recorded
    model = load_export(folder)
    assert model.details["export"]["precision"] == "int8"
    result = model.predict(sorted((category / "test").rglob("*.png")))
    assert len(result.scores) == 8
    report = verify_export(folder, category / "test", progress=False)
    for key in ("scores_abs", "scores_mean_abs", "flip_fraction", "auroc_torch", "auroc_export", "auroc_change"):
        assert key in report
    assert report["tolerance"] is None  # raw score differences do not decide for int8
    assert report["ok"] == (report["flip_fraction"] <= 0.01 and abs(report["auroc_change"]) <= 0.005)


def test_openvino_int8_quantises_inside_the_networks_only(exports):
    """NNCF's quantisers feed the backbone's convolutions and residual additions; the Mahalanobis distance, the
    upsampling and the blur (the inference module's own operations) read float32."""
    import openvino as ov

    from anomalens.quantization import is_layer

    model = ov.Core().read_model(str(exports("openvino", "int8") / "model.xml"))
    fed = [(target.get_node().get_friendly_name(), target.get_node().get_type_name())
           for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
           for target in op.output(0).get_target_inputs()]
    kinds = {kind for _, kind in fed}
    assert {"Convolution", "GroupConvolution"} <= kinds and "MatMul" not in kinds
    assert [name for name, _ in fed if not is_layer(name)] == []


def test_onnx_fp16_is_refused_in_one_line(run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--precision fp16 is refused"):
        export_run(run, tmp_path / "x", format="onnx", precision="fp16", progress=False)
    assert main(["export", str(run), "--precision", "fp16", "-o", str(tmp_path / "y"), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert "refused" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_int8_without_recorded_training_data_asks_for_calibration_images(run, category, tmp_path):
    saved = tmp_path / "saved"
    shutil.copytree(run, saved)
    (saved / "run.json").unlink()  # as a run saved from Python: no record of its data
    with pytest.raises(ConfigError, match="--calibration"):
        export_run(saved, tmp_path / "x", format="onnx", precision="int8", progress=False)
    out = export_run(saved, tmp_path / "y", format="onnx", precision="int8", progress=False,
                     calibration=[category / "train"])
    assert read_manifest(out)["calibration"] == {"source": "given", "images_given": 12, "images": 12}


def test_calibration_images_for_another_precision_are_refused(run, category, tmp_path):
    with pytest.raises(ConfigError, match="int8 only"):
        export_run(run, tmp_path / "x", format="openvino", precision="fp16", calibration=[category / "train"])


@pytest.mark.parametrize("edit", ["remove", "fp32", "bogus", "drop-calibration"])
def test_a_missing_or_edited_precision_is_refused(exports, tmp_path, edit):
    folder = tmp_path / "copy"
    shutil.copytree(exports("onnx", "int8"), folder)
    manifest = json.loads((folder / "export.json").read_text())
    if edit == "remove":
        del manifest["precision"]
    elif edit == "drop-calibration":
        del manifest["calibration"]
    else:
        manifest["precision"] = edit
    (folder / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError) as refused:
        load_export(folder)
    assert "\n" not in str(refused.value)


def test_an_fp16_manifest_on_an_onnx_export_is_refused(exports, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exports("onnx", "int8"), folder)
    manifest = json.loads((folder / "export.json").read_text())
    manifest["precision"] = "fp16"
    manifest.pop("calibration")
    (folder / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="precision"):
        read_manifest(folder)


def test_cli_export_int8_then_predict_and_verify(run, category, tmp_path, capsys):
    out = tmp_path / "ov8"
    assert main(["export", str(run), "--format", "openvino", "--precision", "int8", "-o", str(out), "-q"]) == 0
    assert "openvino int8" in capsys.readouterr().out
    preds = tmp_path / "preds"
    assert main(["predict", str(out), str(category / "test"), "-o", str(preds), "--runtime", "openvino",
                 "--heatmaps", "none", "-q"]) == 0
    capsys.readouterr()
    code = main(["verify-export", str(out), str(category / "test"), "-q"])
    text = capsys.readouterr().out
    assert "(int8)" in text and "labels:" in text and "AUROC: torch" in text
    assert (code == 0) == ("OK: within the tolerance of int8" in text)  # a miss is an error exit, not a pass


def test_int8_refusals_are_one_line_naming_the_measured_reason():
    from anomalens.quantization import precision_refusal

    for name, reason in INT8_REFUSALS.items():
        refusal = precision_refusal(name, "openvino", "int8")
        assert refusal and "\n" not in refusal and reason in refusal
    assert precision_refusal("not-listed", "openvino", "int8") is None
    assert "refused" in precision_refusal("padim", "onnx", "fp16")


def test_fp16_is_checked_on_the_runs_training_normals_and_on_random_images_once_they_moved(
        run, category, tmp_path, monkeypatch):
    import anomalens.export as export_module
    from anomalens.quantization import calibration_images

    shapes = []

    def recording(*args, **kwargs):
        batch, described = calibration_images(*args, **kwargs)
        shapes.append(batch.shape)
        return batch, described

    monkeypatch.setattr(export_module, "calibration_images", recording)
    export_run(run, tmp_path / "fp16", format="openvino", precision="fp16", progress=False)
    assert shapes == [(12, 3, 64, 64)]  # the 12 training images, as predict preprocesses them

    moved = tmp_path / "moved"
    shutil.copytree(category, moved)
    shutil.rmtree(category / "train")  # the run's training images are gone: random images check the graph
    try:
        export_run(run, tmp_path / "fp16-again", format="openvino", precision="fp16", progress=False)
    finally:
        shutil.copytree(moved / "train", category / "train")
    assert read_manifest(tmp_path / "fp16-again")["precision"] == "fp16"
