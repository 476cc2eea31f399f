"""``anomalens refit RUN --with-feedback -o NEW_RUN``: the operator's judgements taught to the model.

1. The feedback (every judged result of RUN's state folder whose image is kept) is split per class, seeded:
   ``holdout`` of the confirmed normals (false alarms) and of the defects (confirmed + missed) is held out —
   at least one of a class that has two or more — and never used below; the rest is the fit part.
2. The detector is fitted again, with RUN's own hyper-parameters, on RUN's training images (where run.json
   says they were, or ``data``; a clear error when they are gone) **plus** the fit part's confirmed normals.
   Its threshold comes, as for any fit, from out-of-fold scores of all those normals — the false alarms
   included, so the threshold now knows what they look like.
3. No recalibration by default. ``calibrate=True`` (Python only, kept for the benchmark's comparison) sets
   the threshold F1-optimally on the fit part's labelled images, ``anomalens calibrate``'s rule. The only
   labelled normals are the fed-back false alarms, and the refitted model has seen them, so their scores sit
   far below new normals'. Measured (benchmarks/results/feedback_loop/): the threshold fell below every
   held-out normal, a 100 % false-alarm rate. Honest normal scores (the false alarms cross-fitted) are what
   a recalibration would need.
4. RUN and NEW_RUN are scored on the held-out feedback: the false-alarm rate of its normals, the detection
   rate of its defects, image AUROC when it holds both. ``refit.json`` in NEW_RUN records the split, where
   every image came from and these figures. RUN is only read.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomalens.catalog import load_detector
from anomalens.data import AnomalyDataset, ImageRecord
from anomalens.data.sources import data_source
from anomalens.errors import AnomalensError, ConfigError, DataError
from anomalens.feedback import DEFAULT_HOLDOUT
from anomalens.feedback.export import judged_images
from anomalens.feedback.store import JUDGEMENTS, FeedbackStore, state_for
from anomalens.metrics import image_auroc
from anomalens.outputs import staged_update, write_json
from anomalens.outputs.names import CONFIG_FILE, RUN_INFO_FILE
from anomalens.provenance import file_list_sha256
from anomalens.workflow import calibrate_run, fit_run
from anomalens.workflow.common import as_dataset, image_key

log = logging.getLogger("anomalens")

REFIT_FILE = "refit.json"


def recorded_data(text: str) -> Any:
    """DATA as run.json records it (``str(DatasetSource)``: a path, or command-line text such as
    ``--normal DIR --abnormal DIR``) back into what ``fit_run`` reads."""
    if not text.startswith("--") and (" --" not in text or Path(text).exists()):
        return text
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("data", nargs="?")
    for option in ("--normal", "--layout", "--test-normal", "--masks"):
        parser.add_argument(option)
    parser.add_argument("--abnormal", nargs="+", default=())
    try:
        args = parser.parse_args(shlex.split(text))
    except (argparse.ArgumentError, ValueError):
        raise DataError(f"cannot read the training data recorded in run.json ({text!r}); pass --data DATA") from None
    return data_source(args.data, layout=args.layout, normal=args.normal, abnormal=args.abnormal,
                       test_normal=args.test_normal, masks=args.masks)


def split_feedback(items: Sequence[tuple[dict[str, Any], Path]], holdout: float, seed: int
                   ) -> tuple[list[tuple[dict[str, Any], Path]], list[tuple[dict[str, Any], Path]]]:
    """(fit part, held-out part): per class, a seeded ``holdout`` share held out (module docstring)."""
    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for label in (0, 1):
        group = sorted((entry for entry in items if JUDGEMENTS[entry[0]["judgement"]][1] == label),
                       key=lambda entry: entry[0]["id"])
        n_held = int(round(holdout * len(group)))
        if holdout > 0 and len(group) >= 2:
            n_held = min(max(n_held, 1), len(group) - 1)
        order = rng.permutation(len(group))
        held += [group[i] for i in order[:n_held]]
        fit += [group[i] for i in order[n_held:]]
    return sorted(fit, key=lambda e: e[0]["id"]), sorted(held, key=lambda e: e[0]["id"])


def as_records(items: Sequence[tuple[dict[str, Any], Path]]) -> list[ImageRecord]:
    return [ImageRecord(source=path, label=JUDGEMENTS[item["judgement"]][1], name=f"feedback/{path.name}",
                        defect_type="good" if JUDGEMENTS[item["judgement"]][1] == 0 else item["judgement"])
            for item, path in items]


def judged_by(detector: Any, records: Sequence[ImageRecord]) -> dict[str, Any]:
    """What ``detector`` says of labelled ``records``: false-alarm rate of the normals, detection rate of the
    defects, image AUROC (None without both classes), each image's score and verdict."""
    if not records:
        return {"n_normal": 0, "n_defect": 0, "false_alarm_rate": None, "detection_rate": None, "image_auroc": None,
                "scores": [], "flagged": []}
    result = detector.predict(list(records), progress=False)
    labels = np.array([r.label for r in records])
    flagged = np.asarray(result.labels).astype(bool)
    normal, defect = labels == 0, labels == 1
    return {
        "n_normal": int(normal.sum()), "n_defect": int(defect.sum()),
        "false_alarm_rate": float(flagged[normal].mean()) if normal.any() else None,
        "detection_rate": float(flagged[defect].mean()) if defect.any() else None,
        "image_auroc": float(image_auroc(labels, result.scores)) if normal.any() and defect.any() else None,
        "threshold": float(detector.threshold_),
        "scores": [float(s) for s in result.scores], "flagged": [bool(f) for f in flagged],
    }


def training_data(run: Path, data: Any) -> tuple[Any, AnomalyDataset]:
    """(DATA, the dataset) RUN was fitted on — ``data`` when given — or DataError when it is gone."""
    info = json.loads((run / RUN_INFO_FILE).read_text())
    earlier = run / REFIT_FILE  # a refitted run: its data is the original run's (the feedback comes from the state)
    recorded = json.loads(earlier.read_text())["data"] if earlier.is_file() else info.get("data")
    if data is None:
        if not isinstance(recorded, str) or not recorded:
            raise DataError(f"{run}: run.json does not say where its training data was; pass --data DATA")
        data = recorded_data(recorded)
    try:
        dataset = as_dataset(data)
    except AnomalensError as exc:
        raise DataError(f"{run}: its training data ({data}) cannot be read ({exc}); the refit needs the run's own "
                        "normal images: pass --data DATA where they are now") from None
    expected = (info.get("provenance") or {}).get("training_images_sha256")
    found = file_list_sha256([r.name for r in dataset.train], [image_key(r) for r in dataset.train])
    if expected and not earlier.is_file() and found != expected:
        log.warning("%s: the training images at %s are not the ones the run was fitted on (their list's hash "
                    "differs): the refit learns from these", run, data)
    return data, dataset


def refit_run(run: str | Path, new_run: str | Path, *, state: str | Path | None = None, data: Any = None,
              holdout: float = DEFAULT_HOLDOUT, seed: int = 0, calibrate: bool = False, device: str | None = None,
              overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Refit RUN with its operator feedback into NEW_RUN (module docstring); the report (also in refit.json)."""
    run, new_run = Path(run), Path(new_run)
    if not (run / CONFIG_FILE).is_file():
        raise DataError(f"{run}: not a run folder (no {CONFIG_FILE}); refit takes the run 'anomalens fit' wrote")
    if new_run.resolve() == run.resolve() or run.resolve() in new_run.resolve().parents:
        raise ConfigError(f"{new_run}: refit never changes {run}; choose a new folder for the refitted run")
    state_dir = state_for(run, state)
    store = FeedbackStore(state_dir, create=False)
    try:
        items, lost = judged_images(store)
    finally:
        store.close()
    fit_part, held_part = split_feedback(items, holdout, seed)
    fit_normals = [r for r in as_records(fit_part) if r.label == 0]
    fit_defects = [r for r in as_records(fit_part) if r.label == 1]
    if not fit_normals and not (calibrate and fit_defects):
        raise DataError(f"{state_dir}: no confirmed normal (false alarm) to learn from in the fit part of the feedback "
                        f"({len(items)} judged image(s), {len(held_part)} held out, {lost} lost to the retention)")
    config = json.loads((run / CONFIG_FILE).read_text())
    params = dict(config["params"])
    if device is not None:
        params["device"] = device
    data, dataset = training_data(run, data)
    held = as_records(held_part)
    before = judged_by(load_detector(run, device=device), held)

    augmented = AnomalyDataset(name=f"{dataset.name}+feedback", train=list(dataset.train) + fit_normals)
    detector = fit_run(config["detector"], augmented, new_run, params, overwrite=overwrite, progress=progress)
    calibration = None
    if calibrate and fit_defects:
        labelled = AnomalyDataset(name="feedback", train=[], test=fit_normals + fit_defects)
        calibration = calibrate_run(new_run, labelled, method="f1", device=device, progress=progress)
        detector = load_detector(new_run, device=device)
    after = judged_by(detector, held)

    report = {
        "run": str(run), "data": str(data), "state": str(state_dir), "detector": config["detector"],
        "feedback": {"judged_with_image": len(items), "lost_to_retention": lost,
                     "split": f"seeded (seed {seed}) per class: {holdout:.3g} of the confirmed normals and of the "
                              "defects held out (at least one of a class with two or more)",
                     "fit_ids": [item["id"] for item, _ in fit_part], "held_out_ids": [item["id"] for item, _ in held_part],
                     "added_normals": len(fit_normals), "calibration_defects": len(fit_defects) if calibration else 0},
        "n_train_images": len(dataset.train) + len(fit_normals),
        "calibration": calibration and {k: v for k, v in calibration.items() if k != "image_keys"},
        "held_out": {"before": before, "after": after},
    }
    with staged_update(new_run, kind="run") as stage:
        write_json(stage / REFIT_FILE, report)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The before / after table ``anomalens refit`` prints."""
    before, after = report["held_out"]["before"], report["held_out"]["after"]

    def show(value: float | None, percent: bool = True) -> str:
        if value is None:
            return "–"
        return f"{100 * value:.0f} %" if percent else f"{value:.3f}"

    feedback = report["feedback"]
    lines = [f"refitted {report['detector']} on {report['n_train_images']} normal images ({feedback['added_normals']} "
             f"confirmed normals from the feedback added); held out: {before['n_normal']} normal + {before['n_defect']} "
             f"defective judged image(s) ({feedback['split']})",
             f"{'held-out feedback':<28}{'before':>10}{'after':>10}"]
    for name, key, percent in (("false-alarm rate (normals)", "false_alarm_rate", True),
                               ("detection rate (defects)", "detection_rate", True),
                               ("image AUROC", "image_auroc", False)):
        lines.append(f"{name:<28}{show(before[key], percent):>10}{show(after[key], percent):>10}")
    lines.append(f"{'threshold':<28}{before.get('threshold', float('nan')):>10.4g}{after.get('threshold', float('nan')):>10.4g}")
    return lines
