"""Milliseconds to rerank 20 and 100 documents with each model as served (its own metadata), in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/rerank_speed.py \
        --models "before=/tmp/before-model,after=grouprank-smollm2-135m"

DL19 BM25 candidates of the first ``--queries`` queries, top 20 and top 100, after one warm-up rerank.
Prints JSON: per model and depth the median and mean wall ms per query, the passes (LLM calls) and prompt
tokens per query, and how many documents were reranked (not fallen back).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit


def depth_timings(reranker: Any, sets: list[Any], depth: int) -> dict[str, float]:
    """Rerank each set's top ``depth``: the median and mean wall ms per query, passes (LLM calls), prompt
    tokens and documents reranked (not fallen back), averaged over the queries."""
    walls, calls, tokens, reranked = [], [], [], []
    for qc in sets:
        r = reranker.rerank(qc.query, qc.candidates[:depth])
        walls.append(r.trace.wall_ms)
        calls.append(r.trace.llm_calls)
        tokens.append(r.trace.prompt_tokens)
        reranked.append(len(r.reranked))
    return {"median_ms": round(statistics.median(walls), 1), "mean_ms": round(statistics.fmean(walls), 1),
            "passes": statistics.fmean(calls), "prompt_tokens": statistics.fmean(tokens),
            "reranked": statistics.fmean(reranked)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--models", default="shipped=grouprank-smollm2-135m", help="name=model,name=model")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--depths", default="20,100")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from reranker import load_reranker
    from reranker.candidate_files import load_candidates

    sets = load_candidates(args.shared / "trec-dl-2019" / "candidates" / "BM25_top100.json")[: args.queries]
    out: dict = {"queries": len(sets), "torch_threads": torch.get_num_threads(), "models": {}}
    for pair in args.models.split(","):
        name, model = pair.split("=", 1)
        reranker = load_reranker("groupwise", model=model)
        reranker.rerank(sets[0].query, sets[0].candidates[:20])  # warm-up
        rows = {f"top{depth}": depth_timings(reranker, sets, depth) for depth in map(int, args.depths.split(","))}
        out["models"][name] = {"model": model, "decoding": getattr(reranker, "decoding", None),
                               "likelihood_weight": getattr(reranker, "likelihood_weight", None), **rows}
        print(f"{name}: {json.dumps(out['models'][name])}", file=sys.stderr)
        del reranker
    emit(out, args.output)


if __name__ == "__main__":
    main()
