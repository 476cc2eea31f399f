"""The CPU cores this process may use — torch-free, so the report and the CLI can ask without importing torch."""

from __future__ import annotations

import os

__all__ = ["available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's CPU set); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
