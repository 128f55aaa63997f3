"""The math of groupwise reranking, as pure functions: grouping, averaging and fusion.

Candidates are identified by their index in retriever order (0 = the retriever's best).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from grouprank.scores import min_max

T = TypeVar("T")

FALLBACKS = ("bottom", "retriever")
RERANKED_FLOOR = 0.5
"""In ``"bottom"`` mode a reranked document scores ``0.5 + 0.5 * fused``: in 0.5..1."""
FALLBACK_CEILING = 0.4
"""In ``"bottom"`` mode a fallback document scores ``0.4 * minmax(retriever)``: in 0..0.4, strictly below
every reranked document, so the scores stay in ranked order (trec_eval sorts runs by score)."""


def split_balanced(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive groups of at most ``size`` items, as even as possible (21 by 20 -> 11 + 10), so that no
    document is scored in a tiny group with nothing to compare it to."""
    if not items:
        return []
    count = -(-len(items) // size)
    base, extra = divmod(len(items), count)
    groups, start = [], 0
    for g in range(count):
        end = start + base + (1 if g < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return groups


def make_groups(n: int, group_size: int, repeats: int = 1, seed: int = 0) -> list[list[list[int]]]:
    """``groups[r]`` splits the indices ``0..n-1`` for repeat ``r``.

    Repeat 0 keeps retriever order (neighbours in the retriever's ranking are compared, and one repeat is
    deterministic without a seed); repeat ``r >= 1`` shuffles with ``random.Random(seed * 1_000_003 + r)``,
    so a request's groups depend only on its size and the seed, not on the rest of a batch.
    """
    rounds = []
    for r in range(repeats):
        order = list(range(n))
        if r > 0:
            random.Random(seed * 1_000_003 + r).shuffle(order)
        rounds.append(split_balanced(order, group_size))
    return rounds


def mean_rerank_scores(results: Iterable[tuple[Sequence[int], Mapping[int, float]]]) -> dict[int, float]:
    """Each document's mean LLM score / 10, in 0..1.

    ``results`` holds, per answered group, the group's document indices and the parsed scores keyed by
    1-based position in the prompt. Documents with no score from any group are absent.
    """
    collected: dict[int, list[float]] = defaultdict(list)
    for group, scores in results:
        for position, score in scores.items():
            collected[group[position - 1]].append(score)
    return {doc: sum(s) / len(s) / 10.0 for doc, s in collected.items()}


@dataclass
class Fused:
    """A fused ranking: ``order`` (indices, best first), their ``scores``, and the ``fallback`` indices."""

    order: list[int]
    scores: list[float]
    fallback: list[int]


def first_stage(retriever: Sequence[float], dense: Sequence[float | None] | None = None,
                dense_weight: float = 0.0) -> list[float]:
    """The first stage's part of a fused score, in 0..1: ``minmax(retriever)``, or with ``dense`` (each
    candidate's embedding similarity; None where the first stage has none, which counts as the lowest)
    ``(1 - dense_weight) * minmax(retriever) + dense_weight * minmax(dense)``."""
    norm = min_max(list(retriever))
    if dense is None or dense_weight <= 0.0 or all(d is None for d in dense):
        return norm
    present = [d for d in dense if d is not None]
    low = min(present)
    unit = min_max([low if d is None else d for d in dense])
    return [(1.0 - dense_weight) * r + dense_weight * d for r, d in zip(norm, unit, strict=True)]


def renormalised_weight(weight: float, dense_weight: float) -> float:
    """The rerank weight when the candidates carry no dense similarity (a BM25-only search, the rerank
    routes): the dense share's weight is spread over the rerank score and the retriever score in
    proportion, ``w / (w + (1 - w) * (1 - d))``."""
    if dense_weight <= 0.0:
        return weight
    kept = weight + (1.0 - weight) * (1.0 - dense_weight)
    return weight / kept if kept > 0 else 1.0


def fuse(
    n: int,
    rerank: Mapping[int, float],
    retriever: Sequence[float] | None = None,
    weight: float = 0.6,
    fallback: str = "bottom",
    dense: Sequence[float | None] | None = None,
    dense_weight: float = 0.0,
) -> Fused:
    """Final scores, all in 0..1, for ``n`` candidates in retriever order.

    A reranked document's fused score is ``weight * rerank + (1 - weight) * first``, where ``first`` is
    ``minmax(retriever)`` or, with ``dense`` similarities and a ``dense_weight``, their mix
    (``first_stage``; without similarities the weights are ``renormalised_weight``); just ``rerank`` when
    there are no retriever scores (``retriever=None``). A
    document without a rerank score falls back. With ``"retriever"`` it scores ``first`` (its missing
    rerank score is taken to equal it) and reranked documents score their fused score. With ``"bottom"``
    reranked documents score ``0.5 + 0.5 * fused`` (0.5..1) and fallback ones ``0.4 * first`` (0..0.4):
    every fallback document is strictly below every reranked one, in first-stage order. Without retriever
    scores the retriever's rank stands in: ``minmax(n - i)``. Ties keep retriever order.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if dense is None or all(d is None for d in dense):
        weight, dense_weight = renormalised_weight(weight, dense_weight), 0.0
    norm = (first_stage(retriever, dense, dense_weight) if retriever is not None
            else min_max([float(n - i) for i in range(n)]))
    fused = {i: s if retriever is None else weight * s + (1.0 - weight) * norm[i] for i, s in rerank.items()}
    bottom = fallback == "bottom"
    # In "bottom" mode fallback documents sort after reranked ones; the final scores are monotone in this key.
    order = sorted(range(n), key=lambda i: (bottom and i not in fused, -fused.get(i, norm[i]), i))
    final = [_final_score(fused.get(i), norm[i], bottom) for i in order]
    return Fused(order=order, scores=final, fallback=[i for i in order if i not in rerank])


def _final_score(fused: float | None, norm: float, bottom: bool) -> float:
    """A document's score in 0..1: its fused score (None if it fell back) or its normalised retriever score,
    mapped to 0.5..1 and 0..0.4 in ``"bottom"`` mode."""
    score = min(max(norm if fused is None else fused, 0.0), 1.0)
    if not bottom:
        return score
    return FALLBACK_CEILING * score if fused is None else RERANKED_FLOOR + (1.0 - RERANKED_FLOOR) * score


def window_starts(n: int, window: int = 20, stride: int = 10) -> list[int]:
    """Start positions of RankGPT's sliding windows over ``n`` candidates, bottom first.

    Windows ``[s, s + window)`` move up by ``stride`` until one starts at 0, so the top is always covered:
    100 candidates -> 80, 70, ..., 0 (9 windows); 25 -> 5, 0; 20 or fewer -> 0.
    """
    if n <= 0:
        return []
    start = max(n - window, 0)
    starts = [start]
    while start > 0:
        start = max(start - stride, 0)
        starts.append(start)
    return starts
