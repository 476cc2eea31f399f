"""The benchmark harness (benchmarks/harness): one machine description, one job runner, one results schema
and table writer, one baseline mechanism — and the suites keep to them. Fast: no detector is fitted."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TOOLS = ROOT / "tools"


def _load_harness():
    """benchmarks/harness as the package ``harness`` (what a suite script imports), without touching sys.path."""
    if "harness" in sys.modules:
        return sys.modules["harness"]
    folder = BENCHMARKS / "harness"
    spec = importlib.util.spec_from_file_location("harness", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


# ------------------------------------------------------------------------------------------------ machine
def test_machine_describes_the_machine_and_the_software():
    m = harness.machine()
    assert m["cpu"] and isinstance(m["cpu"], str)
    assert isinstance(m["cores"], int) and m["cores"] >= 1
    assert m["memory_gb"] is None or m["memory_gb"] > 0
    assert m["python"].count(".") == 2
    assert m["anomalens"] and "platform" in m and "torch" in m  # the run provenance's fields
    assert m["load_average"] is None or len(m["load_average"]) == 3
    line = harness.describe(m)
    assert m["cpu"] in line and f"{m['cores']} cores" in line and f"Python {m['python']}" in line
    assert "load average" in line and "load average" not in harness.describe(m, load=False)


def test_describe_reads_the_machine_entries_written_before_the_harness():
    old = {"cpu": "AMD EPYC", "cores": 2, "memory": "23.5 GiB", "python": "3.11.7", "torch": "2.14.1", "device": "cpu",
           "load_average_1min_at_end": 1.2}
    assert harness.describe(old) == ("AMD EPYC, 2 cores, 23.5 GiB RAM; Python 3.11.7, torch 2.14.1 on cpu; "
                                     "1-min load average 1.2 at the end")
    assert harness.describe("a line as it was written") == "a line as it was written"


# ------------------------------------------------------------------------------------------------ jobs
def test_a_command_job_reports_its_time_and_its_own_peak_memory():
    job = harness.run_job([sys.executable, "-c", "x = bytearray(150 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
                                                 "print('done')"])
    assert job.ok and job.stdout.strip() == "done"
    assert job.seconds > 0 and job.user_seconds is not None
    assert job.peak_rss_mb >= 150
    ballast = bytearray(200 * 2**20)  # this process's high-water mark above 200 MB...
    ballast[::4096] = b"1" * len(ballast[::4096])
    small = harness.run_job(["true"])
    del ballast
    assert small.peak_rss_mb < 60  # ...is not the job's: the launcher's floor (~10 MB) is


def test_a_function_job_returns_its_value(tmp_path):
    suite = tmp_path / "suite.py"
    suite.write_text("import os\n\ndef measure(a, b, path):\n"
                     "    return {'sum': a + b, 'path': path, 'threads': os.environ.get('OMP_NUM_THREADS')}\n")
    spec = importlib.util.spec_from_file_location("suite_under_test", suite)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    job = harness.run_job(module.measure, 2, 3, tmp_path, threads=3)
    assert job.value == {"sum": 5, "path": str(tmp_path), "threads": "3"}


def test_a_failed_job_says_why_and_a_slow_one_is_stopped():
    failed = harness.run_job([sys.executable, "-c", "raise SystemExit('no data here')"], check=False)
    assert not failed.ok and failed.returncode == 1 and failed.error_line() == "no data here"
    with pytest.raises(harness.JobError, match="no data here"):
        harness.run_job([sys.executable, "-c", "raise SystemExit('no data here')"])
    slow = harness.run_job([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1, check=False)
    assert slow.timed_out and not slow.ok and slow.seconds < 30


def test_a_job_runs_another_library_tree_first_on_the_path(tmp_path):
    (tmp_path / "src" / "marker_pkg").mkdir(parents=True)
    (tmp_path / "src" / "marker_pkg" / "__init__.py").write_text("WHERE = 'baseline'\n")
    job = harness.run_job([sys.executable, "-c", "import marker_pkg; print(marker_pkg.WHERE)"], src=tmp_path / "src")
    assert job.stdout.strip() == "baseline"


# ------------------------------------------------------------------------------------------------ results
def test_results_write_json_and_a_markdown_table_that_read_back(tmp_path):
    rows = [{"model": "padim", "image_auroc": 0.97712, "fit_seconds": 4.9, "note": None},
            {"model": "patchcore", "image_auroc": 1.0, "fit_seconds": 12.25, "note": "coreset 1 %"}]
    results = harness.Results("demo", rows=rows, machine=harness.machine(), settings={"threads": 2},
                              runs=[harness.Run().record(jobs=2)], sections={"backbone": {"256px": 40.1}})
    columns = [("model", "model"), ("image AUROC", "image_auroc"), ("fit s", "fit_seconds", 1), ("note", "note"),
               ("speed", lambda r: f"{1 / r['fit_seconds']:.2f} fits/s")]
    text = harness.markdown("Demo", "Machine: " + harness.describe(results.machine), harness.table(rows, columns))
    json_path, md_path = results.write(tmp_path / "out" / "results", text)
    assert (json_path.name, md_path.name) == ("results.json", "results.md")

    data = json.loads(json_path.read_text())
    assert [data[k] for k in ("suite", "settings", "results", "backbone")] == ["demo", {"threads": 2}, rows, {"256px": 40.1}]
    assert data["date"] and data["machine"]["cpu"] and data["runs"][0]["jobs"] == 2
    again = harness.Results.load(json_path, "demo")
    assert (again.rows, again.settings, again.sections, again.machine) == (rows, {"threads": 2}, {"backbone": {"256px": 40.1}},
                                                                          results.machine)

    lines = md_path.read_text().splitlines()
    assert lines[0] == "# Demo"
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    assert table[0] == ["model", "image AUROC", "fit s", "note", "speed"]
    assert table[2] == ["padim", "0.977", "4.9", "–", "0.20 fits/s"]
    assert table[3] == ["patchcore", "1.000", "12.2", "coreset 1 %", "0.08 fits/s"]


def test_results_written_before_the_harness_are_read_through_the_suites_reader(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"machine": "one line", "rows": {"padim": {"fit_seconds": 3.0}}}))
    with pytest.raises(ValueError, match="before the harness"):
        harness.Results.load(path, "old")

    def legacy(data):
        return harness.Results("old", rows=[{"job": k, **v} for k, v in data["rows"].items()], machine=data["machine"])

    results = harness.Results.load(path, "old", legacy)
    assert results.rows == [{"job": "padim", "fit_seconds": 3.0}] and results.machine == "one line"
    assert harness.Results.load(tmp_path / "missing.json", "old").rows == []
    results.upsert({"job": "padim", "fit_seconds": 2.0}, "job")
    results.upsert({"job": "stpm", "fit_seconds": 9.0}, "job")
    assert [r["fit_seconds"] for r in results.rows] == [2.0, 9.0] and results.find(job="stpm")["fit_seconds"] == 9.0


# ------------------------------------------------------------------------------------------------ baseline
def test_the_baseline_is_a_worktree_of_the_revision(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args],
                              cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (repo / "code.py").write_text("VERSION = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    first = git("rev-parse", "HEAD")
    (repo / "code.py").write_text("VERSION = 2\n")
    git("commit", "-q", "-am", "two")
    tree = harness.checkout(first, repo=repo, into=tmp_path / "baselines")
    assert (tree / "code.py").read_text() == "VERSION = 1\n" and tree.name == first[:10]
    assert harness.checkout(first, repo=repo, into=tmp_path / "baselines") == tree  # made once
    assert harness.checkout(tree) == tree.resolve()  # a checkout's folder is taken as it is
    assert (repo / "code.py").read_text() == "VERSION = 2\n"  # the working tree is untouched
    assert harness.commit_label(repo) == harness.short_commit("HEAD", repo)
    (repo / "code.py").write_text("VERSION = 3\n")
    assert harness.commit_label(repo).endswith("+changes")


# ------------------------------------------------------------------------------------------------ the suites
def _scripts() -> list[Path]:
    return sorted(BENCHMARKS.glob("*.py")) + sorted((BENCHMARKS / "harness").glob("*.py")) + sorted(TOOLS.glob("*.py"))


def test_no_script_changes_the_import_path_but_the_tools_package():
    found = []
    for path in _scripts():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path" and path != TOOLS / "__init__.py":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "sys.path changed outside tools/__init__.py:\n" + "\n".join(found)


def test_the_suites_describe_the_machine_check_out_baselines_and_run_jobs_only_through_the_harness():
    own = {"machine", "_machine", "cpu_model", "baseline_tree", "baseline_worktree", "export_baseline", "run_cli_measure"}
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")) + sorted(TOOLS.glob("*.py")):
        tree = ast.parse(path.read_text())
        found += [f"{path.name} defines {n.name}()" for n in ast.walk(tree)
                  if isinstance(n, ast.FunctionDef) and n.name in own]
        found += [f"{path.name}:{n.lineno} runs git {n.value}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in ("worktree", "archive")]
        found += [f"{path.name}:{n.lineno} reads ru_maxrss of a child" for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and ast.unparse(n) == "os.wait4"]
    assert not found, "\n".join(found)


def _load_suite(name: str):
    spec = importlib.util.spec_from_file_location(f"suite_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registry() -> dict:
    from anomalens.builtin_detectors import DETECTORS

    return DETECTORS


def test_the_accuracy_report_puts_every_detector_on_one_line_per_category():
    suite = _load_suite("run")
    rows = [{"model": m, "dataset": d, "params": {}, "image_auroc": auroc}
            for m, base in (("padim", 0.9), ("draem", 0.8)) for d, auroc in zip(suite.SYNTHETIC, (base, base - 0.1, base, base, base))]
    rows[6]["image_auroc"] = 0.95  # draem wins grass
    rows.append({"model": "padim", "dataset": "brick", "params": {"image_size": 64}, "image_auroc": 1.0})  # other settings
    rows.append({"model": "glass", "dataset": "brick", "params": {}, "image_auroc": 0.5})  # one category only
    rows.append({"model": "cflow", "dataset": "grass", "error": "out of memory"})
    lines = suite.by_category(rows)
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    assert table[0] == ["detector", *suite.SYNTHETIC, "mean", "epochs"]
    assert table[2] == ["padim", "**0.900**", "0.800", "**0.900**", "**0.900**", "**0.900**", "**0.880**", ""]
    draem_epochs = next(row[1] for row in _registry()["draem"]["params"] if row[0] == "epochs")
    assert table[3] == ["draem", "0.800", "**0.950**", "0.800", "0.800", "0.800", "0.830", draem_epochs]
    assert table[4] == ["glass", "0.500", "–", "–", "–", "–", "–", next(row[1] for row in _registry()["glass"]["params"]
                                                                       if row[0] == "epochs")]
    assert len(table) == 5 and suite.by_category([]) == []
