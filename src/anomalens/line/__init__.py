"""On the line: images from hot folders, video files, streams and cameras in (``sources``, ``watcher``);
verdicts out to JSON lines, MQTT, OPC UA and webhooks (``sinks``). ``anomalens watch`` runs them."""

from typing import Any

# Imported on first use: the sinks and ``anomalens watch --help`` stay free of numpy and the model code.
_WHERE = {"watch": "anomalens.line.watcher", "Watcher": "anomalens.line.watcher",
          "open_source": "anomalens.line.sources"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'anomalens.line' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
