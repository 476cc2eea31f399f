"""Accuracy suite: does ``anomalens tune``'s normal-only validation rank settings the way the test split does?

    .venv/bin/python benchmarks/tune_validation.py                        # brick and coffee, 12 PaDiM settings
    .venv/bin/python benchmarks/tune_validation.py --categories grass --image-size 64
    .venv/bin/python benchmarks/tune_validation.py --report-only

For each synthetic category (``harness.datasets``: 120 training normals, 30 normal + 40 defective test images)
the tune's validation set is built exactly as ``anomalens tune`` builds it (``anomalens.tuning.build_validation``:
20 % of the training normals held out, each once as it is and once with a pasted synthetic defect). Every
setting of a grid (PaDiM: layers × n_features × blur_sigma) is fitted once on the remaining 80 % and scored on
both the validation set (the tune's objective: mean of image and pixel AUROC) and the test split (image AUROC,
pixel AUROC). Reported per category: Spearman's ρ between the validation objective and the test image AUROC
(and the test mean of image and pixel AUROC), and the *regret*: the best test image AUROC of the grid minus
the test image AUROC of the setting the validation picks. The test split is what the tune never sees: here it
only judges the criterion. Results: ``results/tune_validation/results.{json,md}`` with the machine and load.
"""

from __future__ import annotations

import argparse
import itertools
import math

from scipy import stats

from harness import RESULTS as ALL_RESULTS
from harness import WORK, Results, Run, describe, describe_run, machine, markdown, table
from harness.cli import output_options, rebuild_report
from harness.datasets import synthetic_category

SUITE = "tune_validation"
RESULTS = ALL_RESULTS / SUITE
GRID = {"layers": [[1, 2], [1, 2, 3], [2, 3]], "n_features": [16, 64], "blur_sigma": [0.0, 4.0]}


def settings() -> list[dict]:
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def measure(category: str, image_size: int, results: Results, save) -> None:
    import numpy as np

    from anomalens.catalog import create_detector
    from anomalens.data import load_dataset
    from anomalens.metrics import image_auroc, pixel_auroc
    from anomalens.tuning import build_validation, validation_objective, validation_records
    from anomalens.workflow.evaluation import predict_with_masks

    dataset = load_dataset(synthetic_category(category))
    folder = WORK / SUITE / category / "validation"
    # the benchmarks' scratch folder: the same seed writes the same images over an earlier run's
    train, described = build_validation(dataset, folder, (image_size, image_size), 0.2, seed=0)
    validation = validation_records(folder)
    labels = np.array([r.label for r in dataset.test])
    for setting in settings():
        key = {"category": category, "image_size": image_size, **{k: str(v) for k, v in setting.items()}}
        if results.find(**key):
            continue
        model = create_detector("padim", image_size=image_size, device="cpu", seed=0, **setting)
        model.fit(train, progress=False)
        on_validation = validation_objective(model, validation)
        result, masks = predict_with_masks(model, dataset.test, True, progress=False)
        test_image = float(image_auroc(labels, result.scores))
        test_pixel = float(pixel_auroc(masks, result.maps))
        results.upsert({**key, "validation": described, "validation_objective": on_validation["objective"],
                        "validation_image_auroc": on_validation["image_auroc"],
                        "validation_pixel_auroc": on_validation["pixel_auroc"], "test_image_auroc": test_image,
                        "test_pixel_auroc": test_pixel}, *key)
        save()
        print(f"{category} {setting}: validation {on_validation['objective']:.4f}  test image {test_image:.4f} "
              f"pixel {test_pixel:.4f}", flush=True)


def summary(rows: list[dict]) -> list[dict]:
    """Per (category, image size): rank agreement of the validation objective with the test, and the regret."""
    out = []
    for (category, size), group in itertools.groupby(sorted(rows, key=lambda r: (r["category"], r["image_size"])),
                                                     key=lambda r: (r["category"], r["image_size"])):
        group = list(group)
        objective = [r["validation_objective"] for r in group]
        test = [r["test_image_auroc"] for r in group]
        both = [(r["test_image_auroc"] + r["test_pixel_auroc"]) / 2 for r in group]
        picked = max(group, key=lambda r: r["validation_objective"])
        rho = stats.spearmanr(objective, test).statistic if len(group) > 2 else math.nan
        rho_both = stats.spearmanr(objective, both).statistic if len(group) > 2 else math.nan
        rho_image = stats.spearmanr([r["validation_image_auroc"] for r in group], test).statistic \
            if len(group) > 2 else math.nan
        out.append({"category": category, "image_size": size, "settings": len(group), "spearman_objective_test": rho,
                    "spearman_validation_image_test_image": rho_image, "spearman_objective_test_both": rho_both,
                    "picked_test_image_auroc": picked["test_image_auroc"], "best_test_image_auroc": max(test),
                    "median_test_image_auroc": float(sorted(test)[len(test) // 2]),
                    "worst_test_image_auroc": min(test), "regret": max(test) - picked["test_image_auroc"],
                    "picked": f"layers {picked['layers']}, n_features {picked['n_features']}, "
                              f"blur {picked['blur_sigma']}"})
    return out


def report(results: Results) -> str:
    rows = summary(results.rows)
    return markdown(
        "Does tune's normal-only validation rank settings like the test split?",
        f"Machine: {describe(results.machine) if isinstance(results.machine, dict) and results.machine else results.machine}.",
        "Runs: " + "; ".join(describe_run(r) for r in results.runs) if results.runs else None,
        "PaDiM, a grid of " + " × ".join(f"{k} {v}" for k, v in GRID.items()) + " settings per category; each fitted "
        "once on the 80 % of the training normals the tune fits on, scored on the tune's validation set (held-out "
        "normals + the same with pasted synthetic defects; objective = mean of image and pixel AUROC) and on the "
        "test split. ρ: Spearman rank correlation over the settings; regret: best test image AUROC of the grid "
        "minus that of the setting with the best validation objective.",
        table(rows, [("category", "category"), ("px", "image_size", None), ("settings", "settings", None),
                     ("ρ objective vs test image AUROC", "spearman_objective_test", 2),
                     ("ρ validation image vs test image AUROC", "spearman_validation_image_test_image", 2),
                     ("ρ objective vs test (image + pixel)/2", "spearman_objective_test_both", 2),
                     ("test image AUROC: picked", "picked_test_image_auroc"),
                     ("best", "best_test_image_auroc"), ("median", "median_test_image_auroc"),
                     ("worst", "worst_test_image_auroc"), ("regret", "regret"), ("picked setting", "picked")]),
        "Every setting:",
        table(results.rows, [("category", "category"), ("layers", "layers"), ("n_features", "n_features"),
                             ("blur", "blur_sigma"), ("validation objective", "validation_objective"),
                             ("validation image AUROC", "validation_image_auroc"),
                             ("validation pixel AUROC", "validation_pixel_auroc"),
                             ("test image AUROC", "test_image_auroc"), ("test pixel AUROC", "test_pixel_auroc")]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["brick", "coffee"])
    parser.add_argument("--image-size", type=int, default=128)
    output_options(parser, RESULTS)
    args = parser.parse_args()
    json_path, md_path = args.output / "results.json", args.output / "results.md"
    if args.report_only:
        rebuild_report(json_path, md_path, SUITE, report)
        return
    results = Results.load(json_path, SUITE)
    results.machine = machine()
    results.settings = {"detector": "padim", "grid": GRID, "holdout": 0.2, "seed": 0}
    run = Run()

    def save() -> None:
        results.save(json_path)

    for category in args.categories:
        measure(category, args.image_size, results, save)
    results.runs.append(run.record(categories=args.categories, image_size=args.image_size))
    results.write(args.output / "results", report(results))
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
