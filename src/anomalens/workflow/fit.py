"""``fit``: learn a detector from DATA's normal training images into a new run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from anomalens.catalog import create_detector
from anomalens.data import AnomalyDataset, ImageRecord
from anomalens.data.mvtec import masks_unread
from anomalens.data.unified import categories_of
from anomalens.detector import Detector
from anomalens.engines import FitEngine, LocalFit
from anomalens.errors import ConfigError, DataError
from anomalens.outputs import write_json
from anomalens.outputs.folders import staged_directory
from anomalens.outputs.names import CONFIG_FILE, RUN_INFO_FILE
from anomalens.progress import stage as logged_stage
from anomalens.provenance import environment, file_list_sha256
from anomalens.tracking import Tracker, provenance_tags
from anomalens.workflow.common import as_dataset, image_key, peak_rss_mb

logger = logging.getLogger("anomalens")


def fit_run(
    model: str | Detector,
    data: str | Path | AnomalyDataset,
    run_dir: str | Path,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    engine: FitEngine | None = None,
    tracker: Tracker | None = None,
) -> Detector | None:
    """Fit ``model`` (a registered name configured by ``params``, or a configured :class:`Detector`) on the
    normal training images of ``data`` and save it to ``run_dir``.

    The run folder is checked (and locked) before the data is read; ``overwrite`` replaces only an
    existing anomalens run, never ``data`` itself (``anomalens.outputs.folders``). ``engine``: how the
    detector is fitted (``anomalens.engines``): ``LocalFit`` (None: this process), ``RayShards``,
    ``DataParallel``; it refuses what it cannot fit before anything is read, and what it says about itself
    is added to ``run.json``. ``tracker`` (``anomalens.tracking``): logs the run once it is written
    (parameters, fit figures, per-epoch training curves, run.json). Returns the fitted detector — or None in a process of a data-parallel job
    that does not write the run (torchrun ranks other than 0).
    """
    if isinstance(model, Detector):  # a configured detector: fitted as it is (its own parameters)
        if params:
            raise ConfigError(f"fit_run: {model.name} is already configured; give params to create_detector instead")
        detector, model = model, model.name
    else:
        detector = create_detector(model, **(params or {}))
    engine = engine or LocalFit()
    engine.check(detector)
    run_dir = Path(run_dir)
    with engine.session(detector, run_dir, overwrite) as writes_run:
        if not writes_run:  # another process of the job writes the run; this one trains along
            with masks_unread():
                dataset = as_dataset(data)
            engine.fit(detector, dataset.train, progress=False)
            return None
        with staged_directory(run_dir, overwrite=overwrite, kind="run", inputs=[data]) as stage:
            with masks_unread():  # the test split's masks are test's business
                dataset = as_dataset(data)
            if not dataset.train:
                raise DataError(f"{getattr(data, 'name', data)}: no training images")
            defects = labelled_defects(detector, data, dataset, engine)
            start = time.perf_counter()
            with logged_stage(f"fit {model} on {len(dataset.train)} training images"
                              + (f" and {len(defects)} labelled defects" if defects else ""), enabled=progress):
                if defects:  # the supervised setting (accepts_abnormal): checked to run in this process
                    detector.fit(dataset.train, progress, abnormal=defects)
                    engine_info = {"n_labelled_defects": len(defects),
                                   "n_labelled_defect_masks": sum(r.mask is not None for r in defects)}
                else:
                    engine_info = engine.fit(detector, dataset.train, progress)
            seconds = time.perf_counter() - start
            detector.save(stage)
            keys = {id(r): image_key(r) for r in dataset.train}  # each training file read once more, for both uses
            write_json(stage / RUN_INFO_FILE, {
                "detector": model,
                "data": str(data) if not isinstance(data, AnomalyDataset) else data.name,
                "n_train_images": len(dataset.train),
                # a unified run (one model for many products): its categories, so that test reads a root the same way
                **({"categories": categories_of(dataset.train)} if categories_of(dataset.train) else {}),
                "fit_seconds": round(seconds, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "threshold": detector.threshold_,
                "threshold_source": detector.decision_.description,
                # Which images the saved model has seen (all but an unseen hold-out): calibrate refuses to set a
                # threshold from them.
                "seen_images": sorted(seen_by_final_model(detector, dataset.train, keys)),
                "provenance": {**environment(detector.device),
                               "training_images_sha256": file_list_sha256([r.name for r in dataset.train],
                                                                          [keys[id(r)] for r in dataset.train])},
                **engine_info,
            })
    if tracker is not None:
        track_fit(tracker, detector, data, run_dir)
    return detector


def labelled_defects(detector: Detector, data: Any, dataset: AnomalyDataset, engine: FitEngine) -> list[ImageRecord]:
    """The defective images ``fit`` learns from: those of ``--abnormal`` (with their ``--masks``), for a detector
    that ``accepts_abnormal`` (the others learn from normal images only, and the labelled-folder layout's defects
    stay the test split's); [] otherwise. A benchmark layout's own test defects are never trained on. Refused for a
    detector that learns from normal images only: it would ignore them, and the user would believe it had learnt
    the defects. ``--test-normal`` is test's and calibrate's: fit says in one line that it does not read it."""
    if getattr(data, "test_normal_dir", None) is not None:
        logger.warning("fit learns from the normal training images only: --test-normal %s is read by test and "
                       "calibrate, not by fit", data.test_normal_dir)
    if not getattr(data, "abnormal_dirs", ()):
        return []
    if not detector.accepts_abnormal:
        raise ConfigError(f"{detector.name} learns from normal images only, so fit does not take --abnormal (labelled "
                          "defects are learnt by detectors with a supervised setting, e.g. supersimplenet); give those "
                          "folders to test or calibrate")
    if not isinstance(engine, LocalFit):
        raise ConfigError(f"{detector.name}: labelled defects (--abnormal) are learnt in one process; use --engine local")
    return [r for r in dataset.test if r.label == 1]


def track_fit(tracker: Tracker, detector: Detector, data: Any, run_dir: Path) -> None:
    """Log a written run: its full parameters, the fit's figures, the per-epoch curves of a detector that
    trains (``epoch/<loss>`` at step = epoch), run.json and detector.json, and where it came from."""
    import json

    info = json.loads((run_dir / RUN_INFO_FILE).read_text(encoding="utf-8"))
    tags = provenance_tags(data, detector=detector.name, run_folder=run_dir.resolve(), stage="fit")
    with tracker.run(f"fit {detector.name} {info['data']}", tags):
        tracker.log_params(tracked_params(detector, info["data"]))
        tracker.log_metrics({k: info.get(k) for k in ("fit_seconds", "peak_rss_mb", "threshold", "n_train_images")})
        tracker.log_history(detector.history_, prefix="epoch/")
        if getattr(detector, "kept_epoch_", None) is not None and detector.history_:
            tracker.log_metrics({"kept_epoch": detector.kept_epoch_})
        for name in (RUN_INFO_FILE, CONFIG_FILE):
            tracker.log_artifact(run_dir / name)


def tracked_params(detector: Detector, data: str) -> dict[str, Any]:
    """What a tracked fit or test records as parameters: every hyper-parameter, the data, the input size."""
    return {**detector.params, "detector": detector.name, "data": data, "input_size": list(detector.input_size)}


def seen_by_final_model(detector: Detector, train: Sequence[ImageRecord], keys: dict[int, str]) -> list[str]:
    """The content keys (``keys``: by ``id`` of each training record) of the images the saved model saw."""
    unseen = {id(r) for r in detector.unseen_normals(train)}
    return [keys[id(r)] for r in train if id(r) not in unseen and keys[id(r)]]
