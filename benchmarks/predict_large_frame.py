"""Scale suite: ``anomalens predict`` on one 144-megapixel frame (12000 x 12000 RGB PNG) — peak memory and
time of the whole command, by heatmaps mode and decoding workers, the current code beside a baseline commit,
and whether it finishes under an address-space limit (an edge box).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_large_frame.py --baseline b8410cf
    .venv/bin/python benchmarks/predict_large_frame.py --smoke --output /tmp/large_frame   # 4000² frame, once

Each row is one fresh ``anomalens predict`` process (``harness.run_job``: its own peak RSS, decoding workers
included, since the launcher reads the resource usage of the whole waited-for tree); the PaDiM run (256 px,
the brick synthetic category) is fitted once by the current code and read by both. Under ``--limit-gb``
(RLIMIT_AS through ``prlimit``) a row is "ok" or the command's one error line.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

from harness import RESULTS, WORK, Results, checkout, describe, fmt, machine, markdown, run_job, short_commit, table
from harness.cli import output_options, refuse_smoke_into
from harness.datasets import synthetic_category

DEFAULT_OUTPUT = RESULTS / "predict_large_frame"
PYTHON = sys.executable


def make_frame(path: Path, side: int) -> Path:
    """A smooth RGB frame (compresses well, so the file is small and the decode is the cost)."""
    import numpy as np
    from PIL import Image

    if not path.is_file():
        y = np.linspace(0, 1, side, dtype=np.float32)[:, None]
        x = np.linspace(0, 1, side, dtype=np.float32)[None, :]
        grey = ((0.3 + 0.4 * y * x) * 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([grey, grey[::-1], grey[:, ::-1]], axis=-1)).save(path, compress_level=1)
    return path


def predict_row(run: Path, frames: Path, out: Path, heatmaps: str, workers: int, src: Path | None,
                limit_gb: float | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a scratch folder of this suite under _work
    command = [PYTHON, "-m", "anomalens.cli", "predict", str(run), str(frames), "-o", str(out), "--heatmaps", heatmaps,
               "--workers", str(workers), "-q"]
    if limit_gb:
        command = ["prlimit", f"--as={int(limit_gb * 1e9)}", *command]
    job = run_job(command, threads=2, src=src, check=False, timeout=900)
    row = {"heatmaps": heatmaps, "workers": workers, "limit_gb": limit_gb, "seconds": round(job.seconds, 1),
           "peak_rss_mb": round(job.peak_rss_mb or 0), "outcome": "ok" if job.ok else job.error_line()[:160]}
    if job.ok and heatmaps != "none":
        from PIL import Image

        pictures = sorted((out / "heatmaps").glob("*.png"))
        if pictures:
            with Image.open(pictures[0]) as image:
                row["heatmap_px"] = f"{image.width}x{image.height}"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    output_options(parser, DEFAULT_OUTPUT, smoke="a 4000² frame, current code, default heatmaps only")
    parser.add_argument("--baseline", default=None, help="a commit to measure beside the current code")
    parser.add_argument("--side", type=int, default=12000, help="frame side in pixels (default 12000: 144 MP)")
    parser.add_argument("--limit-gb", type=float, default=6.0, help="address-space limit of the limited rows")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, DEFAULT_OUTPUT)
    side = 4000 if args.smoke else args.side
    work = WORK / "predict_large_frame"
    frames = work / f"frame-{side}"
    make_frame(frames / "frame.png", side)
    run = work / "run-padim-256"
    if not run.is_dir():
        run_job([PYTHON, "-m", "anomalens.cli", "fit", "padim", str(synthetic_category("brick")), "-o", str(run), "-q"],
                threads=2, timeout=900)
    trees = {"current": None}
    if args.baseline and not args.smoke:
        trees[f"baseline {short_commit(args.baseline)}"] = checkout(args.baseline) / "src"
    plan = [("anomalous", 1, None)] if args.smoke else [
        ("anomalous", 1, None), ("all", 1, None), ("none", 1, None), ("anomalous", 0, None),
        ("anomalous", 1, args.limit_gb), ("none", 1, args.limit_gb)]
    rows = []
    for code, src in trees.items():
        for heatmaps, workers, limit in plan:
            row = predict_row(run, frames, work / "out", heatmaps, workers, src, limit)
            rows.append({"code": code, **row})
            print(rows[-1], flush=True)
    results = Results("predict_large_frame", rows=rows, machine=machine(), date=datetime.date.today().isoformat(),
                      settings={"frame": f"{side}x{side} RGB PNG", "run": "padim, 256 px, brick", "threads": 2})
    columns = [("code", "code"), ("heatmaps", "heatmaps"), ("workers", "workers"),
               ("address-space limit", lambda r: f"{r['limit_gb']:g} GB" if r["limit_gb"] else "–"),
               ("seconds", lambda r: fmt(r["seconds"], 1)), ("peak RSS (MB)", "peak_rss_mb", None),
               ("heatmap size", lambda r: r.get("heatmap_px", "–")), ("outcome", "outcome")]
    report = markdown(
        f"anomalens predict on one {side}x{side} RGB PNG ({side * side / 1e6:.0f} MP)",
        f"Machine: {describe(results.machine)}. Date: {results.date}. PaDiM run at 256 px (brick), 2 threads.",
        "Peak RSS of the whole command (decoding workers included); heatmaps of frames above 4096x4096 pixels "
        "are drawn scaled down to fit (the heatmap PNG adds its caption and colour bar).",
        table(rows, columns))
    args.output.mkdir(parents=True, exist_ok=True)
    results.write(args.output / "results", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
