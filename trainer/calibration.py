"""Fusion calibrated per model: pick the rerank/retriever weight on validation queries.

The final score of a reranked document is ``w * rerank + (1 - w) * minmax(retriever)``
(``reranker.scoring.fuse``). A model is reranked once per validation query (rerank scores kept), then every
``w`` of a grid is tried offline and the best mean metric wins; ties go to the smaller weight, so a model
that adds nothing gets ``w = 0``, i.e. the first stage's order, and is not promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from grouprank.metrics import evaluate
from grouprank.trec_files import Qrels
from reranker.scoring import fuse

GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class ScoredQuery:
    """One validation query: candidate ids in retriever order, their retriever scores, and the rerank
    scores (0..1) of those the model scored, keyed by candidate index."""

    qid: str
    ids: list[str]
    retriever: list[float]
    rerank: dict[int, float]


def fused_run(queries: Sequence[ScoredQuery], weight: float) -> dict[str, dict[str, float]]:
    """The TREC run of the fused rankings at ``weight``."""
    run = {}
    for q in queries:
        fused = fuse(len(q.ids), q.rerank, q.retriever, weight, "retriever")
        run[q.qid] = {q.ids[i]: s for i, s in zip(fused.order, fused.scores, strict=True)}
    return run


@dataclass
class Calibration:
    weight: float
    metric: str
    best: float
    first_stage: float
    table: dict[str, float]

    @property
    def adds_value(self) -> bool:
        return self.weight > 0 and self.best > self.first_stage

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adds_value": self.adds_value}


def calibrate_weight(queries: Sequence[ScoredQuery], qrels: Qrels, metric: str = "ndcg@10",
                     grid: Sequence[float] = GRID) -> Calibration:
    """The weight of ``grid`` with the best mean ``metric`` over ``queries`` (ties: the smaller weight).
    ``w = 0`` reproduces the retriever's order, so the chosen weight is never worse than the first stage
    on these queries."""
    judged = {q.qid: qrels[q.qid] for q in queries if q.qid in qrels}
    table = {}
    for w in sorted(grid):
        table[f"{w:.2f}"] = evaluate(judged, fused_run(queries, w), (metric,))[metric]
    best_key = max(table, key=lambda k: (round(table[k], 10), -float(k)))
    first_stage = evaluate(judged, fused_run(queries, 0.0), (metric,))[metric]
    return Calibration(float(best_key), metric, table[best_key], first_stage, table)
