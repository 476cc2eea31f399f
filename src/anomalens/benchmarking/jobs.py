"""One measurement in a fresh process: :func:`run_job` (``anomalens benchmark`` and the ``benchmarks/`` suites).

A job is a command (``["python", "-m", "anomalens.cli", "predict", ...]``) or a module-level function,
called with JSON-able arguments in a new interpreter, that returns a JSON-able value: a function of an
importable module (``anomalens.benchmarking.worker``) is imported by its module name; a function of a suite
script is loaded from the suite's file the way Python runs a script (its folder first on ``sys.path``). Either way the job runs under a
small launcher process that forks it and reads its resource usage when it ends, so the reported peak RSS is
the job's own: a process started directly by a large benchmark process (torch imported) would carry that
process's high-water mark across ``fork`` + ``exec`` (Linux counts the pre-exec memory in ``ru_maxrss``);
under the launcher the floor is the launcher's own ~10 MB.

Threads are pinned through the environment (``OMP_NUM_THREADS`` and its MKL / OpenBLAS twins, which torch
reads at start-up), optionally to given CPUs too (affinity); ``src`` puts another library tree first on
``PYTHONPATH`` — how the code before a change (:func:`harness.checkout`) is measured.

Standard library only: ``benchmarks/harness`` loads this file by its path, so that a suite measuring an
older anomalens tree (which has no ``anomalens.benchmarking``) still runs its jobs through it.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# Runs the job as its child and writes (seconds, peak RSS, CPU times) when it ends; its exit code is the job's.
# The job runs in a session of its own (a timeout kills its whole group), so a `kill -9` of the benchmark would
# not reach it: launcher and job each ask Linux to SIGKILL them when their parent ends (prctl PR_SET_PDEATHSIG),
# else an orphaned job ran on to its end (minutes to hours of CPU) beside the benchmark's resumed run. (The
# launcher repeats anomalens.processes.die_with_parent: it runs the jobs of older library trees too, see above.)
_LAUNCHER = r"""
import json, os, signal, sys, time
report, cpus, parent, command = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def die_with(parent):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError, ImportError):
        return
    if os.getppid() != parent:  # it ended before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)

die_with(parent)
if cpus:
    os.sched_setaffinity(0, cpus)
start = time.perf_counter()
launcher = os.getpid()
pid = os.fork()
if pid == 0:
    die_with(launcher)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"cannot run {command[0]}: {exc}\n")
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(report, "w") as f:
    json.dump({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "user_seconds": usage.ru_utime,
               "system_seconds": usage.ru_stime}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""

# Calls FUNCTION of the suite file PATH (or of the module named ``module:NAME``) with the JSON arguments and
# writes its JSON value to OUT.
_CALL = r"""
import importlib, importlib.util, json, os, sys
path, name, args, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if path.startswith("module:"):
    module = importlib.import_module(path[len("module:"):])
else:
    sys.path.insert(0, os.path.dirname(path))  # as for `python PATH`: the suite's folder (and its harness) first
    spec = importlib.util.spec_from_file_location("benchmark_job", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
value = getattr(module, name)(*args)
with open(out, "w") as f:
    json.dump(value, f, default=str)
"""

# Set for every job unless the caller's environment or ``env`` says otherwise: no download, no progress bars.
QUIET = {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "ANOMALENS_NO_PROGRESS": "1"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Job:
    """What one job did: its exit status, wall and CPU seconds, peak RSS, output and (a function's) value."""

    command: list[str]
    returncode: int | None
    seconds: float
    peak_rss_mb: float | None
    user_seconds: float | None
    system_seconds: float | None
    stdout: str
    stderr: str
    timed_out: bool = False
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def json(self) -> Any:
        """The last line of the output, read as JSON (what a ``--worker`` command prints)."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise ValueError(f"{' '.join(self.command[:3])}: the job printed nothing (was its output captured?)")
        return json.loads(lines[-1])

    def error_line(self) -> str:
        """One line saying why the job failed: its last line on stderr."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        return (self.stderr.strip().splitlines() or [f"exit status {self.returncode}"])[-1]


class JobError(RuntimeError):
    """A job that ended with an error (or ran past its timeout); ``job`` holds what it printed."""

    def __init__(self, job: Job, label: str = ""):
        tail = "\n".join(job.stderr.strip().splitlines()[-15:])
        super().__init__(f"{label or ' '.join(job.command[:4])} failed ({job.error_line()}):\n{tail}")
        self.job = job


def job_env(threads: int | None = None, src: str | Path | None = None, env: dict[str, str] | None = None) -> dict:
    """The environment of a job: this one, quiet, threads pinned, ``src`` first on PYTHONPATH, then ``env``."""
    out = {**QUIET, **os.environ}
    if threads is not None:
        out.update({name: str(threads) for name in THREAD_VARIABLES})
    if src is not None:
        kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        out["PYTHONPATH"] = os.pathsep.join([str(src), *kept])
    out.update(env or {})
    return out


def run_job(target: Sequence[str] | Callable[..., Any], *args: Any, threads: int | None = None,
            timeout: float | None = None, cpus: Sequence[int] | None = None, src: str | Path | None = None,
            python: str | Path | None = None, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            check: bool = True, capture: bool = True, label: str = "") -> Job:
    """Run ``target`` in a fresh process and measure it.

    ``target``: a command (a list of strings; ``args`` are appended), or a module-level function of a suite
    file, called there as ``target(*args)`` (JSON-able arguments; paths become strings) whose JSON-able return
    value becomes ``Job.value``. ``threads``: the job's compute threads; ``cpus``: the CPUs it may run on;
    ``src``: a library tree's ``src`` folder first on the job's PYTHONPATH; ``python``: the interpreter of a
    function job (default this one); ``timeout``: seconds, after which the job and its children are killed;
    ``check``: raise :class:`JobError` when the job fails; ``capture``: keep its output (else it goes to ours).
    """
    with tempfile.TemporaryDirectory(prefix="benchmark-job-") as tmp:
        report, value_file = Path(tmp) / "usage.json", Path(tmp) / "value.json"
        if callable(target):
            command = _function_command(target, args, value_file, python)
        else:
            command = [str(part) for part in (*target, *args)]
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(report), json.dumps(list(cpus or [])),
                    str(os.getpid()), *command]
        stream = subprocess.PIPE if capture else None
        start = time.perf_counter()
        proc = subprocess.Popen(launcher, stdout=stream, stderr=stream, text=True, cwd=cwd,
                                env=job_env(threads, src, env), start_new_session=True)
        timed_out = False
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            stdout, stderr = proc.communicate()
        except BaseException:  # KeyboardInterrupt included: the job does not outlive us
            _kill_group(proc.pid)
            proc.wait()
            raise
        seconds = time.perf_counter() - start
        usage = json.loads(report.read_text()) if report.is_file() else {}
        value = json.loads(value_file.read_text()) if value_file.is_file() else None
    job = Job(command=command, returncode=None if timed_out else proc.returncode,
              seconds=usage.get("seconds", seconds), peak_rss_mb=usage.get("peak_rss_mb"),
              user_seconds=usage.get("user_seconds"), system_seconds=usage.get("system_seconds"),
              stdout=stdout or "", stderr=stderr or "", timed_out=timed_out, value=value)
    if check and not job.ok:
        raise JobError(job, label)
    return job


def _function_command(function: Callable[..., Any], args: Sequence[Any], out: Path,
                      python: str | Path | None) -> list[str]:
    if "<locals>" in function.__qualname__ or "." in function.__qualname__:
        raise ValueError(f"run_job: {function.__qualname__} is not a module-level function")
    arguments = json.dumps([str(a) if isinstance(a, Path) else a for a in args], default=str)
    module = function.__module__
    if module.startswith("anomalens."):
        # a library function: imported by name (putting its folder on sys.path would let a module there,
        # such as statistics.py, hide the standard library's of the same name)
        where = f"module:{module}"
    else:
        path = inspect.getsourcefile(function)
        if path is None:
            raise ValueError(f"run_job: {function.__qualname__} has no source file")
        where = str(Path(path).resolve())
    return [str(python or sys.executable), "-c", _CALL, where, function.__name__, arguments, str(out)]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
