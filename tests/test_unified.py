"""One model for many products: fit --unified on a dataset root, test per category and overall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens.cli import main
from anomalens.errors import ConfigError, DataError

FIT = ["--image-size", "48", "--batch-size", "8", "--device", "cpu", "-q", "-p", "n_features=20"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from anomalens.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("products")
    make_synthetic_dataset(root, ["brick", "coffee"], image_size=48, n_train=10, n_test_good=4, n_test_defect=4)
    return root


@pytest.fixture(scope="module")
def unified_run(root, tmp_path_factory, one_torch_thread):
    run = tmp_path_factory.mktemp("runs") / "unified"
    assert main(["fit", "padim", str(root), "--unified", "-o", str(run), *FIT]) == 0
    return run


def test_the_unified_dataset_holds_every_category_with_distinct_names(root):
    from anomalens import load_unified

    dataset = load_unified(root)
    assert len(dataset.train) == 20 and len(dataset.test) == 16
    assert {r.category for r in dataset.train} == {"brick", "coffee"}
    names = [r.name for r in dataset.train + dataset.test]
    assert len(set(names)) == len(names)
    assert all(r.name.startswith(r.category + "/") for r in dataset.test)
    # a defect type names its product; normals stay "good"
    assert {r.defect_type.split("/")[0] for r in dataset.test if r.label == 1} == {"brick", "coffee"}
    assert {r.defect_type for r in dataset.test if r.label == 0} == {"good"}


def test_fit_records_the_categories_and_sees_every_training_image(unified_run):
    info = json.loads((unified_run / "run.json").read_text())
    assert info["categories"] == ["brick", "coffee"]
    assert info["n_train_images"] == 20
    assert info["data"].endswith("--unified")


def test_test_reports_each_category_and_the_whole(unified_run, root, capsys):
    from anomalens.metrics import evaluate

    assert main(["test", str(unified_run), str(root), "-q"]) == 0  # the run says it is unified
    out = capsys.readouterr().out
    assert "brick:" in out and "coffee:" in out
    metrics = json.loads((unified_run / "metrics.json").read_text())
    assert metrics["n_images"] == 16
    assert set(metrics["per_category"]) == {"brick", "coffee"}
    scores = {}
    with open(unified_run / "scores.csv", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
        for line in f:
            row = dict(zip(header, line.strip().split(",")))
            scores[row["name"]] = (float(row["score"]), int(row["label"]))
    for category, figures in metrics["per_category"].items():
        rows = [v for k, v in scores.items() if k.startswith(category + "/")]
        assert figures["n_images"] == len(rows) == 8
        s = np.array([v[0] for v in rows])
        y = np.array([v[1] for v in rows])
        assert figures["image_auroc"] == pytest.approx(evaluate(y, s, metrics["threshold"])["image_auroc"])


def test_one_category_of_a_unified_run_tests_as_that_category(unified_run, root, tmp_path):
    out = tmp_path / "brick-only"
    assert main(["test", str(unified_run), str(root / "brick"), "-o", str(out), "--no-report", "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 8 and "per_category" not in metrics


def test_unified_needs_a_root_of_several_categories(root, tmp_path, capsys):
    from anomalens import load_unified

    with pytest.raises(DataError, match="one category"):
        load_unified(_one_category_root(root, tmp_path))
    assert main(["fit", "padim", str(root / "brick"), "--unified", "-o", str(tmp_path / "r"), *FIT]) == 2
    assert "--unified" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _one_category_root(root, tmp_path):
    import shutil

    single = tmp_path / "single"
    shutil.copytree(root / "brick", single / "brick")
    return single


def test_unified_does_not_combine_with_plain_folder_options(root):
    from anomalens.data import DatasetSource

    with pytest.raises(ConfigError, match="--unified"):
        DatasetSource(path=root, layout="folder", unified=True)


def test_the_python_api_fits_and_tests_a_unified_dataset(root, tmp_path, one_torch_thread):
    import anomalens

    dataset = anomalens.load_unified(root)
    run = tmp_path / "api"
    anomalens.fit_run("padim", dataset, run, {"image_size": 48, "n_features": 20, "device": "cpu"}, progress=False)
    metrics = anomalens.test_run(run, dataset, progress=False, report=False)
    assert set(metrics["per_category"]) == {"brick", "coffee"}


def test_fit_run_takes_a_configured_detector(root, tmp_path, one_torch_thread):
    import anomalens

    detector = anomalens.create_detector("padim", image_size=48, n_features=20, device="cpu")
    fitted = anomalens.fit_run(detector, root / "brick", tmp_path / "run", progress=False)
    assert fitted is detector and detector.is_fitted
    assert anomalens.load_detector(tmp_path / "run").params == detector.params
    with pytest.raises(ConfigError, match="already configured"):
        anomalens.fit_run(detector, root / "brick", tmp_path / "other", {"n_features": 10}, progress=False)


def test_testing_on_other_categories_than_the_fit_says_which(unified_run, tmp_path, capsys):
    from anomalens.data import make_synthetic_dataset

    other = tmp_path / "other"
    make_synthetic_dataset(other, ["brick", "grass"], image_size=48, n_train=2, n_test_good=2, n_test_defect=2)
    out = tmp_path / "scored"
    assert main(["test", str(unified_run), str(other), "-o", str(out), "--no-report", "-q"]) == 0
    err = capsys.readouterr().err
    assert "no test images of coffee" in err and "grass: not among the run's categories" in err
    assert set(json.loads((out / "metrics.json").read_text())["per_category"]) == {"brick", "grass"}
