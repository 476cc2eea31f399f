"""One measurement in a fresh process: :func:`run_job`, written once in ``anomalens.benchmarking.jobs``.

That file is loaded here by its path in this working tree, not imported from the ``anomalens`` on the path:
a suite measuring a baseline (an older tree first on ``PYTHONPATH``, which has no ``anomalens.benchmarking``)
imports the harness in its jobs too.
"""

from __future__ import annotations

from .paths import load_library_file

_jobs = load_library_file("jobs")

Job = _jobs.Job
JobError = _jobs.JobError
job_env = _jobs.job_env
run_job = _jobs.run_job
QUIET = _jobs.QUIET
THREAD_VARIABLES = _jobs.THREAD_VARIABLES

__all__ = ["Job", "JobError", "QUIET", "THREAD_VARIABLES", "job_env", "run_job"]
