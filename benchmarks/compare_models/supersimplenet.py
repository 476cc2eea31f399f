"""SuperSimpleNet in both libraries, unsupervised (``supersimplenet@EPOCHS:DATASET``).

- Backbone: the harness' ``tf_efficientnet_lite0`` weights in both, levels 2 and 3 (timm out_indices (2, 3),
  strides 8 and 16), upscaled to twice the level-2 grid and 3 × 3-averaged: D = 40 + 112 = 152 in both.
- The ICPR paper's model in both: anomalib's ``adapt_cls_features=True`` (its default, False, is the later journal
  version), anomalens' ``classify_adapted=True`` (its default). Perlin threshold 0.2, σ = 0.015, segmentation
  head 1024 wide, classification head 128 channels, focal γ = 4, truncated L1 0.5, AdamW 1e-4 / 2e-4, lr × 0.4
  after 80 % and 90 % of the epochs, batch 32 (the paper's and the harness'), the same epochs.
- What differs is each library's own: anomalens standardises the features per channel (src/anomalens/models/
  supersimplenet.py says why: σ = 0.015 is set for WideResNet-50's scale) and computes them once per fit; anomalib
  runs the backbone on every step; anomalens scores with the logits, anomalib with their sigmoid (same order).

Seeds: anomalib's draws (head weights, Perlin masks, noise, batch order) come from torch's global generator, which
the harness seeds with 0; ``COMPARE_SUPERSIMPLENET_SEED=N`` in the environment reseeds it with N before the model
is built (another seed of the same row, as ``benchmarks/supersimplenet_gap.py`` runs them). anomalens' seed is its
``seed`` parameter.
"""

from __future__ import annotations

import os

BATCH = 32  # the paper's and the harness's anomalib loaders'
LAYERS = (2, 3)
SEED_VARIABLE = "COMPARE_SUPERSIMPLENET_SEED"


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    return {"image_size": size, "backbone": "efficientnet_lite0", "layers": LAYERS, "batch_size": BATCH,
            "epochs": int(option or 6), "classify_adapted": True, "device": device}


def anomalib_model(option: float | None, common: dict):
    from anomalib.models import Supersimplenet

    if os.environ.get(SEED_VARIABLE):
        import torch

        torch.manual_seed(int(os.environ[SEED_VARIABLE]))
    model = Supersimplenet(backbone="tf_efficientnet_lite0", layers=list(LAYERS), supervised=False,
                           adapt_cls_features=True, **common)
    return model, int(option or 6)
