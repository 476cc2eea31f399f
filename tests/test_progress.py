"""Progress off a terminal (CI, cron, a pipe): log lines, for any iterable — numpy arrays included."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from anomalens import create_detector
from anomalens.progress import LoggedProgress, iterate_progress, progress_bar
from tests.conftest import TINY_PARAMS


@pytest.fixture
def logged(monkeypatch, caplog):
    """Progress as it is where stderr is not a terminal, with INFO logged."""
    monkeypatch.setattr("anomalens.progress.on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="anomalens")
    return caplog


@pytest.mark.parametrize("iterable", [
    np.linspace(0.0, 1.0, 25),            # truth of an array is an error
    np.zeros(0),                           # an empty array
    np.array([0.0]),                       # an array of one zero is "false"
    [],                                    # an empty list
    (x for x in range(3)),                 # a generator has no length
    range(0),
])
def test_a_logged_loop_yields_every_item_of_any_iterable(logged, iterable):
    expected = list(iterable) if not hasattr(iterable, "__next__") else None
    got = list(iterate_progress(iterable, True, "loop"))
    if expected is not None:
        assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    else:
        assert got == [0, 1, 2]


def test_a_logged_loop_over_an_array_logs_its_progress_and_its_end(logged):
    assert isinstance(progress_bar(desc="grid", iterable=np.arange(20)), LoggedProgress)
    assert list(iterate_progress(np.arange(20), True, "grid")) == list(range(20))
    lines = [r.getMessage() for r in logged.records if r.name == "anomalens"]
    assert any(line.startswith("grid: 2/20") for line in lines)
    assert any(line.startswith("grid: 20 it in") for line in lines)


def test_area_calibration_with_progress_logged_works(logged, train_records, test_records):
    """The seed's finetune from a script or CI: calibrate(method="area") with progress going to the log."""
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    info = det.calibrate(test_records, method="area", progress=True)
    assert det.decision_.source == "area" and info["min_area"] >= 1
    assert any(r.getMessage().startswith("area search: normals") for r in logged.records)


def test_cli_calibrate_area_off_a_terminal_works(run, category, tmp_path, capsys):
    """``anomalens calibrate RUN DATA --method area`` in a pipe (pytest's captured stderr is not a terminal)."""
    import shutil

    from anomalens.cli import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["calibrate", str(copy), str(category), "--method", "area"]) == 0
    captured = capsys.readouterr()
    assert "ambiguous" not in captured.err and "min_area" in captured.out
