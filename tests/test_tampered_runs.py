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
    save_file(tensors, str(path), metadata=metadata)
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
    assert "the 3 normal images the threshold comes from all score" in caplog.text
