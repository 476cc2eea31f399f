"""``anomalens watch`` on video: a PyAV-written H.264 file (every frame, every N-th, a target rate, corrupt bytes),
a video read at its own frame rate whose model lags (the oldest frames dropped and counted), an RTSP stream
pushed by ffmpeg to the watcher (dropped and pushed again: reconnected), an HTTP stream that is down at start
(back-off, then frames), and ``serve --watch``. Everything on 127.0.0.1 with a random port; the stream tests
are skipped when Debian's ffmpeg is not installed (``make test`` installs it)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from anomalens.errors import DataError
from anomalens.line.frames import Frame, FrameQueue
from anomalens.line.sources import Selection
from anomalens.line.watcher import Watcher

av = pytest.importorskip("av", reason="PyAV is not installed (the line extra: pip install 'anomalens[line]')")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="Debian's ffmpeg is not installed (apt-get install ffmpeg; "
                                                         "'make test' does it): it serves the test streams")
FRAMES = 24


@pytest.fixture(scope="module")
def predictor(run):
    from anomalens.inference.loading import load_predictor

    return load_predictor(run)


def write_video(path: Path, pictures: list[Path], frames: int, rate: int) -> Path:
    """An H.264 MP4 (no B-frames: frames come out of the decoder as they go in) cycling through ``pictures``."""
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in pictures]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"tune": "zerolatency", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(images[i % len(images)], format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def video(category, tmp_path_factory) -> Path:
    pictures = sorted((category / "test").rglob("*.png"))
    return write_video(tmp_path_factory.mktemp("video") / "line.mp4", pictures, FRAMES, rate=25)


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ffmpeg_serving(video: Path, *output: str) -> subprocess.Popen:
    """ffmpeg sending ``video`` at its own frame rate (-re), copied as it is, to ``output``."""
    return subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(video), "-c", "copy", *output],
                            stdin=subprocess.DEVNULL)


def test_every_frame_of_a_video_file_is_scored_in_order_and_none_is_dropped(predictor, video, tmp_path):
    out = tmp_path / "out.jsonl"
    summary = Watcher(predictor, video, sinks=[f"jsonl:{out}"], queue_size=1).run()
    records = records_of(out)
    assert summary["scored"] == FRAMES and summary["dropped"] == 0 and summary["failed"] == 0
    assert [r["image"] for r in records] == [f"frame-{i:06d}" for i in range(FRAMES)]
    assert [r["frame_time"] for r in records] == pytest.approx([i / 25 for i in range(FRAMES)], abs=1e-3)
    assert all(r["source"] == str(video) and r["latency_ms"] >= 0 for r in records)
    # the frames cycle through 4 good pictures, then 4 with a defect: the defects score higher through H.264
    scores = np.array([r["score"] for r in records]).reshape(-1, 8)
    assert scores[:, 4:].mean() > scores[:, :4].mean()


@pytest.mark.parametrize("options", [{"every": 5}, {"fps": 5.0}])
def test_every_nth_frame_or_a_target_rate(predictor, video, tmp_path, options):
    out = tmp_path / "out.jsonl"
    Watcher(predictor, video, sinks=[f"jsonl:{out}"], **options).run()
    assert [r["image"] for r in records_of(out)] == [f"frame-{i:06d}" for i in range(0, FRAMES, 5)]


def test_the_selection_of_frames_by_rate_restarts_after_a_gap():
    selection = Selection(fps=10)
    times = [0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 5.0, 5.04, 5.1]
    assert [t for i, t in enumerate(times) if selection.take(i, t)] == [0.0, 0.12, 0.2, 5.0, 5.1]


def test_corrupt_bytes_in_a_video_are_counted_and_skipped(predictor, video, tmp_path):
    data = bytearray(video.read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(len(data) // 3, len(data) // 3 + 3000, 97):
        data[offset : offset + 20] = rng.integers(0, 256, 20, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    out = tmp_path / "out.jsonl"
    summary = Watcher(predictor, broken, sinks=[f"jsonl:{out}"]).run()
    assert summary["corrupt_frames"] >= 1
    assert summary["scored"] == len(records_of(out)) >= FRAMES // 2
    (tmp_path / "empty.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="empty.mp4: cannot open the video"):
        Watcher(predictor, tmp_path / "empty.mp4", sinks=[f"jsonl:{out}"]).run()


def slow_scorer(predictor, seconds: float):
    from anomalens.inference.rows import predict

    def score(inputs):
        time.sleep(seconds)
        result = predict(predictor, np.stack(inputs))
        return [(float(s), bool(label), None) for s, label in zip(result.scores, result.labels)]

    return score


def test_a_live_source_faster_than_the_model_drops_the_oldest_frames_and_counts_them(predictor, category, tmp_path):
    fast = write_video(tmp_path / "fast.mp4", sorted((category / "test").rglob("*.png")), 60, rate=100)
    out = tmp_path / "out.jsonl"
    watcher = Watcher(predictor, fast, sinks=[f"jsonl:{out}"], realtime=True, queue_size=2,
                      scorer=slow_scorer(predictor, 0.05))
    summary = watcher.run()
    names = [r["image"] for r in records_of(out)]
    assert summary["dropped"] > 0 and summary["scored"] + summary["dropped"] == 60 == summary["frames_decoded"]
    assert names[-1] == "frame-000059"  # the newest frames survive, the oldest are dropped
    assert len(names) == len(set(names)) == summary["scored"]


def test_a_file_source_never_drops_it_waits():
    queue = FrameQueue(1, drop_oldest=False)
    queue.put(Frame("a", 0.0))
    second = threading.Thread(target=queue.put, args=(Frame("b", 0.0),))
    second.start()
    time.sleep(0.1)
    assert second.is_alive() and len(queue) == 1  # waiting for room
    assert [f.name for f in queue.get_batch(4, 1.0)] == ["a"]
    second.join(5)
    assert [f.name for f in queue.get_batch(4, 1.0)] == ["b"] and queue.dropped == 0
    queue.close()
    assert queue.get_batch(4, 0.1) is None and queue.put(Frame("c", 0.0)) is False


def all_handled(summary: dict, pushed: int) -> bool:
    """Every frame pushed so far decoded, and scored or counted."""
    return (summary["frames_decoded"] >= pushed
            and summary["scored"] + summary["dropped"] + summary["corrupt_frames"] >= summary["frames_decoded"])


@pytest.mark.line  # ffmpeg serving a stream: the line tier, in make test, not make test-fast
@needs_ffmpeg
def test_an_rtsp_stream_pushed_to_the_watcher_is_scored_and_a_dropped_stream_is_taken_again(predictor, video, tmp_path):
    url = f"rtsp://127.0.0.1:{free_port()}/line"
    out = tmp_path / "out.jsonl"
    watcher = Watcher(predictor, url, sinks=[f"jsonl:{out}"], listen=True).start()
    try:
        for session in (1, 2):
            time.sleep(0.5)  # the watcher listens again after the first stream ended
            push = ffmpeg_serving(video, "-f", "rtsp", "-rtsp_transport", "tcp", url)
            assert push.wait(timeout=60) == 0
            wait_for(lambda pushed=session * FRAMES: all_handled(watcher.summary(), pushed))
    finally:
        watcher.stop()
        watcher.join(30)
    assert watcher.error is None, watcher.error
    records = records_of(out)
    summary = watcher.summary()
    assert summary["reconnections"] >= 1
    # every frame pushed was decoded, and scored or counted (dropped: the live policy; corrupt: none here)
    assert summary["scored"] + summary["dropped"] == summary["frames_decoded"] == 2 * FRAMES
    assert len(records) == summary["scored"] and summary["corrupt_frames"] == 0
    assert all(r["source"] == url for r in records)
    times = [r["frame_time"] for r in records if r["frame_time"] is not None]  # RTSP's very first frame: untimed
    restarts = [i for i in range(1, len(times)) if times[i] < times[i - 1]]
    assert len(restarts) == 1, times  # two sessions, each from the start of its stream


@pytest.mark.line  # ffmpeg serving a stream: the line tier, in make test, not make test-fast
@needs_ffmpeg
def test_an_http_stream_down_at_start_is_retried_with_back_off_then_scored(predictor, video, tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}/line.ts"
    out = tmp_path / "out.jsonl"
    with caplog.at_level("WARNING", logger="anomalens"):
        watcher = Watcher(predictor, url, sinks=[f"jsonl:{out}"]).start()
        try:
            wait_for(lambda: any("cannot open the stream" in r.getMessage() for r in caplog.records))
            serve = ffmpeg_serving(video, "-f", "mpegts", "-listen", "1", url)
            wait_for(lambda: len(records_of(out)) >= FRAMES // 2)
            serve.wait(timeout=60)
        finally:
            watcher.stop()
            watcher.join(30)
    assert watcher.error is None
    assert records_of(out)[0]["frame_time"] == pytest.approx(0.0, abs=0.05)
    assert all("\n" not in r.getMessage() and "Traceback" not in r.getMessage() for r in caplog.records)


def test_serve_watch_scores_a_hot_folder_through_the_service(run, category, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from anomalens.serve.app import create_app
    from anomalens.serve.inference import load_served_model

    hot, out = tmp_path / "hot", tmp_path / "out.jsonl"
    hot.mkdir()
    app = create_app(load_served_model(run), max_wait_ms=2,
                     watch={"source": str(hot), "sinks": [f"jsonl:{out}"], "settle_s": 0.1, "poll_s": 0.02})
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        for picture in sorted((category / "test").rglob("*.png"))[:3]:
            shutil.copyfile(picture, hot / f"{picture.parent.name}-{picture.name}")
        wait_for(lambda: len(records_of(out)) >= 3)
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics")
    assert app.state.watcher.summary()["scored"] == 3
    if metrics.status_code == 200:  # the verdicts of the watched folder are counted with the uploads'
        assert "verdict" in metrics.text
