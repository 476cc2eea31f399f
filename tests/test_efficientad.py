"""EfficientAD: what is specific to it (the contract battery covers the rest, tests/test_contract.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import anomalens
from anomalens import ConfigError, create_detector, load_detector
from anomalens.cli import main
from anomalens.errors import ModelFileError
from anomalens.models.components.pdn import (
    PatchAutoencoder,
    PatchDescriptionNetwork,
    pdn_grid,
)
from anomalens.models.efficientad import hard_feature_loss
from tests.conftest import TINY_PARAMS, make_records

PARAMS = TINY_PARAMS["efficientad"]


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit("efficientad")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A PDN teacher distilled through the command (a few steps: the file format, not its quality)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    assert main(["distill-teacher", "--steps", "3", "--batch-size", "2", "--image-size", "64", "--device", "cpu",
                 "-q", "-o", str(path)]) == 0
    return path


def test_the_networks_have_the_papers_shapes_at_256_px():
    images = torch.rand(1, 3, 256, 256)
    assert pdn_grid((256, 256)) == (56, 56)
    for size in ("small", "medium"):
        assert PatchDescriptionNetwork(size, 384)(images).shape == (1, 384, 56, 56)
    autoencoder = PatchAutoencoder((256, 256), 384)
    assert autoencoder.encoder[-1].kernel_size == (8, 8) and autoencoder.steps == [(3, 3), (8, 8), (15, 15), (32, 32), (63, 63), (127, 127)]
    assert autoencoder(images).shape == (1, 384, 56, 56)


def test_hard_feature_loss_averages_only_the_hardest_distances():
    distance = torch.arange(1000, dtype=torch.float32)
    assert hard_feature_loss(distance, 0.99).item() == pytest.approx(np.mean(np.arange(990, 1000)))
    assert hard_feature_loss(distance, 0.0).item() == pytest.approx(distance.mean().item())


@pytest.mark.parametrize("epochs", [1, 2, 10, 20, 583])
def test_the_lr_drops_only_after_95_percent_of_the_epochs(epochs):
    detector = create_detector("efficientad", **{**PARAMS, "epochs": epochs})
    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=detector.lr)
    scheduler = detector._schedulers({"adam": adam})["lr_drop"]
    rates = []
    for _ in range(epochs):  # the training loop steps it once per epoch
        rates.append(adam.param_groups[0]["lr"])
        scheduler.step()
    dropped = [epoch for epoch, lr in enumerate(rates) if lr < detector.lr]
    assert all(epoch >= 0.95 * epochs for epoch in dropped)  # never earlier than the paper's drop
    assert bool(dropped) == (epochs >= 20)  # the first epoch boundary at or after 95 % (none before the end if < 20)


def test_it_separates_the_defects_and_its_maps_localise_them(fitted, test_records):
    result = fitted.predict(test_records, progress=False)
    labels = np.array([r.label for r in test_records])
    assert anomalens.evaluate(labels, result.scores, fitted.threshold_)["image_auroc"] >= 0.9
    for record, amap in zip(test_records, result.maps):
        if record.label:  # the hottest pixel is on (or next to) the square
            y, x = np.unravel_index(amap.argmax(), amap.shape)
            ys, xs = np.nonzero(record.mask)
            assert ys.min() - 6 <= y <= ys.max() + 6 and xs.min() - 6 <= x <= xs.max() + 6


def test_both_maps_are_quantile_normalised_on_held_out_normals(fitted):
    quantiles = fitted.map_quantiles_.cpu().numpy()
    assert quantiles[1] > quantiles[0] > 0 and quantiles[3] > quantiles[2] > 0
    assert set(fitted.history_) >= {"loss", "hard", "penalty", "ae", "stae"}
    # The student learned something: the hard-feature loss went down over the epochs.
    assert fitted.history_["hard"][-1] < fitted.history_["hard"][0]


def test_image_quantile_pixels_count_the_padded_border_as_anomalib_does(fitted, train_records):
    """quantile_pixels="image" (the default): q_a, q_b over the padded map at the image size, whose uncovered
    border is a zero distance, so both quantiles fall below those of the PDN's cells alone ("grid")."""
    import copy

    records = train_records[:6]
    on_grid, on_image = copy.deepcopy(fitted), copy.deepcopy(fitted)
    assert fitted.params["quantile_pixels"] == "image"  # the default
    on_grid.params["quantile_pixels"] = "grid"
    on_grid._set_map_quantiles(records)
    grid = on_grid.map_quantiles_.cpu().numpy()
    on_image.params["quantile_pixels"] = "image"
    on_image._set_map_quantiles(records)
    image = on_image.map_quantiles_.cpu().numpy()
    assert image[0] < grid[0] and image[2] < grid[2]
    assert image[1] <= grid[1] and image[3] <= grid[3]
    assert image[1] > image[0] and image[3] > image[2]


def test_a_run_saved_before_quantile_pixels_loads_as_the_grid_it_was_fitted_with(fitted, test_records, tmp_path):
    """Runs saved before the parameter existed took the quantiles on the PDN's cells: they load saying so (a refit
    with their parameters is then the same fit), and score with their own saved quantiles."""

    from safetensors import safe_open
    from safetensors.torch import save_file

    from anomalens.persistence import file_sha256

    run = tmp_path / "run"
    fitted.save(run)
    config = json.loads((run / "detector.json").read_text())
    config["params"].pop("quantile_pixels")
    weights = run / "weights.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    old = json.loads(metadata["params"])
    old.pop("quantile_pixels")
    metadata["params"] = json.dumps(old, sort_keys=True)
    save_file(tensors, str(weights), metadata=metadata)
    config["weights_sha256"] = file_sha256(weights)
    (run / "detector.json").write_text(json.dumps(config))
    loaded = load_detector(run)
    assert loaded.params["quantile_pixels"] == "grid"
    np.testing.assert_allclose(loaded.predict(test_records, progress=False).scores,
                               fitted.predict(test_records, progress=False).scores, rtol=1e-5)


def test_a_resumed_fit_equals_an_uninterrupted_one(tiny_fit, train_records, test_records, tmp_path, monkeypatch):
    """Stopped right after the first epoch's checkpoint (as a killed process is), then resumed: the model of an
    uninterrupted fit. (A shorter budget would not stand in for the stop: the lr drop depends on the budget.)"""
    from anomalens.models.components import training

    class Killed(BaseException):
        pass

    save = training._save_checkpoint

    def save_then_die(path, payload):
        save(path, payload)
        raise Killed

    checkpoint = str(tmp_path / "ckpt.pt")
    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        create_detector("efficientad", **{**PARAMS, "checkpoint": checkpoint}).fit(train_records, progress=False)
    monkeypatch.setattr(training, "_save_checkpoint", save)
    resumed = create_detector("efficientad", **{**PARAMS, "checkpoint": checkpoint}).fit(train_records, progress=False)
    straight = tiny_fit("efficientad")  # PARAMS, fitted in one go
    np.testing.assert_allclose(resumed.score(test_records, progress=False)[0],
                               straight.score(test_records, progress=False)[0], rtol=1e-4)


@pytest.mark.export  # the export tier: in make test, not make test-fast
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_export_gives_the_torch_scores_and_maps(fitted, fmt, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from anomalens.export import DEFAULT_TOLERANCE, export_run, verify_export

    images = []
    for i, record in enumerate(make_records(2, 2, seed=5, size=96)):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(record.source[:, :80]).save(images[-1])
    run = fitted.save(tmp_path / "run")
    out = export_run(run, tmp_path / "export", format=fmt, progress=False)
    report = verify_export(out, images, progress=False)
    assert report["ok"], report
    assert report["scores_rel"] <= DEFAULT_TOLERANCE and report["maps_rel"] <= DEFAULT_TOLERANCE


def test_a_distilled_teacher_file_is_used_and_the_run_keeps_it(teacher_file, train_records, test_records, tmp_path):
    detector = create_detector("efficientad", **PARAMS, teacher=str(teacher_file)).fit(train_records, progress=False)
    assert isinstance(detector.teacher_, PatchDescriptionNetwork)
    scores = detector.score(test_records, progress=False)[0]
    labels = np.array([r.label for r in test_records])
    assert anomalens.evaluate(labels, scores, detector.threshold_)["image_auroc"] >= 0.9
    run = detector.save(tmp_path / "run")
    moved = teacher_file.with_name("moved.safetensors")
    teacher_file.rename(moved)  # the run no longer needs the file
    try:
        np.testing.assert_allclose(load_detector(run).score(test_records, progress=False)[0], scores, rtol=1e-5)
    finally:
        moved.rename(teacher_file)
    metadata = json.loads(__import__("safetensors").safe_open(str(teacher_file), "pt").metadata()["provenance"])
    assert metadata["backbone"] == "efficientnet_lite0" and metadata["steps"] == 3


def test_a_penalty_folder_is_read(train_records, tmp_path):
    for i, record in enumerate(make_records(3, 0, seed=9)):
        Image.fromarray(record.source).save(tmp_path / f"{i}.png")
    train = train_records[:10]  # whether the penalty is trained on, not how well: a few steps of one epoch do
    detector = create_detector("efficientad", **{**PARAMS, "epochs": 1}, penalty_images=str(tmp_path))
    assert "penalty" in detector.fit(train, progress=False).history_
    no_penalty = create_detector("efficientad", **{**PARAMS, "epochs": 1}, penalty_images="none")
    assert "penalty" not in no_penalty.fit(train, progress=False).history_


@pytest.mark.parametrize("penalty_batch", [None, 1])
def test_a_step_draws_one_penalty_crop_per_image_or_penalty_batch(train_records, monkeypatch, penalty_batch):
    import anomalens.models.efficientad as efficientad

    drawn = []
    original = efficientad.random_crops

    def counting(pool, count, size):
        drawn.append(count)
        return original(pool, count, size)

    monkeypatch.setattr(efficientad, "random_crops", counting)
    params = {**PARAMS, "epochs": 1, "batch_size": 4, "holdout_fraction": 0.0}
    create_detector("efficientad", **params, penalty_batch=penalty_batch).fit(train_records[:8], progress=False)
    assert drawn == [penalty_batch or 4] * 2  # two steps of four images


def test_bad_settings_are_one_clear_line(train_records, tmp_path, capsys):
    with pytest.raises(ConfigError, match="at least 64 px"):
        create_detector("efficientad", image_size=32)
    with pytest.raises(ConfigError, match="penalty_images.*not a folder"):
        create_detector("efficientad", **PARAMS, penalty_images=str(tmp_path / "missing")).fit(train_records, progress=False)
    with pytest.raises(ModelFileError, match="teacher file not found"):
        create_detector("efficientad", **PARAMS, teacher=str(tmp_path / "no.safetensors")).fit(train_records, progress=False)
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelFileError, match="not a safetensors teacher"):
        create_detector("efficientad", **PARAMS, teacher=str(tmp_path / "bad.safetensors")).fit(train_records, progress=False)
    assert main(["distill-teacher", "-o", str(tmp_path / "teacher.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
