"""The ensemble detector: members' normalised scores combined, its own out-of-fold threshold, one graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens.cli import main
from anomalens.errors import ConfigError

FIT = ["--image-size", "48", "--batch-size", "8", "--device", "cpu", "-q"]
FAST_PATCHCORE = '{"patchcore": {"threshold_folds": 1}}'


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    from anomalens.data import make_synthetic_category

    return make_synthetic_category(tmp_path_factory.mktemp("data"), source="brick", n_train=10, n_test_good=4,
                                   n_test_defect=4, image_size=48, seed=0)


@pytest.fixture(scope="module")
def member_runs(category, tmp_path_factory, one_torch_thread):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["fit", "padim", str(category), "-o", str(runs / "padim"), *FIT, "-p", "n_features=20"]) == 0
    assert main(["fit", "patchcore", str(category), "-o", str(runs / "patchcore"), *FIT, "-p", "threshold_folds=1"]) == 0
    return runs


@pytest.fixture(scope="module")
def ensemble_run(member_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "ensemble"
    assert main(["ensemble", str(member_runs / "padim"), str(member_runs / "patchcore"), "-o", str(out),
                 "-p", "threshold_folds=2", "-q", "--device", "cpu"]) == 0
    return out


def test_the_ensemble_is_built_from_the_runs_settings_and_data(ensemble_run, member_runs, category):
    config = json.loads((ensemble_run / "detector.json").read_text())
    params = config["params"]
    assert params["members"] == "padim,patchcore" and params["combine"] == "mean"
    members = json.loads(params["member_params"])
    assert members["padim"]["n_features"] == 20 and members["patchcore"]["threshold_folds"] == 1
    assert params["image_size"] == 48
    assert json.loads((ensemble_run / "run.json").read_text())["data"] == str(category)
    assert config["decision"]["evidence"]["folds"] == 2  # its own out-of-fold threshold


def test_the_score_is_the_mean_of_the_members_normalised_scores(ensemble_run, member_runs, category):
    import anomalens
    from anomalens.data import load_dataset

    ensemble = anomalens.load_detector(ensemble_run)
    test = load_dataset(category).test
    result = ensemble.predict(test, progress=False)
    normalised = [member.decision_.normalized(member.predict(test, progress=False).scores) for member in ensemble.members_]
    np.testing.assert_allclose(result.scores, np.mean(normalised, axis=0), rtol=1e-5, atol=1e-6)
    assert result.maps.shape == (len(test), 48, 48)
    labels = np.array([r.label for r in test])
    assert result.scores[labels == 1].mean() > result.scores[labels == 0].mean()


def test_max_combines_by_the_largest_normalised_score(category, tmp_path, one_torch_thread):
    import anomalens
    from anomalens.data import load_dataset

    dataset = load_dataset(category)
    ensemble = anomalens.create_detector("ensemble", image_size=48, device="cpu", threshold_folds=2, combine="max",
                                         member_params=FAST_PATCHCORE)
    ensemble.fit(dataset.train, progress=False)
    scores = ensemble.predict(dataset.test, progress=False).scores
    normalised = [m.decision_.normalized(m.predict(dataset.test, progress=False).scores) for m in ensemble.members_]
    np.testing.assert_allclose(scores, np.max(normalised, axis=0), rtol=1e-5, atol=1e-6)


def test_test_and_predict_run_on_an_ensemble_run(ensemble_run, category, tmp_path):
    assert main(["test", str(ensemble_run), str(category), "--no-report", "-q"]) == 0
    metrics = json.loads((ensemble_run / "metrics.json").read_text())
    assert metrics["detector"] == "ensemble" and metrics["image_auroc"] > 0.5
    out = tmp_path / "pred"
    assert main(["predict", str(ensemble_run), str(category / "test"), "-o", str(out), "-q"]) == 0
    assert (out / "predictions.csv").read_text().count("\n") == 9  # header + 8 images


@pytest.mark.parametrize("params, problem", [
    ({"members": "padim"}, "two or more"),
    ({"members": "padim,padim"}, "two or more different"),
    ({"members": "padim,fine=padim,fine=patchcore"}, "'fine' is given twice"),
    ({"members": "padim,=patchcore"}, "not NAME or LABEL=NAME"),
    ({"members": "padim,fine=patchcore", "member_params": '{"patchcore": {}}'}, "not members"),
    ({"members": "padim,mahalanobis"}, "mahalanobis gives no anomaly map"),
    ({"members": "padim,nosuch"}, "unknown detector 'nosuch'"),
    ({"member_params": "{not json"}, "not JSON"),
    ({"member_params": '{"spade": {}}'}, "not members"),
    ({"member_params": '{"padim": {"image_size": 64}}'}, "the ensemble's"),
    ({"members": "padim,mlp_ae"}, "different channels"),
])
def test_bad_members_are_refused_in_one_line(params, problem):
    import anomalens

    with pytest.raises(ConfigError, match=problem):
        anomalens.create_detector("ensemble", device="cpu", **params)


def test_runs_that_disagree_on_the_input_are_refused(member_runs, category, tmp_path, capsys):
    other = tmp_path / "padim64"
    assert main(["fit", "padim", str(category), "-o", str(other), "--image-size", "64", "--device", "cpu", "-q"]) == 0
    capsys.readouterr()
    assert main(["ensemble", str(other), str(member_runs / "patchcore"), "-o", str(tmp_path / "e"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "image_size" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_two_settings_of_one_detector_are_two_labelled_members(category, one_torch_thread):
    import anomalens
    from anomalens.data import load_dataset

    dataset = load_dataset(category)
    ensemble = anomalens.create_detector(
        "ensemble", members="patchcore,l12=patchcore", image_size=48, device="cpu", threshold_folds=2,
        member_params='{"patchcore": {"threshold_folds": 1}, "l12": {"threshold_folds": 1, "layers": [1, 2]}}')
    ensemble.fit(dataset.train, progress=False)
    first, second = ensemble.members_
    assert first.name == second.name == "patchcore"
    assert list(first.params["layers"]) == [2, 3] and list(second.params["layers"]) == [1, 2]
    result = ensemble.predict(dataset.test, progress=False)
    normalised = [m.decision_.normalized(m.predict(dataset.test, progress=False).scores) for m in ensemble.members_]
    np.testing.assert_allclose(result.scores, np.mean(normalised, axis=0), rtol=1e-5, atol=1e-6)


def test_a_second_run_of_one_detector_is_labelled_by_its_folder(member_runs, category, tmp_path):
    from anomalens.workflow.ensemble import ensemble_params

    other = tmp_path / "padim-wide"
    assert main(["fit", "padim", str(category), "-o", str(other), *FIT, "-p", "n_features=40"]) == 0
    params, data = ensemble_params([member_runs / "padim", other, member_runs / "patchcore"])
    assert params["members"] == "padim,padim-wide=padim,patchcore" and data == str(category)
    settings = json.loads(params["member_params"])
    assert settings["padim"]["n_features"] == 20 and settings["padim-wide"]["n_features"] == 40
