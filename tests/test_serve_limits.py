"""The service's limits, against a real uvicorn on 127.0.0.1 started and stopped by each test: request-head and
body timeouts, 100 half-open connections (``/health`` and a well-behaved client still answered), the token
checked before a slot is taken, requests in flight per client and in all, the per-request pixel budget, a
client that disconnects mid-upload, a graceful shutdown (SIGTERM to ``anomalens serve``), CSRF and Host
checks, settings refused with one line, FastAPI's 422 turned into the service's 400.

Clients come from several loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127/8 to
this machine) so that "another client" is another address, as the per-client limit sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'anomalens[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'anomalens[serve]'")

from anomalens.catalog import create_detector  # noqa: E402
from anomalens.cli import main  # noqa: E402
from anomalens.errors import ConfigError  # noqa: E402
from anomalens.serve import ServeSettings, create_app  # noqa: E402
from anomalens.serve.server import bind_socket, make_server  # noqa: E402
from anomalens.serve.settings import HostPolicy  # noqa: E402
from tests.conftest import TINY_PARAMS, make_records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- helpers
def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` × ``height`` RGB pixels (what the pixel budget reads)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Collected(logging.Handler):
    """Every log record of the server (uvicorn's and anomalens') while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records
                if r.exc_info or "Traceback" in r.getMessage() or "Exception in ASGI" in r.getMessage()]


class Server:
    """``create_app(detector, **options)`` under ``make_server`` (the CLI's uvicorn) in a thread."""

    def __init__(self, detector, **options) -> None:
        self.settings = ServeSettings(port=free_port(), **options).validate()
        self.app = create_app(detector, settings=self.settings)
        self.port = self.settings.port
        self.sock = bind_socket(self.settings.host, self.port)
        self.server = make_server(self.app, self.settings, log_level="warning")
        self.log = Collected()  # after the Config: uvicorn's dictConfig resets its loggers' handlers
        self.loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access", "anomalens.serve")]
        for logger in self.loggers:
            logger.addHandler(self.log)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        for logger in self.loggers:
            logger.removeHandler(self.log)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    @property
    def service(self):
        return self.app.state.service

    # -- clients ---------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                source: str = "127.0.0.2", timeout: float = 60) -> tuple[int, dict, dict]:
        """A well-behaved client (http.client) from ``source``: (status, JSON body, headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=(source, 0))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else {}, dict(response.getheaders())
        finally:
            conn.close()

    def raw(self, data: bytes, source: str = "127.0.0.1") -> socket.socket:
        """A connection that sends ``data`` and nothing more."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30, source_address=(source, 0))
        sock.sendall(data)
        return sock


def read_answer(sock: socket.socket, timeout: float) -> tuple[int | None, dict | None]:
    """(status, JSON) of what the server wrote before closing the connection; (None, None) if it closed it
    without a word. Fails when the connection is still open after ``timeout`` seconds. A whole answer that keeps
    the connection alive is returned at once (not after the server's keep-alive timeout, 5 s)."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while not _a_whole_answer_kept_alive(data):
        assert time.monotonic() < deadline, f"the connection is still open after {timeout} s: {data[:200]!r}"
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    if not data:
        return None, None
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


def _a_whole_answer_kept_alive(data: bytes) -> bool:
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    fields = {k.strip().lower(): v.strip().lower() for k, _, v in
              (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    length = fields.get(b"content-length")
    return length is not None and len(body) >= int(length) and fields.get(b"connection") != b"close"


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def assert_one_line(answer: dict, *fragments: str) -> None:
    detail = answer["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    for fragment in fragments:
        assert fragment in detail, detail


def upload_head(length: int, path: str = "/predict", content_type: str = "image/png") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def detector():
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(make_records(20, 0, seed=1, size=96),
                                                                    progress=False)
    detector.calibrate(make_records(6, 6, seed=3, size=96), method="f1", progress=False)
    return detector


@pytest.fixture(scope="module")
def good() -> bytes:
    return png_bytes(make_records(1, 0, seed=7, size=96)[0].source)


# ------------------------------------------------------------------------------------ starvation
def test_100_half_open_connections_leave_health_and_a_good_client_served(detector, good):
    """50 uploads that announce more bytes than they send (one client) and 50 connections that send half a
    request head, against 32 connections at most: the uploads beyond the client's 8 slots get 429 at once,
    the 8 get 408 at the body timeout, the half heads are closed (oldest first, to make room) or get 408 at
    the header timeout — and meanwhile /health and another client's image are answered."""
    options = {"max_connections": 32, "max_per_client": 8, "max_in_flight": 16, "header_timeout_s": 2.0, "body_timeout_s": 3.0}
    with Server(detector, **options) as server:
        held, refused = [], []
        for i in range(50):  # one at a time, so that which ones hold a slot is known
            sock = server.raw(upload_head(len(good)) + good[:100], source="127.0.0.4")
            if i < 8:
                held.append(sock)
                deadline = time.monotonic() + 10
                while server.service.in_flight < i + 1:
                    assert time.monotonic() < deadline, server.service.counts
                    time.sleep(0.01)
            else:
                refused.append(read_answer(sock, 10))
        assert [s for s, _ in refused] == [429] * 42
        assert_one_line(refused[0][1], "too many requests in flight from 127.0.0.4", "at most 8")
        heads = [server.raw(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le", source="127.0.0.3")
                 for _ in range(50)]
        start = time.monotonic()
        status, health, _ = server.request("GET", "/health")
        assert status == 200 and health["status"] == "ok"
        assert health["load"]["in_flight"] == 8  # the client's 8 slots, no more
        status, answer, _ = server.request("POST", "/predict", good)
        assert status == 200 and answer["score"] == pytest.approx(
            float(detector.predict([make_records(1, 0, seed=7, size=96)[0]], progress=False).scores[0]), rel=1e-5)
        assert time.monotonic() - start < 30

        for status, body in [read_answer(sock, 20) for sock in held]:
            assert status == 408
            assert_one_line(body, "did not arrive within 3 s")
        head_answers = [read_answer(sock, 20) for sock in heads]
        evicted = [s for s, _ in head_answers if s is None]
        timed_out = [b for s, b in head_answers if s == 408]
        assert len(evicted) + len(timed_out) == 50 and len(evicted) >= 18, [s for s, _ in head_answers]
        for body in timed_out:
            assert_one_line(body, "request head", "2 s")
        wait_until(lambda: server.service.in_flight == 0)
        status, health, _ = server.request("GET", "/health")
        assert status == 200 and health["load"]["in_flight"] == 0 and health["counts"]["timeouts"] == 8
        assert server.request("POST", "/predict", good)[0] == 200
    assert not server.log.tracebacks(), server.log.tracebacks()


def test_the_token_is_checked_before_a_slot_is_taken(detector, good):
    """Half-sent uploads without the token are refused on their headers (401) and hold nothing, however many
    addresses send them; the client with the token is served."""
    with Server(detector, token="s3cret", max_in_flight=4, max_per_client=2, body_timeout_s=30) as server:
        socks = [server.raw(upload_head(len(good)) + good[:50], source=f"127.0.1.{i}") for i in range(1, 21)]
        answers = [read_answer(sock, 10) for sock in socks]
        assert {s for s, _ in answers} == {401}
        assert_one_line(answers[0][1], "bearer token")
        status, answer, _ = server.request("POST", "/predict", good, {"Authorization": "Bearer s3cret"})
        assert status == 200 and "score" in answer
        wait_until(lambda: server.service.in_flight == 0)  # freed just after the answer is written


def test_requests_in_flight_are_bounded_per_client_and_in_all(detector, good):
    with Server(detector, max_per_client=2, max_in_flight=3, body_timeout_s=30) as server:
        held = [server.raw(upload_head(len(good)) + good[:10], source="127.0.0.5") for _ in range(2)]
        deadline = time.monotonic() + 10
        while server.service.in_flight < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, answer, headers = server.request("POST", "/predict", good, source="127.0.0.5")
        assert status == 429 and headers.get("retry-after") == "1"
        assert_one_line(answer, "too many requests in flight from 127.0.0.5", "at most 2")
        held.append(server.raw(upload_head(len(good)) + good[:10], source="127.0.0.6"))
        while server.service.in_flight < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, answer, headers = server.request("POST", "/predict", good, source="127.0.0.7")
        assert status == 503 and headers.get("retry-after") == "1"
        assert_one_line(answer, "busy", "at most 3")
        assert server.request("GET", "/health", source="127.0.0.7")[0] == 200  # never counted
        held[0].sendall(good[10:])  # one upload completes: its slot frees, and the next client is served
        assert read_answer(held[0], 30)[0] == 200
        assert server.request("POST", "/predict", good, source="127.0.0.7")[0] == 200
        for sock in held[1:]:
            sock.close()
    assert not server.log.tracebacks(), server.log.tracebacks()


# ------------------------------------------------------------------------------ timeouts, disconnects
def test_a_client_disconnecting_mid_upload_leaves_no_traceback_and_no_500(detector, good):
    with Server(detector, body_timeout_s=2.0) as server:
        for _ in range(3):
            sock = server.raw(upload_head(len(good)) + good[:100], source="127.0.0.8")
            time.sleep(0.1)
            sock.close()
        multipart = (b"--b\r\nContent-Disposition: form-data; name=f; filename=a.png\r\n\r\n" + good[:300])
        sock = server.raw(upload_head(len(good) + 200, "/predict/batch", "multipart/form-data; boundary=b")
                          + multipart)
        time.sleep(0.1)
        sock.close()
        deadline = time.monotonic() + 10
        while server.service.counts["disconnected"] < 4:
            assert time.monotonic() < deadline, server.service.counts
            time.sleep(0.05)
        wait_until(lambda: server.service.in_flight == 0)
        assert server.service.counts["failed"] == 0
        # announced more than it sends: 408 at the body timeout, one line, connection closed
        sock = server.raw(upload_head(len(good)) + good[:100], source="127.0.0.9")
        start = time.monotonic()
        status, answer = read_answer(sock, 15)
        assert status == 408 and 1.5 < time.monotonic() - start < 10
        assert_one_line(answer, "did not arrive within 2 s")
        assert server.request("POST", "/predict", good)[0] == 200
    assert not server.log.tracebacks(), server.log.tracebacks()
    assert not [r for r in server.log.records if " 500" in r.getMessage()]


def test_graceful_shutdown_finishes_requests_in_flight_and_answers_the_rest_503(detector, good):
    """Shutdown while one upload is half-sent and completes afterwards (answered 200), another never completes
    (503 before the shutdown's time is up) and a third is stuck in the model (503 when the time is up): no
    traceback, no 500; a new request meanwhile is 503 too."""
    server = Server(detector, shutdown_timeout_s=2.0, body_timeout_s=60)
    model, release = server.service.model, threading.Event()
    result_json = model.result_json

    def slow(name, *args):  # the third request's post-processing outlasts the shutdown's time
        if name == "blocked":
            release.wait(30)
        return result_json(name, *args)

    model.result_json = slow
    with server:
        finishing = server.raw(upload_head(len(good)) + good[:100], source="127.0.0.10")
        stuck = server.raw(upload_head(len(good)) + good[:100], source="127.0.0.11")
        blocked = server.raw(upload_head(len(good), "/predict?name=blocked") + good, source="127.0.0.12")
        waiting = server.raw(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # head not complete yet
        wait_until(lambda: server.service.in_flight == 3 and server.service.counts["images"] == 0
                   and server.service.batcher.stats()["images"] == 1)  # the third one is past the model
        server.server.should_exit = True  # what SIGTERM does (the CLI test below sends the signal)
        wait_until(lambda: server.service.draining)
        finishing.sendall(good[100:])
        status, answer = read_answer(finishing, 20)
        assert status == 200 and "score" in answer
        status, answer = read_answer(stuck, 20)
        assert status == 503
        assert_one_line(answer, "shutting down", "body was not complete")
        status, answer = read_answer(blocked, 20)
        assert status == 503
        assert_one_line(answer, "shut down before this request was answered")
        assert read_answer(waiting, 20) == (None, None)  # closed: it had no request yet
        release.set()
    assert not server.log.tracebacks(), server.log.tracebacks()
    assert server.service.counts["failed"] == 0


@pytest.mark.serve  # `anomalens serve` as a process: the serve tier, in make test, not make test-fast
def test_sigterm_to_anomalens_serve_mid_request(detector, good, tmp_path):
    """The command itself: SIGTERM while a request is half-sent → it is answered once complete, the server
    stops, stderr has no traceback."""
    run = detector.save(tmp_path / "run")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-m", "anomalens.cli", "serve", str(run), "--port", str(port), "-q",
                                "--shutdown-timeout", "5", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "anomalens serve did not start"
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            time.sleep(0.2)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(upload_head(len(good)) + good[:100])
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(good[100:])
        status, answer = read_answer(sock, 30)
        assert status == 200 and "score" in answer
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = stderr.decode()
    assert "Traceback" not in text and "Exception in ASGI" not in text, text
    assert process.returncode in (0, 143), (process.returncode, text)


# ------------------------------------------------------------------------------------ pixel budget
def test_four_40_megapixel_pngs_in_one_request_are_refused_before_decoding(detector):
    """The issue's case: four 8000 × 5000 PNGs (each within the 40 M per-image limit) in a small request:
    413 from the headers at the default budget (64 M pixels per request), nothing decoded."""
    body = png_header_only(8000, 5000)
    files = b"".join(b"--b\r\nContent-Disposition: form-data; name=f; filename=%d.png\r\n"
                     b"Content-Type: image/png\r\n\r\n" % i + body + b"\r\n" for i in range(4)) + b"--b--\r\n"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Server(detector) as server:
        assert server.settings.max_request_pixels == 64_000_000
        status, answer, _ = server.request("POST", "/predict/batch", files,
                                           {"Content-Type": "multipart/form-data; boundary=b"})
        assert status == 413
        assert_one_line(answer, "160 M pixels", "64 M pixels per request")
        assert server.service.pixels.used == 0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_the_pixel_budget_counts_every_image_of_a_request(detector):
    image = png_bytes(np.full((600, 600, 3), 128, np.uint8))  # 360 000 pixels each

    def multipart(n: int) -> bytes:
        return b"".join(b"--b\r\nContent-Disposition: form-data; name=f; filename=%d.png\r\n\r\n" % i + image
                        + b"\r\n" for i in range(n)) + b"--b--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    with Server(detector, max_request_pixels=1_000_000, max_pixels_in_flight=1_000_000) as server:
        status, answer, _ = server.request("POST", "/predict/batch", multipart(3), headers)
        assert status == 413
        assert_one_line(answer, "1.08 M pixels", "limit of 1 M pixels per request")
        status, answer, _ = server.request("POST", "/predict/batch", multipart(2), headers)
        assert status == 200 and answer["count"] == 2 and answer["errors"] == 0
        assert server.request("POST", "/predict", image)[0] == 200
        limits = server.request("GET", "/model")[1]["limits"]
        assert limits["max_request_pixels"] == 1_000_000 and limits["max_per_client"] == 8


def test_the_pixels_in_flight_gate_serves_in_turn_and_gives_up_with_503():
    from anomalens.serve.service import PixelGate
    from anomalens.serve.uploads import UploadError

    async def scenario() -> list[str]:
        gate = PixelGate(10, wait_s=0.3)
        order: list[str] = []
        release = asyncio.Event()

        async def user(name: str, pixels: int, hold: bool) -> None:
            async with gate.hold(pixels):
                order.append(name)
                if hold:
                    await release.wait()

        first = asyncio.create_task(user("a", 6, True))
        await asyncio.sleep(0.01)
        with pytest.raises(UploadError) as refused:
            await user("late", 6, False)  # waits 0.3 s for pixels that do not free: 503
        assert refused.value.status == 503 and "busy" in refused.value.message
        second = asyncio.create_task(user("b", 6, False))
        third = asyncio.create_task(user("c", 4, False))  # fits now, but b came first: c waits its turn
        await asyncio.sleep(0.05)
        assert order == ["a"] and gate.used == 6
        release.set()
        await asyncio.gather(first, second, third)
        assert gate.used == 0 and not gate._waiters
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c"]


# ----------------------------------------------------------------------------------- CSRF and Host
def test_cross_origin_posts_and_foreign_hosts_are_refused(detector, good):
    with Server(detector, allowed_hosts=("inspect.example",)) as server:
        own = f"http://127.0.0.1:{server.port}"
        refused = [
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://127.0.0.1:{server.port + 1}"},  # another port is another origin
            {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
            {"Referer": "http://evil.example/page.html", "Content-Type": "application/x-www-form-urlencoded"},
        ]
        for headers in refused:
            status, answer, _ = server.request("POST", "/predict", good, headers)
            assert status == 403, headers
            assert_one_line(answer, "cross-origin request refused")
        accepted = [
            {},  # curl, a script: no browser headers
            {"Content-Type": "application/x-www-form-urlencoded"},  # curl --data-binary
            {"Origin": own, "Sec-Fetch-Site": "same-origin"},  # the operator page
            {"Origin": f"http://localhost:{server.port}", "Host": f"localhost:{server.port}"},
            {"Origin": "https://inspect.example"},  # the page behind a proxy the operator named
        ]
        for headers in accepted:
            status, answer, _ = server.request("POST", "/predict", good, headers)
            assert status == 200, (headers, answer)
        for host in ("evil.example", f"evil.example:{server.port}", "192.168.1.10", "127.0.0.1.evil.example", "[::1"):
            status, answer, _ = server.request("GET", "/health", headers={"Host": host})
            assert status == 400, host
            assert_one_line(answer, "is not a name of this service")
            assert server.request("POST", "/predict", good, {"Host": host})[0] == 400
        for host in (f"127.0.0.1:{server.port}", "localhost", "LOCALHOST:1", "[::1]:8000", "inspect.example",
                     "app.localhost"):
            assert server.request("GET", "/health", headers={"Host": host})[0] == 200, host
    with Server(detector, token="s3cret") as server:  # refused before the token is even looked at
        status, _, _ = server.request("POST", "/predict", good, {"Origin": "http://evil.example",
                                                                 "Authorization": "Bearer s3cret"})
        assert status == 403


def test_host_policy_by_bound_address():
    loopback = HostPolicy("127.0.0.1")
    assert loopback.allows("localhost:8000") and loopback.allows("127.0.0.1") and loopback.allows("[::1]:80")
    assert not loopback.allows("10.0.0.5") and not loopback.allows("evil.example") and not loopback.allows("")
    everywhere = HostPolicy("0.0.0.0")
    assert everywhere.allows("10.0.0.5:8000") and everywhere.allows("[fe80::1]") and everywhere.allows(socket.gethostname())
    assert not everywhere.allows("evil.example")
    named = HostPolicy("127.0.0.1", (".example.com", "line-7"))
    assert named.allows("a.b.example.com") and named.allows("example.com") and named.allows("LINE-7:80")
    assert not named.allows("badexample.com")
    assert HostPolicy("127.0.0.1", ("*",)).allows("anything.example")


# --------------------------------------------------------------------------------- settings, errors
@pytest.mark.parametrize("option, value, fragment", [
    ("--port", "99999", "--port must be an integer from 1 to 65535, got 99999"),
    ("--port", "0", "--port must be"),
    ("--max-upload-mb", "inf", "--max-upload-mb must be a number of MB > 0"),
    ("--max-upload-mb", "nan", "--max-upload-mb must be"),
    ("--max-upload-mb", "-1", "--max-upload-mb must be"),
    ("--max-upload-mb", "0", "--max-upload-mb must be"),
    ("--max-wait-ms", "nan", "--max-wait-ms must be a number of milliseconds from 0 to 10000, got nan"),
    ("--max-wait-ms", "inf", "--max-wait-ms must be"),
    ("--max-wait-ms", "-5", "--max-wait-ms must be"),
    ("--max-connections", "0", "--max-connections must be a whole number ≥ 1, got 0"),
    ("--max-in-flight", "0", "--max-in-flight must be"),
    ("--max-per-client", "-1", "--max-per-client must be"),
    ("--max-batch", "0", "--max-batch must be"),
    ("--max-request-megapixels", "nan", "--max-request-megapixels must be"),
    ("--max-request-megapixels", "0", "--max-request-megapixels must be"),
    ("--header-timeout", "0", "--header-timeout must be a number of seconds > 0"),
    ("--body-timeout", "inf", "--body-timeout must be"),
    ("--shutdown-timeout", "nan", "--shutdown-timeout must be"),
    ("--token", "two words", "--token / ANOMALENS_TOKEN must be printable ASCII without spaces"),
    ("--allowed-host", "http://x/", "--allowed-host must be host names"),
    ("--host", " ", "--host must be an address"),
])
def test_nonsensical_settings_are_one_line_before_anything_loads(option, value, fragment, capsys, tmp_path):
    code = main(["serve", str(tmp_path / "no-such-run"), option, value])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("anomalens: error: "), err
    assert fragment in err, err


def test_python_api_settings_are_validated_with_one_line(detector):
    for options, fragment in (({"max_wait_ms": float("nan")}, "max_wait_ms must be"),
                              ({"max_upload_bytes": float("inf")}, "max_upload_mb must be"),
                              ({"port": 99999}, "port must be an integer from 1 to 65535"),
                              ({"max_connections": 0}, "max_connections must be"),
                              ({"max_in_fligth": 3}, "unknown service setting(s) max_in_fligth"),
                              ({"max_request_pixels": 10**9, "max_pixels_in_flight": 10**8}, "could never be served")):
        with pytest.raises(ConfigError) as error:
            create_app(detector, **options)
        assert fragment in str(error.value) and "\n" not in str(error.value)
    settings = ServeSettings(max_upload_mb=2, max_wait_ms=1).validate()
    assert settings.max_upload_bytes == 2_000_000 and isinstance(settings.port, int)


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ConfigError, match=r"cannot listen on 127.0.0.1:\d+: .*in use"):
            bind_socket("127.0.0.1", taken.getsockname()[1])


def test_invalid_parameters_are_the_services_one_line_400_not_fastapis_422(detector, good):
    with Server(detector) as server:
        for path, fragment in (("/predict?heatmap=maybe", "invalid query parameter 'heatmap'"),
                               ("/predict?name=" + "x" * 201, "invalid query parameter 'name'"),
                               ("/predict/batch?heatmap=2", "invalid query parameter 'heatmap'")):
            status, answer, _ = server.request("POST", path, good)
            assert status == 400, (path, answer)
            assert_one_line(answer, fragment)
        status, answer, _ = server.request("GET", "/predict")
        assert status == 405 and isinstance(answer["detail"], str)
        assert server.request("GET", "/nothing-here")[0] == 404
