"""Evaluate GroupRank models on held-out queries: DL19 (BM25 top-100, G=20) and Cranfield (hybrid top-20).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_grouprank.py --shared ../shared/data \
        --work runs/grouprank-train --output runs/grouprank-eval.json --plot docs/results-grouprank.png

For each model (zero-shot base, the SFT adapter, the shipped SFT+GRPO adapter) the fusion weight is
calibrated on the validation queries (never on test), then test NDCG@10 is reported rerank-only (w = 1)
and fused at the served weights (with ``--likelihood``: the two-pass mix only where it beats the best
one-pass setting beyond noise, ``trainer.calibration``; the best mix is reported beside it). Also: BM25
and the MiniLM bi-encoder reorder, permutation consistency (Spearman of a document's scores in two random
group orders), the tides request, and the cost per query of reranking BM25 top-100 with both parts read
(two passes) and as served.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TIDES = ("what causes tides", ["Tides are caused by the moon.", "Bananas are yellow.", "The stock market fell.",
                               "Gravity of the moon pulls water."])


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return float(value) if value == value else 0.0  # NaN (constant scores) counts as no agreement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("runs/grouprank-train"))
    p.add_argument("--models", default="zero-shot=smollm2-135m-instruct,sft=runs/grouprank-train/sft-adapter,"
                                       "sft+grpo=reranker/weights/grouprank-smollm2-135m")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--group-size", type=int, help="default: each model's own (its metadata), else 20")
    p.add_argument("--max-doc-chars", type=int, help="default: each model's own, else 250")
    p.add_argument("--depth", type=int, default=20, help="Cranfield: hybrid top-K reranked")
    p.add_argument("--consistency-queries", type=int, default=5)
    p.add_argument("--cost-queries", type=int, default=1)
    p.add_argument("--recalibrate", action="store_true", help="calibrate even models whose metadata has it")
    p.add_argument("--likelihood", action="store_true",
                   help="also read each document's query likelihood (reranker/likelihood.py) and calibrate its "
                        "weight beside the fusion weight")
    p.add_argument("--zero-label", action="store_true",
                   help="test on every query but the validation ones (35 DL19, 205 Cranfield): for models "
                        "trained without these qrels")
    p.add_argument("--no-dense", action="store_true",
                   help="fuse with the retriever score only, not the candidates' MiniLM similarities")
    p.add_argument("--output", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from grouprank.metrics import evaluate
    from grouprank.progress import console, progress_bar
    from indexer.index import Index
    from indexer.ingest import load_beir
    from reranker import load_reranker
    from reranker.candidate_files import load_candidates
    from reranker.models import model_metadata
    from trainer.calibration import calibrate_weight, fused_run
    from trainer.evaluation import candidate_sets
    from trainer.mining import MiningConfig, mine, read_mined, write_mined
    from trainer.recipe import scored_queries, split_cranfield, split_dl19
    from trainer.slot_dataset import DenseTeacher

    dl19_dir = args.shared / "trec-dl-2019"
    dl19, cran = load_beir(dl19_dir / "beir_pooled"), load_beir(args.shared / "cranfield")
    dl19_split = split_dl19(list(dl19.judged_queries()), args.seed)
    cran_split = split_cranfield(list(cran.judged_queries()))
    qrels = {**dl19.qrels, **cran.qrels}
    bm25 = {qc.qid: qc for qc in load_candidates(dl19_dir / "candidates" / "BM25_top100.json")}
    dl19_test = dl19_split.train + dl19_split.test if args.zero_label else dl19_split.test
    cran_test = ("nonval", sorted(set(cran.judged_queries()) - set(cran_split.val))) if args.zero_label \
        else ("test", cran_split.test)
    cran_sets = {}
    for name, ids in (("val", cran_split.val), cran_test):
        path = args.work / f"mined-cranfield-{name}.jsonl"
        if not path.exists():
            with Index.open(args.work / "index-cranfield") as index:
                config = MiningConfig(depth=args.depth, mode="hybrid", unretrieved_positives=False)
                write_mined(path, mine(index, {q: cran.queries[q] for q in ids}, cran.qrels, config))
        cran_sets[name] = candidate_sets(read_mined(path))
    teacher = DenseTeacher("all-MiniLM-L6-v2")
    if not args.no_dense:  # what a hybrid first stage hands on: each candidate's MiniLM similarity
        for qid in dl19_split.val + dl19_test:
            s = bm25[qid]
            cosines = teacher.score(s.query, [c.text for c in s.candidates])
            s.candidates = [replace(c, dense=float(x)) for c, x in zip(s.candidates, cosines, strict=True)]
    else:
        cran_sets = {k: [replace(s, candidates=[replace(c, dense=None) for c in s.candidates]) for s in v]
                     for k, v in cran_sets.items()}
    val_sets = [bm25[q] for q in dl19_split.val] + cran_sets["val"]
    test_sets = {"dl19": [bm25[q] for q in dl19_test], "cranfield": cran_sets[cran_test[0]]}

    def ndcg(run: dict[str, dict[str, float]], ids: list[str]) -> float:
        return round(evaluate({q: qrels[q] for q in ids}, {q: run[q] for q in ids}, ("ndcg@10",))["ndcg@10"], 4)

    def first_stage_run(sets: list[Any]) -> dict[str, dict[str, float]]:
        return {s.qid: {c.id: float(len(s.candidates) - i) for i, c in enumerate(s.candidates)} for s in sets}

    results: dict[str, Any] = {"zero_label": args.zero_label,
                               "splits": {"dl19_test": dl19_test, "dl19_val": dl19_split.val,
                                          "cranfield_test": len(test_sets["cranfield"]),
                                          "cranfield_val": len(cran_split.val)}}
    baselines = {}
    for name, sets in test_sets.items():
        baselines[f"{name}_first_stage"] = ndcg(first_stage_run(sets), [s.qid for s in sets])
    minilm = {s.qid: dict(zip([c.id for c in s.candidates], teacher.score(s.query, [c.text for c in s.candidates]),
                              strict=True)) for s in test_sets["dl19"]}
    baselines["dl19_minilm_reorder"] = ndcg(minilm, [s.qid for s in test_sets["dl19"]])
    results["baselines"] = baselines
    console.print(baselines)

    def serving_for(model: str) -> dict[str, Any]:
        """The model's own group size and document length (its metadata), else 20 and 250; flags win."""
        own = (model_metadata(model) or {}).get("serving") or {}
        out = {"group_size": own.get("group_size", 20), "max_doc_chars": own.get("max_doc_chars", 250)}
        out.update({k: v for k, v in (("group_size", args.group_size), ("max_doc_chars", args.max_doc_chars)) if v})
        return out

    rows = []
    for spec in args.models.split(","):
        label, model = spec.split("=", 1)
        if not Path(model).exists() and "/" in model:
            console.print(f"[yellow]skipping {label}: {model} not found")
            continue
        t0 = time.monotonic()
        serving = serving_for(model)
        if args.likelihood:
            serving["likelihood_weight"] = 0.5  # any weight in (0, 1) reads both parts; calibration mixes them
        reranker = load_reranker("groupwise", model=model, weight=1.0, **serving)
        stored = (model_metadata(model) or {}).get("calibration")
        if stored and args.likelihood and "likelihood_weight" not in stored:
            stored = None  # calibrated without likelihoods
        if stored and not args.recalibrate:  # calibrated by the training run on the same validation queries
            calibration_dict = stored
        else:
            with progress_bar(f"{label}: validation", len(val_sets)) as bar:
                val_scored, _ = scored_queries(reranker, val_sets, on_query=bar.advance)
            calibration_dict = calibrate_weight(val_scored, qrels).to_dict()
        served = calibration_dict.get("serve", calibration_dict)  # one pass unless a mix beats it beyond noise
        weight = served["weight"] if calibration_dict["adds_value"] else 0.0
        mixed = served.get("likelihood_weight", 0.0) if args.likelihood else 0.0
        dense = served.get("dense_weight", 0.0)
        meta = model_metadata(model) or {}
        own = meta.get("serving") or {}
        as_stored = ((meta["fusion_weight"], own.get("likelihood_weight", 0.0), own.get("dense_weight", 0.0))
                     if "fusion_weight" in meta else None)
        row: dict[str, Any] = {"model": label, "path": model, "weight": weight, "likelihood_weight": mixed,
                               "dense_weight": dense, "as_stored": as_stored, "calibration": calibration_dict,
                               "serving": serving}
        for name, sets in test_sets.items():
            with progress_bar(f"{label}: {name} test", len(sets)) as bar:
                scored, costs = scored_queries(reranker, sets, on_query=bar.advance)
            ids = [s.qid for s in sets]
            row[f"{name}_rerank_only"] = ndcg(fused_run(scored, 1.0, mixed), ids)
            row[f"{name}_fused"] = ndcg(fused_run(scored, weight, mixed, dense), ids)
            row[f"{name}_fused_without_dense"] = ndcg(fused_run(scored, weight, mixed), ids)
            row[f"{name}_dense_only"] = ndcg(fused_run(scored, 0.0, mixed, 1.0), ids)
            if args.likelihood:
                row[f"{name}_groupwise_only"] = ndcg(fused_run(scored, 1.0, 0.0), ids)
                row[f"{name}_likelihood_only"] = ndcg(fused_run(scored, 1.0, 1.0), ids)
                best_mix = (calibration_dict["weight"], calibration_dict.get("likelihood_weight", 0.0),
                            calibration_dict.get("dense_weight", 0.0))
                row[f"{name}_fused_best_mix"] = ndcg(fused_run(scored, *best_mix), ids)
                if as_stored is not None:  # the model's settings before this calibration, same scores
                    row[f"{name}_fused_as_stored"] = ndcg(fused_run(scored, *as_stored), ids)
            row[f"{name}_wall_ms_per_query"] = round(costs["wall_ms"], 1)
            row[f"{name}_prompt_tokens_per_query"] = round(costs["prompt_tokens"], 1)
        # Permutation consistency: each of 20 BM25 candidates' rerank scores in two random orders (so in
        # other groups and positions, at the model's own group size).
        first, second = [], []
        reranker.likelihood_weight = mixed
        for s in test_sets["dl19"][: args.consistency_queries]:
            docs = [c.text for c in s.candidates[:20]]
            for k, out in enumerate((first, second), 1):
                order = random.Random(f"{s.qid}:{k}").sample(range(len(docs)), len(docs))
                ranking = reranker.rerank(s.query, [docs[i] for i in order])
                by_doc = {order[int(i)]: v for i, v in ranking.rerank_scores.items()}
                out.append([by_doc[i] for i in range(len(docs))])
        row["permutation_spearman"] = round(sum(spearman(a, b) for a, b in zip(first, second, strict=True))
                                            / max(1, len(first)), 3)
        tides_options = {**serving, "likelihood_weight": mixed} if args.likelihood else serving
        tides = load_reranker("groupwise", model=model, **tides_options).rerank(*TIDES)
        row["tides"] = {"order": [TIDES[1][int(i)] for i in tides.ids], "scores": [round(x, 3) for x in tides.scores]}
        row["seconds"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        console.print(row)
        del reranker
    results["models"] = rows

    # Cost: BM25 top-100, G=20, per query, the last model: both parts read (two passes: the groupwise
    # prompts, then the likelihood rows) against the setting served (one pass unless a mix beats it).
    cost_sets = test_sets["dl19"][: args.cost_queries]
    cost = {}
    last = rows[-1] if rows else {"path": "smollm2-135m-instruct", "likelihood_weight": 0.0}
    for label, mixed in (("both parts (l = 0.5)", 0.5), (f"served (l = {last['likelihood_weight']})",
                                                         last["likelihood_weight"])):
        reranker = load_reranker("groupwise", model=last["path"], **{**serving_for(last["path"]),
                                                                    "likelihood_weight": mixed})
        _, costs = scored_queries(reranker, cost_sets)
        cost[label] = {k: round(v, 1) for k, v in costs.items()}
    results["cost_bm25_top100_g20"] = cost
    console.print(cost)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    if args.plot and rows:
        plot(rows, baselines, args.plot)


def plot(rows: list[dict[str, Any]], baselines: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        x = row["dl19_wall_ms_per_query"] / 1000
        ax.scatter([x], [row["dl19_fused"]], marker="o")
        ax.scatter([x], [row["dl19_rerank_only"]], marker="x")
        ax.annotate(f"{row['model']} (fused w={row['weight']})", (x, row["dl19_fused"]), fontsize=8)
        ax.annotate(f"{row['model']} (rerank only)", (x, row["dl19_rerank_only"]), fontsize=8)
    ax.axhline(baselines["dl19_first_stage"], color="grey", linestyle="--", label="BM25")
    ax.axhline(baselines["dl19_minilm_reorder"], color="green", linestyle=":", label="MiniLM bi-encoder reorder")
    ax.set_xlabel("rerank wall time per query, BM25 top-100, G=20 (s, 2 CPU cores)")
    ax.set_ylabel("NDCG@10, DL19 test queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
