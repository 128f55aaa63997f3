"""The read-out of ``reranker.readout`` computed from a decoder's hidden states, with gradients when asked.

The transformers backend (serving) and ``trainer.readout_train`` (training) both call ``readout_tensors``
on the same rows, so a trained model is served exactly as it was trained. Logits are computed only where
they are read: the score tokens' rows of the output matrix at each read-out, the full vocabulary at a fed
"1" (P("0" | "1")) and at the repeated query's tokens (the in-context likelihood).

A model may instead carry a trained **read-out head** (``HEAD_FILE`` in its folder): a small function of
the hidden state at each read-out position (standardised, then linear, or one GELU layer and linear), whose
logit ``z`` gives the score ``10 * sigmoid(z)``. The state at a read-out has the instructions, the query,
the earlier documents of the group, the document itself and the repeated query in view, so the head is
a groupwise read-out in the same single pass (jina-reranker-v3 reads its scores from hidden states too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.models import HEAD_FILE  # tensors mean, scale [H]; optionally w1 [H, M], b1 [M]; then w, b
from reranker.readout import ReadoutRow
from reranker.slots import SCORES, ScoreTokens


def head_logits(states: Any, head: Mapping[str, Any]) -> Any:
    """The head's logit for each hidden state ``states`` [N, H] (float32 maths, differentiable)."""
    import torch

    x = (states.float() - head["mean"]) / head["scale"]
    if "w1" in head:
        x = torch.nn.functional.gelu(x @ head["w1"] + head["b1"])
    return x @ head["w"] + head["b"]


def head_scores(logits: Any) -> Any:
    """0..10 scores of head logits."""
    import torch

    return 10.0 * torch.sigmoid(logits)


def load_head(folder: str | Path) -> dict[str, Any] | None:
    """The read-out head stored in a model folder, or None."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(path))


def save_head(folder: Path, head: Mapping[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / HEAD_FILE
    save_file({k: v.detach().float().contiguous().cpu() for k, v in head.items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600: a worker running as another user must read the model
    return path


@dataclass
class ReadoutTensors:
    """Per document of every row, in row order: ``distributions`` [N, 11] (P(score 0..10); None with a
    head), ``expected`` [N] (0..10) and ``likelihood`` [N] (mean query log-probability; None without
    repeated queries)."""

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


def readout_states(hidden: Any, rows: Sequence[ReadoutRow]) -> Any:
    """The hidden states [N, H] at every read-out position of a batch, in row order."""
    import torch

    device = hidden.device
    r_idx = torch.tensor([r for r, row in enumerate(rows) for _ in row.readouts], device=device)
    c_idx = torch.tensor([c for row in rows for c in row.readouts], device=device)
    return hidden[r_idx, c_idx]


def readout_tensors(hidden: Any, weight: Any, rows: Sequence[ReadoutRow], tokens: ScoreTokens,
                    likelihood: bool = True, head: Mapping[str, Any] | None = None) -> ReadoutTensors:
    """The read-outs of a batch from its last hidden states ``hidden`` [B, T, H] and the LM head's
    ``weight`` [V, H] (differentiable; float32 maths); scored by ``head`` where given."""
    import torch

    device = hidden.device
    w = weight.float()
    mean_lp = _likelihood(hidden, w, rows) if likelihood and all(row.query_spans for row in rows) else None
    if head is not None:
        return ReadoutTensors(None, head_scores(head_logits(readout_states(hidden, rows), head)), mean_lp)
    r_idx = torch.tensor([r for r, row in enumerate(rows) for _ in row.readouts], device=device)
    o_idx = torch.tensor([c for row in rows for c in row.ones], device=device)
    first = torch.tensor(tokens.first, device=device)
    logits = readout_states(hidden, rows).float() @ w[first].T  # [N, 10 | 11]
    probs = torch.softmax(logits, dim=-1)  # renormalised over the score tokens
    if tokens.mode == "split":
        q = torch.softmax(hidden[r_idx, o_idx].float() @ w.T, dim=-1)[:, tokens.zero]  # P("0" | "1")
        probs = torch.cat([probs[:, :1], (probs[:, 1] * (1 - q))[:, None], probs[:, 2:],
                           (probs[:, 1] * q)[:, None]], dim=1)
    values = torch.tensor(SCORES, dtype=probs.dtype, device=device)
    return ReadoutTensors(probs, probs @ values, mean_lp)


def _likelihood(hidden: Any, w: Any, rows: Sequence[ReadoutRow]) -> Any:
    """Mean log-probability of each repeated query span, in row order."""
    import torch

    device = hidden.device
    spans = [(r, s, e) for r, row in enumerate(rows) for s, e in row.query_spans]
    pr = torch.tensor([r for r, s, e in spans for _ in range(s, e)], device=device)
    pc = torch.tensor([k - 1 for _, s, e in spans for k in range(s, e)], device=device)
    target = torch.tensor([rows[r].ids[k] for r, s, e in spans for k in range(s, e)], device=device)
    lg = hidden[pr, pc].float() @ w.T
    token_lp = lg.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(lg, dim=-1)
    owner = torch.tensor([d for d, (_, s, e) in enumerate(spans) for _ in range(s, e)], device=device)
    sums = torch.zeros(len(spans), device=device).index_add(0, owner, token_lp)
    counts = torch.tensor([max(e - s, 1) for _, s, e in spans], dtype=sums.dtype, device=device)
    return sums / counts
