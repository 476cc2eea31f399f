"""Sink spec strings (``jsonl``, ``jsonl:PATH``, ``mqtt://HOST:PORT/PREFIX``, ``opcua://HOST:PORT``,
``webhook:URL``) parsed into a :class:`SinkSpec`, or refused with one line naming the problem; and the
:class:`SinkSettings` (bounds and timings) every sink shares.

Parsing connects to nothing and imports nothing heavy, so ``anomalens watch --sink`` can check its options
before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from anomalens.errors import ConfigError

MQTT_DEFAULT_PORT = 1883
OPCUA_DEFAULT_PORT = 4840
MQTT_DEFAULT_PREFIX = "anomalens"
SPEC_FORMS = "jsonl, jsonl:PATH, mqtt://HOST:PORT/PREFIX, opcua://HOST:PORT or webhook:URL"


@dataclass(frozen=True)
class SinkSpec:
    """One parsed sink. ``name`` is its canonical spelling: the key of ``SinkSet.stats()`` and of log lines."""

    kind: str  # "jsonl" | "mqtt" | "opcua" | "webhook"
    name: str
    path: str | None = None  # jsonl: "-" for stdout, else the file appended to
    host: str | None = None  # mqtt: the broker; opcua: the address the server listens on
    port: int | None = None
    prefix: str | None = None  # mqtt: topics PREFIX/ok, PREFIX/defect and the retained PREFIX/last
    url: str | None = None  # webhook

    def describe(self) -> str:
        """What the sink does, in one line (``python -m anomalens.line.sinks`` prints it)."""
        if self.kind == "jsonl":
            return "JSON lines to " + ("stdout" if self.path == "-" else f"the file {self.path} (appended)")
        if self.kind == "mqtt":
            return (f"MQTT broker {_netloc(self.host, self.port)}: QoS 1 to {self.prefix}/ok or {self.prefix}/defect, "
                    f"retained {self.prefix}/last")
        if self.kind == "opcua":
            return (f"OPC UA server on opc.tcp://{_netloc(self.host, self.port)}/anomalens/ (namespace urn:anomalens, "
                    "object Inspection)")
        return f"HTTP POST of each result as JSON to {self.url}"


@dataclass(frozen=True)
class SinkSettings:
    """Bounds and timings shared by the sinks (the defaults suit a line; tests shorten the waits)."""

    queue_size: int = 1000  # records waiting in memory per sink; beyond it the oldest is dropped, counted
    spool_records: int = 100_000  # records on disk per sink while its peer is down; beyond, the oldest dropped
    spool_segment_records: int = 1000  # lines per spool file
    memory_records: int = 10_000  # the in-memory spool when the disk refuses (full, read-only)
    timeout: float = 5.0  # one delivery: an HTTP request, an MQTT acknowledgement, an OPC UA write
    retry_initial: float = 0.5  # first wait after a failure, doubled at each failure
    retry_max: float = 30.0
    heartbeat: float = 1.0  # OPC UA Heartbeat period

    def __post_init__(self):
        for name in ("queue_size", "spool_records", "spool_segment_records", "memory_records"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"sink setting {name} must be at least 1, not {getattr(self, name)!r}")
        for name in ("timeout", "retry_initial", "retry_max", "heartbeat"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"sink setting {name} must be a positive number of seconds")


def _port(text: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"sink {text!r}: the port must be a number from 1 to 65535, not {value!r}")
    return int(value)


def _host_and_port(text: str, netloc: str, default_port: int) -> tuple[str, int]:
    if "@" in netloc:
        raise ConfigError(f"sink {text!r}: user names and passwords in the spec are not supported")
    host, colon, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if not colon:
        host, port = netloc, None
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"sink {text!r}: no host (expected e.g. 127.0.0.1 or broker.local)")
    return host, _port(text, port, default_port)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _mqtt(text: str) -> SinkSpec:
    if "?" in text or "#" in text:  # urlsplit would take them (even alone) as a query or a fragment
        raise ConfigError(f"sink {text!r}: the topic prefix may not hold '?', '+' or '#' "
                          "(expected mqtt://HOST:PORT/PREFIX)")
    parts = urlsplit(text)
    host, port = _host_and_port(text, parts.netloc, MQTT_DEFAULT_PORT)
    prefix = parts.path.strip("/") or MQTT_DEFAULT_PREFIX
    if any(c in prefix for c in "+#\0") or "" in prefix.split("/"):
        raise ConfigError(f"sink {text!r}: the topic prefix {prefix!r} may not hold '+', '#' or empty levels")
    return SinkSpec("mqtt", f"mqtt://{_netloc(host, port)}/{prefix}", host=host, port=port, prefix=prefix)


def _opcua(text: str) -> SinkSpec:
    parts = urlsplit(text)
    if parts.path.strip("/") or "?" in text or "#" in text:
        raise ConfigError(f"sink {text!r}: expected opcua://HOST:PORT (the server's path is /anomalens/)")
    host, port = _host_and_port(text, parts.netloc, OPCUA_DEFAULT_PORT)
    return SinkSpec("opcua", f"opcua://{_netloc(host, port)}", host=host, port=port)


def _webhook(text: str) -> SinkSpec:
    url = text[len("webhook:"):]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"sink {text!r}: expected webhook:http://HOST[:PORT]/PATH (or https://)")
    try:
        parts.port  # noqa: B018 — urlsplit checks the port only when it is read
    except ValueError:
        raise ConfigError(f"sink {text!r}: the port must be a number from 1 to 65535") from None
    return SinkSpec("webhook", f"webhook:{url}", url=url)


def parse_sink_spec(text: str) -> SinkSpec:
    """The :class:`SinkSpec` of ``text``; a ``ConfigError`` with one line for anything else."""
    text = str(text).strip()
    if text in ("jsonl", "jsonl:-"):
        return SinkSpec("jsonl", "jsonl:-", path="-")
    if text.startswith("jsonl:"):
        if not text[len("jsonl:"):].strip():
            raise ConfigError(f"sink {text!r}: no file name after 'jsonl:' (or 'jsonl' alone for stdout)")
        return SinkSpec("jsonl", text, path=text[len("jsonl:"):])
    if text.startswith("mqtt://"):
        return _mqtt(text)
    if text.startswith("opcua://"):
        return _opcua(text)
    if text.startswith("webhook:"):
        return _webhook(text)
    raise ConfigError(f"unknown sink {text!r}: expected {SPEC_FORMS}")


def parse_sink_specs(texts: list[str] | tuple[str, ...]) -> list[SinkSpec]:
    """Each of ``texts`` parsed; the same sink twice is refused (their counts would share one name)."""
    specs = [parse_sink_spec(text) for text in texts]
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"sink {twice[0]} is given twice")
    return specs
