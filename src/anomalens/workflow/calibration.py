"""``calibrate``: re-set a run's decision rule on labelled data (the seed's finetune step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from anomalens.catalog import load_detector
from anomalens.data import AnomalyDataset, ImageRecord
from anomalens.errors import DataError
from anomalens.outputs import write_json
from anomalens.outputs.folders import clean_inside
from anomalens.outputs.marker import owned_names, read_marker, write_marker
from anomalens.outputs.targets import check_target, folder_lock
from anomalens.outputs.names import CALIBRATION_FILE, RUN_INFO_FILE
from anomalens.progress import stage as logged_stage
from anomalens.workflow.common import as_test_dataset, image_key, run_categories


def calibrate_run(
    run_dir: str | Path,
    data: str | Path | AnomalyDataset,
    method: str = "f1",
    clear_border: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-set the run's decision rule on labelled data (the test split of ``data``, else its normals).

    method "f1": F1-optimal threshold (normal-score quantile when there are no defects);
    method "area": the seed's minimum-area + threshold search, with the held-out share of ``data``'s
    training normals as validation normals.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        load_detector(run_dir, device=device)  # its message for a missing run
    with folder_lock(check_target(run_dir)):  # no fit --overwrite or test of this run meanwhile
        clean_inside(run_dir)
        detector = load_detector(run_dir, device=device)
        dataset = as_test_dataset(data, run_categories(run_dir))
        records = dataset.test or unseen_by_run(run_dir, dataset.train)
        # Only normals the saved model never saw (for PaDiM / PatchCore none: the test split's normals serve).
        normals = detector.unseen_normals(dataset.train) if dataset.train and dataset.test else ()
        with logged_stage(f"calibrate ({method}) on {len(records)} images", enabled=progress):
            info = detector.calibrate(records, method=method, normal_records=normals, clear_border=clear_border,
                                      progress=progress)
        info.update({"method": method, "n_images": len(records), "n_anomalous": int(sum(r.label for r in records)),
                     # which images set the threshold, by content: test warns when it scores them again
                     "image_keys": sorted(k for k in (image_key(r) for r in records) if k)})
        try:
            detector.save_decision(run_dir)
            write_json(run_dir / CALIBRATION_FILE, info)
            if read_marker(run_dir) is not None:
                write_marker(run_dir, read_marker(run_dir)["kind"], owned_names(run_dir) | {CALIBRATION_FILE})
        finally:
            clean_inside(run_dir)  # a temporary file a failed write left (full disk)
    return info


def calibration_images_in(run_dir: Path, records: Sequence[ImageRecord]) -> int:
    """How many of ``records`` (by content) set the run's calibrated threshold; 0 without a calibration."""
    try:
        keys = set(json.loads((run_dir / CALIBRATION_FILE).read_text()).get("image_keys") or ())
    except (OSError, ValueError, AttributeError):
        return 0
    return sum(image_key(r) in keys for r in records) if keys else 0


def unseen_by_run(run_dir: Path, normals: list[ImageRecord]) -> list[ImageRecord]:
    """``normals`` less the images the run's model was fitted on (listed in run.json).

    A threshold set from images the model has seen is far too low — it flagged every new normal image
    (issue 15: PaDiM's threshold fell from 338 to 4.25) — so those are left out, and when nothing is
    left the calibration is refused with the reason.
    """
    try:
        seen = set(json.loads((run_dir / RUN_INFO_FILE).read_text()).get("seen_images") or ())
    except (OSError, ValueError):
        seen = set()
    keys = [image_key(r) for r in normals] if seen else []
    kept = [r for r, key in zip(normals, keys) if not key or key not in seen] if seen else list(normals)
    if normals and not kept:
        raise DataError(
            f"{run_dir}: every calibration image is a training image of this run (the model has seen them, so a "
            "threshold set from them would flag new normal images); calibrate on labelled test data "
            "(test/good + test/<defect>) or on new normal images"
        )
    return kept
