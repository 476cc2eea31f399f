"""Scale suite: high-resolution images, tiling (tile_size) against squashing the whole image to the model's size.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tiling_highres.py                  # PaDiM and PatchCore, 2048²
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tiling_highres.py --models padim   # PaDiM only
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tiling_highres.py --quick          # 1024², a smoke run

Data (under ``benchmarks/_work/tiling_highres``, ignored by git, rebuilt when missing): a synthetic
MVTec-layout category of ``--side``² greyscale images. Each image is a 4 × 4 mosaic of defect-free
``brick`` views of side/4 px (``anomalens.data.synthetic.make_normal_image``: crops of the scikit-image
photo with scale jitter, flips, lighting and sensor noise), so the texture keeps its detail at full
resolution. A defective image gets one ``add_defect`` defect (scratch, stain, hole, patch, in turn) drawn
in a random side/8-px window and pasted back: 0.2-5 % of that window, i.e. 0.003-0.08 % of the image —
15 to 60 px across at 2048², 2 to 7 px once the image is squashed to 256.

Configurations, each fitted on the training images and run on the test images through the Python API
(``Detector.fit`` / ``Detector.predict``): "tiled" = ``image_size=side, tile_size=256`` (overlap 0.25),
"squashed" = ``image_size=256``. Pixel metrics (pixel AUROC, AUPRO up to FPR 0.3) are computed at the
images' own resolution for both: the squashed maps brought back with ``anomalens.report.to_original_size``
(what ``anomalens predict`` draws), the tiled maps are already there. Times: fit (the threshold's
cross-fitting included) and predict, the latter also per megapixel of input image. Results:
``results/tiling_highres.{json,md}`` with the machine, its load average before and after, and the settings;
``--report-only`` rebuilds the markdown from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from harness import RESULTS, Results, Run, describe, describe_run, machine, markdown, table, write_report
from harness import WORK as ALL_WORK

SUITE = "tiling_highres"
OUTPUT = RESULTS / "tiling_highres"
WORK = ALL_WORK / "tiling_highres"
SOURCE = "brick"


# ---------------------------------------------------------------------------------------------- data
def _mosaic(side: int, rng: np.random.Generator) -> np.ndarray:
    from anomalens.data.synthetic import make_normal_image

    block = side // 4
    rows = [np.concatenate([make_normal_image(SOURCE, block, rng) for _ in range(4)], axis=1) for _ in range(4)]
    return np.concatenate(rows, axis=0)


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    if array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    else:
        pixels = np.round(np.clip(array[..., 0], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def build_category(side: int, n_train: int, n_good: int, n_defect: int, seed: int = 0) -> Path:
    """The category folder (MVTec layout), built once per setting; returns its path."""
    from anomalens.data import DEFECT_TYPES
    from anomalens.data.synthetic import add_defect

    folder = WORK / f"{SOURCE}{side}-{n_train}-{n_good}-{n_defect}-s{seed}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("train/good", "test/good"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(_mosaic(side, rng), folder / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _save(_mosaic(side, rng), folder / "test" / "good" / f"{i:03d}.png")
    window = side // 8
    areas = []
    for i in range(n_defect):
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        image = _mosaic(side, rng)
        top, left = (int(v) for v in rng.integers(0, side - window, 2))
        patch, small = add_defect(image[top : top + window, left : left + window].copy(), kind, rng, SOURCE)
        image[top : top + window, left : left + window] = patch
        mask = np.zeros((side, side), bool)
        mask[top : top + window, left : left + window] = small
        areas.append(float(mask.mean()))
        for sub in (f"test/{kind}", f"ground_truth/{kind}"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        _save(image, folder / "test" / kind / f"{i:03d}.png")
        _save(mask, folder / "ground_truth" / kind / f"{i:03d}_mask.png")
    (folder / "defect_areas.json").write_text(json.dumps(areas))
    (folder / "done").write_text("")
    return folder


# ---------------------------------------------------------------------------------------------- runs
def run_one(name: str, params: dict, dataset, masks: np.ndarray, labels: np.ndarray) -> dict:
    import torch

    from anomalens.catalog import create_detector
    from anomalens.metrics import aupro, image_auroc, pixel_auroc
    from anomalens.report import to_original_size

    torch.manual_seed(0)
    detector = create_detector(name, **params)
    start = time.perf_counter()
    detector.fit(dataset.train, progress=False)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = detector.predict(dataset.test, progress=False)
    predict_seconds = time.perf_counter() - start
    side = masks.shape[1:]
    maps = np.stack([to_original_size(m, side) for m in result.maps])  # both at the images' own size
    megapixels = len(dataset.test) * side[0] * side[1] / 1e6
    labels_pred = result.labels
    return {
        "detector": name,
        "params": params,
        "working_size": list(detector.input_size),
        "tiles_per_image": len(detector.sizing.tile_layout()) if detector.sizing.tiling else 1,
        "image_auroc": round(image_auroc(labels, result.scores), 4),
        "pixel_auroc": round(pixel_auroc(masks, maps), 4),
        "aupro": round(aupro(masks, maps), 4),
        "detected": f"{int(labels_pred[labels == 1].sum())}/{int(labels.sum())}",
        "false_alarms": f"{int(labels_pred[labels == 0].sum())}/{int((labels == 0).sum())}",
        "fit_seconds": round(fit_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
        "predict_seconds_per_image": round(predict_seconds / len(dataset.test), 2),
        "predict_seconds_per_megapixel": round(predict_seconds / megapixels, 3),
    }


def configurations(models: list[str], side: int, tile: int, overlap: float) -> list[tuple[str, str, dict]]:
    common = {"device": "cpu", "batch_size": 16}
    out = []
    for name in models:
        extra = {"coreset_fraction": 0.01} if name == "patchcore" else {}
        out.append((f"{name} tiled {side}² / {tile}", name,
                    {**common, **extra, "image_size": side, "tile_size": tile, "tile_overlap": overlap}))
        out.append((f"{name} squashed to {tile}", name, {**common, "image_size": tile}))
    return out


def legacy(data: dict) -> Results:
    """tiling_highres.json as written before the harness: the load and duration beside the machine."""
    run = {"minutes": data["minutes"], "load_average_before": data["load_before"], "load_average_after": data["load_after"]}
    return Results(SUITE, rows=data["rows"], machine=data["machine"], settings=data["settings"], runs=[run],
                   sections={"defect_area_percent": data["defect_area_percent"]})


COLUMNS = [
    ("configuration", "configuration"),
    ("working size", lambda r: f"{r['working_size'][0]}×{r['working_size'][1]}"),
    ("tiles / image", "tiles_per_image"), ("image AUROC", "image_auroc", None), ("pixel AUROC", "pixel_auroc", None),
    ("AUPRO", "aupro", None), ("detected", "detected"), ("false alarms", "false_alarms"),
    ("fit s", "fit_seconds", None), ("predict s / image", "predict_seconds_per_image", None),
    ("predict s / MP", "predict_seconds_per_megapixel", None),
]


def report(results: Results) -> str:
    s, areas = results.settings, results.sections["defect_area_percent"]
    return markdown(
        "Tiling high-resolution images (benchmarks/tiling_highres.py)",
        f"Machine: {describe(results.machine, load=False)}, shared with other jobs; {describe_run(results.runs[-1])}.",
        f"Data: synthetic `{s['source']}` mosaics of {s['side']}² px (greyscale PNG), {s['n_train']} training images, "
        f"{s['n_good']} good + {s['n_defect']} defective test images; one defect per defective image covering "
        f"{min(areas):.3f}-{max(areas):.3f} % of it. "
        f"Tiled: image_size {s['side']}, tile_size {s['tile']}, tile_overlap {s['overlap']}; squashed: image_size "
        f"{s['tile']}. Pixel metrics at the images' own {s['side']}² resolution for both. Defaults otherwise "
        "(efficientnet_lite0; PatchCore tiled with coreset_fraction 0.01); thresholds as `fit` sets them.",
        table(results.rows, COLUMNS),
        "With so few test images the image AUROC moves in steps of "
        f"1/{s['n_good'] * s['n_defect']}; the pixel metrics rest on millions of pixels.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="padim,patchcore")
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-good", type=int, default=4)
    parser.add_argument("--n-defect", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="1024² images, 4 training images: a smoke run")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results stem: writes OUTPUT.json and OUTPUT.md (default {OUTPUT}; --quick: {WORK / 'quick'})")
    parser.add_argument("--report-only", action="store_true", help="rebuild OUTPUT.md from OUTPUT.json")
    args = parser.parse_args()
    if args.quick:
        args.side, args.n_train, args.n_good, args.n_defect = 1024, 4, 2, 2
    output = args.output or (WORK / "quick" if args.quick else OUTPUT)
    if args.report_only:
        results = Results.load(output.with_name(output.name + ".json"), SUITE, legacy)
        print(f"wrote {write_report(output.with_name(output.name + '.md'), report(results))}")
        return

    import torch

    from anomalens.data import load_mvtec_category
    from anomalens.data.torch_dataset import TensorImageDataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    run = Run()
    folder = build_category(args.side, args.n_train, args.n_good, args.n_defect)
    dataset = load_mvtec_category(folder)
    labels = np.array([r.label for r in dataset.test])
    masks = np.stack([TensorImageDataset([r], args.side)[0]["mask"][0].numpy() > 0.5 for r in dataset.test])
    rows = []
    for title, name, params in configurations(args.models.split(","), args.side, args.tile, args.overlap):
        print(f"{title} ...", flush=True)
        row = {"configuration": title, **run_one(name, params, dataset, masks, labels)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    settings = {"side": args.side, "tile": args.tile, "overlap": args.overlap, "n_train": args.n_train,
                "n_good": args.n_good, "n_defect": args.n_defect, "source": SOURCE}
    areas = [round(100 * a, 4) for a in json.loads((folder / "defect_areas.json").read_text())]
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings=settings, runs=[run.record()],
                      sections={"defect_area_percent": areas})
    json_path, md_path = results.write(output, report(results))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
