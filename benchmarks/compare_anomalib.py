"""Accuracy and speed suite: anomalens vs anomalib, side by side on the same data, image size, backbone weights
and settings.

    .venv/bin/python benchmarks/compare_anomalib.py                 # the committed comparison
    .venv/bin/python benchmarks/compare_anomalib.py --jobs padim:brick patchcore@0.01:coffee
    .venv/bin/python benchmarks/compare_anomalib.py --jobs padim@default:brick   # each library's own PaDiM default
    .venv/bin/python benchmarks/compare_anomalib.py --scaling       # fit/test scaling of PaDiM and PatchCore
    .venv/bin/python benchmarks/compare_anomalib.py --report-only
    python3 benchmarks/compare_anomalib.py --device cuda --python python3 --jobs ...   # on a GPU machine

On a GPU (``--device cuda``) both libraries run on the card (anomalens ``device=cuda``, anomalib
``Engine(accelerator="gpu")``) in the interpreter that ``--python`` names (one environment that holds
both; see tools/gpu_check.sh), and the results go to results/compare_anomalib_gpu/; every timed
span ends with ``torch.cuda.synchronize()``, and the peak GPU memory (``max_memory_allocated``) is
reported beside the peak RSS.

anomalib is *not* a dependency of anomalens: the first run creates its own virtual environment in
benchmarks/_work/anomalib-venv with pinned versions (ANOMALIB_VERSION, and the same torch /
torchvision pins as anomalens), then runs every measurement in a fresh process of the right
environment (``harness.run_job``; the workers are this script's ``--worker-*`` commands, also what
tools/renovation_check.py runs on an older checkout), so that each peak RSS is that of one job. The two
libraries alternate job by job (interleaved), so slow phases of a shared machine hit both.

Same work for both:
- backbone ``tf_efficientnet_lite0`` with the ImageNet weights bundled for anomalens (exported once
  to a safetensors file and loaded into anomalib's timm model in place of a download), and its own
  input normalisation (mean = std = 0.5) for both — anomalib's default pre-processor would apply
  ImageNet statistics, which these weights were not trained with;
- layers: PaDiM and STFPM timm out_indices 1, 2, 3 (strides 4, 8, 16); PatchCore 2, 3; PaDiM
  d = 100 random channels, the *same* 100 in both (anomalens' draw for seed 0 is set into anomalib's
  model) — and, as ``padim@default`` jobs, each library's own default side by side: anomalens'
  ``n_features`` default, anomalib's 100 channels of its own draw (anomalib requires ``n_features`` for
  this backbone; 100 is its default for ResNet-18); PatchCore the same coreset fraction and 9 neighbours; STFPM the same epochs;
- images resized to the same size (256 px synthetic, 64 px Fashion-MNIST, or the plugin's ``IMAGE_SIZE``
  when it sets one; the rows record it as ``image_size``), batch 32; anomalib with no
  data-loader worker processes (workers would hide its loading RSS), anomalens at its default — since
  2026-11-29 that decodes in worker processes (cores − 1: one on 2 cores), whose memory the peak RSS
  column (this process's) does not count;
- anomalib with post-processing, evaluator and visualizer off (raw scores and maps), and no
  validation pass during fit (``limit_val_batches=0``; the full test set is the test set);
- anomalens with its defaults, which include setting the threshold from normal images scored out of fold
  (since 2026-11-29: PaDiM leave-one-out, PatchCore 10 folds, each against the coreset a fit without it
  selects; before, 10 % held out) — work anomalib's fit does not do.
Both are scored here the same way: scikit-learn ``roc_auc_score`` on the raw image scores, and on all
pixels of the raw maps against the ground-truth masks resized (nearest) to the input size.
Times are wall-clock: fit = training incl. writing the model (``fit_run`` / ``Engine.fit``),
test = scoring the test images (``predict`` / ``Engine.predict``), single-image latency = load +
preprocess + forward of one image, 20 images, p50 / p95.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from harness import RESULTS as ALL_RESULTS
from harness import WORK, Results, Run, describe, describe_run, fmt, machine, run_job, write_report
from harness.datasets import benchmark_dataset, synthetic_category

SUITE = "compare_anomalib"
RESULTS = ALL_RESULTS / "compare_anomalib"
ANOMALIB_VENV = WORK / "anomalib-venv"
ANOMALIB_VERSION = "2.7.0"
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
WEIGHTS = WORK / "weights" / "tf_efficientnet_lite0.safetensors"
ARCH = "tf_efficientnet_lite0"
BATCH = 32
LAYERS = {"padim": [1, 2, 3], "patchcore": [2, 3], "stpm": [1, 2, 3]}
SYNTHETIC = ["brick", "grass", "gravel", "coffee", "chelsea"]
FMNIST_CLASSES = [0, 7]
FMNIST_SUBSAMPLE = {"train": 500, "test_per_class": 30, "seed": 0}  # test: 30 normal + 30 of each other class
DEFAULT_JOBS = (
    [f"padim:{d}" for d in SYNTHETIC] + [f"patchcore@0.01:{d}" for d in SYNTHETIC] + ["patchcore@0.1:brick"]
    + [f"padim@default:{d}" for d in SYNTHETIC]
    + ["stpm@10:brick", "stpm@10:coffee"]
    + [f"{m}:fmnist-{c}" for m in ("padim", "patchcore@0.01") for c in FMNIST_CLASSES]
)


# ---------------------------------------------------------------------------- shared by both workers
def _size(dataset: str, model: str | None = None) -> int:
    """Input side in pixels: 64 for Fashion-MNIST, else 256, or the model's plugin's IMAGE_SIZE (both libraries);
    a plugin's FMNIST_IMAGE_SIZE, where it sets one, for the Fashion-MNIST rows."""
    plugin = _plugin(model) if model else None
    if dataset.startswith("fmnist-") and getattr(plugin, "FMNIST_IMAGE_SIZE", None):
        return plugin.FMNIST_IMAGE_SIZE
    return getattr(plugin, "IMAGE_SIZE", None) or (64 if dataset.startswith("fmnist-") else 256)


def _records(folder: Path) -> tuple[list[Path], list[Path], list[int], list[Path | None]]:
    """(train paths, test paths, test labels, mask paths) of an MVTec-layout folder, in a fixed order."""
    ext = {".png", ".jpg", ".jpeg", ".bmp"}
    train = sorted(p for p in (folder / "train" / "good").iterdir() if p.suffix.lower() in ext)
    test, labels, masks = [], [], []
    for defect in sorted(d.name for d in (folder / "test").iterdir() if d.is_dir()):
        for p in sorted(q for q in (folder / "test" / defect).iterdir() if q.suffix.lower() in ext):
            test.append(p)
            labels.append(0 if defect == "good" else 1)
            mask = folder / "ground_truth" / defect / f"{p.stem}_mask.png"
            masks.append(mask if defect != "good" and mask.exists() else None)
    return train, test, labels, masks


def _masks(masks: list[Path | None], size: int) -> np.ndarray | None:
    from PIL import Image

    if all(m is None for m in masks):
        return None
    out = np.zeros((len(masks), size, size), dtype=bool)
    for i, m in enumerate(masks):
        if m is not None:
            out[i] = np.asarray(Image.open(m).convert("L").resize((size, size), Image.NEAREST)) > 127
    return out


def _aurocs(labels, scores, maps, masks) -> dict:
    from sklearn.metrics import roc_auc_score

    out = {"image_auroc": float(roc_auc_score(labels, scores)), "pixel_auroc": None}
    if maps is not None and masks is not None:
        out["pixel_auroc"] = float(roc_auc_score(masks.ravel(), np.asarray(maps, dtype=np.float32).ravel()))
    return out


def _rss_mb() -> float:
    """Current resident set size (after the imports: the floor that torch and the library set)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    """Wait for the GPU's queued work, so that a timer read after it covers that work."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _gpu_peak_mb(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"latency_ms_p50": round(float(np.percentile(ms, 50)), 1), "latency_ms_p95": round(float(np.percentile(ms, 95)), 1)}


def _plugin(model: str):
    """The comparison module of a detector outside the three built into this script, or None.

    ``benchmarks/compare_models/<model>.py`` declares ``anomalens_params(option, size, device) -> dict``
    (parameters of ``anomalens fit <model>``) and ``anomalib_model(option, common) -> (model, max_epochs)``
    (anomalib's implementation of the same method with the same settings; ``common`` holds the pre-processor
    and switches every job shares)."""
    if model in LAYERS:
        return None
    import importlib

    try:
        return importlib.import_module(f"compare_models.{model}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"[compare] no comparison for '{model}': add benchmarks/compare_models/{model}.py") from exc


def _parse_job(job: str) -> tuple[str, float | None, str]:
    """'patchcore@0.01:brick' -> ('patchcore', 0.01, 'brick'); 'stpm@10:x' -> epochs 10; 'padim@default:x' ->
    ('padim', 'default', 'x'): each library's own defaults instead of the same channels."""
    spec, dataset = job.split(":")
    model, _, option = spec.partition("@")
    if option == "default":
        return model, option, dataset
    return model, (float(option) if option else None), dataset


# ---------------------------------------------------------------------------- anomalens worker
def worker_anomalens(job: str, threads: int, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    import timm  # noqa: F401  (imported by anomalib too: part of both floors)

    from anomalens.data import AnomalyDataset, ImageRecord
    from anomalens.workflow import fit_run

    floor = _rss_mb()

    model, option, dataset = _parse_job(job)
    train, test, labels, masks = _records(WORK / "data" / dataset)
    size = _size(dataset, model)
    plugin = _plugin(model)
    params = (plugin.anomalens_params(option, size, device) if plugin else
              {"image_size": size, "backbone": "efficientnet_lite0", "layers": tuple(LAYERS[model]), "batch_size": BATCH,
               "device": device})
    if model == "padim" and option != "default":
        params["n_features"] = 100
    if model == "patchcore":
        params["coreset_fraction"] = option
    if model == "stpm":  # anomalib's Stfpm optimiser: SGD lr 0.4, momentum 0.9, weight decay 1e-3 (ours: the paper's 1e-4)
        params.update(epochs=int(option), weight_decay=1e-3)
    train_records = [ImageRecord(p, 0, None, p.name) for p in train]
    test_records = [ImageRecord(p, y, None, p.name) for p, y in zip(test, labels)]
    run_dir = WORK / "compare" / "anomalens" / job.replace(":", "_").replace("@", "-")
    start = time.perf_counter()
    detector = fit_run(model, AnomalyDataset(dataset, train_records), run_dir, params, overwrite=True, progress=False)
    _sync(device)
    fit_s = time.perf_counter() - start
    fit_rss = _peak_rss_mb()
    start = time.perf_counter()
    result = detector.predict(test_records, progress=False)
    _sync(device)
    test_s = time.perf_counter() - start
    out = _aurocs(labels, result.scores, result.maps, _masks(masks, size))
    del result
    latencies = []
    for record in test_records[:20]:
        start = time.perf_counter()
        detector.predict([record], progress=False)
        _sync(device)
        latencies.append(time.perf_counter() - start)
    return {**out, "fit_seconds": round(fit_s, 2), "test_images_per_second": round(len(test) / test_s, 2),
            "peak_rss_mb_fit": round(fit_rss, 1), "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_after_imports_mb": round(floor, 1),
            "peak_gpu_mb": _gpu_peak_mb(device), **_percentiles(latencies),
            "n_train": len(train), "n_test": len(test), "image_size": size}


def worker_backbone(dataset: str, threads: int, device: str = "cpu") -> dict:
    """Speed of light: the bare timm feature extractor's forward on preloaded tensors (no data
    loading, no detector math), at the benchmark's batch and image size; and anomalens' optimised
    extractor (BatchNorm folded, channels-last, unused blocks dropped) on the same tensors."""
    import torch

    torch.set_num_threads(threads)
    from anomalens.backbones import FeatureExtractor, create_backbone_model

    size = _size(dataset)
    x = torch.rand(BATCH, 3, size, size, device=device)
    out = {}
    for name, layers in (("padim_layers", LAYERS["padim"]), ("patchcore_layers", LAYERS["patchcore"])):
        plain = create_backbone_model("efficientnet_lite0", features_only=True, out_indices=tuple(layers)).eval().to(device)
        fast = FeatureExtractor("efficientnet_lite0", layers).optimize().to(device)
        timings: dict[str, list[float]] = {"timm": [], "anomalens": []}
        with torch.inference_mode():
            for _ in range(3 if device == "cuda" else 1):  # warm-up (cuDNN picks its kernels on the first calls)
                plain(x), fast(x)
            for _ in range(10 if device == "cuda" else 3):  # interleaved, best of n
                for key, fn in (("timm", lambda: plain(x)), ("anomalens", lambda: fast(x))):
                    _sync(device)
                    start = time.perf_counter()
                    fn()
                    _sync(device)
                    timings[key].append(time.perf_counter() - start)
        out[name] = {k: round(BATCH / min(v), 2) for k, v in timings.items()}
    return out


# ---------------------------------------------------------------------------- anomalib worker
def _patch_timm_for_offline_weights() -> None:
    """Make anomalib's ``timm.create_model(ARCH, pretrained=True, ...)`` load the exported weights."""
    import timm
    import torch
    from safetensors.torch import load_file

    original = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if name == ARCH and pretrained:
            model = original(name, pretrained=False, **kwargs)
            state = load_file(str(WEIGHTS))
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
            return model
        return original(name, pretrained=pretrained, **kwargs)

    timm.create_model = create_model
    torch.manual_seed(0)


def worker_anomalib(job: str, threads: int, device: str = "cpu") -> dict:
    import logging
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    _patch_timm_for_offline_weights()
    from anomalib.data import Folder, MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore, Stfpm
    from anomalib.pre_processing import PreProcessor
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    floor = _rss_mb()

    model_name, option, dataset = _parse_job(job)
    train, test, labels, masks = _records(WORK / "data" / dataset)
    size = _size(dataset, model_name)
    pre = PreProcessor(transform=Compose([Resize((size, size), antialias=True), Normalize([0.5] * 3, [0.5] * 3)]))
    common = {"pre_processor": pre, "post_processor": False, "evaluator": False, "visualizer": False}
    plugin = _plugin(model_name)
    if plugin is not None:
        model, epochs = plugin.anomalib_model(option, common)
    elif model_name == "padim" and option == "default":  # anomalib's own draw of 100 channels
        model = Padim(backbone=ARCH, layers=LAYERS["padim"], n_features=100, **common)
        epochs = 1
    elif model_name == "padim":
        model = Padim(backbone=ARCH, layers=LAYERS["padim"], n_features=100, **common)
        # The same random channel subset as anomalens' (seed 0), so that only the implementations differ:
        # with d ≈ n, which 100 of the 176 channels are drawn moves AUROC by a few hundredths either way.
        total = sum(model.model.feature_extractor.out_dims)
        model.model.idx = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:100].sort().values
        epochs = 1
    elif model_name == "patchcore":
        model = Patchcore(backbone=ARCH, layers=LAYERS["patchcore"], coreset_sampling_ratio=option, **common)
        epochs = 1
    else:
        model = Stfpm(backbone=ARCH, layers=LAYERS["stpm"], **common)
        epochs = int(option)
    loader = {"train_batch_size": BATCH, "eval_batch_size": BATCH, "num_workers": 0, "val_split_mode": "same_as_test"}
    if any(m is not None for m in masks):
        dm = MVTecAD(root=WORK / "data", category=dataset, **loader)
    else:  # anomalib's MVTecAD requires masks; its Folder datamodule reads the same files without them
        folder = WORK / "data" / dataset
        dm = Folder(name=dataset, root=folder, normal_dir="train/good", normal_test_dir="test/good",
                    abnormal_dir=[d for d in sorted((folder / "test").iterdir()) if d.name != "good"], **loader)
    root = WORK / "compare" / "anomalib" / job.replace(":", "_").replace("@", "-")
    engine = Engine(accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False, default_root_dir=root, max_epochs=epochs, limit_val_batches=0,
                    enable_progress_bar=False)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=dm)
    _sync(device)
    fit_s = time.perf_counter() - start
    fit_rss = _peak_rss_mb()
    start = time.perf_counter()
    batches = engine.predict(model=model, dataloaders=dm.test_dataloader())
    _sync(device)
    test_s = time.perf_counter() - start
    by_path: dict[str, tuple[float, np.ndarray | None]] = {}
    for batch in batches:
        maps = batch.anomaly_map
        for i, path in enumerate(batch.image_path):
            amap = None if maps is None else maps[i].reshape(size, size).float().cpu().numpy()
            by_path[str(Path(path).resolve())] = (float(batch.pred_score[i]), amap)
    scores = [by_path[str(p.resolve())][0] for p in test]
    maps = np.stack([by_path[str(p.resolve())][1] for p in test]) if batches[0].anomaly_map is not None else None
    out = _aurocs(labels, scores, maps, _masks(masks, size))
    del batches, by_path, maps
    torch_model = model.model.eval().to(device)
    latencies = []
    with torch.inference_mode():
        for path in test[:20]:
            start = time.perf_counter()
            image = decode_image(str(path), mode=ImageReadMode.RGB).float().div(255)[None].to(device)
            torch_model(pre.transform(image))
            _sync(device)
            latencies.append(time.perf_counter() - start)
    return {**out, "fit_seconds": round(fit_s, 2), "test_images_per_second": round(len(test) / test_s, 2),
            "peak_rss_mb_fit": round(fit_rss, 1), "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_after_imports_mb": round(floor, 1),
            "peak_gpu_mb": _gpu_peak_mb(device), **_percentiles(latencies),
            "n_train": len(train), "n_test": len(test), "image_size": size}


# ---------------------------------------------------------------------------- orchestration
def _results_dir(device: str) -> Path:
    return RESULTS if device == "cpu" else RESULTS.with_name(RESULTS.name + "_gpu")


def _anomalib_version(python: Path) -> str:
    proc = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('anomalib'))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def ensure_anomalib_venv() -> Path:
    python = ANOMALIB_VENV / "bin" / "python"
    marker = ANOMALIB_VENV / f".anomalib-{ANOMALIB_VERSION}"
    if not marker.exists():
        print(f"[compare] creating {ANOMALIB_VENV} with anomalib {ANOMALIB_VERSION} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(ANOMALIB_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TORCH_PINS, f"anomalib=={ANOMALIB_VERSION}"],
                       check=True)
        marker.touch()
    return python


def export_weights() -> None:
    if WEIGHTS.exists():
        return
    from safetensors.torch import save_file

    from anomalens.backbones import create_backbone_model

    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in create_backbone_model("efficientnet_lite0").state_dict().items()}
    save_file(state, str(WEIGHTS))


def prepare_data(datasets: set[str]) -> None:
    """Synthetic categories as benchmarks/run.py builds them; Fashion-MNIST one-class subsamples as
    MVTec-layout folders of PNGs (no masks), so both libraries read the very same files."""
    for name in sorted(datasets):
        folder = WORK / "data" / name
        if name.startswith("fmnist-"):
            if (folder / "test").exists():
                continue
            from PIL import Image

            from anomalens.data import load_fashion_mnist

            normal = int(name.split("-")[1])
            s = FMNIST_SUBSAMPLE
            data = load_fashion_mnist(normal_classes=(normal,), max_train_per_class=s["train"],
                                      max_test_per_class=s["test_per_class"], seed=s["seed"])
            stage = folder.with_name(folder.name + ".partial")
            for split, records in (("train", data.train), ("test", data.test)):
                for i, r in enumerate(records):
                    sub = stage / split / ("good" if r.label == 0 else "anomalous")
                    sub.mkdir(parents=True, exist_ok=True)
                    pixels = r.source if isinstance(r.source, np.ndarray) else np.asarray(Image.open(r.source))
                    Image.fromarray(np.asarray(pixels, dtype=np.uint8).squeeze()).save(sub / f"{i:05d}.png")
            stage.rename(folder)
        else:
            benchmark_dataset(name)


def run_worker(library: str, target: str, threads: int, python: Path, device: str = "cpu", own_python: str | None = None) -> dict:
    """One measurement in a fresh process: anomalib in its venv (``python``), the rest in this
    interpreter — or every worker in ``own_python`` when one environment holds both (the GPU run)."""
    exe = own_python or (str(python) if library == "anomalib" else sys.executable)
    flag = {"anomalib": "--worker-anomalib", "anomalens": "--worker-anomalens", "backbone": "--worker-backbone"}[library]
    return run_job([exe, __file__, flag, target, "--threads", str(threads), "--device", device],
                   label=f"{library} {target}").json()


def legacy(data: dict) -> Results:
    """results.json as written before the harness: {"jobs": {job: {library: row}}, "backbone", "machines"}."""
    rows = [{"job": job, "library": lib, **row} for job, pair in data["jobs"].items() for lib, row in pair.items()]
    return Results(SUITE, rows=rows, runs=data["machines"], sections={"backbone": data["backbone"]})


def legacy_scaling(data: dict) -> Results:
    """scaling.json as written before the harness: {spec: row, ..., "_machine": "one line"}."""
    rows = [{"spec": spec, **row} for spec, row in data.items() if spec != "_machine"]
    return Results(f"{SUITE}_scaling", rows=rows, runs=[data["_machine"]] if "_machine" in data else [])


def describe_entry(entry: dict | str) -> str:
    """A machine line of results.md: the machine, threads and jobs of one invocation."""
    if isinstance(entry, str):
        return entry
    return (f"{entry['machine']}, {entry['threads']} thread(s) per job; {entry['jobs']} job(s) × {entry['repeats']} "
            f"repeat(s); " + describe_run(entry))


def _median_run(runs: list[dict]) -> dict:
    """Accuracy from the first run (deterministic); times and memory: medians over the repeats."""
    out = dict(runs[0])
    for key in ("fit_seconds", "test_images_per_second", "peak_rss_mb", "peak_rss_mb_fit", "rss_after_imports_mb",
                "latency_ms_p50", "latency_ms_p95", "peak_gpu_mb"):
        if runs[0].get(key) is not None:
            out[key] = round(float(np.median([r[key] for r in runs])), 2)
    out["repeats"] = len(runs)
    return out


def compare(jobs: list[str], repeats: int, threads: int, device: str = "cpu", own_python: str | None = None,
            results_dir: Path | None = None) -> None:
    python = Path(own_python) if own_python else ensure_anomalib_venv()
    export_weights()
    prepare_data({_parse_job(j)[2] for j in jobs})
    results_dir = results_dir or _results_dir(device)
    path = results_dir / "results.json"
    results = Results.load(path, SUITE, legacy)
    backbone = results.sections.setdefault("backbone", {})
    run = Run()
    for dataset in sorted({_parse_job(j)[2] for j in jobs}, key=lambda d: _size(d)):
        key = f"{_size(dataset)}px"
        if key not in backbone:
            backbone[key] = run_worker("backbone", dataset, threads, python, device, own_python)
            print(f"[compare] backbone {key}: {backbone[key]}", flush=True)
    for job in jobs:
        runs: dict[str, list[dict]] = {"anomalens": [], "anomalib": []}
        for _ in range(repeats):
            for library in ("anomalens", "anomalib"):  # interleaved
                runs[library].append(run_worker(library, job, threads, python, device, own_python))
                r = runs[library][-1]
                print(f"[compare] {job} {library}: image {r['image_auroc']:.3f} pixel {r['pixel_auroc']} fit "
                      f"{r['fit_seconds']} s, {r['test_images_per_second']} img/s, {r['peak_rss_mb']} MB", flush=True)
        for library, measured in runs.items():
            results.upsert({"job": job, "library": library, **_median_run(measured)}, "job", "library")
        results.save(path)  # after every job: a stopped run keeps its rows
    results.machine = machine(device)
    on = describe(results.machine, load=False)
    if device != "cpu":
        on += f"; anomalib {_anomalib_version(python)}"
    results.runs.append(run.record(machine=on, threads=threads, jobs=len(jobs), repeats=repeats))
    results.save(path)


# ---------------------------------------------------------------------------- scaling
def worker_scaling(spec: str, threads: int) -> dict:
    """'fit:padim:400' fits on the first 400 images of scale-train; 'test:patchcore:1000' fits on 100
    and then scores 1 000 test images (the peak RSS of testing is read against that of fitting)."""
    import torch

    torch.set_num_threads(threads)
    from anomalens import create_detector
    from anomalens.data import load_mvtec_category

    what, model, n = spec.split(":")
    n = int(n)
    data = load_mvtec_category(synthetic_category("brick", 900))
    params = {"image_size": 256, "batch_size": BATCH}
    detector = create_detector(model, **params)
    train = data.train[: (n if what == "fit" else 100)]
    start = time.perf_counter()
    detector.fit(train, progress=False)
    fit_s = time.perf_counter() - start
    fit_rss = _peak_rss_mb()
    out = {"fit_seconds": round(fit_s, 2), "peak_rss_mb_fit": round(fit_rss, 1), "n_train": len(train)}
    if what == "test":
        pool = data.train[100:] + data.test
        records = (pool * (n // len(pool) + 1))[:n]
        start = time.perf_counter()
        n_scored = sum(len(r.scores) for _, r in detector.predict_in_chunks(records, 64))  # as `anomalens predict`
        out.update({"n_test": n_scored, "test_seconds": round(time.perf_counter() - start, 2),
                    "peak_rss_mb": round(_peak_rss_mb(), 1)})
    return out


def scaling(threads: int) -> None:
    synthetic_category("brick", 900)  # the scaling runs' 900 training images, built outside the timed jobs
    path = RESULTS / "scaling.json"
    results = Results.load(path, f"{SUITE}_scaling", legacy_scaling)
    specs = [f"fit:{m}:{n}" for m in ("padim", "patchcore") for n in (100, 200, 400, 800)]
    specs += [f"test:{m}:{n}" for m in ("padim", "patchcore") for n in (100, 1000)]
    run = Run()
    for spec in specs:
        if results.find(spec=spec):
            continue
        row = run_job([sys.executable, __file__, "--worker-scaling", spec, "--threads", str(threads)],
                      label=f"scaling {spec}").json()
        results.rows.append({"spec": spec, **row})
        print(f"[scaling] {spec}: {row}", flush=True)
        results.save(path)
    results.machine = machine()
    results.runs.append(run.record(machine=describe(results.machine, load=False), threads=threads))
    results.save(path)


# ---------------------------------------------------------------------------- report
def _f(value, digits=3) -> str:
    return fmt(value, digits)


def write_markdown(device: str = "cpu", results_dir: Path | None = None, plot: bool = True) -> None:
    """results.md of ``results_dir`` (default: the device's), from its results.json and the scaling runs'."""
    gpu = device != "cpu"
    results_dir = results_dir or _results_dir(device)
    title = "anomalens vs anomalib on a GPU" if gpu else "anomalens vs anomalib"
    lines = [f"# {title} — same data, backbone, weights and settings", "",
             "Generated by `benchmarks/compare_anomalib.py` (do not edit by hand); how each number is obtained is in "
             "that script's docstring.", ""]
    path = results_dir / "results.json"
    if path.exists():
        results = Results.load(path, SUITE, legacy)
        where = ("one environment for both (the GPU machine's torch; versions in the machine line)" if gpu
                 else f"anomalib {ANOMALIB_VERSION} in its own venv")
        lines += ["## Machine", "", *[f"- {describe_entry(m)}" for m in results.runs], "",
                  f"{where}; anomalens from this repository. Backbone "
                  f"`{ARCH}` (bundled ImageNet weights) for both; batch {BATCH}.", "",
                  "## Accuracy, speed, memory", "",
                  "Ratios are anomalens / anomalib: fit+test time (lower is better), peak RSS (lower is better), "
                  "throughput (higher is better). Times and memory are medians over the repeats; ‘bb %’ is the "
                  "detector's test throughput as a share of the bare timm feature extractor's forward throughput "
                  "(same batch and size, preloaded tensors) — the speed-of-light reference below.", "",
                  "‘above imports’ is the peak RSS minus the RSS right after importing torch, timm and the library "
                  "(the same CUDA build of torch for both, ~0.5–0.9 GB before any work): the memory the "
                  "detector itself needs." + (" ‘GPU MB’ is torch's peak allocated GPU memory." if gpu else ""), "",
                  "| job | library | image AUROC | pixel AUROC | fit s | test img/s | bb % | latency p50 / p95 ms "
                  "| peak RSS MB | above imports MB | fit+test time ratio | RSS ratio | above-imports ratio |"
                  + (" GPU MB |" if gpu else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
        pairs: dict[str, dict] = {}
        for row in results.rows:
            pairs.setdefault(row["job"], {})[row["library"]] = row
        for job, pair in pairs.items():
            model, _, dataset = _parse_job(job)
            bb = results.sections["backbone"].get(f"{_size(dataset, model)}px", {}).get(
                "patchcore_layers" if model == "patchcore" else "padim_layers", {}).get("timm")
            ours, theirs = pair["anomalens"], pair["anomalib"]

            def total(r):
                return r["fit_seconds"] + r["n_test"] / r["test_images_per_second"]

            for lib, r in (("anomalens", ours), ("anomalib", theirs)):
                ratio = f"{total(ours) / total(theirs):.2f}" if lib == "anomalens" else ""
                rss = f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}" if lib == "anomalens" else ""
                above = {k: v["peak_rss_mb"] - v.get("rss_after_imports_mb", 0.0) for k, v in pair.items()}
                above_ratio = f"{above['anomalens'] / above['anomalib']:.2f}" if lib == "anomalens" else ""
                share = f"{100 * r['test_images_per_second'] / bb:.0f}" if bb else "–"
                lines.append(f"| {job} | {lib} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} | {r['fit_seconds']:.1f} "
                             f"| {r['test_images_per_second']:.1f} | {share} | {r['latency_ms_p50']:.0f} / "
                             f"{r['latency_ms_p95']:.0f} | {r['peak_rss_mb']:.0f} | {above[lib]:.0f} | {ratio} | {rss} "
                             f"| {above_ratio} |" + (f" {_f(r.get('peak_gpu_mb'), 0)} |" if gpu else ""))
        lines += ["", "## Speed of light: the bare backbone", "",
                  "Forward throughput (images/s) of timm's `features_only` model on preloaded tensors — what "
                  "both libraries call — and of anomalens' optimised extractor (BatchNorm folded into the convs, "
                  + ("" if gpu else "channels-last, ")
                  + "blocks past the deepest used layer dropped; same features within 1e-4, see "
                  "tests/test_fast_inference.py).", "",
                  "| input | layers | timm | anomalens extractor |", "|---|---|---|---|"]
        for size, entry in results.sections["backbone"].items():
            for layers, v in entry.items():
                lines.append(f"| {size} | {layers.replace('_layers', '')}: {LAYERS[layers.split('_')[0]]} | {v['timm']:.1f} "
                             f"| {v['anomalens']:.1f} |")
        lines += ["", "## The floor: fit + test at the extractor's speed", "",
                  "A detector on a frozen backbone runs the backbone over every training and test image at least "
                  "once. At anomalens' optimised extractor's throughput (above) that alone takes "
                  "(training + test images) / throughput seconds; ‘floor ratio’ is that time over anomalib's "
                  "measured fit + test time — no fit + test ratio below it is possible without a faster extractor.", "",
                  "| job | images | extractor img/s | floor s | anomalib fit + test s | floor ratio | measured ratio |",
                  "|---|---|---|---|---|---|---|"]
        for job, pair in pairs.items():
            model, _, dataset = _parse_job(job)
            if model not in ("padim", "patchcore") or set(pair) != {"anomalens", "anomalib"}:
                continue
            ours, theirs = pair["anomalens"], pair["anomalib"]
            extractor = results.sections["backbone"].get(f"{_size(dataset, model)}px", {}).get(
                f"{model}_layers", {}).get("anomalens")
            if not extractor:
                continue
            images = ours["n_train"] + ours["n_test"]
            floor = images / extractor
            theirs_total = theirs["fit_seconds"] + theirs["n_test"] / theirs["test_images_per_second"]
            ours_total = ours["fit_seconds"] + ours["n_test"] / ours["test_images_per_second"]
            lines.append(f"| {job} | {images} | {extractor:.0f} | {floor:.2f} | {theirs_total:.2f} "
                         f"| {floor / theirs_total:.2f} | {ours_total / theirs_total:.2f} |")
        lines.append("")
    spath = RESULTS / "scaling.json"
    if spath.exists() and not gpu:
        scaled = Results.load(spath, f"{SUITE}_scaling", legacy_scaling)
        s = {row["spec"]: row for row in scaled.rows}
        machine_line = "; ".join(describe_scaling(entry) for entry in scaled.runs[-1:])
        lines += ["## Scaling (anomalens)", "", f"Machine: {machine_line}. Synthetic brick, 256 px.", "",
                  "| model | training images | fit s | peak RSS MB (fit) |", "|---|---|---|---|"]
        for m in ("padim", "patchcore"):
            for n in (100, 200, 400, 800):
                r = s.get(f"fit:{m}:{n}")
                if r:
                    lines.append(f"| {m} | {n} | {r['fit_seconds']:.1f} | {r['peak_rss_mb_fit']:.0f} |")
        lines += ["", "| model | test images | test s | peak RSS MB after fit (100 images) | peak RSS MB after test |",
                  "|---|---|---|---|---|"]
        for m in ("padim", "patchcore"):
            for n in (100, 1000):
                r = s.get(f"test:{m}:{n}")
                if r:
                    lines.append(f"| {m} | {n} | {r['test_seconds']:.1f} | {r['peak_rss_mb_fit']:.0f} | {r['peak_rss_mb']:.0f} |")
        lines += ["", "![scaling](scaling.png)", ""]
        if plot:
            _plot_scaling(s)
    write_report(results_dir / "results.md", "\n".join(lines) + "\n")


def describe_scaling(entry: dict | str) -> str:
    if isinstance(entry, str):
        return entry
    return f"{entry['machine']}; {entry['threads']} thread(s); " + describe_run(entry)


def _plot_scaling(s: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for m in ("padim", "patchcore"):
        ns = [n for n in (100, 200, 400, 800) if f"fit:{m}:{n}" in s]
        ax1.plot(ns, [s[f"fit:{m}:{n}"]["fit_seconds"] for n in ns], "o-", label=m)
        ax2.plot(ns, [s[f"fit:{m}:{n}"]["peak_rss_mb_fit"] for n in ns], "o-", label=m)
    ax1.set(xlabel="training images (256 px)", ylabel="fit seconds", title="fit time")
    ax2.set(xlabel="training images (256 px)", ylabel="peak RSS (MB)", title="fit peak memory")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(RESULTS / "scaling.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=DEFAULT_JOBS, help="MODEL[@fraction|epochs]:DATASET")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--python", help="run every worker, anomalib's too, in this interpreter (GPU machine)")
    parser.add_argument("--worker-anomalens", help=argparse.SUPPRESS)
    parser.add_argument("--worker-anomalib", help=argparse.SUPPRESS)
    parser.add_argument("--worker-backbone", help=argparse.SUPPRESS)
    parser.add_argument("--worker-scaling", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None,
                        help="the folder whose results.json the jobs merge into and whose results.md is written "
                             "(default: results/compare_anomalib, or _gpu with --device cuda)")
    args = parser.parse_args()
    for flag, fn in (("worker_anomalens", worker_anomalens), ("worker_anomalib", worker_anomalib),
                     ("worker_backbone", worker_backbone), ("worker_scaling", worker_scaling)):
        if getattr(args, flag):
            extra = {} if flag == "worker_scaling" else {"device": args.device}
            print(json.dumps(fn(getattr(args, flag), args.threads, **extra)))
            return
    if args.scaling:
        scaling(args.threads)
    elif not args.report_only:
        compare(args.jobs, args.repeats, args.threads, args.device, args.python, args.output)
    write_markdown(args.device, args.output, plot=not args.report_only)
    print(f"[compare] wrote {(args.output or _results_dir(args.device)) / 'results.md'}")


if __name__ == "__main__":
    main()
