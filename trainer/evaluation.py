"""The evaluation gate: rerank held-out queries with the engine's groupwise reranker (serving settings) and
decide on promotion. ``evaluate_model`` (text objective) runs the engine's own ``eval rerank`` code at the
configured fusion weight; ``calibrated_evaluation`` (slots objective) reranks once and calibrates the
model's fusion weight on the same queries (``trainer.calibration``)."""

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
        QueryCandidates(m.qid, m.query, [Candidate(id=d.id, text=d.text, title=d.title, score=d.score,
                                                   dense=d.dense) for d in m.retrieved])
        for m in mined
    ]


def engine_options(config: EvalConfig) -> dict[str, Any]:
    """The trainer scores models with torch, the engine they were trained with, so a gate compares
    numbers computed as in training (OpenVINO, which serves them on bf16 CPUs, agrees within 0.002
    NDCG@10: docs/results-engines.md)."""
    return {"engine": "torch"} if config.backend == "transformers" else {}


def evaluate_model(model: str, sets: list[Any], qrels: Qrels, config: EvalConfig) -> dict[str, Any]:
    """Metrics and costs of the groupwise reranker on ``model`` over ``sets`` (``RerankEvaluation.summary``:
    ``ndcg@10``, ``retriever`` metrics, ``wall_ms`` per query, parse failures, ...)."""
    from reranker import load_reranker
    from reranker.evaluation import evaluate_reranker

    reranker = load_reranker("groupwise", model=model, backend=config.backend, group_size=config.group_size,
                             weight=config.weight, max_doc_chars=config.max_doc_chars, **engine_options(config))
    try:
        metrics = tuple(dict.fromkeys((config.metric, "ndcg@10", "ndcg@5", "mrr@10")))
        result = evaluate_reranker(reranker, sets, qrels, batch_queries=config.batch_queries, metrics=metrics)
    finally:
        del reranker
        gc.collect()
    return {"model": model, **result.summary()}


def calibrated_evaluation(model: str, sets: list[Any], qrels: Qrels, config: EvalConfig,
                          likelihood: bool = False) -> dict[str, Any]:
    """Rerank ``sets`` once with ``model`` (groupwise, weight 1.0: the rerank scores are kept), calibrate its
    fusion weight on them and return the metrics of the fused rankings at that weight.

    ``fusion_weight`` is the calibrated weight if the model adds value over the retriever, else 0.0 (the
    first stage's order); ``calibration`` is ``Calibration.to_dict()`` plus the number of ``queries``;
    ``retriever`` holds the first stage's metrics; the mean costs per query (``wall_ms``, tokens, calls)
    come from the rerank pass. With ``likelihood`` the groupwise slots and the query likelihood are both
    read, and the weights served (``Calibration.serve``: one part alone unless their mix beats it beyond
    noise) give ``fusion_weight`` and ``likelihood_weight``."""
    from grouprank.metrics import evaluate
    from reranker import load_reranker
    from trainer.calibration import calibrate_weight, fused_run
    from trainer.recipe import scored_queries

    read = {"likelihood_weight": 0.5} if likelihood else {}  # any weight in (0, 1) reads both parts
    reranker = load_reranker("groupwise", model=model, backend=config.backend, group_size=config.group_size,
                             weight=1.0, max_doc_chars=config.max_doc_chars, **read, **engine_options(config))
    try:
        scored, costs = scored_queries(reranker, sets, batch=config.batch_queries)
    finally:
        del reranker
        gc.collect()
    calibration = calibrate_weight(scored, qrels, config.metric)
    served, mixed, dense = calibration.serve
    weight = served if calibration.adds_value else 0.0
    metrics = tuple(dict.fromkeys((config.metric, "ndcg@10", "ndcg@5", "mrr@10")))
    judged = {q.qid: qrels[q.qid] for q in scored if q.qid in qrels}
    return {
        "model": model,
        "method": "groupwise",
        "fusion_weight": weight,
        **({"likelihood_weight": mixed} if likelihood else {}),
        "dense_weight": dense,
        **evaluate(judged, fused_run(scored, weight, mixed, dense), metrics),
        "retriever": evaluate(judged, fused_run(scored, 0.0), metrics),
        "queries": len(scored),
        **costs,
        "calibration": {**calibration.to_dict(), "queries": len(judged)},
    }


@dataclass
class GateDecision:
    """Whether the candidate beat the current model by the margin on ``metric`` (and, when its fusion
    weight was calibrated, whether it adds anything over the retriever)."""

    promote: bool
    metric: str
    candidate: float
    current: float
    margin: float
    reason: str
    fusion_weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: float, current: float, margin: float, metric: str = "ndcg@10",
           weight: float | None = None) -> GateDecision:
    """Promote iff ``candidate > current + margin`` and the candidate's calibrated fusion ``weight`` (when
    given) is > 0: a model whose best weight is 0 adds nothing over the retriever."""
    beats = candidate > current + margin
    relation = "beats" if beats else "does not beat"
    reason = f"candidate {metric} {candidate:.4f} {relation} current {current:.4f} + margin {margin:.4f}"
    promote = beats
    if weight is not None and weight <= 0:
        promote = False
        reason = f"candidate adds nothing over the retriever (calibrated fusion weight 0); {reason}"
    return GateDecision(promote, metric, candidate, current, margin, reason, weight)
