"""One plain training loop for every detector that trains (STPM, autoencoders, GANs).

Seeded; a progress bar per epoch; per-epoch mean of every loss the step returns; an optional
validation loss on held-out normal images that drives early stopping, reduce-on-plateau and the choice
of the best epoch (never the test set); a checkpoint after every epoch from which training resumes.

Checkpoints are written with ``torch.save`` and read with ``torch.load(weights_only=True)``: tensors,
numbers and dicts only, so loading one runs no code from the file.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from anomalens.outputs.atomic import atomic_path
from anomalens.progress import iterate_progress
from anomalens.errors import ModelFileError

Step = Callable[[dict], Mapping[str, float]]


def multi_tensor_updates(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.optim.Optimizer]:
    """The optimisers, each updating all its tensors per operation (``foreach``) where the model left torch's
    choice open: on a CPU torch's default is one tensor at a time. The same arithmetic, so the same weights
    bit for bit (tools.bitwise_check), and Adam's step on CFlow's decoders 70 -> 33 ms (2 threads)."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            if group.get("foreach", False) is None:
                group["foreach"] = True
    return optimizers


def descend(losses: Mapping[str, torch.Tensor], optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, float]:
    """One step of every optimiser on ``losses["loss"]`` (gradients cleared first, so that each optimiser steps on
    this batch's alone); returns every loss as a float, for the history."""
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    for optimizer in optimizers.values():
        optimizer.step()
    return {name: value.item() for name, value in losses.items()}


@dataclass
class TrainingSetup:
    """What a model hands to ``train``.

    modules: the trainable modules (saved in checkpoints; best state restored at the end).
    optimizers / schedulers: saved in checkpoints too; a ReduceLROnPlateau is stepped with the
        validation loss, any other scheduler once per epoch.
    step: one optimisation step on a batch; returns the losses to log (floats).
    batches: ``batches(epoch)`` yields the training batches of that epoch (seeded shuffling is the
        caller's, so that resuming replays the same order).
    validate: mean validation loss on held-out normal data, or None (then the last epoch is kept).
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step: Step
    batches: Callable[[int], Iterable[dict]]
    validate: Callable[[], float] | None = None
    schedulers: dict[str, object] = field(default_factory=dict)
    # False: resume from the checkpoint but never write it (the ranks but 0 of a data-parallel job).
    save_checkpoints: bool = True


@dataclass
class TrainingResult:
    """What ``train`` returns.

    history: per-epoch curves {loss name: values, 'val_loss': ...} (what the report plots).
    best_epoch: the epoch (0-based) with the lowest validation loss, or None without validation.
    kept_epoch: the epoch whose weights the modules hold now: ``best_epoch`` when it was restored,
        else the last epoch trained (-1 if none ran).
    """

    history: dict[str, list[float]]
    best_epoch: int | None
    kept_epoch: int


def _state(setup: TrainingSetup) -> dict:
    return {
        "modules": {k: m.state_dict() for k, m in setup.modules.items()},
        "optimizers": {k: o.state_dict() for k, o in setup.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in setup.schedulers.items()},
    }


def _load_state(setup: TrainingSetup, state: dict) -> None:
    for k, m in setup.modules.items():
        m.load_state_dict(state["modules"][k])
    for k, o in setup.optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in setup.schedulers.items():
        s.load_state_dict(state["schedulers"][k])


def train(
    setup: TrainingSetup,
    epochs: int,
    seed: int,
    patience: int | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    desc: str = "train",
    restore_best: bool = True,
) -> TrainingResult:
    """Run the loop and return the history and which epoch the modules hold.

    With validation, the best validation epoch's weights are put back at the end unless
    ``restore_best`` is False (then the last epoch's stay). With ``checkpoint`` set and the file
    present, training resumes after its last completed epoch.
    """
    torch.manual_seed(seed)
    history: dict[str, list[float]] = {}
    best_loss, best_state, best_epoch, start_epoch, stale = math.inf, None, -1, 0, 0
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            _load_state(setup, saved["state"])
        except Exception as exc:  # a torn or foreign file: say which and why
            raise ModelFileError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc})") from None
        history, start_epoch = saved["history"], saved["epoch"] + 1
        best_loss, best_epoch, stale = saved["best_loss"], saved["best_epoch"], saved["stale"]
        best_state = saved["best_state"]
        torch.set_rng_state(saved["rng"])
    for epoch in range(start_epoch, epochs):
        if patience is not None and stale >= patience:
            break
        for module in setup.modules.values():
            module.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in iterate_progress(setup.batches(epoch), progress, f"{desc} epoch {epoch + 1}/{epochs}"):
            for name, value in setup.step(batch).items():
                sums[name] = sums.get(name, 0.0) + float(value)
            count += 1
        for name, total in sums.items():
            history.setdefault(name, []).append(total / max(count, 1))
        for module in setup.modules.values():
            module.eval()
        if setup.validate is not None:
            with torch.no_grad():
                val = float(setup.validate())
            history.setdefault("val_loss", []).append(val)
            if val < best_loss:
                best_loss, best_epoch, stale = val, epoch, 0
                best_state = copy.deepcopy({k: m.state_dict() for k, m in setup.modules.items()})
            else:
                stale += 1
        for scheduler in setup.schedulers.values():
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if setup.validate is not None:
                    scheduler.step(history["val_loss"][-1])
            else:
                scheduler.step()
        if path is not None and setup.save_checkpoints:
            _save_checkpoint(path, {
                "state": _state(setup), "history": history, "epoch": epoch, "best_loss": best_loss,
                "best_epoch": best_epoch, "stale": stale, "best_state": best_state, "rng": torch.get_rng_state(),
            })
    last_epoch = len(next(iter(history.values()), [])) - 1
    kept_epoch = last_epoch
    if best_state is not None and restore_best:
        for k, m in setup.modules.items():
            m.load_state_dict(best_state[k])
        kept_epoch = best_epoch
    for module in setup.modules.values():
        module.eval()
    return TrainingResult(history, best_epoch if best_state is not None else None, kept_epoch)


def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def module_tensors(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """{"<name>.<param>": tensor} for every network (BatchNorm running statistics included)."""
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def load_module_tensors(modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what ``module_tensors`` saved (strict: missing or unexpected keys raise)."""
    for name, m in modules.items():
        prefix = name + "."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        m.to(device).eval()
