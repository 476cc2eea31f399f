"""The service's settings and limits, checked once, with one line naming the setting that is wrong.

``ServeSettings`` is what ``anomalens serve`` builds from its options and what ``create_app(..., settings=)``
takes; ``validate()`` refuses a value that would give a traceback, a server that refuses everything or one
that never answers (a port outside 1–65535, a limit of 0, NaN or infinity, a token that cannot travel in an
HTTP header, ...). The defaults are the limits the README states:

- ``max_upload_mb`` 25 MB: a larger body → 413 (from ``Content-Length`` before reading, else while
  reading), connection closed;
- ``max_pixels`` 40 M: one image larger (width × height, from its header) → 400 for that image;
- ``max_request_pixels`` 64 M: the decoded pixels of all the images of a request, summed from their headers
  before anything is decoded → 413 for the request;
- ``max_pixels_in_flight`` (default: ``max_request_pixels``): the decoded pixels of all requests being
  decoded or scored at once; a request that does not fit waits for others to finish (at most
  ``pixel_wait_s``, 30 s; then 503). Measured: ~32 bytes of memory per pixel at peak (decode, resize,
  full-size map, mask and labels), so 64 M pixels ≈ 2 GB above what the model itself holds;
- ``max_files`` 64: more images in one ``/predict/batch`` request → 400;
- ``max_per_client`` 8: requests being received or scored from one client address; beyond → 429 with
  ``Retry-After``;
- ``max_in_flight`` 32: requests being received or scored in all; beyond → 503 with ``Retry-After``
  (``/health``, ``/model`` and the pages are never counted);
- ``max_connections`` 256: open connections; a new one closes the oldest connection still waiting for a
  request head (half-open or idle) to make room; when every one is busy with a request → 503;
- ``header_timeout_s`` 10 s: a request line + headers not complete 10 s after the connection opened (or
  after its previous answer) → 408, closed;
- ``body_timeout_s`` 60 s: a body not complete 60 s after its head → 408, closed; an answer not read by the
  client within as long → the connection is dropped;
- ``keep_alive_s`` 5 s: an idle keep-alive connection is closed;
- ``shutdown_timeout_s`` 5 s: on SIGTERM / Ctrl+C new requests get 503, requests in flight get 5 s to
  finish; a body still arriving at 80 % of it, or a request still running at its end → 503.
- ``state_dir`` (``--state``): the folder of the history of verdicts and operator feedback
  (``anomalens.feedback.store``; the command line's default: ``$XDG_STATE_HOME/anomalens/serve/<model>-<hash>``,
  the Python API's: None, no history); ``history_max_images`` 10000, ``history_max_age_days`` 30,
  ``history_max_mb`` 1000: the images it keeps (the oldest unjudged go first).

Connection-level limits (header timeout, connections, keep-alive, graceful shutdown) need the server
``anomalens serve`` runs (:func:`anomalens.serve.server.run_server`); the others are enforced by the
application itself, under any ASGI server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import numbers
import socket
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from anomalens.errors import ConfigError

#: Host names and addresses always accepted in the Host header: they name this machine, and no web page
#: can make a browser send them for a server elsewhere (DNS rebinding needs a name the attacker controls).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

# setting → the command-line option that sets it (messages name the option when the CLI is the caller)
_OPTIONS = {
    "host": "--host", "port": "--port", "token": "--token / ANOMALENS_TOKEN", "allowed_hosts": "--allowed-host",
    "max_upload_mb": "--max-upload-mb", "max_request_pixels": "--max-request-megapixels",
    "max_batch": "--max-batch", "max_wait_ms": "--max-wait-ms", "max_connections": "--max-connections",
    "max_in_flight": "--max-in-flight", "max_per_client": "--max-per-client",
    "header_timeout_s": "--header-timeout", "body_timeout_s": "--body-timeout",
    "shutdown_timeout_s": "--shutdown-timeout", "state_dir": "--state", "history_max_images": "--history-max-images",
    "history_max_age_days": "--history-max-age-days", "history_max_mb": "--history-max-mb",
}


@dataclass(frozen=True)
class ServeSettings:
    """Every setting of the service (see the module's table for what each limit refuses)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_upload_mb: float = 25.0
    max_pixels: int = 40_000_000
    max_request_pixels: int = 64_000_000
    max_pixels_in_flight: int | None = None  # None: max_request_pixels (one full request at a time)
    pixel_wait_s: float = 30.0
    max_files: int = 64
    max_batch: int | None = None
    max_wait_ms: float = 5.0
    decode_threads: int | None = None
    max_connections: int = 256
    max_in_flight: int = 32
    max_per_client: int = 8
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    shutdown_timeout_s: float = 5.0
    # The history of verdicts and operator feedback (anomalens.feedback.store): its folder (None: no history)
    # and how many of the images it keeps.
    state_dir: str | None = None
    history_max_images: int = 10_000
    history_max_age_days: float = 30.0
    history_max_mb: float = 1_000.0
    cli: bool = field(default=False, compare=False, repr=False)  # messages name the command-line options

    @property
    def max_upload_bytes(self) -> int:
        return int(round(self.max_upload_mb * 1e6))

    @property
    def loopback(self) -> bool:
        """Bound to this machine only (127.0.0.0/8, ::1 or localhost)."""
        host = self.host.strip("[]").lower()
        address = _ip(host)
        return host == "localhost" or (address is not None and address.is_loopback)

    @property
    def url(self) -> str:
        host = self.host.strip("[]")
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    # ------------------------------------------------------------------------------------------ checks
    def _name(self, key: str) -> str:
        return _OPTIONS.get(key, key) if self.cli else key

    def _fail(self, key: str, what: str, value: Any) -> ConfigError:
        shown = repr(value) if isinstance(value, str) else value
        return ConfigError(f"{self._name(key)} must be {what}, got {shown}")

    def _number(self, key: str, low: float, high: float, what: str, *, integer: bool = False,
                low_open: bool = False, optional: bool = False) -> Any:
        value = getattr(self, key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self._fail(key, what, value)
        number = float(value)
        if not math.isfinite(number) or number < low or number > high or (low_open and number <= low):
            raise self._fail(key, what, value)
        if integer:
            if number != int(number):
                raise self._fail(key, what, value)
            return int(number)
        return number

    def validate(self) -> ServeSettings:
        """These settings with numbers normalised (ints as int), or ConfigError with one line."""
        v: dict[str, Any] = {}
        host = self.host
        if not isinstance(host, str) or not host.strip() or any(ch.isspace() for ch in host):
            raise self._fail("host", "an address or host name to listen on", host)
        v["host"] = host.strip().strip("[]")
        v["port"] = self._number("port", 1, 65535, "an integer from 1 to 65535", integer=True)
        token = self.token
        if token is not None:
            if not isinstance(token, str) or not token or not all("\x21" <= ch <= "\x7e" for ch in token):
                # anything else cannot be sent in an Authorization header: no client could ever be let in
                raise ConfigError(f"{self._name('token')} must be printable ASCII without spaces (it is sent in "
                                  f"an 'Authorization: Bearer …' header), got a value of {len(str(token))} "
                                  "characters that is not")
        hosts = self.allowed_hosts
        if isinstance(hosts, str):
            hosts = (hosts,)
        cleaned = []
        for entry in hosts or ():
            if not isinstance(entry, str) or not entry.strip() or any(ch.isspace() or ch in "/@" for ch in entry):
                raise self._fail("allowed_hosts", "host names ('inspect.example.com', '.example.com' for its "
                                                  "sub-domains, '*' for any)", entry)
            cleaned.append(entry.strip().lower().rstrip("."))
        v["allowed_hosts"] = tuple(cleaned)
        v["max_upload_mb"] = self._number("max_upload_mb", 0, 100_000, "a number of MB > 0 (at most 100000)",
                                          low_open=True)
        if round(v["max_upload_mb"] * 1e6) < 1:
            raise self._fail("max_upload_mb", "at least one byte (1e-6 MB)", self.max_upload_mb)
        v["max_pixels"] = self._number("max_pixels", 1, 10**12, "a whole number of pixels ≥ 1", integer=True)
        v["max_request_pixels"] = self._number("max_request_pixels", 1, 10**12,
                                               "a number of pixels ≥ 1 (megapixels > 0 on the command line)",
                                               integer=False)
        v["max_request_pixels"] = int(round(v["max_request_pixels"]))
        if v["max_request_pixels"] < 1:
            raise self._fail("max_request_pixels", "at least one pixel", self.max_request_pixels)
        v["max_pixels_in_flight"] = self._number("max_pixels_in_flight", 1, 10**13, "a whole number of pixels ≥ 1",
                                                 integer=True, optional=True)
        if v["max_pixels_in_flight"] is None:
            v["max_pixels_in_flight"] = v["max_request_pixels"]
        if v["max_pixels_in_flight"] < v["max_request_pixels"]:
            raise ConfigError(f"max_pixels_in_flight ({v['max_pixels_in_flight']}) must be at least "
                              f"{self._name('max_request_pixels')} ({v['max_request_pixels']} pixels): a request "
                              "within its budget could never be served")
        v["pixel_wait_s"] = self._number("pixel_wait_s", 0, 3600, "a number of seconds from 0 to 3600")
        v["max_files"] = self._number("max_files", 1, 100_000, "a whole number ≥ 1", integer=True)
        v["max_batch"] = self._number("max_batch", 1, 65_536, "a whole number from 1 to 65536", integer=True,
                                      optional=True)
        v["max_wait_ms"] = self._number("max_wait_ms", 0, 10_000, "a number of milliseconds from 0 to 10000")
        v["decode_threads"] = self._number("decode_threads", 1, 256, "a whole number from 1 to 256", integer=True,
                                           optional=True)
        v["max_connections"] = self._number("max_connections", 1, 1_000_000, "a whole number ≥ 1", integer=True)
        v["max_in_flight"] = self._number("max_in_flight", 1, 1_000_000, "a whole number ≥ 1", integer=True)
        v["max_per_client"] = self._number("max_per_client", 1, 1_000_000, "a whole number ≥ 1", integer=True)
        for key in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            v[key] = self._number(key, 0, 3600, "a number of seconds > 0 (at most 3600)", low_open=True)
        v["shutdown_timeout_s"] = self._number("shutdown_timeout_s", 0, 3600, "a number of seconds from 0 to 3600")
        state = self.state_dir
        if state is not None and (not isinstance(state, (str, PathLike)) or not str(state).strip()):
            raise self._fail("state_dir", "a folder for the history", state)
        v["state_dir"] = None if state is None else str(state)
        v["history_max_images"] = self._number("history_max_images", 0, 10**9, "a whole number ≥ 0", integer=True)
        v["history_max_age_days"] = self._number("history_max_age_days", 0, 36_500, "a number of days from 0 to 36500")
        v["history_max_mb"] = self._number("history_max_mb", 0, 10**7, "a number of MB ≥ 0")
        return dataclasses.replace(self, **v)

    def limits(self) -> dict[str, Any]:
        """The limits as ``GET /model`` reports them."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_request_pixels": self.max_request_pixels, "max_pixels_in_flight": self.max_pixels_in_flight,
                "max_files_per_request": self.max_files, "max_in_flight": self.max_in_flight,
                "max_per_client": self.max_per_client, "max_connections": self.max_connections,
                "header_timeout_s": self.header_timeout_s, "body_timeout_s": self.body_timeout_s,
                "keep_alive_s": self.keep_alive_s, "shutdown_timeout_s": self.shutdown_timeout_s}


# ---------------------------------------------------------------------------------------- Host header
def split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a Host header (or an Origin's netloc) → (lower-case name, port), None if malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") > 1:
        return None  # an IPv6 address must be in brackets
    else:
        name, _, port_text = value.partition(":")
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        port = None
    name = name.rstrip(".")
    if not name or any(ch.isspace() or ch in "/\\@?#" for ch in name):
        return None
    return name, port


def _ip(name: str) -> Any:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which names the Host header may carry (DNS rebinding: a page of evil.example whose name is made to
    resolve to this machine reaches the service with ``Host: evil.example``, and is refused).

    Always: ``localhost`` (and ``*.localhost``), loopback addresses, the address bound. Bound to another
    interface (or to all of them): also any IP address and this machine's host names. Plus ``allowed_hosts``
    (exact names, ``.example.com`` for a domain and its sub-domains, ``*`` to switch the check off).
    """

    def __init__(self, bound: str, allowed: tuple[str, ...] = ()) -> None:
        self.any = "*" in allowed
        self.names = {n for n in allowed if not n.startswith(".") and n != "*"}
        self.suffixes = tuple(n for n in allowed if n.startswith("."))
        self.explicit = set(self.names)
        bound = bound.strip("[]").lower()
        self.names.update(LOOPBACK_NAMES)
        self.names.add(bound)
        address = _ip(bound)
        loopback = bound == "localhost" or (address is not None and address.is_loopback)
        self.any_ip = not loopback
        if not loopback:
            for name in (socket.gethostname(), socket.getfqdn()):
                if name:
                    self.names.add(name.lower().rstrip("."))

    def allows_name(self, name: str) -> bool:
        if self.any or name in self.names or name.endswith(".localhost"):
            return True
        if any(name == s[1:] or name.endswith(s) for s in self.suffixes):
            return True
        address = _ip(name)
        return address is not None and (address.is_loopback or self.any_ip)

    def allows(self, host_header: str | None) -> bool:
        """True when the request may be served (a request without a Host header is not from a browser)."""
        if host_header is None:
            return True
        parsed = split_host(host_header)
        return parsed is not None and self.allows_name(parsed[0])

    def explicitly_allowed(self, name: str) -> bool:
        """An operator-named host (``allowed_hosts``): an Origin with that name is this service's own page
        served through a proxy."""
        return name in self.explicit or any(name == s[1:] or name.endswith(s) for s in self.suffixes)


# ------------------------------------------------------------------------------------------ command line
def add_serve_arguments(parser: Any) -> None:
    """The limits' options of ``anomalens serve`` (``--host``, ``--port``, ``--token`` are the CLI's own)."""
    d = ServeSettings()
    parser.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                        help="a name clients use for this service besides its address and localhost (a proxy's, "
                             "a DNS name); '.example.com' for a domain, '*' for any; repeatable (other Host "
                             "headers: 400, against DNS rebinding)")
    parser.add_argument("--max-upload-mb", type=float, metavar="MB", default=d.max_upload_mb,
                        help=f"largest request body in MB (default {d.max_upload_mb:g}; 413 beyond)")
    parser.add_argument("--max-request-megapixels", type=float, metavar="MP", default=d.max_request_pixels / 1e6,
                        help=f"decoded pixels of all the images of one request, in millions (default "
                             f"{d.max_request_pixels / 1e6:g}; 413 beyond, checked from the headers before decoding)")
    parser.add_argument("--max-batch", type=int, metavar="N", default=None,
                        help="largest batch the model runs (micro-batching; default: the run's batch_size)")
    parser.add_argument("--max-wait-ms", type=float, metavar="MS", default=d.max_wait_ms,
                        help=f"longest wait for a batch to fill (ms, default {d.max_wait_ms:g})")
    parser.add_argument("--max-per-client", type=int, metavar="N", default=d.max_per_client,
                        help=f"requests in flight from one client address (default {d.max_per_client}; 429 beyond)")
    parser.add_argument("--max-in-flight", type=int, metavar="N", default=d.max_in_flight,
                        help=f"requests being received or scored at once (default {d.max_in_flight}; 503 beyond; "
                             "/health and the pages are not counted)")
    parser.add_argument("--max-connections", type=int, metavar="N", default=d.max_connections,
                        help=f"open connections (default {d.max_connections}; the oldest one waiting for a request "
                             "is closed to make room, 503 when all are busy)")
    parser.add_argument("--header-timeout", type=float, metavar="S", default=d.header_timeout_s,
                        help=f"seconds for a request's line and headers to arrive (default {d.header_timeout_s:g}; "
                             "408 and closed after)")
    parser.add_argument("--body-timeout", type=float, metavar="S", default=d.body_timeout_s,
                        help=f"seconds for a request's body to arrive, and for its answer to be read (default "
                             f"{d.body_timeout_s:g}; 408 and closed after)")
    parser.add_argument("--shutdown-timeout", type=float, metavar="S", default=d.shutdown_timeout_s,
                        help=f"on SIGTERM / Ctrl+C, seconds requests in flight get to finish (default "
                             f"{d.shutdown_timeout_s:g}; 503 after)")
    parser.add_argument("--state", metavar="DIR", default=None,
                        help="folder of the history of verdicts, the operator's feedback and the kept images (default "
                             "$XDG_STATE_HOME/anomalens/serve/<model folder>-<hash>, ~/.local/state without the "
                             "variable; created if missing)")
    parser.add_argument("--no-history", action="store_true",
                        help="keep no history (no /history, no feedback buttons; /metrics still works)")
    parser.add_argument("--history-max-images", type=int, metavar="N", default=d.history_max_images,
                        help=f"images the history keeps (default {d.history_max_images}; the oldest unjudged go first)")
    parser.add_argument("--history-max-age-days", type=float, metavar="DAYS", default=d.history_max_age_days,
                        help=f"images older than this are removed (default {d.history_max_age_days:g})")
    parser.add_argument("--history-max-mb", type=float, metavar="MB", default=d.history_max_mb,
                        help=f"megabytes of images the history keeps (default {d.history_max_mb:g})")


def settings_from_args(args: Any, env_token: str | None = None) -> ServeSettings:
    """The validated settings of ``anomalens serve``'s parsed arguments (ConfigError naming the option)."""
    state = None
    if not getattr(args, "no_history", False):
        from anomalens.feedback.store import default_state_dir

        state = args.state or str(default_state_dir(args.model))
    elif getattr(args, "state", None):
        raise ConfigError("--state and --no-history contradict each other; give one")
    return ServeSettings(
        host=args.host, port=args.port, token=args.token or env_token or None,
        allowed_hosts=tuple(args.allowed_host or ()), max_upload_mb=args.max_upload_mb,
        max_request_pixels=args.max_request_megapixels * 1e6, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_per_client=args.max_per_client, max_in_flight=args.max_in_flight,
        max_connections=args.max_connections, header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout, shutdown_timeout_s=args.shutdown_timeout, state_dir=state,
        history_max_images=getattr(args, "history_max_images", ServeSettings.history_max_images),
        history_max_age_days=getattr(args, "history_max_age_days", ServeSettings.history_max_age_days),
        history_max_mb=getattr(args, "history_max_mb", ServeSettings.history_max_mb), cli=True,
    ).validate()
