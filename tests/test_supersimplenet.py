"""What is specific to SuperSimpleNet: the upscaled features, the feature-space anomalies under Perlin masks, the
losses, training that separates and localises, the supervised setting (labelled defects, with or without masks,
through the Python API and ``anomalens fit --abnormal``), exact resumption, export parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalens import create_detector
from anomalens.errors import ConfigError, DataError
from anomalens.models.components.perlin_anomalies import AnomalySynthesizer
from anomalens.models.supersimplenet import (
    feature_grid_masks,
    feature_masks,
    truncated_l1,
)
from tests.conftest import TINY_PARAMS, make_records
from tests.export_parity import assert_export_parity

TINY = TINY_PARAMS["supersimplenet"]
SMALL = {**TINY, "image_size": 32, "epochs": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _auroc(detector, records) -> tuple[float, float]:
    scores, maps = detector.score(records, progress=False)
    masks = np.stack([record.mask for record in records])
    return roc_auc_score([r.label for r in records], scores), roc_auc_score(masks.ravel(), maps.ravel())


@pytest.fixture(scope="module")
def fitted(train_records):
    return create_detector("supersimplenet", **TINY).fit(train_records, progress=False)


def test_features_are_upscaled_twice_the_level_2_grid(fitted):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        levels = fitted.local_.extractor(images)
        features = fitted.local_(images)
    assert features.shape[-2:] == tuple(2 * s for s in levels[0].shape[-2:])  # stride 4: 16 x 16 at 64 px
    assert features.shape[1] == sum(level.shape[1] for level in levels)


def test_synthetic_anomalies_follow_perlin_masks_and_leave_half_the_copies_normal():
    synthesizer = AnomalySynthesizer([], (0, 6), threshold=0.2)
    generator = torch.Generator().manual_seed(0)
    masks = feature_masks(synthesizer, 400, 16, 16, 0.5, generator)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    empty = (masks.flatten(1).amax(1) == 0).float().mean().item()
    assert 0.4 <= empty <= 0.6  # the paper: each copy gets an anomaly with probability 0.5
    assert (masks.flatten(1).mean(1)[masks.flatten(1).amax(1) > 0] < 1).all()  # regions, not whole maps


def test_defect_masks_reach_the_feature_grid_binarised_at_one_half():
    pixels = torch.zeros(1, 1, 64, 64)
    pixels[..., 8:40, 8:40] = 1  # a 32-px square: 8 x 8 positions at stride 4
    pixels[..., 50:51, 50:51] = 1  # one pixel: under half a position, gone
    grid = feature_grid_masks(pixels, 16, 16)
    assert grid.sum().item() == 64 and grid[0, 0, 2:10, 2:10].all()


def test_truncated_l1_is_zero_past_the_margins_and_linear_before():
    logits = torch.tensor([-0.9, 0.1, 0.7, 0.2], requires_grad=True)
    targets = torch.tensor([0.0, 0.0, 1.0, 1.0])
    loss = truncated_l1(logits, targets, 0.5)
    assert loss.item() == pytest.approx(np.mean([0.0, 0.6]) + np.mean([0.0, 0.3]))
    loss.backward()
    assert logits.grad[0].item() == 0 and logits.grad[2].item() == 0  # past their margins: no gradient
    assert truncated_l1(torch.tensor([-1.0]), torch.tensor([0.0]), 0.5).item() == 0  # one side only: no NaN


def test_training_lowers_the_loss_separates_and_localises(fitted, test_records):
    history = fitted.history_
    assert {"loss", "map_focal", "map_l1", "score_focal"} <= set(history)
    assert history["loss"][-1] < history["loss"][0]
    image_auroc, pixel_auroc = _auroc(fitted, test_records)
    assert image_auroc >= 0.9 and pixel_auroc >= 0.9


def test_labelled_defects_are_learnt_and_the_threshold_uses_normals_only(train_records, fitted):
    defects = make_records(0, 4, seed=11)  # a separate pool: never the test images
    without_masks = [type(r)(r.source, 1, None, r.name, r.defect_type) for r in make_records(0, 2, seed=12)]
    # The paper's image score, the classification head's logit (TINY scores by the map: see tests/conftest.py).
    supervised = create_detector("supersimplenet", **{**TINY, "image_score": "classifier"}).fit(
        train_records, progress=False, abnormal=defects + without_masks)
    unseen = make_records(10, 10, seed=13)
    image_auroc, pixel_auroc = _auroc(supervised, unseen)
    assert image_auroc >= 0.95 and pixel_auroc >= 0.9
    # The labelled defects never reach the threshold: the same normal hold-out as the unsupervised fit.
    assert supervised.decision_.description == fitted.decision_.description
    assert not supervised.abnormal_records  # nothing of the fit's defects stays on the detector


def test_a_defect_without_mask_only_enters_the_classification_loss(fitted, train_records):
    detector = create_detector("supersimplenet", **TINY)
    detector.fit(train_records[:6], progress=False)
    features = detector.local_features(torch.rand(3, 3, 64, 64))
    grid = features.shape[-2:]
    from anomalens.models.supersimplenet import LabelledBatch

    def losses(known):
        detector.abnormal_records = ["defect"]  # the supervised setting (gradients flow into the map)
        detector.synthesizer_ = AnomalySynthesizer([], (0, 6), threshold=0.2)
        batch = LabelledBatch(features, torch.zeros(3, 1, *grid), torch.tensor([0.0, 0.0, 1.0]), known)
        with torch.no_grad():
            return detector._losses(batch, torch.Generator().manual_seed(0))

    everything = losses(torch.tensor([True, True, True]))
    masked_out = losses(torch.tensor([True, True, False]))
    assert masked_out["score_focal"].item() == pytest.approx(everything["score_focal"].item())
    assert masked_out["map_focal"].item() != pytest.approx(everything["map_focal"].item())


def test_the_image_loss_reaches_the_map_only_when_learning_from_labelled_defects(fitted):
    from anomalens.models.supersimplenet import LabelledBatch

    features = fitted.local_features(torch.rand(4, 3, 64, 64))
    batch = LabelledBatch(features, torch.zeros(4, 1, *features.shape[-2:]), torch.zeros(4),
                          torch.ones(4, dtype=torch.bool))

    def segmentation_gradient(abnormal: list) -> float:
        fitted.abnormal_records = abnormal  # non-empty: the supervised setting
        for network in fitted._networks().values():
            network.zero_grad(set_to_none=True)
        fitted._losses(batch, torch.Generator().manual_seed(0))["score_focal"].backward()
        return sum(p.grad.abs().sum().item() for p in fitted.segmentation_.parameters() if p.grad is not None)

    fitted.synthesizer_ = AnomalySynthesizer([], (0, 6), threshold=0.2)
    try:
        assert segmentation_gradient([]) == 0  # unsupervised: the classifier's loss stops at the map (Sec. 3.4)
        assert segmentation_gradient(["defect"]) > 0
    finally:
        fitted.abnormal_records = []
        del fitted.synthesizer_
        for network in fitted._networks().values():
            network.zero_grad(set_to_none=True)


def test_abnormal_images_are_refused_where_they_cannot_be_used(train_records):
    defects = make_records(0, 2, seed=11)
    with pytest.raises(ConfigError, match="normal images only"):
        create_detector("simplenet", **TINY_PARAMS["simplenet"]).fit(train_records, progress=False, abnormal=defects)
    with pytest.raises(ConfigError, match="normal images only"):
        create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False, abnormal=defects)
    with pytest.raises(DataError, match="label 1"):
        create_detector("supersimplenet", **SMALL).fit(train_records, progress=False, abnormal=make_records(2, 0))
    with pytest.raises(ConfigError, match="tiling"):
        create_detector("supersimplenet", **{**SMALL, "image_size": 64, "tile_size": 32}).fit(
            make_records(6, 0, size=64), progress=False, abnormal=make_records(0, 1, size=64))


def test_fit_command_learns_from_abnormal_folders(tmp_path):
    from anomalens.cli import main

    folders = {name: tmp_path / name for name in ("good", "scratch", "masks")}
    for folder in folders.values():
        folder.mkdir()
    for i, record in enumerate(make_records(8, 0, seed=1, size=32)):
        Image.fromarray(record.source).save(folders["good"] / f"{i}.png")
    for i, record in enumerate(make_records(0, 2, seed=5, size=40)):  # 40 px: room for the pasted square
        Image.fromarray(record.source).save(folders["scratch"] / f"{i}.png")
        Image.fromarray(record.mask.astype(np.uint8) * 255).save(folders["masks"] / f"{i}.png")
    params = [arg for key, value in SMALL.items() if key != "image_size" for arg in ("-p", f"{key}={value}")]
    run = tmp_path / "run"
    assert main(["fit", "supersimplenet", "--normal", str(folders["good"]), "--abnormal", str(folders["scratch"]),
                 "--masks", str(folders["masks"]), "--image-size", "32", "-o", str(run), "-q", *params]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["n_train_images"] == 8 and info["n_labelled_defects"] == 2 and info["n_labelled_defect_masks"] == 2


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(8, 0, seed=3, size=32)
    defects = make_records(0, 2, seed=4, size=40)
    straight = create_detector("supersimplenet", **{**SMALL, "epochs": 3}).fit(records, progress=False, abnormal=defects)
    path = tmp_path / "ssn.ckpt"
    create_detector("supersimplenet", **SMALL, checkpoint=str(path)).fit(records, progress=False, abnormal=defects)
    resumed = create_detector("supersimplenet", **{**SMALL, "epochs": 3}, checkpoint=str(path)).fit(
        records, progress=False, abnormal=defects)
    assert resumed.history_["loss"] == pytest.approx(straight.history_["loss"], rel=1e-5)
    for network in ("adaptor_", "segmentation_", "classifier_"):
        for (name, a), b in zip(getattr(straight, network).state_dict().items(),
                                getattr(resumed, network).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_settings_fail_at_construction():
    with pytest.raises(ConfigError, match="classifier_kernel"):
        create_detector("supersimplenet", classifier_kernel=4)
    with pytest.raises(ConfigError, match="perlin_scales"):
        create_detector("supersimplenet", perlin_scales=[3, 3])


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_export_agrees_with_torch(tmp_path):
    detector = create_detector("supersimplenet", **{**SMALL, "image_size": 48, "epochs": 1})
    assert_export_parity(detector, make_records(6, 0, seed=1, size=48), make_records(2, 2, seed=6, size=48), tmp_path)


def test_fit_run_refuses_labelled_defect_folders_for_a_detector_without_a_supervised_setting(tmp_path):
    from PIL import Image

    from anomalens.data.sources import DatasetSource
    from anomalens.workflow.fit import fit_run

    for name, records in (("good", make_records(6, 0, seed=1)), ("scratch", make_records(0, 2, seed=2))):
        (tmp_path / name).mkdir()
        for i, record in enumerate(records):
            Image.fromarray(record.source).save(tmp_path / name / f"{i}.png")
    source = DatasetSource(tmp_path / "good", abnormal_dirs=(tmp_path / "scratch",))
    with pytest.raises(ConfigError, match="padim learns from normal images only"):
        fit_run("padim", source, tmp_path / "run", params=TINY_PARAMS["padim"], progress=False)
    assert not (tmp_path / "run").exists()  # nothing written
