"""fit and the data options that belong to test / calibrate: said in one line, never silently dropped."""

from __future__ import annotations

import logging

from anomalens.data import make_synthetic_category
from anomalens.data.sources import data_source
from anomalens.workflow.fit import fit_run


def test_fit_says_that_it_does_not_read_test_normal(tmp_path, caplog):
    make_synthetic_category(tmp_path, source="brick", n_train=8, n_test_good=2, n_test_defect=2, image_size=32)
    category = tmp_path / "brick"
    source = data_source(None, normal=str(category / "train" / "good"), test_normal=str(category / "test" / "good"))
    with caplog.at_level(logging.WARNING, logger="anomalens"):
        detector = fit_run("padim", source, tmp_path / "run", params={"image_size": 32, "threshold_folds": 1},
                           progress=False)
    said = [r.getMessage() for r in caplog.records if "--test-normal" in r.getMessage()]
    assert len(said) == 1 and str(category / "test" / "good") in said[0] and "not by fit" in said[0]
    assert detector.threshold_ is not None and (tmp_path / "run" / "detector.json").exists()
