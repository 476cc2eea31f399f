"""A benchmark's summary files, written into its results folder in one update (``results.json`` last):

- ``results.json`` (schema ``anomalens.benchmark.results/1``): the configuration, the statistics' method,
  the machine, every invocation (``runs``), every job's row, the leaderboard rows (each figure with
  ``value``, ``ci_low``, ``ci_high``; over several seeds also ``seed_sd`` and the seeds' t-interval) and the
  paired comparisons (difference, interval, p-value, Holm-adjusted p-value, ``within_noise``);
- ``leaderboard.md`` and ``leaderboard.csv``: a table per category and one of the means;
- ``plots/``: per figure, bars per category with intervals; accuracy vs throughput;
- ``report.html``: all of it on one self-contained page (figures embedded).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

from anomalens.benchmarking import statistics as st
from anomalens.benchmarking.leaderboard import ACCURACY, COMPARED, MEAN, SIGNIFICANCE, compute_leaderboard
from anomalens.benchmarking.plan import BenchmarkPlan

__all__ = ["METHOD", "SUMMARY_FILES", "write_summary"]

RESULTS_FILE = "results.json"
TABLE_MD = "leaderboard.md"
TABLE_CSV = "leaderboard.csv"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
SUMMARY_FILES = (RESULTS_FILE, TABLE_MD, TABLE_CSV, REPORT_FILE, PLOTS_DIR)
RESULTS_SCHEMA = "anomalens.benchmark.results/1"

METHOD = (
    "95 % percentile intervals from a stratified bootstrap of the test images (normal and anomalous images "
    "resampled separately, {n_boot} replicates, the same replicates for every detector and seed of a category; "
    "pixel figures resample images, with scores binned at {bins} quantiles). Over several seeds: the mean, its "
    "bootstrap interval, and the seeds' standard deviation and Student-t interval. Mean row: categories "
    "resampled independently. Paired test: the difference of two detectors on the same replicates, two-sided "
    "bootstrap p-value, Holm-adjusted over every pair and category (the mean included) of a figure; "
    "'within noise': adjusted p ≥ {alpha}."
)


def _cell(entry: dict | None, markers: bool = True) -> str:
    if not entry:
        return "–"
    text = f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    if "seed_sd" in entry:
        text += f" ±{entry['seed_sd']:.3f}"
    if markers and entry.get("best"):
        text = f"**{text}**"
    elif markers and entry.get("within_noise_of_best"):
        text += " ≈"
    return text


def _jobs_line(results: dict) -> str:
    """When the jobs ran and how loaded the machine was (above its cores, other processes shared them)."""
    done = [j for j in results["jobs"] if j.get("date")]
    if not done:
        return "No job has run yet."
    loads = [j["load_average_at_end"][0] for j in done if j.get("load_average_at_end")]
    return (f"Jobs ran from {min(j['date'] for j in done)} to {max(j['date'] for j in done)}; the 1-minute load average "
            f"at their ends was {min(loads):g} to {max(loads):g} on {results['machine'].get('cores')} cores (above the "
            "cores, other processes shared them: times are then upper bounds)." if loads else "")


def _speed(row: dict) -> list[str]:
    def num(key: str, digits: int) -> str:
        value = row.get(key)
        return "–" if value is None else f"{value:.{digits}f}"
    return [num("fit_seconds", 1), num("test_images_per_second", 1), num("peak_rss_mb", 0)]


def markdown_tables(leaderboard: dict, plan: BenchmarkPlan) -> list[str]:
    """A markdown table per category (and the means), then the paired comparisons."""
    rows = leaderboard["rows"]
    shown = [(k, t) for k, t, _ in ACCURACY if any(k in r for r in rows)]
    header = ["detector", *[t for _, t in shown], "fit s", "test img/s", "peak RSS MB"]
    lines: list[str] = []
    categories = [c.name for c in plan.categories] + ([MEAN] if len(plan.categories) > 1 else [])
    for category in categories:
        own = [r for r in rows if r["category"] == category]
        first = own[0] if own else {}
        what = (f"mean over {len(plan.categories)} categories" if category == MEAN else
                f"{category} ({first.get('n_test', '?')} test images, {first.get('n_anomalous', '?')} anomalous)")
        lines += [f"### {what}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in own:
            if category == MEAN and not any(k in r for k, _ in shown):
                lines.append(f"| {r['detector']} | incomplete: needs every category |" + " |" * (len(header) - 2))
                continue
            if category != MEAN and not r.get("seeds_done"):
                errors = "; ".join(str(e) for e in r.get("seeds_failed") or [])
                lines.append(f"| {r['detector']} | {'failed: ' + errors if errors else 'not run yet'} |"
                             + " |" * (len(header) - 2))
                continue
            lines.append("| " + " | ".join([r["detector"], *[_cell(r.get(k)) for k, _ in shown], *_speed(r)]) + " |")
        lines.append("")
    tests = leaderboard["comparisons"]
    if tests:
        lines += ["### Paired comparisons", "",
                  "| figure | category | A − B | difference [95 % interval] | p | p (Holm) | verdict |", "|---|---|---|---|---|---|---|"]
        for t in tests:
            verdict = "within noise" if t["within_noise"] else f"{t['a'] if t['difference'] > 0 else t['b']} better"
            lines.append(f"| {t['metric']} | {t['category']} | {t['a']} − {t['b']} | {t['difference']:+.3f} "
                         f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | {t['p_value']:.3g} | {t['p_holm']:.3g} | {verdict} |")
        lines.append("")
    return lines


def csv_table(leaderboard: dict) -> str:
    """One line per (category, detector): each figure with its interval, then speed and memory."""
    keys = [k for k, _, _ in ACCURACY]
    fields = ["category", "detector"] + [f"{k}{s}" for k in keys for s in ("", "_ci_low", "_ci_high", "_seed_sd")]
    fields += ["best_or_within_noise_image_auroc", "fit_seconds", "test_images_per_second", "peak_rss_mb", "seeds_done"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in leaderboard["rows"]:
        line = {k: r.get(k) for k in ("category", "detector", "fit_seconds", "test_images_per_second",
                                       "peak_rss_mb", "seeds_done")}
        for k in keys:
            cell = r.get(k) or {}
            line.update({k: cell.get("value"), f"{k}_ci_low": cell.get("ci_low"), f"{k}_ci_high": cell.get("ci_high"),
                         f"{k}_seed_sd": cell.get("seed_sd")})
        image = r.get("image_auroc") or {}
        line["best_or_within_noise_image_auroc"] = bool(image.get("best") or image.get("within_noise_of_best"))
        writer.writerow(line)
    return buffer.getvalue()


def _figures(leaderboard: dict, plan: BenchmarkPlan) -> dict[str, bytes]:
    from anomalens.benchmarking.plots import accuracy_vs_throughput, category_bars

    rows = leaderboard["rows"]
    categories = [c.name for c in plan.categories] + ([MEAN] if len(plan.categories) > 1 else [])
    figures = {f"{key}.png": category_bars(rows, plan.detectors, categories, key, title)
               for key, title, _ in ACCURACY if key in COMPARED and any(key in r for r in rows)}
    if any("image_auroc" in r for r in rows):
        figures["accuracy_vs_throughput.png"] = accuracy_vs_throughput(rows, plan.detectors)
    return figures


def _html(results: dict, tables: list[str], figures: dict[str, bytes], plan: BenchmarkPlan) -> str:
    from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined

    from anomalens.benchmarking.machine import describe
    from anomalens.report.templating import format_number

    environment = Environment(loader=ChoiceLoader([PackageLoader("anomalens.benchmarking", "templates"),
                                                   PackageLoader("anomalens.report", "templates")]),
                              autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["num"] = format_number
    rows = results["leaderboard"]
    shown = [(k, t) for k, t, _ in ACCURACY if any(k in r for r in rows)]
    categories = [c.name for c in plan.categories] + ([MEAN] if len(plan.categories) > 1 else [])
    return environment.get_template("benchmark_report.html").render(
        title="anomalens benchmark", results=results, shown=shown, categories=categories, rows=rows,
        cell=lambda entry: _cell(entry, markers=False), machine=describe(results["machine"]),
        figures={name: base64.b64encode(data).decode("ascii") for name, data in figures.items()},
        jobs=results["jobs"], comparisons=results["comparisons"], method=results["statistics"]["method"])


def write_summary(out: Path, plan: BenchmarkPlan, job_results: dict[str, dict], run: dict[str, Any],
                  n_boot: int | None = None) -> dict[str, Any]:
    """Compute the leaderboard from the folder's jobs and write the summary files; returns ``results.json``."""
    from anomalens.benchmarking.machine import machine
    from anomalens.outputs import write_bytes, write_json, write_text
    from anomalens.outputs.folders import staged_update
    from anomalens.version import __version__

    n_boot = n_boot or st.DEFAULT_BOOTSTRAP
    leaderboard = compute_leaderboard(plan, out, job_results, n_boot=n_boot)
    try:
        earlier_runs = json.loads((out / RESULTS_FILE).read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        earlier_runs = []
    jobs = [job_results[j.key] for j in plan.jobs() if j.key in job_results]
    results = {
        "schema": RESULTS_SCHEMA, "anomalens": __version__, "config": plan.config(),
        "statistics": {"method": METHOD.format(n_boot=n_boot, bins=st.PIXEL_BINS, alpha=SIGNIFICANCE),
                       "bootstrap_replicates": n_boot, "level": st.LEVEL, "pixel_bins": st.PIXEL_BINS,
                       "aupro_fpr_limit": st.AUPRO_FPR_LIMIT, "significance": SIGNIFICANCE,
                       "paired_test": "paired bootstrap, Holm-adjusted per figure"},
        "machine": machine(), "runs": [*earlier_runs, run], "jobs": jobs,
        "leaderboard": leaderboard["rows"], "comparisons": leaderboard["comparisons"],
    }
    tables = markdown_tables(leaderboard, plan)
    figures = _figures(leaderboard, plan)
    from anomalens.benchmarking.machine import describe

    intro = [f"# anomalens benchmark: {', '.join(plan.detectors)} on {len(plan.categories)} categories, "
             f"seeds {', '.join(map(str, plan.seeds))}", "",
             f"Machine: {describe(results['machine'])}.", "",
             "Each cell: value [95 % interval]" + (" ±seed sd" if len(plan.seeds) > 1 else "") + "; **bold**: the "
             "best of the category; ≈: not separated from the best by the paired test. " +
             results["statistics"]["method"], "",
             _jobs_line(results), ""]
    with staged_update(out, kind="output", last=RESULTS_FILE, replaces=SUMMARY_FILES) as stage:
        write_text(stage / TABLE_MD, "\n".join(intro + tables))
        write_text(stage / TABLE_CSV, csv_table(leaderboard))
        (stage / PLOTS_DIR).mkdir()
        for name, data in figures.items():
            write_bytes(stage / PLOTS_DIR / name, data)
        write_text(stage / REPORT_FILE, _html(results, tables, figures, plan))
        write_json(stage / RESULTS_FILE, results)
    return results
