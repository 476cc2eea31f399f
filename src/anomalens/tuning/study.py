"""``anomalens tune``'s study (``anomalens.tuning``'s docstring: the whole search): the job checked and
recorded in the tune folder, the validation set written once, Optuna's seeded TPE sampler over the search
space with one trial at a time, each trial and the best logged to the tracker, and a stopped tune resumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from anomalens.errors import ConfigError, DataError
from anomalens.tracking import NullTracker, Tracker, provenance_tags
from anomalens.tuning.results import BEST_FILE, TRIALS_FILE, write_results
from anomalens.tuning.space import Dimension, default_space, search_space
from anomalens.tuning.trial import TrialFailed, run_trial
from anomalens.tuning.validation import build_validation, check_apart, validation_records, validation_size

logger = logging.getLogger("anomalens")

TUNE_FILE = "tune.json"
STUDY_FILE = "study.db"
VALIDATION_DIR = "validation"
TUNE_OUTPUTS = (TUNE_FILE, BEST_FILE, TRIALS_FILE, STUDY_FILE, VALIDATION_DIR)
STUDY_NAME = "anomalens-tune"


def tune(
    detector: str,
    data: Any,
    out_dir: str | Path,
    trials: int,
    timeout: float | None = None,
    seed: int = 0,
    fixed: Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    validation: Any = None,
    holdout: float = 0.2,
    overwrite: bool = False,
    tracker: Tracker | None = None,
    isolate: bool = True,
) -> dict[str, Any]:
    """Search ``detector``'s hyper-parameters on ``data`` and write ``out_dir`` (``anomalens.tuning``).

    ``fixed``: parameters every trial uses (``-p``); the detector's ``seed`` is ``seed`` unless fixed.
    ``space``: the search space (default :func:`default_space`). ``validation``: a labelled dataset to score
    on instead of pasted defects. ``tracker``: each trial is logged as a run, and the best as one more.
    ``isolate``: each trial in its own process. Returns the best trial {number, objective, params, ...}.
    """
    from anomalens.data.mvtec import masks_unread
    from anomalens.outputs import staged_directory
    from anomalens.outputs.folders import locked_target
    from anomalens.outputs.marker import write_marker
    from anomalens.workflow.common import as_dataset

    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"tune: --trials must be a whole number >= 1, got {trials!r}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"tune: --timeout must be a number of seconds > 0, got {timeout!r}")
    if not 0 < holdout < 1:
        raise ConfigError(f"tune: the validation hold-out must be in (0, 1), got {holdout!r}")
    fixed = {"seed": seed, **(fixed or {})}
    dimensions = search_space(detector, default_space(detector) if space is None else space, fixed)
    from anomalens.catalog import detector_class

    detector_class(detector)(**fixed)  # the fixed parameters refused now, not in every trial
    out_dir = Path(out_dir)
    tracker = tracker or NullTracker()
    with masks_unread():  # of DATA only training (and validation) images are ever read
        dataset = as_dataset(data)
    labelled = as_dataset(validation) if validation is not None else None  # its masks are read: pixel AUROC
    if not dataset.train:
        raise DataError(f"{dataset.name}: no training images")
    if labelled is not None:
        check_apart(labelled, dataset)
    job = {"detector": detector, "data": str(data) if not hasattr(data, "train") else dataset.name,
           "fixed": {k: list(v) if isinstance(v, tuple) else v for k, v in fixed.items()},
           "space": {d.name: d.describe() for d in dimensions}, "holdout": holdout,
           "validation": str(validation) if validation is not None else None}
    resumed = _existing_job(out_dir, job, overwrite)
    inputs = [x for x in (data, validation) if x is not None]
    if not resumed:
        with staged_directory(out_dir, overwrite=overwrite, kind="output", inputs=inputs) as stage:
            folder = stage / VALIDATION_DIR if labelled is None else None
            train, described = build_validation(dataset, folder, validation_size(detector, fixed, dimensions),
                                                holdout, seed, labelled)
            from anomalens.outputs import write_json

            write_json(stage / TUNE_FILE, {**job, "validation_set": described,
                                           "train_images": [r.name for r in train]})
    with locked_target(out_dir, inputs) as out_dir:
        recorded = json.loads((out_dir / TUNE_FILE).read_text(encoding="utf-8"))
        kept = set(recorded["train_images"])
        train = [r for r in dataset.train if r.name in kept]
        records = validation_records(out_dir / VALIDATION_DIR if labelled is None else None, labelled)
        try:
            best = _optimize(detector, dimensions, fixed, train, records, out_dir, trials, timeout, seed, tracker,
                             isolate, recorded["validation_set"])
        finally:
            write_marker(out_dir, "output", [n for n in TUNE_OUTPUTS if (out_dir / n).exists()])
    return best


def _existing_job(out_dir: Path, job: dict, overwrite: bool) -> bool:
    """True when ``out_dir`` holds a tune of the same job (resume it); refuses one of another job."""
    tune_file = out_dir / TUNE_FILE
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    if not tune_file.is_file():
        if overwrite:
            raise ConfigError(f"{out_dir}: is not a tune folder (no {TUNE_FILE}); --overwrite replaces only a tune "
                              "folder: choose another folder")
        return False  # the output protocol refuses it, in its words
    if overwrite:
        return False
    recorded = json.loads(tune_file.read_text(encoding="utf-8"))
    differs = [k for k in job if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(job[k], sort_keys=True)]
    if differs:
        raise ConfigError(f"{out_dir}: holds a tune of another job ({', '.join(differs)} differ); continue it with the "
                          "same detector, data, fixed parameters and space, or choose another folder or --overwrite")
    return True


def _optimize(detector: str, dimensions: list[Dimension], fixed: dict, train: list, records: list, out_dir: Path,
              trials: int, timeout: float | None, seed: int, tracker: Tracker, isolate: bool,
              described: str) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{(out_dir / STUDY_FILE).resolve()}",
                                sampler=sampler, direction="maximize", load_if_exists=True)
    done = sum(t.state.is_finished() for t in study.trials)  # a trial a killed tune left running is not done
    logger.info("tune %s: %d of %d trials done; validation: %s", detector, done, trials, described)

    def objective(trial: Any) -> float:
        params = {**fixed, **{d.name: d.suggest(trial) for d in dimensions}}
        tags = provenance_tags(None, detector=detector, tune_folder=out_dir.resolve(), trial=trial.number, stage="tune")
        with tracker.run(f"tune {detector} trial {trial.number}", tags):
            tracker.log_params({**params, "detector": detector})
            try:
                result = run_trial(detector, params, train, records, isolate)
            except TrialFailed as exc:
                trial.set_user_attr("error", str(exc))
                tracker.set_tags({"anomalens.error": str(exc)})
                logger.warning("tune %s: trial %d failed: %s", detector, trial.number, exc)
                raise
            for key, value in result.items():
                trial.set_user_attr(key, value)
            tracker.log_metrics({f"validation_{k}" if "auroc" in k or k == "objective" else k: v
                                 for k, v in result.items()})
        logger.info("tune %s: trial %d: objective %.4f (image AUROC %.4f, pixel AUROC %.4f) %s", detector, trial.number,
                    result["objective"], result["image_auroc"], result["pixel_auroc"], _shown(trial.params))
        return result["objective"]

    remaining = trials - done
    if remaining > 0:
        # trials.csv and best.yaml rewritten after every trial: a stopped tune leaves them up to date
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(TrialFailed,), callbacks=[
            lambda study, trial: write_results(study, out_dir, detector, fixed, dimensions, described)])
    best = write_results(study, out_dir, detector, fixed, dimensions, described)
    if best is None:
        raise ConfigError(f"tune {detector}: no trial succeeded (see {out_dir / TRIALS_FILE} for why)")
    with tracker.run(f"tune {detector} best", provenance_tags(None, detector=detector, tune_folder=out_dir.resolve(),
                                                              stage="tune-best")):
        tracker.log_params(best["params"])
        tracker.log_metrics({"validation_objective": best["objective"], "trials": best["trials"]})
        tracker.log_artifact(out_dir / BEST_FILE)
        tracker.log_artifact(out_dir / TRIALS_FILE)
    return best


def _shown(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())
