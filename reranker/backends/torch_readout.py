"""The read-out of ``reranker.readout`` computed from a decoder's hidden states, with gradients when asked.

The transformers backend (serving) and ``trainer.readout_train`` (training) both call ``readout_tensors``
on the same rows, so a trained model is served exactly as it was trained. Logits are computed only where
they are read: the score tokens' rows of the output matrix at each read-out, the full vocabulary at a fed
"1" (P("0" | "1")) and at the repeated query's tokens (the in-context likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reranker.readout import ReadoutRow
from reranker.slots import SCORES, ScoreTokens


@dataclass
class ReadoutTensors:
    """Per document of every row, in row order: ``distributions`` [N, 11] (P(score 0..10)), ``expected``
    [N] (0..10) and ``likelihood`` [N] (mean query log-probability; None without repeated queries)."""

    distributions: Any
    expected: Any
    likelihood: Any | None


def right_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of token rows padded on the right (a row's positions and attention
    do not depend on the batch)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def readout_tensors(hidden: Any, weight: Any, rows: Sequence[ReadoutRow], tokens: ScoreTokens,
                    likelihood: bool = True) -> ReadoutTensors:
    """The read-outs of a batch from its last hidden states ``hidden`` [B, T, H] and the LM head's
    ``weight`` [V, H] (differentiable; float32 maths)."""
    import torch

    device = hidden.device
    r_idx = torch.tensor([r for r, row in enumerate(rows) for _ in row.readouts], device=device)
    c_idx = torch.tensor([c for row in rows for c in row.readouts], device=device)
    first = torch.tensor(tokens.first, device=device)
    w = weight.float()
    logits = hidden[r_idx, c_idx].float() @ w[first].T  # [N, 10 | 11]
    probs = torch.softmax(logits, dim=-1)  # renormalised over the score tokens
    if tokens.mode == "split":
        o_idx = torch.tensor([c for row in rows for c in row.ones], device=device)
        q = torch.softmax(hidden[r_idx, o_idx].float() @ w.T, dim=-1)[:, tokens.zero]  # P("0" | "1")
        probs = torch.cat([probs[:, :1], (probs[:, 1] * (1 - q))[:, None], probs[:, 2:],
                           (probs[:, 1] * q)[:, None]], dim=1)
    values = torch.tensor(SCORES, dtype=probs.dtype, device=device)
    expected = probs @ values
    mean_lp = None
    if likelihood and all(row.query_spans for row in rows):
        spans = [(r, s, e) for r, row in enumerate(rows) for s, e in row.query_spans]
        pr = torch.tensor([r for r, s, e in spans for _ in range(s, e)], device=device)
        pc = torch.tensor([k - 1 for _, s, e in spans for k in range(s, e)], device=device)
        target = torch.tensor([rows[r].ids[k] for r, s, e in spans for k in range(s, e)], device=device)
        lg = hidden[pr, pc].float() @ w.T
        token_lp = lg.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(lg, dim=-1)
        owner = torch.tensor([d for d, (_, s, e) in enumerate(spans) for _ in range(s, e)], device=device)
        sums = torch.zeros(len(spans), device=device).index_add(0, owner, token_lp)
        counts = torch.tensor([max(e - s, 1) for _, s, e in spans], dtype=sums.dtype, device=device)
        mean_lp = sums / counts
    return ReadoutTensors(probs, expected, mean_lp)
