"""Approximate nearest-neighbour search (HNSW graph, faiss) for large PatchCore memory banks.

Optional: ``pip install 'anomalens[faiss]'``. Exact search (``components/knn.py``) stays the default:
measured on this project's 2-core CPU with efficientnet_lite0 patch features (152-d, 1 024 queries per
256-px image, 1 thread), exact search costs 94 ms per image against a 12 288-entry bank (10 % coreset of
120 images) and 771 ms against 122 880 entries; an HNSW graph (M = 32, efConstruction = 40,
efSearch = 64) costs 95 ms and 177 ms, with recall@1 = 1.000 on both, and takes 1.2 s / 20 s to build.
So the graph pays off only for banks of roughly 100 000 entries and up (≈ 1 000 training images at the
paper's 10 % coreset). ``benchmarks/patchcore_search.py`` measures it end to end.

The graph is built once at fit time and saved with the model as faiss's own byte serialisation (read back
by faiss's parser: no code runs from it). HNSW returns squared L2 distances; they are turned into
Euclidean ones so the scores keep the exact search's scale.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from anomalens.errors import ConfigError

HNSW_M = 32  # graph degree
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "approximate search needs faiss: pip install 'anomalens[faiss]' (or faiss-cpu); "
            "or use the default exact search (-p search=exact)"
        ) from None
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


class HNSWIndex:
    """An HNSW graph over a (M, D) float32 bank; ``search`` mirrors ``nearest_neighbors`` (k = 1)."""

    def __init__(self, index, dim: int, size: int) -> None:
        self.index, self.dim, self.size = index, dim, size

    @classmethod
    def build(cls, bank: torch.Tensor) -> "HNSWIndex":
        faiss = _faiss()
        data = np.ascontiguousarray(bank.detach().float().cpu().numpy())
        index = faiss.IndexHNSWFlat(data.shape[1], HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(data)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return cls(index, data.shape[1], data.shape[0])

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) queries → (distances (Q, 1) Euclidean, indices (Q, 1) int64), on the queries' device."""
        if queries.shape[-1] != self.dim:
            raise ValueError(f"hnsw search: dimension mismatch {queries.shape[-1]} vs {self.dim}")
        _faiss()  # threads follow torch's setting at search time too
        squared, index = self.index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), 1)
        dist = torch.from_numpy(np.sqrt(np.maximum(squared, 0.0))).to(queries.device)
        return dist, torch.from_numpy(index.astype(np.int64)).to(queries.device)

    def to_tensor(self) -> torch.Tensor:
        """The graph as a uint8 tensor (faiss's serialisation), to store beside the bank."""
        return torch.from_numpy(_faiss().serialize_index(self.index).copy())

    @classmethod
    def from_tensor(cls, data: torch.Tensor, bank: torch.Tensor) -> "HNSWIndex":
        """Read a graph saved by ``to_tensor``; it must index exactly ``bank``'s rows and dimension."""
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(data.cpu().numpy().astype(np.uint8)))
        except RuntimeError as exc:
            raise ValueError(f"the saved HNSW index is unreadable ({str(exc).splitlines()[0]})") from None
        if not isinstance(index, faiss.IndexHNSWFlat):
            raise ValueError(f"the saved index is a {type(index).__name__}, not an HNSW graph")
        if index.ntotal != bank.shape[0] or index.d != bank.shape[1]:
            raise ValueError(f"the saved HNSW index holds {index.ntotal} × {index.d}, the bank is {tuple(bank.shape)}")
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return cls(index, index.d, index.ntotal)


class HNSWSearch(nn.Module):
    """The approximate HNSW search in the place of ``knn.ExactNearest`` (queries → distances, indices, flat):
    runs in Python (faiss), so a graph holding it is not exportable."""

    def __init__(self, index: HNSWIndex) -> None:
        super().__init__()
        self.index = index

    def forward(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist, nearest = self.index.search(queries)
        return dist.reshape(-1), nearest.reshape(-1)
