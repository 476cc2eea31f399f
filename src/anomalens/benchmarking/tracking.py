"""A benchmark logged to an experiment tracker (``--track``, ``anomalens.tracking.open_tracker``): one tracker
run per finished job (its settings as parameters, its figures as metrics, its scores as an artefact) and one
for the leaderboard (each cell's value and interval as metrics, the tables, figures and page as artefacts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalens.benchmarking.plan import Job

__all__ = ["track_job", "track_summary"]

_METRICS = ("image_auroc", "pixel_auroc", "aupro", "balanced_accuracy", "tpr", "fpr", "fit_seconds", "test_seconds",
            "test_images_per_second", "peak_rss_mb", "wall_seconds")


def track_job(tracker: Any, job: Job, row: dict, folder: Path) -> None:
    """One tracker run for ``job``: tags (detector, category, seed, status, provenance), its parameters (the
    label and the registry name it runs among them), its numbers and, when it ran, its ``scores.csv``."""
    from anomalens.tracking import provenance_tags

    tracker.start_run(job.key, provenance_tags(job.category.data, stage="benchmark-job", detector=job.detector,
                                               category=job.category.name, seed=job.seed, status=row["status"],
                                               error=row.get("error")))
    try:
        # "detector" is the job's label (a -m LABEL=NAME variant's LABEL); "model" the registry name it runs
        tracker.log_params({"detector": job.detector, "model": job.model or job.detector,
                            "category": job.category.name, "data": job.category.data,
                            **{f"param.{k}": v for k, v in row.get("params", {}).items()}})
        tracker.log_metrics({k: float(row[k]) for k in _METRICS if isinstance(row.get(k), (int, float))})
        if (folder / "scores.csv").is_file():
            tracker.log_artifact(folder / "scores.csv")
    finally:
        tracker.end_run()


def track_summary(tracker: Any, out: Path, results: dict) -> None:
    """One tracker run for the leaderboard: ``<category>.<detector>.<figure>`` with ``_ci_low`` / ``_ci_high``,
    and the summary files as artefacts."""
    from anomalens.tracking import provenance_tags

    metrics = {}
    for row in results["leaderboard"]:
        for key, cell in row.items():
            if isinstance(cell, dict) and "value" in cell:
                stem = f"{row['category']}.{row['detector']}.{key}"
                metrics.update({stem: cell["value"], f"{stem}_ci_low": cell["ci_low"], f"{stem}_ci_high": cell["ci_high"]})
    tracker.start_run(f"benchmark {out.name}", provenance_tags(stage="benchmark", results=str(out)))
    try:
        tracker.log_params({"detectors": ",".join(results["config"]["detectors"]),
                            "categories": ",".join(c["name"] for c in results["config"]["categories"]),
                            "seeds": ",".join(map(str, results["config"]["seeds"])),
                            "bootstrap_replicates": results["statistics"]["bootstrap_replicates"]})
        tracker.log_metrics(metrics)
        for name in ("leaderboard.md", "leaderboard.csv", "report.html", "results.json", "plots"):
            tracker.log_artifact(out / name)
    finally:
        tracker.end_run()
