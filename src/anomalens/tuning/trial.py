"""One trial of a tune: a setting fitted on the training images and scored on the validation set (the
objective: ``anomalens.tuning``'s docstring), in a fresh Python process by default, so that its memory is
returned when it ends and a setting that fails or dies fails alone."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, Mapping, Sequence


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
    """A fitted detector's objective on labelled ``records`` (``anomalens.tuning``) and its image / pixel AUROC."""
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


_TRIAL_COMMAND = "from anomalens.tuning.trial import trial_main; trial_main()"


def trial_main() -> None:
    """The body of a trial's process (``python -c "from anomalens.tuning.trial import trial_main; trial_main()"``):
    its job, pickled by the tune's own process, on stdin; its result, or the one-line reason it failed, as
    the one JSON line of stdout (what libraries print goes to stderr)."""
    import os
    import pickle
    import warnings

    from anomalens.processes import die_with_parent

    # The tune reports each trial on one line; what a fit says about its own threshold is beside the point here.
    logging.getLogger("anomalens").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    job = pickle.load(sys.stdin.buffer)
    die_with_parent(parent=job.pop("parent_pid"))  # a tune killed by `kill -9` takes its trial with it
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
    import os
    import pickle
    import subprocess

    job["parent_pid"] = os.getpid()
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
