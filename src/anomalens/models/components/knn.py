"""Exact k-nearest-neighbour search (L2) in bounded memory, shared by PatchCore and SPADE.

The distance matrix between Q queries and M gallery vectors is never materialised: queries are taken
``query_chunk`` at a time and, for each such chunk, the gallery ``bank_chunk`` rows at a time, keeping a
running top-k. Squared distances come from one GEMM per block,
‖x − m‖² = ‖x‖² − 2 x·m + ‖m‖², with ‖x‖² added only after the minimum (it does not change the order).

Memory bound (beyond the inputs and the (Q, k) outputs), with D the feature dimension:
    4·query_chunk·bank_chunk bytes for one distance block
  + 4·bank_chunk·D bytes for a gathered gallery chunk (only when ``rows`` selects a subset)
  + O(query_chunk·k) for the running top-k
— with the defaults (1024 × 4096) 16 MiB plus the gathered chunk, whatever Q and M are.

Precision: the GEMM form loses absolute accuracy ≈ 1e-7·‖x‖² in float32, which is why the gallery mean
is subtracted from both sides first (``center=True``): distances are unchanged, norms become small.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_QUERY_CHUNK = 1024
DEFAULT_BANK_CHUNK = 4096


def _gallery_rows(bank: torch.Tensor, rows: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    return bank[start:stop] if rows is None else bank.index_select(0, rows[start:stop])


def nearest_neighbors(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    *,
    rows: torch.Tensor | None = None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    bank_chunk: int = DEFAULT_BANK_CHUNK,
    center: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery vectors of each query, exactly.

    queries: (Q, D); bank: (M, D) on the same device. ``rows`` (optional, int64) restricts the gallery to
    ``bank[rows]`` without copying it whole (SPADE's per-image galleries); returned indices then refer
    to positions in ``rows``. Returns (distances (Q, k) float32 Euclidean, ascending; indices (Q, k)
    int64). Ties between chunks keep the earlier gallery row.
    """
    size = bank.shape[0] if rows is None else rows.shape[0]
    if size == 0:
        raise ValueError("nearest_neighbors: empty gallery")
    if not 1 <= k <= size:
        raise ValueError(f"nearest_neighbors: k must be in 1..{size}, got {k}")
    if queries.shape[-1] != bank.shape[-1]:
        raise ValueError(f"nearest_neighbors: dimension mismatch {queries.shape[-1]} vs {bank.shape[-1]}")
    queries, bank = queries.float(), bank.float()
    device = queries.device

    # Centre on the gallery mean and precompute gallery norms, both streamed chunk by chunk.
    shift = torch.zeros(bank.shape[-1], device=device)
    if center:
        for b0 in range(0, size, bank_chunk):
            shift += _gallery_rows(bank, rows, b0, b0 + bank_chunk).sum(0, dtype=torch.float64).float()
        shift /= size
    bank_sq = torch.empty(size, device=device)
    for b0 in range(0, size, bank_chunk):
        chunk = _gallery_rows(bank, rows, b0, b0 + bank_chunk) - shift
        bank_sq[b0 : b0 + chunk.shape[0]] = chunk.pow(2).sum(1)

    n_queries = queries.shape[0]
    out_dist = torch.empty((n_queries, k), device=device)
    out_index = torch.empty((n_queries, k), dtype=torch.long, device=device)
    # One reused buffer for the distance blocks: a fresh 16 MiB tensor per block costs page faults that
    # took longer than the GEMM itself for thin features (measured: 24 vs 9 ms per block at D = 24).
    buffer = torch.empty(min(query_chunk, n_queries) * min(bank_chunk, size), device=device)
    for q0 in range(0, n_queries, query_chunk):
        x = queries[q0 : q0 + query_chunk] - shift
        best_d = torch.full((x.shape[0], k), float("inf"), device=device)
        best_i = torch.zeros((x.shape[0], k), dtype=torch.long, device=device)
        for b0 in range(0, size, bank_chunk):
            chunk = _gallery_rows(bank, rows, b0, b0 + bank_chunk) - shift
            # ‖m‖² − 2 x·m in one fused GEMM; ‖x‖² is constant per row and added at the end.
            out = buffer[: x.shape[0] * chunk.shape[0]].view(x.shape[0], chunk.shape[0])
            block = torch.addmm(bank_sq[b0 : b0 + chunk.shape[0]], x, chunk.T, alpha=-2.0, out=out)
            if k == 1:
                # The minimum alone is several times cheaper than min-with-index; the index is then
                # found only for the rows this block improves (fewer and fewer as the chunks go by).
                d = block.amin(1, keepdim=True)
                better = (d < best_d).squeeze(1).nonzero().squeeze(1)
                if better.numel():
                    best_d[better] = d[better]
                    best_i[better, 0] = block.index_select(0, better).argmin(1) + b0
            else:
                d, i = block.topk(min(k, block.shape[1]), dim=1, largest=False, sorted=False)
                merged_d = torch.cat([best_d, d], 1)
                merged_i = torch.cat([best_i, i + b0], 1)
                best_d, pick = merged_d.topk(k, dim=1, largest=False, sorted=False)
                best_i = merged_i.gather(1, pick)
        if k > 1:
            best_d, order = best_d.sort(1)
            best_i = best_i.gather(1, order)
        out_dist[q0 : q0 + x.shape[0]] = (best_d + x.pow(2).sum(1, keepdim=True)).clamp_min_(0).sqrt_()
        out_index[q0 : q0 + x.shape[0]] = best_i
    return out_dist, out_index


class ExactNearest(nn.Module):
    """Exact L2 nearest neighbours in a fixed gallery as plain tensor operations (a static graph).

    The same arithmetic as ``nearest_neighbors`` with ``center=True``: the gallery is centred on its mean,
    squared distances come from one GEMM per ``bank_chunk`` gallery rows, ‖m‖² − 2 x·m, with ‖x‖² added
    after the minimum; chunks are merged keeping the earlier row on ties. The chunks are fixed when the
    module is built, so an exported graph is unrolled over them and holds Q·bank_chunk floats per step
    for Q queries (queries are not chunked: their number depends on the batch). ``bank`` is kept as given
    (one copy; the centred chunks are formed on the fly, M·D subtractions per call).
    """

    def __init__(self, bank: torch.Tensor, bank_chunk: int = DEFAULT_BANK_CHUNK) -> None:
        super().__init__()
        bank = bank.float()
        shift = torch.zeros(bank.shape[-1], device=bank.device)
        for b0 in range(0, bank.shape[0], bank_chunk):
            shift += bank[b0 : b0 + bank_chunk].sum(0, dtype=torch.float64).float()
        shift /= bank.shape[0]
        self.register_buffer("bank", bank, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.bounds = [(b0, min(b0 + bank_chunk, bank.shape[0])) for b0 in range(0, bank.shape[0], bank_chunk)]

    def squared_blocks(self, queries: torch.Tensor):
        """Yield (first gallery row, ‖m‖² − 2 x·m block (Q, m)) per gallery chunk, for centred queries."""
        for b0, b1 in self.bounds:
            chunk = self.bank[b0:b1] - self.shift
            yield b0, torch.addmm(chunk.pow(2).sum(1), queries, chunk.T, alpha=-2.0)

    def forward(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) → (distances (Q,), indices (Q,) int64) of the nearest gallery row."""
        x = queries.float() - self.shift
        best_d = best_i = None
        for b0, block in self.squared_blocks(x):
            d, i = block.min(1)
            if best_d is None:
                best_d, best_i = d, i
            else:
                better = d < best_d
                best_d = torch.where(better, d, best_d)
                best_i = torch.where(better, i + b0, best_i)
        return (best_d + x.pow(2).sum(1)).clamp_min(0).sqrt(), best_i

    def distances(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, D) → (Q,) distances to the nearest gallery row, without its index: a minimum alone, where the
        minimum with its index became a TopK in OpenVINO that took over half of PatchCore's graph time
        (benchmarks/export_precision.py, 'where the time goes'). ``nearest_index`` finds the rows needed."""
        x = queries.float() - self.shift
        best = None
        for _, block in self.squared_blocks(x):
            d = block.amin(1)
            best = d if best is None else torch.minimum(best, d)
        return (best + x.pow(2).sum(1)).clamp_min(0).sqrt()

    def nearest_index(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, D) → (Q,) int64 index of the nearest gallery row, the earliest on ties (for few queries: the
        whole (Q, M) block is formed)."""
        x = queries.float() - self.shift
        return torch.cat([b for _, b in self.squared_blocks(x)], dim=1).argmin(1)

    def k_nearest(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """(Q, D) → (Q, k) indices of the k nearest gallery rows, nearest first (for few queries: the whole
        (Q, M) block is formed)."""
        x = queries.float() - self.shift
        block = torch.cat([b for _, b in self.squared_blocks(x)], dim=1)
        return block.topk(k, dim=1, largest=False, sorted=True).indices


def nearest_in_two_groups(
    queries: torch.Tensor,
    bank: torch.Tensor,
    group: torch.Tensor,
    *,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    bank_chunk: int = DEFAULT_BANK_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each query, its nearest gallery row and the nearest row of any *other* group, exactly.

    ``group`` (M,) int64 labels the gallery rows (e.g. the threshold fold each bank entry came from).
    Returns (d1 (Q,) the nearest distance, i1 (Q,) that row, g1 (Q,) its group, d2 (Q,) the nearest distance
    among the rows not in group g1; inf when there is no other group). With them, the distance of a query to the
    gallery less any one group h is ``d1 if g1 != h else d2`` — every fold's masked nearest neighbour from
    one pass over the gallery (PatchCore's out-of-fold scores). Same arithmetic and memory bound as
    ``nearest_neighbors`` (centred GEMM blocks), plus Q × (number of groups) floats per query chunk.
    """
    if queries.shape[-1] != bank.shape[-1]:
        raise ValueError(f"nearest_in_two_groups: dimension mismatch {queries.shape[-1]} vs {bank.shape[-1]}")
    if bank.shape[0] == 0:
        raise ValueError("nearest_in_two_groups: empty gallery")
    queries, bank = queries.float(), bank.float()
    device = queries.device
    labels, inverse = torch.unique(group.to(device), return_inverse=True)
    order = torch.argsort(inverse, stable=True)  # each group's rows contiguous: one amin per block
    counts = torch.bincount(inverse, minlength=len(labels)).tolist()
    shift = bank.sum(0, dtype=torch.float64).float() / bank.shape[0]
    sorted_bank = bank[order] - shift
    bank_sq = sorted_bank.pow(2).sum(1)
    # (group, first row, last row) blocks of at most bank_chunk rows, never spanning two groups
    blocks, start = [], 0
    for g, count in enumerate(counts):
        blocks += [(g, b0, min(b0 + bank_chunk, start + count)) for b0 in range(start, start + count, bank_chunk)]
        start += count
    n = queries.shape[0]
    d1, d2 = torch.empty(n, device=device), torch.empty(n, device=device)
    g1 = torch.empty(n, dtype=torch.long, device=device)
    i1 = torch.empty(n, dtype=torch.long, device=device)
    for q0 in range(0, n, query_chunk):
        x = queries[q0 : q0 + query_chunk] - shift
        per_group = torch.full((x.shape[0], len(labels)), float("inf"), device=device)
        best_i = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        for g, b0, b1 in blocks:
            block = torch.addmm(bank_sq[b0:b1], x, sorted_bank[b0:b1].T, alpha=-2.0)
            d = block.amin(1)
            # the row only where this block holds the nearest so far (the minimum alone is cheaper)
            better = (d < per_group.amin(1)).nonzero().squeeze(1)
            if better.numel():
                best_i[better] = block.index_select(0, better).argmin(1) + b0
            torch.minimum(per_group[:, g], d, out=per_group[:, g])
        best = per_group.topk(min(2, len(labels)), dim=1, largest=False, sorted=True)
        x_sq = x.pow(2).sum(1)
        d1[q0 : q0 + x.shape[0]] = (best.values[:, 0] + x_sq).clamp_min_(0).sqrt_()
        g1[q0 : q0 + x.shape[0]] = labels[best.indices[:, 0]]
        i1[q0 : q0 + x.shape[0]] = order[best_i]
        second = best.values[:, 1] if len(labels) > 1 else torch.full_like(x_sq, float("inf"))
        d2[q0 : q0 + x.shape[0]] = (second + x_sq).clamp_min_(0).sqrt_()
    return d1, i1, g1, d2
