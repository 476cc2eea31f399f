"""GLASS in both libraries with the same backbone, features, texture source, budget and batch (``glass@EPOCHS:DATASET``).

- Backbone and features: the harness' ``tf_efficientnet_lite0`` weights in both, levels 2 and 3 (timm out_indices
  (2, 3), strides 8 and 16), 3 × 3 neighbourhoods; both at D = 152 (anomalens keeps the 40 + 112 channels,
  anomalib pools each level's unfolded 3 × 3 patch to ``pretrain_embed_dim`` = 152 and the pair to
  ``target_embed_dim`` = 152; its default 1536 would repeat channels ten times and make its adaptor and
  discriminator ~10× larger). Discriminator hidden width 1024, 20 ascent steps, manifold constraint, σ = 0.015
  in both (the paper's).
- Local anomalies: anomalib's ``Glass`` downloads DTD when ``anomaly_source_path`` is not a folder (impossible
  offline); both get the same folder, the twelve scikit-image photos anomalens uses by default
  (``compare_models.draem.SOURCES``, written once as PNG).
- Batch 32 (the harness' anomalib loaders; the paper's is 8), the same epochs; each library its own optimisers
  (the same: Adam 1e-4 + weight decay 1e-5 for the adaptor, AdamW 2e-4 for the discriminator) and its own score
  (both: the maximum position score; map upsampled and blurred with σ = 4). The features: since session 20
  anomalens' GLASS defaults take the authors' (and anomalib's) — the neighbourhoods pooled as their code pools
  them (``aggregation="reference"``), not standardised; rows measured before (the synthetic glass@1 rows) had
  the per-channel neighbourhood mean, standardised per channel (``aggregation="mean"``, ``standardise=True``). Inputs: the harness' (x − 0.5) / 0.5 for anomalib (GLASS denormalises before its Perlin
  augmentation), the backbone's own normalisation for anomalens — the same for these weights.
"""

from __future__ import annotations

import os

from compare_models.draem import SOURCES, _write_sources

BATCH = 32  # the harness's anomalib loaders use compare_anomalib.BATCH (32); the paper's is 8
DIM = 152  # EfficientNet-Lite0 levels 2 + 3: 40 + 112 channels
SEED_VARIABLE = "COMPARE_GLASS_SEED"  # anomalib's torch seed (default 0): glass_gap.py's other seeds


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    return {"image_size": size, "epochs": int(option or 10), "batch_size": BATCH, "device": device,
            "anomaly_source": str(_write_sources())}


def anomalib_model(option: float | None, common: dict):
    from anomalib.models import Glass

    if not SOURCES.is_dir():
        raise SystemExit(f"[compare] {SOURCES} is missing: the anomalens job of the same dataset writes it")
    resize = next(t for t in common["pre_processor"].transform.transforms if type(t).__name__ == "Resize")
    size = tuple(resize.size) if len(resize.size) == 2 else (resize.size[0], resize.size[0])
    import torch

    torch.manual_seed(int(os.environ.get(SEED_VARIABLE) or 0))  # the harness seeds 0 already: the same draws
    model = Glass(input_shape=size, anomaly_source_path=str(SOURCES), backbone="tf_efficientnet_lite0", layers=[2, 3],
                  pretrain_embed_dim=DIM, target_embed_dim=DIM, **common)
    return model, int(option or 10)
