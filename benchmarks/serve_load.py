"""Load test of ``anomalens serve`` (issue 14): N concurrent clients on loopback, a bounded number of requests.

    .venv/bin/python benchmarks/serve_load.py                       # PaDiM and PatchCore at 256 px, 1 / 4 / 8 clients
    .venv/bin/python benchmarks/serve_load.py --requests 48 --clients 1 8 --models padim   # shorter

For each model: a run fitted on the synthetic ``brick`` category of ``benchmarks/run.py`` (256 px; PaDiM with
100 features, PatchCore with a 1 % coreset, as ``throughput.py``), saved under ``benchmarks/_work/serve_load``.

1. **Service** — ``anomalens serve RUN --port P -q`` started as its own process on 127.0.0.1 (the command a line
   runs). After a warm-up, for each client count N: N threads, each with its own keep-alive HTTP connection, send
   the category's 70 test images (256 px PNG files) as raw bodies to ``POST /predict`` until ``--requests``
   requests are answered. Measured: requests/s (answered / wall time), latency p50 / p95 / p99 (client side, send
   to full answer), errors (any status but 200, any exception: must be 0), the server's resident memory (VmRSS of
   its process) before and after the level, and the micro-batcher's batch sizes (from ``GET /health``).
2. **Baseline, alternated** — ``--rounds`` times: ``detector.predict`` on the same files (as many images), in a
   fresh process, then the largest client level again. Medians of both are compared (the shared machine's load
   drifts; alternating exposes both to it), and the repeated level shows whether server memory keeps growing.

Both sides run with the library's defaults on this machine (torch's threads = the cores); the clients share the
machine with the server. Results: ``results/serve_load/results.{json,md}`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "serve_load"
RESULTS = HERE / "results" / "serve_load"
MODELS = {"padim": {"n_features": 100}, "patchcore": {"coreset_fraction": 0.01}}
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------- data
def category() -> Path:
    sys.path.insert(0, str(HERE))
    from run import WORK as RUN_WORK, benchmark_dataset  # the synthetic categories of the benchmark table

    benchmark_dataset("brick")
    return RUN_WORK / "data" / "brick"


def test_images(folder: Path) -> list[Path]:
    return sorted(p for sub in sorted((folder / "test").iterdir()) for p in sorted(sub.iterdir()))


def fitted_run(model: str, data: Path) -> Path:
    run = WORK / "runs" / model
    if (run / "detector.json").is_file():
        return run
    code = (f"from anomalens import create_detector, load_dataset; d = load_dataset({str(data)!r}); "
            f"det = create_detector({model!r}, image_size=256, **{MODELS[model]!r}); det.fit(d.train, progress=False); "
            f"det.save({str(run)!r})")
    run.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([PYTHON, "-c", code], check=True, cwd=ROOT)
    return run


# ------------------------------------------------------------------------------------------ baseline
BASELINE = """
import json, sys, time
from anomalens import keep_freed_memory, load_detector
keep_freed_memory()  # as every anomalens command (the service included) does
run, n, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
detector = load_detector(run)
images = [paths[i % len(paths)] for i in range(n)]
detector.predict(images[:16], progress=False)  # warm-up
start = time.perf_counter()
result = detector.predict(images, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"images": n, "seconds": seconds, "images_per_s": n / seconds, "scores": result.scores[:len(paths)].tolist()}))
"""


def baseline(run: Path, images: list[Path], n: int) -> dict:
    out = subprocess.run([PYTHON, "-c", BASELINE, str(run), str(n), *map(str, images)], check=True, cwd=ROOT,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- service
def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(run: Path, port: int) -> subprocess.Popen:
    log = open(WORK / f"server-{run.name}.log", "w")
    proc = subprocess.Popen([PYTHON, "-m", "anomalens.cli", "serve", str(run), "--host", "127.0.0.1", "--port",
                             str(port), "-q"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log.name}")
        try:
            if get_json(port, "/health")["status"] == "ok":
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def load_level(port: int, bodies: list[bytes], clients: int, requests: int) -> dict:
    """``clients`` threads with one keep-alive connection each, ``requests`` answers in all."""
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    scores: dict[int, float] = {}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    break
                state["next"] += 1
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    errors.append(f"{response.status}: {payload[:200]!r}")
                    continue
                answer = json.loads(payload)
                with lock:
                    latencies.append(elapsed)
                    scores.setdefault(i % len(bodies), answer["score"])
            except Exception as exc:  # noqa: BLE001 - counted as an error, the level goes on
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000.0
    return {"clients": clients, "requests": requests, "answered": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "seconds": wall, "requests_per_s": len(latencies) / wall,
            "latency_ms": {q: float(np.percentile(ms, int(q[1:]))) if len(ms) else None for q in ("p50", "p95", "p99")},
            "scores": scores}


def measure_model(model: str, run: Path, images: list[Path], clients: list[int], requests: int, rounds: int,
                  port: int) -> dict:
    """One server process for the model: a level per client count, then ``rounds`` × (a baseline in a fresh process,
    the largest level again), alternated so that both see the same drift of the shared machine's load."""
    bodies = [p.read_bytes() for p in images]
    proc = start_server(run, port)

    def level(n: int, label: str) -> dict:
        before_stats = get_json(port, "/health")["batching"]
        rss_before = rss_mb(proc.pid)
        out = load_level(port, bodies, n, requests)
        after_stats = get_json(port, "/health")["batching"]
        batches = after_stats["batches"] - before_stats["batches"]
        out.update(label=label, rss_mb_before=rss_before, rss_mb_after=rss_mb(proc.pid),
                   mean_batch_size=(after_stats["images"] - before_stats["images"]) / batches if batches else None,
                   largest_batch=after_stats["largest_batch"])
        print(f"  {model} {label}: {out['requests_per_s']:.2f} req/s, p50 {out['latency_ms']['p50']:.0f} ms, "
              f"p99 {out['latency_ms']['p99']:.0f} ms, errors {out['errors']}, mean batch {out['mean_batch_size']:.2f}, "
              f"RSS {rss_before:.0f} → {out['rss_mb_after']:.0f} MB", flush=True)
        return out

    try:
        load_level(port, bodies, 2, 8)  # warm-up: first batches, lazy imports, allocator
        rss_start = rss_mb(proc.pid)
        levels = [level(n, f"{n} clients") for n in clients]
        baselines, repeats = [], []
        top = max(clients)
        for r in range(rounds):
            baselines.append(baseline(run, images, requests))
            print(f"  {model} baseline round {r + 1}: detector.predict {baselines[-1]['images_per_s']:.2f} images/s",
                  flush=True)
            repeats.append(level(top, f"{top} clients, round {r + 1}"))
        return {"levels": levels, "rounds": repeats, "baselines": baselines, "rss_mb_after_warmup": rss_start,
                "rss_mb_end": rss_mb(proc.pid), "rss_mb_peak": rss_mb(proc.pid, "VmHWM")}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# -------------------------------------------------------------------------------------------- report
def machine() -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from run import cpu_model

    cpu = cpu_model()
    mem = next((int(line.split()[1]) / 1024 / 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem, 1) if mem else None,
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "load_average_before": os.getloadavg()}


def write_markdown(results: dict) -> str:
    m = results["machine"]
    top = max(results["clients"])
    lines = [
        "# `anomalens serve` under load",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), CUDA {'yes' if m['cuda'] else 'no'}. Load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_after'])}: the 2 cores are shared with other jobs, so "
        "single numbers swing by 2× from run to run; compare the medians of the alternated rounds.",
        "",
        f"Load: the synthetic `brick` category's {results['n_images']} test images (256 px PNG, sent as raw bodies to "
        f"`POST /predict`, no heatmap), {results['requests']} requests per level, each client one keep-alive "
        "connection on 127.0.0.1; the server is `anomalens serve RUN -q` in its own process (defaults: micro-batches "
        "up to the run's batch_size, 16; 5 ms wait). Baseline: `detector.predict` on the same files (as many images, "
        f"batches of 16), each time in a fresh process, alternated with a {top}-client level {results['rounds']} times "
        "(both see the same drift of the machine's load). Generated by `benchmarks/serve_load.py`.",
        "",
        f"| model | `detector.predict` images/s (median; rounds) | service, {top} clients, requests/s (median; rounds) "
        "| service / predict | errors | scores equal to predict |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in results["models"].items():
        bs = " / ".join(f"{b['images_per_s']:.2f}" for b in r["baselines"])
        ss = " / ".join(f"{x['requests_per_s']:.2f}" for x in r["rounds"])
        errors = sum(x["errors"] for x in r["levels"] + r["rounds"])
        lines.append(f"| {model} | {r['baseline_images_per_s_median']:.2f} ({bs}) | "
                     f"{r['service_top_requests_per_s_median']:.2f} ({ss}) | {100 * r['service_vs_predict']:.0f} % | "
                     f"{errors} | {'yes' if r['scores_equal'] else 'NO'} (max relative difference "
                     f"{r['max_score_rel_diff']:.1e}) |")
    lines += ["", "Every level (server memory = VmRSS of the server process before → after the level):", "",
              "| model | level | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch | server RSS MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model, r in results["models"].items():
        for level in r["levels"] + r["rounds"]:
            lat = level["latency_ms"]
            lines.append(f"| {model} | {level['label']} | {level['requests_per_s']:.2f} | {lat['p50']:.0f} | "
                         f"{lat['p95']:.0f} | {lat['p99']:.0f} | {level['errors']} | {level['mean_batch_size']:.2f} | "
                         f"{level['rss_mb_before']:.0f} → {level['rss_mb_after']:.0f} |")
    lines += ["", "| model | server RSS MB: after warm-up → end (peak) |", "|---|---|"]
    for model, r in results["models"].items():
        lines.append(f"| {model} | {r['rss_mb_after_warmup']:.0f} → {r['rss_mb_end']:.0f} ({r['rss_mb_peak']:.0f}) |")
    lines += ["", "GPU: not measured in this run (no GPU on this machine). On a GPU machine the same script measures "
              "it: `anomalens serve` loads the run on CUDA when one is available (device auto)."
              if not m["cuda"] else "GPU: this run used CUDA (device auto).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=96, help="requests per client level (and baseline images)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated rounds of (detector.predict baseline, the largest client level)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    data = category()
    images = test_images(data)
    results = {"machine": machine(), "n_images": len(images), "requests": args.requests, "clients": args.clients,
               "rounds": args.rounds, "models": {}}
    for model in args.models:
        run = fitted_run(model, data)
        print(f"{model}:", flush=True)
        m = measure_model(model, run, images, args.clients, args.requests, args.rounds, args.port)
        served = {}
        for lvl in m["levels"] + m["rounds"]:
            served.update({int(k): v for k, v in lvl.pop("scores").items()})
        ref = np.array(m["baselines"][0]["scores"])
        for b in m["baselines"]:
            b.pop("scores")
        keys = sorted(served)
        rel = float(np.max(np.abs(np.array([served[i] for i in keys]) - ref[keys]) / np.maximum(np.abs(ref[keys]), 1e-12)))
        base = float(np.median([b["images_per_s"] for b in m["baselines"]]))
        top = float(np.median([r["requests_per_s"] for r in m["rounds"]]))
        results["models"][model] = {"params": {"image_size": 256, **MODELS[model]}, **m,
                                    "baseline_images_per_s_median": base, "service_top_requests_per_s_median": top,
                                    "service_vs_predict": top / base, "scores_equal": rel < 1e-5,
                                    "max_score_rel_diff": rel}
    results["load_average_after"] = os.getloadavg()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "results.md").write_text(write_markdown(results))
    print(write_markdown(results))


if __name__ == "__main__":
    main()
