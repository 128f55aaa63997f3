"""What a retrieval backend offers: the interface the embedded ``Index`` and ``OpenSearchIndex`` share.

Code that only reads, writes and searches documents (the search API, the evaluation commands) should
type its index as ``SearchIndex`` and get one from ``indexer.backends.open_index``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexer.documents import Document
from indexer.hits import Hit


@runtime_checkable
class SearchIndex(Protocol):
    """Documents by id, searched by BM25, dense vectors or both fused, returning ``Hit``s.

    ``upsert`` validates the whole batch before writing (an invalid document stores nothing) and
    returns how many documents it stored; ``delete`` returns how many of the ids existed. Search
    modes are "bm25", "dense" and "hybrid"; ``reindex`` rebuilds the search structures from the
    stored documents and vectors and switches to them atomically, returning the new generation's name.
    """

    def __len__(self) -> int: ...

    def get(self, doc_id: str) -> Document | None: ...

    def iter_documents(self) -> Iterator[Document]: ...

    def embeddings(self, ids: Sequence[str]) -> np.ndarray: ...

    def upsert(self, docs: Iterable[Document], progress: bool = True) -> int: ...

    def delete(self, ids: Iterable[str]) -> int: ...

    def search(self, query: str, k: int = 10, mode: str = "hybrid", *, depth: int | None = None,
               fusion: str | None = None, dense_weight: float | None = None) -> list[Hit]: ...

    def search_batch(self, queries: Sequence[str], k: int = 10, mode: str = "hybrid", *, depth: int | None = None,
                     fusion: str | None = None, dense_weight: float | None = None) -> list[list[Hit]]: ...

    def reindex(self, progress: bool = True) -> str: ...

    def stats(self) -> dict[str, Any]: ...

    @property
    def generation(self) -> str: ...

    def warm_up(self) -> None:
        """Load what the first query would otherwise wait for (the query embedder)."""

    def ping(self) -> None:
        """Raise if the index cannot serve now (for readiness checks: the directory or cluster is gone)."""

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...
