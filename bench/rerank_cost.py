"""Cost of the three reranking methods on the same model and backend, over top-100 candidate sets.

    python bench/rerank_cost.py --model smollm2-135m-instruct --queries 3 --output runs/rerank-cost.json

For each method (groupwise G=20, pointwise, listwise window 20 / stride 10) it reports, per query:
LLM calls, prompt tokens, completion tokens, critical-path depth (sequential LLM rounds) and wall
time, plus NDCG@10 on those queries, and the groupwise/listwise ratios. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from grouprank.trec_files import read_qrels
from reranker import load_reranker
from reranker.backends import load_backend
from reranker.candidate_files import load_candidates
from reranker.evaluation import evaluate_reranker

DATA = Path(os.environ.get("GROUPRANK_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backend", default="transformers")
    parser.add_argument("--candidates", type=Path, default=DATA / "trec-dl-2019/candidates/BM25_top100.json")
    parser.add_argument("--qrels", type=Path, default=DATA / "trec-dl-2019/qrels.dl19-passage.txt")
    parser.add_argument("--queries", type=int, default=3, help="first N queries of the candidate file")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--max-doc-chars", type=int, default=1000)
    parser.add_argument("--methods", default="groupwise,pointwise,listwise")
    parser.add_argument("--rubric", default="concise", choices=("concise", "reference"),
                        help="groupwise instructions (see reranker.prompts)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    sets = load_candidates(args.candidates, depth=args.depth)[: args.queries]
    qrels = read_qrels(args.qrels)
    backend = load_backend(args.backend, model=args.model)
    results = {}
    for method in args.methods.split(","):
        options = {"rubric": args.rubric} if method == "groupwise" else {}
        reranker = load_reranker(method, backend=backend, max_doc_chars=args.max_doc_chars, **options)
        ev = evaluate_reranker(reranker, sets, qrels, progress=False)
        results[method] = {**ev.mean_costs(), "ndcg@10": ev.metrics.get("ndcg@10"),
                           "retriever_ndcg@10": ev.retriever_metrics.get("ndcg@10"),
                           "parse_failure_rate": ev.parse_failure_rate, "errors": ev.errors[:5]}
        print(f"{method}: {json.dumps(results[method])}", file=sys.stderr)
    out = {"model": args.model, "backend": args.backend, "queries": len(sets), "depth": args.depth,
           "max_doc_chars": args.max_doc_chars, "rubric": args.rubric, "candidates": str(args.candidates),
           "per_query": results}
    if "groupwise" in results and "listwise" in results:
        g, listwise = results["groupwise"], results["listwise"]
        out["groupwise_over_listwise"] = {
            f: (g[f] / listwise[f] if listwise[f] else None)
            for f in ("llm_calls", "prompt_tokens", "completion_tokens", "critical_path_depth", "wall_ms")
        }
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
