"""Speed suite, a profile: where a detector's time goes on a GPU — fit, the first and later predict calls,
loading alone, and a torch.profiler table of the first predict call (the one benchmarks time). Prints it
(tools/gpu_check.sh keeps it as profile.txt).

    python3 benchmarks/gpu_profile.py padim patchcore        # on the GPU machine (tools/gpu_check.sh)

Same data and settings as the compare_anomalib.py brick rows (256 px, batch 32, efficientnet_lite0).
"""

from __future__ import annotations

import argparse
import time

import torch

from compare_anomalib import LAYERS  # the comparison's layers per detector
from harness.datasets import benchmark_dataset


def timed(label: str, fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    print(f"{label}: {time.perf_counter() - start:.3f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from anomalens import create_detector
    from anomalens.data import iterate_batches

    data = benchmark_dataset("brick")
    timed("load only (test set)", lambda: sum(len(b["label"]) for b in iterate_batches(data.test, (256, 256), 32)))
    for name in args.models:
        print(f"--- {name}", flush=True)
        params = {"image_size": 256, "batch_size": 32, "device": "cuda", "backbone": "efficientnet_lite0"}
        if name in LAYERS:
            params["layers"] = tuple(LAYERS[name])
        detector = create_detector(name, **params)
        timed("fit", lambda: detector.fit(data.train, progress=False))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            timed("predict #1 (profiled)", lambda: detector.predict(data.test, progress=False))
        for i in (2, 3):
            timed(f"predict #{i}", lambda: detector.predict(data.test, progress=False))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
