"""Fusion calibrated per model: pick the rerank/retriever weight on validation queries.

The final score of a reranked document is ``w * rerank + (1 - w) * minmax(retriever)``
(``reranker.scoring.fuse``), where ``rerank = (1 - l) * groupwise + l * likelihood`` when the query
likelihood is read too (``reranker.likelihood.mix``). A model is reranked once per validation query (both
parts kept), then every ``(w, l)`` of a grid is tried offline and the best mean metric wins; ties go to
the smaller weights, so a model that adds nothing gets ``w = 0``, i.e. the first stage's order, and is
not promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grouprank.metrics import evaluate
from grouprank.trec_files import Qrels
from reranker.likelihood import mix
from reranker.scoring import fuse

GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class ScoredQuery:
    """One validation query: candidate ids in retriever order, their retriever scores, the (groupwise)
    rerank scores (0..1) of those the model scored and, if read, their query likelihoods, keyed by
    candidate index."""

    qid: str
    ids: list[str]
    retriever: list[float]
    rerank: dict[int, float]
    likelihood: dict[int, float] = field(default_factory=dict)


def fused_run(queries: Sequence[ScoredQuery], weight: float,
              likelihood_weight: float = 0.0) -> dict[str, dict[str, float]]:
    """The TREC run of the fused rankings at ``weight`` (and ``likelihood_weight``)."""
    run = {}
    for q in queries:
        rerank = mix(q.rerank, q.likelihood, likelihood_weight)
        fused = fuse(len(q.ids), rerank, q.retriever, weight, "retriever")
        run[q.qid] = {q.ids[i]: s for i, s in zip(fused.order, fused.scores, strict=True)}
    return run


@dataclass
class Calibration:
    weight: float
    metric: str
    best: float
    first_stage: float
    table: dict[str, float]
    """Metric by ``w`` ("0.20"), or by ``w`` and ``l`` ("0.20/0.50") when likelihoods were read."""
    likelihood_weight: float = 0.0
    weight_without_likelihood: float | None = None
    """The best ``w`` with the groupwise scores alone (``l = 0``), for backends that cannot read likelihoods;
    None when no likelihoods were read (then it is ``weight``)."""

    @property
    def adds_value(self) -> bool:
        return self.weight > 0 and self.best > self.first_stage

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adds_value": self.adds_value}


def calibrate_weight(queries: Sequence[ScoredQuery], qrels: Qrels, metric: str = "ndcg@10",
                     grid: Sequence[float] = GRID) -> Calibration:
    """The weights of ``grid`` with the best mean ``metric`` over ``queries`` (ties: the smaller ``w``,
    then the smaller likelihood weight). The likelihood weight is searched only when the queries carry
    likelihoods. ``w = 0`` reproduces the retriever's order, so the chosen weights are never worse than
    the first stage on these queries."""
    judged = {q.qid: qrels[q.qid] for q in queries if q.qid in qrels}
    with_likelihood = any(q.likelihood for q in queries)
    mixes = sorted(grid) if with_likelihood else [0.0]
    table: dict[str, float] = {}
    best: tuple[tuple[float, float, float], float, float, float] | None = None
    for w in sorted(grid):
        for lw in mixes:
            value = evaluate(judged, fused_run(queries, w, lw), (metric,))[metric]
            table[f"{w:.2f}/{lw:.2f}" if with_likelihood else f"{w:.2f}"] = value
            key = (round(value, 10), -w, -lw)
            if best is None or key > best[0]:
                best = (key, w, lw, value)
    assert best is not None, "an empty grid"
    first_stage = evaluate(judged, fused_run(queries, 0.0), (metric,))[metric]
    alone = None
    if with_likelihood:
        scored = {w: table[f"{w:.2f}/0.00"] for w in sorted(grid)}
        alone = max(scored, key=lambda w: (round(scored[w], 10), -w))
        alone = alone if scored[alone] > first_stage else 0.0
    return Calibration(best[1], metric, best[3], first_stage, table, likelihood_weight=best[2],
                       weight_without_likelihood=alone)
