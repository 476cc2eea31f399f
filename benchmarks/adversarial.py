"""Run issue 15's adversarial suite (tests/adversarial_cases.py) and write the table of the README's Errors
section: cases tried, clean errors, correct results, and the outcomes that must stay at zero (tracebacks,
multi-line messages, silently wrong results, valid input refused, half-written outputs, data lost).

    .venv/bin/python benchmarks/adversarial.py            # → benchmarks/results/adversarial.{json,md}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.adversarial_cases import CASES, OUTCOMES, make_template, run_case, table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("-k", default="", help="only the cases whose id contains this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [c for c in CASES if args.k in c.id]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        template = make_template(Path(tmp))
        outcomes = []
        for case in cases:
            scratch = Path(tmp) / "cases"
            scratch.mkdir(exist_ok=True)
            outcome = run_case(case, template, scratch)
            outcomes.append(outcome)
            print(f"{outcome.kind:15s} {case.family:18s} {case.id}: {outcome.detail[:110]}", flush=True)
    rows = table(outcomes)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, no GPU used"
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "seconds": round(time.perf_counter() - start, 1),
        "table": rows,
        "cases": [{"id": o.case, "family": o.family, "outcome": o.kind, "detail": o.detail} for o in outcomes],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adversarial.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    header = ["family", "cases", *OUTCOMES]
    lines = [f"Adversarial suite (tests/adversarial_cases.py), {result['date']}, {machine}; {result['seconds']} s.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family, counts in rows.items():
        name = f"**{family}**" if family == "all" else family
        lines.append("| " + " | ".join([name, *(str(counts[k]) for k in header[1:])]) + " |")
    bad = [o for o in outcomes if o.kind not in ("clean error", "correct")]
    lines += ["", "Cases not clean or correct:" if bad else "Every case ended as a clean error or a correct result."]
    lines += [f"- {o.case}: {o.kind}: {o.detail}" for o in bad]
    (args.out / "adversarial.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
