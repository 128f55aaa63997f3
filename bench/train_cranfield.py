"""Training benchmark: does SFT (+GRPO) make SmolLM2-135M a useful GroupRank reranker on Cranfield?

    nohup python bench/train_cranfield.py --output runs/train-cranfield/results.json \\
        --plot docs/results-training.png > runs/train-cranfield.log 2>&1 &

Cranfield's judged queries are split by a fixed seed into train and test queries. Candidates for both come
from the hybrid index (``Index.search``, the serving path) over the full corpus. Training labels come from the
qrels through the synthesis fusion: pointwise teacher = the qrels grade (0-4, scaled to 0-10), listwise
teacher = the order the grades induce, ties broken by the retriever's rank; fused as 0.6 * pointwise + 0.4 *
(-ln(rank + 1), min-max normalised). Then SFT (loss on the answer only) and GRPO (heterogeneous reward) from it.

Reported on the test queries (NDCG@10 etc.): BM25 and hybrid retrieval, and the groupwise reranker over the
hybrid top-K with the base model (zero-shot), the SFT model and the SFT+GRPO model, all with the same
serving settings (group size, fusion weight, document truncation); plus the rerank latency per query.
Every stage's output is kept under ``--work``: a rerun skips what is done (delete a file to redo it).
JSON on stdout and in ``--output``; ``--plot`` draws NDCG@10 against rerank latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from grouprank.metrics import evaluate
from grouprank.trec_files import Qrels
from indexer.index import Index
from indexer.ingest import load_beir
from trainer.config import (
    EvalConfig,
    GRPOStageConfig,
    MiningConfig,
    RewardConfig,
    SFTStageConfig,
    SynthesisConfig,
)
from trainer.evaluation import candidate_sets, evaluate_model
from trainer.files import read_json, write_json_atomic, write_jsonl_atomic
from trainer.mining import mine, read_mined, split_queries, write_mined
from trainer.synthesis import synthesize
from trainer.teachers import QrelsListwiseTeacher, QrelsPointwiseTeacher

DATA = Path(os.environ.get("GROUPRANK_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def retrieval_rows(index: Index, queries: dict[str, str], qrels: Qrels, k: int) -> list[dict[str, Any]]:
    rows = []
    for mode in ("bm25", "hybrid"):
        started = time.monotonic()
        run = {q: {h.id: float(k - n) for n, h in enumerate(index.search(text, k=k, mode=mode))}
               for q, text in queries.items()}
        ms = (time.monotonic() - started) * 1000 / len(queries)
        metrics = evaluate({q: qrels[q] for q in queries}, run, ("ndcg@10", "ndcg@5", "mrr@10"))
        rows.append({"name": mode, **metrics, "rerank_ms_per_query": 0.0, "retrieval_ms_per_query": ms})
    return rows


def rerank_row(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **{m: summary[m] for m in ("ndcg@10", "ndcg@5", "mrr@10")},
            "rerank_ms_per_query": summary["wall_ms"], "parse_failure_rate": summary["parse_failure_rate"],
            "completion_tokens_per_query": summary["completion_tokens"], "model": summary["model"]}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in rows:
        x = row["rerank_ms_per_query"] / 1000
        marker = "s" if row["rerank_ms_per_query"] == 0 else "o"
        ax.scatter([x], [row["ndcg@10"]], marker=marker, s=50)
        ax.annotate(row["name"], (x, row["ndcg@10"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("rerank latency per query (s, CPU, batched)")
    ax.set_ylabel("NDCG@10 (test queries)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA / "cranfield")
    p.add_argument("--work", type=Path, default=Path("runs/train-cranfield"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--seed", type=int, default=7, help="seed of the train/test split by query")
    p.add_argument("--test-queries", type=int, default=40)
    p.add_argument("--train-queries", type=int, default=150)
    p.add_argument("--depth", type=int, default=10, help="hybrid top-K reranked (and mined)")
    p.add_argument("--group-size", type=int, default=5)
    p.add_argument("--groups-per-query", type=int, default=2)
    p.add_argument("--max-doc-chars", type=int, default=200)
    p.add_argument("--weight", type=float, default=0.6, help="weight of the rerank score in the fusion")
    p.add_argument("--sft-steps", type=int, default=40)
    p.add_argument("--sft-batch", type=int, default=2)
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--sft-lora-r", type=int, default=16)
    p.add_argument("--grpo-steps", type=int, default=8)
    p.add_argument("--grpo-lr", type=float, default=2e-5)
    p.add_argument("--grpo-lora-r", type=int, default=16)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--grpo-batch", type=int, default=4)
    p.add_argument("--grpo-temperature", type=float, default=1.0, help="sampling temperature of GRPO")
    p.add_argument("--stages", default="zero-shot,sft,grpo", help="models to evaluate, comma-separated")
    p.add_argument("--output", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; set before transformers loads
    started = time.monotonic()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 1)
        log(f"{name}: {timings[name]} s")

    data = load_beir(args.data)
    judged = data.judged_queries()
    train_ids, test_ids = split_queries(list(judged), 0.3, args.seed)
    train_ids, test_ids = train_ids[: args.train_queries], test_ids[: args.test_queries]
    log(f"{len(judged)} judged queries -> {len(train_ids)} train, {len(test_ids)} test (seed {args.seed})")

    t0 = time.monotonic()
    index_dir = work / "index"
    if not (index_dir / "CURRENT").exists():
        with Index.create(index_dir) as index:
            index.upsert(data.documents)
    timed("index", t0)

    mining = MiningConfig(depth=args.depth, group_size=args.group_size, groups_per_query=args.groups_per_query,
                          max_positives=2, seed=args.seed)
    t0 = time.monotonic()
    with Index.open(index_dir) as index:
        test_queries = {q: judged[q] for q in test_ids}
        baselines = retrieval_rows(index, test_queries, data.qrels, 10)
        for name in ("train", "test"):
            path = work / f"mined-{name}.jsonl"
            if not path.exists():
                ids = train_ids if name == "train" else test_ids
                write_mined(path, mine(index, {q: judged[q] for q in ids}, data.qrels, mining))
    timed("mining", t0)

    dataset = work / "dataset.jsonl"
    if not dataset.exists():
        max_grade = max(r for d in data.qrels.values() for r in d.values())
        rows = synthesize(read_mined(work / "mined-train.jsonl"), QrelsPointwiseTeacher(max_grade),
                          QrelsListwiseTeacher(), SynthesisConfig(max_doc_chars=args.max_doc_chars))
        write_jsonl_atomic(dataset, rows)
    n_rows = sum(1 for _ in dataset.open())
    log(f"{n_rows} training groups in {dataset}")

    sets = candidate_sets(read_mined(work / "mined-test.jsonl"))
    evaluation = EvalConfig(group_size=args.group_size, weight=args.weight, max_doc_chars=args.max_doc_chars,
                            batch_queries=8)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    rows_out = list(baselines)

    def evaluated(name: str, model: str) -> None:
        path = work / f"eval-{name}.json"
        if not path.exists():
            t = time.monotonic()
            write_json_atomic(path, evaluate_model(model, sets, data.qrels, evaluation))
            timed(f"eval {name}", t)
        summary = read_json(path)
        rows_out.append(rerank_row(name, summary))
        log(f"{name}: ndcg@10 {summary['ndcg@10']:.4f} (hybrid {summary['retriever']['ndcg@10']:.4f}), "
            f"{summary['wall_ms'] / 1000:.1f} s/query, parse failures {summary['parse_failure_rate']:.1%}")

    if "zero-shot" in stages:
        evaluated("zero-shot", args.model)
    sft_dir = work / "sft-model"
    if "sft" in stages or "grpo" in stages:
        if not (sft_dir / "metadata.json").exists():
            from trainer.sft import train_sft

            t = time.monotonic()
            train_sft(dataset, args.model, sft_dir, SFTStageConfig(
                max_steps=args.sft_steps, batch_size=args.sft_batch, learning_rate=args.sft_lr,
                lora_r=args.sft_lora_r, lora_alpha=max(1, 2 * args.sft_lora_r), device="cpu"))
            timed("sft", t)
        evaluated("sft", str(sft_dir))
    if "grpo" in stages:
        grpo_dir = work / "grpo-model"
        if not (grpo_dir / "metadata.json").exists():
            from trainer.grpo import train_grpo

            t = time.monotonic()
            train_grpo(dataset, str(sft_dir), grpo_dir, GRPOStageConfig(
                max_steps=args.grpo_steps, batch_size=args.grpo_batch, learning_rate=args.grpo_lr,
                num_generations=args.num_generations, max_completion_length=8 * args.group_size + 24,
                temperature=args.grpo_temperature,
                lora_r=args.grpo_lora_r, lora_alpha=max(1, 2 * args.grpo_lora_r), device="cpu", reward=RewardConfig()))
            timed("grpo", t)
        evaluated("sft+grpo", str(grpo_dir))

    result = {
        "benchmark": "train_cranfield",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": args.model,
        "split": {"seed": args.seed, "train_queries": len(train_ids), "test_queries": len(test_ids)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "training_groups": n_rows,
        "teachers": {"pointwise": "qrels grade / max grade * 10",
                     "listwise": "order by qrels grade, ties by hybrid retriever rank"},
        "rows": rows_out,
        "timings_s": timings,
        "wall_s": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
    }
    for name in ("sft-model", "grpo-model"):
        meta = work / name / "metadata.json"
        if meta.exists():
            result[f"{name}_metrics"] = read_json(meta)["metrics"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    if args.plot:
        plot(rows_out, args.plot, f"Cranfield, {len(test_ids)} test queries, {args.model}, hybrid top-{args.depth}")


if __name__ == "__main__":
    main()
