"""What the seed-gap suites share (``fastflow_gap.py``, ``supersimplenet_gap.py``): one anomalens detector and
anomalib's implementation of it, fitted over several seeds per library, plus a same-weights parity check.

A job is ``LIBRARY:SETTING:CATEGORY:SEED`` (``anomalens:default:grass:1``, ``anomalib:anomalib:grass:2``). anomalib's
jobs run the comparison harness's own anomalib worker (``compare_anomalib.py --worker-anomalib``) with the model
plugin's seed variable; anomalens' run the suite's worker function in a fresh process. Rows are saved after every
job and a measured job is skipped on a rerun (everything is seeded), so a stopped run resumes and two invocations
may share one results file. The committed comparison's rows (seed 0 of both libraries) count as seed 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import WORK, Results, Run, describe, machine, run_job, write_report
from .cli import output_options
from .paths import BENCHMARKS, RESULTS

ANOMALIB_PYTHON = WORK / "anomalib-venv" / "bin" / "python"
#: seed 0 of both libraries, taken from the committed comparison: job prefix per library
COMMITTED = {"anomalens": "anomalens:default", "anomalib": "anomalib:anomalib"}


@dataclass
class SeedGap:
    """One suite: ``model`` (the registry name and the comparison plugin's name), its anomalens ``settings``,
    ``categories``, ``worker`` (setting, category, seed, epochs, threads → row, run in a fresh process)."""

    suite: str
    model: str
    settings: dict[str, dict]
    categories: tuple[str, ...]
    worker: Callable[..., dict]
    timeout_s: int

    @property
    def results_dir(self) -> Path:
        return RESULTS / self.suite

    @property
    def comparison(self) -> Path:
        return RESULTS / f"compare_{self.model}" / "results.json"

    def parse(self, job: str) -> tuple[str, str, str, int]:
        library, setting, category, seed = job.split(":")
        if library == "anomalens" and setting not in self.settings:
            raise SystemExit(f"unknown setting '{setting}' (one of {', '.join(self.settings)})")
        return library, setting, category, int(seed)

    def run(self, job: str, epochs: int, threads: int) -> dict:
        library, setting, category, seed = self.parse(job)
        if library == "anomalens":
            return run_job(self.worker, setting, category, seed, epochs, threads, threads=threads,
                           timeout=self.timeout_s, label=job).value
        seed_variable = importlib.import_module(f"compare_models.{self.model}").SEED_VARIABLE
        done = run_job([ANOMALIB_PYTHON, BENCHMARKS / "compare_anomalib.py", "--worker-anomalib",
                        f"{self.model}@{epochs}:{category}", "--threads", str(threads)],
                       threads=threads, timeout=self.timeout_s, env={seed_variable: str(seed)}, label=job)
        row = done.json()
        return {key: row[key] for key in ("image_auroc", "pixel_auroc", "fit_seconds", "n_train")}

    def with_committed_rows(self, results: Results, epochs: int) -> list[dict]:
        """The suite's rows, plus the committed comparison's rows (seed 0 of both libraries) where it has none."""
        rows = [r for r in results.rows if r["epochs"] == epochs]
        if self.comparison.is_file():
            compared = Results.load(self.comparison, "compare_anomalib")
            for library, prefix in COMMITTED.items():
                for category in self.categories:
                    row = compared.find(job=f"{self.model}@{epochs}:{category}", library=library)
                    if row and not any(r["job"] == f"{prefix}:{category}:0" for r in rows):
                        rows.append({"job": f"{prefix}:{category}:0", "epochs": epochs,
                                     "source": f"compare_{self.model}",
                                     **{k: row[k] for k in ("image_auroc", "pixel_auroc", "fit_seconds")}})
        return rows

    def group(self, rows: list[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
        """Rows by (library, setting), then by category, in seed order."""
        groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
        for row in sorted(rows, key=lambda r: (r["job"].split(":")[2], int(r["job"].split(":")[3]))):
            library, setting, category, _ = self.parse(row["job"])
            groups.setdefault((library, setting), {}).setdefault(category, []).append(row)
        return groups

    def means_table(self, groups: dict, metric: str, title: str) -> tuple[list[str], dict]:
        """A markdown table of ``metric`` over seeds (mean ± sd, range, count) per (library, setting) and category,
        and the means it shows: {(library, setting): {category: mean}}."""
        lines = [title, "", "| library: setting | " + " | ".join(self.categories) + " | mean of the categories' means |",
                 "|---|" + "---|" * (len(self.categories) + 1)]
        means: dict[tuple[str, str], dict[str, float]] = {}
        for (library, setting), by_category in groups.items():
            values = {c: [r[metric] for r in by_category.get(c, []) if r.get(metric) is not None] for c in self.categories}
            means[library, setting] = {c: statistics.mean(v) for c, v in values.items() if v}
            complete = len(means[library, setting]) == len(self.categories)
            overall = f"{statistics.mean(means[library, setting].values()):.3f}" if complete else "–"
            lines.append(f"| {library}: {setting} | " + " | ".join(spread(values[c]) for c in self.categories)
                         + f" | {overall} |")
        return lines, means

    def gap_table(self, means: dict, title: str) -> list[str]:
        """anomalens − anomalib per category and on the mean, for each anomalens setting, from ``means_table``'s."""
        theirs = means.get(("anomalib", "anomalib"), {})
        lines = [title, "", "| anomalens setting | " + " | ".join(self.categories) + " | mean |",
                 "|---|" + "---|" * (len(self.categories) + 1)]
        for (library, setting), ours in means.items():
            if library == "anomalens":
                gaps = [ours[c] - theirs[c] for c in self.categories if c in ours and c in theirs]
                cells = [f"{ours[c] - theirs[c]:+.3f}" if c in ours and c in theirs else "–" for c in self.categories]
                overall = f"{statistics.mean(gaps):+.3f}" if len(gaps) == len(self.categories) else "–"
                lines.append(f"| {setting} | " + " | ".join(cells) + f" | {overall} |")
        return lines

    def main(self, doc: str, plan: list[str], epochs: int, parity: Callable[[Path], dict] | None,
             report: Callable[[Results, int], str]) -> None:
        """The suite's command line: ``--jobs`` (default ``plan``), ``--epochs``, ``--threads``, ``--parity``,
        ``--output``, ``--report-only``."""
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--jobs", nargs="+", default=plan, help="LIBRARY:SETTING:CATEGORY:SEED (default: the plan)")
        parser.add_argument("--epochs", type=int, default=epochs)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--parity", action="store_true", help="only the same-weights check (module docstring)")
        output_options(parser, self.results_dir)
        args = parser.parse_args()
        path = Path(args.output) / "results.json"
        results = Results.load(path, self.suite)
        if args.parity and parity is None:
            raise SystemExit(f"{self.suite} has no same-weights check")
        if args.parity:
            check = parity(WORK / self.suite)
            results = Results.load(path, self.suite)  # rows saved meanwhile by a running invocation stay
            results.sections["parity"] = check
            results.save(path)
        elif not args.report_only:
            started, count = Run(), 0
            for job in args.jobs:
                if results.find(job=job, epochs=args.epochs):
                    continue  # resumable: a row once measured stays (everything is seeded)
                row = {"job": job, "epochs": args.epochs, **self.run(job, args.epochs, args.threads),
                       "threads": args.threads, "load_average_1min": round(os.getloadavg()[0], 2)}
                results = Results.load(path, self.suite)  # rows another invocation saved meanwhile
                results.upsert(row, "job", "epochs")
                count += 1
                pixel = "–" if row.get("pixel_auroc") is None else f"{row['pixel_auroc']:.3f}"
                print(f"[{self.suite}] {job}@{args.epochs}: image {row['image_auroc']:.3f} "
                      f"pixel {pixel} fit {row['fit_seconds']} s", flush=True)
                results.machine = machine()
                entry = started.record(machine=describe(results.machine, load=False), threads=args.threads,
                                       jobs=count, started=started.started)  # rewritten after every job
                results.runs = [r for r in results.runs
                                if not (isinstance(r, dict) and r.get("started") == started.started)]
                results.runs.append(entry)
                results.save(path)  # after every job: a stopped run keeps its rows
        write_report(Path(args.output) / "results.md", report(results, args.epochs))
        print(f"[{self.suite}] wrote {Path(args.output) / 'results.md'}")


def spread(values: list[float]) -> str:
    """Mean ± standard deviation over seeds, with the range and the count."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return (f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds: "
            f"{min(values):.3f}-{max(values):.3f})")
