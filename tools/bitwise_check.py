"""Every number the same, bit for bit, after a refactor: every registered detector fitted (the tiny settings
of tests/conftest.py, one thread, seed 0) on one small synthetic category by the current code and by a
baseline commit, and compared — the fitted tensors (SHA-256 of each, in name order), the threshold, and the
score of every test image.

    .venv/bin/python -m tools.bitwise_check --baseline b8410cf          # → tools/results/bitwise_check/
    .venv/bin/python -m tools.bitwise_check --baseline b8410cf --models padim stpm --output /tmp/bitwise

Each side runs in a fresh process (``harness.run_job``) with its own library tree first on ``PYTHONPATH``
(``harness.checkout``: a git worktree of the baseline), both on the same data, written once by the current
code. Hashing the tensors, not the weights file, leaves out the file's JSON metadata, which may name new
parameters without any number changing.
The job loads this file in a bare process (its folder first on the path): only ``fingerprints`` and what
it imports run there, so the harness is imported inside ``main``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "tools" / "results" / "bitwise_check"


def fingerprints(data: str, models: list[str], params: dict[str, dict], scratch: str) -> dict:
    """In the job's process: fit each model on ``data`` and return {model: {"tensors", "threshold", "scores",
    "library"}} (or {"error": ...} for a model that fails)."""
    import anomalens
    import torch
    from safetensors.torch import load_file

    from anomalens.catalog import create_detector
    from anomalens.data import load_dataset

    torch.set_num_threads(1)
    dataset = load_dataset(data)
    out: dict[str, dict] = {}
    for name in models:
        try:
            detector = create_detector(name, **params.get(name, {}))
            detector.fit(dataset.train, progress=False)
            folder = Path(scratch) / name
            detector.save(folder)
            tensors = load_file(str(folder / "weights.safetensors"))
            digest = {key: hashlib.sha256(tensors[key].contiguous().numpy().tobytes()).hexdigest()
                      for key in sorted(tensors)}
            result = detector.predict(dataset.test, progress=False)
            out[name] = {"tensors": digest, "threshold": repr(float(detector.threshold_)),
                         "scores": [repr(float(s)) for s in result.scores],
                         "library": str(Path(anomalens.__file__).resolve().parents[1])}
        except Exception as exc:  # noqa: BLE001 — a model that fails is reported, the others still run
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def compare(now: dict, before: dict) -> dict:
    """One row per model: equal or where the two sides differ."""
    rows = []
    for name in sorted(set(now) | set(before)):
        a, b = now.get(name, {"error": "missing"}), before.get(name, {"error": "missing"})
        if "error" in a or "error" in b:
            rows.append({"model": name, "verdict": "error", "detail": a.get("error") or b.get("error")})
            continue
        differing = [key for key in ("tensors", "threshold", "scores") if a[key] != b[key]]
        detail = ""
        if "tensors" in differing:
            changed = sorted(k for k in set(a["tensors"]) | set(b["tensors"]) if a["tensors"].get(k) != b["tensors"].get(k))
            detail = f"tensors differ: {', '.join(changed[:4])}{' …' if len(changed) > 4 else ''}"
        rows.append({"model": name, "verdict": "identical" if not differing else "DIFFERENT",
                     "n_tensors": len(a["tensors"]), "n_scores": len(a["scores"]),
                     "threshold": a["threshold"], "differing": differing, "detail": detail})
    return {"rows": rows, "identical": all(r["verdict"] == "identical" for r in rows)}


def report(results: dict) -> str:
    from harness import describe, markdown

    lines = ["| detector | verdict | tensors | test scores | threshold | detail |", "|---|---|---|---|---|---|"]
    for r in results["comparison"]["rows"]:
        lines.append(f"| {r['model']} | {r['verdict']} | {r.get('n_tensors', '–')} | {r.get('n_scores', '–')} | "
                     f"{r.get('threshold', '–')} | {r.get('detail', '')} |")
    return markdown(
        f"Bit-for-bit check: {results['current']} against {results['baseline']}",
        f"Machine: {describe(results['machine'])}. Date: {results['date']}.",
        "Every registered detector, tiny settings (tests/conftest.py TINY_PARAMS), one thread, seed 0, on a "
        "64 px synthetic brick category (12 training, 8 test images); tensors compared by SHA-256, thresholds "
        "and scores by their exact float repr.",
        lines,
        f"All identical: {'yes' if results['comparison']['identical'] else 'NO'}.",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the commit (or a checkout folder) to compare with")
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered detector")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    from harness import checkout, machine, run_job, short_commit, write_report  # this module's job loads without it
    from anomalens.catalog import list_detectors
    from anomalens.data import make_synthetic_category
    from tests.conftest import TINY_PARAMS  # run from the repository root (python -m tools.bitwise_check)

    models = args.models or list(list_detectors())
    work = ROOT / "benchmarks" / "_work" / "bitwise_check"
    data = work / "data" / "brick"
    if not data.is_dir():
        make_synthetic_category(work / "data", source="brick", n_train=12, n_test_good=4, n_test_defect=4,
                                image_size=64, seed=0)
    tree = checkout(args.baseline)
    sides = {}
    for side, src in (("current", ROOT / "src"), ("baseline", tree / "src")):
        scratch = work / side
        job = run_job(fingerprints, str(data), models, TINY_PARAMS, str(scratch), threads=1, src=src,
                      label=f"fingerprints ({side})")
        libraries = {v.get("library") for v in job.value.values() if "library" in v}
        if libraries - {str(src.resolve())}:
            raise SystemExit(f"the {side} job imported anomalens from {libraries}, not {src}")
        sides[side] = job.value
    results = {"current": short_commit("HEAD"), "baseline": short_commit(str(args.baseline)) if not Path(args.baseline).is_dir() else str(args.baseline),
               "date": datetime.date.today().isoformat(), "machine": machine(), "models": models,
               "comparison": compare(sides["current"], sides["baseline"]), "sides": sides}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(args.output / "results.md", report(results))
    print(report(results))
    return 0 if results["comparison"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
