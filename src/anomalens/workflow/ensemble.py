"""``anomalens ensemble``: an ensemble detector fitted from the settings of fitted runs (``models.ensemble``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from anomalens.errors import ConfigError
from anomalens.models.ensemble import SHARED_PARAMS
from anomalens.outputs.names import RUN_INFO_FILE
from anomalens.persistence import read_config, read_weights
from anomalens.tiling import TILING_PARAMS


def ensemble_params(run_dirs: Sequence[str | Path], combine: str = "mean") -> tuple[dict[str, Any], str | None]:
    """(the ensemble's parameters, the runs' common training data or None) from fitted runs: every member
    with its run's hyper-parameters; the shared ones (image size, resize, decoding, device, seed) taken from
    the first run and required to agree. A detector's first run is the member of its name; another run of it
    is labelled by its folder's name (``patchcore,patchcore-l12=patchcore``), or NAME-2, NAME-3, ... when that
    name is taken or cannot be a label. The members are fitted again by the ensemble (its threshold needs
    every member fitted without each fold), on the data the runs were fitted on unless another is given. Each
    run is checked whole first: one whose weights, parameters or decision rule were changed is refused, as
    loading it would be."""
    if len(run_dirs) < 2:
        raise ConfigError("ensemble: give two or more runs")
    members: list[str] = []
    member_params: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    data: set[str] = set()
    seen: set[Path] = set()
    for run_dir in run_dirs:
        config = read_config(run_dir)
        if Path(run_dir).resolve() in seen:
            raise ConfigError(f"{run_dir}: the same {config.get('detector')} run given twice; an ensemble's members "
                              "are different runs")
        seen.add(Path(run_dir).resolve())
        read_weights(run_dir, config)  # a tampered member (weights, parameters or rule edited) is refused, not rebuilt
        name, params = config.get("detector"), dict(config.get("params") or {})
        if name == "ensemble":
            raise ConfigError(f"{run_dir}: is an ensemble itself; give its members' runs")
        if params.get("tile_size"):
            raise ConfigError(f"{run_dir}: tiles its images; the members of an ensemble score one untiled input")
        for key in SHARED_PARAMS:
            if key in shared and params.get(key) != shared[key]:
                raise ConfigError(f"{run_dir}: {key} is {params.get(key)!r}, the first run's is {shared[key]!r}; the "
                                  "members of an ensemble share it")
            shared[key] = params.pop(key, None)
        for key in TILING_PARAMS:
            params.pop(key, None)
        label = _member_label(str(name), Path(run_dir).name, member_params)
        members.append(str(name) if label == name else f"{label}={name}")
        member_params[label] = params
        try:
            info = json.loads((Path(run_dir) / RUN_INFO_FILE).read_text(encoding="utf-8"))
            data.add(str(info["data"]))
        except (OSError, ValueError, KeyError, TypeError):
            data.add("")
    if shared.get("resize") == "keep_aspect":
        raise ConfigError("ensemble: the runs keep the images' aspect; an ensemble's members score one squashed input")
    params = {"members": ",".join(members), "member_params": json.dumps(member_params, sort_keys=True),
              "combine": combine, **{k: v for k, v in shared.items() if v is not None}}
    return params, (data.pop() if len(data) == 1 and "" not in data else None)


def _member_label(name: str, folder: str, taken: dict) -> str:
    """The label of a run's member: its detector's name the first time, then the run folder's name when free and
    usable as a label (no ',' or '='), else NAME-2, NAME-3, ..."""
    if name not in taken:
        return name
    if folder and folder not in taken and not set(folder) & {",", "=", " "}:
        return folder
    k = 2
    while f"{name}-{k}" in taken:
        k += 1
    return f"{name}-{k}"
