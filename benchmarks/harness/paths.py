"""Where the benchmarks live, write their results and keep their scratch data."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"  # committed
WORK = BENCHMARKS / "_work"  # data, fitted runs, baselines: ignored by git
