"""``fit``: learn a detector from DATA's normal training images into a new run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from anomalens.catalog import create_detector
from anomalens.data import AnomalyDataset, ImageRecord
from anomalens.data.mvtec import masks_unread
from anomalens.detector import Detector
from anomalens.engines import FitEngine, LocalFit
from anomalens.errors import DataError
from anomalens.outputs import write_json
from anomalens.outputs.folders import staged_directory
from anomalens.outputs.names import RUN_INFO_FILE
from anomalens.progress import stage as logged_stage
from anomalens.provenance import environment, file_list_sha256
from anomalens.workflow.common import as_dataset, image_key, peak_rss_mb


def fit_run(
    model: str,
    data: str | Path | AnomalyDataset,
    run_dir: str | Path,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    engine: FitEngine | None = None,
) -> Detector | None:
    """Fit ``model`` on the normal training images of ``data`` and save it to ``run_dir``.

    The run folder is checked (and locked) before the data is read; ``overwrite`` replaces only an
    existing anomalens run, never ``data`` itself (``anomalens.outputs.folders``). ``engine``: how the
    detector is fitted (``anomalens.engines``): ``LocalFit`` (None: this process), ``RayShards``,
    ``DataParallel``; it refuses what it cannot fit before anything is read, and what it says about itself
    is added to ``run.json``. Returns the fitted detector — or None in a process of a data-parallel job
    that does not write the run (torchrun ranks other than 0).
    """
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
            start = time.perf_counter()
            with logged_stage(f"fit {model} on {len(dataset.train)} training images", enabled=progress):
                engine_info = engine.fit(detector, dataset.train, progress)
            seconds = time.perf_counter() - start
            detector.save(stage)
            keys = {id(r): image_key(r) for r in dataset.train}  # each training file read once more, for both uses
            write_json(stage / RUN_INFO_FILE, {
                "detector": model,
                "data": str(data) if not isinstance(data, AnomalyDataset) else data.name,
                "n_train_images": len(dataset.train),
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
    return detector


def seen_by_final_model(detector: Detector, train: Sequence[ImageRecord], keys: dict[int, str]) -> list[str]:
    """The content keys (``keys``: by ``id`` of each training record) of the images the saved model saw."""
    unseen = {id(r) for r in detector.unseen_normals(train)}
    return [keys[id(r)] for r in train if id(r) not in unseen and keys[id(r)]]
