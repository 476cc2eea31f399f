"""Folding an eval-mode BatchNorm into the convolution before it: one elementwise pass less per conv of a frozen
network, found by running it once (no per-architecture module names), checked numerically before it is kept."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _parent_and_name(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str] | None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is target:
                return parent, name
    return None


class _ActivationAfterNorm(nn.Module):
    """What is left of timm's BatchNormAct2d once its normalisation is folded into the conv before it."""

    def __init__(self, norm_act: nn.Module):
        super().__init__()
        self.drop = getattr(norm_act, "drop", nn.Identity())
        self.act = getattr(norm_act, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def fold_batchnorm(model: nn.Module, example: torch.Tensor, tolerance: float = 1e-4) -> tuple[nn.Module, int]:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d into that conv's weights and bias.

    A frozen network computes the same function with one elementwise pass less per conv: on CPU that
    is a measurable share of an EfficientNet's time (depthwise convs are cheap, their BNs are not).
    Pairs are found by running ``example`` once and matching each BN's input tensor to the output of
    the conv that produced it, so no per-architecture module names are needed. The folded model is
    checked against the original on ``example``; if any output differs by more than ``tolerance``
    (relative to its scale) the original is returned untouched. Returns (model, number of BNs folded).
    """
    folded = copy.deepcopy(model).eval()
    produced: dict[int, nn.Conv2d] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    handles = []
    for module in folded.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(lambda m, i, o: produced.__setitem__(id(o), m)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(
                lambda m, i: pairs.append((produced[id(i[0])], m)) if id(i[0]) in produced else None))
    with torch.inference_mode():
        reference = model(example)
        folded(example)
    for handle in handles:
        handle.remove()
    convs = [conv for conv, _ in pairs]
    pairs = [(conv, bn) for conv, bn in pairs if convs.count(conv) == 1 and bn.track_running_stats]
    with torch.no_grad():
        for conv, bn in pairs:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            place = _parent_and_name(folded, bn)
            if place is not None:
                setattr(place[0], place[1], _ActivationAfterNorm(bn) if type(bn) is not nn.BatchNorm2d else nn.Identity())
        outputs = folded(example)
    flat = lambda o: list(o) if isinstance(o, (list, tuple)) else [o]  # noqa: E731
    for a, b in zip(flat(reference), flat(outputs)):
        if (a - b).abs().max() > tolerance * max(1.0, a.abs().max().item()):
            return model, 0
    return folded.requires_grad_(False), len(pairs)
