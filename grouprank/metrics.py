"""Retrieval metrics with trec_eval semantics (via pytrec_eval), graded qrels.

Metric names are ``ndcg@K``, ``recall@K``, ``mrr@K``, ``map``, ``precision@K``. Means are taken
over every query in the qrels that has at least one relevant document; a query missing from the
run counts as 0 (trec_eval ``-c``).
"""

from __future__ import annotations

import re

import pytrec_eval

from grouprank.errors import InputError
from grouprank.trec_files import Qrels, Run

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10")

_NAME = re.compile(r"^(ndcg|recall|mrr|precision|map)(?:@(\d+))?$")


def _trec_measure(name: str) -> tuple[str, str]:
    """Map ``ndcg@10`` to (pytrec_eval measure family, result key)."""
    m = _NAME.match(name.lower())
    if not m:
        raise InputError(f"unknown metric {name!r}; use ndcg@K, recall@K, mrr@K, precision@K or map")
    family, k = m.group(1), m.group(2)
    if family == "map":
        return "map", "map"
    if k is None:
        raise InputError(f"metric {name!r} needs a cut-off, e.g. {family}@10")
    if family == "mrr":
        return "recip_rank", "recip_rank"  # the run is cut at k first, see below
    trec = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P"}[family]
    return f"{trec}.{k}", f"{trec}_{k}"


def _cut(run: Run, k: int) -> Run:
    """Top-k of each query in trec_eval order (score descending, then doc id descending)."""
    out: Run = {}
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        out[qid] = dict(ranked[:k])
    return out


def per_query(
    qrels: Qrels, run: Run, metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """Return ``{metric: {query_id: value}}`` over the judged queries (see module docstring)."""
    judged = {q: d for q, d in qrels.items() if any(r > 0 for r in d.values())}
    results: dict[str, dict[str, float]] = {}
    for name in metrics:
        measure, key = _trec_measure(name)
        sub_run = run
        if name.lower().startswith("mrr@"):
            sub_run = _cut(run, int(name.split("@")[1]))
        evaluator = pytrec_eval.RelevanceEvaluator(judged, {measure})
        # pytrec_eval wants string ids and float scores.
        clean = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in sub_run.items() if q in judged}
        scores = evaluator.evaluate(clean)
        results[name] = {q: scores[q][key] if q in scores else 0.0 for q in judged}
    return results


def evaluate(qrels: Qrels, run: Run, metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the judged queries, e.g. ``{"ndcg@10": 0.41, ...}``."""
    out: dict[str, float] = {}
    for name, values in per_query(qrels, run, metrics).items():
        out[name] = sum(values.values()) / len(values) if values else 0.0
    return out
