"""The heterogeneous GRPO reward, as plain functions of (completion text, target scores).

``targets`` are the synthesized integer 0-10 scores of the group's documents in prompt order (position 1
first). The total reward of one completion is::

    R = format + alpha * recall@k + beta * ndcg@k + (1 - alpha - beta) * rbo + gamma * distribution

with alpha = 0.2, beta = 0.5, gamma = 0.1 by default (``RewardConfig``): alpha weighs recall, beta NDCG,
the rest of the ranking weight (0.3) goes to RBO, and gamma weighs the distribution term. The GroupRank
paper names these components (format, ranking metrics, a distribution reward); its exact formula was not
available to us, so this is our definition.

- ``format``: 0 for a well-formed answer, ``format_floor`` (-1) otherwise. Well-formed = after the
  ``<think>``/``<answer>``/``<reason>`` handling of ``reranker.parsing.answer_region``, the answer is one JSON
  object (optionally in a code fence) with every key ``"[1]"`` .. ``"[n]"`` exactly once and integer values
  0-10. A malformed answer gets 0 from every other term, so its total is exactly the floor.
- Predicted order: documents by predicted score, descending; ties are broken pessimistically (the document
  with the lower target first), so tied scores never earn credit the model did not express.
- ``recall@k``: share of the relevant documents (target >= ``relevant_at``) in the predicted top k, out of
  ``min(k, #relevant)``; 1.0 when the group has no relevant document (nothing to find).
- ``ndcg@k``: linear gains = targets, discount 1/log2(rank + 1) (rank from 1); 1.0 when every target is 0.
- ``rbo``: extrapolated rank-biased overlap (Webber et al. 2010) of the predicted and the target order, with
  persistence ``rbo_p``; target ties are ordered as predicted (a tie in the targets means either order is right).
- ``distribution``: exp(-KL(P || Q)) with P = softmax(targets / T), Q = softmax(predicted / T): 1 when the
  predicted score distribution has the target's shape, lower when the model collapses to 0s and 10s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reranker.parsing import answer_region
from trainer.config import RewardConfig

_FENCED = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```", re.S | re.I)
_KEY = re.compile(r"\[(\d+)\]")


@dataclass
class ParsedAnswer:
    """Scores in prompt order, or ``error`` saying why the answer is malformed."""

    scores: list[int] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"duplicate key(s) {', '.join(duplicated)}")
    return dict(pairs)


def parse_answer(text: str, n: int) -> ParsedAnswer:
    """Strictly parse a groupwise answer for ``n`` documents (see ``format`` in the module docstring)."""
    if not isinstance(text, str):
        return ParsedAnswer(error="not a string")
    body = answer_region(text)[0].strip()
    fenced = _FENCED.fullmatch(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body, object_pairs_hook=_no_duplicates)
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so is a duplicate key
        return ParsedAnswer(error=f"not one JSON object: {exc}")
    if not isinstance(obj, dict):
        return ParsedAnswer(error=f"expected a JSON object, got {type(obj).__name__}")
    scores: dict[int, int] = {}
    for key, value in obj.items():
        m = _KEY.fullmatch(key)
        if not m or not 1 <= int(m.group(1)) <= n:
            return ParsedAnswer(error=f"unexpected key {key!r} (expected '[1]' .. '[{n}]')")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
            return ParsedAnswer(error=f"score of {key} must be an integer 0-10, got {value!r}")
        scores[int(m.group(1))] = value
    missing = [i for i in range(1, n + 1) if i not in scores]
    if missing:
        return ParsedAnswer(error=f"missing score(s) for {', '.join(f'[{i}]' for i in missing)}")
    return ParsedAnswer(scores=[scores[i] for i in range(1, n + 1)])


# -- the metrics, on predicted scores and targets (both in prompt order) ----------------------------------

def predicted_order(predicted: list[float], targets: list[int]) -> list[int]:
    """Indices by predicted score, best first; ties put the lower target first (pessimistic)."""
    return sorted(range(len(predicted)), key=lambda i: (-predicted[i], targets[i], i))


def target_order(targets: list[int], predicted: list[float] | None = None) -> list[int]:
    """Indices by target, best first; ties follow the predicted order when given, else prompt order."""
    place = {doc: r for r, doc in enumerate(predicted_order(predicted, targets))} if predicted else {}
    return sorted(range(len(targets)), key=lambda i: (-targets[i], place.get(i, i)))


def recall_at_k(predicted: list[float], targets: list[int], k: int, relevant_at: int) -> float:
    relevant = {i for i, t in enumerate(targets) if t >= relevant_at}
    if not relevant:
        return 1.0
    top = set(predicted_order(predicted, targets)[:k])
    return len(top & relevant) / min(k, len(relevant))


def ndcg_at_k(predicted: list[float], targets: list[int], k: int) -> float:
    def dcg(order: list[int]) -> float:
        return sum(targets[i] / math.log2(r + 2) for r, i in enumerate(order[:k]))

    ideal = dcg(sorted(range(len(targets)), key=lambda i: -targets[i]))
    if ideal == 0:
        return 1.0
    return dcg(predicted_order(predicted, targets)) / ideal


def rbo(first: list[int], second: list[int], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings (lists of distinct items), in [0, 1]."""
    depth = max(len(first), len(second))
    if depth == 0:
        return 1.0
    seen_a: set[int] = set()
    seen_b: set[int] = set()
    overlap = 0  # |first[:d] & second[:d]|
    total = 0.0
    agreement = 0.0
    for d in range(1, depth + 1):
        a = first[d - 1] if d <= len(first) else None
        b = second[d - 1] if d <= len(second) else None
        if a is not None and a == b:
            overlap += 1
        else:
            overlap += (a is not None and a in seen_b) + (b is not None and b in seen_a)
        if a is not None:
            seen_a.add(a)
        if b is not None:
            seen_b.add(b)
        agreement = overlap / d
        total += agreement * p**d
    return (1 - p) / p * total + agreement * p**depth


def softmax(values: list[float], temperature: float) -> list[float]:
    top = max(values)
    exps = [math.exp((v - top) / temperature) for v in values]
    z = sum(exps)
    return [e / z for e in exps]


def distribution_score(predicted: list[float], targets: list[int], temperature: float = 1.0) -> float:
    """exp(-KL(softmax(targets/T) || softmax(predicted/T)))."""
    p = softmax([float(t) for t in targets], temperature)
    q = softmax([float(s) for s in predicted], temperature)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)
    return math.exp(-max(kl, 0.0))


# -- rewards of one completion --------------------------------------------------------------------------

def format_reward(text: str, targets: list[int], config: RewardConfig) -> float:
    return 0.0 if parse_answer(text, len(targets)).ok else config.format_floor


def recall_reward(text: str, targets: list[int], config: RewardConfig) -> float:
    parsed = parse_answer(text, len(targets))
    return recall_at_k(parsed.scores, targets, config.k, config.relevant_at) if parsed.scores else 0.0


def ndcg_reward(text: str, targets: list[int], config: RewardConfig) -> float:
    parsed = parse_answer(text, len(targets))
    return ndcg_at_k(parsed.scores, targets, config.k) if parsed.scores else 0.0


def rbo_reward(text: str, targets: list[int], config: RewardConfig) -> float:
    parsed = parse_answer(text, len(targets))
    if not parsed.scores:
        return 0.0
    return rbo(predicted_order(parsed.scores, targets), target_order(targets, parsed.scores), config.rbo_p)


def distribution_reward(text: str, targets: list[int], config: RewardConfig) -> float:
    parsed = parse_answer(text, len(targets))
    return distribution_score(parsed.scores, targets, config.temperature) if parsed.scores else 0.0


RewardFn = Callable[[str, list[int], RewardConfig], float]


def weighted_rewards(config: RewardConfig) -> list[tuple[RewardFn, float]]:
    """The reward terms and their weights (the formula in the module docstring)."""
    return [
        (format_reward, 1.0),
        (recall_reward, config.alpha),
        (ndcg_reward, config.beta),
        (rbo_reward, 1.0 - config.alpha - config.beta),
        (distribution_reward, config.gamma),
    ]


def total_reward(text: str, targets: list[int], config: RewardConfig) -> float:
    return sum(weight * fn(text, targets, config) for fn, weight in weighted_rewards(config))


def scores_reward(predicted: list[float], targets: list[int], config: RewardConfig) -> float:
    """The total reward of an answer given as scores (slot decoding: always well-formed, so the format
    term is 0): the same weighted recall, NDCG, RBO and distribution terms as ``total_reward``."""
    ranking = (config.alpha * recall_at_k(predicted, targets, config.k, config.relevant_at)
               + config.beta * ndcg_at_k(predicted, targets, config.k)
               + (1.0 - config.alpha - config.beta)
               * rbo(predicted_order(predicted, targets), target_order(targets, predicted), config.rbo_p))
    return ranking + config.gamma * distribution_score(predicted, targets, config.temperature)


def _completion_text(completion: Any) -> str:
    """trl passes a conversational completion as a list of messages, a standard one as a string."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return completion if isinstance(completion, str) else ""


def trl_reward_functions(config: RewardConfig) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The reward terms as trl reward functions ``(prompts, completions, targets, **kw) -> list[float]``
    (``targets`` is the dataset column) and their weights, for ``GRPOConfig.reward_weights``."""
    functions, weights = [], []
    for fn, weight in weighted_rewards(config):
        def reward(prompts: list[Any], completions: list[Any], targets: list[list[int]], _fn: RewardFn = fn,
                   **_: Any) -> list[float]:
            return [_fn(_completion_text(c), list(t), config) for c, t in zip(completions, targets, strict=True)]

        reward.__name__ = fn.__name__.removesuffix("_reward")  # trl logs rewards/<name>/mean
        functions.append(reward)
        weights.append(weight)
    return functions, weights
