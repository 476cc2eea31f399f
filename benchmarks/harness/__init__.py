"""The benchmark harness: what every suite in ``benchmarks/`` shares, written once.

- :func:`machine` / :func:`describe` — the one description of the machine a result came from (the run
  provenance of ``anomalens.provenance.environment`` plus CPU model, cores, memory and load);
- :func:`run_job` — one measurement in a fresh process: a command or a suite's function, with its threads
  pinned, a timeout, another library tree first on the path; reports wall time and the job's peak RSS;
- :func:`checkout` — the baseline: a ``git worktree`` of a revision, to measure the code before a change;
- :class:`Results` / :func:`table` — one results schema (suite, date, machine, settings, rows as dicts)
  written as ``<name>.json`` beside a markdown report whose tables are declared as columns;
- :mod:`harness.datasets` — the synthetic categories and Fashion-MNIST subsamples the suites share;
- :mod:`harness.cli` — the options suites share (``--output``, ``--report-only``, ``--smoke``).

Suites are scripts run from the repository root, ``.venv/bin/python benchmarks/<suite>.py``: Python puts
the script's folder first on ``sys.path``, which makes this package importable as ``harness``; anomalens
comes from the installed package (or from ``PYTHONPATH``, which is how a baseline tree is measured).
Nothing here imports torch or numpy.
"""

from .baseline import checkout, commit_label, short_commit
from .jobs import Job, JobError, run_job
from .machine import cpu_model, describe, machine, memory_gb
from .paths import BENCHMARKS, RESULTS, ROOT, WORK
from .results import Results, Run, describe_run, fmt, markdown, table, write_report

__all__ = [
    "BENCHMARKS", "Job", "JobError", "RESULTS", "ROOT", "Results", "Run", "WORK", "checkout", "commit_label",
    "cpu_model", "describe", "describe_run", "fmt", "machine", "markdown", "memory_gb", "run_job", "short_commit", "table",
    "write_report",
]
