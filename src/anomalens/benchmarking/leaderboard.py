"""From the jobs' per-image scores to the leaderboard: every accuracy figure with its bootstrap interval,
the mean over categories, and the paired comparisons of the detectors (which differences are real).

Inputs are the job folders (``result.json``, ``scores.csv``, ``pixels.npz``), so the statistics can be
recomputed at any time from what the folder keeps. The method is :mod:`anomalens.benchmarking.statistics`'s;
here it is applied per category (one set of resamples per category, shared by every detector and seed),
per (detector, category) over its seeds, and to the mean over the categories (each category resampled
independently, the replicates averaged).
"""

from __future__ import annotations

import csv
import io
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.benchmarking import statistics as st
from anomalens.benchmarking.plan import BenchmarkPlan
from anomalens.errors import DataError

__all__ = ["ACCURACY", "MEAN", "SIGNIFICANCE", "compute_leaderboard", "read_scores"]

#: The accuracy figures, in table order: (key, title, higher is better).
ACCURACY = [("image_auroc", "image AUROC", True), ("pixel_auroc", "pixel AUROC", True), ("aupro", "AUPRO", True),
            ("balanced_accuracy", "balanced accuracy", True), ("tpr", "TPR", True), ("fpr", "FPR", False)]
#: The figures the detectors are compared on (paired test, Holm family per figure).
COMPARED = ["image_auroc", "pixel_auroc", "aupro"]
MEAN = "mean"
SIGNIFICANCE = 0.05


def read_scores(folder: Path) -> dict[str, np.ndarray]:
    """A job's ``scores.csv``: names, labels, scores, flagged (the run's own decision)."""
    with open(folder / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"names": np.array([r["name"] for r in rows]), "labels": np.array([int(r["label"]) for r in rows]),
            "scores": np.array([float(r["score"]) for r in rows]), "flagged": np.array([int(r["flagged"]) for r in rows])}


def _pixel_summary(folder: Path) -> dict[str, np.ndarray] | None:
    path = folder / "pixels.npz"
    if not path.is_file():
        return None
    with np.load(io.BytesIO(path.read_bytes())) as data:
        return {k: data[k] for k in data.files}


def _replicates(scores: dict, pixels: dict | None, weights: np.ndarray) -> dict[str, np.ndarray]:
    reps = {"image_auroc": st.image_auroc_replicates(scores["labels"], scores["scores"], weights),
            **st.operating_point_replicates(scores["labels"], scores["flagged"], weights)}
    if pixels is not None:
        reps["pixel_auroc"] = st.pixel_auroc_replicates(pixels, weights)
        reps["aupro"] = st.aupro_replicates(pixels, weights)
    return reps


def _entry(values: list[float], replicates: np.ndarray, level: float) -> dict[str, Any]:
    """One cell: the mean over seeds, the bootstrap interval of that mean, the spread over seeds."""
    low, high = st.percentile_interval(replicates, level)
    cell: dict[str, Any] = {"value": float(np.mean(values)), "ci_low": low, "ci_high": high, "seeds": len(values)}
    if len(values) > 1:
        cell["seed_sd"] = float(np.std(values, ddof=1))
        cell["seed_ci_low"], cell["seed_ci_high"] = st.seed_interval(values, level)
    return cell


def compute_leaderboard(plan: BenchmarkPlan, out: Path, results: dict[str, dict], n_boot: int = st.DEFAULT_BOOTSTRAP,
                        level: float = st.LEVEL, seed: int = 0) -> dict[str, Any]:
    """``{"rows": [...], "comparisons": [...]}`` from the finished jobs in ``out`` (see the module docstring)."""
    rows, replicates = [], {}
    for category in plan.categories:
        weights, names = None, None
        for detector in plan.detectors:
            jobs = [(results.get(j.key), out / "jobs" / j.key) for j in plan.jobs()
                    if j.detector == detector and j.category == category]
            ok = [(r, folder) for r, folder in jobs if r and r.get("status") == "ok"]
            row: dict[str, Any] = {"category": category.name, "detector": detector, "seeds_done": len(ok),
                                   "seeds_failed": [r.get("error") for r, _ in jobs if r and r.get("status") != "ok"]}
            rows.append(row)
            if not ok:
                continue
            per_seed = []
            for result, folder in ok:
                scores = read_scores(folder)
                if names is None:
                    names = scores["names"]
                    weights = st.bootstrap_weights(scores["labels"], n_boot, st.replicate_seed(category.name, seed))
                elif not np.array_equal(names, scores["names"]):
                    raise DataError(f"{folder}: scored other test images than the other jobs of {category.name}")
                per_seed.append((result, _replicates(scores, _pixel_summary(folder), weights)))
            for key, _, _ in ACCURACY:
                values = [r.get(key) for r, _ in per_seed]
                if any(v is None for v in values) or any(key not in reps for _, reps in per_seed):
                    continue
                mean_reps = np.mean([reps[key] for _, reps in per_seed], axis=0)
                row[key] = _entry(values, mean_reps, level)
                replicates[(category.name, detector, key)] = mean_reps
            results_ok = [r for r, _ in per_seed]
            row["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in results_ok]))
            row["test_images_per_second"] = float(np.mean([r["test_images_per_second"] for r in results_ok]))
            row["peak_rss_mb"] = max((r.get("peak_rss_mb") or 0) for r in results_ok) or None
            row["n_test"], row["n_anomalous"] = results_ok[0]["n_test"], results_ok[0]["n_anomalous"]
    rows += _mean_rows(plan, rows, replicates, level)
    return {"rows": rows, "comparisons": _comparisons(plan, rows, replicates, level)}


def _mean_rows(plan: BenchmarkPlan, rows: list[dict], replicates: dict, level: float) -> list[dict]:
    """Per detector, the mean over the categories of each figure that every category has."""
    means = []
    if len(plan.categories) < 2:
        return means
    for detector in plan.detectors:
        own = [r for r in rows if r["detector"] == detector]
        row: dict[str, Any] = {"category": MEAN, "detector": detector}
        for key, _, _ in ACCURACY:
            if not all(key in r for r in own):
                continue
            reps = np.mean([replicates[(r["category"], detector, key)] for r in own], axis=0)
            low, high = st.percentile_interval(reps, level)
            row[key] = {"value": float(np.mean([r[key]["value"] for r in own])), "ci_low": low, "ci_high": high}
            replicates[(MEAN, detector, key)] = reps
        if all("fit_seconds" in r for r in own):
            row["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in own]))
            row["test_images_per_second"] = float(np.mean([r["test_images_per_second"] for r in own]))
            row["peak_rss_mb"] = max(r["peak_rss_mb"] or 0 for r in own) or None
        means.append(row)
    return means


def _comparisons(plan: BenchmarkPlan, rows: list[dict], replicates: dict, level: float) -> list[dict]:
    """Every pair of detectors on every category (and the mean), per compared figure: the difference, its
    paired-bootstrap interval and p-value, Holm-adjusted over the figure's whole family."""
    tests = []
    categories = [c.name for c in plan.categories] + ([MEAN] if len(plan.categories) > 1 else [])
    for key in COMPARED:
        family = []
        for category in categories:
            for a, b in combinations(plan.detectors, 2):
                ra, rb = replicates.get((category, a, key)), replicates.get((category, b, key))
                if ra is None or rb is None:
                    continue
                va = next(r[key]["value"] for r in rows if r["category"] == category and r["detector"] == a)
                vb = next(r[key]["value"] for r in rows if r["category"] == category and r["detector"] == b)
                family.append({"metric": key, "category": category, "a": a, "b": b, "difference": va - vb,
                               **st.paired_test(ra, rb, level)})
        for test, adjusted in zip(family, st.holm([t["p_value"] for t in family])):
            test["p_holm"] = adjusted
            test["within_noise"] = not adjusted < SIGNIFICANCE
        tests += family
    _mark_best(rows, tests)
    return tests


def _mark_best(rows: list[dict], tests: list[dict]) -> None:
    """Per category and figure: ``best`` on the highest value, ``within_noise_of_best`` on the detectors
    whose difference from it the paired test does not separate."""
    for key, _, higher in ACCURACY:
        if key not in COMPARED:
            continue
        for category in {r["category"] for r in rows}:
            cells = [r for r in rows if r["category"] == category and key in r]
            if not cells:
                continue
            best = max(cells, key=lambda r: r[key]["value"] if higher else -r[key]["value"])
            for r in cells:
                if r is best:
                    r[key]["best"] = True
                    continue
                pair = next((t for t in tests if t["metric"] == key and t["category"] == category
                             and {t["a"], t["b"]} == {r["detector"], best["detector"]}), None)
                r[key]["within_noise_of_best"] = bool(pair and pair["within_noise"])
