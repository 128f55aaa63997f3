"""Supervised fine-tuning with trl's ``SFTTrainer`` on the synthesized conversations.

The dataset is in trl's conversational prompt-completion form (``prompt``: system + user messages,
``completion``: the assistant's target JSON), so with ``completion_only_loss`` the loss covers the answer
tokens only. Full fine-tuning, or LoRA (``lora_r > 0``) merged into the saved weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grouprank.errors import require
from trainer.config import SFTStageConfig, _TrainStage
from trainer.files import file_sha256, remove_dir
from trainer.modeldir import base_description, load_model, resolve_device, save_model_dir
from trainer.synthesis import read_dataset


def common_args(config: _TrainStage, device: str, work: Path) -> dict[str, Any]:
    """TrainingArguments both stages share: no checkpoints (the model directory is the output), no
    reporting, our own progress bar."""
    from grouprank.precision import bf16_supported

    bf16 = bf16_supported(device)  # CUDA with bf16, or a CPU with AVX512-BF16/AMX: 3-4x faster than float32
    return {
        "output_dir": str(work),
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accumulation,
        "use_cpu": device == "cpu",
        "bf16": bf16,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": max(1, config.max_steps // 20),
        "disable_tqdm": True,
        "seed": config.seed,
        "dataloader_num_workers": 0,
    }


def lora_config(config: _TrainStage) -> Any:
    """peft's LoraConfig, or None for full fine-tuning (``lora_r`` 0 or unset)."""
    if not config.lora_r:
        return None
    peft = require("peft", "train")
    return peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                           lora_dropout=0.0, task_type="CAUSAL_LM")


def finished_model(trainer: Any) -> Any:
    """The trained model, with LoRA adapters merged in."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def train_metrics(output: Any, logs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """``train_loss``, runtime and the first/last logged value of each of ``keys``."""
    metrics: dict[str, Any] = {"steps": output.global_step, "train_loss": output.training_loss,
                               "train_runtime_s": output.metrics.get("train_runtime")}
    for key in keys:
        values = [log[key] for log in logs if key in log]
        if values:
            metrics[f"first_{key}"], metrics[f"last_{key}"] = values[0], values[-1]
    return metrics


def sft_trainer(rows: list[dict[str, Any]], base_model: str, config: SFTStageConfig, work: Path,
                callbacks: list[Any] | None = None) -> Any:
    """A ready ``trl.SFTTrainer`` for the dataset rows (its ``train_dataset`` holds the tokenized examples,
    with ``labels`` -100 outside the answer)."""
    trl = require("trl", "train")
    datasets = require("datasets", "train")
    from transformers import PrinterCallback

    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    device = resolve_device(config.device)
    model, tokenizer = load_model(base_model, device)
    args = trl.SFTConfig(
        **common_args(config, device, work),
        completion_only_loss=True,
        max_length=config.max_length,
        warmup_steps=int(config.warmup_ratio * config.max_steps),
        lr_scheduler_type="linear",
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora_config(config), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_sft(data: str | Path, base_model: str, out_dir: str | Path, config: SFTStageConfig) -> dict[str, Any]:
    """Fine-tune ``base_model`` on the dataset at ``data``; write the model directory ``out_dir`` and return
    its metadata."""
    from trainer.hf_progress import ProgressCallback

    rows = read_dataset(data)
    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}.work"
    progress = ProgressCallback("SFT steps")
    trainer = sft_trainer(rows, base_model, config, work, [progress])
    try:
        output = trainer.train()
    finally:
        progress.close()
    metadata = {
        "stage": "sft",
        **base_description(base_model),
        "data": str(data),
        "data_sha256": file_sha256(data),
        "data_rows": len(rows),
        "config": config.to_dict(),
        "metrics": train_metrics(output, progress.logs, ("loss", "mean_token_accuracy")),
        "train_log": progress.logs,
    }
    save_model_dir(out_dir, finished_model(trainer), trainer.processing_class, metadata)
    remove_dir(work)
    return metadata
