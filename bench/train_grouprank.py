"""Retrain the shipped GroupRank model from scratch (the one documented command; ~90 min on 2 CPU cores).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_grouprank.py --shared ../shared/data \
        --work runs/grouprank-train --out reranker/weights/grouprank-smollm2-135m

Stages (each cached in --work, so a stopped run resumes after its last finished stage):
1. indexes: the DL19 pooled corpus and Cranfield, embedded hybrid indexes (the serving ``Index``);
2. mining through ``Index.search`` (hybrid): DL19 and Cranfield train queries with qrels, and synthetic
   queries from DL19 passages outside the validation/test queries' pools;
3. labels: qrels + MiniLM dense teacher, fused as the GroupRank release fuses its teachers;
4. slot SFT (LoRA, bf16), 5. slot GRPO, 6. fusion weight calibrated on validation queries;
7. the LoRA adapter, ``metadata.json`` and the model card written to --out.
Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("runs/grouprank-train"))
    p.add_argument("--out", type=Path, default=Path("reranker/weights/grouprank-smollm2-135m"))
    p.add_argument("--base-model", default="smollm2-135m-instruct")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--depth", type=int, default=30, help="hybrid top-K mined per training query")
    p.add_argument("--synthetic", type=int, default=500, help="synthetic queries from DL19 passages")
    p.add_argument("--dl19-groups", type=int, default=25, help="groups per DL19 train query")
    p.add_argument("--cranfield-groups", type=int, default=4)
    p.add_argument("--synthetic-groups", type=int, default=2)
    p.add_argument("--sizes", default="3,5,10,20", help="group sizes drawn for training")
    p.add_argument("--max-doc-chars", type=int, default=250)
    p.add_argument("--sft-minutes", type=float, default=45.0)
    p.add_argument("--sft-lr", type=float, help="default: 1e-4 (likelihood), 1e-3 (slots)")
    p.add_argument("--batch-tokens", type=int, default=1024, help="padded tokens per optimizer step")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--freeze", type=float, default=0.33, help="fraction of lower layers frozen")
    p.add_argument("--tau", type=float, default=3.0)
    p.add_argument("--rank-weight", type=float, default=1.0)
    p.add_argument("--token-weight", type=float, help="default: 0.3 (likelihood), 1.0 (slots)")
    p.add_argument("--unjudged-max", type=float, default=6.0,
                   help="top target of an unjudged candidate of a judged query (its dense score scaled)")
    p.add_argument("--grpo-minutes", type=float, default=10.0)
    p.add_argument("--grpo-lr", type=float, default=5e-5)
    p.add_argument("--grpo-samples", type=int, default=8)
    p.add_argument("--group-size", type=int, default=20, help="serving group size (validation)")
    p.add_argument("--feed", choices=["fixed", "greedy"], default="fixed",
                   help="what follows each score slot in training and serving (reranker/slots.py)")
    p.add_argument("--objective", choices=["likelihood", "slots"], default="likelihood",
                   help="what SFT and GRPO train: the query likelihood (reranker/likelihood.py, "
                        "trainer/likelihood_train.py) or the groupwise score slots (trainer/slot_sft.py)")
    p.add_argument("--max-docs", type=int, default=8, help="likelihood objective: documents per training group")
    p.add_argument("--scale", type=float, default=2.0,
                   help="likelihood objective: logits = scale * mean query log-probability (ListNet, GRPO)")
    p.add_argument("--stop-after", choices=["labels"], help="stop once the data stages are cached")
    args = p.parse_args()
    likelihood = args.objective == "likelihood"
    if args.sft_lr is None:
        args.sft_lr = 1e-4 if likelihood else 1e-3
    if args.token_weight is None:
        args.token_weight = 0.3 if likelihood else 1.0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grouprank.progress import console, progress_bar
    from indexer.index import Index
    from indexer.ingest import load_beir
    from reranker.backends.transformers_backend import TransformersBackend
    from reranker.candidate_files import load_candidates
    from reranker.groupwise import GroupwiseReranker
    from reranker.models import resolve_model
    from trainer.calibration import calibrate_weight
    from trainer.evaluation import candidate_sets
    from trainer.likelihood_train import (
        LikelihoodGRPOConfig,
        LikelihoodTrainConfig,
        encode_likelihood_groups,
        train_likelihood_grpo,
        train_likelihood_sft,
    )
    from trainer.mining import MiningConfig, mine, read_mined, write_mined
    from trainer.recipe import (
        build_groups,
        compact_adapter,
        encode_groups,
        scored_queries,
        split_cranfield,
        split_dl19,
        write_model_card,
    )
    from trainer.slot_dataset import DenseTeacher, mine_synthetic, position_balance, synthetic_queries
    from trainer.slot_grpo import SlotGRPOConfig, train_slot_grpo
    from trainer.slot_sft import SlotTrainConfig, train_slot_sft

    started = time.monotonic()
    timings: dict[str, float] = {}
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    def done(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 1)
        console.print(f"[bold]{name}[/] {timings[name]} s")

    dl19_dir, cran_dir = args.shared / "trec-dl-2019", args.shared / "cranfield"
    dl19, cran = load_beir(dl19_dir / "beir_pooled"), load_beir(cran_dir)
    dl19_split = split_dl19(list(dl19.judged_queries()), args.seed)
    cran_split = split_cranfield(list(cran.judged_queries()))

    t0 = time.monotonic()
    indexes = {"dl19": (work / "index-dl19", dl19), "cranfield": (work / "index-cranfield", cran)}
    for path, data in indexes.values():
        if not (path / "CURRENT").exists():
            with Index.create(path) as index:
                index.upsert(data.documents)
    done("indexes", t0)

    t0 = time.monotonic()
    # Only what the retriever returns, as when serving: judged positives it missed would teach that
    # documents unlike the query are the relevant ones (measured: scores anti-correlated with grades).
    mining = MiningConfig(depth=args.depth, mode="hybrid", unretrieved_positives=False, seed=args.seed)
    sources = {}
    for name, ids, data in (("dl19", dl19_split.train, dl19), ("cranfield", cran_split.train, cran)):
        path = work / f"mined-{name}.jsonl"
        if not path.exists():
            with Index.open(indexes[name][0]) as index:
                write_mined(path, mine(index, {q: data.queries[q] for q in ids}, data.qrels, mining))
        sources[name] = read_mined(path)
    path = work / "mined-synthetic.jsonl"
    if not path.exists():
        held = set(dl19_split.val) | set(dl19_split.test)
        pooled = set()
        for run in sorted((dl19_dir / "candidates").glob("*_top100.json")):
            for qc in load_candidates(run):
                if qc.qid in held:
                    pooled.update(c.id for c in qc.candidates)
        allowed = [d for d in dl19.documents if d.id not in pooled]
        triples = synthetic_queries(allowed, args.synthetic, args.seed)
        with Index.open(indexes["dl19"][0]) as index:
            write_mined(path, mine_synthetic(index, triples, args.depth))
    sources["synthetic"] = read_mined(path)
    done("mining", t0)

    t0 = time.monotonic()
    teacher = DenseTeacher("all-MiniLM-L6-v2")
    sizes = [int(s) for s in args.sizes.split(",")]
    per_query = {"dl19": args.dl19_groups, "cranfield": args.cranfield_groups, "synthetic": args.synthetic_groups}
    max_grade = {"dl19": 3, "cranfield": 4, "synthetic": 1}
    with Index.open(indexes["dl19"][0]) as dl19_index, Index.open(indexes["cranfield"][0]) as cran_index:
        opened = {"dl19": dl19_index, "synthetic": dl19_index, "cranfield": cran_index}
        groups = build_groups(sources, teacher, max_grade, per_query, sizes, args.seed, opened, args.unjudged_max)
    del teacher
    all_groups = groups.all()
    balance = position_balance(all_groups)
    done("labels", t0)

    base_path = resolve_model(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if likelihood:
        examples: list = encode_likelihood_groups(all_groups, tokenizer, args.max_doc_chars, args.max_docs, args.seed)
        tokens = sum(e.tokens for e in examples)
    else:
        examples = encode_groups(all_groups, tokenizer, args.max_doc_chars, args.feed)
        tokens = sum(len(e.input_ids) for e in examples)
    data_summary = {
        "objective": args.objective,
        "groups": {k: len(v) for k, v in groups.by_source.items()},
        "queries": {k: len(v) for k, v in sources.items()},
        "documents_judged": sum(len(g.docs) for g in all_groups),
        "tokens": tokens,
        "mean_target_by_position": balance,
        "splits": {"dl19": dl19_split.__dict__, "cranfield": cran_split.__dict__},
    }
    console.print(json.dumps({k: v for k, v in data_summary.items() if k != "splits"}))
    if args.stop_after == "labels":
        return

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)

    def reporter(label: str, total_s: float):
        bar_ctx = progress_bar(label, None)
        bar = bar_ctx.__enter__()

        def on_step(step: int, total: int, logs: dict[str, float]) -> None:
            bar.advance()
            if step % 50 == 0:
                console.print(f"{label} step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))

        return bar_ctx, on_step

    t0 = time.monotonic()
    sft_config: Any
    if likelihood:
        sft_config = LikelihoodTrainConfig(epochs=3, learning_rate=args.sft_lr, lora_r=args.lora_r,
                                           lora_alpha=2 * args.lora_r, freeze_fraction=args.freeze, tau=args.tau,
                                           token_weight=args.token_weight, max_seconds=args.sft_minutes * 60,
                                           seed=args.seed, scale=args.scale)
    else:
        sft_config = SlotTrainConfig(epochs=3, learning_rate=args.sft_lr, lora_r=args.lora_r,
                                     lora_alpha=2 * args.lora_r, freeze_fraction=args.freeze, tau=args.tau,
                                     rank_weight=args.rank_weight, token_weight=args.token_weight,
                                     max_seconds=args.sft_minutes * 60, seed=args.seed, batch_tokens=args.batch_tokens)
    ctx, on_step = reporter(f"{args.objective} SFT", sft_config.max_seconds or 0)
    try:
        train = train_likelihood_sft if likelihood else train_slot_sft
        model, sft_info = train(model, tokenizer, examples, sft_config, on_step)
    finally:
        ctx.__exit__(None, None, None)
    model.save_pretrained(work / "sft-adapter")
    serving: dict[str, Any] = {"group_size": args.group_size, "max_doc_chars": args.max_doc_chars,
                               "decoding": "slots", "rubric": "concise", "slot_feed": args.feed}
    (work / "sft-adapter" / "metadata.json").write_text(json.dumps({"stage": "sft", "serving": serving}) + "\n")
    done("sft", t0)

    t0 = time.monotonic()
    grpo_info: dict = {"metrics": {"steps": 0}}
    grpo_config: Any = None
    if args.grpo_minutes > 0:
        if likelihood:
            grpo_config = LikelihoodGRPOConfig(epochs=1, learning_rate=args.grpo_lr, num_samples=args.grpo_samples,
                                               max_seconds=args.grpo_minutes * 60, seed=args.seed, scale=args.scale)
        else:
            grpo_config = SlotGRPOConfig(epochs=1, learning_rate=args.grpo_lr, num_samples=args.grpo_samples,
                                         max_seconds=args.grpo_minutes * 60, seed=args.seed,
                                         batch_tokens=args.batch_tokens)
        ctx, on_step = reporter(f"{args.objective} GRPO", grpo_config.max_seconds or 0)
        shuffled = [examples[i] for i in torch.randperm(len(examples), generator=torch.Generator().manual_seed(1))]
        try:
            train = train_likelihood_grpo if likelihood else train_slot_grpo
            model, grpo_info = train(model, tokenizer, shuffled, grpo_config, on_step)
        finally:
            ctx.__exit__(None, None, None)
    done("grpo", t0)

    t0 = time.monotonic()
    backend = TransformersBackend.from_model(model, tokenizer, name="candidate")
    # likelihood objective: read both parts (any weight in (0, 1)); calibration mixes them offline
    reranker = GroupwiseReranker(backend, group_size=args.group_size, weight=1.0, max_doc_chars=args.max_doc_chars,
                                 slot_feed=args.feed, likelihood_weight=0.5 if likelihood else 0.0)
    val_sets = [qc for qc in load_candidates(dl19_dir / "candidates" / "BM25_top100.json")
                if qc.qid in set(dl19_split.val)]
    val_mined = work / "mined-cranfield-val.jsonl"
    if not val_mined.exists():
        with Index.open(indexes["cranfield"][0]) as index:
            config = MiningConfig(depth=args.group_size, mode="hybrid", unretrieved_positives=False)
            write_mined(val_mined, mine(index, {q: cran.queries[q] for q in cran_split.val}, cran.qrels, config))
    val_sets += candidate_sets(read_mined(val_mined))
    with progress_bar("validation reranking", len(val_sets)) as bar:
        scored, val_costs = scored_queries(reranker, val_sets, on_query=bar.advance)
    qrels = {**dl19.qrels, **cran.qrels}
    calibration = calibrate_weight(scored, qrels)
    served_weight, served_mix, served_dense = calibration.serve  # one pass unless a mix beats it beyond noise
    serving["dense_weight"] = served_dense
    if calibration.adds_value and likelihood:
        serving["likelihood_weight"] = served_mix
        serving["weight_without_likelihood"] = calibration.weight_without_likelihood
    done("calibration", t0)

    merged_out = args.out
    merged_out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(merged_out)
    compact_adapter(merged_out)
    adapter_config = merged_out / "adapter_config.json"
    config_json = json.loads(adapter_config.read_text())
    config_json["base_model_name_or_path"] = args.base_model  # an alias: resolved on each machine
    adapter_config.write_text(json.dumps(config_json, indent=2) + "\n")
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/train_grouprank.py " + " ".join(sys.argv[1:])
    metadata = {
        "name": merged_out.name,
        "stage": "grpo" if grpo_info["metrics"].get("steps") else "sft",
        "base_model": args.base_model,
        "fusion_weight": served_weight if calibration.adds_value else 0.0,
        "calibration": calibration.to_dict(),
        "serving": serving,
        "data": {k: v for k, v in data_summary.items() if k != "splits"},
        "splits": data_summary["splits"],
        "sft": {"config": sft_config.to_dict(), "metrics": sft_info["metrics"]},
        "grpo": {"config": grpo_config.to_dict() if grpo_config else None, "metrics": grpo_info["metrics"]},
        "validation_costs": val_costs,
        "timings_s": {**timings, "total": round(time.monotonic() - started, 1)},
        "command": command,
    }
    (merged_out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    write_model_card(merged_out, metadata)
    (work / "train-log.json").write_text(json.dumps({"sft": sft_info["log"], "grpo": grpo_info.get("log", [])}))
    print(json.dumps({k: metadata[k] for k in ("fusion_weight", "calibration", "data", "timings_s")}, indent=2))


if __name__ == "__main__":
    main()
