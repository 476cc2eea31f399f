"""Which torch device a detector runs on: the one place that says which device names are accepted.

The names are checked without torch (the command line checks ``--device`` with :func:`check_device_name`
before anything heavy is imported); torch is imported only to resolve a name to a device.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from anomalens.errors import ConfigError

if TYPE_CHECKING:
    import torch

_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
"""The accepted device names, in words (for help texts and error messages)."""


def check_device_name(device: str) -> None:
    """ConfigError unless ``device`` is auto, cpu, cuda or cuda:N (availability is checked on use)."""
    if not isinstance(device, str) or not _DEVICE_NAME.fullmatch(device):
        raise ConfigError(f"unknown device {device!r}; use {DEVICE_NAMES}")


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU. Explicit 'cuda' without a GPU is an error."""
    import torch

    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)
