"""Benchmarks of detectors: ``anomalens benchmark`` and the ``benchmarks/`` suites share this package.

- :mod:`~anomalens.benchmarking.jobs` — one measurement in a fresh process (threads pinned, a time limit,
  its own peak RSS): :func:`run_job`;
- :mod:`~anomalens.benchmarking.machine` — the one description of the machine a result came from;
- :mod:`~anomalens.benchmarking.plan` — detectors × categories × seeds as jobs, and the configuration a
  results folder records;
- :mod:`~anomalens.benchmarking.worker` — one job: fit, score, per-image scores and pixel summary;
- :mod:`~anomalens.benchmarking.runner` — the results folder (outputs protocol, resumable), local or Ray;
- :mod:`~anomalens.benchmarking.statistics` — stratified bootstrap intervals, paired tests, Holm;
- :mod:`~anomalens.benchmarking.leaderboard`, :mod:`~anomalens.benchmarking.summary`,
  :mod:`~anomalens.benchmarking.plots` — the tables, figures and page.

Python API::

    from anomalens.benchmarking import BenchmarkPlan, run_benchmark, synthetic_categories
    plan = BenchmarkPlan(["padim", "patchcore"], synthetic_categories(["brick"], Path("data"), 64, counts),
                         image_size=64)
    results = run_benchmark(plan, "bench")

Importing the package is light (no torch, numpy or matplotlib until a function needs them).
"""

from __future__ import annotations

from anomalens.benchmarking.plan import (SYNTHETIC_COUNTS, BenchmarkPlan, Category, Job, data_categories,
                                         parse_detectors, parse_overrides, synthetic_categories)
from anomalens.benchmarking.runner import run_benchmark

__all__ = ["SYNTHETIC_COUNTS", "BenchmarkPlan", "Category", "Job", "data_categories", "parse_detectors",
           "parse_overrides", "run_benchmark", "synthetic_categories"]
