"""CFlow-AD in both libraries: ``cflow@EPOCHS:DATASET``.

anomalib 2.7's ``Cflow`` takes any timm backbone: both run the harness' ``tf_efficientnet_lite0`` with the bundled
ImageNet weights at out_indices 2-4 (strides 8, 16, 32: the counterpart of the paper's last three WideResNet-50
stages), anomalens' default.

Same settings: P = 128 condition channels, 8 coupling blocks, clamp 1.9, N = 256 positions per fiber batch (the
paper's; anomalib's default is 64), Adam lr 2e-4 (the authors' code; anomalib's default is 1e-4), batch 32 images
(the harness'), the same epochs. What differs is each library's own: anomalib trains the scales one after the
other, each fiber batch its own step, and normalises the map over the batch being scored; anomalens steps all
scales at once and normalises by a reference fixed at fit time (src/anomalens/models/cflow.py says why).
"""

from __future__ import annotations

LAYERS = (2, 3, 4)
FIBERS = 256
LR = 2e-4
# Fashion-MNIST at 128 px for both, not the script's 64: at 64 px the stride-32 level is 2 × 2, so a batch of 32
# images holds 128 positions, fewer than one fiber batch of 256, and anomalib refuses to train ("Make sure we have
# enough fibers"); at 128 px it holds 512.
FMNIST_IMAGE_SIZE = 128


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    return {"image_size": size, "backbone": "efficientnet_lite0", "layers": LAYERS, "batch_size": 32,
            "fiber_batch_size": FIBERS, "lr": LR, "epochs": int(option or 1), "device": device}


def anomalib_model(option: float | None, common: dict):
    from anomalib.models import Cflow

    model = Cflow(backbone="tf_efficientnet_lite0", layers=list(LAYERS), pre_trained=True, fiber_batch_size=FIBERS,
                  condition_vector=128, coupling_blocks=8, clamp_alpha=1.9, lr=LR, **common)
    return model, int(option or 1)
