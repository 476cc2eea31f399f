"""Plain JSON values from what the library holds (numpy scalars and arrays, tuples, paths, NaN).

Strict JSON has no NaN or infinity: they become null, so every file and answer parses with any parser.
Torch-free, for the service and the export loader too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import ModelFileError
from anomalens.names import printable


def plain_json(value: Any) -> Any:
    """Numpy scalars as Python numbers, arrays and tuples as lists, non-finite floats as None, the rest as text."""
    if isinstance(value, dict):
        return {printable(str(k)): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return printable(value)  # a path or name that is not UTF-8 is spelt with \xNN escapes


def read_folder_record(directory: str | Path, name: str, written_by: str) -> Any:
    """The JSON file ``name`` of a folder that the command ``written_by`` writes (a run's detector.json, an
    export's export.json), parsed; a missing, unreadable or non-JSON file is one ModelFileError line that
    names it and what should have written it."""
    path = Path(directory) / name
    if not path.is_file():
        raise ModelFileError(f"{path}: not found; is '{directory}' a folder written by '{written_by}'?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
