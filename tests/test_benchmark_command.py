"""``anomalens benchmark``: real jobs (one process each) on a tiny synthetic category — the leaderboard, its
files and figures, resumption after a kill, a job over its time limit, refusals in one line, and Ray."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomalens.benchmarking import BenchmarkPlan, run_benchmark, synthetic_categories
from anomalens.benchmarking import runner
from anomalens.cli import main
from anomalens.tracking import open_tracker

# 32 px images, 8 training and 6 + 6 test images, one thread per job: a job takes a few seconds of CPU
TINY = ["--synthetic", "brick", "--image-size", "32", "--synthetic-images", "8", "6", "6", "--threads", "1",
        "--bootstrap", "200"]
DETECTORS = ["-m", "padim", "-m", "patchcore"]
PNG = b"\x89PNG\r\n\x1a\n"


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def _processes_naming(folder: Path, *words: str) -> list[int]:
    """The live processes whose command line names ``folder`` and ``words`` (Linux /proc; zombies left out)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace") if proc.name.isdigit() else ""
            if all(word in command for word in (str(folder), *words)) \
                    and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_benchmark_resumes_and_writes_the_leaderboard(tmp_path, capsys):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "anomalens.cli", "benchmark", *DETECTORS, *TINY, "-o", str(out), "-q"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "jobs" / "padim--brick--seed0" / "result.json"
    try:
        deadline = time.monotonic() + 240
        while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        while not _processes_naming(out, "run_detector_job", "patchcore") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the kill lands while the second job runs
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the benchmark and its running job, mid-way
        proc.wait()
    assert first.is_file(), "the first job never finished"
    first_result = first.read_text()
    # the job running at the kill (its own session, for timeouts) dies with the benchmark, not minutes later
    deadline = time.monotonic() + 2
    while _processes_naming(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_naming(out), "a job outlived the killed benchmark"
    assert not (out / "results.json").exists()

    assert main(["benchmark", *DETECTORS, *TINY, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 already done" in printed
    assert first.read_text() == first_result  # the finished job was not run again
    assert _runs(out)[-1]["jobs_run"] == 1

    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "anomalens.benchmark.results/1"
    assert [j["status"] for j in results["jobs"]] == ["ok", "ok"]
    for job in results["jobs"]:
        assert job["peak_rss_mb"] > 50 and job["fit_seconds"] > 0 and job["test_images_per_second"] > 0
        with open(out / "jobs" / f"{job['detector']}--brick--seed0" / "scores.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 12 and {r["label"] for r in rows} == {"0", "1"}
    rows = {r["detector"]: r for r in results["leaderboard"] if r["category"] == "brick"}
    for detector, job in zip(["padim", "patchcore"], results["jobs"]):
        for key in ("image_auroc", "pixel_auroc", "aupro", "balanced_accuracy", "tpr", "fpr"):
            cell = rows[detector][key]
            assert cell["value"] == pytest.approx(job[key])
            assert cell["ci_low"] - 0.01 <= cell["value"] <= cell["ci_high"] + 0.01, (detector, key, cell)
    [test] = [t for t in results["comparisons"] if t["metric"] == "image_auroc"]
    assert {test["a"], test["b"]} == {"padim", "patchcore"} and 0 < test["p_holm"] <= 1
    assert "brick" in (out / "leaderboard.md").read_text() and "Paired comparisons" in (out / "leaderboard.md").read_text()
    with open(out / "leaderboard.csv", newline="") as handle:
        assert {r["detector"] for r in csv.DictReader(handle)} == {"padim", "patchcore"}
    for name in ("image_auroc.png", "pixel_auroc.png", "aupro.png", "accuracy_vs_throughput.png"):
        assert (out / "plots" / name).read_bytes().startswith(PNG)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "padim − patchcore" in page
    assert "http://" not in page and "https://" not in page  # self-contained

    # the same command again: nothing to run, the summary is rebuilt
    assert main(["benchmark", *DETECTORS, *TINY, "-o", str(out), "-q"]) == 0
    assert _runs(out)[-1]["jobs_run"] == 0 and len(_runs(out)) == 2

    # another configuration on the same folder: one line, nothing changed
    assert main(["benchmark", *DETECTORS, *TINY, "--seeds", "0", "1", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another configuration (seeds differ)" in err and "--overwrite" in err
    assert first.read_text() == first_result


def test_a_job_over_its_time_limit_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    categories = synthetic_categories(["brick"], tmp_path / "data", 32, {"n_train": 8, "n_test_good": 6, "n_test_defect": 6})
    plan = BenchmarkPlan(["padim", "patchcore"], categories, image_size=32)
    real = runner.execute_job

    def padim_too_slow(spec, timeout, threads):  # PaDiM cannot even import torch in 0.3 s
        return real(spec, 0.3 if spec["detector"] == "padim" else timeout, threads)

    monkeypatch.setattr(runner, "execute_job", padim_too_slow)
    store = tmp_path / "mlruns"
    tracked = importlib.util.find_spec("mlflow") is not None  # the research extra
    with open_tracker(f"mlflow:{store}" if tracked else None) as tracker:  # --track: read back below
        results = run_benchmark(plan, tmp_path / "bench", threads=1, n_boot=100, progress=False, timeout=300,
                                tracker=tracker)
    padim, patchcore = results["jobs"]
    assert padim["status"] == "failed" and padim["timed_out"] and "timed out" in padim["error"]
    assert patchcore["status"] == "ok" and patchcore["image_auroc"] is not None
    assert "failed: timed out" in (tmp_path / "bench" / "leaderboard.md").read_text()
    assert not results["comparisons"]  # nothing to compare PaDiM's missing scores with
    if not tracked:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = {r.info.run_name: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert set(runs) == {"padim--brick--seed0", "patchcore--brick--seed0", "benchmark bench"}
    assert runs["padim--brick--seed0"].data.tags["anomalens.status"] == "failed"
    logged = runs["patchcore--brick--seed0"].data
    assert logged.metrics["image_auroc"] == pytest.approx(patchcore["image_auroc"])
    assert logged.params["param.image_size"] == "32"
    summary = runs["benchmark bench"]
    assert summary.data.metrics["brick.patchcore.image_auroc_ci_high"] >= logged.metrics["image_auroc"] - 0.01
    assert {"report.html", "leaderboard.md"} <= {a.path for a in client.list_artifacts(summary.info.run_id)}


@pytest.mark.parametrize("argv, message", [
    (["-m", "padim", "-p", "padim.no_such_setting=1"], "no_such_setting"),
    (["-m", "padim", "-p", "image_size=32"], "expected DETECTOR.KEY=VALUE"),
    (["-m", "padim", "-p", "patchcore.coreset_ratio=0.1"], "not one of the detectors"),
    (["-m", "padim", "-m", "padim"], "given twice"),
    (["-m", "no_such_detector"], "no_such_detector"),
    (["-m", "padim", "--seeds", "1", "1"], "given twice"),
    (["-m", "padim", "-p", "padim.seed=3"], "--seeds"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "bench"
    assert main(["benchmark", *argv, *TINY, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("anomalens: error:") and message in err
    assert not out.exists()


def test_overwrite_replaces_only_a_benchmark_folder(tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["benchmark", "-m", "padim", *TINY, "-o", str(other), "--overwrite"]) == 2
    assert "not a benchmark results folder" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep"
    assert main(["benchmark", "-m", "padim", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.ray
def test_the_ray_engine_writes_the_same_results_folder(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (the ray extra)")
    categories = synthetic_categories(["brick"], tmp_path / "data", 32, {"n_train": 8, "n_test_good": 6, "n_test_defect": 6})
    plan = BenchmarkPlan(["padim", "patchcore"], categories, image_size=32)
    results = run_benchmark(plan, tmp_path / "bench", engine="ray", threads=1, n_boot=100, progress=False, timeout=300)
    assert [j["status"] for j in results["jobs"]] == ["ok", "ok"]
    assert results["runs"][-1]["engine"] == "ray"
    assert (tmp_path / "bench" / "jobs" / "patchcore--brick--seed0" / "scores.csv").is_file()
    assert (tmp_path / "bench" / "report.html").is_file()
