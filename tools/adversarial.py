"""Run issue 15's adversarial suite (tests/adversarial_cases.py) and write the table of the README's Errors
section: cases tried, clean errors, correct results, and the outcomes that must stay at zero (tracebacks,
multi-line messages, silently wrong results, valid input refused, half-written outputs, data lost).

    .venv/bin/python -m tools.adversarial                  # → tools/results/adversarial.{json,md}
    .venv/bin/python -m tools.adversarial -k export --out /tmp/adversarial   # only the cases whose id says "export"
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from harness import Results, describe, machine, markdown, table  # noqa: E402
from tests.adversarial_cases import CASES, OUTCOMES, make_template, run_case  # noqa: E402
from tests.adversarial_cases import table as outcome_table  # noqa: E402

SUITE = "adversarial"
OUTPUT = Path(__file__).resolve().parent / "results" / "adversarial"


def report(results: Results) -> str:
    header = ["family", "cases", *OUTCOMES]
    families = [{"family": f"**{f}**" if f == "all" else f, **counts} for f, counts in results.sections["table"].items()]
    bad = [c for c in results.rows if c["outcome"] not in ("clean error", "correct")]
    lines = ["Cases not clean or correct:" if bad else "Every case ended as a clean error or a correct result."]
    lines += [f"- {c['id']}: {c['outcome']}: {c['detail']}" for c in bad]
    return markdown(None,  # no title: the README quotes the table under its own heading
                    f"Adversarial suite (tests/adversarial_cases.py), {results.date}, "
                    f"{describe(results.machine, load=False)}, no GPU used; {results.sections['seconds']} s.",
                    table(families, [(h, h) for h in header]), lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="results stem: writes OUT.json and OUT.md")
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
    rows = [{"id": o.case, "family": o.family, "outcome": o.kind, "detail": o.detail} for o in outcomes]
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings={"k": args.k},
                      sections={"seconds": round(time.perf_counter() - start, 1), "table": outcome_table(outcomes)})
    text = report(results)
    results.write(args.out, text)
    print(text)
    return 1 if any(r["outcome"] not in ("clean error", "correct") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
