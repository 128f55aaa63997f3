"""Rank fusion of several retrievers' ranked lists, as pure functions.

A ranking is a list of ``(doc_id, score)``, best first; a document's rank is its 1-based position.
Results are sorted by fused score, ties broken by the best rank the document has in any retriever,
then by id, so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from grouprank.scores import min_max

Ranking = Sequence[tuple[str, float]]


def ranks(ranking: Ranking) -> dict[str, int]:
    """1-based rank of each document (its first occurrence if repeated)."""
    out: dict[str, int] = {}
    for position, (doc_id, _) in enumerate(ranking, start=1):
        out.setdefault(doc_id, position)
    return out


def rrf(rankings: Mapping[str, Ranking], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``score(d) = sum over retrievers of 1 / (k + rank(d))``."""
    fused: dict[str, float] = {}
    best: dict[str, int] = {}
    for ranking in rankings.values():
        for doc_id, rank in ranks(ranking).items():
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (k + rank)
            best[doc_id] = min(best.get(doc_id, rank), rank)
    return _ordered(fused, best)


def weighted(rankings: Mapping[str, Ranking], weights: Mapping[str, float]) -> list[tuple[str, float]]:
    """``score(d) = sum over retrievers of weight * min_max(score)``; a missing document adds 0.

    Every retriever in ``rankings`` needs a weight.
    """
    fused: dict[str, float] = {}
    best: dict[str, int] = {}
    for name, ranking in rankings.items():
        weight = weights[name]
        first = ranks(ranking)
        normalised = min_max([score for _, score in ranking])
        for position, ((doc_id, _), norm) in enumerate(zip(ranking, normalised, strict=True), start=1):
            if first[doc_id] != position:
                continue  # a repeated document counts once, at its first (best) position
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * norm
            best[doc_id] = min(best.get(doc_id, position), position)
    return _ordered(fused, best)


def _ordered(fused: dict[str, float], best: dict[str, int]) -> list[tuple[str, float]]:
    return sorted(fused.items(), key=lambda item: (-item[1], best[item[0]], item[0]))
