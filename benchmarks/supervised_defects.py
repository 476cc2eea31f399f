"""What labelled defects add to SuperSimpleNet (issue 27, part 2): the unsupervised model against the same model
fitted with 1, 5 and 10 labelled defects per category, measured on the test split — defects it never saw.

The labelled defects come from a SEPARATE pool: per category, a second synthetic category generated with another
seed (``anomalens.data.synthetic``, the same defect types), never the test images. For k labelled defects the
first k of the pool, in file order (the pool's defect types round-robin), each with its mask. Everything else
is identical between the rows of a category: the normal training images, the seed, the settings, the test split.
Accuracy only (image and pixel AUROC on the test split); each fit runs in this process, one after the other.

    .venv/bin/python benchmarks/supervised_defects.py --categories brick grass --size 64 --epochs 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import (
    RESULTS,
    WORK,
    Results,
    Run,
    describe,
    describe_run,
    machine,
    table,
    write_report,
)

SUITE = "supervised_defects"


def _dataset(root: Path, category: str, seed: int, n_train: int, n_good: int, n_defect: int, size: int) -> Path:
    from anomalens.data import make_synthetic_category

    folder = root / category
    if not folder.is_dir():
        make_synthetic_category(root, source=category, n_train=n_train, n_test_good=n_good, n_test_defect=n_defect,
                                image_size=size, seed=seed)
    return folder


def _aurocs(detector, test) -> tuple[float, float]:
    import numpy as np
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    scores, maps = detector.score(test, progress=False)
    size = maps.shape[1:]
    masks = np.zeros((len(test), *size), bool)
    for i, record in enumerate(test):
        if record.mask is not None:
            masks[i] = np.asarray(Image.open(record.mask).convert("L").resize(size[::-1], Image.NEAREST)) > 127
    return (float(roc_auc_score([r.label for r in test], scores)), float(roc_auc_score(masks.ravel(), maps.ravel())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "coffee"])
    parser.add_argument("--counts", nargs="+", type=int, default=[0, 1, 5, 10], help="labelled defects per category")
    parser.add_argument("--size", type=int, default=128, help="image size (px)")
    parser.add_argument("--train", type=int, default=60, help="normal training images per category")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32, help="normal images per batch (the paper: 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / SUITE)
    args = parser.parse_args()

    import torch

    from anomalens import create_detector
    from anomalens.data import load_dataset

    torch.set_num_threads(args.threads)
    run = Run()
    results = Results.load(args.output / "results.json", SUITE)  # rows of other categories are kept
    results.machine = machine()
    params = {"image_size": args.size, "epochs": args.epochs, "batch_size": args.batch, "device": "cpu"}
    categories = sorted({*results.settings.get("categories", []), *args.categories})
    results.settings = {**params, "n_train": args.train, "counts": args.counts, "categories": categories,
                        "test": "20 normal + 20 defective images per category", "pool": "10 defects, seed 1"}
    work = WORK / SUITE / f"{args.size}px"
    for category in args.categories:
        data = load_dataset(_dataset(work / "data", category, 0, args.train, 20, 20, args.size))
        pool = load_dataset(_dataset(work / "pool", category, 1, 1, 0, max(args.counts), args.size))
        labelled = [r for r in pool.test if r.label == 1]
        for count in args.counts:
            start = time.perf_counter()
            detector = create_detector("supersimplenet", **params)
            detector.fit(data.train, progress=False, abnormal=labelled[:count] if count else None)
            fit_seconds = time.perf_counter() - start
            image_auroc, pixel_auroc = _aurocs(detector, data.test)
            row = {"category": category, "labelled_defects": count, "image_auroc": image_auroc,
                   "pixel_auroc": pixel_auroc, "fit_seconds": round(fit_seconds, 1)}
            print(row, flush=True)
            results.upsert(row, "category", "labelled_defects")
            results.save(args.output / "results.json")
    results.runs.append(run.record(fits=len(args.categories) * len(args.counts)))
    columns = [("category", "category"), ("labelled defects", "labelled_defects", None), ("image AUROC", "image_auroc"),
               ("pixel AUROC", "pixel_auroc"), ("fit s", "fit_seconds", 1)]
    report = ["# SuperSimpleNet: what labelled defects add", "",
              "Generated by `benchmarks/supervised_defects.py` (do not edit by hand). Test split: defects the model "
              "never saw; labelled defects from a separate pool (another seed). Settings: "
              + ", ".join(f"{k}={v}" for k, v in results.settings.items()) + ".", "", "## Machine", "",
              f"- {describe(results.machine)}", *[f"- {describe_run(r)}" for r in results.runs], "",
              *table(results.rows, columns)]
    results.save(args.output / "results.json")
    write_report(args.output / "results.md", "\n".join(report))


if __name__ == "__main__":
    main()
