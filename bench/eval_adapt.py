"""Before and after ``grouprank train adapt``, judged with qrels the adaptation never saw (JSON on stdout).

For each index (e.g. a copy taken before adapting, and the adapted one) it reports NDCG@10 of BM25, dense
and hybrid retrieval over every judged query, and of each reranker's served ranking of the index's hybrid
top ``--depth`` (the first stage's dense similarity handed on as ``/search`` does), with each part of the
fused score alone: the reranker's likelihood alone (``--weight 1``, dense share 0) beside the fusion.

    python bench/eval_adapt.py --data ../shared/data/cranfield \
        --index "before=runs/adapt/index-before,after=runs/index-cranfield" \
        --models "shipped=grouprank-smollm2-135m,adapted=runs/adapt/out/reranker" --output runs/adapt/eval.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.report import emit
from grouprank.metrics import evaluate, per_query
from indexer.index import Index
from indexer.ingest import load_beir


def pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


PARTS = {"served": {}, "likelihood alone": {"weight": 1.0, "dense_weight": 0.0}}


def rerank_runs(model: str, queries: dict[str, str], hits: dict[str, list[Any]],
                parts: list[str]) -> dict[str, dict[str, Any]]:
    """The served ranking (and the likelihood alone), as TREC-style runs, with ms per query."""
    from reranker import load_reranker
    from reranker.types import Candidate, RerankRequest

    out = {}
    for name in parts:
        options = PARTS[name]
        reranker = load_reranker("groupwise", model=model, **options)
        qids = list(queries)
        started = time.monotonic()
        run: dict[str, dict[str, float]] = {}
        for start in range(0, len(qids), 8):
            chunk = qids[start:start + 8]
            rankings = reranker.rerank_batch([RerankRequest(queries[q], [Candidate.from_hit(h) for h in hits[q]])
                                              for q in chunk])
            for q, ranking in zip(chunk, rankings, strict=True):
                n = len(ranking)
                run[q] = {doc: float(n - r) for r, (doc, _) in enumerate(ranking)}
        out[name] = {"run": run, "ms_per_query": round((time.monotonic() - started) * 1000 / len(qids), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR directory (corpus, queries, qrels).")
    parser.add_argument("--index", required=True, help="name=index folder, comma-separated.")
    parser.add_argument("--models", default="", help="name=reranker model, comma-separated.")
    parser.add_argument("--rerank-on", default="", help="Rerank only on these indexes (names; default all).")
    parser.add_argument("--depth", type=int, default=20, help="Hybrid candidates reranked per query.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N judged queries.")
    parser.add_argument("--rerank-limit", type=int, default=None, help="Rerank only the first N of them.")
    parser.add_argument("--parts", default="served,likelihood alone",
                        help=f"Which rankings of each reranker: {', '.join(PARTS)} (comma-separated).")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    data = load_beir(args.data)
    queries = dict(list(data.judged_queries().items())[: args.limit])
    result: dict[str, Any] = {"queries": len(queries), "depth": args.depth, "indexes": {}}
    rerank_on = set(filter(None, args.rerank_on.split(","))) or set(pairs(args.index))
    for name, folder in pairs(args.index).items():
        with Index.open(folder) as index:
            row: dict[str, Any] = {"embedder": index.config.embedder}
            for mode in ("bm25", "dense", "hybrid"):
                hits = dict(zip(queries, index.search_batch(list(queries.values()), k=100, mode=mode), strict=True))
                run = {q: {h.id: h.score for h in hs} for q, hs in hits.items()}
                row[mode] = round(evaluate(data.qrels, run, ("ndcg@10",))["ndcg@10"], 4)
            top = {q: hs[: args.depth] for q, hs in hits.items()}  # the hybrid hits, as /search hands them on
            if name in rerank_on:
                reranked = dict(list(queries.items())[: args.rerank_limit])
                judged = {q: data.qrels[q] for q in reranked}  # every mean below is over these queries
                row["reranked queries"] = len(reranked)
                hybrid = evaluate(judged, {q: run[q] for q in reranked}, ("ndcg@10",))["ndcg@10"]  # run: hybrid
                row["hybrid on them"] = round(hybrid, 4)
                for model_name, model in pairs(args.models).items():
                    for part, rr in rerank_runs(model, reranked, top, args.parts.split(",")).items():
                        scores = per_query(judged, rr["run"], ("ndcg@10",))["ndcg@10"]
                        row[f"{model_name} {part}"] = round(sum(scores.values()) / len(scores), 4)
                        row[f"{model_name} {part} ms/query"] = rr["ms_per_query"]
        result["indexes"][name] = row
    emit(result, args.output)


if __name__ == "__main__":
    main()
