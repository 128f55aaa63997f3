"""Fusion calibrated per model: pick the rerank/retriever weight on validation queries.

The final score of a reranked document is ``w * rerank + (1 - w) * minmax(retriever)``
(``reranker.scoring.fuse``), where ``rerank = (1 - l) * groupwise + l * likelihood`` when the query
likelihood is read too (``reranker.likelihood.mix``); where the candidates carry the first stage's
embedding similarities, the retriever part is ``(1 - d) * minmax(retriever) + d * minmax(dense)``
(``reranker.scoring.first_stage``).
A model is reranked once per validation query (both parts kept), then every ``(w, l, d)`` of a grid is
tried offline and the best mean metric wins; ties go to
the smaller weights, so a model that adds nothing gets ``w = 0``, i.e. the first stage's order, and is
not promoted.

A mix of both parts (``0 < l < 1``) costs two passes per request: the groupwise prompts and the likelihood
rows. It is served only when it beats the best one-pass setting (``l = 0`` or ``l = 1``) by more than the
noise of the validation queries (``NOISE_SE`` standard errors of the paired per-query difference);
otherwise the better single part is served alone (``Calibration.serve``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grouprank.metrics import evaluate, per_query
from grouprank.trec_files import Qrels
from reranker.likelihood import mix
from reranker.scoring import fuse

GRID = tuple(round(0.1 * i, 1) for i in range(11))
NOISE_SE = 2.0
"""A two-pass mix must beat the best one-pass setting by this many standard errors of the paired difference."""


@dataclass
class ScoredQuery:
    """One validation query: candidate ids in retriever order, their retriever scores, the (groupwise)
    rerank scores (0..1) of those the model scored and, if read, their query likelihoods, keyed by
    candidate index."""

    qid: str
    ids: list[str]
    retriever: list[float]
    rerank: dict[int, float]
    likelihood: dict[int, float] = field(default_factory=dict)
    dense: list[float | None] | None = None
    """The first stage's embedding similarity of each candidate (None: the first stage has none)."""


def fused_run(queries: Sequence[ScoredQuery], weight: float, likelihood_weight: float = 0.0,
              dense_weight: float = 0.0) -> dict[str, dict[str, float]]:
    """The TREC run of the fused rankings at ``weight`` (and ``likelihood_weight``, ``dense_weight``)."""
    run = {}
    for q in queries:
        rerank = mix(q.rerank, q.likelihood, likelihood_weight)
        fused = fuse(len(q.ids), rerank, q.retriever, weight, "retriever", q.dense, dense_weight)
        run[q.qid] = {q.ids[i]: s for i, s in zip(fused.order, fused.scores, strict=True)}
    return run


@dataclass
class Calibration:
    weight: float
    metric: str
    best: float
    first_stage: float
    table: dict[str, float]
    """Metric by ``w`` ("0.20"), or by ``w`` and ``l`` ("0.20/0.50") when likelihoods were read, with the
    dense share last when the candidates carry similarities ("0.20/0.50/0.60"); at ``d = 0`` the key has
    no dense part."""
    likelihood_weight: float = 0.0
    dense_weight: float = 0.0
    """The share of the first stage's part given to its embedding similarities (0: the retriever score)."""
    weight_without_likelihood: float | None = None
    """The best ``w`` with the groupwise scores alone (``l = 0``), for backends that cannot read likelihoods;
    None when no likelihoods were read (then it is ``weight``)."""
    one_pass: dict[str, float] | None = None
    """The best setting that reads one part only (``weight``, ``likelihood_weight`` 0 or 1, ``dense_weight``,
    ``best``) and the paired difference of the best mix against it (``margin``, ``se``); None without
    likelihoods."""

    @property
    def adds_value(self) -> bool:
        return self.weight > 0 and self.best > self.first_stage

    @property
    def serve(self) -> tuple[float, float, float]:
        """``(w, l, d)`` to serve: the best mix only if it beats the best one-pass setting beyond noise (a
        part kept by a margin below noise costs a pass for nothing)."""
        if self.one_pass is None or self.one_pass["margin"] > NOISE_SE * self.one_pass["se"]:
            return self.weight, self.likelihood_weight, self.dense_weight
        return self.one_pass["weight"], self.one_pass["likelihood_weight"], self.one_pass["dense_weight"]

    def to_dict(self) -> dict[str, Any]:
        weight, likelihood_weight, dense_weight = self.serve
        return {**asdict(self), "adds_value": self.adds_value,
                "serve": {"weight": weight, "likelihood_weight": likelihood_weight, "dense_weight": dense_weight}}


def paired_margin(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """Mean and standard error of the per-query difference ``a - b`` over their common queries."""
    diffs = [a[q] - b[q] for q in a if q in b]
    if len(diffs) < 2:
        return (diffs[0] if diffs else 0.0), float("inf")
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, (var / len(diffs)) ** 0.5


def _key(w: float, lw: float | None, d: float) -> str:
    parts = [f"{w:.2f}"] + ([f"{lw:.2f}"] if lw is not None else []) + ([f"{d:.2f}"] if d > 0 else [])
    return "/".join(parts)


def calibrate_weight(queries: Sequence[ScoredQuery], qrels: Qrels, metric: str = "ndcg@10",
                     grid: Sequence[float] = GRID) -> Calibration:
    """The weights of ``grid`` with the best mean ``metric`` over ``queries`` (ties: the smaller ``w``,
    then the smaller likelihood weight, then the smaller dense share). The likelihood weight is searched only
    when the queries carry likelihoods, the dense share only when they carry similarities. ``w = 0``
    with ``d = 0`` reproduces the retriever's order, so the chosen weights are never worse than the first
    stage on these queries."""
    judged = {q.qid: qrels[q.qid] for q in queries if q.qid in qrels}
    with_likelihood = any(q.likelihood for q in queries)
    mixes = sorted(grid) if with_likelihood else [0.0]
    denses = sorted(grid) if any(q.dense for q in queries) else [0.0]
    table: dict[str, float] = {}
    best: tuple[tuple[float, float, float, float], float, float, float, float] | None = None
    for w in sorted(grid):
        for lw in mixes:
            for d in denses:
                value = evaluate(judged, fused_run(queries, w, lw, d), (metric,))[metric]
                table[_key(w, lw if with_likelihood else None, d)] = value
                key = (round(value, 10), -w, -lw, -d)
                if best is None or key > best[0]:
                    best = (key, w, lw, d, value)
    assert best is not None, "an empty grid"
    first_stage = evaluate(judged, fused_run(queries, 0.0), (metric,))[metric]
    alone = None
    one_pass = None
    if with_likelihood:
        scored = {w: max(table[_key(w, 0.0, d)] for d in denses) for w in sorted(grid)}
        alone = max(scored, key=lambda w: (round(scored[w], 10), -w))
        alone = alone if scored[alone] > first_stage else 0.0
        ends = [(w, lw, d) for w in sorted(grid) for lw in (0.0, 1.0) if lw in mixes for d in denses]
        w1, l1, d1 = max(ends, key=lambda e: (round(table[_key(*e)], 10), -e[0], -e[1], -e[2]))
        best_q = per_query(judged, fused_run(queries, best[1], best[2], best[3]), (metric,))[metric]
        one_q = per_query(judged, fused_run(queries, w1, l1, d1), (metric,))[metric]
        margin, se = paired_margin(best_q, one_q)
        one_pass = {"weight": w1, "likelihood_weight": l1, "dense_weight": d1, "best": table[_key(w1, l1, d1)],
                    "margin": round(margin, 6), "se": round(se, 6)}
    return Calibration(best[1], metric, best[4], first_stage, table, likelihood_weight=best[2],
                       dense_weight=best[3], weight_without_likelihood=alone, one_pass=one_pass)
