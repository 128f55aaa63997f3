"""The evaluation gate: rerank held-out queries with the engine's own ``eval rerank`` code
(``reranker.evaluation.evaluate_reranker``, groupwise, serving settings) and decide on promotion."""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from typing import Any

from grouprank.trec_files import Qrels
from trainer.config import EvalConfig
from trainer.mining import MinedQuery


def candidate_sets(mined: list[MinedQuery]) -> list[Any]:
    """The retrieved candidates of each mined query, in retriever order with retriever scores: exactly
    what serving hands the reranker (positives the retriever missed are left out)."""
    from reranker.candidate_files import QueryCandidates
    from reranker.types import Candidate

    return [
        QueryCandidates(m.qid, m.query, [Candidate(id=d.id, text=d.text, title=d.title, score=d.score)
                                         for d in m.retrieved])
        for m in mined
    ]


def evaluate_model(model: str, sets: list[Any], qrels: Qrels, config: EvalConfig) -> dict[str, Any]:
    """Metrics and costs of the groupwise reranker on ``model`` over ``sets`` (``RerankEvaluation.summary``:
    ``ndcg@10``, ``retriever`` metrics, ``wall_ms`` per query, parse failures, ...)."""
    from reranker import load_reranker
    from reranker.evaluation import evaluate_reranker

    reranker = load_reranker("groupwise", model=model, backend=config.backend, group_size=config.group_size,
                             weight=config.weight, max_doc_chars=config.max_doc_chars)
    try:
        metrics = tuple(dict.fromkeys((config.metric, "ndcg@10", "ndcg@5", "mrr@10")))
        result = evaluate_reranker(reranker, sets, qrels, batch_queries=config.batch_queries, metrics=metrics)
    finally:
        del reranker
        gc.collect()
    return {"model": model, **result.summary()}


@dataclass
class GateDecision:
    """Whether the candidate beat the current model by the margin on ``metric``."""

    promote: bool
    metric: str
    candidate: float
    current: float
    margin: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: float, current: float, margin: float, metric: str = "ndcg@10") -> GateDecision:
    """Promote iff ``candidate > current + margin``."""
    promote = candidate > current + margin
    relation = "beats" if promote else "does not beat"
    reason = f"candidate {metric} {candidate:.4f} {relation} current {current:.4f} + margin {margin:.4f}"
    return GateDecision(promote, metric, candidate, current, margin, reason)
