"""Inner-product vector search over FAISS, keyed by the store's int64 keys.

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; removing a key really removes it.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` (inner product); HNSW cannot remove vectors, so a replaced
  or deleted version's vector stays as a *stale* one: the caller maps keys back through the store
  (which drops them) and over-fetches by the number of stale vectors. A reindex clears them.
- ``ivf``: ``IndexIVFFlat`` (inner product, its own ids), trained when built; with fewer than
  ``IVF_MIN_POINTS_PER_LIST * nlist`` vectors it falls back to flat and says so in ``note``.

Vectors are unit length (see ``indexer.embedder``), so scores are cosine similarities.

``IndexConfig.dense_device``: on "cuda" (or "auto" where torch and a faiss GPU build both see a GPU),
flat and IVF indexes are searched on a GPU copy of the CPU index; writes go to the CPU index (the one
saved), and the GPU copy is rebuilt on the next search. HNSW has no GPU version and stays on the CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from grouprank.errors import GroupRankError
from indexer.config import IndexConfig

IVF_MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per list
MAX_STALE_OVERFETCH = 3  # over-fetch at most this many times the depth for stale HNSW vectors
FEW_QUERIES = 8  # searched single-threaded
GPU_KINDS = ("flat", "ivf")


def gpu_available() -> bool:
    """True where a faiss GPU build sees a GPU and torch sees CUDA (for the encoder)."""
    if getattr(faiss, "get_num_gpus", lambda: 0)() <= 0:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(setting: str) -> str:
    """"cpu" or "cuda" for an ``IndexConfig.dense_device`` setting; "cuda" without a GPU is an error."""
    if setting == "cpu":
        return "cpu"
    if gpu_available():
        return "cuda"
    if setting == "cuda":
        raise GroupRankError(
            "dense_device is 'cuda' but no GPU is usable here (needs CUDA torch and a faiss GPU build with "
            f"a GPU: faiss.get_num_gpus() = {getattr(faiss, 'get_num_gpus', lambda: 0)()}); use 'auto' or 'cpu'"
        )
    return "cpu"


@functools.cache
def _gpu_resources() -> Any:
    return faiss.StandardGpuResources()


class DenseIndex:
    """A FAISS index plus what kind it is; ``kind`` is what was actually built (after any fallback)."""

    def __init__(self, index: faiss.Index, kind: str, note: str | None = None) -> None:
        self.index = index
        self.kind = kind
        self.note = note
        self.stale = 0  # vectors of versions no longer current (HNSW only); set by the owner
        self.device = "cpu"  # where searches run: "cuda" for flat/IVF under dense_device cuda/auto
        self.nprobe: int | None = None
        self._gpu: Any = None  # GPU copy of ``index``, built on the first search after a change

    @classmethod
    def build(cls, vectors: np.ndarray, keys: np.ndarray, config: IndexConfig, dim: int) -> DenseIndex:
        """A new index of ``config.dense_index`` type holding ``vectors`` under ``keys``."""
        kind, note = config.dense_index, None
        if kind == "ivf" and len(vectors) < IVF_MIN_POINTS_PER_LIST * config.ivf_nlist:
            kind = "flat"
            note = (
                f"ivf needs at least {IVF_MIN_POINTS_PER_LIST * config.ivf_nlist} vectors to train "
                f"{config.ivf_nlist} lists, had {len(vectors)}: serving flat (reindex when larger)"
            )
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = config.hnsw_ef_construction
            index = faiss.IndexIDMap2(hnsw)
        else:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, config.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(_f32(vectors))
        dense = cls(index, kind, note)
        dense.configure(config)
        if len(vectors):
            index.add_with_ids(_f32(vectors), _i64(keys))
        return dense

    @classmethod
    def load(cls, path: Path, config: IndexConfig, kind: str, note: str | None = None) -> DenseIndex:
        dense = cls(faiss.read_index(str(path)), kind, note)
        dense.configure(config)
        return dense

    def configure(self, config: IndexConfig) -> None:
        """Apply the search-time settings (efSearch, nprobe, device)."""
        if self.kind == "hnsw":
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", config.hnsw_ef_search)
        elif self.kind == "ivf":
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", config.ivf_nprobe)
            self.nprobe = config.ivf_nprobe
        device = resolve_device(config.dense_device)
        self.device = device if self.kind in GPU_KINDS else "cpu"
        self._gpu = None

    def _searcher(self) -> Any:
        """The index that searches: the CPU one, or its GPU copy (made now if a write dropped it)."""
        if self.device != "cuda":
            return self.index
        if self._gpu is None:
            self._gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self.index)
            if self.nprobe is not None:
                faiss.GpuParameterSpace().set_index_parameter(self._gpu, "nprobe", self.nprobe)
        return self._gpu

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    def copy(self) -> DenseIndex:
        clone = DenseIndex(faiss.clone_index(self.index), self.kind, self.note)
        clone.stale = self.stale
        clone.device, clone.nprobe = self.device, self.nprobe
        if self.kind == "hnsw":  # clone_index keeps efSearch, but be explicit about it
            ef = faiss.downcast_index(self.index.index).hnsw.efSearch
            faiss.ParameterSpace().set_index_parameter(clone.index, "efSearch", ef)
        return clone

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        """Add vectors under keys; adding a key that is already there again is a no-op (idempotent)."""
        keys = _i64(keys)
        if not len(keys):
            return
        if self.kind == "hnsw":
            fresh = ~np.isin(keys, faiss.vector_to_array(self.index.id_map))
            vectors, keys = np.asarray(vectors)[fresh], keys[fresh]
            if not len(keys):
                return
        else:
            self.index.remove_ids(keys)
        self.index.add_with_ids(_f32(vectors), keys)
        self._gpu = None

    def remove(self, keys: np.ndarray) -> None:
        """Remove keys (flat, ivf); for HNSW the vectors stay and become stale."""
        keys = _i64(keys)
        if not len(keys):
            return
        if self.kind == "hnsw":
            self.stale += int(np.isin(keys, faiss.vector_to_array(self.index.id_map)).sum())
        else:
            self.index.remove_ids(keys)
            self._gpu = None

    def search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys), each (n, m) with ``m >= depth`` when possible; missing slots have key -1.

        A few queries run on one OpenMP thread: on a busy CPU, threads waiting on each other make a
        single-query search several times slower (the setting is per calling thread).
        """
        if self.ntotal == 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        fetch = min(depth + min(self.stale, MAX_STALE_OVERFETCH * depth), self.ntotal)
        searcher = self._searcher()
        if len(queries) > FEW_QUERIES or self.device == "cuda":
            return searcher.search(_f32(queries), fetch)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return searcher.search(_f32(queries), fetch)
        finally:
            faiss.omp_set_num_threads(before)


def _f32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _i64(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys, dtype=np.int64)
