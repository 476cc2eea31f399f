"""Issue 30, class 1: an export is verified as a whole — every file it needs listed and hashed, the manifest
equal to the copy inside the model file, the graph's inputs and outputs those the manifest names — or refused
with one line (``ModelFileError``; the CLI: one line, exit 2). Never loaded into silently different answers,
never a runtime's traceback, never a file opened or written outside the export folder.

Edits here are of two kinds: a naive one (``export.json`` alone), and a deliberate one that keeps the hashes in
step (``_rehash``), which only the checks on the model file itself can see.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from anomalens.catalog import create_detector
from anomalens.cli import main
from anomalens.errors import ModelFileError
from anomalens.export import export_run
from anomalens.inference.export_predictor import load_export
from anomalens.inference.manifest import export_summary, is_plain_file_name, read_manifest
from anomalens.inference.model_files import onnx_model_facts, openvino_ir_summary
from tests.conftest import TINY_PARAMS, make_records

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PaDiM run (64 px) and its exports: ONNX, OpenVINO IR, and ONNX of a 48-px run (another graph)."""
    root = tmp_path_factory.mktemp("integrity")
    train = make_records(10, 0, seed=1)
    create_detector("padim", **TINY_PARAMS["padim"]).fit(train, progress=False).save(root / "run")
    create_detector("padim", **{**TINY_PARAMS["padim"], "image_size": 48}).fit(train, progress=False).save(root / "run48")
    create_detector("mahalanobis", **TINY_PARAMS["mahalanobis"]).fit(train, progress=False).save(root / "maha")
    export_run(root / "run", root / "onnx")
    export_run(root / "run48", root / "onnx48")
    export_run(root / "maha", root / "maha_onnx")
    images = root / "images"
    images.mkdir()
    for i, record in enumerate(make_records(3, 3, seed=5)):
        Image.fromarray(record.source).save(images / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def ir(saved):
    """The run's OpenVINO IR export (made on first use)."""
    return export_run(saved / "run", saved / "openvino", format="openvino")


@pytest.fixture()
def copy(saved, tmp_path, request):
    def get(name: str) -> Path:
        if name == "openvino":
            request.getfixturevalue("ir")
        target = tmp_path / name
        shutil.copytree(saved / name, target)
        return target

    return get


def _images(saved) -> list[str]:
    return sorted(str(p) for p in (saved / "images").iterdir())


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "export.json").write_text(json.dumps(manifest, indent=2))


def _rehash(folder: Path) -> None:
    """Put every listed file's current SHA-256 in export.json (a deliberate, consistent edit)."""
    manifest = _manifest(folder)
    manifest["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in manifest["files"]}
    _write_manifest(folder, manifest)


def _set_onnx_summary(folder: Path, summary: dict, model_path: Path | None = None) -> None:
    """Write ``summary`` as the model's manifest copy (metadata_props 'anomalens'), keeping the rest."""
    model = onnx.load(str(model_path or folder / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == "anomalens":
            entry.value = json.dumps(summary)
    onnx.save_model(model, str(folder / "model.onnx"))


def _without_files(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "files"}


def _one_line_cli(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------- the manifest
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_edited_threshold_is_refused(fmt, copy, saved, tmp_path, capsys):
    """Issue 30: the threshold ×100 in export.json loaded silently and flipped 5 of 8 labels."""
    folder = copy(fmt)
    manifest = _manifest(folder)
    manifest["decision"]["image_threshold"] *= 100
    _write_manifest(folder, manifest)
    with pytest.raises(ModelFileError, match=r"export.json: differs from the copy inside model\.(onnx|xml) .* in decision;"):
        load_export(folder)
    err = _one_line_cli(["predict", str(folder), *_images(saved), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert "differs from the copy" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("params", {"image_size": 64}), ("localizes", False),
                                        ("input", {"name": "images", "channels": 3, "height": 32, "width": 32})])
def test_any_edited_field_is_refused(key, value, copy):
    folder = copy("onnx")
    _write_manifest(folder, {**_manifest(folder), key: value})
    with pytest.raises(ModelFileError):
        load_export(folder)


def test_the_copy_inside_the_onnx_model_must_agree_with_the_manifest(copy):
    """The manifest intact, the model's copy changed (and the file rehashed): refused, naming the field."""
    folder = copy("onnx")
    summary = _without_files(_manifest(folder))
    summary["decision"] = {**summary["decision"], "image_threshold": summary["decision"]["image_threshold"] / 3}
    _set_onnx_summary(folder, summary)
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"differs from the copy inside model.onnx \(its metadata_props 'anomalens'\) in decision"):
        load_export(folder)


def test_a_model_without_the_manifest_copy_is_refused(copy):
    """A missing check is a refusal: an ONNX model without its 'anomalens' metadata, an IR without rt_info."""
    folder = copy("onnx")
    model = onnx.load(str(folder / "model.onnx"))
    del model.metadata_props[:]
    onnx.save_model(model, str(folder / "model.onnx"))
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"model.onnx: carries no copy of the manifest"):
        load_export(folder)
    folder = copy("openvino")
    tree = ElementTree.parse(folder / "model.xml")
    for info in tree.getroot().findall("rt_info"):
        for entry in info.findall("anomalens"):
            info.remove(entry)
    tree.write(folder / "model.xml")
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"model.xml: carries no copy of the manifest \(its rt_info 'anomalens'\)"):
        load_export(folder)


def test_a_consistent_edit_of_the_rule_loads_and_verify_export_reports_it(copy, saved, capsys):
    """Editing the rule in both copies and rehashing is a deliberate change: it loads, and verify-export,
    comparing with the run, lists the flipped labels."""
    folder = copy("onnx")
    manifest = _manifest(folder)
    manifest["decision"]["image_threshold"] = 1e30
    _set_onnx_summary(folder, _without_files(manifest))
    _write_manifest(folder, manifest)
    _rehash(folder)
    assert load_export(folder).threshold_ == 1e30
    assert main(["verify-export", str(folder), *_images(saved), "--run", str(saved / "run")]) == 2
    captured = capsys.readouterr()
    assert "label flips:" in captured.out and "label(s) flipped" in captured.err


def test_the_embedded_summary_is_what_the_writer_embeds(saved, ir):
    manifest = _manifest(saved / "onnx")
    metadata, external = onnx_model_facts(saved / "onnx" / "model.onnx")
    assert json.loads(metadata["anomalens"]) == json.loads(export_summary(manifest)) and external == set()
    assert json.loads(openvino_ir_summary(saved / "openvino" / "model.xml")) == _without_files(_manifest(saved / "openvino"))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format="tflite"), "unknown export format"),
    (lambda m: m.update(detector=7), "'detector' must be"),
    (lambda m: m.update(params=[]), "'params' must be a JSON object"),
    (lambda m: m["params"].update(batch_size=0), "batch_size must be a positive integer"),
    (lambda m: m["params"].update(decode="lossy"), "invalid parameter decode"),
    (lambda m: m.update(localizes="yes"), "'localizes' must be true or false"),
    (lambda m: m["input"].update(channels=4), "'input' must give"),
    (lambda m: m.pop("input"), "'input' must give"),
    (lambda m: m.update(outputs=list(reversed(m["outputs"]))), "'outputs' must be scores and maps in this order"),
    (lambda m: m.update(outputs="scores"), "'outputs' must be"),
    (lambda m: m.update(decision={"image_threshold": "high"}), "invalid decision rule"),
    (lambda m: m.pop("decision"), "invalid decision rule"),
])
def test_a_malformed_manifest_is_one_line(change, message, copy):
    """Fields a loader relies on are checked before use (a KeyError or a numpy error was a traceback)."""
    folder = copy("onnx")
    manifest = _manifest(folder)
    change(manifest)
    _write_manifest(folder, manifest)
    with pytest.raises(ModelFileError, match=message):
        load_export(folder)


# -------------------------------------------------------------------------------------- the files
@pytest.mark.parametrize("fmt, dropped", [("onnx", "model.onnx"), ("openvino", "model.bin"), ("openvino", "model.xml")])
def test_a_model_file_dropped_from_the_list_is_refused(fmt, dropped, copy):
    """Issue 30: a model file left out of ``files`` was loaded without a hash check."""
    folder = copy(fmt)
    manifest = _manifest(folder)
    del manifest["files"][dropped]
    if not manifest["files"]:
        manifest["files"] = {"model.onnx.data": "0" * 64}
    _write_manifest(folder, manifest)
    with pytest.raises(ModelFileError, match=rf"does not list {dropped}, which a {fmt} export needs|lists no model files"):
        load_export(folder)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/model.bin", "..", "", "a\\b", "model.bin\0x"])
def test_file_entries_outside_the_folder_are_refused(name, copy, tmp_path):
    """Issue 30: entries with ``../`` or absolute paths were opened outside the export folder."""
    folder = copy("onnx")
    (tmp_path / "outside.bin").write_bytes(b"secret")
    manifest = _manifest(folder)
    manifest["files"][name] = hashlib.sha256(b"secret").hexdigest()
    _write_manifest(folder, manifest)
    with pytest.raises(ModelFileError, match="not a plain file name"):
        read_manifest(folder)


def test_unknown_files_and_malformed_hashes_are_refused(copy):
    folder = copy("onnx")
    manifest = _manifest(folder)
    _write_manifest(folder, {**manifest, "files": {**manifest["files"], "notes.txt": "0" * 64}})
    with pytest.raises(ModelFileError, match="lists notes.txt, which is no file of a onnx export"):
        load_export(folder)
    for digest in (None, "abc", "0" * 63 + "G", 12):
        _write_manifest(folder, {**manifest, "files": {"model.onnx": digest}})
        with pytest.raises(ModelFileError, match="SHA-256 of model.onnx is missing or malformed"):
            load_export(folder)


def test_onnx_weights_from_an_unlisted_file_are_refused(copy):
    """External data is read only from files the manifest lists (and so hashes)."""
    folder = copy("onnx")
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.extra", size_threshold=1024)
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"model.onnx: takes weights from 'weights.extra', which export.json does not list"):
        load_export(folder)
    # Listed under the writer's name, it loads and scores as before.
    shutil.move(folder / "weights.extra", folder / "model.onnx.data")
    onnx.save_model(onnx.load(str(folder / "model.onnx"), load_external_data=False), str(folder / "model.onnx"))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "model.onnx.data"
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    manifest = _manifest(folder)
    manifest["files"]["model.onnx.data"] = "0" * 64
    _write_manifest(folder, manifest)
    _rehash(folder)
    load_export(folder)


# ------------------------------------------------------------------------------- damaged model files
@pytest.mark.parametrize("fmt, name, keep", [("onnx", "model.onnx", 0.5), ("onnx", "model.onnx", 0.0),
                                             ("openvino", "model.xml", 0.5), ("openvino", "model.bin", 0.5)])
def test_a_truncated_model_is_one_line(fmt, name, keep, copy, saved, tmp_path, capsys):
    """Issue 30: truncated models (hashes updated) gave runtime tracebacks."""
    folder = copy(fmt)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * keep)])
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"model\.(onnx|xml): (not a complete|OpenVINO cannot load it)"):
        load_export(folder)
    _one_line_cli(["predict", str(folder), *_images(saved), "-o", str(tmp_path / "out"), "-q"], capsys)


@pytest.mark.parametrize("fmt, name, content", [("onnx", "model.onnx", "xml"), ("openvino", "model.xml", "onnx"),
                                                ("onnx", "model.onnx", "png")])
def test_a_mislabelled_model_is_one_line(fmt, name, content, copy, saved, ir):
    """A file of another kind under the model's name (hashes updated): refused before or by the runtime."""
    folder = copy(fmt)
    source = {"xml": saved / "openvino" / "model.xml", "onnx": saved / "onnx" / "model.onnx",
              "png": saved / "images" / "0.png"}[content]
    (folder / name).write_bytes(source.read_bytes())
    _rehash(folder)
    with pytest.raises(ModelFileError, match=rf"{name}: "):
        load_export(folder)


def test_a_graph_of_another_input_size_is_refused(copy, saved):
    """The 48-px run's graph under the 64-px manifest (copy and hashes consistent): the input is checked."""
    folder = copy("onnx")
    _set_onnx_summary(folder, _without_files(_manifest(folder)), model_path=saved / "onnx48" / "model.onnx")
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"model.onnx: the graph takes input 'images' float32 \(N, 3, 48, 48\), the "
                                             r"manifest says 'images' float32 \(N, 3, 64, 64\)"):
        load_export(folder)


def test_swapped_outputs_are_one_line(copy, saved, tmp_path, capsys):
    """Issue 30: the graph's outputs swapped gave a numpy broadcasting message."""
    folder = copy("onnx")
    model = onnx.load(str(folder / "model.onnx"))
    names = {"scores": "maps", "maps": "scores"}
    for node in model.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    for output in model.graph.output:
        output.name = names[output.name]
    onnx.save_model(model, str(folder / "model.onnx"))
    _rehash(folder)
    with pytest.raises(ModelFileError, match=r"model.onnx: the graph's output 'scores' is float32 \(N, \w+, \w+\), the "
                                             r"manifest says float32 \(N\)"):
        load_export(folder)
    _one_line_cli(["predict", str(folder), *_images(saved), "-o", str(tmp_path / "out"), "-q"], capsys)


def test_outputs_of_the_wrong_shape_at_run_time_are_one_line(copy, saved, monkeypatch):
    """The last line of defence: each batch's outputs are checked for (N,) and (N, H, W)."""
    model = load_export(copy("onnx"))
    real = model.session.__call__

    monkeypatch.setattr(type(model.session), "__call__", lambda self, images: list(reversed(real(images))))
    with pytest.raises(ModelFileError, match=r"the graph gave outputs of shapes \(6, 64, 64\), \(6,\) for 6 image\(s\), "
                                             r"expected \(6,\), \(6, 64, 64\)"):
        model.predict(_images(saved))


def test_an_image_level_export_loads_and_runs(saved):
    """mahalanobis: one output, no maps — the checks do not ask for what a detector does not make."""
    model = load_export(saved / "maha_onnx")
    assert not model.localizes and model.predict(_images(saved)).maps is None


def test_intact_exports_load_on_both_runtimes(saved, ir):
    images = _images(saved)
    reference = load_export(saved / "onnx").predict(images).scores
    for folder, runtime in [("onnx", "openvino"), ("openvino", None)]:
        np.testing.assert_allclose(load_export(saved / folder, runtime).predict(images).scores, reference, rtol=1e-4)


def test_plain_file_names():
    assert all(is_plain_file_name(n) for n in ["model.onnx", "model.onnx.data", "a b", "..x", "x.."])
    assert not any(is_plain_file_name(n) for n in ["", ".", "..", "../x", "/x", "a/b", "a\\b", "a\0", None, 3])
