"""Where a result came from: the software and machine that made it, and which images it was made from.

``anomalens fit`` records :func:`environment` and :func:`file_list_sha256` of the training images in the
run's ``run.json`` (key ``provenance``), so a run found on a disk months later says which library, torch
and timm versions fitted it, on which device, and — by a hash that changes when any training image is
added, removed, renamed or edited — whether a folder still holds the images it was fitted on.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import sys
from importlib import metadata
from typing import Any, Sequence

from anomalens.version import __version__

__all__ = ["environment", "file_list_sha256"]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: Any = None) -> dict[str, Any]:
    """Versions of anomalens and what it computes with, the platform, and ``device`` (with the GPU's
    name when it is a CUDA device)."""
    info: dict[str, Any] = {
        "anomalens": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
    }
    if device is not None:
        info["device"] = str(device)
        if str(device).startswith("cuda"):
            import torch

            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def file_list_sha256(names: Sequence[str], content_keys: Sequence[str]) -> str:
    """SHA-256 of the (name, content key) pairs in name order: the same for the same images under the same
    names, different when one is added, removed, renamed or changed."""
    lines = sorted(f"{name}\t{key}" for name, key in zip(names, content_keys))
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
