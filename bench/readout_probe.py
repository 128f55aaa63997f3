"""Does a model's inline read-out rank? DL19 BM25 top-``depth`` reranked by each signal of ONE pass per group.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/readout_probe.py --which train,val --depth 20

For every query of the chosen seeded splits (``trainer.recipe.split_dl19``), the BM25 candidates are split
into groups of ``--group-size`` and read once (``reranker.readout``). Prints JSON: NDCG@10 of BM25, of
the read-out alone, of the in-context query likelihood alone (``--query-after``), of their 50/50 mix,
and ms per query. Zero-shot on the base model by default (``--model``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dl19 import dl19_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--which", default="val", help="comma-separated splits: train, val, test")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--group-size", type=int, default=20)
    p.add_argument("--max-doc-chars", type=int, default=250)
    p.add_argument("--no-query-after", action="store_true", help="do not repeat the query after each document")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from grouprank.metrics import evaluate
    from reranker import load_reranker
    from reranker.types import RerankRequest

    corpus, sets = dl19_sets(args.shared, args.which, args.seed)
    reranker = load_reranker("groupwise", model=args.model, decoding="readout", group_size=args.group_size,
                             max_doc_chars=args.max_doc_chars, weight=1.0, likelihood_weight=0.5,
                             query_after=not args.no_query_after)
    runs: dict[str, dict[str, dict[str, float]]] = {"bm25": {}, "readout": {}, "likelihood": {}, "mix": {}}
    started = time.monotonic()
    for qc in sets:
        cands = qc.candidates[: args.depth]
        ranking = reranker.rerank_batch([RerankRequest(qc.query, cands)])[0]
        n = len(cands)
        runs["bm25"][qc.qid] = {c.id: float(n - i) for i, c in enumerate(cands)}
        for name, signal in (("readout", ranking.signals.get("groupwise", {})),
                             ("likelihood", ranking.signals.get("likelihood", {}))):
            runs[name][qc.qid] = {c.id: signal.get(c.id, -1.0) + 1e-6 * (n - i) for i, c in enumerate(cands)}
        runs["mix"][qc.qid] = {c.id: s for c, s in zip(cands, [ranking.rerank_scores.get(c.id, -1.0) for c in cands],
                                                         strict=True)}
    ms = (time.monotonic() - started) * 1000.0 / max(1, len(sets))
    qrels = {qc.qid: corpus.qrels[qc.qid] for qc in sets}
    out = {"model": args.model, "which": args.which, "queries": len(sets), "depth": args.depth,
           "group_size": args.group_size, "max_doc_chars": args.max_doc_chars,
           "query_after": not args.no_query_after, "ms_per_query": round(ms, 1)}
    for name, run in runs.items():
        if any(run.values()):
            out[f"ndcg@10_{name}"] = round(evaluate(qrels, run, ("ndcg@10",))["ndcg@10"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
