"""Connecting to Ray: a local cluster on this machine, or an existing cluster by address — failing fast.

``ray.init(address=...)`` on an address where no cluster answers does not fail: it retries for minutes
(and a wrong port answered by something else makes it wait on the GCS forever). So an address is first
checked with a plain TCP connection of ``CONNECT_TIMEOUT_S`` seconds, and a refusal, an unknown host or
a timeout becomes one line naming the address (``ConfigError``), before any image is read.

Addresses: ``None`` / ``"local"`` start a private local cluster for the job (``num_cpus`` logical CPUs,
no dashboard) and stop it afterwards; ``"auto"`` joins the cluster ``ray start`` runs on this machine;
``HOST:PORT`` joins a cluster's GCS (the head's ``ray start --head --port PORT``); ``ray://HOST:PORT`` goes
through the Ray Client server (port 10001 by default). Without ``address`` the ``RAY_ADDRESS`` variable
is used when set, as Ray itself does. When this process is already connected (``ray.init`` called by
the caller, a notebook, the tests), that connection is used as it is and left open.

Clusters started with ``ray start`` (Ray 2.5x) check a token: a client then needs ``RAY_AUTH_MODE=token``
and the cluster's token (``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``); without it Ray refuses the connection
after about 30 s, and the error line says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Any, Iterator

from anomalens.errors import AnomalensError, ConfigError

RAY_EXTRA = "pip install 'anomalens[ray]'"
CONNECT_TIMEOUT_S = 5.0
GCS_DEFAULT_PORT = 6379
CLIENT_DEFAULT_PORT = 10001


def require_ray(purpose: str = "--engine ray") -> Any:
    """The ``ray`` module (with Ray Data), or ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the 'data' extra: pyarrow, pandas)
    except ImportError:
        raise ConfigError(f"{purpose} needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) that must answer for ``address``, or None for 'local' / 'auto' (nothing to probe)."""
    if address in ("local", "auto"):
        return None
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    if "://" in rest or not rest:
        raise ConfigError(f"--address {address}: not a Ray address; use HOST:PORT (the head's GCS), "
                          "ray://HOST:PORT (Ray Client), auto or local")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not port:
        return rest, CLIENT_DEFAULT_PORT if client else GCS_DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address}: the port must be a number in 1..65535, got '{port}'")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError unless something accepts a TCP connection at ``address`` within ``timeout`` seconds."""
    target = endpoint(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        reason = f"no answer within {timeout:g} s"
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
    else:
        return
    raise ConfigError(f"--address {address}: no Ray cluster answers at {host}:{port} ({reason}); start one there "
                      f"('ray start --head --port {port}') or check the address")


def resolve_address(address: str | None) -> str:
    """The address a job connects to: the given one, else ``RAY_ADDRESS``, else 'local'."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None, quiet: bool = False) -> Iterator[Any]:
    """Connect to Ray for the duration of the block (see the module docstring); yields the ``ray`` module.

    A connection this function opened is closed at the end; one that existed before is left alone.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = resolve_address(address)
    check_reachable(address)
    # -q: not even Ray's own notices (its token set-up warning)
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR if quiet else logging.WARNING,
                               "log_to_driver": not quiet}
    if address == "local":
        options["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ""
        if address != "local" and not os.environ.get("RAY_AUTH_MODE"):
            hint = ("; a cluster started by 'ray start' checks a token by default: set RAY_AUTH_MODE=token here, with "
                    "the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
        raise ConfigError(f"--address {address}: cannot connect to Ray ({' '.join(str(exc).split())}){hint}") from None
    try:
        with _native_log_silenced(quiet):
            yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _native_log_silenced(quiet: bool) -> Iterator[None]:
    """Under ``quiet``, this process's file descriptor 2 goes to /dev/null while Ray runs: Ray's C++ core
    worker writes notices there (e.g. about restartable actors) that no Python logging setting reaches.
    Errors are not lost: they are raised as exceptions, and the command prints them after the block."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def cluster_resources(ray: Any) -> tuple[int, int]:
    """(CPUs, GPUs) of the connected cluster, whole units."""
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 0)), int(resources.get("GPU", 0))


def quiet_ray_data(ray: Any, progress: bool) -> None:
    """Ray Data's progress bars and per-dataset log lines only when progress is wanted."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)


def job_failure(exc: BaseException, what: str) -> AnomalensError:
    """A failed Ray job as one line: the anomalens error a worker raised (a bad image, a broken model file),
    found through Ray's wrappers, else Ray's own reason (a worker that kept dying, an object lost)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AnomalensError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return AnomalensError(f"{what} failed on Ray ({type(exc).__name__}: {lines[-1] if lines else 'no reason given'})")
