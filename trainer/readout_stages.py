"""The pipeline's ``"readout"`` objective: the one-pass read-out head trained on queries the product's own
tiers synthesize, no relevance labels in training.

- mine (``mine_synthetic``, after the judged queries are mined): queries synthesized by the LLM from the
  index's passages (the test queries' candidates left out), kept when the index ranks their passage in
  its top ``keep_k`` (``trainer.readout_data``), with their hybrid candidates.
- synth (``stage_synth``): the BM25 + dense teacher calibrated on the judged train queries, then groups of
  ``group_size`` with 0..10 targets; the judged train queries' top candidates, graded by their qrels,
  are the held-out groups that pick the epoch.
- sft (``stage_sft``): the base model cut to ``layers`` reads every group once; a head is trained on the
  states (``trainer.readout_head``) and written as a model folder (``metadata.json`` + the head).
- grpo (``stage_grpo``): GRPO on the head; the folder evaluate and promote take.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.loading import model_loading
from trainer.config import PipelineConfig

SYNTHETIC = "mined-synthetic.jsonl"


def mine_synthetic(config: PipelineConfig, run: Any, index: Any, exclude: set[str]) -> dict[str, Any]:
    """Synthesize and round-trip filter queries over ``index``'s documents not in ``exclude``."""
    from trainer.readout_data import llm_generator, round_trip, synthesize_queries, write_sets

    r = config.readout
    docs = [d for d in index.iter_documents() if d.id not in exclude]
    if not docs:
        raise InputError("the index has no documents to synthesize queries from", field="index_dir")
    generate = llm_generator(r.generator or config.base_model, r.seed)
    queries = synthesize_queries(generate, docs, r.queries, run.path / "synthetic-queries.jsonl", r.seed)
    kept, dropped = round_trip(index, queries, r.keep_k, r.depth)
    write_sets(run.path / SYNTHETIC, kept)
    return {"synthetic": str(run.path / SYNTHETIC), "synthesized": len(queries), "kept": len(kept),
            "dropped": dropped}


def _judged_groups(config: PipelineConfig, run: Any) -> tuple[list[Any], list[Any], dict[str, dict[str, int]]]:
    """The judged train queries searched like synthetic ones (for the teacher), and their top
    ``group_size`` candidates in retriever order graded by the qrels (to pick the epoch)."""
    from grouprank.trec_files import read_qrels
    from indexer.backends import open_index
    from trainer.mining import read_mined
    from trainer.readout_data import Candidate, MinedSet, ReadoutGroup, _text

    r = config.readout
    qrels = read_qrels(config.qrels)
    judged = {m.qid: m.query for m in read_mined(run.outputs("mine")["train"])}
    sets, held = [], []
    with open_index(config.index_target()) as index:
        hits = index.search_batch(list(judged.values()), k=r.depth, mode="hybrid")
    for (qid, query), found in zip(judged.items(), hits, strict=True):
        cands = [Candidate(h.id, h.text, h.title, h.scores.get("bm25"), h.scores.get("dense")) for h in found]
        sets.append(MinedSet(qid, query, cands, 0))
        top = cands[: r.group_size]
        if len(top) >= 2:
            held.append(ReadoutGroup(qid, query, [_text(c, r.max_doc_chars) for c in top],
                                     [float(qrels.get(qid, {}).get(c.id, 0)) for c in top]))
    return sets, held, qrels


def stage_synth(config: PipelineConfig, run: Any) -> dict[str, Any]:
    from trainer.files import write_json_atomic, write_jsonl_atomic
    from trainer.readout_data import calibrate_teacher, read_sets, sample_groups

    r = config.readout
    sets, held, qrels = _judged_groups(config, run)
    teacher = calibrate_teacher(sets, qrels)
    mined = read_sets(Path(run.outputs("mine")["synthetic"]))
    random.Random(r.seed).shuffle(mined)
    groups = sample_groups(mined[: r.max_groups] if r.max_groups else mined, teacher["weights"], r.group_size, 1,
                           r.seed, r.max_doc_chars)
    if not groups:
        raise InputError("no synthesized query passed the round trip", field="readout.queries")
    write_jsonl_atomic(run.path / "readout-groups.jsonl", [asdict(g) for g in groups])
    write_jsonl_atomic(run.path / "readout-held.jsonl", [asdict(g) for g in held])
    write_json_atomic(run.path / "teacher.json", teacher)
    return {"groups": str(run.path / "readout-groups.jsonl"), "held": str(run.path / "readout-held.jsonl"),
            "rows": len(groups), "held_groups": len(held), "teacher": teacher["weights"]}


def _read_groups(path: Path) -> list[Any]:
    from grouprank.jsonl import iter_jsonl
    from trainer.readout_data import ReadoutGroup

    out = []
    for n, obj in iter_jsonl(path):
        try:
            out.append(ReadoutGroup(**obj))
        except TypeError as exc:
            raise InputError(f"malformed read-out group ({exc})", source=path, line=n) from None
    return out


def _states(config: PipelineConfig, groups: list[Any]) -> list[Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.models import resolve_model, truncate_layers
    from reranker.readout import ReadoutLayout
    from trainer.readout_head import collect_states

    path = resolve_model(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    layout = ReadoutLayout(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], True)
    with model_loading():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = truncate_layers(model, config.readout.layers)
    layers = model.config.num_hidden_layers
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return collect_states(model.eval(), [layout.row(g.query, g.texts) for g in groups], pad)[layers]


def _write_model(folder: Path, config: PipelineConfig, head: dict[str, Any], stage: str,
                 report: dict[str, Any]) -> Path:
    from reranker.backends.torch_readout import save_head
    from trainer.files import write_json_atomic

    r = config.readout
    folder.mkdir(parents=True, exist_ok=True)
    save_head(folder, head)
    write_json_atomic(folder / "metadata.json", {
        "name": folder.name, "stage": stage, "objective": "readout", "base_model": config.base_model,
        "serving": {"decoding": "readout", "layers": r.layers, "query_after": True, "group_size": r.group_size,
                    "max_doc_chars": r.max_doc_chars, "likelihood_weight": 0.0},
        "readout": r.to_dict(), stage: report})
    return folder


def stage_sft(config: PipelineConfig, run: Any) -> dict[str, Any]:
    import torch

    from trainer.readout_head import HeadConfig, HeadData, train_head

    r = config.readout
    out = run.outputs("synth")
    groups, held = _read_groups(Path(out["groups"])), _read_groups(Path(out["held"]))
    states = _states(config, groups + held)
    torch.save({"states": states, "train": len(groups)}, run.path / "readout-states.pt")
    train = HeadData.from_groups(states[: len(groups)], [g.targets for g in groups])
    held_data = HeadData.from_groups(states[len(groups):], [g.targets for g in held]) if held else None
    head, result = train_head(train, HeadConfig(hidden=r.hidden, epochs=r.epochs, learning_rate=r.learning_rate,
                                                seed=r.seed), held_data)
    folder = _write_model(run.path / "sft-model", config, head, "sft", result["report"])
    report = result["report"]
    return {"model": str(folder), "best_epoch": report["best_epoch"], "best_held_ndcg": report["best_held_ndcg"]}


def stage_grpo(config: PipelineConfig, run: Any) -> dict[str, Any]:
    import torch

    from reranker.backends.torch_readout import load_head
    from trainer.readout_head import HeadConfig, HeadData, grpo_head

    r = config.readout
    sft = Path(run.outputs("sft")["model"])
    if r.grpo_epochs == 0:
        return {"model": str(sft), "steps": 0}
    cached = torch.load(run.path / "readout-states.pt")
    groups = _read_groups(Path(run.outputs("synth")["groups"]))
    train = HeadData.from_groups(cached["states"][: cached["train"]], [g.targets for g in groups])
    head, report = grpo_head(load_head(sft), train, HeadConfig(grpo_epochs=r.grpo_epochs, seed=r.seed))
    folder = _write_model(run.path / "grpo-model", config, head, "grpo", report)
    return {"model": str(folder), **report}

