"""Zero-shot query likelihood on DL19: BM25 top-100 reranked by a model's query likelihood alone and
min-max fused with BM25, on the seeded validation or test queries (the split of trainer.recipe).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/likelihood_probe.py --which test --max-words 120

Prints JSON: NDCG@10 at fusion weights 0 (BM25), 0.3, 0.5, 0.7 and 1 (the likelihood alone), and the
wall time per query.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--which", choices=["val", "test"], default="test")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--max-words", type=int, help="cut each passage to this many words")
    p.add_argument("--max-chars", type=int, help="cut each passage to this many characters")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from grouprank.metrics import evaluate
    from indexer.ingest import load_beir
    from reranker.backends.transformers_backend import TransformersBackend
    from reranker.candidate_files import load_candidates
    from reranker.likelihood import likelihood_prompt, query_continuation, unit_scores
    from trainer.calibration import ScoredQuery, fused_run
    from trainer.recipe import split_dl19

    dl19 = args.shared / "trec-dl-2019"
    corpus = load_beir(dl19 / "beir_pooled")
    qids = set(getattr(split_dl19(list(corpus.judged_queries()), args.seed), args.which))
    sets = [qc for qc in load_candidates(dl19 / "candidates" / "BM25_top100.json") if qc.qid in qids]
    backend = TransformersBackend(args.model)

    def cut(text: str) -> str:
        if args.max_words:
            text = " ".join(text.split()[: args.max_words])
        return text[: args.max_chars] if args.max_chars else text

    scored, started = [], time.monotonic()
    for qc in sets:
        values = backend.score_likelihood([likelihood_prompt(cut(c.text)) for c in qc.candidates],
                                          [query_continuation(qc.query)] * len(qc.candidates))
        likelihood = {i: v.mean_logprob for i, v in enumerate(values) if v.mean_logprob is not None}
        scored.append(ScoredQuery(qc.qid, [c.id for c in qc.candidates], [float(c.score) for c in qc.candidates],
                                  unit_scores(likelihood)))
    seconds = (time.monotonic() - started) / max(1, len(scored))
    qrels = {q.qid: corpus.qrels[q.qid] for q in scored}
    out = {"model": args.model, "which": args.which, "queries": len(scored), "max_words": args.max_words,
           "max_chars": args.max_chars, "seconds_per_query": round(seconds, 2)}
    for w in (0.0, 0.3, 0.5, 0.7, 1.0):
        out[f"ndcg@10_w{w}"] = round(evaluate(qrels, fused_run(scored, w), ("ndcg@10",))["ndcg@10"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
