"""The export parity check that the detectors' own test files share (the export tier: ``make test``, not
``make test-fast``): a fitted run exported, then scored from image files by ONNX Runtime and by OpenVINO, whose
scores and maps must stay within the export's tolerance of torch's."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from anomalens.data import ImageRecord


def assert_export_parity(detector, train: list[ImageRecord], images: list[ImageRecord], tmp_path: Path, *,
                         crop_width: int | None = None) -> None:
    """Fit ``detector`` on ``train``, export the saved run, and check both runtimes on ``images`` written as PNG
    files (cut to ``crop_width`` columns when given: a non-square image puts the export's resize in the check)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from anomalens.export import DEFAULT_TOLERANCE, export_run, verify_export

    run_dir = detector.fit(train, progress=False).save(tmp_path / "run")
    files = []
    for i, record in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(record.source if crop_width is None else record.source[:, :crop_width]).save(files[-1])
    out = export_run(run_dir, tmp_path / "export", progress=False)
    for runtime in ("onnxruntime", "openvino"):
        report = verify_export(out, files, runtime=runtime, progress=False)
        assert report["ok"], report
        assert report["scores_rel"] <= DEFAULT_TOLERANCE and report["maps_rel"] <= DEFAULT_TOLERANCE, report
