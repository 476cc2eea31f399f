"""Large frames: decode + resize time and peak memory, exact vs fast decode (``decode`` hyper-parameter).

For each frame size and format it writes one synthetic camera-like frame (smooth shading + noise), then

* times ``decode_for_model`` (decode + the antialiased resize to the working size), exact and fast, in this
  process (best of ``--repeats``), in ms per image and per megapixel;
* measures the peak RSS of one decode in a fresh Python process (``/usr/bin/time``: torch imported, the
  frame decoded and resized; the baseline of a process that only imports torch is given too);
* compares the model inputs: max abs difference of fast vs exact.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/large_images.py --out benchmarks/results/large_images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from anomalens.data.torch_dataset import decode_for_model

warnings.simplefilter("ignore", Image.DecompressionBombWarning)
Image.MAX_IMAGE_PIXELS = None  # the 12000² frame is the point

SIZES = [(2048, 2048), (3000, 4096), (12000, 12000)]  # (height, width)

PEAK_SCRIPT = """
import resource, sys, warnings
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore")
from anomalens.data.torch_dataset import decode_for_model
if sys.argv[1] != "-":
    decode_for_model(sys.argv[1], int(sys.argv[2]), 3, decode=sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
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
    """Peak RSS of the decode in a fresh process, as ``/usr/bin/time`` reports it (a child's own ``ru_maxrss``
    would carry this process's high-water mark across fork + exec)."""
    result = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", PEAK_SCRIPT, path, str(working), decode],
                            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return float(result.stderr.strip().splitlines()[-1]) / 1024.0


def time_decode(path: Path, working: int, decode: str, repeats: int) -> tuple[float, np.ndarray]:
    best, image = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        image = decode_for_model(path, working, 3, decode=decode)[0]
        best = min(best, time.perf_counter() - start)
    return best * 1000.0, image.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/large_images")
    parser.add_argument("--working", type=int, default=256, help="working size (image_size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=12000, help="skip frames with a larger side")
    args = parser.parse_args()
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
            for path in paths.values():
                path.unlink()
    machine = {"platform": platform.platform(), "cores": os.cpu_count(), "gpu": "none",
               "load_average": [round(v, 2) for v in os.getloadavg()], "omp_threads": os.environ.get("OMP_NUM_THREADS"),
               "note": "2 shared cores, other engineers' jobs running; timings are best-of-repeats and noisy",
               "peak_rss_mb_torch_import_only": round(baseline, 1), "working_size": args.working}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = ["# Large frames: exact vs fast decode", "",
             f"Machine: {machine['platform']}, {machine['cores']} cores shared with other jobs (load average "
             f"{machine['load_average']}), no GPU, OMP_NUM_THREADS={machine['omp_threads']}. Working size "
             f"{args.working}. Peak RSS: one decode in a fresh process (importing torch alone: "
             f"{machine['peak_rss_mb_torch_import_only']} MB).", "",
             "| frame | format | exact ms | exact ms/MP | fast ms | fast ms/MP | speed-up | exact peak MB | fast peak MB "
             "| max abs input diff | mean abs input diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']}x{r['height']} | {r['format']} | {r['exact_ms']} | {r['exact_ms_per_mp']} | "
                     f"{r['fast_ms']} | {r['fast_ms_per_mp']} | {r['speedup']} | {r['exact_peak_rss_mb']} | "
                     f"{r['fast_peak_rss_mb']} | {r['max_abs_input_diff']:.4f} | {r['mean_abs_input_diff']:.5f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
