"""Query likelihood: how well a document predicts the query, read from the LLM's own distribution.

The score of a document ``d`` for a query ``q`` is the mean log-probability of ``q``'s tokens after the
prompt ``likelihood_prompt(d)`` ("Passage: ... Please write a question based on this passage.
Question:"): the zero-shot query-likelihood ranker of UPR (Sachan et al., 2022) and of Zhuang et al.
(2023). It is pointwise and needs no training: a language model already knows which passages make a
question likely. ``GroupwiseReranker(likelihood_weight=...)`` fuses it with the groupwise scores
(``mix``), and ``trainer.calibration`` picks that weight per model on validation queries.

The maths lives in pure functions so it is tested by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from grouprank.scores import min_max

PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"


def likelihood_prompt(passage: str) -> str:
    """The text the query continues (whitespace in the passage collapsed)."""
    return PROMPT.format(passage=" ".join(passage.split()))


def query_continuation(query: str) -> str:
    """The continuation whose tokens are scored: the query after one space."""
    return " " + " ".join(query.split())


@dataclass
class Likelihood:
    """One document's query likelihood: ``mean_logprob`` over ``tokens`` query tokens (None when the
    backend could not score it; ``error`` says why)."""

    mean_logprob: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None


def tokenised_pairs(
    ids: Callable[[str], list[int]], prompts: Sequence[str], continuations: Sequence[str]
) -> tuple[list[Likelihood | None], dict[int, tuple[list[int], list[int]]]]:
    """Each pair tokenised apart (prompt, then continuation, as every backend scores them): ``(results,
    rows)``, where ``rows[i]`` is pair ``i``'s ``(prompt ids, continuation ids)`` to score and ``results[i]``
    is already set (mean 0.0) for a pair with an empty continuation."""
    results: list[Likelihood | None] = [None] * len(prompts)
    rows: dict[int, tuple[list[int], list[int]]] = {}
    for i, (prompt, continuation) in enumerate(zip(prompts, continuations, strict=True)):
        head, tail = ids(prompt), ids(continuation)
        if tail:
            rows[i] = (head, tail)
        else:
            results[i] = Likelihood(mean_logprob=0.0, prompt_tokens=len(head))
    return results, rows


def mean_logprob(token_logprobs: Sequence[float]) -> float:
    """The mean of the continuation's token log-probabilities (0.0 for an empty continuation)."""
    return float(sum(token_logprobs) / len(token_logprobs)) if token_logprobs else 0.0


def unit_scores(values: Mapping[int, float]) -> dict[int, float]:
    """Mean log-probabilities of one query's documents scaled to 0..1 (min-max, best = 1)."""
    keys = list(values)
    return dict(zip(keys, min_max([values[k] for k in keys]), strict=True))


def mix(groupwise: Mapping[int, float], likelihood: Mapping[int, float], weight: float) -> dict[int, float]:
    """``(1 - weight) * groupwise + weight * unit_scores(likelihood)`` for the documents both scored;
    a document only one of them scored keeps that one's score (``weight`` 0 or 1 takes one side)."""
    if weight <= 0.0 or not likelihood:
        return dict(groupwise)
    unit = unit_scores(likelihood)
    if weight >= 1.0 or not groupwise:
        return unit
    out = {}
    for i in groupwise.keys() | unit.keys():
        if i in groupwise and i in unit:
            out[i] = (1.0 - weight) * groupwise[i] + weight * unit[i]
        else:
            out[i] = groupwise[i] if i in groupwise else unit[i]
    return out


def mix_signals(groupwise: Mapping[int, float], likelihood: Mapping[int, float], weight: float) -> dict[int, float]:
    """``(1 - weight) * groupwise + weight * likelihood`` (both already in 0..1) over the documents that
    have every signal the mix needs. A document missing one is left out, so it falls back (never ranked
    on half of its score): the per-document fallback of a fused score."""
    if weight <= 0.0 or not likelihood:  # nothing to mix: the read-out stands alone
        return dict(groupwise)
    if weight >= 1.0:
        return dict(likelihood)
    return {i: (1.0 - weight) * groupwise[i] + weight * likelihood[i] for i in groupwise if i in likelihood}
