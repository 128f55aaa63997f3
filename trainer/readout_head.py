"""Training the read-out head (``reranker.backends.torch_readout.head_logits``) on a frozen decoder.

Every group is read once by the decoder cut to its served depth (``collect_states``): the hidden state at
each document's read-out position, with the query, the earlier documents and the document in view. The
head is then trained on those states alone, so thousands of groups and many epochs cost seconds, not the
hours LoRA needs on this CPU (docs/results-readout.md).

- **SFT** (``train_head``): ``listwise_kl`` (KL from the teacher's softmax over the group at temperature
  ``tau`` to the softmax of the head's logits) + ``rank_weight * ranknet`` on the logits +
  ``point_weight * point_bce`` (the score ``10 * sigmoid(z)`` against the 0..10 target, which keeps the
  GroupRank scale). Full-batch AdamW over padded groups; the epoch with the best held-out NDCG@10 is kept.
- **GRPO** (``grpo_head``): the read-out GRPO step (``trainer.readout_train.grpo_loss``: Plackett-Luce
  permutations, the heterogeneous reward, KL to the SFT head) applied to the head's logits.

The loss terms are pure functions over padded groups ``[G, n]`` with a ``mask``, tested by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from grouprank.errors import InputError

Step = Callable[[int, int], None]


@dataclass
class HeadConfig:
    """One head run. ``hidden`` 0: a linear head; otherwise one GELU layer of that width."""

    hidden: int = 0
    epochs: int = 300
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    tau: float = 2.0
    rank_weight: float = 1.0
    point_weight: float = 0.5
    grpo_epochs: int = 0
    grpo_lr: float = 3e-4
    grpo_samples: int = 8
    kl_beta: float = 0.05
    seed: int = 2026

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "grpo_epochs"):
            if getattr(self, name) < 0:
                raise InputError("must be >= 0", field=name)
        for name in ("learning_rate", "tau", "grpo_lr"):
            if getattr(self, name) <= 0:
                raise InputError("must be > 0", field=name)


@dataclass
class HeadData:
    """Padded groups: ``states`` [G, n, H], ``targets`` [G, n] (0..10), ``mask`` [G, n] (True = a document)."""

    states: Any
    targets: Any
    mask: Any

    @classmethod
    def from_groups(cls, states: Sequence[Any], targets: Sequence[Sequence[float]]) -> HeadData:
        import torch

        if len(states) != len(targets) or not states:
            raise InputError(f"{len(states)} groups of states for {len(targets)} of targets", field="states")
        n = max(len(t) for t in targets)
        width = states[0].shape[-1]
        s = torch.zeros(len(states), n, width)
        t = torch.zeros(len(states), n)
        m = torch.zeros(len(states), n, dtype=torch.bool)
        for g, (x, y) in enumerate(zip(states, targets, strict=True)):
            s[g, : len(y)] = x.float()
            t[g, : len(y)] = torch.tensor([float(v) for v in y])
            m[g, : len(y)] = True
        return cls(s, t, m)

    def __len__(self) -> int:
        return int(self.states.shape[0])


# -- losses (pure) ----------------------------------------------------------------------------------


def masked_kl(logits: Any, targets: Any, mask: Any, tau: float) -> Any:
    """Mean over groups of KL(softmax(targets / tau) || softmax(logits)), padding left out."""
    import torch

    neg = torch.finfo(logits.dtype).min
    p = torch.softmax((targets / tau).masked_fill(~mask, neg), -1)
    log_q = torch.log_softmax(logits.masked_fill(~mask, neg), -1)
    kl = (p * (torch.log(p + 1e-12) - log_q)).masked_fill(~mask, 0.0).sum(-1)
    return kl.mean()


def masked_ranknet(logits: Any, targets: Any, mask: Any, margin: float = 0.5) -> Any:
    """Mean ``log(1 + exp(-(z_i - z_j)))`` over the pairs of a group whose targets differ by more than
    ``margin`` (i the better one); 0 when there is none."""
    import torch

    pairs = ((targets[:, :, None] - targets[:, None, :]) > margin) & mask[:, :, None] & mask[:, None, :]
    if not bool(pairs.any()):
        return logits.sum() * 0.0
    diff = logits[:, :, None] - logits[:, None, :]
    return torch.nn.functional.softplus(-diff[pairs]).mean()


def point_bce(logits: Any, targets: Any, mask: Any) -> Any:
    """Binary cross-entropy of ``sigmoid(z)`` to ``target / 10`` over the documents."""
    import torch

    y = (targets / 10.0).clamp(0, 1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], y[mask])


def head_loss(logits: Any, data: HeadData, config: HeadConfig) -> tuple[Any, dict[str, float]]:
    kl = masked_kl(logits, data.targets, data.mask, config.tau)
    rn = masked_ranknet(logits, data.targets, data.mask)
    pt = point_bce(logits, data.targets, data.mask)
    loss = kl + config.rank_weight * rn + config.point_weight * pt
    return loss, {"loss": loss.item(), "kl": kl.item(), "ranknet": rn.item(), "point": pt.item()}


# -- states -------------------------------------------------------------------------------------------


def collect_states(model: Any, rows: Sequence[Any], pad_id: int, depths: Sequence[int] | None = None,
                   max_batch_tokens: int = 8192, on_step: Step | None = None) -> dict[int, list[Any]]:
    """The read-out states [n, H] of every row (``ReadoutRow``), keyed by depth: what ``model`` cut to
    that many layers would give as its last hidden state (the final norm applied), as serving reads it.
    ``depths`` defaults to the model's own depth; one pass serves every depth. Batched by length."""
    import torch

    from reranker.backends.batching import plan_batches
    from reranker.backends.torch_readout import readout_states, right_padded
    from trainer.slot_sft import inner_model

    decoder = inner_model(model)
    top = len(decoder.layers)
    depths = sorted(set(depths or [top]))
    if depths[0] < 1 or depths[-1] > top:
        raise InputError(f"depths must be within 1..{top}", field="depths")
    out: dict[int, list[Any]] = {d: [None] * len(rows) for d in depths}
    plan = plan_batches([len(r.ids) for r in rows], 0, max_batch_tokens, 16)
    device = next(model.parameters()).device
    done = 0
    for batch in plan:
        ids, mask = right_padded([rows[i].ids for i in batch], pad_id)
        picked = [rows[i] for i in batch]
        with torch.inference_mode():
            res = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                          use_cache=False)
            for d in depths:  # hidden_states[d] is layer d's raw output; the last one is already normed
                hidden = res.last_hidden_state if d == top else decoder.norm(res.hidden_states[d])
                states = readout_states(hidden, picked).float().cpu()
                k = 0
                for i in batch:
                    out[d][i] = states[k:k + rows[i].size].clone()
                    k += rows[i].size
        done += len(batch)
        if on_step:
            on_step(done, len(rows))
    return out


# -- training -----------------------------------------------------------------------------------------


def init_head(states: Any, mask: Any, hidden: int, seed: int) -> dict[str, Any]:
    """A zero-scoring head whose standardisation comes from the training states."""
    import torch

    x = states[mask]
    g = torch.Generator().manual_seed(seed)
    width = x.shape[-1]
    head = {"mean": x.mean(0), "scale": x.std(0) + 1e-4}
    if hidden:
        head["w1"] = torch.randn(width, hidden, generator=g) / math.sqrt(width)
        head["b1"] = torch.zeros(hidden)
        width = hidden
    head["w"] = torch.zeros(width)
    head["b"] = torch.zeros(())
    return head


def group_ndcg(logits: Any, grades: Any, mask: Any, k: int = 10) -> float:
    """Mean NDCG@k over groups of ranking by ``logits`` against ``grades`` (padding left out)."""
    import torch

    neg = torch.finfo(logits.dtype).min
    order = torch.argsort(logits.masked_fill(~mask, neg), -1, descending=True)[:, :k]
    gains = (2.0 ** grades.clamp(min=0) - 1).masked_fill(~mask, 0.0)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    dcg = (gains.gather(1, order) * discount[: order.shape[1]]).sum(-1)
    ideal = (torch.sort(gains, -1, descending=True).values[:, :k] * discount[: order.shape[1]]).sum(-1)
    keep = ideal > 0
    return float((dcg[keep] / ideal[keep]).mean()) if bool(keep.any()) else 0.0


def train_head(train: HeadData, config: HeadConfig, held: HeadData | None = None,
               on_step: Step | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """SFT of a head on ``train``; with ``held`` (targets as grades), the epoch with the best held-out
    NDCG@10 is returned. Returns ``(head, report)``."""
    import torch

    from reranker.backends.torch_readout import head_logits

    torch.manual_seed(config.seed)
    head = init_head(train.states, train.mask, config.hidden, config.seed)
    params = [head[k] for k in ("w1", "b1", "w", "b") if k in head]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    started = time.monotonic()
    log: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    for epoch in range(config.epochs):
        loss, parts = head_loss(head_logits(train.states, head), train, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if held is not None and (epoch % 5 == 4 or epoch == config.epochs - 1):
            with torch.no_grad():
                parts["held_ndcg"] = group_ndcg(head_logits(held.states, head), held.targets, held.mask)
            if best is None or parts["held_ndcg"] > best[0]:
                best = (parts["held_ndcg"], epoch + 1, {k: v.detach().clone() for k, v in head.items()})
        log.append(parts)
        if on_step:
            on_step(epoch + 1, config.epochs)
    final = {k: v.detach().clone() for k, v in head.items()}
    chosen = best[2] if best is not None else final
    report = {"epochs": config.epochs, "seconds": round(time.monotonic() - started, 1),
              "first": log[0] if log else {}, "last": log[-1] if log else {},
              "best_epoch": best[1] if best else config.epochs, "best_held_ndcg": best[0] if best else None}
    return chosen, {"report": report, "log": log}


def grpo_head(head: dict[str, Any], train: HeadData, config: HeadConfig,
              on_step: Step | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """GRPO of a trained head (``trainer.readout_train.grpo_loss`` per group), KL to the head it started
    from. Returns ``(head, report)``."""
    import torch

    from reranker.backends.torch_readout import head_logits
    from trainer.readout_train import ReadoutGRPOConfig, grpo_loss

    run = ReadoutGRPOConfig(num_samples=config.grpo_samples, kl_beta=config.kl_beta, seed=config.seed)
    head = {k: v.detach().clone() for k, v in head.items()}
    with torch.no_grad():
        reference = head_logits(train.states, head)
    params = [head[k] for k in ("w1", "b1", "w", "b") if k in head]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.grpo_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed + 101)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    rewards: list[float] = []
    started = time.monotonic()
    total = config.grpo_epochs * len(train)
    step = 0
    for _ in range(config.grpo_epochs):
        for g in order.tolist():
            n = int(train.mask[g].sum())
            z = head_logits(train.states[g, :n], head)
            loss, parts = grpo_loss(z, train.targets[g, :n].tolist(), run, generator, reference[g, :n])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rewards.append(parts["reward"])
            step += 1
            if on_step:
                on_step(step, total)
    tail = rewards[-len(train):]
    report = {"steps": step, "seconds": round(time.monotonic() - started, 1),
              "first_reward": round(sum(rewards[:50]) / max(len(rewards[:50]), 1), 4),
              "last_reward": round(sum(tail) / max(len(tail), 1), 4)}
    return {k: v.detach().clone() for k, v in head.items()}, report
