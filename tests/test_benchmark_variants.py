"""``anomalens benchmark -m LABEL=NAME``: one detector benchmarked under several settings, each row under its
own label, compared with the paired tests as two detectors are."""

from __future__ import annotations

import json

import pytest

from anomalens.benchmarking import BenchmarkPlan, parse_detectors, parse_overrides, synthetic_categories
from anomalens.cli import main
from anomalens.errors import ConfigError


def test_labels_name_the_registry_detector_and_take_their_own_settings(tmp_path):
    labels, models = parse_detectors(["padim", "padim-big=padim", " coarse = patchcore "])
    assert labels == ["padim", "padim-big", "coarse"] and models == {"padim-big": "padim", "coarse": "patchcore"}
    categories = synthetic_categories(["brick"], tmp_path / "data", 32, {"n_train": 4, "n_test_good": 2, "n_test_defect": 2})
    plan = BenchmarkPlan(labels, categories, overrides=parse_overrides(["padim-big.n_features=50"]), image_size=32,
                         models=models)
    plan.check()
    jobs = {j.detector: j.worker_spec() for j in plan.jobs()}
    assert jobs["padim"]["model"] == "padim" and "n_features" not in jobs["padim"]["params"]
    assert jobs["padim-big"]["model"] == "padim" and jobs["padim-big"]["params"]["n_features"] == 50
    assert jobs["coarse"]["model"] == "patchcore"
    assert plan.config()["models"] == {"padim": "padim", "padim-big": "padim", "coarse": "patchcore"}
    assert "models" not in BenchmarkPlan(["padim"], categories).config()  # older folders still resume


@pytest.mark.parametrize("given, says", [
    (["a.b=padim"], "expected NAME or LABEL=NAME"),
    (["x="], "expected NAME or LABEL=NAME"),
])
def test_a_malformed_label_is_refused_in_one_line(given, says):
    with pytest.raises(ConfigError, match=says):
        parse_detectors(given)


def test_an_unknown_detector_behind_a_label_or_a_label_given_twice_is_refused(tmp_path, capsys):
    tiny = ["--synthetic", "brick", "--image-size", "32", "--synthetic-images", "4", "2", "2", "-o", str(tmp_path / "b")]
    assert main(["benchmark", "-m", "x=nosuch", *tiny, "-q"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(["benchmark", "-m", "x=padim", "-m", "x=patchcore", *tiny, "-q"]) == 2
    assert "given twice" in capsys.readouterr().err


def test_two_settings_of_one_detector_are_two_rows_and_one_paired_comparison(tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "-m", "padim", "-m", "padim50=padim", "-p", "padim50.n_features=50",
                 "--synthetic", "brick", "--image-size", "32", "--synthetic-images", "8", "6", "6", "--threads", "1",
                 "--bootstrap", "100", "-o", str(out), "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    jobs = {j["detector"]: j for j in results["jobs"]}
    assert set(jobs) == {"padim", "padim50"} and all(j["status"] == "ok" for j in jobs.values())
    assert jobs["padim50"]["params"]["n_features"] == 50 and "n_features" not in jobs["padim"]["params"]
    assert {frozenset((c["a"], c["b"])) for c in results["comparisons"]} == {frozenset(("padim", "padim50"))}
    board = (out / "leaderboard.md").read_text()
    assert "| padim50 |" in board and "| padim |" in board


def test_a_tracked_variant_logs_its_label_and_the_registry_name_it_runs(tmp_path):
    from anomalens.benchmarking.plan import Category, Job
    from anomalens.benchmarking.tracking import track_job

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    recorder = Recorder()
    job = Job("padim-big", Category("brick", str(tmp_path)), 0, {"n_features": 50}, model="padim")
    track_job(recorder, job, {"status": "ok", "image_auroc": 0.9, "params": {"n_features": 50}}, tmp_path)
    params = next(args[0] for name, args, _ in recorder.calls if name == "log_params")
    assert params["detector"] == "padim-big" and params["model"] == "padim" and params["param.n_features"] == 50
    plain = Job("padim", Category("brick", str(tmp_path)), 0, {})
    track_job(recorder, plain, {"status": "ok"}, tmp_path)
    assert [args[0] for name, args, _ in recorder.calls if name == "log_params"][-1]["model"] == "padim"
