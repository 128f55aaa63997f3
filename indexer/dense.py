"""Inner-product vector search over FAISS, keyed by the store's int64 keys.

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; removing a key really removes it.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` (inner product); HNSW cannot remove vectors, so a replaced
  or deleted version's vector stays as a *stale* one: the caller maps keys back through the store
  (which drops them) and over-fetches by the number of stale vectors. A reindex clears them.
- ``ivf``: ``IndexIVFFlat`` (inner product, its own ids), trained when built; with fewer than
  ``IVF_MIN_POINTS_PER_LIST * nlist`` vectors it falls back to flat and says so in ``note``.

Vectors are unit length (see ``indexer.embedder``), so scores are cosine similarities.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from indexer.config import IndexConfig

IVF_MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per list
MAX_STALE_OVERFETCH = 3  # over-fetch at most this many times the depth for stale HNSW vectors
FEW_QUERIES = 8  # searched single-threaded


class DenseIndex:
    """A FAISS index plus what kind it is; ``kind`` is what was actually built (after any fallback)."""

    def __init__(self, index: faiss.Index, kind: str, note: str | None = None) -> None:
        self.index = index
        self.kind = kind
        self.note = note
        self.stale = 0  # vectors of versions no longer current (HNSW only); set by the owner

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
        """Apply the search-time settings (efSearch, nprobe)."""
        if self.kind == "hnsw":
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", config.hnsw_ef_search)
        elif self.kind == "ivf":
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", config.ivf_nprobe)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    def copy(self) -> DenseIndex:
        clone = DenseIndex(faiss.clone_index(self.index), self.kind, self.note)
        clone.stale = self.stale
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

    def remove(self, keys: np.ndarray) -> None:
        """Remove keys (flat, ivf); for HNSW the vectors stay and become stale."""
        keys = _i64(keys)
        if not len(keys):
            return
        if self.kind == "hnsw":
            self.stale += int(np.isin(keys, faiss.vector_to_array(self.index.id_map)).sum())
        else:
            self.index.remove_ids(keys)

    def search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys), each (n, m) with ``m >= depth`` when possible; missing slots have key -1.

        A few queries run on one OpenMP thread: on a busy CPU, threads waiting on each other make a
        single-query search several times slower (the setting is per calling thread).
        """
        if self.ntotal == 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        fetch = min(depth + min(self.stale, MAX_STALE_OVERFETCH * depth), self.ntotal)
        if len(queries) > FEW_QUERIES:
            return self.index.search(_f32(queries), fetch)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(_f32(queries), fetch)
        finally:
            faiss.omp_set_num_threads(before)


def _f32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _i64(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys, dtype=np.int64)
