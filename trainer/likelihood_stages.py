"""The pipeline's ``"likelihood"`` objective: the kind of model grouprank ships, trained on a user's judgments.

mine and synth are the slot objective's (groups mined through the serving tier, 0..10 targets from the
teachers). Then:

- sft (``stage_sft``): likelihood SFT (``trainer.likelihood_train``: ListNet between the documents'
  query likelihoods and the targets, plus the query's token loss after the best document) trains a LoRA
  adapter on the layers above ``sft.freeze_fraction``; ``sft.max_steps`` groups, one per step.
- grpo (``stage_grpo``): likelihood GRPO on that adapter, Plackett-Luce rankings sampled from the
  likelihoods, the heterogeneous reward, KL to the zero-shot model; ``grpo.max_steps`` groups.

Both write adapter folders whose metadata serves the likelihood alone (one pass); the gate then reads
both the slots and the likelihood and calibrates which to serve (``trainer.evaluation``).
"""

from __future__ import annotations

from typing import Any

from grouprank.errors import InputError
from trainer.config import SLOT_LORA_R, PipelineConfig


def training_groups(run: Any) -> list[Any]:
    """The synthesized rows as teacher groups (query, documents in prompt order, 0..10 targets), their
    documents taken from the mined train file."""
    from trainer.mining import read_mined
    from trainer.slot_dataset import TeacherGroup
    from trainer.synthesis import read_dataset

    mined = {m.qid: m for m in read_mined(run.outputs("mine")["train"])}
    groups = []
    for row in read_dataset(run.outputs("synth")["dataset"]):
        m = mined.get(str(row.get("qid")))
        if m is None or not isinstance(row.get("group"), int) or not 0 <= row["group"] < len(m.groups):
            raise InputError("names no mined group", source=run.outputs("synth")["dataset"], field="qid/group")
        docs = [m.candidates[i] for i in m.groups[row["group"]]]
        groups.append(TeacherGroup(m.qid, m.query, docs, list(row["targets"])))
    return groups


def _examples(config: PipelineConfig, run: Any, tokenizer: Any) -> list[Any]:
    from trainer.likelihood_train import encode_likelihood_groups

    examples = encode_likelihood_groups(training_groups(run), tokenizer, config.synthesis.max_doc_chars,
                                        max_docs=config.mining.group_size, seed=config.sft.seed)
    if not examples:
        raise InputError("no training group has two documents and a query", field="mining")
    return examples


def _serving(config: PipelineConfig) -> dict[str, Any]:
    return {"likelihood_weight": 1.0, "group_size": config.evaluation.group_size,
            "max_doc_chars": config.synthesis.max_doc_chars, "slot_feed": "fixed"}


def stage_sft(config: PipelineConfig, run: Any) -> dict[str, Any]:
    from grouprank.progress import progress_bar
    from reranker.models import resolve_model
    from trainer.likelihood_train import LikelihoodTrainConfig, train_likelihood_sft
    from trainer.modeldir import resolve_device
    from trainer.pipeline import _dataset_description, _load_slot_model, _save_adapter, _stage_config

    stage = config.sft
    model, tokenizer = _load_slot_model(config.base_model, resolve_device(stage.device))
    examples = _examples(config, run, tokenizer)
    train_config = _stage_config(
        LikelihoodTrainConfig, "sft", epochs=stage.max_steps / len(examples), learning_rate=stage.learning_rate,
        lora_r=stage.lora_r or SLOT_LORA_R, lora_alpha=stage.lora_alpha, freeze_fraction=stage.freeze_fraction,
        tau=stage.tau, warmup_ratio=stage.warmup_ratio, seed=stage.seed)
    with progress_bar("likelihood SFT steps", stage.max_steps) as bar:
        model, info = train_likelihood_sft(model, tokenizer, examples, train_config, lambda *_: bar.advance())
    out = run.path / "sft-model"
    _save_adapter(out, model, config.base_model, {
        "stage": "sft", "objective": "likelihood", "serving": _serving(config), "base_model": config.base_model,
        "base_path": resolve_model(config.base_model), **_dataset_description(run, len(examples)),
        "config": stage.to_dict(), "likelihood_config": train_config.to_dict(), "metrics": info["metrics"]})
    return {"model": str(out), "metrics": info["metrics"]}


def stage_grpo(config: PipelineConfig, run: Any) -> dict[str, Any]:
    from grouprank.progress import progress_bar
    from reranker.models import resolve_model
    from trainer.likelihood_train import LikelihoodGRPOConfig, train_likelihood_grpo
    from trainer.modeldir import read_metadata
    from trainer.pipeline import _dataset_description, _save_adapter, _sft_adapter_for_grpo, _stage_config

    stage = config.grpo
    sft = run.outputs("sft")["model"]
    if stage.max_steps == 0:
        return {"model": sft, "skipped": "max_steps is 0"}
    model, tokenizer = _sft_adapter_for_grpo(config, sft)
    examples = _examples(config, run, tokenizer)
    train_config = _stage_config(
        LikelihoodGRPOConfig, "grpo", epochs=stage.max_steps / len(examples), learning_rate=stage.learning_rate,
        num_samples=stage.num_generations, kl_beta=stage.kl_beta, seed=stage.seed, reward=stage.reward)
    with progress_bar("likelihood GRPO steps", stage.max_steps) as bar:
        model, info = train_likelihood_grpo(model, tokenizer, examples, train_config, lambda *_: bar.advance())
    parent = {k: v for k, v in (read_metadata(sft) or {}).items() if k != "train_log"}
    out = run.path / "grpo-model"
    _save_adapter(out, model, config.base_model, {
        "stage": "grpo", "objective": "likelihood", "serving": _serving(config), "base_model": config.base_model,
        "base_path": resolve_model(config.base_model), "parent": parent, **_dataset_description(run, len(examples)),
        "config": stage.to_dict(), "likelihood_config": train_config.to_dict(), "metrics": info["metrics"]})
    return {"model": str(out), "metrics": info["metrics"]}

