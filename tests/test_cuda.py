"""The CUDA path: every detector fits and scores on a GPU and agrees with the CPU.

Skipped where no CUDA GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import anomalens
from anomalens import create_detector, list_detectors, load_detector
from tests.conftest import TINY_PARAMS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NAMES = list_detectors()
# No training: the same images give the same features on both devices, so the scores must agree
# (up to TF32 / cuDNN rounding of the backbone's convolutions).
FEATURE_DETECTORS = ["padim", "patchcore", "spade", "mahalanobis"]
PRETRAINED = FEATURE_DETECTORS + ["stpm"]  # a pretrained teacher: robust to the device's rounding


def _params(name: str, device: str) -> dict:
    return {**TINY_PARAMS[name], "device": device}


@pytest.fixture(scope="module", params=NAMES)
def fitted_on_gpu(request, train_records):
    return create_detector(request.param, **_params(request.param, "cuda")).fit(train_records, progress=False)


def test_gpu_detector_scores_and_separates(fitted_on_gpu, test_records):
    result = fitted_on_gpu.predict(test_records, progress=False)
    assert result.scores.shape == (len(test_records),) and np.isfinite(result.scores).all()
    labels = np.array([r.label for r in test_records])
    auroc = anomalens.evaluate(labels, result.scores, fitted_on_gpu.threshold_)["image_auroc"]
    # Networks trained from scratch take another path on a GPU (cuDNN kernels, other rounding), and the
    # tiny budgets of TINY_PARAMS were set on CPU: there only better than chance is asked (measured on
    # an H100: resnet_cae 0.72 after its 2 epochs, every other detector >= 0.9).
    assert auroc >= (0.9 if fitted_on_gpu.name in PRETRAINED else 0.6)
    if fitted_on_gpu.localizes:
        assert np.isfinite(result.maps).all()


def test_gpu_model_loads_on_cpu_with_the_same_scores(fitted_on_gpu, test_records, tmp_path):
    """A model trained on a GPU is saved device-free: loaded on a CPU it gives the GPU's scores."""
    fitted_on_gpu.save(tmp_path / "run")
    on_gpu = fitted_on_gpu.score(test_records, progress=False)[0]
    on_cpu = load_detector(tmp_path / "run", device="cpu").score(test_records, progress=False)[0]
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=2e-2, atol=1e-3 * float(np.abs(on_gpu).max()))


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_feature_detectors_agree_across_devices(name, train_records, test_records):
    gpu = create_detector(name, **_params(name, "cuda")).fit(train_records, progress=False)
    cpu = create_detector(name, **_params(name, "cpu")).fit(train_records, progress=False)
    gpu_scores = gpu.score(test_records, progress=False)[0]
    cpu_scores = cpu.score(test_records, progress=False)[0]
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=2e-2, atol=1e-3 * float(np.abs(cpu_scores).max()))
    assert gpu.threshold_ == pytest.approx(cpu.threshold_, rel=2e-2)


def test_cli_runs_on_the_gpu(tmp_path):
    from anomalens.cli import main
    from anomalens.data import make_synthetic_category

    make_synthetic_category(tmp_path, source="brick", seed=0, n_train=12, n_test_good=4, n_test_defect=4, image_size=64)
    data, run = tmp_path / "brick", tmp_path / "run"
    assert main(["fit", "padim", str(data), "-o", str(run), "--image-size", "64", "--device", "cuda", "--quiet"]) == 0
    assert main(["test", str(run), str(data), "--device", "cuda", "--quiet", "--no-report"]) == 0
    assert (run / "metrics.json").exists()
