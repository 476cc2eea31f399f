"""Do the committed comparison rows still hold after a refactor? anomalens' side of the anomalib comparison,
rerun with the current code and set beside the committed numbers.

    .venv/bin/python benchmarks/renovation_check.py                      # PaDiM, PatchCore 1 %, STPM rows
    .venv/bin/python benchmarks/renovation_check.py --jobs padim:brick stpm@10:coffee
    .venv/bin/python benchmarks/renovation_check.py --baseline de2067a --jobs stpm@10:coffee   # + the code before
    .venv/bin/python benchmarks/renovation_check.py --report-only

Each job runs through ``compare_anomalib.py``'s own anomalens worker (same data, weights, settings and
scoring as the committed comparison, one fresh process per job), so the only thing that differs from the
committed row is the library code. The committed row is read from
``results/compare_anomalib/results.json`` (its anomalib row too, for reference: anomalib is not rerun —
its code did not change). ``--baseline REV`` also runs the same worker on the code of commit REV (a git
worktree under ``_work/``, sharing the data and weights), side by side in the same run — for rows whose
committed number is older than the code before the refactor. ``--baseline-only`` skips the current code.
Results: ``results/renovation_check/results.{json,md}``; accuracy must be
equal, times are informative (a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_anomalib  # noqa: E402

RESULTS = HERE / "results" / "renovation_check"
COMMITTED = HERE / "results" / "compare_anomalib" / "results.json"
SYNTHETIC = ("brick", "coffee", "chelsea", "grass", "gravel")
DEFAULT_JOBS = [f"padim:{d}" for d in SYNTHETIC] + [f"patchcore@0.01:{d}" for d in SYNTHETIC] + ["stpm@10:brick", "stpm@10:coffee"]


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True, text=True)
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def baseline_worktree(rev: str) -> Path:
    """A checkout of ``rev`` under _work/ whose benchmarks/_work is ours (same data and exported weights)."""
    tree = compare_anomalib.WORK / f"baseline-{rev}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=HERE, check=True, capture_output=True)
        (tree / "benchmarks" / "_work").symlink_to(compare_anomalib.WORK.resolve())
    return tree


def run_baseline(tree: Path, job: str, threads: int) -> dict:
    """The anomalens worker of the baseline checkout, importing that checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(tree / "benchmarks" / "compare_anomalib.py"), "--worker-anomalens", job,
                           "--threads", str(threads)], capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline {job} failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-15:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(jobs: list[str], threads: int, baseline: str | None = None, current: bool = True) -> None:
    compare_anomalib.export_weights()
    compare_anomalib.prepare_data({job.split(":")[1] for job in jobs})
    committed = json.loads(COMMITTED.read_text())["jobs"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"jobs": {}, "machines": []}
    load_start, start_all = os.getloadavg()[0], time.time()
    tree = baseline_worktree(baseline) if baseline else None
    for job in jobs:
        before = committed.get(job, {})
        row = results["jobs"].setdefault(job, {})
        row.update(committed=before.get("anomalens"), anomalib=before.get("anomalib"))
        if current:
            # The anomalens worker runs in this interpreter: anomalib's venv is not needed.
            row["now"] = compare_anomalib.run_worker("anomalens", job, threads, Path(sys.executable))
        if tree is not None:
            row["baseline"] = {**run_baseline(tree, job, threads), "commit": baseline}
        for label in ("now", "baseline"):
            if label in row and (current if label == "now" else tree is not None):
                print(f"[check] {job} {label}: image {row[label]['image_auroc']:.4f}, pixel {row[label]['pixel_auroc']} "
                      f"(committed {(before.get('anomalens') or {}).get('image_auroc')})", flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    m = compare_anomalib.machine("cpu")
    results["machines"].append(
        f"{m['cpu']}, {m['cores']} cores, {m['memory']}; torch {m['torch']} on cpu, {threads} thread(s) per job; "
        f"{len(jobs)} job(s) in {(time.time() - start_all) / 60:.1f} min on {m['date']}; "
        f"{'anomalens at ' + _commit() if current else ''}{'; ' if current and baseline else ''}"
        f"{'baseline at ' + baseline if baseline else ''}; "
        f"1-min load average {load_start:.2f} at start, {m['load_average_1min_at_end']} at end")
    path.write_text(json.dumps(results, indent=2) + "\n")


def _f(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_report() -> None:
    results = json.loads((RESULTS / "results.json").read_text())
    lines = [
        "# Comparison rows after a refactor — anomalens now vs the committed row",
        "",
        "Generated by `benchmarks/renovation_check.py` (do not edit by hand). Same worker, data, weights and "
        "scoring as `benchmarks/compare_anomalib.py`; anomalib is not rerun (its row is the committed one).",
        "",
        "## Machine",
        "",
        *[f"- {m}" for m in results["machines"]],
        "",
        "## Rows",
        "",
        "| job | image AUROC now | code before | committed | anomalib | pixel AUROC now | code before | committed | "
        "anomalib | equal to | fit s now / committed | test img/s now / committed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job, row in results["jobs"].items():
        now, base = row.get("now") or {}, row.get("baseline") or {}
        was, lib = row["committed"] or {}, row["anomalib"] or {}

        def same(other: dict) -> bool:
            return (bool(now) and other.get("image_auroc") is not None
                    and round(now["image_auroc"], 3) == round(other["image_auroc"], 3)
                    and (now.get("pixel_auroc") is None or round(now["pixel_auroc"], 3) == round(other["pixel_auroc"], 3)))

        equal = " and ".join(name for name, other in (("code before", base), ("committed", was)) if same(other)) or "NO"
        lines.append(
            f"| {job} | {_f(now.get('image_auroc'), 4)} | {_f(base.get('image_auroc'), 4)} | {_f(was.get('image_auroc'), 4)} | "
            f"{_f(lib.get('image_auroc'), 4)} | {_f(now.get('pixel_auroc'), 4)} | {_f(base.get('pixel_auroc'), 4)} | "
            f"{_f(was.get('pixel_auroc'), 4)} | {_f(lib.get('pixel_auroc'), 4)} | {equal} | "
            f"{_f(now.get('fit_seconds'), 1)} / {_f(was.get('fit_seconds'), 1)} | "
            f"{_f(now.get('test_images_per_second'), 1)} / {_f(was.get('test_images_per_second'), 1)} |"
        )
    lines += ["", "‘code before’: the same worker on the commit named in the machine lines (before the refactor), "
              "run in the same session. ‘equal to’: both AUROCs the same to the 3 decimals the comparison table "
              "prints.", ""]
    (RESULTS / "results.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'results.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=DEFAULT_JOBS, help="MODEL[@fraction|epochs]:DATASET")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", metavar="REV", help="also run the code of this commit, side by side")
    parser.add_argument("--baseline-only", action="store_true", help="with --baseline: do not rerun the current code")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        check(args.jobs, args.threads, args.baseline, current=not args.baseline_only)
    write_report()


if __name__ == "__main__":
    main()
