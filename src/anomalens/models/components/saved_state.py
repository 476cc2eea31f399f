"""Checks of a restored state, shared by the feature-based detectors (PaDiM, PatchCore, SPADE).

A run's tensors are checked against its parameters when they are restored (``_load_state_tensors``): a
tensor edited in a way the file hashes cannot see (both files rewritten together) must fail with one line,
not index out of range, reshape wrongly or score silently differently.
"""

from __future__ import annotations

from typing import Any

import torch


def check_tensor_names(tensors: dict[str, torch.Tensor], expected: set[str]) -> None:
    """ValueError when the saved tensors are not exactly ``expected`` (missing or unexpected names)."""
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(", ".join(([f"missing tensor(s) {', '.join(missing)}"] if missing else [])
                                   + ([f"unexpected tensor(s) {', '.join(extra)}"] if extra else [])))


def checked_grid(tensor: torch.Tensor, name: str) -> tuple[int, int]:
    """A saved (2,) integer grid size as a tuple of positive ints; ValueError otherwise."""
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool or tuple(tensor.shape) != (2,):
        raise ValueError(f"tensor '{name}' must be 2 integers, got {tensor.dtype} of shape {tuple(tensor.shape)}")
    grid = tuple(int(g) for g in tensor.tolist())
    if min(grid) < 1:
        raise ValueError(f"tensor '{name}' must be 2 positive integers, got {grid}")
    return grid  # type: ignore[return-value]


def checked_float(tensor: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A saved floating-point tensor of exactly ``shape``, as float32; ValueError otherwise."""
    if not tensor.is_floating_point() or tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"tensor '{name}' must be floating point of shape {tuple(shape)} for these parameters, got "
                         f"{tensor.dtype} of shape {tuple(tensor.shape)}")
    return tensor.float()


def checked_channel_index(tensor: torch.Tensor, d: int, total: int) -> torch.Tensor:
    """A saved channel subset: ``d`` distinct integers in 0..total-1, ascending (as ``_choose_channels``)."""
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool or tuple(tensor.shape) != (d,):
        raise ValueError(f"tensor 'channel_index' must be {d} integers for these parameters, got {tensor.dtype} of "
                         f"shape {tuple(tensor.shape)}")
    index = tensor.long()
    if d and (int(index.min()) < 0 or int(index.max()) >= total):
        raise ValueError(f"tensor 'channel_index' holds channels outside 0..{total - 1} (the backbone's channels): "
                         f"{int(index.min())}..{int(index.max())}")
    if d > 1 and not bool((index[1:] > index[:-1]).all()):
        raise ValueError("tensor 'channel_index' must hold distinct channels in ascending order")
    return index


def check_backbone_grid(detector: Any, stored: torch.Tensor) -> None:
    """The saved ``grid_size`` must be the grid the detector's backbone gives at its input size (one blank
    image through ``detector.embed``, which sets ``grid_size_``): an edited grid would misplace every map."""
    stored_grid = checked_grid(stored, "grid_size")
    with torch.inference_mode():
        detector.embed(torch.zeros(1, 3, *detector.model_input_size))
    if stored_grid != detector.grid_size_:
        raise ValueError(f"tensor 'grid_size' is {stored_grid}, but the backbone gives a {detector.grid_size_} grid at "
                         f"{detector.model_input_size[0]}×{detector.model_input_size[1]}")


def packed_lower(matrices: torch.Tensor) -> torch.Tensor | None:
    """(..., d, d) matrices → (..., d(d+1)/2) their lower triangles, row by row — or None when some entry above
    a diagonal is not zero (nothing to gain, and packing would lose it). A Cholesky whitener L⁻¹ is lower
    triangular: packed, PaDiM's run is half the size (83 MB instead of 165 at 256 px, d = 100) and half the write."""
    d = matrices.shape[-1]
    above = torch.triu_indices(d, d, 1, device=matrices.device)
    if bool(matrices[..., above[0], above[1]].any()):
        return None
    rows, cols = torch.tril_indices(d, d, device=matrices.device)
    return matrices[..., rows, cols].contiguous()


def unpacked_lower(packed: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``packed_lower``'s (..., d(d+1)/2) triangles → (..., d, d) float matrices of ``shape`` (zeros above the
    diagonal); ValueError naming the tensor when its shape or type does not fit."""
    d = shape[-1]
    packed = checked_float(packed, name, (*shape[:-2], d * (d + 1) // 2))
    matrices = torch.zeros(shape, dtype=packed.dtype, device=packed.device)
    rows, cols = torch.tril_indices(d, d, device=packed.device)
    matrices[..., rows, cols] = packed
    return matrices
