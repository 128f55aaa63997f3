"""Evaluating a reranker over candidate sets: quality (trec_eval metrics) and cost (from the traces)."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from grouprank.metrics import evaluate
from grouprank.progress import progress_bar
from grouprank.trec_files import Qrels, Run
from reranker.base import Reranker
from reranker.candidate_files import QueryCandidates
from reranker.types import Ranking, RerankRequest

COST_FIELDS = ("llm_calls", "prompt_tokens", "completion_tokens", "critical_path_depth", "wall_ms")


def ranked_run(order: dict[str, list[str]]) -> Run:
    """A run whose scores follow the given order exactly (n, n-1, ...), so metric tie-breaking never
    reorders what the ranker decided."""
    return {qid: {doc: float(len(ids) - i) for i, doc in enumerate(ids)} for qid, ids in order.items()}


@dataclass
class RerankEvaluation:
    """Metrics before and after reranking, per-query costs, and the rankings themselves."""

    method: str
    metrics: dict[str, float]
    retriever_metrics: dict[str, float]
    per_query_costs: list[dict[str, float]]
    parse_failures: int
    fallback_docs: int
    documents: int
    errors: list[str] = field(default_factory=list)
    rankings: dict[str, Ranking] = field(default_factory=dict)

    @property
    def run(self) -> Run:
        return ranked_run({qid: r.ids for qid, r in self.rankings.items()})

    def mean_costs(self) -> dict[str, float]:
        """Mean cost per query (``wall_ms`` of a batch is shared equally by its queries)."""
        return {f: fmean(c[f] for c in self.per_query_costs) if self.per_query_costs else 0.0 for f in COST_FIELDS}

    @property
    def parse_failure_rate(self) -> float:
        calls = sum(c["llm_calls"] for c in self.per_query_costs)
        return self.parse_failures / calls if calls else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict: metrics at the top level (``ndcg@10``, ...), costs per query, failure rates."""
        return {
            "method": self.method,
            **self.metrics,
            "retriever": self.retriever_metrics,
            "queries": len(self.rankings),
            **self.mean_costs(),
            "parse_failures": self.parse_failures,
            "parse_failure_rate": self.parse_failure_rate,
            "fallback_docs": self.fallback_docs,
            "fallback_rate": self.fallback_docs / self.documents if self.documents else 0.0,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
        }


def evaluate_reranker(
    reranker: Reranker,
    sets: list[QueryCandidates],
    qrels: Qrels | None = None,
    *,
    batch_queries: int = 1,
    metrics: tuple[str, ...] = ("ndcg@10", "ndcg@5", "mrr@10"),
    progress: bool = True,
) -> RerankEvaluation:
    """Rerank every query's candidates (``batch_queries`` queries per ``rerank_batch`` call) and score
    the result against ``qrels`` (when given) next to the retriever's own order."""
    rankings: dict[str, Ranking] = {}
    costs: list[dict[str, float]] = []
    with progress_bar(f"reranking ({reranker.method})", len(sets) if progress else None) as bar:
        for start in range(0, len(sets), batch_queries):
            batch = sets[start:start + batch_queries]
            out = reranker.rerank_batch([RerankRequest(qc.query, qc.candidates) for qc in batch])
            for qc, ranking in zip(batch, out, strict=True):
                rankings[qc.qid] = ranking
                t = ranking.trace
                costs.append({"llm_calls": t.llm_calls, "prompt_tokens": t.prompt_tokens,
                              "completion_tokens": t.completion_tokens,
                              "critical_path_depth": t.critical_path_depth, "wall_ms": t.wall_ms / len(batch)})
            bar.advance(len(batch))
    # Only the queries reranked here are scored (a --limit run must not count the others as zeros).
    qrels = {q: rel for q, rel in (qrels or {}).items() if q in rankings}
    after = ranked_run({qid: r.ids for qid, r in rankings.items()})
    before = ranked_run({qc.qid: [c.id for c in qc.candidates] for qc in sets})
    return RerankEvaluation(
        method=reranker.method,
        metrics=evaluate(qrels, after, metrics) if qrels else {},
        retriever_metrics=evaluate(qrels, before, metrics) if qrels else {},
        per_query_costs=costs,
        parse_failures=sum(r.trace.parse_failures for r in rankings.values()),
        fallback_docs=sum(len(r.fallback) for r in rankings.values()),
        documents=sum(len(r.ids) for r in rankings.values()),
        errors=[e for r in rankings.values() for e in r.trace.errors],
        rankings=rankings,
    )
