"""Training the inline read-out (``reranker.readout``): listwise distillation, then GRPO.

A training example is one group as serving reads it (``ReadoutLayout.row``) with the teacher's 0..10
targets. One forward pass gives every document's score distribution and expected score
(``reranker.backends.torch_readout.readout_tensors``, the function serving calls), so each pass trains
on all the group's targets at once.

- **SFT** (``train_readout_sft``): ``listwise_kl`` (KL from the teacher's softmax over the group to the
  student's, both on the 0..10 scale at temperature ``tau``) + ``rank_weight * ranknet`` (pairwise
  logistic loss on expected scores) + ``point_weight * point_ce`` (cross-entropy of each distribution to
  its target split over the two nearest scores, which keeps the 0-10 meaning).
- **GRPO** (``train_readout_grpo``): permutations sampled Plackett-Luce from ``scale * expected`` (a
  Gumbel-perturbed sort), each rewarded by ``trainer.rewards.scores_reward`` against the targets;
  advantages normalised within the group (``group_advantages``); loss
  ``-mean(A * log PL(permutation)) / n + kl_beta * KL(softmax(z) || softmax(z_sft))`` with ``z_sft`` the
  model as SFT left it (its adapter weights snapshotted before GRPO).

``truncate_layers`` keeps the lower layers of the base model: the read-out is trained on top of them and
the model is served with the same depth (``serving.layers`` in its metadata).
The loss terms are pure functions, tested by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from grouprank.errors import InputError
from trainer.likelihood_train import _plan, _record, plackett_luce_log_prob
from trainer.rewards import scores_reward
from trainer.slot_grpo import GRPORun, group_advantages
from trainer.slot_sft import SFTRun, cosine_schedule, inner_model, mean_tail, output_matrix, prepare_model

Step = Callable[[int, int, dict[str, float]], None]


@dataclass
class ReadoutExample:
    """One group: its read-out row and the documents' 0..10 teacher targets."""

    row: Any  # reranker.readout.ReadoutRow
    targets: list[float]

    @property
    def tokens(self) -> int:
        return len(self.row.ids)


def encode_examples(groups: Sequence[Any], layout: Any) -> list[ReadoutExample]:
    """Examples from ``ReadoutGroup``s (query, texts already cut as serving cuts them, targets)."""
    return [ReadoutExample(layout.row(g.query, g.texts), [float(t) for t in g.targets]) for g in groups
            if len(g.texts) >= 2]


# -- losses (pure) ----------------------------------------------------------------------------------


def listwise_kl(expected: Any, targets: Any, tau: float) -> Any:
    """KL(softmax(targets / tau) || softmax(expected / tau)) over one group."""
    import torch

    p = torch.softmax(targets / tau, -1)
    return (p * (torch.log(p + 1e-12) - torch.log_softmax(expected / tau, -1))).sum()


def ranknet(expected: Any, targets: Any, margin: float = 0.5) -> Any:
    """Mean ``log(1 + exp(-(s_i - s_j)))`` over the pairs whose targets differ by more than ``margin``
    (i the better one); 0 when there is none."""
    import torch

    better = (targets[:, None] - targets[None, :]) > margin
    if not bool(better.any()):
        return expected.sum() * 0.0
    diff = expected[:, None] - expected[None, :]
    return torch.nn.functional.softplus(-diff[better]).mean()


def point_ce(distributions: Any, targets: Any) -> Any:
    """Mean cross-entropy of each [11] score distribution to its target split between the two nearest
    integer scores (7.3 -> 0.7 on 7, 0.3 on 8)."""
    import torch

    t = targets.clamp(0, 10)
    low = t.floor().long()
    high = (low + 1).clamp(max=10)
    frac = t - low.float()
    soft = torch.zeros_like(distributions)
    soft.scatter_add_(1, low[:, None], (1 - frac)[:, None])
    soft.scatter_add_(1, high[:, None], frac[:, None])
    return -(soft * torch.log(distributions + 1e-9)).sum(-1).mean()


def ranks_as_scores(order: Sequence[int]) -> list[float]:
    """A permutation (best first) as scores: the first of n gets n, the last 1."""
    n = len(order)
    scores = [0.0] * n
    for rank, doc in enumerate(order):
        scores[doc] = float(n - rank)
    return scores


# -- training -----------------------------------------------------------------------------------------


@dataclass
class ReadoutTrainConfig(SFTRun):
    """One read-out SFT run: LoRA on the layers above ``freeze_fraction`` of the (truncated) model."""

    learning_rate: float = 2e-4
    tau: float = 2.0
    rank_weight: float = 1.0
    point_weight: float = 0.3
    token_weight: float = 0.0

    def checks(self) -> dict[str, bool]:
        return {**super().checks(), "rank_weight": self.rank_weight >= 0, "point_weight": self.point_weight >= 0}


@dataclass
class ReadoutGRPOConfig(GRPORun):
    """One read-out GRPO run on a model with trainable LoRA adapters (after read-out SFT)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0:
            raise InputError("must be > 0", field="scale")


def forward(model: Any, examples: Sequence[ReadoutExample], tokens: Any, compute_dtype: Any,
            pad_id: int) -> Any:
    """``ReadoutTensors`` of a batch of examples (right-padded, with gradients)."""
    import torch

    from reranker.backends.torch_readout import readout_tensors, right_padded

    rows = [e.row for e in examples]
    ids, mask = right_padded([r.ids for r in rows], pad_id)
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        hidden = inner_model(model)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return readout_tensors(hidden, output_matrix(model), rows, tokens, likelihood=False)


def sft_loss(out: Any, examples: Sequence[ReadoutExample], config: ReadoutTrainConfig) -> tuple[Any, dict[str, float]]:
    """The SFT loss of a batch's read-outs and its parts."""
    import torch

    targets = torch.tensor([t for e in examples for t in e.targets], device=out.expected.device)
    kl, rn, start = [], [], 0
    for e in examples:
        n = len(e.targets)
        kl.append(listwise_kl(out.expected[start:start + n], targets[start:start + n], config.tau))
        rn.append(ranknet(out.expected[start:start + n], targets[start:start + n]))
        start += n
    kl_t, rn_t = torch.stack(kl).mean(), torch.stack(rn).mean()
    pt = point_ce(out.distributions, targets)
    loss = kl_t + config.rank_weight * rn_t + config.point_weight * pt
    return loss, {"loss": loss.item(), "kl": kl_t.item(), "ranknet": rn_t.item(), "point": pt.item()}


def train_readout_sft(model: Any, tokens: Any, pad_id: int, examples: list[ReadoutExample],
                      config: ReadoutTrainConfig, on_step: Step | None = None) -> tuple[Any, dict[str, Any]]:
    """Prepare ``model`` (LoRA, frozen lower layers) and train its read-out on ``examples``, one group per
    step; returns the peft model and metrics."""
    import torch

    from grouprank.precision import resolve_dtype

    if not examples:
        raise InputError("no training examples", field="examples")
    torch.manual_seed(config.seed)
    compute_dtype = resolve_dtype(config.dtype, next(model.parameters()).device.type)
    model = prepare_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    plan = _plan(len(examples), config.epochs, config.seed)
    started, seen = time.monotonic(), 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(len(plan), config.warmup_ratio, started, config.max_seconds))
    logs: list[dict[str, float]] = []
    for i in plan:
        batch = [examples[i]]
        loss, parts = sft_loss(forward(model, batch, tokens, compute_dtype, pad_id), batch, config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += examples[i].tokens
        parts["lr"] = scheduler.get_last_lr()[0]
        if not _record(logs, parts, on_step, len(plan), started, config.max_seconds):
            break
    model.eval()
    elapsed = time.monotonic() - started
    return model, {"visited": plan[:len(logs)],
                   "metrics": {"steps": len(logs), "planned_steps": len(plan), "examples": len(examples),
                               "seconds": round(elapsed, 1), "tokens_per_s": round(seen / max(elapsed, 1e-9), 1),
                               "first": logs[0] if logs else {}, "last": mean_tail(logs)}, "log": logs}


def grpo_loss(z: Any, targets: Sequence[float], config: ReadoutGRPOConfig, generator: Any,
              reference: Any | None = None) -> tuple[Any, dict[str, float]]:
    """One group's GRPO loss from its policy logits ``z`` [n] (and the reference logits)."""
    import torch

    n = len(targets)
    gumbel = -torch.log(-torch.log(torch.rand((config.num_samples, n), generator=generator).clamp(1e-9, 1 - 1e-9)))
    orders = torch.argsort(z.detach().float().cpu()[None, :] + gumbel, dim=1, descending=True)
    wanted = [round(t) for t in targets]
    rewards = torch.tensor([scores_reward(ranks_as_scores(o), wanted, config.reward) for o in orders.tolist()])
    advantages = group_advantages(rewards).to(z.device)
    logp = torch.stack([plackett_luce_log_prob(z, o.to(z.device)) for o in orders])
    loss = -(advantages * logp).mean() / n
    kl_value = 0.0
    if reference is not None and config.kl_beta > 0:
        log_p, log_ref = torch.log_softmax(z, -1), torch.log_softmax(reference, -1)
        kl = (log_p.exp() * (log_p - log_ref)).sum()
        loss = loss + config.kl_beta * kl
        kl_value = kl.item()
    return loss, {"loss": loss.item(), "reward": float(rewards.mean()), "kl": kl_value}


def train_readout_grpo(model: Any, tokens: Any, pad_id: int, examples: list[ReadoutExample],
                       config: ReadoutGRPOConfig, on_step: Step | None = None) -> tuple[Any, dict[str, Any]]:
    """GRPO over Plackett-Luce rankings of the read-out (see the module docstring). ``model`` must have
    trainable LoRA adapters; their values at the start are the KL reference."""
    import torch

    from grouprank.precision import resolve_dtype

    if not examples:
        raise InputError("no GRPO groups", field="examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters (run read-out SFT first)", field="model")
    generator = torch.Generator().manual_seed(config.seed)
    compute_dtype = resolve_dtype(config.dtype, next(model.parameters()).device.type)
    snapshot = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    plan = _plan(len(examples), config.epochs, config.seed + 101)
    model.train()
    logs: list[dict[str, float]] = []
    started = time.monotonic()
    for i in plan:
        batch = [examples[i]]
        reference = None
        if config.kl_beta > 0:
            current = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, s in zip(params, snapshot, strict=True):
                    p.copy_(s)
                reference = config.scale * forward(model, batch, tokens, compute_dtype, pad_id).expected
                for p, c in zip(params, current, strict=True):
                    p.copy_(c)
        z = config.scale * forward(model, batch, tokens, compute_dtype, pad_id).expected
        loss, parts = grpo_loss(z, examples[i].targets, config, generator, reference)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not _record(logs, parts, on_step, len(plan), started, config.max_seconds):
            break
    model.eval()
    tail = logs[-20:]
    return model, {"metrics": {"steps": len(logs), "planned_steps": len(plan),
                               "seconds": round(time.monotonic() - started, 1),
                               "first_reward": logs[0]["reward"] if logs else None,
                               "last_reward": round(sum(x["reward"] for x in tail) / len(tail), 4) if tail else None},
                   "log": logs}
