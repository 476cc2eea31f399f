"""The sinks against real peers: Debian's mosquitto started here on a free 127.0.0.1 port with a paho
subscriber reading back, a local HTTP receiver for the webhook, and the on-disk spool under faults (peer
down at start, killed mid-run, 500s, a peer that hangs, the spool's bound, a spool folder that cannot be
written, a file-size limit standing in for a full disk). OPC UA is in test_sinks_opcua.py.

Every test checks the accounting rule: each record sent is in the end sent, dropped (counted) or pending.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from anomalens.errors import AnomalensError, ConfigError
from anomalens.line.sinks import SinkSettings, open_sinks, parse_sink_spec, parse_sink_specs
from anomalens.line.sinks.__main__ import main as check_specs_main
from anomalens.line.sinks.spool import Spool

FAST = SinkSettings(retry_initial=0.05, retry_max=0.3, timeout=1.0)
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="Debian's mosquitto is not installed "
                                                                "(make test installs it)")
LOG = logging.getLogger("test.sinks")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def record(sequence: int, anomalous: bool = False) -> dict:
    return {"source": "hot", "image": f"part-{sequence:04d}.png", "frame_time": None,
            "time": "2026-01-01T00:00:00Z", "score": 0.5 + sequence, "normalized_score": 0.1 * sequence,
            "anomalous": anomalous, "regions": [], "model_id": "padim-test", "latency_ms": 3.0,
            "sequence": sequence}


def accounted(stats: dict, sent_total: int) -> bool:
    return stats["sent"] + stats["dropped"] + stats["pending"] == sent_total


def log_lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ---- spec strings


@pytest.mark.parametrize("spec, kind, name", [
    ("jsonl", "jsonl", "jsonl:-"), ("jsonl:-", "jsonl", "jsonl:-"), ("jsonl:out/r.jsonl", "jsonl", "jsonl:out/r.jsonl"),
    ("mqtt://127.0.0.1:1884/plant/line1", "mqtt", "mqtt://127.0.0.1:1884/plant/line1"),
    ("mqtt://broker", "mqtt", "mqtt://broker:1883/anomalens"), ("opcua://0.0.0.0", "opcua", "opcua://0.0.0.0:4840"),
    ("webhook:https://example.org/hook?k=1", "webhook", "webhook:https://example.org/hook?k=1")])
def test_specs_parse_to_one_canonical_name(spec, kind, name):
    parsed = parse_sink_spec(spec)
    assert (parsed.kind, parsed.name) == (kind, name)


@pytest.mark.parametrize("spec, problem", [
    ("kafka://x", "unknown sink"), ("mqtt://h:0/x", "port"), ("mqtt://h:70000/x", "port"),
    ("mqtt://:1883/x", "no host"), ("mqtt://h/a/+/b", "may not hold"), ("mqtt://h/a/#", "'#'"),
    ("mqtt://u:p@h/x", "passwords"), ("opcua://h:4840/path", "opcua://HOST:PORT"),
    ("webhook:ftp://h/x", "webhook:http"),
    ("webhook:http://h:port/x", "port"), ("jsonl:", "no file name")])
def test_a_bad_spec_is_one_clear_line(spec, problem, capsys):
    with pytest.raises(ConfigError, match=problem) as error:
        parse_sink_spec(spec)
    assert "\n" not in str(error.value)
    assert check_specs_main([spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_the_same_sink_twice_is_refused_and_the_checker_describes_good_specs(capsys):
    with pytest.raises(ConfigError, match="given twice"):
        parse_sink_specs(["jsonl", "jsonl:-"])
    assert check_specs_main(["jsonl", "mqtt://127.0.0.1/line1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["jsonl:-: JSON lines to stdout",
                   ("mqtt://127.0.0.1:1883/line1: MQTT broker 127.0.0.1:1883: QoS 1 to line1/ok or line1/defect, "
                    "retained line1/last")]


# ---- JSON lines


def test_jsonl_writes_one_line_per_record_to_stdout_and_a_file(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "results.jsonl"
    out.write_text('{"earlier": "run"}\n')
    records = [dict(record(i, anomalous=i % 3 == 0), score=np.float32(i) / 4) for i in range(7)]
    sinks = open_sinks(["jsonl", f"jsonl:{out}"], model_id="m", spool_dir=None)
    for r in records:
        sinks.send(r)
    sinks.close()
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[0] == {"earlier": "run"}  # appended, never replaced
    assert printed == written[1:]
    assert [r["sequence"] for r in printed] == list(range(7))
    assert [r["score"] for r in printed] == [i / 4 for i in range(7)]  # numpy values as plain numbers
    for stats in sinks.stats().values():
        assert stats == {"sent": 7, "failed": 0, "spooled": 0, "dropped": 0, "pending": 0}


def test_a_record_sent_after_close_is_counted_and_a_non_dict_refused(tmp_path):
    with open_sinks([f"jsonl:{tmp_path / 'r.jsonl'}"], model_id="m", spool_dir=None) as sinks:
        sinks.send(record(0))
        with pytest.raises(TypeError, match="dict of JSON values"):
            sinks.send([1, 2])
    sinks.send(record(1))
    assert sinks.stats()[f"jsonl:{tmp_path / 'r.jsonl'}"] == {"sent": 1, "failed": 0, "spooled": 0, "dropped": 1,
                                                              "pending": 0}


def test_jsonl_to_a_missing_folder_fails_at_open_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        open_sinks([f"jsonl:{tmp_path / 'nowhere' / 'r.jsonl'}"], model_id="m", spool_dir=None)
    with pytest.raises(ConfigError, match="is a folder"):
        open_sinks([f"jsonl:{tmp_path}"], model_id="m", spool_dir=None)


# ---- the spool on its own


def test_the_spool_keeps_order_bound_and_cursor_across_restarts(tmp_path, caplog):
    def spool():
        return Spool(tmp_path / "s", name="t", max_records=5, segment_records=2, memory_records=10, log=LOG)

    first = spool()
    for i in range(12):
        first.append(json.dumps({"sequence": i}))
    assert len(first) == 5 and first.dropped == 7  # the oldest went, each counted
    assert len(log_lines(caplog, "the spool is full")) == 1  # one line, not one per record
    assert json.loads(first.peek())["sequence"] == 7
    first.pop()
    first.close()

    second = spool()  # a restart: what was left, in order, from where delivery stopped
    seen = []
    while (line := second.peek()) is not None:
        seen.append(json.loads(line)["sequence"])
        second.pop()
    assert seen == [8, 9, 10, 11]
    second.append(json.dumps({"sequence": 12}))
    second.close()
    assert [json.loads(Path(p).read_text())["sequence"] for p in sorted((tmp_path / "s").glob("segment-*"))] == [12]


def test_a_damaged_spool_line_is_skipped_and_counted(tmp_path, caplog):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "segment-000000001.jsonl").write_text('{"sequence": 0}\n{"sequence": 1}\n{"seq')  # cut by a crash
    spool = Spool(folder, name="t", max_records=100, segment_records=10, memory_records=10, log=LOG)
    spool.append(json.dumps({"sequence": 2}))  # a new run writes a new segment, never after the cut line
    seen = []
    while (line := spool.peek()) is not None:
        seen.append(json.loads(line)["sequence"])
        spool.pop()
    assert seen == [0, 1, 2] and spool.dropped == 1
    assert len(log_lines(caplog, "damaged line")) == 1


def test_one_spool_folder_serves_one_process_at_a_time(tmp_path):
    first = Spool(tmp_path / "s", name="t", max_records=5, segment_records=2, memory_records=10, log=LOG)
    with pytest.raises(AnomalensError, match="in use by another anomalens process"):
        Spool(tmp_path / "s", name="t", max_records=5, segment_records=2, memory_records=10, log=LOG)
    first.close()


# ---- the webhook, against a local HTTP receiver


class Receiver:
    """A local HTTP server: ``mode`` is "ok" (200), "fail" (500), "reject" (400) or "hang" (waits for
    ``release`` and then closes without an answer). Only the records it answered 200 count as received."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.received: list[dict] = []
        self.requests = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests += 1
                mode = receiver.mode
                if mode == "hang":
                    receiver.release.wait(20)
                    self.close_connection = True
                    return
                code = {"ok": 200, "fail": 500, "reject": 400}[mode]
                if code == 200:
                    assert self.headers["Content-Type"] == "application/json"
                    receiver.received.append(body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def sequences(self) -> list[int]:
        return [r["sequence"] for r in self.received]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def test_webhook_posts_each_record_as_json(receiver, tmp_path):
    sinks = open_sinks([f"webhook:{receiver.url}"], model_id="m", spool_dir=tmp_path, settings=FAST)
    for i in range(5):
        sinks.send(record(i, anomalous=i == 3))
    sinks.close()
    assert receiver.sequences() == [0, 1, 2, 3, 4]
    assert receiver.received[3]["anomalous"] is True
    assert sinks.stats()[f"webhook:{receiver.url}"] == {"sent": 5, "failed": 0, "spooled": 0, "dropped": 0,
                                                       "pending": 0}


def test_webhook_500s_are_retried_in_order_with_one_line_down_and_one_back(receiver, tmp_path, caplog):
    from anomalens.monitoring import LineMetrics

    caplog.set_level(logging.INFO, "anomalens.line.sinks")
    metrics = LineMetrics()
    receiver.mode = "fail"
    sinks = open_sinks([f"webhook:{receiver.url}"], model_id="m", spool_dir=tmp_path, settings=FAST, metrics=metrics)
    name = f"webhook:{receiver.url}"
    for i in range(10):
        sinks.send(record(i))
    wait_until(lambda: receiver.requests >= 3 and sinks.stats()[name]["spooled"] == 10, what="500s and spooling")
    assert list(tmp_path.rglob("segment-*.jsonl"))  # spilled to disk while the peer fails
    receiver.mode = "ok"
    for i in range(10, 15):
        sinks.send(record(i))
    wait_until(lambda: sinks.stats()[name]["sent"] == 15, what="the replay")
    sinks.close()
    assert receiver.sequences() == list(range(15))  # nothing lost, nothing twice, in order
    stats = sinks.stats()[name]
    assert stats["failed"] >= 3 and stats["dropped"] == 0 and stats["pending"] == 0
    assert len(log_lines(caplog, "down (HTTP 500")) == 1 and len(log_lines(caplog, "back after")) == 1
    body = metrics.render()[0].decode()
    counted = [line for line in body.splitlines() if "sink" in line and name in line and not line.startswith("#")]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == stats["failed"]
    assert not list(tmp_path.rglob("segment-*.jsonl"))  # delivered segments are removed


def test_a_record_the_peer_refuses_is_dropped_counted_and_the_next_goes_on(receiver, tmp_path, caplog):
    receiver.mode = "reject"
    sinks = open_sinks([f"webhook:{receiver.url}"], model_id="m", spool_dir=tmp_path, settings=FAST)
    name = f"webhook:{receiver.url}"
    sinks.send(record(0))
    wait_until(lambda: sinks.stats()[name]["dropped"] == 1, what="the refusal")
    receiver.mode = "ok"
    sinks.send(record(1))
    sinks.close()
    assert receiver.sequences() == [1]
    assert sinks.stats()[name] == {"sent": 1, "failed": 1, "spooled": 0, "dropped": 1, "pending": 0}
    assert len(log_lines(caplog, "refused a record (HTTP 400")) == 1


def test_a_hanging_webhook_never_blocks_send_and_gets_everything_after(receiver, tmp_path, caplog):
    receiver.mode = "hang"
    settings = SinkSettings(retry_initial=0.05, retry_max=0.2, timeout=1.0)
    sinks = open_sinks([f"webhook:{receiver.url}"], model_id="m", spool_dir=tmp_path, settings=settings)
    name = f"webhook:{receiver.url}"
    sinks.send(record(0))
    wait_until(lambda: receiver.requests == 1, what="the first request")  # the worker now waits on the peer
    for i in range(1, 40):  # returns at once: had send waited on the peer, the peer would still hold the release
        sinks.send(record(i))
    receiver.release.set()
    assert receiver.requests == 1  # every record handed over while the peer still held the first request
    wait_until(lambda: sinks.stats()[name]["pending"] == 40, what="spooling after the timeout")
    receiver.mode = "ok"
    wait_until(lambda: sinks.stats()[name]["sent"] == 40, what="the replay")
    sinks.close()
    assert receiver.sequences() == list(range(40))
    assert len(log_lines(caplog, "down (")) == 1


def test_a_full_queue_drops_the_oldest_and_counts_them(receiver, tmp_path, caplog):
    receiver.mode = "hang"
    settings = SinkSettings(queue_size=3, retry_initial=0.05, retry_max=0.2, timeout=5.0)
    sinks = open_sinks([f"webhook:{receiver.url}"], model_id="m", spool_dir=tmp_path, settings=settings)
    name = f"webhook:{receiver.url}"
    sinks.send(record(0))
    wait_until(lambda: receiver.requests == 1, what="the first request")
    for i in range(1, 11):
        sinks.send(record(i))
    assert sinks.stats()[name]["dropped"] == 7  # 10 more for 3 places: the 7 oldest went
    assert len(log_lines(caplog, "the oldest are dropped and counted")) == 1
    receiver.mode = "ok"
    receiver.release.set()
    sinks.close(timeout=10)
    assert receiver.sequences() == [0, 8, 9, 10]  # the one in hand first, then the newest three
    assert accounted(sinks.stats()[name], 11) and sinks.stats()[name]["pending"] == 0


def test_the_spool_left_by_a_stopped_run_is_delivered_first_by_the_next(receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO, "anomalens.line.sinks")
    receiver.mode = "fail"
    name = f"webhook:{receiver.url}"
    first = open_sinks([name], model_id="m", spool_dir=tmp_path, settings=FAST)
    for i in range(6):
        first.send(record(i))
    wait_until(lambda: first.stats()[name]["spooled"] == 6, what="spooling")
    first.close(timeout=0.5)
    assert first.stats()[name]["pending"] == 6 and accounted(first.stats()[name], 6)
    receiver.mode = "ok"
    second = open_sinks([name], model_id="m", spool_dir=tmp_path, settings=FAST)
    second.send(record(6))
    wait_until(lambda: second.stats()[name]["pending"] == 0, what="the replay")
    second.close()
    assert receiver.sequences() == list(range(7))
    assert len(log_lines(caplog, "6 records spooled by an earlier run")) == 1


def test_without_a_spool_folder_what_is_still_held_at_exit_is_counted_dropped(receiver, caplog):
    receiver.mode = "fail"
    name = f"webhook:{receiver.url}"
    sinks = open_sinks([name], model_id="m", spool_dir=None, settings=FAST)
    for i in range(5):
        sinks.send(record(i))
    wait_until(lambda: sinks.stats()[name]["spooled"] == 5, what="the in-memory spool")
    sinks.close(timeout=0.2)
    assert sinks.stats()[name] == {"sent": 0, "failed": sinks.stats()[name]["failed"], "spooled": 5, "dropped": 5,
                                   "pending": 0}
    assert len(log_lines(caplog, "5 records held in memory")) == 1


@pytest.mark.parametrize("unwritable", ["read-only folder", "a file in the way"])
def test_a_spool_folder_that_cannot_be_written_falls_back_to_memory(receiver, tmp_path, caplog, unwritable):
    if unwritable == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the other case covers the fallback")
        spool_dir = tmp_path / "ro"
        spool_dir.mkdir()
        spool_dir.chmod(0o500)
    else:
        (tmp_path / "file").write_text("")
        spool_dir = tmp_path / "file" / "spool"
    receiver.mode = "fail"
    name = f"webhook:{receiver.url}"
    settings = SinkSettings(retry_initial=0.05, retry_max=0.2, timeout=1.0, memory_records=4)
    sinks = open_sinks([name], model_id="m", spool_dir=spool_dir, settings=settings)
    for i in range(10):
        sinks.send(record(i))
    wait_until(lambda: sinks.stats()[name]["pending"] == 4, what="the in-memory spool")
    assert sinks.stats()[name]["dropped"] == 6  # the bound of the memory spool, counted
    assert len(log_lines(caplog, "cannot write the spool")) == 1
    assert len(log_lines(caplog, "in-memory spool is full")) == 1
    receiver.mode = "ok"
    wait_until(lambda: sinks.stats()[name]["pending"] == 0, what="the replay")
    sinks.close()
    assert receiver.sequences() == [6, 7, 8, 9]
    assert accounted(sinks.stats()[name], 10)


def test_a_disk_that_refuses_writes_mid_run_falls_back_to_memory_in_order(receiver, tmp_path, caplog):
    """RLIMIT_FSIZE makes the kernel refuse to grow a file (EFBIG), as a full disk refuses (ENOSPC)."""
    receiver.mode = "fail"
    name = f"webhook:{receiver.url}"
    settings = SinkSettings(retry_initial=0.05, retry_max=0.2, timeout=1.0, spool_segment_records=1000)
    sinks = open_sinks([name], model_id="m", spool_dir=tmp_path, settings=settings)
    line_bytes = len(json.dumps(record(10))) + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * line_bytes, hard))  # room for about 4 records
    try:
        for i in range(12):
            sinks.send(record(10 + i))
        wait_until(lambda: sinks.stats()[name]["spooled"] == 12, what="spooling")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    on_disk = sum(len(p.read_text().splitlines()) for p in tmp_path.rglob("segment-*.jsonl"))
    assert 0 < on_disk < 12
    assert len(log_lines(caplog, "cannot write the spool")) == 1
    receiver.mode = "ok"
    wait_until(lambda: sinks.stats()[name]["pending"] == 0, what="the replay")
    sinks.close()
    assert receiver.sequences() == list(range(10, 22))  # disk first, then memory: in order, none lost


# ---- MQTT, against Debian's mosquitto


class Broker:
    """mosquitto on a free 127.0.0.1 port, persistent (sessions survive a restart, as on a real line)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        (folder / "db").mkdir()
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder / 'db'}/\nautosave_interval 1\n"
                               "autosave_on_changes true\n"
                               # as root, mosquitto would switch to the user mosquitto, who cannot write here
                               f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

        def listening():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, what="mosquitto")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


@pytest.fixture
def broker(tmp_path):
    made = Broker(tmp_path)
    yield made
    made.stop(signal.SIGKILL)


class Subscriber:
    """A paho client with a persistent session on PREFIX/# (QoS 1): it gets what was published while it
    or the broker was away, once both are back."""

    def __init__(self, port: int, prefix: str, client_id: str = "test-subscriber", clean: bool = False):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, int, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.reconnect_delay_set(0.05, 0.2)

        def on_connect(client, userdata, flags, reason_code, properties):
            client.subscribe(f"{prefix}/#", qos=1)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic.rsplit("/", 1)[1], json.loads(m.payload)["sequence"], bool(m.retain)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def verdicts(self) -> list[tuple[str, int]]:
        """(ok | defect, sequence) in arrival order, the first arrival of each (QoS 1 may deliver twice)."""
        seen, out = set(), []
        for topic, sequence, _ in self.messages:
            if topic != "last" and sequence not in seen:
                seen.add(sequence)
                out.append((topic, sequence))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.line  # a real broker: the line tier, in make test, not make test-fast
@needs_mosquitto
def test_mqtt_publishes_qos1_per_verdict_and_retains_the_last(broker, tmp_path):
    broker.start()
    subscriber = Subscriber(broker.port, "plant/line1", clean=True)
    name = f"mqtt://127.0.0.1:{broker.port}/plant/line1"
    sinks = open_sinks([name], model_id="m", spool_dir=tmp_path, settings=FAST)
    for i in range(6):
        sinks.send(record(i, anomalous=i in (2, 5)))
    wait_until(lambda: len(subscriber.verdicts()) == 6, what="the verdicts")
    sinks.close()
    subscriber.close()
    assert subscriber.verdicts() == [("ok", 0), ("ok", 1), ("defect", 2), ("ok", 3), ("ok", 4), ("defect", 5)]
    assert sinks.stats()[name] == {"sent": 6, "failed": 0, "spooled": 0, "dropped": 0, "pending": 0}
    late = Subscriber(broker.port, "plant/line1/last", client_id="late", clean=True)  # joins after the line ran
    wait_until(lambda: late.messages, what="the retained verdict")
    late.close()
    assert late.messages[0] == ("last", 5, True)


@pytest.mark.line  # a real broker: the line tier, in make test, not make test-fast
@needs_mosquitto
def test_mqtt_broker_down_at_start_spools_then_replays_in_order(broker, tmp_path, caplog):
    broker.start()
    Subscriber(broker.port, "line").close()  # its session and subscription persist in the broker
    broker.stop()
    name = f"mqtt://127.0.0.1:{broker.port}/line"
    sinks = open_sinks([name], model_id="m", spool_dir=tmp_path / "spool", settings=FAST)  # not an error
    for i in range(20):
        sinks.send(record(i, anomalous=i % 4 == 0))
    wait_until(lambda: sinks.stats()[name]["spooled"] == 20, what="spooling")
    assert sum(len(p.read_text().splitlines()) for p in (tmp_path / "spool").rglob("segment-*.jsonl")) == 20
    broker.start()
    wait_until(lambda: sinks.stats()[name]["sent"] == 20, what="the replay")
    subscriber = Subscriber(broker.port, "line")
    wait_until(lambda: len(subscriber.verdicts()) == 20, what="the queued verdicts")
    sinks.close()
    subscriber.close()
    assert [s for _, s in subscriber.verdicts()] == list(range(20))
    assert [t for t, s in subscriber.verdicts() if s % 4 == 0] == ["defect"] * 5
    assert len(log_lines(caplog, "down (")) == 1 and len(log_lines(caplog, "back after")) == 1
    assert sinks.stats()[name]["dropped"] == 0 and sinks.stats()[name]["pending"] == 0


@pytest.mark.line  # a real broker: the line tier, in make test, not make test-fast
@needs_mosquitto
def test_mqtt_broker_killed_mid_run_and_restarted_loses_nothing(broker, tmp_path, caplog):
    broker.start()
    subscriber = Subscriber(broker.port, "line")
    name = f"mqtt://127.0.0.1:{broker.port}/line"
    sinks = open_sinks([name], model_id="m", spool_dir=tmp_path / "spool", settings=FAST)
    for i in range(10):
        sinks.send(record(i))
    wait_until(lambda: sinks.stats()[name]["sent"] == 10, what="the first records")
    broker.stop(signal.SIGKILL)
    for i in range(10, 20):
        sinks.send(record(i, anomalous=True))
    wait_until(lambda: sinks.stats()[name]["spooled"] >= 10, what="spooling")
    broker.start()
    for i in range(20, 25):
        sinks.send(record(i))
    wait_until(lambda: len(subscriber.verdicts()) == 25, what="every verdict")
    sinks.close()
    subscriber.close()
    assert [s for _, s in subscriber.verdicts()] == list(range(25))
    assert accounted(sinks.stats()[name], 25) and sinks.stats()[name]["dropped"] == 0
    assert len(log_lines(caplog, "down (")) == 1 and len(log_lines(caplog, "back after")) == 1
