"""Evaluate read-out models: each signal alone and fused, on DL19 (BM25 top-100) and Cranfield (hybrid top-20).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_readout.py --models "readout=runs/readout-model" \
        --work runs/readout --output runs/readout-eval.json

Rows per query set: the first stage (BM25 / hybrid), the MiniLM reorder, the teacher (BM25 + MiniLM at the
weights calibrated on validation queries, ``work/teacher.json``), and per model the read-out alone
(``weight=1``, no likelihood) and fused with the first stage at the weight it calibrates on the
validation queries (8 DL19 + 20 Cranfield). Query sets: the seeded test splits (DL19 15, Cranfield 40),
and every non-validation query (DL19 35, Cranfield 205: the zero-label sets for a model trained on
synthesized queries only). Also permutation consistency, the tides request and ms per query.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TIDES = ("what causes tides", ["Tides are caused by the moon.", "Bananas are yellow.", "The stock market fell.",
                               "Gravity of the moon pulls water."])


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return float(value) if value == value else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("runs/readout"))
    p.add_argument("--models", default="shipped=grouprank-smollm2-135m", help="name=model,name=model")
    p.add_argument("--depth", type=int, default=20, help="Cranfield: hybrid top-K reranked")
    p.add_argument("--cranfield", choices=["test", "all"], default="all",
                   help="Cranfield queries reranked: the 40 test + 20 validation, or all 225")
    p.add_argument("--consistency-queries", type=int, default=8)
    p.add_argument("--consistency-only", action="store_true",
                   help="only permutation consistency and the tides request (the tables come from elsewhere)")
    p.add_argument("--output", type=Path)
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from grouprank.metrics import evaluate
    from grouprank.progress import console, progress_bar
    from grouprank.scores import min_max
    from indexer.embedder import resolve
    from indexer.index import Index
    from indexer.ingest import load_beir
    from reranker import load_reranker
    from reranker.candidate_files import load_candidates
    from reranker.types import Candidate, RerankRequest
    from trainer.recipe import split_cranfield, split_dl19

    dl19_dir = args.shared / "trec-dl-2019"
    dl19, cran = load_beir(dl19_dir / "beir_pooled"), load_beir(args.shared / "cranfield")
    dl19_split = split_dl19(list(dl19.judged_queries()), args.seed)
    cran_split = split_cranfield(list(cran.judged_queries()))
    teacher = json.loads((args.work / "teacher.json").read_text())["weights"]

    # Candidate sets: qid -> (query, candidates with first-stage score, {signal: raw scores})
    sets: dict[str, tuple[str, list[Candidate], dict[str, list[float]]]] = {}
    encoder = SentenceTransformer(resolve("all-MiniLM-L6-v2"))
    for qc in load_candidates(dl19_dir / "candidates" / "BM25_top100.json"):
        if qc.qid in dl19.qrels:
            sets[f"dl19:{qc.qid}"] = (qc.query, qc.candidates, {"bm25": [float(c.score) for c in qc.candidates]})
    cran_ids = [q for q in cran.judged_queries()
                if args.cranfield == "all" or q in set(cran_split.test) | set(cran_split.val)]
    with Index.open(args.work / "index-cranfield") as index:
        hits = index.search_batch([cran.queries[q] for q in cran_ids], k=args.depth, mode="hybrid")
        for qid, found in zip(cran_ids, hits, strict=True):
            cands = [Candidate(id=h.id, text=h.text, title=h.title, score=float(h.score)) for h in found]
            bm25 = [h.scores.get("bm25") for h in found]
            low = min((b for b in bm25 if b is not None), default=0.0)
            sets[f"cran:{qid}"] = (cran.queries[qid], cands, {"bm25": [low if b is None else b for b in bm25]})
    with progress_bar("MiniLM scores", len(sets)) as bar:
        for query, cands, signals in sets.values():
            emb = encoder.encode([query] + [f"{c.title}: {c.text}" if c.title else c.text for c in cands],
                                 normalize_embeddings=True, batch_size=64)
            signals["dense"] = [float(x) for x in emb[1:] @ emb[0]]
            bar.advance()
    qrels = {**{f"dl19:{q}": v for q, v in dl19.qrels.items()}, **{f"cran:{q}": v for q, v in cran.qrels.items()}}
    subsets = {
        "dl19_test": [f"dl19:{q}" for q in dl19_split.test],
        "dl19_nonval": [f"dl19:{q}" for q in dl19_split.train + dl19_split.test],
        "dl19_val": [f"dl19:{q}" for q in dl19_split.val],
        "cranfield_test": [f"cran:{q}" for q in cran_split.test],
        "cranfield_val": [f"cran:{q}" for q in cran_split.val],
    }
    if args.cranfield == "all":
        subsets["cranfield_nonval"] = [f"cran:{q}" for q in cran_ids if q not in set(cran_split.val)]
    val_ids = subsets["dl19_val"] + subsets["cranfield_val"]

    def run_of(scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        out = {}
        for key, values in scores.items():
            cands = sets[key][1]
            n = len(cands)
            out[key] = {c.id: v + 1e-9 * (n - i) for i, (c, v) in enumerate(zip(cands, values, strict=True))}
        return out

    def ndcg(scores: dict[str, list[float]], ids: list[str]) -> float:
        return round(evaluate({k: qrels[k] for k in ids}, run_of({k: scores[k] for k in ids}),
                              ("ndcg@10",))["ndcg@10"], 4)

    first = {k: min_max([float(c.score) for c in s[1]]) for k, s in sets.items()}
    dense = {k: s[2]["dense"] for k, s in sets.items()}
    teach = {k: [teacher["bm25"] * b + teacher["dense"] * d for b, d in
                 zip(min_max(s[2]["bm25"]), min_max(s[2]["dense"]), strict=True)] for k, s in sets.items()}
    table: dict[str, dict[str, float]] = {}
    for name, scores in (("first_stage", first), ("minilm", dense), ("teacher", teach)):
        table[name] = {sub: ndcg(scores, ids) for sub, ids in subsets.items()}
    results: dict = {"teacher_weights": teacher, "subsets": {k: len(v) for k, v in subsets.items()}, "table": table,
                     "models": {}}
    for pair in args.models.split(","):
        name, model = pair.split("=", 1)
        t0 = time.monotonic()
        reranker = load_reranker("groupwise", model=model, weight=1.0, likelihood_weight=0.0)
        readout: dict[str, list[float]] = {}
        walls = []
        row: dict = {}
        with progress_bar(f"{name}: read-out", 0 if args.consistency_only else len(sets)) as bar:
            for key, (query, cands, _) in sets.items():
                if args.consistency_only:
                    break
                ranking = reranker.rerank_batch([RerankRequest(query, cands)])[0]
                signal = ranking.signals.get("groupwise", ranking.rerank_scores)
                readout[key] = [signal.get(c.id, 0.0) for c in cands]
                walls.append(ranking.trace.wall_ms)
                bar.advance()
        best_w, best = 0.0, -1.0
        grid = [] if args.consistency_only else [i / 10 for i in range(11)]
        calibration = {}
        for w in grid:
            fused = {k: [w * r + (1 - w) * f for r, f in zip(readout[k], first[k], strict=True)] for k in val_ids}
            calibration[f"{w:.1f}"] = ndcg(fused, val_ids)
            if calibration[f"{w:.1f}"] > best:
                best_w, best = w, calibration[f"{w:.1f}"]
        if not args.consistency_only:
            fused_all = {k: [best_w * r + (1 - best_w) * f for r, f in zip(readout[k], first[k], strict=True)]
                         for k in sets}

            def mean_ms(prefix: str, walls: list[float] = walls) -> float:
                return round(float(np.mean([w for k, w in zip(sets, walls, strict=True) if k.startswith(prefix)])), 1)

            row = {"readout": {sub: ndcg(readout, ids) for sub, ids in subsets.items()},
                   "fused": {sub: ndcg(fused_all, ids) for sub, ids in subsets.items()},
                   "fusion_weight": best_w, "calibration": calibration,
                   "ms_per_query": {"dl19_top100": mean_ms("dl19:"), "cranfield_top20": mean_ms("cran:")}}
        agree, a_scores, b_scores = [], [], []
        for key in subsets["dl19_test"][: args.consistency_queries]:
            query, cands, _ = sets[key]
            docs = [c.text for c in cands[:20]]
            for k, out in enumerate((a_scores, b_scores), 1):
                order = random.Random(f"{key}:{k}").sample(range(len(docs)), len(docs))
                r = reranker.rerank(query, [docs[i] for i in order])
                by_doc = {order[int(i)]: v for i, v in r.rerank_scores.items()}
                out.append([by_doc.get(i, 0.0) for i in range(len(docs))])
        agree = [spearman(a, b) for a, b in zip(a_scores, b_scores, strict=True)]
        row["permutation_spearman"] = round(sum(agree) / max(1, len(agree)), 3)
        tides = reranker.rerank(*TIDES)
        row["tides"] = {"order": [TIDES[1][int(i)] for i in tides.ids], "scores": [round(x, 3) for x in tides.scores]}
        row["seconds"] = round(time.monotonic() - t0, 1)
        results["models"][name] = {"model": model, **row}
        console.print({name: {k: v for k, v in row.items() if k != "calibration"}})
        del reranker
    print(json.dumps({k: v for k, v in results.items()}, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
