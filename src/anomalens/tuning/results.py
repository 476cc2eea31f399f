"""What a tune leaves for people and for ``fit``: ``trials.csv`` (every trial so far, its state, objective and
parameters) and ``best.yaml`` (the best complete trial's parameters, which ``anomalens fit --config`` reads as
is), rewritten from the Optuna study after every trial."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from anomalens.tuning.space import Dimension

BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"


def _trial_params(trial: Any, fixed: dict, dimensions: list[Dimension]) -> dict[str, Any]:
    """The full parameters of a trial (its suggestions decoded back to the parameters' values)."""
    values = dict(fixed)
    for dim in dimensions:
        if dim.name in trial.params:
            raw = trial.params[dim.name]
            values[dim.name] = json.loads(raw) if dim.choices is not None else raw
    return values


def write_results(study: Any, out_dir: Path, detector: str, fixed: dict, dimensions: list[Dimension],
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
