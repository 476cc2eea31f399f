"""The TensorBoard backend of ``--track``: ``tensorboard`` (event files under ``./tensorboard``) or
``tensorboard:DIR``, one sub-folder per run, written by TensorBoard's own writer (no TensorFlow, no torch)."""

from __future__ import annotations

import math
import re
import secrets
import time
from pathlib import Path

from anomalens.errors import ConfigError
from anomalens.tracking.tracker import Tracker

DEFAULT_TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    """Event files written by TensorBoard's own writer (no TensorFlow, no torch), one folder per run."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root, self.description = root, f"tensorboard {root}"
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--track tensorboard needs TensorBoard: pip install 'anomalens[research]' ({exc})") from None
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--track tensorboard:{root}: is a file, not a folder")
        self.writer = None
        self.run_dir: Path | None = None

    def _start(self, name: str, tags: dict[str, str]) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        # a folder per run, named so that runs sort by time and two started together never share one
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
        self.run_dir = self.root / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe[:80]}-{secrets.token_hex(3)}"
        self.writer = EventFileWriter(str(self.run_dir))
        self._tags({"run_name": name, **tags})

    def _write(self, values: list, step: int = 0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def _params(self, params: dict[str, str]) -> None:
        # the HPARAMS tab: one session-start record per run, numbers as numbers so that they sort and plot
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for key, text in params.items():
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                start.hparams[key].number_value = number
            else:
                start.hparams[key].string_value = text
        content = plugin_data_pb2.HParamsPluginData(session_start_info=start, version=0).SerializeToString()
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
        self._write([Summary.Value(tag="_hparams_/session_start_info", metadata=metadata)])
        self._text("params", params)

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write([Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()], step)

    def _tags(self, tags: dict[str, str]) -> None:
        self._text("tags", tags)

    def _text(self, tag: str, values: dict[str, str]) -> None:
        """A two-column markdown table in the TEXT tab."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        rows = "\n".join(f"| {k} | {v.replace('|', '&#124;')} |" for k, v in values.items())
        text = f"| name | value |\n|---|---|\n{rows}"
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
        tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        self._write([Summary.Value(tag=f"{tag}/text_summary", metadata=metadata, tensor=tensor)])

    def _artifact(self, path: Path) -> None:
        from anomalens.outputs.atomic import write_bytes

        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        base = path.parent
        for file in files:
            (self.run_dir / "artifacts" / file.relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(self.run_dir / "artifacts" / file.relative_to(base), file.read_bytes())

    def _end(self, status: str) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        code = {"FINISHED": api_pb2.STATUS_SUCCESS, "FAILED": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
        end = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
        content = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=0).SerializeToString()
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
        self._write([Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])
        self.writer.close()
        self.writer = None
