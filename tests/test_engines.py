"""Engines as strategies: ``fit_run`` takes an engine object, which refuses before anything is read, holds its
session around the run and fits the detector — handing it a strategy in the call, never setting one on it."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from anomalens.catalog import create_detector
from anomalens.data import AnomalyDataset
from anomalens.engines import FitEngine, LocalFit
from anomalens.errors import ConfigError
from anomalens.workflow import fit_run
from tests.conftest import TINY_PARAMS, make_records


@pytest.fixture(scope="module")
def dataset():
    return AnomalyDataset(name="stripes", train=make_records(12, 0, seed=1), test=make_records(3, 3, seed=2))


class Recording:
    """An engine that fits locally and says what happened; ``refuse`` makes ``check`` refuse."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse, self.calls = refuse, []

    def check(self, detector):
        self.calls.append("check")
        if self.refuse:
            raise ConfigError(f"{detector.name}: not on this engine")

    @contextlib.contextmanager
    def session(self, detector, run_dir, overwrite):
        self.calls.append("session")
        yield True
        self.calls.append("session closed")

    def fit(self, detector, train, progress):
        self.calls.append("fit")
        detector.fit(train, progress=progress)
        return {"engine": "recording"}


def test_the_default_engine_is_the_local_fit(dataset, tmp_path):
    params = TINY_PARAMS["padim"]
    default = fit_run("padim", dataset, tmp_path / "a", params, progress=False)
    local = fit_run("padim", dataset, tmp_path / "b", params, progress=False, engine=LocalFit())
    assert default.decision_ == local.decision_
    assert "engine" not in json.loads((tmp_path / "a" / "run.json").read_text())


def test_an_engine_checks_holds_its_session_and_records_itself(dataset, tmp_path):
    engine: FitEngine = Recording()
    fit_run("mahalanobis", dataset, tmp_path / "run", TINY_PARAMS["mahalanobis"], progress=False, engine=engine)
    assert engine.calls == ["check", "session", "fit", "session closed"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["engine"] == "recording"


def test_an_engine_that_refuses_leaves_nothing_behind(dataset, tmp_path):
    with pytest.raises(ConfigError, match="not on this engine"):
        fit_run("padim", dataset, tmp_path / "run", TINY_PARAMS["padim"], progress=False, engine=Recording(refuse=True))
    assert not (tmp_path / "run").exists()


def test_a_cross_fit_strategy_passed_to_fit_does_the_out_of_fold_work(dataset):
    """What ``RayShards`` does on a cluster, here in the process: the detector is handed the strategy."""

    class Local:
        def __init__(self):
            self.folds = None

        def fit_out_of_fold(self, detector, parts, folds, progress):
            self.folds = folds
            return detector._fit_and_score_out_of_fold(parts, folds, progress)

    strategy = Local()
    params = {**TINY_PARAMS["padim"], "threshold_folds": 3}
    handed = create_detector("padim", **params).fit(dataset.train, progress=False, cross_fit=strategy)
    own = create_detector("padim", **params).fit(dataset.train, progress=False)
    assert len(strategy.folds) == 3 and sorted(np.concatenate(strategy.folds).tolist()) == list(range(12))
    assert handed.decision_ == own.decision_
