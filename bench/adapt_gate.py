"""The held-out gates of a finished ``grouprank train adapt`` run, recomputed with the current rule
(``trainer.adapt.gate``: the paired gain must beat margin + noise_se standard errors), JSON on stdout.

    python bench/adapt_gate.py --out runs/adapt-cran/out --before runs/adapt-cran/index-before \
        --after runs/adapt-cran/index --output runs/adapt-cran/gates.json

``--before`` is a copy of the index taken before adapting (current embedder), ``--after`` the adapted
index; the reranker gate compares the run's ``reranker`` with ``OUT/reranker`` on the adapted index.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import emit
from indexer.index import Index
from trainer.adapt import AdaptConfig, gate, read_held_out, rerank_mrr
from trainer.embedder_train import held_out_retrieval
from trainer.files import read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="The adaptation run's OUT folder.")
    parser.add_argument("--before", type=Path, required=True, help="The index as it was before adapting.")
    parser.add_argument("--after", type=Path, required=True, help="The adapted index.")
    parser.add_argument("--embedder-only", action="store_true", help="Skip the reranker gate (minutes of reranking).")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    state = read_json(args.out / "state.json")
    config = AdaptConfig(**{**state["config"], "index": str(args.after), "out": str(args.out)})
    held = read_held_out(args.out)
    with Index.open(args.before) as before, Index.open(args.after) as after:
        b, a = held_out_retrieval(before, held, None), held_out_retrieval(after, held, None)
        result = {"embedder": {"before": b["hybrid_mrr@10"], "after": a["hybrid_mrr@10"],
                               **gate(b["hybrid_rr"], a["hybrid_rr"], config, "hybrid MRR@10")}}
        reranked = args.out / "reranker"
        if reranked.is_dir() and not args.embedder_only:
            depth = min(config.rerank_depth, len(after))
            rb = rerank_mrr(config.reranker, after, held, depth)
            ra = rerank_mrr(str(reranked), after, held, depth)
            result["reranker"] = {"before": rb["reranked_mrr@10"], "after": ra["reranked_mrr@10"],
                                  **gate(rb["reranked_rr"], ra["reranked_rr"], config, "reranked MRR@10")}
    emit(result, args.output)


if __name__ == "__main__":
    main()
