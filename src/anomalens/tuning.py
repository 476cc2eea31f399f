"""Hyper-parameter search (``anomalens tune``): Optuna's TPE over a detector's declared parameters, each
setting scored on a validation set that never holds a test image.

**Search space.** A mapping of parameter → range, checked against the detector's declaration
(``anomalens.params``): ``{low, high}`` (an int parameter gives integers; ``log: true`` samples the
logarithm, ``step`` a grid) or ``{choices: [...]}`` / a plain list (any values the parameter accepts).
``DEFAULT_SPACES`` holds the ranges that matter for each detector; a detector without one gets the
epochs and learning rate it declares (a quarter to twice the default epochs, a tenth to ten times the
default rate). ``--space FILE`` replaces the default space.

**Validation** (what a trial is scored on; the test split is never opened):

1. ``validation=DATA2``: labelled images of another dataset (its test split), which must share no file
   with DATA's test split.
2. Otherwise *pasted defects*: normal images no trial trains on — the layout's own ``validation/good``
   (MVTec AD 2, MVTec LOCO) when it ships one, else a seeded ``holdout`` share of the training normals —
   each used twice, once as it is (normal) and once with one synthetic defect of
   ``anomalens.data.synthetic`` drawn on it (scratch, stain, hole, patch in turn; anomalous, with its
   mask). They are written once to ``TUNE_DIR/validation/`` at the detector's input size.

The objective is the validation image AUROC; for a detector that localises it is the mean of image
and pixel AUROC (on an easy category the image AUROC of many settings is 1, and the pixel AUROC still
orders them). How that ranking agrees with the test AUROC on a synthetic category is measured in
``benchmarks/tune_validation.py``.

**Trials** run one at a time, each in a fresh Python process (its memory is returned when it ends, and
nothing of the caller's script is run again in it; a trial that fails or dies is recorded as failed and the
search goes on). **Results** in ``TUNE_DIR``: ``best.yaml``
(``anomalens fit --config TUNE_DIR/best.yaml`` reads it as is), ``trials.csv``, the Optuna study
``study.db`` (SQLite) and ``tune.json`` (the job). ``--trials N`` is the total: a stopped or finished tune
run again with the same job continues its study up to N trials.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from anomalens.errors import ConfigError, DataError
from anomalens.tracking import NullTracker, Tracker, provenance_tags

logger = logging.getLogger("anomalens")

TUNE_FILE = "tune.json"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
STUDY_FILE = "study.db"
VALIDATION_DIR = "validation"
TUNE_OUTPUTS = (TUNE_FILE, BEST_FILE, TRIALS_FILE, STUDY_FILE, VALIDATION_DIR)
STUDY_NAME = "anomalens-tune"

#: The ranges that matter, per detector (module docstring: the format).
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "padim": {"layers": {"choices": [[1, 2], [1, 2, 3], [2, 3]]}, "n_features": {"low": 16, "high": 64},
              "blur_sigma": {"low": 0.0, "high": 8.0}},
    "patchcore": {"coreset_fraction": {"low": 0.01, "high": 0.25, "log": True}, "num_neighbors": {"low": 1, "high": 9},
                  "layers": {"choices": [[1, 2], [2, 3]]}, "patch_size": {"choices": [1, 3, 5]}},
    "spade": {"top_k": {"low": 1, "high": 50, "log": True}, "layers": {"choices": [[1, 2], [1, 2, 3], [2, 3]]}},
    "mahalanobis": {"levels": {"choices": [None, [-1], [-2, -1], [-3, -2, -1]]}},
}


# -- the search space ----------------------------------------------------------------------------------------
class Dimension:
    """One searched parameter: a numeric range or a list of choices, each value accepted by its declaration."""

    def __init__(self, name: str, param: Any, spec: Any, owner: str) -> None:
        self.name = name
        where = f"search space of {owner}: {name}"
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected {{low: .., high: ..}}, {{choices: [..]}} or a list, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                              "(accepted: low, high, log, step, choices)")
        self.choices: list[Any] | None = None
        self.log, self.step = bool(spec.get("log", False)), spec.get("step")
        if "choices" in spec:
            if set(spec) - {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: choices must be a non-empty list, alone")
            # each choice checked (and converted: lists → tuples) by the declaration
            self.choices = [param.convert(owner, name, c) for c in spec["choices"]]
            return
        if param.kind not in ("int", "float") or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a {param.kind} parameter is searched over choices: {{choices: [..]}}"
                              if param.kind not in ("int", "float") else f"{where}: a range needs low and high")
        self.kind = param.kind
        self.low, self.high = (param.convert(owner, name, spec[k]) for k in ("low", "high"))
        if self.low >= self.high:
            raise ConfigError(f"{where}: low must be below high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ConfigError(f"{where}: give log or step, not both")

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            # Optuna stores choices that are numbers, texts or None; lists travel as their JSON text
            texts = [json.dumps(c) for c in self.choices]
            return self.choices[texts.index(trial.suggest_categorical(self.name, texts))]
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": [list(c) if isinstance(c, tuple) else c for c in self.choices]}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}


def default_space(detector: str) -> dict[str, Any]:
    """The search space of ``detector`` when no --space is given (module docstring)."""
    from anomalens.catalog import detector_class

    if detector in DEFAULT_SPACES:
        return DEFAULT_SPACES[detector]
    declared = detector_class(detector).declared_params()
    space: dict[str, Any] = {}
    epochs = declared.get("epochs")
    if epochs is not None and isinstance(epochs.default, int):
        space["epochs"] = {"low": max(1, epochs.default // 4), "high": max(2, epochs.default * 2)}
    lr = declared.get("lr")
    if lr is not None and isinstance(lr.default, float):
        space["lr"] = {"low": lr.default / 10, "high": lr.default * 10, "log": True}
    if not space:
        raise ConfigError(f"tune: {detector} has no default search space; give one with --space FILE "
                          f"(see 'anomalens params {detector}' for its parameters)")
    return space


def read_space(path: str | Path) -> dict[str, Any]:
    """A --space file: a YAML mapping of parameter → range (module docstring), optionally under ``space:``."""
    from anomalens.params import load_yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the search space ({getattr(exc, 'strerror', None) or exc})") from None
    space = load_yaml(text, path)
    if isinstance(space, Mapping) and set(space) == {"space"}:
        space = space["space"]
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{path}: expected a mapping of parameter → {{low, high}} or {{choices}}")
    return {str(k).replace("-", "_"): v for k, v in space.items()}


def search_space(detector: str, space: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[Dimension]:
    """The checked dimensions of ``space`` for ``detector`` (unknown, fixed-and-searched parameters refused)."""
    from anomalens.catalog import detector_class

    declared = detector_class(detector).declared_params()
    unknown = sorted(set(space) - set(declared))
    if unknown:
        raise ConfigError(f"search space of {detector}: unknown parameter(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(sorted(declared))}")
    both = sorted(set(space) & set(fixed))
    if both:
        raise ConfigError(f"tune: {', '.join(both)} is both fixed (-p) and searched (the space); give it once")
    return [Dimension(name, declared[name], spec, detector) for name, spec in space.items()]


# -- the validation set --------------------------------------------------------------------------------------
def validation_size(detector: str, fixed: Mapping[str, Any], dimensions: Sequence[Dimension]) -> tuple[int, int]:
    """(height, width) the validation images are written at: the detector's input size, the largest one when
    the size is searched."""
    from anomalens.catalog import detector_class

    sizes = [fixed["image_size"]] if "image_size" in fixed else []
    for dim in dimensions:
        if dim.name == "image_size":
            sizes = list(dim.choices) if dim.choices is not None else [dim.high]
    if not sizes:
        sizes = [detector_class(detector).declared_params()["image_size"].default]
    pairs = [(s, s) if isinstance(s, int) else tuple(s) for s in sizes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def build_validation(dataset: Any, folder: Path, size: tuple[int, int], holdout: float, seed: int,
                     labelled: Any = None) -> tuple[list, str]:
    """Write the validation images into ``folder`` (module docstring); returns (training records the trials
    fit on, what the validation is, in words). Only training or validation images are read."""
    import numpy as np
    from PIL import Image

    from anomalens.data import DEFECT_TYPES, add_defect
    from anomalens.data.io import load_image
    from anomalens.data.records import split_records
    from anomalens.outputs import write_bytes, write_json

    if labelled is not None:  # labelled images of their own: nothing to write
        return list(dataset.train), f"the labelled images of {labelled.name} ({len(labelled.test)})"
    if dataset.validation:
        train, normals = list(dataset.train), list(dataset.validation)
        origin = f"its {len(normals)} validation normals"
    else:
        train, normals = split_records(dataset.train, holdout, seed, stream=2)
        origin = f"{len(normals)} training normals held out ({holdout:.0%}; no trial fits on them)"
    if len(normals) < 2 or not train:
        raise DataError(f"{dataset.name}: too few training images to hold {holdout:.0%} out for validation "
                        f"({len(dataset.train)}); give more images or --validation DATA")
    if len(normals) < 8:
        logger.warning("tune: the validation set has only %d normal images: its AUROC moves in steps of "
                       "1/%d", len(normals), len(normals) ** 2)
    rng = np.random.default_rng((seed, 29))
    rows = []
    for folder_name in ("good", "defect", "masks"):
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(normals):
        image = load_image(record.source, channels=3)
        pixels = np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(size[::-1], Image.BILINEAR))
        image = pixels.astype(np.float32) / 255.0
        defect = DEFECT_TYPES[index % len(DEFECT_TYPES)]
        damaged, mask = add_defect(image, defect, rng, source="brick")
        stem = f"{index:03d}"
        for sub, picture in (("good", pixels), ("defect", np.round(damaged * 255).astype(np.uint8)),
                             ("masks", mask.astype(np.uint8) * 255)):
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
            write_bytes(folder / sub / f"{stem}.png", buffer.getvalue())
        rows.append({"image": stem, "from": record.name, "defect": defect, "defect_pixels": int(mask.sum())})
    write_json(folder / "validation.json", {"origin": origin, "images": rows})
    return train, f"{origin}, each also with a pasted synthetic defect ({2 * len(normals)} images)"


def validation_records(folder: Path | None, labelled: Any = None) -> list:
    """The records of the validation set (written by :func:`build_validation`, or given labelled)."""
    from anomalens.data import ImageRecord

    if labelled is not None:
        return list(labelled.test)
    stems = sorted(p.stem for p in (folder / "good").glob("*.png"))
    return ([ImageRecord(folder / "good" / f"{s}.png", 0, name=f"good/{s}") for s in stems]
            + [ImageRecord(folder / "defect" / f"{s}.png", 1, mask=folder / "masks" / f"{s}.png", name=f"defect/{s}",
                           defect_type="pasted") for s in stems])


# -- one trial -----------------------------------------------------------------------------------------------
def score_setting(detector: str, params: Mapping[str, Any], train: Sequence, validation: Sequence) -> dict[str, Any]:
    """Fit ``detector`` with ``params`` on ``train`` and score ``validation``: the objective and its parts."""
    from anomalens.catalog import create_detector
    from anomalens.workflow.common import peak_rss_mb

    model = create_detector(detector, **params)
    start = time.perf_counter()
    model.fit(list(train), progress=False)
    fit_seconds = time.perf_counter() - start
    return {**validation_objective(model, validation), "fit_seconds": round(fit_seconds, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def validation_objective(model: Any, records: Sequence) -> dict[str, float]:
    """A fitted detector's objective on labelled ``records`` (module docstring) and its image / pixel AUROC."""
    import numpy as np

    from anomalens.metrics import image_auroc, pixel_auroc
    from anomalens.workflow.evaluation import predict_with_masks

    with_masks = all(r.mask is not None for r in records if r.label == 1)
    result, masks = predict_with_masks(model, list(records), with_masks, progress=False)
    labels = np.array([r.label for r in records])
    image = float(image_auroc(labels, result.scores))
    pixel = float(pixel_auroc(masks, result.maps)) if with_masks and result.maps is not None else math.nan
    return {"objective": image if math.isnan(pixel) else (image + pixel) / 2, "image_auroc": image,
            "pixel_auroc": pixel}


_TRIAL_COMMAND = "from anomalens.tuning import trial_main; trial_main()"


def trial_main() -> None:
    """The body of a trial's process (``python -c "from anomalens.tuning import trial_main; trial_main()"``):
    its job, pickled by the tune's own process, on stdin; its result, or the one-line reason it failed, as
    the one JSON line of stdout (what libraries print goes to stderr)."""
    import os
    import pickle
    import warnings

    # The tune reports each trial on one line; what a fit says about its own threshold is beside the point here.
    logging.getLogger("anomalens").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    job = pickle.load(sys.stdin.buffer)
    threads = job.pop("torch_threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    result_channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        result = ["ok", score_setting(**job)]
    except Exception as exc:  # noqa: BLE001 - any failure of a setting is that trial's result, in one line
        result = ["error", _one_line(exc)]
    result_channel.write(json.dumps(result) + "\n")
    result_channel.close()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


class TrialFailed(Exception):
    """A setting that could not be fitted or scored (refused parameters, out of memory, a dead process)."""


def run_trial(detector: str, params: dict, train: list, validation: list, isolate: bool = True) -> dict[str, Any]:
    """:func:`score_setting` in a fresh interpreter (``isolate``: its memory is returned when it ends, and it
    inherits no torch state or thread of this process), or in this one; TrialFailed says why it failed."""
    job = {"detector": detector, "params": params, "train": list(train), "validation": list(validation)}
    if not isolate:
        try:
            return score_setting(**job)
        except Exception as exc:  # noqa: BLE001 - as in the process
            raise TrialFailed(_one_line(exc)) from None
    import pickle
    import subprocess

    if "torch" in sys.modules:  # the caller's thread count (e.g. one, set for a machine shared with other jobs)
        job["torch_threads"] = sys.modules["torch"].get_num_threads()
    process = subprocess.Popen([sys.executable, "-c", _TRIAL_COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        output, _ = process.communicate(pickle.dumps(job))
    finally:
        if process.poll() is None:  # interrupted: the trial goes with the tune
            process.kill()
            process.wait()
    lines = output.decode("utf-8", "replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        raise TrialFailed(f"the trial's process ended with exit code {process.returncode}")
    status, payload = json.loads(lines[-1])
    if status != "ok":
        raise TrialFailed(payload)
    return payload


# -- the study -----------------------------------------------------------------------------------------------
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
    """Search ``detector``'s hyper-parameters on ``data`` and write ``out_dir`` (module docstring).

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


def check_apart(labelled: Any, dataset: Any) -> None:
    """A labelled validation set may share no file with the test split of the data it tunes for."""
    test_files = {Path(r.source).resolve() for r in dataset.test if isinstance(r.source, (str, Path))}
    shared = [r.name for r in labelled.test if isinstance(r.source, (str, Path)) and Path(r.source).resolve() in test_files]
    if shared:
        raise DataError(f"--validation {labelled.name}: {len(shared)} of its images are test images of {dataset.name} "
                        f"(e.g. {shared[0]}); tuning on them would make the test figures optimistic")
    if not labelled.test or len({r.label for r in labelled.test}) < 2:
        raise DataError(f"--validation {labelled.name}: needs labelled normal and anomalous images (a test split)")


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
            lambda study, trial: _write_results(study, out_dir, detector, fixed, dimensions, described)])
    best = _write_results(study, out_dir, detector, fixed, dimensions, described)
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


def _trial_params(trial: Any, fixed: dict, dimensions: list[Dimension]) -> dict[str, Any]:
    """The full parameters of a trial (its suggestions decoded back to the parameters' values)."""
    values = dict(fixed)
    for dim in dimensions:
        if dim.name in trial.params:
            raw = trial.params[dim.name]
            values[dim.name] = json.loads(raw) if dim.choices is not None else raw
    return values


def _write_results(study: Any, out_dir: Path, detector: str, fixed: dict, dimensions: list[Dimension],
                   described: str) -> dict[str, Any] | None:
    """trials.csv (every trial so far) and best.yaml (the best complete one); returns the best."""
    import optuna
    import yaml

    from anomalens.outputs import write_text

    names = [d.name for d in dimensions]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", "objective", "image_auroc", "pixel_auroc", "fit_seconds", *names, "error"])
    complete = []
    for trial in study.get_trials(deepcopy=False):
        state = "stopped" if trial.state == optuna.trial.TrialState.RUNNING else trial.state.name.lower()
        params = _trial_params(trial, fixed, dimensions)
        attrs = trial.user_attrs
        writer.writerow([trial.number, state, _cell(trial.value), _cell(attrs.get("image_auroc")),
                         _cell(attrs.get("pixel_auroc")), _cell(attrs.get("fit_seconds")),
                         *[json.dumps(_plain(params.get(n))) for n in names], attrs.get("error", "")])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            complete.append(trial)
    write_text(out_dir / TRIALS_FILE, buffer.getvalue())
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earliest
    params = {k: _plain(v) for k, v in _trial_params(best, fixed, dimensions).items()}
    header = (f"# anomalens tune {detector}: trial {best.number} of {len(complete)} complete, validation objective "
              f"{best.value:.4f} (image AUROC {best.user_attrs.get('image_auroc', math.nan):.4f})\n"
              f"# validation: {described}\n# fit with: anomalens fit {detector} DATA --config {out_dir / BEST_FILE} "
              "-o RUN\n")
    write_text(out_dir / BEST_FILE, header + yaml.safe_dump({"detector": detector, "params": params}, sort_keys=False))
    return {"number": best.number, "objective": best.value, "image_auroc": best.user_attrs.get("image_auroc"),
            "pixel_auroc": best.user_attrs.get("pixel_auroc"), "params": params, "trials": len(complete)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
