"""``anomalens watch`` on a hot folder: real files written slowly or renamed into place, each scored once;
restart resume (nothing twice, nothing missed, verdict folders); truncated / not-an-image / deleted files;
moves that never overwrite; SIGTERM mid-run through the real command."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from anomalens.errors import ConfigError
from anomalens.inference.protocol import model_id as identify_model
from anomalens.line.hotfolder import STATE_NAME, HotFolder
from anomalens.line.watcher import Watcher
from anomalens.outputs.moves import move_into_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = {"settle_s": 0.2, "poll_s": 0.02}


@pytest.fixture(scope="module")
def predictor(run):
    from anomalens.inference.loading import load_predictor

    return load_predictor(run)


@pytest.fixture(scope="module")
def pictures(category) -> list[Path]:
    """The category's test images: good/000-003, then hole, patch, scratch, stain."""
    return sorted((category / "test").rglob("*.png"))


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def watch_until(predictor, folder: Path, out: Path, count: int, act=None, **options) -> tuple[Watcher, list[dict]]:
    """Watch ``folder`` in a thread (jsonl sink to ``out``), do ``act()``, stop once ``count`` records are out."""
    watcher = Watcher(predictor, folder, sinks=[f"jsonl:{out}"], **{**QUICK, **options}).start()
    try:
        if act is not None:
            act()
        wait_for(lambda: watcher.scored + watcher.failed >= count or watcher.error is not None)
    finally:
        watcher.stop()
        watcher.join(60)
    assert watcher.error is None, watcher.error
    return watcher, records_of(out)


def test_files_written_slowly_or_renamed_into_place_are_scored_once_each_when_complete(predictor, pictures, tmp_path,
                                                                                     caplog):
    hot = tmp_path / "hot"
    hot.mkdir()

    def deliver() -> None:
        data = pictures[0].read_bytes()
        with open(hot / "slow.png", "wb") as slow:  # written in 8 pieces over ~0.4 s, each flushed
            for start in range(0, len(data), len(data) // 8 + 1):
                slow.write(data[start : start + len(data) // 8 + 1])
                slow.flush()
                time.sleep(0.05)
        hidden = hot / ".renamed.png.part"
        shutil.copyfile(pictures[6], hidden)  # scratch: a clear defect
        hidden.rename(hot / "renamed.png")  # the usual camera-software pattern: written hidden, renamed
        shutil.copyfile(pictures[1], hot / "copied.png")
        (hot / "notes.txt").write_text("not an image name: never looked at")

    with caplog.at_level(logging.WARNING, logger="anomalens"):
        watcher, records = watch_until(predictor, hot, tmp_path / "out.jsonl", 3, act=deliver)
        time.sleep(0.3)  # nothing more arrives later
    assert sorted(r["image"] for r in records) == ["copied.png", "renamed.png", "slow.png"]
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert watcher.summary()["failed"] == 0
    for record in records:
        assert set(record) == {"source", "image", "frame_time", "time", "score", "normalized_score", "anomalous",
                               "regions", "model_id", "latency_ms", "sequence"}
        assert record["source"] == str(hot) and record["frame_time"] is None and record["latency_ms"] >= 0
        # the name the service gives the same model (anomalens.inference.protocol.model_id)
        assert record["time"].endswith("Z") and record["model_id"] == identify_model(predictor)
        assert (record["normalized_score"] > 0.5) == record["anomalous"]
        for region in record["regions"]:
            assert region["area"] <= region["width"] * region["height"] <= 64 * 64
    assert [r["sequence"] for r in records] == [1, 2, 3]
    by_name = {r["image"]: r for r in records}
    assert by_name["renamed.png"]["anomalous"] and by_name["renamed.png"]["regions"]  # a real defect, localised


def test_a_restart_neither_scores_twice_nor_misses_a_file_and_files_land_in_verdict_folders(predictor, pictures,
                                                                                           tmp_path):
    hot, out = tmp_path / "hot", tmp_path / "out.jsonl"
    hot.mkdir()
    for i, picture in enumerate(pictures[:3]):
        shutil.copyfile(picture, hot / f"part-{i}.png")
    # first run: no moves, stopped after 2 images
    watch_until(predictor, hot, out, 2, max_images=2)
    assert len(records_of(out)) == 2 and (hot / STATE_NAME).is_file()
    # moves switched on: the 2 scored files are moved without being scored again; the 3rd and 2 new ones scored
    for i, picture in enumerate(pictures[5:7], start=3):
        shutil.copyfile(picture, hot / f"part-{i}.png")
    watcher, records = watch_until(predictor, hot, out, 3, move_to_verdict_folders=True)
    names = [r["image"] for r in records]
    assert sorted(names) == [f"part-{i}.png" for i in range(5)], names
    assert [r["sequence"] for r in records] == [1, 2, 3, 4, 5]  # continued across the restart
    verdicts = {r["image"]: "defect" if r["anomalous"] else "ok" for r in records}
    for name, verdict in verdicts.items():
        assert (hot / verdict / name).is_file(), (name, verdict)
    assert not list(hot.glob("*.png"))
    state = json.loads((hot / STATE_NAME).read_text())
    assert state["sequence"] == 5 and state["folder"] == str(hot.resolve())
    # a third start finds nothing to do
    watcher = Watcher(predictor, hot, sinks=[f"jsonl:{out}"], duration=1.0, move_to_verdict_folders=True, **QUICK)
    assert watcher.run()["scored"] == 0 and len(records_of(out)) == 5


class DeletingHotFolder(HotFolder):
    """A hot folder whose file ``doomed.png`` is deleted between being found and being read."""

    def frames(self, stop):
        for frame in super().frames(stop):
            if frame.name == "doomed.png":
                frame.path.unlink()
            yield frame


def test_truncated_not_an_image_and_deleted_files_are_one_line_each_skipped_and_remembered(predictor, pictures,
                                                                                         tmp_path, caplog):
    hot, out = tmp_path / "hot", tmp_path / "out.jsonl"
    hot.mkdir()
    data = pictures[0].read_bytes()
    (hot / "a-truncated.png").write_bytes(data[: len(data) // 2])
    (hot / "b-text.png").write_text("this is not a picture")
    (hot / "doomed.png").write_bytes(data)
    shutil.copyfile(pictures[1], hot / "z-good.png")
    with caplog.at_level(logging.WARNING, logger="anomalens"):
        source = DeletingHotFolder(hot, **QUICK)
        watcher = Watcher(predictor, source, sinks=[f"jsonl:{out}"]).start()
        wait_for(lambda: watcher.scored + watcher.failed >= 4)
        watcher.stop()
        watcher.join(60)
    assert [r["image"] for r in records_of(out)] == ["z-good.png"]  # the watcher kept going
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    for name in ("a-truncated.png", "b-text.png", "doomed.png"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert all("\n" not in line for line in lines)
    state = json.loads((hot / STATE_NAME).read_text())["files"]
    assert state["a-truncated.png"]["verdict"] == state["b-text.png"]["verdict"] == "failed"
    # a restart does not try them again; the truncated file completed later is scored
    caplog.clear()
    (hot / "a-truncated.png").write_bytes(data)
    os.utime(hot / "a-truncated.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    with caplog.at_level(logging.WARNING, logger="anomalens"):
        watcher, records = watch_until(predictor, hot, out, 1)
        time.sleep(0.3)
    assert [r["image"] for r in records] == ["z-good.png", "a-truncated.png"]
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_move_never_overwrites_and_numbers_the_name(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(b"first")
    (tmp_path / "ok" / "a-1.png").write_bytes(b"second")
    (tmp_path / "a.png").write_bytes(b"third")
    assert move_into_folder(tmp_path / "a.png", tmp_path / "ok") == tmp_path / "ok" / "a-2.png"
    assert [(tmp_path / "ok" / n).read_bytes() for n in ("a.png", "a-1.png", "a-2.png")] == [b"first", b"second", b"third"]
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(FileNotFoundError):
        move_into_folder(tmp_path / "gone.png", tmp_path / "ok")


def test_a_state_file_of_another_folder_or_a_broken_one_is_refused_in_one_line(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    HotFolder(one).save()
    with pytest.raises(ConfigError, match="is the state of the hot folder .*one, not of .*two"):
        HotFolder(two, state=one / STATE_NAME)
    (two / STATE_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the watch state"):
        HotFolder(two)


def test_sigterm_mid_run_flushes_saves_and_exits_0_with_a_summary_and_a_restart_goes_on(run, predictor, pictures,
                                                                                        tmp_path):
    hot, out = tmp_path / "hot", tmp_path / "out.jsonl"
    hot.mkdir()
    for i, picture in enumerate(pictures[:4]):
        shutil.copyfile(picture, hot / f"{i:02d}.png")
    command = [sys.executable, "-m", "anomalens.cli", "watch", str(run), str(hot), "--sink", f"jsonl:{out}",
               "--settle", "0.1", "--queue", "1", "-q"]
    watch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: len(records_of(out)) >= 1 or watch.poll() is not None, timeout=120)
        watch.send_signal(signal.SIGTERM)
        _, stderr = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anomalens: watch: ") and " scored " in lines[0], stderr
    records = records_of(out)
    scored = int(lines[0].split("watch: ")[1].split(" scored")[0])
    assert len(records) == scored >= 1  # every verdict made was flushed to the sink
    state = json.loads((hot / STATE_NAME).read_text())["files"]
    assert sorted(state) == sorted(r["image"] for r in records)  # and remembered
    # more parts arrive while it is down; the restart scores exactly the ones not yet scored
    for i, picture in enumerate(pictures[4:], start=4):
        shutil.copyfile(picture, hot / f"{i:02d}.png")
    watch_until(predictor, hot, out, len(pictures) - scored)
    time.sleep(0.3)
    assert sorted(r["image"] for r in records_of(out)) == [f"{i:02d}.png" for i in range(len(pictures))]


def test_bad_sources_and_options_are_one_line_errors(run, tmp_path, capsys):
    from anomalens.cli import main

    for argv, message in (
        ([str(tmp_path / "nowhere")], "no such folder or video file"),
        (["ftp://host/x"], "unknown stream scheme 'ftp'"),
        (["camera:front"], "a camera is camera:N"),
        ([str(tmp_path), "--every", "2"], "apply to video sources"),
        ([str(tmp_path), "--sink", "mqtt://"], "no host"),
        ([str(tmp_path), "--every", "0"], "expected a whole number >= 1"),
    ):
        assert main(["watch", str(run), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["serve", str(run), "--sink", "jsonl"]) == 2
    assert "--sink sends the verdicts of --watch SOURCE" in capsys.readouterr().err


def test_watcher_runs_in_a_thread_and_stops_on_request(predictor, tmp_path):
    hot = tmp_path / "hot"
    hot.mkdir()
    watcher = Watcher(predictor, hot, sinks=[f"jsonl:{tmp_path / 'out.jsonl'}"], **QUICK).start()
    time.sleep(0.2)
    assert threading.active_count() >= 2
    watcher.stop()
    watcher.join(30)
    assert watcher.summary()["scored"] == 0 and watcher.error is None
