"""FastFlow in both libraries: ``fastflow@EPOCHS:DATASET``.

anomalib 2.7's ``Fastflow`` accepts only four backbone names (``resnet18``, ``wide_resnet50_2``, ``cait_m48_448``,
``deit_base_distilled_patch16_384``), and no ResNet's pretrained weights are on this offline machine. Its ResNet
branch is generic, though: a timm ``features_only`` model at out_indices 1-3, whose ``feature_info`` gives the
channels and strides of its LayerNorms and flows. So anomalib is asked for ``resnet18`` and given the harness'
``tf_efficientnet_lite0`` with the bundled ImageNet weights at out_indices 1-3 (strides 4, 8, 16), through a
patched ``timm.create_model``: both libraries then run the same encoder, weights and levels — anomalens' default.

Same settings: 8 flow steps, hidden ratio 1.0, alternating 3x3 / 1x1 subnets, clamp 2, Adam lr 1e-3 with
weight decay 1e-5 (anomalib's are fixed at these, the paper's), batch 32 (the harness'), the same epochs.
anomalens keeps its defaults otherwise (the kept epoch chosen by the validation loss on its threshold hold-out).

Seeds: anomalib's draws (flow weights, permutations, batch order) come from torch's global generator, which the
harness seeds with 0; ``COMPARE_FASTFLOW_SEED=N`` in the environment reseeds it with N before the model is built
(another seed of the same row, as ``benchmarks/fastflow_gap.py`` runs them). anomalens' seed is its ``seed``
parameter.
"""

from __future__ import annotations

import os

LAYERS = (1, 2, 3)
SEED_VARIABLE = "COMPARE_FASTFLOW_SEED"


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    return {"image_size": size, "backbone": "efficientnet_lite0", "layers": LAYERS, "batch_size": 32,
            "epochs": int(option or 1), "device": device}


def anomalib_model(option: float | None, common: dict):
    import timm
    from anomalib.models import Fastflow

    create = timm.create_model  # the harness' patch: tf_efficientnet_lite0 with the bundled weights

    def create_model(name, pretrained=False, **kwargs):
        if name == "resnet18":  # the one name anomalib's CNN branch accepts that this stands in for
            return create("tf_efficientnet_lite0", pretrained=True, **{**kwargs, "out_indices": list(LAYERS)})
        return create(name, pretrained=pretrained, **kwargs)

    timm.create_model = create_model
    if os.environ.get(SEED_VARIABLE):
        import torch

        torch.manual_seed(int(os.environ[SEED_VARIABLE]))
    model = Fastflow(backbone="resnet18", pre_trained=True, flow_steps=8, conv3x3_only=False, hidden_ratio=1.0,
                     **common)
    return model, int(option or 1)
