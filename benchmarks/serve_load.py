"""Service suite: load test of ``anomalens serve`` (issue 14) — N concurrent clients on loopback, a bounded
number of requests.

    .venv/bin/python benchmarks/serve_load.py                       # PaDiM and PatchCore at 256 px, 1 / 4 / 8 clients
    .venv/bin/python benchmarks/serve_load.py --requests 48 --clients 1 8 --models padim   # shorter
    .venv/bin/python benchmarks/serve_load.py --smoke --output /tmp/serve   # PaDiM, 1 and 2 clients, 8 requests

For each model: a run fitted on the synthetic ``brick`` category of ``benchmarks/run.py`` (256 px; PaDiM with
100 features, PatchCore with a 1 % coreset, as ``throughput.py``), saved under ``benchmarks/_work/serve_load``.

1. **Service** — ``anomalens serve RUN --port P -q`` started as its own process on 127.0.0.1 (the command a line
   runs). After a warm-up, for each client count N: N threads, each with its own keep-alive HTTP connection, send
   the category's 70 test images (256 px PNG files) as raw bodies to ``POST /predict`` until ``--requests``
   requests are answered. Measured: requests/s (answered / wall time), latency p50 / p95 / p99 (client side, send
   to full answer), errors (any status but 200, any exception: must be 0), the server's resident memory (VmRSS of
   its process) before and after the level, and the micro-batcher's batch sizes (from ``GET /health``).
2. **Baseline, alternated** — ``--rounds`` times: ``detector.predict`` on the same files (as many images), in a
   fresh process (``harness.run_job``), then the largest client level again. Medians of both are compared (the shared machine's load
   drifts; alternating exposes both to it), and the repeated level shows whether server memory keeps growing.

Both sides run with the library's defaults on this machine (torch's threads = the cores); the clients share the
machine with the server. Results: ``results/serve_load/results.{json,md}`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from harness import RESULTS, ROOT, Results, Run, describe, describe_run, machine, markdown, run_job, table
from harness import WORK as ALL_WORK
from harness.cli import output_options, rebuild_report, refuse_smoke_into
from harness.datasets import synthetic_category

SUITE = "serve_load"
OUTPUT = RESULTS / "serve_load"
WORK = ALL_WORK / "serve_load"
MODELS = {"padim": {"n_features": 100}, "patchcore": {"coreset_fraction": 0.01}}
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------- data
def category() -> Path:
    return synthetic_category("brick")  # the accuracy suite's


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
    run_job([PYTHON, "-c", code], cwd=ROOT, label=f"fit {model}")
    return run


# ------------------------------------------------------------------------------------------ baseline
BASELINE = """
import json, sys, time
from anomalens import load_detector
from anomalens.allocator import keep_freed_memory
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
    return run_job([PYTHON, "-c", BASELINE, str(run), str(n), *map(str, images)], cwd=ROOT, label="baseline").json()


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
def legacy(data: dict) -> Results:
    """results.json as written before the harness: the settings at the top, the models by name, the load split."""
    m = dict(data["machine"])
    run = {"load_average_before": [round(x, 2) for x in m.pop("load_average_before")],
           "load_average_after": [round(x, 2) for x in data["load_average_after"]]}
    settings = {k: data[k] for k in ("n_images", "requests", "clients", "rounds")}
    cuda = m.pop("cuda")
    return Results(SUITE, rows=[{"model": k, **v} for k, v in data["models"].items()], machine=m, settings=settings,
                   runs=[run], sections={"cuda": cuda})


def report(results: Results) -> str:
    s, cuda = results.settings, results.sections["cuda"]
    top = max(s["clients"])

    def rounds(r: dict) -> str:
        return (f"{r['baseline_images_per_s_median']:.2f} ("
                + " / ".join(f"{b['images_per_s']:.2f}" for b in r["baselines"]) + ")")

    def served(r: dict) -> str:
        return (f"{r['service_top_requests_per_s_median']:.2f} ("
                + " / ".join(f"{x['requests_per_s']:.2f}" for x in r["rounds"]) + ")")

    summary = table(results.rows, [
        ("model", "model"), ("`detector.predict` images/s (median; rounds)", rounds),
        (f"service, {top} clients, requests/s (median; rounds)", served),
        ("service / predict", lambda r: f"{100 * r['service_vs_predict']:.0f} %"),
        ("errors", lambda r: str(sum(x["errors"] for x in r["levels"] + r["rounds"]))),
        ("scores equal to predict", lambda r: f"{'yes' if r['scores_equal'] else 'NO'} (max relative difference "
                                              f"{r['max_score_rel_diff']:.1e})"),
    ])
    levels = [{"model": r["model"], **level} for r in results.rows for level in r["levels"] + r["rounds"]]
    every = table(levels, [
        ("model", "model"), ("level", "label"), ("requests/s", "requests_per_s", 2),
        ("p50 ms", lambda x: f"{x['latency_ms']['p50']:.0f}"), ("p95 ms", lambda x: f"{x['latency_ms']['p95']:.0f}"),
        ("p99 ms", lambda x: f"{x['latency_ms']['p99']:.0f}"), ("errors", "errors"), ("mean batch", "mean_batch_size", 2),
        ("server RSS MB", lambda x: f"{x['rss_mb_before']:.0f} → {x['rss_mb_after']:.0f}"),
    ])
    memory = table(results.rows, [
        ("model", "model"),
        ("server RSS MB: after warm-up → end (peak)",
         lambda r: f"{r['rss_mb_after_warmup']:.0f} → {r['rss_mb_end']:.0f} ({r['rss_mb_peak']:.0f})"),
    ])
    return markdown(
        "`anomalens serve` under load",
        f"Machine: {describe(results.machine, load=False)}, CUDA {'yes' if cuda else 'no'}; "
        f"{describe_run(results.runs[-1])}: the 2 cores are shared with other jobs, so single numbers swing by 2× "
        "from run to run; compare the medians of the alternated rounds.",
        f"Load: the synthetic `brick` category's {s['n_images']} test images (256 px PNG, sent as raw bodies to "
        f"`POST /predict`, no heatmap), {s['requests']} requests per level, each client one keep-alive "
        "connection on 127.0.0.1; the server is `anomalens serve RUN -q` in its own process (defaults: micro-batches "
        "up to the run's batch_size, 16; 5 ms wait). Baseline: `detector.predict` on the same files (as many images, "
        f"batches of 16), each time in a fresh process, alternated with a {top}-client level {s['rounds']} times "
        "(both see the same drift of the machine's load). Generated by `benchmarks/serve_load.py`.",
        summary,
        "Every level (server memory = VmRSS of the server process before → after the level):",
        every,
        memory,
        "GPU: not measured in this run (no GPU on this machine). On a GPU machine the same script measures "
        "it: `anomalens serve` loads the run on CUDA when one is available (device auto)."
        if not cuda else "GPU: this run used CUDA (device auto).",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=96, help="requests per client level (and baseline images)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated rounds of (detector.predict baseline, the largest client level)")
    parser.add_argument("--port", type=int, default=8765)
    output_options(parser, OUTPUT, smoke="PaDiM, 1 and 2 clients, 8 requests, 1 round")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report, legacy)
        return
    if args.smoke:
        args.models, args.clients, args.requests, args.rounds = ["padim"], [1, 2], 8, 1

    import torch  # the machine line says whether the service could use CUDA

    WORK.mkdir(parents=True, exist_ok=True)
    run_entry = Run()
    data = category()
    images = test_images(data)
    rows = []
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
        rows.append({"model": model, "params": {"image_size": 256, **MODELS[model]}, **m,
                     "baseline_images_per_s_median": base, "service_top_requests_per_s_median": top,
                     "service_vs_predict": top / base, "scores_equal": rel < 1e-5, "max_score_rel_diff": rel})
    settings = {"n_images": len(images), "requests": args.requests, "clients": args.clients, "rounds": args.rounds}
    results = Results(SUITE, rows=rows, machine=machine(), settings=settings, runs=[run_entry.record()],
                      sections={"cuda": torch.cuda.is_available()})
    text = report(results)
    results.write(args.output / "results", text)
    print(text)


if __name__ == "__main__":
    main()
