"""``anomalens demo``: the main job end to end on built-in data.

Builds MVTec-AD-layout categories with synthetic defects from real photos bundled in scikit-image,
fits a detector on each, tests it and writes one report per category plus an index page.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any, Sequence

from anomalens.cores import available_cores
from anomalens.version import __version__
from anomalens.outputs import staged_directory
from anomalens.workflow import fit_run, test_run

DEMO_SOURCES = ("brick", "coffee")


def run_demo(
    output: str | Path = "anomalens-demo",
    model: str = "padim",
    sources: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    image_size: int = 256,
    params: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Generate data, fit, test; returns {category: metrics}. Everything lands in ``output``."""
    from anomalens.data import make_synthetic_category

    sources = list(sources or DEMO_SOURCES)
    output = Path(output)
    results: dict[str, dict[str, Any]] = {}
    with staged_directory(output, overwrite=overwrite, kind="demo") as stage:
        for source in sources:
            print(f"[{source}] generating a synthetic category ({n_train} normal training images)...", flush=True)
            data = make_synthetic_category(stage / "data", source=source, n_train=n_train, n_test_good=n_test_good,
                                           n_test_defect=n_test_defect, image_size=image_size, seed=0)
            run = stage / "runs" / source
            print(f"[{source}] fitting {model}...", flush=True)
            fit_run(model, data, run, params=params, progress=progress)
            metrics = test_run(run, data, progress=progress)
            results[source] = metrics
            shown = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "tpr", "tnr") if k in metrics}
            print(f"[{source}] " + "  ".join(f"{k}={v:.3f}" for k, v in shown.items()), flush=True)
        _write_index(stage, model, results)
    print(f"demo report: {output / 'index.html'}")
    return results


# The index table: (metrics key, column heading, what it means); absent keys print as "—".
INDEX_COLUMNS = (
    ("image_auroc", "Image AUROC", "how well image scores rank defective above normal (1 = perfect, 0.5 = chance)"),
    ("pixel_auroc", "Pixel AUROC", "the same over pixels: defect pixels above normal ones"),
    ("aupro", "AUPRO", "share of each defect region found, at up to 30 % normal pixels flagged (1 = perfect)"),
    ("threshold", "Threshold", "an image is flagged when its score is above this"),
    ("tpr", "Defects flagged", "true positive rate at the threshold"),
    ("tnr", "Normal passed", "true negative rate at the threshold"),
    ("images_per_second", "Images / s", "test images scored per second on this machine"),
)


def machine_facts(device: str | None = None) -> dict[str, str]:
    """What the demo ran on, for the index page: CPU model, cores, torch version, device, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model in /proc/cpuinfo; platform.processor() often says only "x86_64"
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = available_cores()
    cores = f"{usable} usable" + (f" of {os.cpu_count()}" if os.cpu_count() and os.cpu_count() != usable else "")
    device_text = device or "cpu"
    if device_text.startswith("cuda") and torch.cuda.is_available():
        device_text += f" ({torch.cuda.get_device_name(torch.device(device_text))})"
    return {
        "CPU": cpu,
        "Cores": cores,
        "Device": device_text,
        "torch": torch.__version__,
        "Python": platform.python_version(),
        "anomalens": __version__,
        "Date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _write_index(stage: Path, model: str, results: dict[str, dict[str, Any]]) -> None:
    """index.html: one row per category with its heatmap thumbnail (the report's preview picture), its
    metrics under readable headings, and the machine it ran on."""
    from anomalens.report import render_page
    from anomalens.report.templating import write_text_atomic

    rows = []
    for name, metrics in results.items():
        preview = Path("runs") / name / "cases" / "preview.png"
        rows.append({
            "name": name,
            "report": f"runs/{name}/report.html",
            "picture": preview.as_posix() if (stage / preview).is_file() else None,
            "cells": [metrics.get(key) for key, _, _ in INDEX_COLUMNS],
        })
    devices = [str(m["device"]) for m in results.values() if m.get("device")]
    page = render_page(
        "demo_index.html", title=f"anomalens demo · {model}", model=model,
        columns=[{"label": label, "help": help_text} for _, label, help_text in INDEX_COLUMNS],
        rows=rows, machine=machine_facts(devices[0] if devices else None),
    )
    write_text_atomic(stage / "index.html", page)
