"""Experiment tracking (``--track``): what fit and test log is read back from a real local MLflow store
(``MlflowClient``) and from TensorBoard's event files (``EventAccumulator``), and compared with the run's
own files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from anomalens.cli import main
from anomalens.errors import ConfigError
from anomalens.provenance import environment
from anomalens.tracking import NullTracker, check_track_spec, flatten, mlflow_uri, open_tracker
from tests.conftest import FIT

# Found, not imported: MLflow and TensorBoard (1.5 s) load in the tests that read their stores, not in every
# xdist worker that collects this file.
for _extra in ("mlflow", "tensorboard"):
    if importlib.util.find_spec(_extra) is None:
        pytest.skip(f"the research extra ({_extra}) is not installed", allow_module_level=True)


def MlflowClient(**kwargs):  # noqa: N802 - MLflow's reading client, imported when first used
    from mlflow.tracking import MlflowClient as client

    return client(**kwargs)


def EventAccumulator(folder: str):  # noqa: N802 - TensorBoard's event reader, imported when first used
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator as accumulator

    return accumulator(folder)


@pytest.fixture(autouse=True)
def _file_store_allowed(monkeypatch):
    # the tracker allows MLflow's file store for itself; the reading client of a test needs the same
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _runs(store: Path) -> dict[str, object]:
    """{stage: run} of the experiment 'anomalens' in the file store ``store``."""
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("anomalens")
    return {run.data.tags["anomalens.stage"]: run for run in client.search_runs([experiment.experiment_id])}


def _artifacts(store: Path, run) -> set[str]:
    return {a.path for a in MlflowClient(tracking_uri=store.resolve().as_uri()).list_artifacts(run.info.run_id)}


def test_fit_and_test_log_parameters_metrics_report_and_provenance_to_mlflow(category, tmp_path):
    store, run_dir = tmp_path / "store", tmp_path / "run"
    assert main(["fit", "padim", str(category), "-o", str(run_dir), "-p", "n_features=20", "--track", f"mlflow:{store}",
                 *FIT]) == 0
    assert main(["test", str(run_dir), str(category), "--track", f"mlflow:{store}", "-q"]) == 0

    runs = _runs(store)
    assert set(runs) == {"fit", "test"}
    fit, test = runs["fit"], runs["test"]
    saved = json.loads((run_dir / "detector.json").read_text())
    for run in (fit, test):
        assert run.info.status == "FINISHED"
        # every hyper-parameter of the saved run, as text
        assert run.data.params["n_features"] == "20" and run.data.params["layers"] == "[1, 2, 3]"
        assert set(saved["params"]) <= set(run.data.params)
        assert run.data.params["data"] == str(category) and run.data.params["input_size"] == "[64, 64]"
        tags = run.data.tags
        assert tags["anomalens.data"] == str(category)
        assert tags["anomalens.run_folder"] == str(run_dir.resolve())
        assert tags["anomalens.command"] == environment()["command"]  # this process's command line
    from anomalens import __version__

    assert fit.data.tags["anomalens.version"] == __version__
    info = json.loads((run_dir / "run.json").read_text())
    assert fit.data.metrics["fit_seconds"] == pytest.approx(info["fit_seconds"])
    assert fit.data.metrics["threshold"] == pytest.approx(info["threshold"])
    assert _artifacts(store, fit) == {"run.json", "detector.json"}

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert test.data.metrics["image_auroc"] == pytest.approx(metrics["image_auroc"])
    assert test.data.metrics["threshold"] == pytest.approx(metrics["threshold"])
    defect = next(iter(metrics["per_defect_type"]))
    assert test.data.metrics[f"per_defect_type.{defect}.image_auroc"] == pytest.approx(
        metrics["per_defect_type"][defect]["image_auroc"])
    assert {"report.html", "metrics.json", "scores.csv", "roc.png"} <= _artifacts(store, test)
    assert test.data.tags["mlflow.parentRunId"] == fit.info.run_id  # the test nests under its fit


def test_a_trained_detector_logs_its_training_curve_to_tensorboard(category, tmp_path):
    logs, run_dir = tmp_path / "tb", tmp_path / "run"
    assert main(["fit", "mlp_ae", str(category), "-o", str(run_dir), "--image-size", "28", "-p", "epochs=3",
                 "--track", f"tensorboard:{logs}", "--device", "cpu", "-q"]) == 0
    history = json.loads((run_dir / "detector.json").read_text())["history"]
    assert history and all(len(values) == 3 for values in history.values())

    (folder,) = [p for p in logs.iterdir() if p.is_dir()]
    events = EventAccumulator(str(folder))
    events.Reload()
    for name, values in history.items():
        scalars = events.Scalars(f"epoch/{name}")
        assert [s.step for s in scalars] == [0, 1, 2]
        assert [s.value for s in scalars] == pytest.approx(values, rel=1e-6)
    assert "fit_seconds" in events.Tags()["scalars"]
    text = b"".join(events.Tensors("params/text_summary")[0].tensor_proto.string_val).decode()
    assert "| epochs | 3 |" in text and "| detector | mlp_ae |" in text
    assert (folder / "artifacts" / "run.json").read_bytes() == (run_dir / "run.json").read_bytes()


def test_the_workflow_logs_into_a_run_its_caller_opened(category, tmp_path):
    """A benchmark job or a tuning trial opens the run; fit_run and test_run log into it and leave it open."""
    from anomalens.workflow import fit_run, test_run

    store = tmp_path / "store"
    with open_tracker(f"mlflow:{store}") as tracker:
        tracker.start_run("job 1", {"anomalens.stage": "job"})
        fit_run("padim", category, tmp_path / "run", {"image_size": 32, "n_features": 10, "device": "cpu"},
                progress=False, tracker=tracker)
        test_run(tmp_path / "run", category, progress=False, report=False, tracker=tracker)
        assert tracker.active
        tracker.log_metrics({"extra": 1.0}, step=4)
    (job,) = _runs(store).values()
    assert job.info.run_name == "job 1" and job.info.status == "FINISHED"
    assert {"fit_seconds", "image_auroc", "extra"} <= set(job.data.metrics)
    assert job.data.tags["anomalens.detector"] == "padim"


def test_a_failure_inside_a_run_marks_it_failed_and_values_are_flattened(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(ZeroDivisionError):
        with open_tracker(f"mlflow:{store.resolve().as_uri()}") as tracker, tracker.run("broken", {"anomalens.stage": "x"}):
            tracker.log_params({"size": (3, 4), "none": None, "flag": True, "nested": {"a": 1}})
            tracker.log_metrics({"auroc": 0.5, "undefined": float("nan"), "missing": None, "text": "n/a",
                                 "per": {"crack": {"auroc": 0.25}}})
            tracker.log_artifact(tmp_path / "no-such-file")  # skipped
            1 / 0
    (run,) = _runs(store).values()
    assert run.info.status == "FAILED"
    assert run.data.params == {"size": "[3, 4]", "none": "null", "flag": "true", "nested.a": "1"}
    assert run.data.metrics == {"auroc": 0.5, "per.crack.auroc": 0.25}
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}


@pytest.mark.parametrize("spec", ["wandb", "mlflow:", "tensorboard:", "", "MLflow"])
def test_a_bad_spec_is_one_line_before_anything_runs(spec, capsys):
    if spec:
        with pytest.raises(ConfigError, match="expected mlflow, mlflow:URI, tensorboard or tensorboard:DIR"):
            check_track_spec(spec)
    assert main(["fit", "padim", "nowhere", "-o", "x", "--track", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--track" in err and "Traceback" not in err


def test_no_spec_tracks_nothing_and_defaults_are_local_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_tracker(None), NullTracker) and isinstance(open_tracker(""), NullTracker)
    with open_tracker(None) as none, none.run("nothing"):
        none.log_metrics({"a": 1})
    assert open_tracker("mlflow").uri == (tmp_path / "mlruns").as_uri()
    assert mlflow_uri("sqlite:///x.db") == "sqlite:///x.db" and mlflow_uri("http://host:5000") == "http://host:5000"
    assert mlflow_uri("runs/store") == (tmp_path / "runs" / "store").as_uri()
    tensorboard = open_tracker("tensorboard")
    with tensorboard.run("a run"):
        tensorboard.log_metrics({"a": 1.0})
    assert [p.name.endswith("a-run") or "a-run" in p.name for p in (tmp_path / "tensorboard").iterdir()] == [True]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        open_tracker(f"tensorboard:{tmp_path / 'file'}")


def test_a_missing_library_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"pip install 'anomalens\[research\]'"):
        open_tracker("mlflow")


def test_parsing_track_imports_neither_mlflow_nor_tensorboard():
    import subprocess

    probe = ("import sys; from anomalens.cli import build_parser; "
             "build_parser().parse_args(['fit', 'padim', 'd', '-o', 'r', '--track', 'mlflow']); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard', 'optuna', 'torch')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
