"""Running a benchmark into a results folder: one process per job, a time limit each, resumable.

The results folder is an anomalens output folder (:mod:`anomalens.outputs.folders`):

* created in one step (staging folder, then one rename) holding ``benchmark.json`` — the configuration
  (:meth:`BenchmarkPlan.config`) — and an empty ``jobs/``;
* each job's folder ``jobs/<detector>--<category>--seed<N>/`` appears in one step when the job ends
  (``result.json``, and for a job that ran: ``scores.csv``, ``pixels.npz``), so a stopped benchmark keeps
  every finished job; a failed job's folder says why (``status: failed``, ``error``);
* rerunning the same command on the folder skips the finished jobs (failed ones run again); another
  configuration is refused in one line unless ``--overwrite``, which replaces the folder (only a benchmark
  folder, never another kind);
* the tables, plots and ``report.html`` are then written in (``staged_update``), ``results.json`` last.

A job runs :func:`anomalens.benchmarking.worker.run_detector_job` under
:func:`anomalens.benchmarking.jobs.run_job` (a fresh interpreter, threads pinned, killed at the time limit,
its own peak RSS). ``engine="ray"`` sends the same call to Ray tasks (:func:`execute_job`), which return the
job's files to this process to be written here: the cluster's nodes need the data at the same path, not
the results folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from anomalens.benchmarking.plan import BenchmarkPlan, Job
from anomalens.errors import AnomalensError

__all__ = ["CONFIG_FILE", "JOBS_DIR", "RESULT_FILE", "execute_job", "open_results_folder", "read_job_results",
           "run_benchmark"]

logger = logging.getLogger("anomalens")

CONFIG_FILE = "benchmark.json"
JOBS_DIR = "jobs"
RESULT_FILE = "result.json"
SCHEMA = "anomalens.benchmark/1"


# ------------------------------------------------------------------------------------------- the folder
def open_results_folder(out: Path, plan: BenchmarkPlan, overwrite: bool, inputs: list,
                        folders: tuple[str, ...] = ()) -> str:
    """Create the results folder (with ``jobs/`` and the empty ``folders``), or accept it for a resumed run;
    returns "created" or "resumed"."""
    from anomalens.outputs import staged_directory, write_json
    from anomalens.outputs.marker import entries, owned_names

    config = {"schema": SCHEMA, **plan.config()}
    if out.is_dir() and entries(out):
        if CONFIG_FILE not in owned_names(out) or not (out / CONFIG_FILE).is_file():
            raise AnomalensError(f"{out}: already exists and is not a benchmark results folder; choose another folder "
                                 "(--overwrite replaces only a benchmark results folder)")
        try:
            earlier = json.loads((out / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            earlier = {}
        if earlier == config and not overwrite:
            return "resumed"
        if not overwrite:
            changed = [k for k in config if earlier.get(k) != config[k]] or ["schema"]
            raise AnomalensError(f"{out}: holds a benchmark with another configuration ({', '.join(changed)} differ); "
                                 "rerun it as it was to resume, pass --overwrite to replace it, or choose another folder")
    with staged_directory(out, overwrite=overwrite, kind="output", inputs=inputs) as stage:
        write_json(stage / CONFIG_FILE, config)
        for name in (JOBS_DIR, *folders):
            (stage / name).mkdir()
    return "created"


def read_job_results(out: Path) -> dict[str, dict]:
    """``{job key: result.json}`` of the job folders in ``out``."""
    results = {}
    jobs = out / JOBS_DIR
    for folder in sorted(jobs.iterdir()) if jobs.is_dir() else []:
        if folder.name.startswith(".") or not (folder / RESULT_FILE).is_file():
            continue
        try:
            results[folder.name] = json.loads((folder / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue  # unreadable: the job runs again
    return results


def record_job(out: Path, job: Job, result: dict, files: dict[str, bytes]) -> Path:
    """Write one job's folder in one step (a failed earlier attempt is replaced)."""
    from anomalens.outputs import staged_directory, write_bytes, write_json

    with staged_directory(out / JOBS_DIR / job.key, overwrite=True, kind="output") as stage:
        for name, data in files.items():
            write_bytes(stage / name, data)
        write_json(stage / RESULT_FILE, result)
    return out / JOBS_DIR / job.key


# ------------------------------------------------------------------------------------------- one job
def execute_job(spec: dict[str, Any], timeout: float | None, threads: int | None) -> tuple[dict, dict[str, bytes]]:
    """Run one job in a fresh process (here or in a Ray task); returns its result row and its files."""
    from anomalens.benchmarking.jobs import run_job
    from anomalens.benchmarking.machine import load_average
    from anomalens.benchmarking.worker import run_detector_job

    with tempfile.TemporaryDirectory(prefix="anomalens-benchmark-") as folder:
        done = run_job(run_detector_job, spec, folder, threads=threads, timeout=timeout, check=False)
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()} if done.ok else {}
    row = {"detector": spec["detector"], "category": spec["category"], "seed": spec["params"]["seed"],
           "params": spec["params"], "data": spec["data"], "status": "ok" if done.ok else "failed",
           "wall_seconds": round(done.seconds, 2),
           "peak_rss_mb": round(done.peak_rss_mb, 1) if done.peak_rss_mb is not None else None,
           "cpu_seconds": round((done.user_seconds or 0) + (done.system_seconds or 0), 2),
           "load_average_at_end": load_average(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if done.ok:
        row.update(done.value or {})
    else:
        row["error"] = done.error_line()
        row["timed_out"] = done.timed_out
    return row, files


# ------------------------------------------------------------------------------------------- engines
def _run_local(jobs: list[Job], timeout: float | None, threads: int | None,
               finished: Callable[[Job, dict, dict], None]) -> None:
    for job in jobs:
        row, files = execute_job(job.worker_spec(), timeout, threads)
        finished(job, row, files)


def _run_on_ray(jobs: list[Job], timeout: float | None, threads: int | None, address: str | None, quiet: bool,
                finished: Callable[[Job, dict, dict], None]) -> None:
    from anomalens.distributed.cluster import job_failure, ray_cluster

    with ray_cluster(address, quiet=quiet) as ray:
        task = ray.remote(num_cpus=threads or 1, max_retries=0)(execute_job)
        waiting = {task.remote(job.worker_spec(), timeout, threads): job for job in jobs}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                job = waiting.pop(ref)
                try:
                    row, files = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task itself died (its node lost): the job failed
                    spec = job.worker_spec()
                    row, files = {"detector": job.detector, "category": job.category.name, "seed": job.seed,
                                  "params": spec["params"], "data": spec["data"], "status": "failed",
                                  "error": str(job_failure(exc, job.key))}, {}
                finished(job, row, files)


# ------------------------------------------------------------------------------------------- the whole run
@contextlib.contextmanager
def _jobs_lock(out: Path) -> Iterator[None]:
    """One benchmark command at a time on a results folder (its jobs are written one by one)."""
    from anomalens.outputs.targets import folder_lock

    with folder_lock(out / JOBS_DIR):
        yield


def run_benchmark(plan: BenchmarkPlan, out: str | Path, *, overwrite: bool = False, timeout: float | None = None,
                  engine: str = "local", address: str | None = None, threads: int | None = None,
                  n_boot: int | None = None, tracker: Any = None, progress: bool = True,
                  inputs: list | None = None, run_jobs: bool = True) -> dict[str, Any]:
    """Run the plan's unfinished jobs into ``out``, then write its tables, plots and report; returns the
    results (what ``results.json`` holds). ``run_jobs=False``: only the tables of the jobs already done."""
    from anomalens.benchmarking.machine import load_average
    from anomalens.benchmarking.summary import write_summary
    from anomalens.cores import available_cores

    out = Path(out)
    threads = threads or available_cores()
    open_results_folder(out, plan, overwrite, list(inputs or []))
    done = {k for k, r in read_job_results(out).items() if r.get("status") == "ok"}
    jobs = plan.jobs()
    pending = [job for job in jobs if job.key not in done] if run_jobs else []
    if progress:
        print(f"benchmark: {len(jobs)} jobs ({len(plan.detectors)} detectors × {len(plan.categories)} categories × "
              f"{len(plan.seeds)} seeds), {len(done & {j.key for j in jobs})} already done in {out}", flush=True)
    started, load_before = time.time(), load_average()

    def finished(job: Job, row: dict, files: dict) -> None:
        folder = record_job(out, job, row, files)
        if tracker is not None:
            from anomalens.benchmarking.tracking import track_job

            track_job(tracker, job, row, folder)
        if progress:
            what = (f"image AUROC {row['image_auroc']:.3f}, fit {row['fit_seconds']:.1f} s, "
                    f"{row['test_images_per_second']} img/s" if row["status"] == "ok" else f"failed: {row['error']}")
            print(f"  {job.key}: {what}", flush=True)

    if pending:
        with _jobs_lock(out):
            if engine == "ray":
                _run_on_ray(pending, timeout, threads, address, not progress, finished)
            else:
                _run_local(pending, timeout, threads, finished)
    run = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "engine": engine, "threads_per_job": threads,
           "timeout_s": timeout, "jobs_run": len(pending), "jobs_done_before": len(done & {j.key for j in jobs}),
           "minutes": round((time.time() - started) / 60, 2), "load_average_before": load_before,
           "load_average_after": load_average()}
    results = write_summary(out, plan, read_job_results(out), run, n_boot=n_boot)
    if tracker is not None:
        from anomalens.benchmarking.tracking import track_summary

        track_summary(tracker, out, results)
    return results
