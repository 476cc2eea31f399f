"""Tools beside the benchmarks: checks and reports that measure no speed or accuracy of their own.

- ``adversarial`` — the adversarial suite's table (tests/adversarial_cases.py) for the README's Errors section;
- ``renovation_check`` — do the committed comparison rows still hold after a refactor (now, and a baseline)?
- ``bitwise_check`` — every detector's fitted tensors, threshold and scores, bit for bit against a baseline;
- ``gpu_check.sh`` — the whole GPU check in one script, for a lent GPU machine.

Run from the repository root as modules, ``.venv/bin/python -m tools.<name>``. Importing this package puts
``benchmarks/`` on ``sys.path`` after the root — what running a suite script does — so a tool uses the
benchmark harness (``harness``) and a suite's own functions by the names the suites use.
"""

import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(1, BENCHMARKS)
