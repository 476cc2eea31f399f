"""The one description of the machine a benchmark ran on.

It is a run's provenance (:func:`anomalens.provenance.environment`: library versions, platform, device, the
GPU's name) plus what a timing needs beside it: the CPU model, the cores this process may use, the memory,
the load average (other jobs on a shared machine) and the thread settings. Torch-free unless it is already
imported (then its thread count is included) or ``device`` is a CUDA device.

Standard library only at import: ``benchmarks/harness`` loads this file by its path (see ``jobs.py``).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Physical memory in GiB (one decimal), or None where the system does not say."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (above the cores: other jobs shared them)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine(device: Any = None) -> dict[str, Any]:
    """Provenance of a measurement: software versions, device, CPU, cores, memory, threads and load now."""
    # Imported here: a suite's job that runs a baseline's anomalens loads this file too.
    from anomalens.cores import available_cores
    from anomalens.provenance import environment

    info = environment(device)
    info.update(cpu=cpu_model(), cores=available_cores(), memory_gb=memory_gb(), load_average=load_average(),
                omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if "gpu" in info:
            info["cuda"] = torch.version.cuda
    return info


def describe(m: dict[str, Any] | str, load: bool = True) -> str:
    """One line for a report: CPU, cores, memory; Python, torch (threads) on the device; the load average
    (``load=False``: left out, where the report gives it before and after the run).

    Also reads the machine entries of results written before this harness (``memory`` as text,
    ``load_average_1min_at_end``); a string is returned as it is.
    """
    if isinstance(m, str):
        return m
    cores = m.get("cores", m.get("cpu_cores"))
    hardware = [m.get("cpu") or m.get("platform") or "unknown CPU"]
    if cores is not None:
        total = m.get("cpu_count")
        hardware.append(f"{cores} cores" + (f" (of {total})" if total and total != cores else ""))
    if m.get("memory_gb"):
        hardware.append(f"{m['memory_gb']} GiB RAM")
    elif m.get("memory"):
        hardware.append(f"{m['memory']} RAM")
    software = [f"Python {m['python']}"] if m.get("python") else []
    if m.get("torch"):
        software.append(f"torch {m['torch']}" + (f" ({m['torch_threads']} threads)" if m.get("torch_threads") else ""))
    device = m.get("device") or "cpu"
    if m.get("gpu") and not str(m["gpu"]).startswith("none"):
        device = f"{m['gpu']}" + (f" (CUDA {m['cuda']})" if m.get("cuda") else "")
    text = ", ".join(hardware) + "; " + ", ".join(software) + (" on " if software else "") + device
    if m.get("omp_num_threads"):
        text += f", OMP_NUM_THREADS={m['omp_num_threads']}"
    if not load:
        return text
    if m.get("load_average"):
        text += "; load average " + ", ".join(str(v) for v in m["load_average"])
    elif m.get("load_average_1min_at_end") is not None:
        text += f"; 1-min load average {m['load_average_1min_at_end']} at the end"
    return text
