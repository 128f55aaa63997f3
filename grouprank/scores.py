"""Score helpers shared by the retrieval fusion (``indexer``) and the rerank fusion (``reranker``)."""

from __future__ import annotations

from collections.abc import Sequence


def min_max(scores: Sequence[float]) -> list[float]:
    """Scale scores to [0, 1] (best = 1); if all are equal (or there is one), each becomes 1.0."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]
