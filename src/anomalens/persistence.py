"""A fitted detector on disk: ``detector.json`` (parameters, decision rule, history) and
``weights.safetensors`` (tensors). No pickle anywhere: reading a run never executes code from it.

Both files are written to temporary names and renamed into place (``anomalens.outputs.atomic``), the JSON
last, so a run folder is either complete or has no ``detector.json`` at all.

The two files vouch for each other: the JSON holds the SHA-256 of the weights file, and the weights file's
safetensors metadata holds the detector name and the parameters it was fitted with. Loading refuses a
weights file that is not the one saved with the JSON, parameters in the JSON that differ from those the
weights were fitted with (except ``INFERENCE_PARAMS``, which only say how to run: device, batch size),
and weights with a NaN or infinite value. A missing check is a refusal, not a pass: a JSON without
``weights_sha256`` or a weights file without its metadata (``detector``, ``params``) is refused — deleting
the record must not switch the check off. The decision rule (the threshold every verdict rests on) is
recorded twice: ``decision_sha256`` in the JSON is the SHA-256 of the rule, written by ``fit`` and rewritten
by ``calibrate`` — one atomic write of one file, so no crash can leave the two out of step — and a rule
edited by hand (a threshold ×100 flips verdicts silently) is refused. Runs written since format 3 must carry
it (their weights' metadata says ``format_version`` 3, so turning the JSON back into format 2 does not switch
the check off); older runs get it from their first ``calibrate``. What the tensors must look like (shapes,
dtypes, ranges against the parameters) each detector checks when it restores them (``_load_state_tensors``). This module knows no
detector class: turning the files into a detector is ``anomalens.catalog.load_detector``.

Format versions: 3 binds the decision rule to the weights (``decision_sha256``); 2 stores the decision rule
as one object (``"decision"``); version 1 (anomalens ≤ 0.1.0
before the decision rule existed) stored its fields as loose keys and is still read.

Renamed parameters: runs saved before the cross-fitted threshold carry ``threshold_quantile`` (q) in their
parameters, in the JSON and in the weights' metadata alike. ``upgrade_saved_params`` reads both in today's
names: ``false_alarm_rate`` = 1 − q, and ``threshold_folds`` = 1 (their threshold came from the single
hold-out), so the loaded detector's ``params`` say how it was fitted and a refit with them reproduces it.
The comparison of the two files is made after that translation, on both sides. A parameter added later with a
default other than what older runs did (``BEHAVIOUR_OF_OLDER_RUNS``: EfficientAD's ``quantile_pixels``, GLASS's
``aggregation``) is read
as the value those runs were fitted with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens.errors import ConfigError, ModelFileError
from anomalens.jsonvalues import read_folder_record
from anomalens.outputs.atomic import atomic_path, write_json
from anomalens.params import short_repr
from anomalens.version import __version__

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DECISION_CHECKED_SINCE = 3
CONFIG_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
# Parameters that change how a fitted model runs, not what it is: may differ between the two files.
INFERENCE_PARAMS = ("device", "batch_size")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def rename_deprecated_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with deprecated names translated: ``threshold_quantile`` q → ``false_alarm_rate`` 1 − q.

    ConfigError when both names are given, or q is not a number in [0, 1].
    """
    if "threshold_quantile" not in params:
        return params
    params = dict(params)
    quantile = params.pop("threshold_quantile")
    if "false_alarm_rate" in params:
        raise ConfigError("give false_alarm_rate or the deprecated threshold_quantile (= 1 − false_alarm_rate), not both")
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"parameter threshold_quantile (deprecated: use false_alarm_rate) must be a number in [0, 1], "
                          f"got {short_repr(quantile)}")
    params["false_alarm_rate"] = round(1.0 - float(quantile), 12)  # 1 − 0.99 is 0.010000000000000009
    return params


# Parameters added with a default that differs from what runs saved before them did: (detector, parameter) →
# the value that says how those runs were fitted.
BEHAVIOUR_OF_OLDER_RUNS: dict[tuple[str, str], Any] = {
    ("efficientad", "quantile_pixels"): "grid",  # the default until 2026-12-07
    ("glass", "aggregation"): "mean",  # the default until 2026-12-07 (session 20)
}


def upgrade_saved_params(params: dict[str, Any], detector: str | None = None) -> dict[str, Any]:
    """A saved run's parameters in today's names (module docstring: runs fitted before cross-fitting), with
    the value of a newer parameter that says how the run was fitted (``BEHAVIOUR_OF_OLDER_RUNS``)."""
    if "threshold_quantile" in params and "threshold_folds" not in params:
        params = {**params, "threshold_folds": 1}
    for (name, key), value in BEHAVIOUR_OF_OLDER_RUNS.items():
        if name == detector and key not in params:
            params = {**params, key: value}
    return rename_deprecated_params(params)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_run_files(directory: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write the weights, then the JSON (with ``format_version``), each atomically. Returns ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"detector": str(config["detector"]), "params": _params_json(config["params"]),
                "format_version": str(FORMAT_VERSION)}
    with atomic_path(directory / WEIGHTS_FILE) as tmp_weights:
        save_file(tensors, str(tmp_weights), metadata=metadata)
        _readable_like_other_files(tmp_weights)
        digest = file_sha256(tmp_weights)
    config = {"format_version": FORMAT_VERSION, **config, "weights_sha256": digest}
    write_json(directory / CONFIG_FILE, _with_decision_digest(config))
    return directory


def decision_digest(decision: Any) -> str:
    """SHA-256 of the decision rule as the JSON holds it (canonical JSON)."""
    text = json.dumps(decision, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _with_decision_digest(config: dict[str, Any]) -> dict[str, Any]:
    # The digest is taken of the rule as it will read back from the JSON (numbers as JSON spells them).
    decision = json.loads(json.dumps(config.get("decision"), default=_json_default))
    return {**config, "decision": decision, "decision_sha256": decision_digest(decision)}


def _readable_like_other_files(path: Path) -> None:
    """safetensors creates its file 0600; give it the mode any new file gets here (0666 less the umask),
    so that a run another user may read (the JSON beside it) has weights they can read too."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _params_json(params: dict[str, Any]) -> str:
    """The fitted-model parameters as canonical JSON (inference-only ones left out)."""
    kept = {k: v for k, v in params.items() if k not in INFERENCE_PARAMS}
    return json.dumps(kept, sort_keys=True, default=_json_default)


def write_decision(directory: str | Path, decision: dict[str, Any]) -> None:
    """Replace the decision rule in ``directory``'s JSON, atomically, leaving the rest as it was."""
    config = read_config(directory)
    config.update(format_version=FORMAT_VERSION, decision=decision)
    for key in _V1_DECISION_KEYS:
        config.pop(key, None)
    write_json(Path(directory) / CONFIG_FILE, _with_decision_digest(config))


def read_config(directory: str | Path) -> dict[str, Any]:
    """The JSON of a run folder, checked to be an anomalens detector file of a readable version."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    config = read_folder_record(directory, CONFIG_FILE, "anomalens fit")
    if not isinstance(config, dict) or config.get("library") != "anomalens":
        raise ModelFileError(f"{config_path}: not an anomalens detector file")
    if config.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{config_path}: file format version {config.get('format_version')} is not supported by "
            f"anomalens {__version__} (reads {', '.join(map(str, READABLE_VERSIONS))}); refit the model with this version"
        )
    if config["format_version"] == 1:
        config = _upgrade_v1(config)
    if isinstance(config.get("params"), dict):
        try:
            config["params"] = upgrade_saved_params(config["params"], config.get("detector"))
        except ConfigError as exc:
            raise ModelFileError(f"{config_path}: incompatible parameters ({exc})") from None
    return config


def read_weights(directory: str | Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a run folder, checked against its ``config`` (see the module docstring)."""
    from safetensors import SafetensorError, safe_open

    weights_path = Path(directory) / WEIGHTS_FILE
    config_path = Path(directory) / CONFIG_FILE
    expected = config.get("weights_sha256")
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        found = "has no 'weights_sha256'" if expected is None else f"has a malformed 'weights_sha256' ({expected!r:.80})"
        raise ModelFileError(f"{config_path}: {found}, so its weights cannot be checked; the run was edited or saved "
                             "by a version without the check — refit")
    try:
        if file_sha256(weights_path) != expected:
            raise ModelFileError(
                f"{weights_path}: not the weights saved with {config_path} (SHA-256 differs); the run folder was "
                "changed after it was written — refit, or restore both files together"
            )
        with safe_open(str(weights_path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except FileNotFoundError:
        raise ModelFileError(f"{weights_path}: not found") from None
    except PermissionError:
        raise ModelFileError(f"{weights_path}: permission denied (cannot read the weights)") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: corrupt or unreadable weights ({exc})") from None
    missing = [key for key in ("detector", "params") if key not in metadata]
    if missing:
        raise ModelFileError(f"{weights_path}: its metadata lacks {' and '.join(repr(k) for k in missing)}, so the "
                             f"parameters in {CONFIG_FILE} cannot be checked against those it was fitted with; refit")
    _check_same_params(config_path, config, metadata)
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{weights_path}: tensor '{key}' holds NaN or infinite values; the file is damaged — refit")
    _check_decision(config_path, config, metadata)
    return tensors


def _check_decision(config_path: Path, config: dict[str, Any], metadata: dict[str, str]) -> None:
    """The rule in the JSON must be the one fit / calibrate wrote (see the module docstring)."""
    recorded = config.get("decision_sha256")
    written_since = max(_version(config.get("format_version")), _version(metadata.get("format_version")))
    if recorded is None and written_since < DECISION_CHECKED_SINCE:
        return  # a run saved before the rule was bound to the weights; its first calibrate binds it
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        found = "has no 'decision_sha256'" if recorded is None else f"has a malformed 'decision_sha256' ({recorded!r:.80})"
        raise ModelFileError(f"{config_path}: {found}, so its decision rule cannot be checked; the file was edited — "
                             "set the threshold with 'anomalens calibrate', or refit")
    if decision_digest(config.get("decision")) != recorded:
        threshold = (config.get("decision") or {}).get("image_threshold") if isinstance(config.get("decision"), dict) else None
        raise ModelFileError(f"{config_path}: its decision rule (threshold {short_repr(threshold)}) is not the one "
                             "anomalens wrote (decision_sha256 differs): the file was edited by hand — set the "
                             "threshold with 'anomalens calibrate', or refit")


def _version(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _check_same_params(config_path: Path, config: dict[str, Any], metadata: dict[str, str]) -> None:
    if metadata.get("detector") != config.get("detector"):
        raise ModelFileError(
            f"{config_path}: says detector '{config.get('detector')}' but the weights are a '{metadata.get('detector')}' model"
        )
    try:
        fitted = json.loads(metadata["params"])
        if not isinstance(fitted, dict):
            raise TypeError(f"not a JSON object but {type(fitted).__name__}")
        fitted = upgrade_saved_params(fitted, metadata.get("detector"))
    except (ConfigError, ValueError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{config_path}: the weights' parameter metadata is unreadable ({exc})") from None
    now = json.loads(_params_json(upgrade_saved_params(config.get("params") or {}, config.get("detector"))))
    fitted = json.loads(_params_json(fitted))
    changed = sorted(k for k in set(fitted) | set(now) if fitted.get(k) != now.get(k))
    if changed:
        first = changed[0]
        raise ModelFileError(
            f"{config_path}: parameter(s) {', '.join(changed)} differ from those the weights were fitted with "
            f"({first}: {short_repr(now.get(first))} here, {short_repr(fitted.get(first))} when fitted); refit to change them"
        )


_V1_DECISION_KEYS = ("threshold", "pixel_threshold", "threshold_source", "map_reference", "min_area", "area_clear_border")


def _upgrade_v1(config: dict[str, Any]) -> dict[str, Any]:
    """Version 1's loose decision keys → one ``decision`` object (same numbers)."""
    config = dict(config)
    old = {key: config.pop(key, None) for key in _V1_DECISION_KEYS}
    if old["threshold"] is None:
        return config  # no decision: read_config's caller reports the run as not fitted
    source_text = old["threshold_source"] or ""
    source = "area" if old["min_area"] is not None else ("f1" if source_text.startswith("F1") else "quantile")
    config["decision"] = {
        "image_threshold": old["threshold"],
        "source": source,
        "description": source_text,
        "pixel_threshold": old["pixel_threshold"],
        "min_area": old["min_area"],
        "clear_border": bool(old["area_clear_border"]),
        "map_reference": old["map_reference"],
        "evidence": {},
    }
    return config
