"""GRPO with trl's ``GRPOTrainer`` and the heterogeneous reward of ``trainer.rewards``.

Each prompt is a synthesized group; trl samples ``num_generations`` answers per prompt (its own transformers
generation on CPU, vLLM with ``use_vllm`` on a GPU), scores them with the reward terms (weighted by
``reward_weights``) and takes a policy step on the group-normalised advantages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grouprank.errors import require
from trainer.config import GRPOStageConfig
from trainer.files import file_sha256, remove_dir
from trainer.modeldir import base_description, load_model, resolve_device, save_model_dir
from trainer.rewards import trl_reward_functions
from trainer.sft import common_args, finished_model, lora_config, train_metrics
from trainer.synthesis import read_dataset


def train_grpo(data: str | Path, base_model: str, out_dir: str | Path, config: GRPOStageConfig) -> dict[str, Any]:
    """Train ``base_model`` (usually the SFT model directory) with GRPO on the prompts and targets at
    ``data``; write the model directory ``out_dir`` and return its metadata."""
    trl = require("trl", "train")
    datasets = require("datasets", "train")
    from transformers import PrinterCallback

    from trainer.hf_progress import ProgressCallback

    rows = read_dataset(data)
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "targets": r["targets"]} for r in rows])
    device = resolve_device(config.device)
    model, tokenizer = load_model(base_model, device)
    tokenizer.padding_side = "left"
    functions, weights = trl_reward_functions(config.reward)
    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}.work"
    args = trl.GRPOConfig(
        **common_args(config, device, work),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.kl_beta,
        reward_weights=weights,
        use_vllm=config.use_vllm,
        vllm_mode="colocate",
        shuffle_dataset=True,
    )
    progress = ProgressCallback("GRPO steps")
    trainer = trl.GRPOTrainer(model=model, reward_funcs=functions, args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=lora_config(config), callbacks=[progress])
    trainer.remove_callback(PrinterCallback)
    try:
        output = trainer.train()
    finally:
        progress.close()
    keys = ("reward", "reward_std", *(f"rewards/{f.__name__}/mean" for f in functions), "completions/mean_length")
    metadata = {
        "stage": "grpo",
        **base_description(base_model),
        "data": str(data),
        "data_sha256": file_sha256(data),
        "data_rows": len(rows),
        "config": config.to_dict(),
        "metrics": train_metrics(output, progress.logs, keys),
        "train_log": progress.logs,
    }
    tokenizer.padding_side = "right"
    save_model_dir(out_dir, finished_model(trainer), tokenizer, metadata)
    remove_dir(work)
    return metadata
