"""Training the query likelihood (``reranker.likelihood``): SFT with a ranking loss, then GRPO.

A training group is a query and documents with 0..10 teacher targets (``trainer.slot_dataset``). The
model's score of a document is the mean log-probability of the query after the document's likelihood
prompt, computed with gradients for every document of the group (one padded batch per group).

- **SFT** (``train_likelihood_sft``): ListNet between ``softmax(scale * scores)`` and
  ``softmax(targets / tau)``, plus the token loss (negative log-likelihood) of the query after the
  group's best document, which keeps the model a good question writer.
- **GRPO** (``train_likelihood_grpo``): the policy ranks a group by sampling a permutation from the
  Plackett-Luce distribution of ``scale * scores`` (Gumbel-perturbed sort); each of ``num_samples``
  permutations gets the heterogeneous reward of ``trainer.rewards`` (recall, NDCG, RBO, distribution)
  against the targets, advantages are normalised within the group, and the loss is
  ``-mean(A * log PL(permutation)) + kl_beta * KL(softmax(z) || softmax(z_ref))``, with the reference
  the model with its LoRA adapter switched off (the zero-shot model, whose query likelihood already
  ranks well).

LoRA and frozen lower layers come from ``trainer.slot_sft.prepare_model``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from grouprank.errors import InputError
from trainer.rewards import scores_reward
from trainer.slot_grpo import GRPORun, group_advantages
from trainer.slot_sft import SFTRun, cosine_schedule, inner_model, mean_tail, output_matrix, prepare_model


@dataclass
class LikelihoodExample:
    """One group: each document's prompt tokens, the query's tokens, and the documents' 0..10 targets."""

    prompts: list[list[int]]
    query: list[int]
    targets: list[float]

    @property
    def tokens(self) -> int:
        return sum(len(p) + len(self.query) for p in self.prompts)


def encode_likelihood_groups(groups: Sequence[Any], tokenizer: Any, max_doc_chars: int,
                             max_docs: int = 8, seed: int = 0) -> list[LikelihoodExample]:
    """Examples from teacher groups (``TeacherGroup``: query, docs, targets), documents cut to
    ``max_doc_chars`` as when serving. A group larger than ``max_docs`` keeps its best document and a
    random sample of the rest."""
    from reranker.likelihood import likelihood_prompt, query_continuation
    from reranker.prompts import Truncator, document_text
    from reranker.types import Candidate

    rng = random.Random(seed)
    cut = Truncator(max_chars=max_doc_chars)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for g in groups:
        order = list(range(len(g.docs)))
        if len(order) > max_docs:
            best = max(order, key=lambda i: g.targets[i])
            rest = [i for i in order if i != best]
            order = sorted([best, *rng.sample(rest, max_docs - 1)])
        texts = [cut(document_text(Candidate(id=g.docs[i].id, text=g.docs[i].text, title=g.docs[i].title)))[0]
                 for i in order]
        query = ids(query_continuation(g.query))
        if len(order) < 2 or not query:
            continue
        out.append(LikelihoodExample([ids(likelihood_prompt(t)) for t in texts], query,
                                     [float(g.targets[i]) for i in order]))
    return out


def group_scores(model: Any, example: LikelihoodExample, pad_id: int, compute_dtype: Any) -> tuple[Any, Any]:
    """(mean log-probability of the query per document [n], the token log-probabilities [n, q])."""
    import torch

    from reranker.backends.transformers_backend import right_padded

    rows = [p + example.query for p in example.prompts]
    ids, mask = right_padded(rows, pad_id)
    device = next(model.parameters()).device
    q = len(example.query)
    r_idx = torch.tensor([r for r in range(len(rows)) for _ in range(q)], device=device)
    c_idx = torch.tensor([len(p) - 1 + k for p in example.prompts for k in range(q)], device=device)
    with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        hidden = inner_model(model)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    logits = hidden[r_idx, c_idx].float() @ output_matrix(model).float().T
    target = torch.tensor(example.query * len(rows), device=device)
    token_lp = (logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)).view(len(rows), q)
    return token_lp.mean(-1), token_lp


def listnet(student_logits: Any, targets: Any, tau: float) -> Any:
    """Cross-entropy between ``softmax(targets / tau)`` and ``softmax(student_logits)``."""
    import torch

    return -(torch.softmax(targets / tau, -1) * torch.log_softmax(student_logits, -1)).sum()


def plackett_luce_log_prob(logits: Any, order: Any) -> Any:
    """log P(order) under Plackett-Luce with ``logits`` (1-D): sum over positions of
    ``z[order[i]] - logsumexp(z[order[i:]])``."""
    import torch

    z = logits[order]
    tail = torch.logcumsumexp(z.flip(0), 0).flip(0)
    return (z - tail).sum()


@dataclass
class LikelihoodTrainConfig(SFTRun):
    """One likelihood-SFT run (LoRA on the layers above ``freeze_fraction``)."""

    learning_rate: float = 1e-4
    freeze_fraction: float = 0.33
    tau: float = 3.0
    token_weight: float = 0.3
    scale: float = 2.0

    def checks(self) -> dict[str, bool]:
        return {**super().checks(), "scale": self.scale > 0}


@dataclass
class LikelihoodGRPOConfig(GRPORun):
    """One likelihood-GRPO run on a model with trainable LoRA adapters (after likelihood SFT)."""

    kl_beta: float = 0.05
    scale: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0:
            raise InputError("must be > 0", field="scale")


Step = Callable[[int, int, dict[str, float]], None]


def _plan(n: int, epochs: float, seed: int) -> list[int]:
    order: list[int] = []
    for epoch in range(max(1, math.ceil(epochs))):
        block = list(range(n))
        random.Random(seed + epoch).shuffle(block)
        order += block
    return order[: max(1, round(n * epochs))]


def train_likelihood_sft(model: Any, tokenizer: Any, examples: list[LikelihoodExample],
                         config: LikelihoodTrainConfig, on_step: Step | None = None) -> tuple[Any, dict[str, Any]]:
    """Prepare ``model`` (LoRA, frozen lower layers) and train it on ``examples``; returns the peft model
    and metrics."""
    import torch

    from grouprank.precision import resolve_dtype

    if not examples:
        raise InputError("no training examples", field="examples")
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(config.dtype, device.type)
    model.to(compute_dtype)
    model = prepare_model(model, config)
    model.train()
    pad = tokenizer.pad_token_id or 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    plan = _plan(len(examples), config.epochs, config.seed)
    started, tokens = time.monotonic(), 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(len(plan), config.warmup_ratio, started, config.max_seconds))
    logs: list[dict[str, float]] = []
    for i in plan:
        e = examples[i]
        scores, token_lp = group_scores(model, e, pad, compute_dtype)
        targets = torch.tensor(e.targets, device=scores.device)
        rank = listnet(config.scale * scores, targets, config.tau)
        best = int(targets.argmax())
        token = -token_lp[best].mean()
        loss = rank + config.token_weight * token
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += e.tokens
        entry = {"loss": loss.item(), "rank": rank.item(), "token": token.item(), "lr": scheduler.get_last_lr()[0]}
        if not _record(logs, entry, on_step, len(plan), started, config.max_seconds):
            break
    model.eval()
    elapsed = time.monotonic() - started
    return model, {"metrics": {"steps": len(logs), "planned_steps": len(plan), "seconds": round(elapsed, 1),
                               "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                               "first": logs[0] if logs else {}, "last": mean_tail(logs)}, "log": logs}


def train_likelihood_grpo(model: Any, tokenizer: Any, examples: list[LikelihoodExample],
                          config: LikelihoodGRPOConfig, on_step: Step | None = None) -> tuple[Any, dict[str, Any]]:
    """GRPO over Plackett-Luce rankings of the query likelihood (see the module docstring). ``model``
    must have trainable LoRA adapters; switched off, they give the reference."""
    import torch

    from grouprank.precision import resolve_dtype

    if not examples:
        raise InputError("no GRPO groups", field="examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters (run likelihood SFT first)", field="model")
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(config.dtype, device.type)
    pad = tokenizer.pad_token_id or 0
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    plan = _plan(len(examples), config.epochs, config.seed + 101)
    reference = config.kl_beta > 0 and hasattr(model, "disable_adapter")
    model.train()
    logs: list[dict[str, float]] = []
    started = time.monotonic()
    for i in plan:
        e = examples[i]
        scores, _ = group_scores(model, e, pad, compute_dtype)
        z = config.scale * scores
        gumbel = -torch.log(-torch.log(torch.rand((config.num_samples, len(e.prompts)), generator=generator)))
        orders = torch.argsort(z.detach().cpu()[None, :] + gumbel, dim=1, descending=True)
        targets = [round(t) for t in e.targets]
        n = len(e.prompts)
        rewards = []
        for order in orders.tolist():
            predicted = [0.0] * n
            for rank, doc in enumerate(order):
                predicted[doc] = float(n - rank)
            rewards.append(scores_reward(predicted, targets, config.reward))
        reward_t = torch.tensor(rewards)
        advantages = group_advantages(reward_t)
        logp = torch.stack([plackett_luce_log_prob(z, o.to(z.device)) for o in orders])
        loss = -(advantages.to(z.device) * logp).mean() / n
        kl_value = 0.0
        if reference:
            with torch.no_grad(), model.disable_adapter():
                ref_scores, _ = group_scores(model, e, pad, compute_dtype)
            log_p, log_ref = torch.log_softmax(z, -1), torch.log_softmax(config.scale * ref_scores, -1)
            kl = (log_p.exp() * (log_p - log_ref)).sum()
            loss = loss + config.kl_beta * kl
            kl_value = kl.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        entry = {"loss": loss.item(), "reward": float(reward_t.mean()), "kl": kl_value}
        if not _record(logs, entry, on_step, len(plan), started, config.max_seconds):
            break
    model.eval()
    tail = logs[-20:]
    return model, {"metrics": {"steps": len(logs), "planned_steps": len(plan),
                               "seconds": round(time.monotonic() - started, 1),
                               "first_reward": logs[0]["reward"] if logs else None,
                               "last_reward": sum(x["reward"] for x in tail) / len(tail) if tail else None},
                   "log": logs}


def _record(logs: list[dict[str, float]], entry: dict[str, float], on_step: Step | None, total: int,
            started: float, max_seconds: float | None) -> bool:
    """Log one step and report it; False once the time budget is spent."""
    logs.append(entry)
    if on_step:
        on_step(len(logs), total, entry)
    return max_seconds is None or time.monotonic() - started <= max_seconds
