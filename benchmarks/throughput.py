"""Speed suite: throughput of the whole pipeline (issue 19): images/s for loading, the model alone, ``detector.predict``
and ``anomalens predict`` (heatmaps none / anomalous / all), PaDiM and PatchCore, 256 px and 2048² inputs,
with the code before the change measured side by side in the same run.

    .venv/bin/python benchmarks/throughput.py                         # CPU, current code + baseline HEAD
    .venv/bin/python benchmarks/throughput.py --baseline e0a43ca --n 1024 --large 24
    .venv/bin/python benchmarks/throughput.py --device cuda --no-baseline   # on a GPU machine (tools/gpu_check.sh)
    .venv/bin/python benchmarks/throughput.py --quick --no-baseline   # 128 images, a smoke run (into _work)

Data (under ``benchmarks/_work/throughput``, ignored by git): the synthetic ``brick`` category of
``benchmarks/run.py`` for fitting; ``images256``: ``--n`` test images at 256 px (the category's test images,
flipped / rotated / re-noised copies, PNG); ``images2048``: ``--large`` images at 2048² (upscaled, PNG);
``huge``: one 8000² PNG for the peak memory of a very large frame. Every measurement runs in a fresh
process (``harness.run_job``); the baseline is a git worktree of ``--baseline`` (default HEAD,
``harness.checkout``) imported with PYTHONPATH, with its own fitted runs. ``anomalens predict`` is timed as a
whole command (process start and imports included), with its peak memory. Results:
``results/throughput/results.{json,md}`` with the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from harness import RESULTS, ROOT, Results, Run, checkout, commit_label, describe, describe_run, machine, run_job
from harness import WORK as ALL_WORK
from harness import short_commit, write_report
from harness.datasets import synthetic_category

SUITE = "throughput"
OUTPUT = RESULTS / "throughput"
WORK = ALL_WORK / "throughput"
MODELS = {"padim": {"n_features": 100}, "patchcore": {"coreset_fraction": 0.01}}


# ---------------------------------------------------------------------------------------------- data
def prepare(n: int, n_large: int) -> dict[str, Path]:
    from PIL import Image

    category = synthetic_category("brick")  # the accuracy suite's
    sources = sorted(p for sub in (category / "test").iterdir() for p in sub.iterdir())
    folders = {"category": category, "images256": WORK / f"images256-{n}", "images2048": WORK / f"images2048-{n_large}",
               "huge": WORK / "huge"}
    rng = np.random.default_rng(0)
    for key, count, size in (("images256", n, 256), ("images2048", n_large, 2048), ("huge", 1, 8000)):
        folder = folders[key]
        if folder.is_dir() and len(list(folder.iterdir())) == count:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        stage = folder.with_name(folder.name + ".partial")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        for i in range(count):
            img = np.asarray(Image.open(sources[i % len(sources)]).convert("RGB"))
            img = np.rot90(img, k=(i // len(sources)) % 4)
            if (i // (4 * len(sources))) % 2:
                img = img[:, ::-1]
            if size != img.shape[0]:
                img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BICUBIC))
            noise = rng.integers(-3, 4, img.shape, dtype=np.int16)
            img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(stage / f"{i:05d}.png", compress_level=1 if size > 256 else 6)
        stage.rename(folder)
    return folders


# ----------------------------------------------------------------------- one measurement, one process
def worker(spec: dict) -> dict:
    """Runs under either version of the code (PYTHONPATH); only names both versions have."""
    if spec["what"] in ("test", "predict_test_split"):  # the `anomalens test` breakdown: nothing imported yet
        return test_parts(spec)
    import torch

    from anomalens.catalog import load_detector
    from anomalens.data import ImageRecord, iterate_batches

    device, out = spec["device"], {}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    detector = load_detector(spec["run"], device=device)
    records = [ImageRecord(Path(p), -1, None, Path(p).name) for p in sorted(Path(spec.get("images", ".")).iterdir())]
    size = detector.input_size
    if spec["what"] == "load":
        for workers in spec["workers"]:
            kwargs = {} if workers == "default" else {"num_workers": workers}
            start = time.perf_counter()
            n = sum(len(b["label"]) for b in iterate_batches(records, size, 32, **kwargs))
            out[f"load_workers_{workers}"] = n / (time.perf_counter() - start)
    elif spec["what"] == "model":
        images = torch.cat([b["image"] for b in iterate_batches(records, size, 64)]).to(device)
        module = detector.inference_module().eval()
        batch = detector.params["batch_size"] or 16
        with torch.inference_mode():
            module(images[:batch])  # warm-up
            sync()
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                module(images[i : i + batch])
            sync()
        out["model_only"] = len(images) / (time.perf_counter() - start)
    elif spec["what"] == "predict":
        detector.predict(records[: detector.params["batch_size"] or 16], progress=False)  # warm-up
        sync()
        start = time.perf_counter()
        n = sum(len(r.scores) for _, r in detector.predict_in_chunks(records, 64))
        sync()
        out["detector_predict"] = n / (time.perf_counter() - start)
    return out


def test_parts(spec: dict) -> dict:
    """Where the seconds of `anomalens test` go, in one fresh process (current code only): each step of
    ``test_run`` timed, the imports first, as the command makes them (what the command adds on top is the
    interpreter's start and argument parsing). With ``what == "predict_test_split"``: ``detector.predict`` on
    the same test images, warm (one batch first), the issue's yardstick."""
    start = time.perf_counter()
    if spec["what"] == "predict_test_split":
        import anomalens

        detector = anomalens.load_detector(spec["run"], device=spec["device"])
        records = anomalens.load_dataset(spec["data"]).test
        detector.predict(records[: detector.params["batch_size"] or 16], progress=False)  # warm-up
        begin = time.perf_counter()
        result = detector.predict(records, progress=False)
        return {"n": len(result.scores), "detector_predict_seconds": time.perf_counter() - begin}
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            begin = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - begin
        return wrapper

    import anomalens.cli  # noqa: F401  (what the command imports before it parses its arguments)
    import anomalens.workflow as workflow
    import anomalens.workflow.evaluation as evaluation
    spent["import anomalens, torch, sklearn, scipy (the command's imports)"] = time.perf_counter() - start
    begin = time.perf_counter()
    import timm  # noqa: F401  (loading a run imports it: torchvision, torch._dynamo)
    spent["import timm (when the run is loaded)"] = time.perf_counter() - begin
    import anomalens.report
    import anomalens.report.html_report as html_report

    evaluation.load_detector = timed("load the run", evaluation.load_detector)
    evaluation.as_test_dataset = timed("list the data", evaluation.as_test_dataset)
    evaluation.predict_with_masks = timed("decode + score (one pass, masks too)", evaluation.predict_with_masks)
    evaluation.evaluate = timed("metrics (AUROC, AUPRO)", evaluation.evaluate)
    anomalens.report.per_defect_type_metrics = timed("metrics per defect type", anomalens.report.per_defect_type_metrics)
    # The report is written in three steps around the metrics (cases drawn while they are computed)
    report = html_report.TestReport
    report.draw_cases = timed("report: case figures started (forked)", report.draw_cases)
    report.draw_curves = timed("report: curves started", report.draw_curves)
    report.finish = timed("report: waiting for the figures + the HTML page", report.finish)
    if hasattr(html_report, "ForkedCall"):  # the curves are drawn in a forked process meanwhile: the wait for them
        html_report.ForkedCall.result = timed("report: waiting for the curves (forked process, matplotlib)",
                                           html_report.ForkedCall.result)
    html_report.render_page = timed("report: HTML page", html_report.render_page)
    begin = time.perf_counter()
    workflow.test_run(spec["run"], spec["data"], out_dir=spec["out"], device=spec["device"], progress=False)
    spent["test_run, all of it"] = time.perf_counter() - begin
    return {"in_process_total": time.perf_counter() - start, **spent}


def run_worker(src: Path, spec: dict) -> dict:
    """``worker(spec)`` in a fresh process that imports the anomalens under ``src``."""
    return run_job(worker, spec, src=src, cwd=src.parent, label=f"worker {spec['what']}").value


def run_cli(src: Path, args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``anomalens ARGS`` with the anomalens under ``src``."""
    job = run_cli_job(src, args)
    return job.seconds, job.peak_rss_mb


def run_cli_job(src: Path, args: list[str]):
    return run_job([sys.executable, "-m", "anomalens.cli", *args], src=src, cwd=src.parent,
                   label=f"anomalens {' '.join(args[:2])}")


def fit(src: Path, model: str, folders: dict, device: str, tag: str) -> Path:
    run = WORK / "runs" / tag / model
    if not (run / "detector.json").is_file():
        params = [arg for k, v in MODELS[model].items() for arg in ("-p", f"{k}={v}")]
        run_cli(src, ["fit", model, str(folders["category"]), "-o", str(run), "--device", device, "-q", "--overwrite",
                      *params])
    return run


def measure(versions: dict[str, Path], folders: dict, device: str, models: list[str]) -> dict:
    """Every measurement runs for each version back to back (baseline, then current), so that a change in
    the machine's load hits both sides of a comparison alike."""
    n256 = len(list(folders["images256"].iterdir()))
    n2048 = len(list(folders["images2048"].iterdir()))
    results: dict = {tag: {} for tag in versions}
    runs = {(tag, model): fit(src, model, folders, device, tag) for model in models for tag, src in versions.items()}
    print("loading", flush=True)
    for key, images in (("load_256", folders["images256"]), ("load_2048", folders["images2048"])):
        for tag, src in versions.items():
            spec = {"run": str(runs[tag, models[0]]), "images": str(images), "device": device, "what": "load",
                    "workers": ["default", 0] if tag == "current" else ["default"]}
            results[tag][key] = run_worker(src, spec)
    for model in models:
        print(model, flush=True)
        for tag, src in versions.items():
            m = results[tag].setdefault(model, {})
            if tag == "current":
                m.update(run_worker(src, {"run": str(runs[tag, model]), "images": str(folders["images256"]), "device": device,
                                          "what": "model"}))
        for label, images in (("256", folders["images256"]), ("2048", folders["images2048"])):
            for tag, src in versions.items():
                results[tag][model][f"detector_predict_{label}"] = run_worker(
                    src, {"run": str(runs[tag, model]), "images": str(images), "device": device, "what": "predict"})["detector_predict"]
        for images, n, label in ((folders["images256"], n256, "256"), (folders["images2048"], n2048, "2048")):
            for mode in (["none", "anomalous", "all"] if label == "256" else ["anomalous"]):
                for tag, src in versions.items():
                    current = tag == "current"
                    if not current and mode == "anomalous" and label == "256":
                        continue  # the baseline has no such mode
                    actual = mode if current else ("all" if label == "2048" else mode)
                    out = WORK / "out" / tag / f"{model}-{label}-{actual}"
                    flag = ["--heatmaps", actual] if current else (["--no-heatmaps"] if actual == "none" else [])
                    seconds, rss = run_cli(src, ["predict", str(runs[tag, model]), str(images), "-o", str(out), "--device",
                                                 device, "-q", "--overwrite", *flag])
                    flagged = sum(json.loads(line)["anomalous"] for line in open(out / "predictions.jsonl"))
                    results[tag][model][f"cli_predict_{label}_{actual}"] = {
                        "images_per_second": n / seconds, "seconds": seconds, "peak_rss_mb": rss, "flagged": flagged, "n": n}
                    shutil.rmtree(out, ignore_errors=True)
    print("8000² frame", flush=True)
    for tag, src in versions.items():
        out = WORK / "out" / tag / "huge"
        seconds, rss = run_cli(src, ["predict", str(runs[tag, models[0]]), str(folders["huge"]), "-o", str(out), "--device",
                                     device, "-q", "--overwrite", *(["--heatmaps", "all"] if tag == "current" else [])])
        results[tag]["huge_8000_predict_all"] = {"seconds": seconds, "peak_rss_mb": rss}
        shutil.rmtree(out, ignore_errors=True)
    return results


USER_SCRIPT = """
import sys
import anomalens
detector = anomalens.load_detector(sys.argv[1], device=sys.argv[3])
result = detector.predict(anomalens.load_dataset(sys.argv[2]).test, progress=False)
"""


def test_breakdown(src: Path, run: Path, category: Path, device: str) -> dict:
    """`anomalens test` as a command (wall, user + sys CPU), the parts of its work in one process, and beside it
    the issue's yardsticks on the same test images: ``detector.predict`` in a warm process, and a user's script
    (its own process: import anomalens, load the run, ``detector.predict``)."""
    out = WORK / "out" / "test-report"
    shutil.rmtree(out, ignore_errors=True)
    command = run_cli_job(src, ["test", str(run), str(category), "-o", str(out), "--device", device, "-q"])
    shutil.rmtree(out, ignore_errors=True)
    interpreter = run_job([sys.executable, "-c", "pass"], src=src).seconds
    parts = run_worker(src, {"run": str(run), "data": str(category), "out": str(out), "device": device, "what": "test"})
    shutil.rmtree(out, ignore_errors=True)
    predict = run_worker(src, {"run": str(run), "data": str(category), "device": device, "what": "predict_test_split"})
    script = run_job([sys.executable, "-c", USER_SCRIPT, str(run), str(category), device], src=src, cwd=src.parent).seconds
    return {"commit": commit_label(), "n_images": predict["n"], "cli_test_wall_seconds": command.seconds,
            "cli_test_cpu_seconds": {"user": command.user_seconds, "sys": command.system_seconds},
            "python_start_seconds": interpreter, "parts": parts,
            "detector_predict_seconds": predict["detector_predict_seconds"], "user_script_seconds": script}


def legacy(data: dict) -> Results:
    """results.json as written before the harness: {"machine": machine + settings + load, "results": {code: ...}}."""
    info = dict(data["machine"])
    settings = {k: info.pop(k) for k in ("device", "n256", "n2048", "commit", "baseline") if k in info}
    run = {k: v for k, v in (("minutes", info.pop("minutes", None)), ("load_average_before", info.pop("load_before", None)),
                             ("load_average_after", info.pop("load_after", None))) if v is not None}
    codes = {k: v for k, v in data["results"].items() if k != "test_breakdown"}
    sections = {"test_breakdown": data["results"]["test_breakdown"]} if "test_breakdown" in data["results"] else {}
    return Results(SUITE, rows=[{"code": code, **v} for code, v in codes.items()], machine=info, settings=settings,
                   runs=[run], sections=sections)


def report(results: Results) -> str:
    s = results.settings
    codes = {r["code"]: r for r in results.rows}
    tags = [t for t in ("baseline", "current") if t in codes]
    models = [m for m in s.get("models") or MODELS if any(m in codes[t] for t in tags)]
    f = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    run = results.runs[-1] if results.runs else None
    lines = [f"# Throughput (issue 19) — {s['device']}", "",
             f"Machine: {describe(results.machine, load=run is None)}" + (f"; {describe_run(run)}" if run else "")
             + f". Baseline: {s.get('baseline') or '–'}; current: {s['commit']}.", "",
             f"{s['n256']} PNG images at 256 px, {s['n2048']} at 2048² (4.2 MP). images/s, higher is better; "
             "`anomalens predict` is the whole command (process start, imports, writing outputs).", ""]
    lines += ["| measurement | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]

    def get(tag, *keys):
        value = codes[tag]
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value

    rows = [("load only, 256 px (default workers)", ("load_256", "load_workers_default")),
            ("load only, 256 px (0 workers: in process)", ("load_256", "load_workers_0")),
            ("load only, 2048² (default workers)", ("load_2048", "load_workers_default")),
            ("load only, 2048² (0 workers)", ("load_2048", "load_workers_0"))]
    for model in models:
        rows += [(f"{model}: model only (preloaded tensors), 256 px", (model, "model_only")),
                 (f"{model}: detector.predict, 256 px", (model, "detector_predict_256")),
                 (f"{model}: detector.predict, 2048²", (model, "detector_predict_2048"))]
        for mode in ("none", "anomalous", "all"):
            rows.append((f"{model}: anomalens predict 256 px, heatmaps {mode}", (model, f"cli_predict_256_{mode}", "images_per_second")))
        rows.append((f"{model}: anomalens predict 2048², heatmaps anomalous (baseline: all)", None))
    for label, keys in rows:
        if keys is None:
            model = label.split(":")[0]
            cells = [f(get(t, model, "cli_predict_2048_anomalous" if t == "current" else "cli_predict_2048_all", "images_per_second"))
                     for t in tags]
        else:
            cells = [f(get(t, *keys)) for t in tags]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Peak memory (MB, largest process) and cost per megapixel:", "",
              "| measurement | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]
    for model in models:
        for tag_key, label in ((("cli_predict_256_none",), "predict 256 px, heatmaps none"),
                               (("cli_predict_2048_anomalous", "cli_predict_2048_all"), "predict 2048²")):
            cells = []
            for t in tags:
                entry = next((get(t, model, k) for k in tag_key if get(t, model, k)), None)
                cells.append("–" if not entry else f"{entry['peak_rss_mb']:.0f} MB")
            lines.append(f"| {model}: {label} | " + " | ".join(cells) + " |")
        cells = []
        for t in tags:
            entry = next((get(t, model, k) for k in ("cli_predict_2048_anomalous", "cli_predict_2048_all") if get(t, model, k)), None)
            cells.append("–" if not entry else f"{1000 * entry['seconds'] / (entry['n'] * 4.194304):.0f} ms/MP")
        lines.append(f"| {model}: predict 2048², cost per megapixel (whole command) | " + " | ".join(cells) + " |")
        cells = [f"{1000 / (get(t, model, 'detector_predict_2048') * 4.194304):.0f} ms/MP" if get(t, model, "detector_predict_2048") else "–"
                 for t in tags]
        lines.append(f"| {model}: detector.predict 2048², cost per megapixel | " + " | ".join(cells) + " |")
    cells = [f"{get(t, 'huge_8000_predict_all', 'peak_rss_mb'):.0f} MB, {get(t, 'huge_8000_predict_all', 'seconds'):.1f} s" for t in tags]
    lines.append("| one 8000² (64 MP) PNG, predict with its heatmap | " + " | ".join(cells) + " |")
    lines += ["", "Flagged images (heatmaps anomalous): " + ", ".join(
        f"{m} {get('current', m, 'cli_predict_256_anomalous', 'flagged')}/{s['n256']}" for m in models if 'current' in codes)]
    breakdown = results.sections.get("test_breakdown")
    if breakdown:
        lines += _breakdown_lines(breakdown)
    return "\n".join(lines) + "\n"


def _breakdown_lines(b: dict) -> list[str]:
    """The markdown of the `anomalens test` breakdown."""
    if "parts" not in b:  # the first breakdown's flat layout
        return ["", "`anomalens test` breakdown:", "", "| part | seconds |", "|---|---|",
                *[f"| {k} | {v:.1f} |" for k, v in b.items() if isinstance(v, float)]]
    parts = dict(b["parts"])
    cpu = b["cli_test_cpu_seconds"]
    n = b["n_images"]
    load = b.get("load_before")
    lines = ["", f"`anomalens test` (PaDiM, {n} images at 256 px, full report: metrics, per-type table, 5 curves, "
             f"18 case figures; code {b.get('commit', '?')}{'' if load is None else f', load average {load[0]} before'}). "
             "Where the seconds go:", "",
             "| part | seconds |", "|---|---|",
             f"| **the whole command (wall)**; CPU: {cpu['user']:.1f} s user + {cpu['sys']:.1f} s sys on 2 cores "
             f"| **{b['cli_test_wall_seconds']:.1f}** |",
             f"| Python interpreter start (`python -c pass`) | {b['python_start_seconds']:.2f} |"]
    total = parts.pop("in_process_total")
    whole_run = parts.pop("test_run, all of it", None)
    report = parts.pop("report, all of it", None)
    for name, seconds in parts.items():
        if name.startswith("report:") and report is not None:  # the report's own line first, its parts below
            lines.append(f"| report, all of it (test_run's last step) | {report:.2f} |")
            report = None
        lines.append(f"| {'&nbsp;&nbsp;' if name.startswith('report:') else ''}{name} | {seconds:.2f} |")
    if whole_run is not None:
        lines.append(f"| test_run, all of it (from loading the run on) | {whole_run:.2f} |")
    lines += [f"| in one process, imports and test_run | {total:.2f} |", "",
              f"Yardsticks on the same {n} images: `detector.predict` in a warm process {b['detector_predict_seconds']:.2f} s "
              f"(the command is {b['cli_test_wall_seconds'] / b['detector_predict_seconds']:.1f}x that); a user's script "
              f"(import anomalens, load the run, `detector.predict`, its own process) {b['user_script_seconds']:.2f} s "
              f"(the command is {b['cli_test_wall_seconds'] / b['user_script_seconds']:.1f}x that). Indented: parts of "
              "the report, drawn while a forked process draws the 5 curves with matplotlib (the wait is what is left "
              "of those when the case figures are done)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--n", type=int, default=1024, help="256 px images (default 1024)")
    parser.add_argument("--large", type=int, default=24, help="2048² images (default 24)")
    parser.add_argument("--baseline", default="HEAD", help="git revision measured beside the current code")
    parser.add_argument("--current", default=None,
                        help="measure this git revision (a worktree) as the current code instead of the working tree "
                             "(a stable snapshot while others edit the tree)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="128 + 4 images: a smoke run")
    parser.add_argument("--test-breakdown-only", action="store_true",
                        help="only the `anomalens test` breakdown, added to the saved results")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results folder (default {OUTPUT}; --quick: {WORK / 'quick'})")
    parser.add_argument("--report-only", action="store_true", help="rebuild results.md from results.json")
    args = parser.parse_args()
    out = args.output or (WORK / "quick" if args.quick else OUTPUT)
    if args.report_only:
        results = Results.load(out / "results.json", SUITE, legacy)
        print(f"wrote {write_report(out / 'results.md', report(results))}")
        return
    if args.test_breakdown_only:  # add the `anomalens test` breakdown to the saved results
        results = Results.load(out / "results.json", SUITE, legacy)
        folders = prepare(results.settings["n256"], results.settings["n2048"])
        src = checkout(args.current) / "src" if args.current else ROOT / "src"
        run = fit(src, "padim", folders, args.device, "current")
        load = [round(x, 2) for x in os.getloadavg()]
        results.sections["test_breakdown"] = {**test_breakdown(src, run, folders["category"], args.device),
                                              "load_before": load}
        results.write(out / "results", report(results))
        return
    if args.quick:
        args.n, args.large = 128, 4
    folders = prepare(args.n, args.large)
    versions = {}
    settings = {"device": args.device, "n256": args.n, "n2048": args.large, "models": args.models,
                "commit": commit_label()}
    if not args.no_baseline:
        versions["baseline"] = checkout(args.baseline) / "src"
        settings["baseline"] = short_commit(args.baseline)
    versions["current"] = ROOT / "src"
    if args.current:
        versions["current"] = checkout(args.current) / "src"
        settings["commit"] = short_commit(args.current)
    run = Run()
    measured = measure(versions, folders, args.device, args.models)
    results = Results(SUITE, rows=[{"code": tag, **v} for tag, v in measured.items()], settings=settings)
    results.save(WORK / "partial.json")  # kept if the breakdown below fails badly
    if "padim" in args.models:
        print("anomalens test breakdown", flush=True)
        try:
            results.sections["test_breakdown"] = test_breakdown(versions["current"], WORK / "runs" / "current" / "padim",
                                                                folders["category"], args.device)
        except Exception as exc:  # the throughput numbers are kept whatever happens here
            print(f"test breakdown failed: {exc}", file=sys.stderr)
    results.machine, results.runs = machine(args.device), [run.record()]
    text = report(results)
    results.write(out / "results", text)
    print(text)


if __name__ == "__main__":
    main()
