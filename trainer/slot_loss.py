"""The slot-decoding training loss, as pure tensor functions.

At each slot the model's distribution over the scores 0..10 is read as when serving (the score tokens'
probabilities renormalised; "10" split off "1" by the next token, ``reranker.slots``). Two terms:

- ``token``: cross-entropy of the rounded teacher score under that distribution (what SFT teaches);
- ``rank``: ListNet within each group, the cross-entropy between ``softmax(targets / tau)`` and
  ``softmax(expected_scores / tau)``. It rewards ordering the documents of one group as the teacher does,
  which a constant per-position answer cannot do.
"""

from __future__ import annotations

from typing import Any


def slot_log_probs(first_logits: Any, p10_logit: Any | None = None) -> Any:
    """Log P(score = s), s = 0..10, from ``first_logits`` [..., 11] (single mode) or [..., 10] plus the
    logit pair ``p10_logit`` [..., 2] = (logit of "0", logsumexp of every other token) after "1" (split
    mode). In split mode without ``p10_logit`` the "1" mass stays on score 1 and 10 gets none."""
    import torch

    first = torch.log_softmax(first_logits.float(), dim=-1)
    if first.shape[-1] == 11:
        return first
    if p10_logit is None:
        q = torch.full_like(first[..., :1], -1e4)
        not_q = torch.zeros_like(q)
    else:
        both = torch.log_softmax(p10_logit.float(), dim=-1)
        q, not_q = both[..., :1], both[..., 1:]
    one = first[..., 1:2]
    return torch.cat([first[..., :1], one + not_q, first[..., 2:], one + q], dim=-1)


def expected_scores(log_probs: Any) -> Any:
    """Sum of s * P(s) over the last dimension (0..10)."""
    import torch

    values = torch.arange(11, dtype=log_probs.dtype, device=log_probs.device)
    return (log_probs.exp() * values).sum(dim=-1)


def token_loss(log_probs: Any, targets: Any) -> Any:
    """Mean negative log-likelihood of the rounded targets (0..10)."""
    import torch

    index = targets.round().clamp(0, 10).long()
    return -torch.gather(log_probs, -1, index[..., None]).squeeze(-1).mean()


def listnet_loss(scores: Any, targets: Any, tau: float = 1.0) -> Any:
    """ListNet cross-entropy of one group's ``scores`` against ``targets`` (both 1-D, 0..10 scale)."""
    import torch

    teacher = torch.softmax(targets / tau, dim=-1)
    return -(teacher * torch.log_softmax(scores / tau, dim=-1)).sum()
