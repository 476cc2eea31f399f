"""OPC UA: anomalens hosts a server that a PLC or a SCADA reads (asyncua, in its own thread and event loop).

Endpoint ``opc.tcp://HOST:PORT/anomalens/`` (no security, anonymous: bind it to the line's network), namespace
``urn:anomalens``, object ``Inspection`` holding read-only variables::

    LastVerdict      Boolean   true when the last part was judged a defect
    LastScore        Double    its score (higher = more anomalous)
    NormalizedScore  Double    its score over the decision threshold (above 1 = defect)
    PartCount        UInt64    parts judged since the start
    DefectCount      UInt64    of them, judged defects
    Heartbeat        DateTime  UTC, rewritten every ``heartbeat`` seconds while anomalens runs
    ModelId          String    the model judging

A port already taken fails ``open_sinks`` with one line. The values of one record are written together on
the server's loop; there is no peer to be down, so this sink has no spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from datetime import datetime, timezone

from anomalens.errors import AnomalensError
from anomalens.line.sinks.delivery import PeerDown, Sink, one_line

NAMESPACE = "urn:anomalens"
OBJECT_NAME = "Inspection"
START_TIMEOUT_S = 30.0
# asyncua warns at every start that the server has no security: the module docstring and our start line say so
SECURITY_WARNINGS = ("No signing policy available", "No encrypting policy available",
                     "Endpoints other than open requested")


class WithoutSecurityWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(SECURITY_WARNINGS)


WITHOUT_SECURITY_WARNINGS = WithoutSecurityWarnings()  # one instance: adding it twice keeps one filter


def check_port_free(host: str, port: int) -> None:
    """Bind the address as asyncio's server will (SO_REUSEADDR): a taken port fails here, in one line,
    instead of as a traceback from asyncua's log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


class OpcUaSink(Sink):
    def __init__(self, *args, host: str, port: int, model_id: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host
        self.port = port
        self.model_id = model_id
        self.endpoint = f"opc.tcp://{host if ':' not in host else f'[{host}]'}:{port}/anomalens/"
        self.part_count = 0
        self.defect_count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server = None
        self._variables: dict = {}
        self._heartbeat_task = None

    # ---- the server's own thread and loop
    def connect(self) -> None:
        try:
            check_port_free(self.host, self.port)
        except OSError as exc:
            raise AnomalensError(f"sink {self.name}: cannot listen on {self.host}:{self.port} "
                                 f"({exc.strerror or one_line(exc)})") from None
        logging.getLogger("asyncua.server.server").addFilter(WITHOUT_SECURITY_WARNINGS)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name=f"anomalens-sink {self.name} server",
                                             daemon=True)
        self._loop_thread.start()
        try:
            self._run(self._start_server(), START_TIMEOUT_S)
        except Exception as exc:
            self.disconnect()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
            raise AnomalensError(f"sink {self.name}: cannot start the OPC UA server on {self.endpoint} "
                                 f"({reason})") from None
        self.log.info("%s: OPC UA server on %s (no security, anonymous access: keep it on the line's network)",
                      self.name, self.endpoint)

    def _run(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start_server(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("anomalens")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        index = await server.register_namespace(NAMESPACE)
        inspection = await server.nodes.objects.add_object(index, OBJECT_NAME)
        initial = {"LastVerdict": (False, ua.VariantType.Boolean), "LastScore": (0.0, ua.VariantType.Double),
                   "NormalizedScore": (0.0, ua.VariantType.Double), "PartCount": (0, ua.VariantType.UInt64),
                   "DefectCount": (0, ua.VariantType.UInt64),
                   "Heartbeat": (datetime.now(timezone.utc), ua.VariantType.DateTime),
                   "ModelId": (str(self.model_id), ua.VariantType.String)}
        for name, (value, variant_type) in initial.items():
            self._variables[name] = await inspection.add_variable(index, name, value, variant_type)
        await server.start()
        self._server = server
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        from asyncua import ua

        while True:
            await self._variables["Heartbeat"].write_value(datetime.now(timezone.utc), ua.VariantType.DateTime)
            await asyncio.sleep(self.settings.heartbeat)

    async def _write(self, values: dict) -> None:
        from asyncua import ua

        types = {"LastVerdict": ua.VariantType.Boolean, "LastScore": ua.VariantType.Double,
                 "NormalizedScore": ua.VariantType.Double, "PartCount": ua.VariantType.UInt64,
                 "DefectCount": ua.VariantType.UInt64, "ModelId": ua.VariantType.String}
        for name, value in values.items():
            await self._variables[name].write_value(value, types[name])

    # ---- the sink
    def deliver(self, record: dict, payload: str) -> None:
        anomalous = bool(record.get("anomalous"))
        values = {"LastVerdict": anomalous, "LastScore": _number(record.get("score")),
                  "NormalizedScore": _number(record.get("normalized_score")),
                  "PartCount": self.part_count + 1, "DefectCount": self.defect_count + anomalous}
        if record.get("model_id") and str(record["model_id"]) != self.model_id:
            self.model_id = str(record["model_id"])
            values["ModelId"] = self.model_id
        try:
            self._run(self._write(values), self.settings.timeout)
        except Exception as exc:
            raise PeerDown(f"cannot write the OPC UA variables: {one_line(exc)}") from None
        self.part_count, self.defect_count = values["PartCount"], values["DefectCount"]

    def disconnect(self) -> None:
        if self._loop is None:
            return
        if self._heartbeat_task is not None:
            self._loop.call_soon_threadsafe(self._heartbeat_task.cancel)
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._run(self._server.stop(), 5.0)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(5.0)
        if not self._loop_thread.is_alive():
            self._loop.close()
        self._loop = None


def _number(value) -> float:
    """A score as a Double (a missing or non-finite score reads as NaN, which OPC UA carries)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
