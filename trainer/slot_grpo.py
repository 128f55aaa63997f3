"""GRPO for slot decoding: group-relative policy optimisation over the score distributions.

The policy answers a group by drawing every document's score from its slot distribution (``slot_loss``),
read in one forward pass over the skeleton filled with the greedy scores, as serving reads them. For each
prompt ``num_samples`` answers are drawn; each gets the heterogeneous reward of ``trainer.rewards``
(recall, NDCG, RBO and distribution terms against the synthesized targets; the format term is always met
by construction). Advantages are the rewards normalised within the prompt's samples (GRPO), and the loss is

    L = -mean_i A_i * log pi(answer_i)  +  kl_beta * KL(pi || pi_ref)

per slot, with pi_ref the model before GRPO (the LoRA adapter switched off). All samples of a prompt share
its single forward and backward pass, which is what makes GRPO affordable on a CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from grouprank.errors import InputError
from trainer.config import RewardConfig
from trainer.rewards import scores_reward
from trainer.slot_data import SlotEncoder, SlotExample, length_batches
from trainer.slot_sft import hidden_states, output_matrix


@dataclass
class GRPORun:
    """What every GRPO run takes (slot GRPO here, likelihood GRPO in ``trainer.likelihood_train``)."""

    epochs: float = 1.0
    learning_rate: float = 5e-5
    num_samples: int = 8
    kl_beta: float = 0.02
    dtype: str = "auto"
    seed: int = 0
    max_seconds: float | None = None
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise InputError("GRPO needs at least 2 samples per prompt", field="num_samples")
        if self.learning_rate <= 0:
            raise InputError("must be > 0", field="learning_rate")
        if self.kl_beta < 0:
            raise InputError("must be >= 0", field="kl_beta")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlotGRPOConfig(GRPORun):
    """One slot-GRPO run on a model already prepared by slot SFT (LoRA adapters trainable)."""

    batch_tokens: int = 4096
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise InputError("must be > 0", field="temperature")


def group_advantages(rewards: Any) -> Any:
    """(r - mean) / (std + 1e-4) over the last dimension (the samples of one prompt)."""
    mean = rewards.mean(dim=-1, keepdim=True)
    return (rewards - mean) / (rewards.std(dim=-1, keepdim=True, unbiased=False) + 1e-4)


def slot_logits(model: Any, encoder: SlotEncoder, examples: list[SlotExample], compute_dtype: Any) -> list[Any]:
    """Per example, the [n_slots, 11] log-probabilities of the scores 0..10 ("10" split off "1" by the
    next token where it is two tokens, read with the "1" as the fed token's alternative)."""
    import torch

    from trainer.slot_loss import slot_log_probs

    hidden = hidden_states(model, encoder, examples, compute_dtype)
    device = hidden.device
    weight = output_matrix(model).float()
    out = []
    for r, e in enumerate(examples):
        first = hidden[r, e.slots].float() @ weight[encoder.tokens.first].T
        p10 = None
        if encoder.tokens.mode == "split":
            # P("0" | "1") needs a fed "1": every slot has one under the fixed feed; under the greedy
            # feed only where the target is 1 or 10, elsewhere the mass of "1" stays on 1.
            pairs = torch.tensor([[-1e4, 0.0]], device=device).repeat(len(e.slots), 1)
            for k, c in enumerate(e.ones):
                if c >= 0:
                    full = hidden[r, c].float() @ weight.T
                    rest = torch.logsumexp(torch.cat([full[: encoder.tokens.zero], full[encoder.tokens.zero + 1:]]), 0)
                    pairs[k] = torch.stack([full[encoder.tokens.zero], rest])
            p10 = pairs
        out.append(slot_log_probs(first, p10))
    return out


def train_slot_grpo(model: Any, tokenizer: Any, examples: list[SlotExample], config: SlotGRPOConfig,
                    on_step: Callable[[int, int, dict[str, float]], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """GRPO on ``examples`` (their ``targets`` are the reward's targets). ``model`` must have trainable
    LoRA adapters (a slot-SFT model); the adapters switched off give the reference policy."""
    import torch

    from grouprank.precision import resolve_dtype

    if not examples:
        raise InputError("no GRPO prompts", field="examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters (train it with slot SFT first)", field="model")
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(config.dtype, device.type)
    encoder = SlotEncoder(tokenizer)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    lengths = [len(e.input_ids) for e in examples]
    plan: list[list[int]] = []
    for epoch in range(max(1, math.ceil(config.epochs))):
        plan += length_batches(lengths, config.batch_tokens, config.seed + 101 + epoch)
    plan = plan[: max(1, round(len(length_batches(lengths, config.batch_tokens, 0)) * config.epochs))]
    has_reference = config.kl_beta > 0 and hasattr(model, "disable_adapter")
    model.train()
    logs: list[dict[str, float]] = []
    started = time.monotonic()
    for step, batch in enumerate(plan, 1):
        chosen = [examples[i] for i in batch]
        log_probs = slot_logits(model, encoder, chosen, compute_dtype)
        reference = None
        if has_reference:
            with torch.no_grad(), model.disable_adapter():
                reference = slot_logits(model, encoder, chosen, compute_dtype)
        losses, rewards_seen, kls = [], [], []
        for n, (e, lp) in enumerate(zip(chosen, log_probs, strict=True)):
            probs = (lp.detach() / config.temperature).softmax(-1)
            draws = torch.multinomial(probs, config.num_samples, replacement=True, generator=generator).T  # [S, n]
            targets = [round(t) for t in e.targets]
            rewards = torch.tensor([scores_reward([float(x) for x in d], targets, config.reward)
                                    for d in draws.tolist()])
            advantages = group_advantages(rewards)
            logp = lp.gather(1, draws.T.to(lp.device)).sum(0)  # [S]: log pi of each drawn answer
            loss = -(advantages.to(lp.device) * logp).mean() / len(e.slots)
            if reference is not None:
                kl = (lp.exp() * (lp - reference[n])).sum(-1).mean()
                loss = loss + config.kl_beta * kl
                kls.append(kl.item())
            losses.append(loss)
            rewards_seen.append(rewards.mean().item())
        total = torch.stack(losses).mean()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        entry = {"loss": total.item(), "reward": sum(rewards_seen) / len(rewards_seen),
                 "kl": sum(kls) / len(kls) if kls else 0.0}
        logs.append(entry)
        if on_step:
            on_step(step, len(plan), entry)
        if config.max_seconds is not None and time.monotonic() - started > config.max_seconds:
            break
    model.eval()
    tail = logs[-10:]
    metrics = {"steps": len(logs), "planned_steps": len(plan), "seconds": round(time.monotonic() - started, 1),
               "first_reward": logs[0]["reward"] if logs else None,
               "last_reward": sum(x["reward"] for x in tail) / len(tail) if tail else None}
    return model, {"metrics": metrics, "log": logs}
