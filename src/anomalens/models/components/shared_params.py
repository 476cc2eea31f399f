"""Hyper-parameters that several detectors share, declared once.

A detector spreads a set into its own ``hyperparameters`` (``**PRETRAINED_BACKBONE``) and declares only
what is its own, so the meaning, the accepted values and the default of "backbone", "weights",
"blur_sigma" and "patience" read the same in every ``anomalens params`` table and cannot drift apart.
The epochs / checkpoint pair of every trained detector is declared once on ``TrainedDetector``, and the
tiling pair on the contract.
"""

from __future__ import annotations

from dataclasses import replace

from anomalens.backbones import DEFAULT_BACKBONE
from anomalens.params import Float, Int, Param, Text

#: A frozen pretrained feature extractor (PaDiM, PatchCore, SPADE, Mahalanobis AD).
PRETRAINED_BACKBONE: dict[str, Param] = {
    "backbone": Text(DEFAULT_BACKBONE, "feature extractor: a bundled or timm backbone name"),
    "weights": Text(None, "backbone weights: null = bundled/timm pretrained, a file path, or 'random'", optional=True),
}

#: The Gaussian smoothing of an anomaly map (the feature detectors' papers: σ = 4 px).
MAP_BLUR: dict[str, Param] = {
    "blur_sigma": Float(4.0, "Gaussian blur of the anomaly map, in pixels (0: none)", low=0.0),
}

#: Early stopping of a trained detector on its validation loss (components.training).
EARLY_STOPPING: dict[str, Param] = {
    "patience": Int(None, "epochs without validation improvement before stopping; null = never", low=1, optional=True),
}


def with_default(params: dict[str, Param], **defaults: object) -> dict[str, Param]:
    """A shared set with another default for some of its parameters (the help and the bounds unchanged)."""
    unknown = set(defaults) - set(params)
    if unknown:
        raise KeyError(f"not in this parameter set: {', '.join(sorted(unknown))}")
    return {name: replace(param, default=defaults[name]) if name in defaults else param
            for name, param in params.items()}
