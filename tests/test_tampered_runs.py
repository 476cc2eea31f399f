"""Issue 15's loading and scoring defects: a run folder that was changed, damaged or rebuilt differently
must be refused with one line naming the file — never loaded into silently wrong answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from anomalens import ModelFileError, NumericalError, create_detector, load_detector
from anomalens.persistence import CONFIG_FILE, WEIGHTS_FILE
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def saved_run(train_records, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "padim"
    create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False).save(run)
    return run


@pytest.fixture()
def run(saved_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    return copy


def _edit_config(run, change):
    path = run / CONFIG_FILE
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _rewrite_weights(run, change):
    """Change the tensors but keep the file's metadata, and the JSON's hash in step (a deliberate edit)."""
    from safetensors import safe_open

    from anomalens.persistence import file_sha256

    path = run / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _edit_config(run, lambda c: c.update(weights_sha256=file_sha256(path)))


def test_nan_in_a_saved_weight_is_refused(run):
    _rewrite_weights(run, lambda t: t["mean"].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(ModelFileError, match=r"weights.safetensors: tensor 'mean' holds NaN"):
        load_detector(run)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "300"])
def test_a_nan_infinite_or_non_numeric_threshold_is_refused(run, value):
    _edit_config(run, lambda c: c["decision"].update(image_threshold=value))
    with pytest.raises(ModelFileError, match="invalid decision rule"):
        load_detector(run)


def test_weights_from_another_run_are_refused(run, saved_run, train_records, tmp_path):
    other = tmp_path / "other"
    create_detector("padim", **{**TINY_PARAMS["padim"], "seed": 3}).fit(train_records, progress=False).save(other)
    (run / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        load_detector(run)


@pytest.mark.parametrize("key, value", [("backbone", "efficientnet_lite1"), ("image_size", 128), ("blur_sigma", 0.0),
                                        ("layers", [2, 3])])
def test_changed_parameters_are_refused(run, key, value):
    _edit_config(run, lambda c: c["params"].update({key: value}))
    with pytest.raises(ModelFileError, match=rf"parameter\(s\) {key} differ from those the weights were fitted with"):
        load_detector(run)


def test_inference_parameters_may_change(run, test_records):
    _edit_config(run, lambda c: c["params"].update(batch_size=3, device="cpu"))
    assert load_detector(run).batch_size == 3


def test_a_changed_detector_name_is_refused(run):
    _edit_config(run, lambda c: c.update(detector="patchcore"))
    with pytest.raises(ModelFileError):
        load_detector(run)


def test_nan_scores_never_leave_the_detector(train_records, test_records):
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    with torch.inference_mode():  # a model broken after fitting (e.g. by a numerical fault)
        detector.mean_[0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"padim: NaN or infinite anomaly scores or maps for 12 of 12 images \(first: "):
        detector.predict(test_records, progress=False)


@pytest.mark.parametrize("name", ["padim", "patchcore", "stpm"])
def test_random_backbone_weights_are_the_same_after_loading(name, train_records, test_records, tmp_path):
    """Regression: `--weights random` runs scored ~370 after reload instead of ~2 (unseeded rebuild)."""
    detector = create_detector(name, **{**TINY_PARAMS[name], "weights": "random", **({"epochs": 1} if name == "stpm" else {})})
    detector.fit(train_records, progress=False).save(tmp_path / "run")
    before = detector.score(test_records, progress=False)[0]
    torch.manual_seed(12345)  # whatever the global generator holds when loading
    after = load_detector(tmp_path / "run").score(test_records, progress=False)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5)


def test_weights_get_the_same_permissions_as_the_json(saved_run):
    """Regression: weights.safetensors was written 0600, so another user could read the run's JSON but
    got "not found" for its weights."""
    import os
    import stat

    weights, config = os.stat(saved_run / WEIGHTS_FILE), os.stat(saved_run / CONFIG_FILE)
    assert stat.S_IMODE(weights.st_mode) == stat.S_IMODE(config.st_mode)


def test_an_unreadable_weights_file_says_permission_denied(run, monkeypatch):
    import builtins

    real_open = builtins.open

    def refuse(path, *args, **kwargs):  # root reads anything: simulate another user's view
        if str(path).endswith(WEIGHTS_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(ModelFileError, match="weights.safetensors: permission denied"):
        load_detector(run)


def test_too_few_training_images_says_what_the_hold_out_took():
    """Issue 15 item 12: two images gave "needs at least 2 training images" (one was held out)."""
    from anomalens import DataError
    from tests.conftest import make_records

    with pytest.raises(DataError, match=r"padim: needs at least 2 images to fit, got 2 training image\(s\), 1 of them "
                                        r"held out for the threshold \(more images, or -p holdout_fraction=0\)"):
        create_detector("padim", **TINY_PARAMS["padim"]).fit(make_records(2, 0), progress=False)
    create_detector("padim", **TINY_PARAMS["padim"], holdout_fraction=0.0).fit(make_records(2, 0), progress=False)


def test_identical_training_images_give_a_warning(caplog):
    from tests.conftest import make_records

    same = make_records(1, 0)[0]
    with caplog.at_level("WARNING", logger="anomalens"):
        create_detector("padim", **TINY_PARAMS["padim"], threshold_folds=1, holdout_fraction=0.5).fit([same] * 6, progress=False)
    assert "median of the 3 normal scores it comes from" in caplog.text and "identical copies" in caplog.text


# ---------------------------------------------------------------- issue 30: a run verified as a whole
def _single_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message


def test_a_deleted_weights_hash_is_a_refusal_not_a_skipped_check(run):
    """Issue 30: deleting weights_sha256 switched the check off, and altered weights loaded silently."""
    _rewrite_weights(run, lambda t: t["mean"].mul_(1.5))
    _edit_config(run, lambda c: c.pop("weights_sha256"))
    with pytest.raises(ModelFileError, match=r"detector.json: has no 'weights_sha256', so its weights cannot be checked") as caught:
        load_detector(run)
    _single_line(str(caught.value))


@pytest.mark.parametrize("value", [None, 12, "abc", "0" * 63 + "Z", ["x"]])
def test_a_malformed_weights_hash_is_refused(run, value):
    _edit_config(run, lambda c: c.update(weights_sha256=value))
    with pytest.raises(ModelFileError, match="weights_sha256"):
        load_detector(run)


@pytest.mark.parametrize("drop", [("params",), ("detector",), ("params", "detector")])
def test_weights_without_their_metadata_are_refused(run, drop):
    """Issue 30: deleting the weights file's metadata switched the parameter check off (scores moved 56 %)."""
    from safetensors import safe_open

    from anomalens.persistence import file_sha256

    path = run / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as fh:
        metadata = {k: v for k, v in fh.metadata().items() if k not in drop}
    save_file(load_file(str(path)), str(path), metadata=metadata or None)
    _edit_config(run, lambda c: c.update(weights_sha256=file_sha256(path)))
    with pytest.raises(ModelFileError, match=r"weights.safetensors: its metadata lacks"):
        load_detector(run)


def test_parameters_changed_with_the_metadata_left_out_are_refused(run):
    """The issue's case: blur_sigma changed in detector.json, metadata deleted, hash recomputed."""
    from anomalens.persistence import file_sha256

    path = run / WEIGHTS_FILE
    save_file(load_file(str(path)), str(path))
    _edit_config(run, lambda c: (c["params"].update(blur_sigma=0.0), c.update(weights_sha256=file_sha256(path))))
    with pytest.raises(ModelFileError, match="its metadata lacks"):
        load_detector(run)


def test_unreadable_parameter_metadata_is_refused(run):
    from safetensors import safe_open

    path = run / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    _rewrite_weights(run, lambda t: None)
    save_file(load_file(str(path)), str(path), metadata={**metadata, "params": "[1, 2]"})
    from anomalens.persistence import file_sha256

    _edit_config(run, lambda c: c.update(weights_sha256=file_sha256(path)))
    with pytest.raises(ModelFileError, match="parameter metadata is unreadable"):
        load_detector(run)


@pytest.mark.parametrize("change, message", [
    # Issue 30: an edited grid_size moved the scores 68 % without an error.
    (lambda t: t.__setitem__("grid_size", torch.tensor([8, 32])), r"'grid_size' is \(8, 32\), but the backbone gives a \(16, 16\) grid"),
    (lambda t: t.__setitem__("grid_size", torch.tensor([32, 32])), r"'grid_size' is \(32, 32\)"),
    (lambda t: t.__setitem__("grid_size", torch.tensor([16.0, 16.0])), "'grid_size' must be 2 integers"),
    (lambda t: t.__setitem__("grid_size", torch.tensor(16)), "'grid_size' must be 2 integers"),
    (lambda t: t.__setitem__("grid_size", torch.tensor([-16, -16])), "'grid_size' must be 2 positive integers"),
    # Issue 30: an edited channel_index gave a traceback.
    (lambda t: t.__setitem__("channel_index", t["channel_index"] + 1000), "'channel_index' holds channels outside"),
    (lambda t: t.__setitem__("channel_index", -t["channel_index"] - 1), "'channel_index' holds channels outside"),
    (lambda t: t["channel_index"].__setitem__(1, t["channel_index"][0]), "'channel_index' must hold distinct channels"),
    (lambda t: t.__setitem__("channel_index", t["channel_index"].flip(0)), "'channel_index' must hold distinct channels in ascending"),
    (lambda t: t.__setitem__("channel_index", t["channel_index"].float()), "'channel_index' must be 100 integers"),
    (lambda t: t.__setitem__("channel_index", t["channel_index"][:50]), "'channel_index' must be 100 integers"),
    (lambda t: t.__setitem__("mean", t["mean"][:100]), r"'mean' must be floating point of shape \(256, 100\)"),
    (lambda t: t.__setitem__("whitener_lower", t["whitener_lower"].double().to(torch.int32)),
     "'whitener_lower' must be floating point"),
    (lambda t: t.__setitem__("whitener_lower", t["whitener_lower"][:, :-1]), r"'whitener_lower' must be floating point of shape \(256, 5050\)"),
    (lambda t: t.pop("whitener_lower"), "missing tensor"),
    (lambda t: t.__setitem__("whitener", torch.zeros(256, 100, 100)), r"unexpected tensor\(s\) whitener"),
    (lambda t: t.__setitem__("extra", torch.zeros(3)), r"unexpected tensor\(s\) extra"),
])
def test_edited_padim_tensors_are_refused_in_one_line(run, change, message):
    _rewrite_weights(run, change)
    with pytest.raises(ModelFileError, match=rf"weights.safetensors: weights do not match the 'padim' detector \(.*{message}") as caught:
        load_detector(run)
    _single_line(str(caught.value))


def test_padim_runs_keep_the_whiteners_packed_and_runs_with_full_whiteners_still_load(run, test_records):
    """The Cholesky whiteners are lower triangular: saved as packed triangles (half the file); a run saved
    before the packing (full ``whitener``) loads to the same model and the same scores."""
    from anomalens.models.components.saved_state import packed_lower, unpacked_lower

    tensors = load_file(str(run / WEIGHTS_FILE))
    assert "whitener" not in tensors and tensors["whitener_lower"].shape == (256, 100 * 101 // 2)
    packed_run = load_detector(run)
    assert not packed_run.whitener_.triu(1).any()
    expected = packed_run.score(test_records, progress=False)[0]
    _rewrite_weights(run, lambda t: t.__setitem__("whitener", unpacked_lower(t.pop("whitener_lower"), "w", (256, 100, 100))))
    assert "whitener_lower" not in load_file(str(run / WEIGHTS_FILE))
    full_run = load_detector(run)
    assert torch.equal(full_run.whitener_, packed_run.whitener_)
    np.testing.assert_array_equal(full_run.score(test_records, progress=False)[0], expected)
    # a whitener that is not triangular (the eigendecomposition's fallback) is kept whole, never packed
    assert packed_lower(torch.ones(2, 3, 3)) is None
    square = torch.arange(9.0).reshape(3, 3).tril()
    assert torch.equal(unpacked_lower(packed_lower(square), "w", (3, 3)), square)


def test_an_edited_tensor_is_one_line_from_the_cli(run, tmp_path, capsys):
    from PIL import Image

    from anomalens.cli import main
    from tests.conftest import make_records

    _rewrite_weights(run, lambda t: t.__setitem__("channel_index", t["channel_index"] + 1000))
    image = tmp_path / "a.png"
    Image.fromarray(make_records(1, 0)[0].source).save(image)
    assert main(["predict", str(run), str(image), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomalens: error:") and "'channel_index' holds channels outside" in err
    _single_line(err)


@pytest.mark.parametrize("name, change, message", [
    ("patchcore", lambda t: t.__setitem__("grid_size", torch.tensor([8, 32])), r"'grid_size' is \(8, 32\)"),
    ("patchcore", lambda t: t.__setitem__("memory_bank", t["memory_bank"][:, :5]), "memory bank of"),
    ("patchcore", lambda t: t.__setitem__("memory_bank", t["memory_bank"].to(torch.int64)), "memory bank of torch.int64"),
    ("spade", lambda t: t.__setitem__("grid_sizes", t["grid_sizes"].flip(1) * torch.tensor([2, 1])), "'grid_sizes' is"),
    ("spade", lambda t: t.__setitem__("gallery_0", t["gallery_0"][:, :10]), "gallery of"),
    ("spade", lambda t: t.__setitem__("grid_sizes", torch.tensor([1, 2])), "'grid_sizes' must be of shape"),
    ("mahalanobis", lambda t: t.__setitem__("mean.0", t["mean.0"][:3]), r"level 0: mean"),
    ("mahalanobis", lambda t: t.__setitem__("shrinkage", torch.tensor(0.5)), "'shrinkage' must be one value per level"),
])
def test_edited_tensors_of_other_feature_detectors_are_refused(name, change, message, train_records, tmp_path):
    run = tmp_path / name
    create_detector(name, **TINY_PARAMS[name]).fit(train_records[:8], progress=False).save(run)
    load_detector(run)  # intact: loads
    _rewrite_weights(run, change)
    with pytest.raises(ModelFileError, match=rf"weights do not match the '{name}' detector \(.*{message}") as caught:
        load_detector(run)
    _single_line(str(caught.value))


def test_run_files_are_written_atomically_through_the_output_module(saved_run, tmp_path, monkeypatch):
    """persistence writes through anomalens.outputs.atomic: a crash mid-write leaves no partial file and no
    temporary file behind, and the earlier run stays whole."""
    import shutil

    from anomalens.outputs import atomic

    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    detector = load_detector(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def crash(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_text", crash)
    with pytest.raises(OSError):
        detector.save(run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != WEIGHTS_FILE} == \
        {k: v for k, v in before.items() if k != WEIGHTS_FILE}
    assert not [p for p in run.iterdir() if atomic.is_temporary_name(p.name)]


# ------------------------------------------------- issue 30: the run's decision rule is checked too
def test_a_threshold_edited_by_hand_is_refused(run):
    """Issue 30: the threshold in detector.json was unprotected (×100: every verdict flips to normal)."""
    _edit_config(run, lambda c: c["decision"].update(image_threshold=c["decision"]["image_threshold"] * 100))
    with pytest.raises(ModelFileError, match=r"detector.json: its decision rule \(threshold .*\) is not the one") as caught:
        load_detector(run)
    _single_line(str(caught.value))


@pytest.mark.parametrize("edit", ["drop", "drop-and-format-2", "malformed"])
def test_a_deleted_decision_digest_is_a_refusal_not_a_skipped_check(run, edit):
    def change(config):
        config["decision"]["image_threshold"] *= 100
        if edit == "malformed":
            config["decision_sha256"] = "not a digest"
            return
        config.pop("decision_sha256")
        if edit == "drop-and-format-2":  # the weights' metadata still says format 3
            config["format_version"] = 2

    _edit_config(run, change)
    with pytest.raises(ModelFileError, match="decision_sha256"):
        load_detector(run)


def test_calibrate_rebinds_the_rule_and_the_run_loads(run, test_records):
    from anomalens.persistence import read_config

    detector = load_detector(run)
    before = read_config(run)["decision_sha256"]
    detector.calibrate(test_records, progress=False)
    detector.save_decision(run)
    after = read_config(run)
    assert after["decision_sha256"] != before
    assert load_detector(run).decision_.image_threshold == pytest.approx(after["decision"]["image_threshold"])


def test_a_run_saved_before_the_rule_was_bound_still_loads_and_is_bound_by_calibrate(run, test_records):
    """Format 2 runs (no digest, no format in the weights' metadata) load as before; calibrate binds them."""
    from safetensors import safe_open

    from anomalens.persistence import file_sha256, read_config

    path = run / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as fh:
        metadata = {k: v for k, v in fh.metadata().items() if k != "format_version"}
    save_file(load_file(str(path)), str(path), metadata=metadata)
    _edit_config(run, lambda c: (c.pop("decision_sha256"), c.update(format_version=2, weights_sha256=file_sha256(path))))
    detector = load_detector(run)
    detector.calibrate(test_records, progress=False)
    detector.save_decision(run)
    assert read_config(run)["format_version"] == 3 and "decision_sha256" in read_config(run)
    _edit_config(run, lambda c: c["decision"].update(image_threshold=c["decision"]["image_threshold"] * 100))
    with pytest.raises(ModelFileError, match="decision_sha256 differs"):
        load_detector(run)
