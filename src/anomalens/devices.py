"""Which torch device a detector runs on."""

from __future__ import annotations

import re

import torch

from anomalens.errors import ConfigError

_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(device: str) -> None:
    """ConfigError unless ``device`` is auto, cpu, cuda or cuda:N (availability is checked on use)."""
    if not isinstance(device, str) or not _DEVICE_NAME.fullmatch(device):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU. Explicit 'cuda' without a GPU is an error."""
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)
