"""``anomalens tune``: a seeded Optuna search whose best.yaml ``fit --config`` reads as is, that resumes its
study, logs each trial, and never opens a test image."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from anomalens.cli import main
from anomalens.errors import ConfigError, DataError
from anomalens.tuning import default_space, search_space, tune

pytest.importorskip("optuna", reason="the research extra (Optuna) is not installed")

FIXED = ["--image-size", "32", "-p", "device=cpu", "-p", "batch_size=8", "-q"]


def _trials(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tune_writes_a_config_that_fit_reads_resumes_and_logs_each_trial(category, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, store = tmp_path / "tuned", tmp_path / "store"
    # trials in their own processes here (the other tests run them in this one, which is faster)
    assert main(["tune", "padim", str(category), "--trials", "1", "-o", str(out), "--track", f"mlflow:{store}",
                 *FIXED]) == 0
    first = _trials(out)
    assert [row["state"] for row in first] == ["complete"]
    assert {"layers", "n_features", "blur_sigma"} <= set(first[0])
    assert (out / "study.db").is_file() and json.loads((out / "tune.json").read_text())["detector"] == "padim"

    best = yaml.safe_load((out / "best.yaml").read_text())
    winner = max(first, key=lambda row: float(row["objective"]))
    assert best["detector"] == "padim" and best["params"]["n_features"] == int(winner["n_features"])
    assert best["params"]["image_size"] == 32 and best["params"]["seed"] == 0

    run = tmp_path / "run"
    assert main(["fit", "padim", str(category), "--config", str(out / "best.yaml"), "-o", str(run), "-q"]) == 0
    params = json.loads((run / "detector.json").read_text())["params"]
    assert {k: params[k] for k in best["params"]} == {k: (list(v) if isinstance(v, tuple) else v)
                                                       for k, v in best["params"].items()}

    # run again with more trials: the study continues (the first trial is kept, one more is run; in this
    # process, which is faster)
    tune("padim", category, out, trials=2, fixed={"image_size": 32, "device": "cpu", "batch_size": 8}, isolate=False)
    again = _trials(out)
    assert len(again) == 2 and again[:1] == first and again[1]["state"] == "complete"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("anomalens").experiment_id])
    trials = [r for r in runs if r.data.tags.get("anomalens.stage") == "tune"]
    assert sorted(r.data.tags["anomalens.trial"] for r in trials) == ["0"]
    for r in trials:
        row = first[int(r.data.tags["anomalens.trial"])]
        assert r.data.metrics["validation_objective"] == pytest.approx(float(row["objective"]), rel=1e-5)
        assert r.data.params["n_features"] == row["n_features"]
    (summary,) = [r for r in runs if r.data.tags.get("anomalens.stage") == "tune-best"]
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} == {"best.yaml", "trials.csv"}


def test_the_test_split_is_never_opened(category, tmp_path):
    """Every file opened while tuning (in this process: trials in-process here) is a training image or a file of
    the tune folder; the test split and its masks are listed by the layout's reader at most, never read."""
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: this one only records into a list
    best = tune("padim", category, tmp_path / "tuned", trials=1, fixed={"image_size": 32, "device": "cpu"},
                isolate=False)
    inside = [p for p in opened if str(category) in p]
    assert inside, "the hook saw no image opened"
    assert all(Path(p).relative_to(category).parts[0] == "train" for p in inside), \
        sorted({p for p in inside if Path(p).relative_to(category).parts[0] != "train"})[:3]
    recorded = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    held_out = json.loads((tmp_path / "tuned" / "validation" / "validation.json").read_text())
    # no trial fits on the normals the validation set is made of
    assert not set(recorded["train_images"]) & {row["from"] for row in held_out["images"]}
    assert best["trials"] == 1


def test_a_failed_trial_is_recorded_and_no_success_is_one_line(category, tmp_path):
    out = tmp_path / "tuned"
    space = {"n_features": {"choices": [100000]}}  # more channels than the backbone has: every trial fails
    with pytest.raises(ConfigError, match="no trial succeeded"):
        tune("padim", category, out, trials=1, fixed={"image_size": 32, "device": "cpu"}, space=space, isolate=False)
    (row,) = _trials(out)
    assert row["state"] == "fail" and "n_features" in row["error"]


@pytest.mark.parametrize("space, message", [
    ({"no_such": {"low": 1, "high": 2}}, "unknown parameter"),
    ({"n_features": {"low": 8, "high": 4}}, "low must be below high"),
    ({"n_features": {"low": 0, "high": 4}}, "parameter n_features must be"),
    ({"n_features": {"low": 1.5, "high": 4}}, "parameter n_features must be an integer"),
    ({"layers": {"low": 1, "high": 2}}, "searched over choices"),
    ({"layers": {"choices": [[1, 2], "x"]}}, "parameter layers must be"),
    ({"blur_sigma": {"low": 0, "high": 4, "log": True}}, "log range needs low > 0"),
    ({"blur_sigma": {"low": 1, "high": 4, "spread": 2}}, "unknown key"),
    ({"epsilon": 3}, "expected"),
    ({"image_size": {"low": 32, "high": 64}}, "searched over choices"),
])
def test_a_bad_search_space_is_refused_with_its_reason(space, message):
    with pytest.raises(ConfigError, match=message):
        search_space("padim", space, {})


def test_every_detector_has_a_default_space_its_declaration_accepts_or_asks_for_one():
    from anomalens.catalog import list_detectors

    for name in list_detectors():
        try:
            space = default_space(name)
        except ConfigError as exc:
            assert "--space FILE" in str(exc)
            continue
        dimensions = search_space(name, space, {})
        assert dimensions, name
    stpm = default_space("stpm")
    assert stpm["epochs"] == {"low": 25, "high": 200} and stpm["lr"]["log"] is True


def test_a_fixed_parameter_cannot_also_be_searched_and_bad_fixed_ones_fail_first(category, tmp_path):
    with pytest.raises(ConfigError, match="both fixed"):
        search_space("padim", {"n_features": {"low": 4, "high": 8}}, {"n_features": 4})
    with pytest.raises(ConfigError, match="parameter epsilon"):
        tune("padim", category, tmp_path / "t", trials=1, fixed={"epsilon": -1})
    assert not (tmp_path / "t").exists()


def test_a_labelled_validation_set_may_not_be_the_test_split(category, tmp_path, capsys):
    with pytest.raises(DataError, match="test images of"):
        tune("padim", category, tmp_path / "t", trials=1, validation=category)
    assert main(["tune", "padim", str(category), "--trials", "1", "-o", str(tmp_path / "t"),
                 "--validation", str(category), "-q"]) == 2
    assert "tuning on them would make the test figures optimistic" in capsys.readouterr().err


def test_another_job_in_the_same_folder_is_refused(category, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "tune.json").write_text(json.dumps({"detector": "patchcore"}))
    (out / ".anomalens-output.json").write_text(json.dumps({"anomalens": "0", "kind": "output", "files": ["tune.json"]}))
    assert main(["tune", "padim", str(category), "--trials", "1", "-o", str(out), "-q"]) == 2
    assert "holds a tune of another job" in capsys.readouterr().err


def test_a_tune_killed_by_kill_9_takes_its_running_trial_with_it(category, tmp_path):
    """A trial runs in a process of its own: it must not run on, orphaned, after `kill -9` of the tune."""
    import os
    import signal
    import subprocess
    import time

    def trials_of(pid: int) -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and b"trial_main" in (proc / "cmdline").read_bytes():
                    state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                    if state != "Z" and (pid is None or int(ppid) == pid):
                        found.append(int(proc.name))
            except OSError:
                continue
        return found

    tune_process = subprocess.Popen([sys.executable, "-m", "anomalens.cli", "tune", "padim", str(category),
                                     "--trials", "3", "-o", str(tmp_path / "tuned"), *FIXED],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not trials_of(tune_process.pid) and tune_process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        trial = trials_of(tune_process.pid)
        assert trial, "no trial process started"
    finally:
        tune_process.kill()
        tune_process.wait()
    deadline = time.monotonic() + 2
    while any(Path(f"/proc/{pid}").exists() and pid in trials_of(None) for pid in trial) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in trial if pid in trials_of(None)], "the trial outlived the killed tune"
