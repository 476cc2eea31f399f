"""Do the committed comparison rows still hold after a refactor? anomalens' side of the anomalib comparison,
rerun with the current code and set beside the committed numbers.

    .venv/bin/python -m tools.renovation_check                      # PaDiM, PatchCore 1 %, STPM rows
    .venv/bin/python -m tools.renovation_check --jobs padim:brick stpm@10:coffee
    .venv/bin/python -m tools.renovation_check --baseline de2067a --jobs stpm@10:coffee   # + the code before
    .venv/bin/python -m tools.renovation_check --report-only
    .venv/bin/python -m tools.renovation_check --jobs padim:brick --output /tmp/renovation   # a smoke run

Each job runs through ``benchmarks/compare_anomalib.py``'s own anomalens worker (same data, weights, settings
and scoring as the committed comparison, one fresh process per job: ``harness.run_job``), so the only thing
that differs from the committed row is the library code. The committed row is read from
``benchmarks/results/compare_anomalib/results.json`` (its anomalib row too, for reference: anomalib is not
rerun — its code did not change). ``--baseline REV`` also runs the worker of commit REV's own
``compare_anomalib.py`` on that commit's code (``harness.checkout``: a git worktree sharing this tree's
benchmarks/_work, so the same data and weights), side by side in the same run — for rows whose committed
number is older than the code before the refactor. ``--baseline-only`` skips the current code.
Results: ``tools/results/renovation_check/results.{json,md}``; accuracy must be equal, times are
informative (a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import compare_anomalib
from harness import Results, Run, checkout, commit_label, describe, describe_run, fmt, machine, run_job, write_report

SUITE = "renovation_check"
OUTPUT = Path(__file__).resolve().parent / "results" / "renovation_check"
COMMITTED = compare_anomalib.RESULTS / "results.json"
SYNTHETIC = ("brick", "coffee", "chelsea", "grass", "gravel")
DEFAULT_JOBS = [f"padim:{d}" for d in SYNTHETIC] + [f"patchcore@0.01:{d}" for d in SYNTHETIC] + ["stpm@10:brick", "stpm@10:coffee"]


def run_baseline(tree: Path, job: str, threads: int) -> dict:
    """The anomalens worker of the baseline checkout's comparison script, importing that checkout's package."""
    return run_job([sys.executable, str(tree / "benchmarks" / "compare_anomalib.py"), "--worker-anomalens", job,
                    "--threads", str(threads)], src=tree / "src", cwd=tree, label=f"baseline {job}").json()


def committed_rows() -> dict[str, dict]:
    """job → {library: row} of the committed comparison."""
    pairs: dict[str, dict] = {}
    for row in Results.load(COMMITTED, compare_anomalib.SUITE, compare_anomalib.legacy).rows:
        pairs.setdefault(row["job"], {})[row["library"]] = row
    return pairs


def legacy(data: dict) -> Results:
    """results.json as written before the harness: {"jobs": {job: {...}}, "machines": [lines]}."""
    return Results(SUITE, rows=[{"job": job, **row} for job, row in data["jobs"].items()], runs=data["machines"])


def describe_entry(entry: dict | str) -> str:
    """A machine line of results.md: the machine, threads, jobs and code of one invocation."""
    if isinstance(entry, str):
        return entry
    code = "; ".join(f"{side} at {entry[side]}" for side in ("anomalens", "baseline") if entry.get(side))
    return (f"{entry['machine']}, {entry['threads']} thread(s) per job; {entry['jobs']} job(s); "
            + describe_run(entry) + (f"; {code}" if code else ""))


def check(jobs: list[str], threads: int, path: Path, baseline: str | None = None, current: bool = True) -> None:
    compare_anomalib.export_weights()
    compare_anomalib.prepare_data({job.split(":")[1] for job in jobs})
    committed = committed_rows()
    results = Results.load(path, SUITE, legacy)
    run = Run()
    tree = checkout(baseline, share_work=True) if baseline else None
    for job in jobs:
        before = committed.get(job, {})
        row = results.find(job=job) or results.upsert({"job": job}, "job")
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
        results.save(path)
    results.machine = machine("cpu")
    results.runs.append(run.record(machine=describe(results.machine, load=False), threads=threads, jobs=len(jobs),
                                   anomalens=commit_label() if current else None, baseline=baseline))
    results.save(path)


def _f(value, digits: int = 3) -> str:
    return fmt(value, digits, none="")


def report(results: Results) -> str:
    lines = [
        "# Comparison rows after a refactor — anomalens now vs the committed row",
        "",
        "Generated by `tools/renovation_check.py` (do not edit by hand). Same worker, data, weights and "
        "scoring as `benchmarks/compare_anomalib.py`; anomalib is not rerun (its row is the committed one).",
        "",
        "## Machine",
        "",
        *[f"- {describe_entry(m)}" for m in results.runs],
        "",
        "## Rows",
        "",
        "| job | image AUROC now | code before | committed | anomalib | pixel AUROC now | code before | committed | "
        "anomalib | equal to | fit s now / committed | test img/s now / committed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results.rows:
        now, base = row.get("now") or {}, row.get("baseline") or {}
        was, lib = row.get("committed") or {}, row.get("anomalib") or {}

        def same(other: dict) -> bool:
            return (bool(now) and other.get("image_auroc") is not None
                    and round(now["image_auroc"], 3) == round(other["image_auroc"], 3)
                    and (now.get("pixel_auroc") is None or round(now["pixel_auroc"], 3) == round(other["pixel_auroc"], 3)))

        equal = " and ".join(name for name, other in (("code before", base), ("committed", was)) if same(other)) or "NO"
        lines.append(
            f"| {row['job']} | {_f(now.get('image_auroc'), 4)} | {_f(base.get('image_auroc'), 4)} | {_f(was.get('image_auroc'), 4)} | "
            f"{_f(lib.get('image_auroc'), 4)} | {_f(now.get('pixel_auroc'), 4)} | {_f(base.get('pixel_auroc'), 4)} | "
            f"{_f(was.get('pixel_auroc'), 4)} | {_f(lib.get('pixel_auroc'), 4)} | {equal} | "
            f"{_f(now.get('fit_seconds'), 1)} / {_f(was.get('fit_seconds'), 1)} | "
            f"{_f(now.get('test_images_per_second'), 1)} / {_f(was.get('test_images_per_second'), 1)} |"
        )
    lines += ["", "‘code before’: the same worker on the commit named in the machine lines (before the refactor), "
              "run in the same session. ‘equal to’: both AUROCs the same to the 3 decimals the comparison table "
              "prints.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=DEFAULT_JOBS, help="MODEL[@fraction|epochs]:DATASET")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", metavar="REV", help="also run the code of this commit, side by side")
    parser.add_argument("--baseline-only", action="store_true", help="with --baseline: do not rerun the current code")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="results folder (rows merge into its results.json)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    path = args.output / "results.json"
    if not args.report_only:
        check(args.jobs, args.threads, path, args.baseline, current=not args.baseline_only)
    print(f"wrote {write_report(args.output / 'results.md', report(Results.load(path, SUITE, legacy)))}")


if __name__ == "__main__":
    main()
