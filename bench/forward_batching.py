"""Forward batching before and after, in one run: one padded batch per pass against length-sorted batches
split where padding costs more than a call (``reranker.backends.batching.plan_forward_batches``), for the
torch and OpenVINO engines, the shipped model's one pass (the query likelihood). JSON on stdout.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/forward_batching.py --output runs/forward-batching.json

Each engine is loaded once; the two plans alternate query by query, ``--rounds`` times over the DL19 test
queries (BM25 top ``--depths``), so drift of a busy machine falls on both. NDCG@10 is the rerank score
alone (``weight`` 1). ``padded_tokens`` is what the batches compute per query, padding included;
``real_tokens`` the rows' own tokens (the documents cut as served; counted as one text, within a token of the pass).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit
from reranker.backends.batching import plan_forward_batches
from reranker.likelihood import likelihood_prompt, query_continuation

ONE_BATCH = 10**9  # an overhead no padding outweighs: one padded batch per pass, as before


def measure(reranker, sets, depth: int, qrels, rounds: int) -> dict[str, dict]:
    """Per plan: wall ms per query, NDCG@10 and padded tokens. Plans alternate query by query (and their
    order alternates too), so a busy machine's drift falls on both."""
    from grouprank.metrics import evaluate

    backend = reranker.backend
    plans = {"one batch": ONE_BATCH, "split": backend.forward_overhead}
    walls: dict[str, list[float]] = {name: [] for name in plans}
    runs: dict[str, dict] = {name: {} for name in plans}
    for r in range(rounds):
        for k, qc in enumerate(sets):
            for name in (list(plans) if (k + r) % 2 == 0 else list(plans)[::-1]):
                backend.forward_overhead = plans[name]
                ranking = reranker.rerank(qc.query, qc.candidates[:depth])
                walls[name].append(ranking.trace.wall_ms)
                runs[name][qc.qid] = dict(zip(ranking.ids, ranking.scores, strict=True))
    backend.forward_overhead = plans["split"]
    lengths = [[backend.count_tokens(likelihood_prompt(reranker.truncator(c.text)[0]) + query_continuation(qc.query))
                for c in qc.candidates[:depth]] for qc in sets]
    out = {}
    for name, overhead in plans.items():
        padded = [sum(len(b) * max(ls[i] for i in b) for b in plan_forward_batches(
            ls, backend.max_batch_tokens, backend.max_batch_size, overhead)) for ls in lengths]
        out[name] = {"median_ms": round(statistics.median(walls[name]), 1),
                     "mean_ms": round(statistics.fmean(walls[name]), 1),
                     "ndcg@10": round(evaluate(qrels, runs[name], ("ndcg@10",))["ndcg@10"], 4),
                     "padded_tokens": round(statistics.fmean(padded)),
                     "real_tokens": round(statistics.fmean(sum(ls) for ls in lengths))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="grouprank-smollm2-135m")
    p.add_argument("--engines", default="torch,openvino")
    p.add_argument("--depths", default="20,100")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--queries", type=int, help="the first N test queries only (default: all 15)")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bench.dl19 import dl19_sets
    from reranker import load_reranker

    corpus, sets = dl19_sets(args.shared, "test")
    sets = sets[: args.queries] if args.queries else sets
    qrels = {qc.qid: corpus.qrels[qc.qid] for qc in sets}
    out: dict = {"model": args.model, "queries": len(sets), "rounds": args.rounds, "rows": []}
    for engine in args.engines.split(","):
        reranker = load_reranker("groupwise", model=args.model, backend="transformers", weight=1.0, engine=engine)
        for qc in sets[:2]:  # warm-up (OpenVINO compiles here)
            reranker.rerank(qc.query, qc.candidates[:20])
        for depth in (int(d) for d in args.depths.split(",")):
            for name, row in measure(reranker, sets, depth, qrels, args.rounds).items():
                row = {"engine": reranker.backend.engine, "plan": name, "depth": depth, **row}
                out["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    emit(out, args.output)


if __name__ == "__main__":
    main()
