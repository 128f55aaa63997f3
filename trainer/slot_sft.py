"""SFT for slot decoding: a plain torch loop over ``SlotExample`` batches, fast on a CPU.

What makes it fast (measured by ``bench/train_speed.py``):

- bfloat16 compute where the hardware has it (``reranker.precision``); LoRA adapters stay float32, and a
  full fine-tune keeps float32 master weights under bf16 autocast (bf16 weights lose small updates);
- LoRA (peft) and/or the lower ``freeze_fraction`` of the layers frozen: no backward through them;
- length-bucketed batches (``slot_data.length_batches``): little padding;
- logits only where the loss needs them: the hidden states at the slots times the score tokens' rows
  of the output matrix, and the full vocabulary only at a "1" that may start "10".
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from grouprank.errors import InputError
from trainer.slot_data import SlotEncoder, SlotExample, length_batches
from trainer.slot_loss import expected_scores, listnet_loss, slot_log_probs, token_loss


@dataclass
class SFTRun:
    """What every SFT run takes (slot SFT here, likelihood SFT in ``trainer.likelihood_train``).
    ``lora_r`` 0 means full fine-tuning (of the layers not frozen)."""

    epochs: float = 1.0
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    freeze_fraction: float = 0.0
    token_weight: float = 1.0
    tau: float = 1.0
    warmup_ratio: float = 0.05
    dtype: str = "auto"
    seed: int = 0
    max_seconds: float | None = None

    def checks(self) -> dict[str, bool]:
        """Each field's range check (subclasses add theirs)."""
        return {
            "epochs": self.epochs > 0, "learning_rate": self.learning_rate > 0, "lora_r": self.lora_r >= 0,
            "freeze_fraction": 0.0 <= self.freeze_fraction < 1.0, "tau": self.tau > 0,
            "token_weight": self.token_weight >= 0,
        }

    def __post_init__(self) -> None:
        for name, ok in self.checks().items():
            if not ok:
                raise InputError(f"out of range: {getattr(self, name)!r}", field=name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlotTrainConfig(SFTRun):
    """One slot-SFT run."""

    batch_tokens: int = 4096
    grad_accumulation: int = 1
    rank_weight: float = 1.0

    def checks(self) -> dict[str, bool]:
        return {**super().checks(), "batch_tokens": self.batch_tokens >= 64,
                "grad_accumulation": self.grad_accumulation >= 1, "rank_weight": self.rank_weight >= 0}


def cosine_schedule(total: int, warmup_ratio: float, started: float,
                    max_seconds: float | None) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear warm-up, then cosine decay over the run: its ``total``
    steps, or its time budget if that ends first (so a time-bounded run still decays to zero)."""

    def lr_at(step: int) -> float:
        done = step / total
        if max_seconds:
            done = max(done, (time.monotonic() - started) / max_seconds)
        if done < warmup_ratio:
            return max(done / warmup_ratio, 1.0 / total)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (done - warmup_ratio) / (1 - warmup_ratio))))

    return lr_at


def layer_count(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def prepare_model(model: Any, config: SFTRun) -> Any:
    """Freeze the lower layers and add LoRA adapters (or unfreeze the rest for full fine-tuning)."""
    import torch

    n_layers = layer_count(model)
    frozen = int(n_layers * config.freeze_fraction)
    for p in model.parameters():
        p.requires_grad_(False)
    if config.lora_r > 0:
        from grouprank.errors import require

        peft = require("peft", "train")
        lora = peft.LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            layers_to_transform=list(range(frozen, n_layers)),
        )
        model = peft.get_peft_model(model, lora)
        for p in model.parameters():  # adapters in float32: bf16 adapters lose small updates
            if p.requires_grad:
                p.data = p.data.float()
        return model
    model.float()  # float32 master weights; compute runs under bf16 autocast
    for layer in inner_model(model).layers[frozen:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in inner_model(model).norm.parameters():
        p.requires_grad_(True)
    del torch
    return model


def inner_model(model: Any) -> Any:
    """The decoder stack (``LlamaModel``/``Qwen2Model``) of a causal LM, through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def output_matrix(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_output_embeddings().weight


def hidden_states(model: Any, encoder: SlotEncoder, examples: list[SlotExample], compute_dtype: Any) -> Any:
    """The last hidden states of a right-padded batch, computed under ``compute_dtype`` autocast (the
    LM head is applied by the caller, only where a loss needs logits)."""
    import torch

    from reranker.backends.transformers_backend import right_padded

    ids, mask = right_padded([e.input_ids for e in examples], encoder.tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        return inner_model(model)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state


def batch_loss(model: Any, encoder: SlotEncoder, examples: list[SlotExample], config: SlotTrainConfig,
               compute_dtype: Any) -> tuple[Any, dict[str, float]]:
    """The loss of one batch (right-padded; only slot positions produce logits)."""
    import torch

    hidden = hidden_states(model, encoder, examples, compute_dtype)
    device = hidden.device
    weight = output_matrix(model)
    tokens = encoder.tokens
    rows = torch.tensor([r for r, e in enumerate(examples) for _ in e.slots], device=device)
    cols = torch.tensor([c for e in examples for c in e.slots], device=device)
    at_slots = hidden[rows, cols].float()
    first = at_slots @ weight[tokens.first].float().T
    p10 = None
    if tokens.mode == "split":
        p10 = torch.tensor([[-1e4, 0.0]], device=device).repeat(len(cols), 1)
        ones = [(k, r, c) for k, (r, c) in enumerate(
            (r, c) for r, e in enumerate(examples) for c in e.ones) if c >= 0]
        if ones:
            k_idx = torch.tensor([k for k, _, _ in ones], device=device)
            h1 = hidden[torch.tensor([r for _, r, _ in ones]), torch.tensor([c for _, _, c in ones])].float()
            full = h1 @ weight.float().T
            zero = full[:, tokens.zero]
            rest = torch.logsumexp(full.index_fill(1, torch.tensor([tokens.zero], device=device), -1e4), dim=-1)
            p10 = p10.index_copy(0, k_idx, torch.stack([zero, rest], dim=-1))
    log_probs = slot_log_probs(first, p10)
    targets = torch.tensor([t for e in examples for t in e.targets], device=device)
    loss_token = token_loss(log_probs, targets)
    expected = expected_scores(log_probs)
    rank_terms, start = [], 0
    for e in examples:
        n = len(e.slots)
        if n > 1:
            rank_terms.append(listnet_loss(expected[start:start + n], targets[start:start + n], config.tau))
        start += n
    loss_rank = torch.stack(rank_terms).mean() if rank_terms else torch.zeros((), device=device)
    loss = config.token_weight * loss_token + config.rank_weight * loss_rank
    parts = {"loss": loss.item(), "token": loss_token.item(), "rank": loss_rank.item()}
    return loss, parts


def train_slot_sft(model: Any, tokenizer: Any, examples: list[SlotExample], config: SlotTrainConfig,
                   on_step: Callable[[int, int, dict[str, float]], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` (prepared here: frozen layers, LoRA) on ``examples``. Returns the trained model
    (still a peft model with LoRA) and metrics. ``on_step(step, total, logs)`` reports progress."""
    import torch

    from grouprank.precision import resolve_dtype

    if not examples:
        raise InputError("no training examples", field="examples")
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(config.dtype, device.type)
    if config.lora_r > 0:
        model.to(compute_dtype)
    model = prepare_model(model, config)
    model.train()
    encoder = SlotEncoder(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    lengths = [len(e.input_ids) for e in examples]
    epochs = max(1, math.ceil(config.epochs))
    plan: list[list[int]] = []
    for epoch in range(epochs):
        plan += length_batches(lengths, config.batch_tokens, config.seed + epoch)
    plan = plan[: max(1, round(len(length_batches(lengths, config.batch_tokens, 0)) * config.epochs))]
    total = math.ceil(len(plan) / config.grad_accumulation)
    started, tokens_seen = time.monotonic(), 0

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total, config.warmup_ratio, started, config.max_seconds))
    logs: list[dict[str, float]] = []
    step = 0
    for start in range(0, len(plan), config.grad_accumulation):
        chunk = plan[start:start + config.grad_accumulation]
        sums: dict[str, float] = {}
        for batch in chunk:
            loss, parts = batch_loss(model, encoder, [examples[i] for i in batch], config, compute_dtype)
            (loss / len(chunk)).backward()
            tokens_seen += sum(lengths[i] for i in batch)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / len(chunk)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        sums["lr"] = scheduler.get_last_lr()[0]
        logs.append(sums)
        if on_step:
            on_step(step, total, sums)
        if config.max_seconds is not None and time.monotonic() - started > config.max_seconds:
            break
    model.eval()
    elapsed = time.monotonic() - started
    metrics = {
        "steps": step, "planned_steps": total, "examples": len(examples), "seconds": round(elapsed, 1),
        "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
        "first": logs[0] if logs else {}, "last": mean_tail(logs),
    }
    return model, {"metrics": metrics, "log": logs}


def mean_tail(logs: list[dict[str, float]], n: int = 20) -> dict[str, float]:
    """The mean of each logged value over the last ``n`` steps."""
    tail = logs[-n:]
    return {k: round(sum(x[k] for x in tail) / len(tail), 4) for k in tail[0]} if tail else {}


def shuffled(items: list[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
