"""Where the benchmarks live, write their results and keep their scratch data; the library's benchmarking
files the harness shares."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1]
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"  # committed
WORK = BENCHMARKS / "_work"  # data, fitted runs, baselines: ignored by git
LIBRARY_BENCHMARKING = ROOT / "src" / "anomalens" / "benchmarking"


def load_library_file(name: str) -> ModuleType:
    """``anomalens/benchmarking/<name>.py`` of this working tree, loaded by its path (standard-library-only
    files): the same code whichever anomalens tree a suite's job has first on its path."""
    key = f"harness_library_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, LIBRARY_BENCHMARKING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def makefile_marks(target: str, makefile: Path = ROOT / "Makefile") -> str:
    """The ``-m "..."`` marker expression of a Makefile target's pytest command (``test``, ``test-fast``): the
    suites that time a test tier run what ``make`` runs."""
    import re

    recipe = makefile.read_text().split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    return re.search(r'-m "([^"]+)"', recipe).group(1)


def makefile_parallel(makefile: Path = ROOT / "Makefile") -> list[str]:
    """The Makefile's ``PYTEST_PARALLEL ?= ...`` as arguments (``-n 2 --dist loadgroup``): the suites that time a
    test tier spread it over the workers as ``make`` does."""
    import re

    return re.search(r"^PYTEST_PARALLEL \?= (.+)$", makefile.read_text(), re.M).group(1).split()
