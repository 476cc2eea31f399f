"""Scale suite: large frames — decode + resize time and peak memory, exact vs fast decode (``decode``
hyper-parameter).

For each frame size and format it writes one synthetic camera-like frame (smooth shading + noise), then

* times ``decode_for_model`` (decode + the antialiased resize to the working size), exact and fast, in this
  process (best of ``--repeats``), in ms per image and per megapixel;
* measures the peak RSS of one decode in a fresh process (``harness.run_job``: torch imported, the frame
  decoded and resized; the baseline of a process that only imports torch is given too);
* compares the model inputs: max abs difference of fast vs exact.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/large_images.py      # → benchmarks/results/large_images.{json,md}
    .venv/bin/python benchmarks/large_images.py --smoke --out /tmp/large_images   # the 2048² frame, once
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from anomalens.data.torch_dataset import decode_for_model
from harness import RESULTS, Results, describe, machine, markdown, run_job, table, write_report

warnings.simplefilter("ignore", Image.DecompressionBombWarning)
Image.MAX_IMAGE_PIXELS = None  # the 12000² frame is the point

SUITE = "large_images"
OUTPUT = RESULTS / "large_images"
SIZES = [(2048, 2048), (3000, 4096), (12000, 12000)]  # (height, width)

PEAK_SCRIPT = """
import sys, warnings
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore")
from anomalens.data.torch_dataset import decode_for_model
if sys.argv[1] != "-":
    decode_for_model(sys.argv[1], int(sys.argv[2]), 3, decode=sys.argv[3])
"""


def camera_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    out = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        plane = 128 + 60 * np.sin(6.0 * x * (c + 1) + 4.0 * y) + 30 * np.cos(9.0 * y * (c + 1))
        plane += rng.normal(0, 8, size=(height, width)).astype(np.float32)
        out[..., c] = np.clip(plane, 0, 255).astype(np.uint8)
    return out


def peak_rss_mb(path: str, working: int, decode: str) -> float:
    """Peak RSS of the decode in a fresh process (``-``: importing torch and anomalens only)."""
    return run_job([sys.executable, "-c", PEAK_SCRIPT, path, str(working), decode], threads=2).peak_rss_mb


def time_decode(path: Path, working: int, decode: str, repeats: int) -> tuple[float, np.ndarray]:
    best, image = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        image = decode_for_model(path, working, 3, decode=decode)[0]
        best = min(best, time.perf_counter() - start)
    return best * 1000.0, image.numpy()


def legacy(data: dict) -> Results:
    """large_images.json as written before the harness: the settings and the baseline inside "machine"."""
    m = dict(data["machine"])
    settings = {"working_size": m.pop("working_size")}
    sections = {"peak_rss_mb_torch_import_only": m.pop("peak_rss_mb_torch_import_only")}
    m["omp_num_threads"] = m.pop("omp_threads", None)
    m.pop("gpu", None)
    return Results(SUITE, rows=data["rows"], machine=m, settings=settings, sections=sections)


COLUMNS = [
    ("frame", lambda r: f"{r['width']}x{r['height']}"), ("format", "format"),
    ("exact ms", "exact_ms", None), ("exact ms/MP", "exact_ms_per_mp", None), ("fast ms", "fast_ms", None),
    ("fast ms/MP", "fast_ms_per_mp", None), ("speed-up", "speedup", None),
    ("exact peak MB", "exact_peak_rss_mb", None), ("fast peak MB", "fast_peak_rss_mb", None),
    ("max abs input diff", "max_abs_input_diff", 4), ("mean abs input diff", "mean_abs_input_diff", 5),
]


def report(results: Results) -> str:
    return markdown(
        "Large frames: exact vs fast decode",
        f"Machine: {describe(results.machine)}. Working size {results.settings['working_size']}. Peak RSS: one "
        f"decode in a fresh process (importing torch alone: {results.sections['peak_rss_mb_torch_import_only']} MB).",
        table(results.rows, COLUMNS),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="results stem: writes OUT.json and OUT.md")
    parser.add_argument("--working", type=int, default=256, help="working size (image_size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=12000, help="skip frames with a larger side")
    parser.add_argument("--report-only", action="store_true", help="rebuild OUT.md from OUT.json")
    parser.add_argument("--smoke", action="store_true", help="the 2048² frame, once (needs --out)")
    args = parser.parse_args()
    if args.report_only:
        results = Results.load(args.out.with_name(args.out.name + ".json"), SUITE, legacy)
        print(f"wrote {write_report(args.out.with_name(args.out.name + '.md'), report(results))}")
        return
    if args.smoke:
        if args.out == OUTPUT:
            parser.error("--smoke: give --out, away from the committed results")
        args.max_side, args.repeats = 2048, 1
    rows = []
    baseline = peak_rss_mb("-", args.working, "exact")
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in SIZES:
            if max(height, width) > args.max_side:
                continue
            frame = camera_frame(height, width)
            paths = {"png": Path(tmp) / "frame.png", "jpeg": Path(tmp) / "frame.jpg"}
            Image.fromarray(frame).save(paths["png"], compress_level=1)
            Image.fromarray(frame).save(paths["jpeg"], quality=90)
            del frame
            megapixels = height * width / 1e6
            for fmt, path in paths.items():
                row = {"format": fmt, "height": height, "width": width, "megapixels": round(megapixels, 2)}
                images = {}
                for decode in ("exact", "fast"):
                    ms, images[decode] = time_decode(path, args.working, decode, 1 if megapixels > 50 else args.repeats)
                    row[f"{decode}_ms"] = round(ms, 1)
                    row[f"{decode}_ms_per_mp"] = round(ms / megapixels, 2)
                    row[f"{decode}_peak_rss_mb"] = round(peak_rss_mb(str(path), args.working, decode), 1)
                row["speedup"] = round(row["exact_ms"] / row["fast_ms"], 2)
                row["max_abs_input_diff"] = float(np.abs(images["fast"] - images["exact"]).max())
                row["mean_abs_input_diff"] = float(np.abs(images["fast"] - images["exact"]).mean())
                rows.append(row)
                print(json.dumps(row), flush=True)
            for path in paths.values():  # a 12000² PNG is large: one frame on disk at a time
                path.unlink()
    results = Results(SUITE, rows=rows, machine=machine(),
                      settings={"working_size": args.working, "repeats": args.repeats, "max_side": args.max_side},
                      sections={"peak_rss_mb_torch_import_only": round(baseline, 1)})
    print(f"wrote {results.write(args.out, report(results))[1]}")


if __name__ == "__main__":
    main()
