"""The cross-fitted threshold (issue 16 item 1), its warnings (item 2) and the normalised score (item 3).

The strongest proof that a score is out of fold: it equals the score of a model refitted without the fold.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from anomalens import ConfigError, DecisionRule, create_detector, load_detector
from tests.conftest import TINY_PARAMS, make_records


@pytest.fixture(scope="module")
def train12():
    return make_records(12, 0, seed=3)


def _refit_scores(name: str, params: dict, records: list, held: list) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of ``held`` from a model fitted on ``records`` alone (no threshold work)."""
    detector = create_detector(name, **{**params, "threshold_folds": 1, "holdout_fraction": 0})
    torch.manual_seed(detector.seed)
    detector._fit(records, progress=False)
    return detector._score(held, progress=False)


def _out_of_fold(name: str, params: dict, records: list) -> tuple:
    """(detector, the records in fit's order, folds, out-of-fold scores, maps), as ``fit`` makes them."""
    detector = create_detector(name, **params)
    kept, held = detector.normal_scores.holdout_split(records)
    parts = [kept] if held is kept else [kept, held]
    k = detector.normal_scores.fold_count(len(records))
    folds = detector.normal_scores.folds(len(records), k)
    torch.manual_seed(detector.seed)
    scores, maps = detector._fit_and_score_out_of_fold(parts, folds, progress=False)
    return detector, [r for part in parts for r in part], folds, scores, maps


@pytest.mark.parametrize("folds", [3, 0])  # k folds, and leave-one-out (closed form)
def test_padim_out_of_fold_scores_equal_a_model_refitted_without_the_fold(train12, folds):
    params = {**TINY_PARAMS["padim"], "threshold_folds": folds}
    detector, ordered, parts, scores, maps = _out_of_fold("padim", params, train12)
    assert len(parts) == (3 if folds else 12) and sorted(np.concatenate(parts)) == list(range(12))
    checked = parts if folds else parts[:3]  # leave-one-out: three of the twelve refits suffice
    for fold in checked:
        others = [r for i, r in enumerate(ordered) if i not in set(fold)]
        expected_scores, expected_maps = _refit_scores("padim", params, others, [ordered[i] for i in fold])
        # Float32 whiteners of covariances with 11 images in d = 100 (condition ~1e4), computed two ways.
        np.testing.assert_allclose(scores[fold], expected_scores, rtol=1e-3)
        np.testing.assert_allclose(maps[fold], expected_maps, rtol=1e-3, atol=1e-3 * float(expected_maps.max()))
    # The final Gaussians are those of every image: the very model a plain fit on all of them gives.
    plain = create_detector("padim", **params)
    plain._prepare()
    kept, held = plain.normal_scores.holdout_split(train12)
    plain._finish(plain._accumulate(held, progress=False, sums=plain._accumulate(kept, progress=False)))
    torch.testing.assert_close(detector.mean_, plain.mean_, rtol=0, atol=0)
    torch.testing.assert_close(detector.whitener_, plain.whitener_, rtol=0, atol=0)


def patchcore_fold_bank(detector, features: torch.Tensor, patch_image: torch.Tensor, fold_images) -> torch.Tensor:
    """The bank of ``fold_images``, brute force from its definition (``PatchCore.fold_banks``): the final bank
    less the fold's entries; then, greedily (farthest first), the other images' patches whose nearest final-bank
    entry was the fold's, until each is as near the bank as that entry's farthest patch was to it."""
    bank, origin = detector.memory_bank_.double(), detector.bank_origin_
    x = features.double()
    dist = torch.cdist(x, bank)
    nearest, owner = dist.min(1)
    radius = torch.zeros(len(bank), dtype=torch.float64).scatter_reduce(0, owner, nearest, "amax")
    in_fold = torch.isin(origin, torch.as_tensor(fold_images))
    centres = bank[~in_fold]
    orphans = (in_fold[owner] & ~torch.isin(patch_image, torch.as_tensor(fold_images))).nonzero().squeeze(1)
    limit = radius[owner[orphans]]
    while len(orphans):
        gap = torch.cdist(x[orphans], centres).min(1).values if len(centres) else torch.full((len(orphans),), math.inf)
        open_gap = torch.where(gap > limit, gap, torch.zeros_like(gap))
        if float(open_gap.max()) == 0:
            break
        centres = torch.cat([centres, x[orphans[int(open_gap.argmax())]].unsqueeze(0)])
    return centres.float()


@pytest.mark.parametrize("coreset_fraction", [1.0, 0.25])
def test_patchcore_out_of_fold_scores_are_those_of_the_fold_bank(train12, coreset_fraction):
    """Each fold is scored by a model whose bank is the final bank less the fold's entries, its holes filled
    from the other folds' patches (``fold_banks``): checked against that bank built brute force and scored by
    the ordinary scoring path."""
    params = {**TINY_PARAMS["patchcore"], "threshold_folds": 3, "coreset_fraction": coreset_fraction}
    detector, ordered, folds, scores, maps = _out_of_fold("patchcore", params, train12)
    torch.manual_seed(detector.seed)
    features = detector._training_patches(ordered, progress=False)
    patch_image = detector.patch_origin(len(ordered))
    final = detector.memory_bank_
    for fold in folds:
        bank = patchcore_fold_bank(detector, features, patch_image, fold)
        from_fold = torch.isin(detector.bank_origin_, torch.as_tensor(fold))
        assert len(bank) >= int((~from_fold).sum())  # the final bank less the fold's entries, and its fills
        if coreset_fraction == 1:  # every patch in the bank: nothing to fill
            assert len(bank) == int((~from_fold).sum())
        scorer = create_detector("patchcore", **params)
        torch.manual_seed(scorer.seed)
        scorer.extractor_, scorer.grid_size_, scorer.memory_bank_ = detector.extractor_, detector.grid_size_, bank
        expected = scorer._score([ordered[i] for i in fold], progress=False)
        np.testing.assert_allclose(scores[fold], expected[0], rtol=1e-4)
        np.testing.assert_allclose(maps[fold], expected[1], rtol=1e-4, atol=1e-5 * float(expected[1].max()))
    torch.testing.assert_close(detector.memory_bank_, final, rtol=0, atol=0)  # the final bank is untouched


def test_patchcore_fold_banks_are_seeded(train12):
    params = {**TINY_PARAMS["patchcore"], "threshold_folds": 3}
    first, second = (_out_of_fold("patchcore", params, train12)[3] for _ in range(2))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_fit_scores_are_those_of_the_model_on_every_image_and_only_the_threshold_comes_from_the_folds(name, train_records,
                                                                                                     test_records):
    """The fitted model is the one the hold-out fit made before cross-fitting existed (same images, same order):
    only the threshold differs."""
    params = TINY_PARAMS[name]
    crossfit = create_detector(name, **params).fit(train_records, progress=False)
    holdout = create_detector(name, **params, threshold_folds=1).fit(train_records, progress=False)
    np.testing.assert_array_equal(crossfit.score(test_records, progress=False)[0], holdout.score(test_records, progress=False)[0])
    assert crossfit.decision_.evidence["n_normal"] == len(train_records)
    assert {k: v for k, v in holdout.decision_.evidence.items() if k != "normal_scores"} == {"false_alarm_rate": 0.01, "n_normal": 2, "folds": 1}


def test_the_threshold_is_the_quantile_of_every_out_of_fold_score(train12):
    rate = 0.2
    det = create_detector("padim", **TINY_PARAMS["padim"], threshold_folds=4, false_alarm_rate=rate)
    det.fit(train12, progress=False)
    _, _, folds, scores, maps = _out_of_fold("padim", {**TINY_PARAMS["padim"], "threshold_folds": 4}, train12)
    assert {k: v for k, v in det.decision_.evidence.items() if k != "normal_scores"} == {"false_alarm_rate": rate, "n_normal": 12, "folds": 4}
    assert det.threshold_ == pytest.approx(float(np.quantile(scores, 1 - rate, method="higher")), rel=1e-6)
    assert det.decision_.score_reference == pytest.approx(float(np.median(scores)), rel=1e-6)
    assert "4 folds" in det.decision_.description and "false-alarm rate 0.2" in det.decision_.description
    assert (scores > det.threshold_).mean() <= rate  # the training images themselves: at most the rate flagged
    leave_one_out = create_detector("padim", **TINY_PARAMS["padim"]).fit(train12, progress=False)
    assert leave_one_out.decision_.evidence["folds"] == 12 and "leave-one-out" in leave_one_out.decision_.description


def test_folds_are_a_seeded_partition():
    det = create_detector("patchcore", **TINY_PARAMS["patchcore"])
    folds = det.normal_scores.folds(23, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23)) and {len(f) for f in folds} == {4, 5}
    assert all((a == b).all() for a, b in zip(folds, det.normal_scores.folds(23, 5)))
    other = create_detector("patchcore", **TINY_PARAMS["patchcore"], seed=1).normal_scores.folds(23, 5)
    assert any((a != b).any() for a, b in zip(folds, other))
    assert det.normal_scores.fold_count(23) == 10 and det.normal_scores.fold_count(4) == 4
    assert create_detector("padim").normal_scores.fold_count(23) == 23  # padim: leave-one-out by default
    assert create_detector("padim").normal_scores.fold_count(2) == 0  # one image left: the hold-out path instead
    assert create_detector("spade").normal_scores.fold_count(100) == 0  # spade does not cross-fit
    assert create_detector("patchcore", threshold_folds=1).normal_scores.fold_count(100) == 0


# ------------------------------------------------------------------ threshold_quantile → false_alarm_rate


def test_threshold_quantile_is_a_deprecated_spelling_of_the_false_alarm_rate(caplog):
    with caplog.at_level("WARNING", logger="anomalens"):
        det = create_detector("padim", threshold_quantile=0.995)
    assert det.params["false_alarm_rate"] == 0.005 and "threshold_quantile" not in det.params
    assert "threshold_quantile is deprecated" in caplog.text
    with pytest.raises(ConfigError, match="not both"):
        create_detector("padim", threshold_quantile=0.99, false_alarm_rate=0.01)
    with pytest.raises(ConfigError, match="threshold_quantile"):
        create_detector("padim", threshold_quantile=1.5)


def _as_saved_before_crossfitting(run) -> None:
    """Rewrite a run as the code before cross-fitting saved it: threshold_quantile in both files' params,
    no false_alarm_rate / threshold_folds, the old evidence and no score_reference."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from anomalens.persistence import file_sha256

    path = run / "detector.json"
    config = json.loads(path.read_text())
    for params in (config["params"],):
        params.pop("false_alarm_rate")
        params.pop("threshold_folds")
        params["threshold_quantile"] = 0.99
    config["decision"].pop("score_reference")
    config["decision"]["evidence"] = {"quantile": 0.99, "n_normal": 2}
    config["format_version"] = 2  # before the decision rule was recorded twice (decision_sha256)
    config.pop("decision_sha256")
    weights = run / "weights.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    metadata.pop("format_version")
    old = json.loads(metadata["params"])
    old.pop("false_alarm_rate")
    old.pop("threshold_folds")
    old["threshold_quantile"] = 0.99
    metadata["params"] = json.dumps(old, sort_keys=True)
    save_file(tensors, str(weights), metadata=metadata)
    config["weights_sha256"] = file_sha256(weights)
    path.write_text(json.dumps(config))


def test_a_run_saved_with_threshold_quantile_loads_with_the_same_decision(train_records, test_records, tmp_path):
    det = create_detector("padim", **TINY_PARAMS["padim"], threshold_folds=1).fit(train_records, progress=False)
    det.save(tmp_path / "run")
    _as_saved_before_crossfitting(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.params["false_alarm_rate"] == 0.01 and loaded.params["threshold_folds"] == 1
    assert "threshold_quantile" not in loaded.params
    assert loaded.decision_.image_threshold == det.threshold_ and loaded.decision_.score_reference is None
    result = loaded.predict(test_records, progress=False)
    np.testing.assert_array_equal(result.labels, det.predict(test_records, progress=False).labels)
    assert ((result.normalized_scores > 0.5) == (result.scores > loaded.threshold_)).all()
    # A refit with the loaded parameters is the fit that made the run (hold-out threshold included).
    again = create_detector("padim", **{**loaded.params, "device": "cpu"}).fit(train_records, progress=False)
    assert again.threshold_ == pytest.approx(det.threshold_, rel=1e-6)
    # Calibrating and saving the decision rewrites the JSON in today's names; it still loads.
    loaded.calibrate(test_records, progress=False)
    loaded.save_decision(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "detector.json").read_text())["params"]
    assert "threshold_quantile" not in saved and saved["false_alarm_rate"] == 0.01
    assert load_detector(tmp_path / "run").decision_ == loaded.decision_


def test_a_changed_rate_in_an_old_run_is_still_caught(train_records, tmp_path):
    from anomalens import ModelFileError

    det = create_detector("padim", **TINY_PARAMS["padim"], threshold_folds=1).fit(train_records, progress=False)
    det.save(tmp_path / "run")
    _as_saved_before_crossfitting(tmp_path / "run")
    path = tmp_path / "run" / "detector.json"
    config = json.loads(path.read_text())
    config["params"]["threshold_quantile"] = 0.9
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="false_alarm_rate"):
        load_detector(tmp_path / "run")


# ------------------------------------------------------------------ warnings where the decision is weak


def test_a_threshold_on_few_normal_scores_warns(caplog, train_records):
    with caplog.at_level("WARNING", logger="anomalens"):
        create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    assert "rests on only 20 normal score(s)" in caplog.text and "fewer than 30" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="anomalens"):
        create_detector("patchcore", **TINY_PARAMS["patchcore"]).fit(make_records(30, 0, seed=5), progress=False)
    assert "rests on" not in caplog.text  # 30 out-of-fold scores: no warning


def test_calibration_data_without_defects_warns(caplog, train_records):
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    normals = make_records(6, 0, seed=9)
    with caplog.at_level("WARNING", logger="anomalens"):
        info = det.calibrate(normals, progress=False)
    assert "no defective image (6 normal)" in caplog.text and "no anomalous image" in info["note"]
    assert det.decision_.evidence["false_alarm_rate"] == 0.01


# ------------------------------------------------------------------ normalised scores


def test_normalized_scores_are_monotone_with_the_threshold_at_one_half(train_records, test_records):
    det = create_detector("patchcore", **TINY_PARAMS["patchcore"]).fit(train_records, progress=False)
    rule = det.decision_
    result = det.predict(test_records, progress=False)
    order = np.argsort(result.scores)
    assert (np.diff(result.normalized_scores[order]) >= 0).all()
    assert ((result.normalized_scores > 0.5) == result.labels.astype(bool)).all()
    assert rule.normalized(np.array([rule.image_threshold]))[0] == 0.5
    assert rule.normalized(np.array([rule.score_reference]))[0] == pytest.approx(0.05)
    assert ((result.normalized_scores >= 0) & (result.normalized_scores <= 1)).all()


def test_normalized_scores_in_degenerate_cases():
    flat = DecisionRule.from_normal_scores(np.full(8, 3.0), None, 0.01)  # all normal scores equal
    values = flat.normalized(np.array([-1e308, 2.999, 3.0, 3.001, 1e308]))
    assert np.isfinite(values).all() and values[2] == 0.5 and (np.diff(values) >= 0).all()
    assert values[1] < 0.5 < values[3]
    old = DecisionRule(image_threshold=10.0, source="quantile", description="a run saved before score_reference")
    assert old.normalized(np.array([10.0]))[0] == 0.5 and old.normalized(np.array([9.0, 11.0])).tolist() == [0.0, 1.0]
    below = DecisionRule(image_threshold=1.0, source="f1", description="x", score_reference=2.0)  # t below the median
    assert below.normalized(np.array([1.0]))[0] == 0.5
    rule = DecisionRule.from_normal_scores(np.arange(100.0), None, 0.01)
    assert DecisionRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_padim_leave_one_out_from_kept_embeddings_equals_the_second_feature_pass(train12, monkeypatch):
    """Kept embeddings (the default) and a second pass (beyond the memory limit) give the same scores."""
    import anomalens.models.padim as padim_module

    params = {**TINY_PARAMS["padim"], "threshold_folds": 0}
    _, _, _, kept_scores, kept_maps = _out_of_fold("padim", params, train12)
    calls = []
    monkeypatch.setattr(padim_module, "LEAVE_ONE_OUT_KEEP_BYTES", 1)  # nothing fits: the second pass
    original = padim_module.PaDiM.embed
    monkeypatch.setattr(padim_module.PaDiM, "embed", lambda self, images: calls.append(len(images)) or original(self, images))
    _, _, _, pass_scores, pass_maps = _out_of_fold("padim", params, train12)
    assert sum(calls) == 2 * len(train12)  # the accumulating pass and the leave-one-out pass
    # The second pass rounds A's whiteners to float32 before use, the kept path uses them in float64: with
    # 12 images in d = 100 (condition ~1e4) that is the tolerance of the refit comparison above.
    np.testing.assert_allclose(kept_scores, pass_scores, rtol=1e-3)
    np.testing.assert_allclose(kept_maps, pass_maps, rtol=1e-3, atol=1e-3 * float(pass_maps.max()))
