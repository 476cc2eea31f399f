"""The one description of the machine a benchmark ran on, written once in ``anomalens.benchmarking.machine``
(loaded by its path in this working tree, as ``jobs.py`` explains)."""

from __future__ import annotations

from .paths import load_library_file

_machine = load_library_file("machine")

cpu_model = _machine.cpu_model
describe = _machine.describe
load_average = _machine.load_average
machine = _machine.machine
memory_gb = _machine.memory_gb

__all__ = ["cpu_model", "describe", "load_average", "machine", "memory_gb"]
