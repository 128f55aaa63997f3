"""Query sets and experiments of the relevance workbench, stored beside the judgments (``judgments.sqlite``).

An experiment runs each query of a set through the API's own ``/search`` (retrieval, then GroupRank) and
scores both orders against the workbench's judgments: NDCG@10, MRR@10 and Recall@k per query and in total
(means over the queries that have a relevant judged document), with the rerank latency per query. It is
kept with the model version and the settings it ran with.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from grouprank.errors import InputError
from worker.sqlite_store import SQLiteStore

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS query_sets (name TEXT PRIMARY KEY, queries TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS experiments (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, "
    "at TEXT NOT NULL, record TEXT NOT NULL)",
)


def parse_queries(queries: str | list[str], max_query_chars: int = 2048, max_queries: int = 200) -> list[str]:
    """Queries from a list or from text (one per line, as in an uploaded file): stripped, blank lines and
    repeats dropped. InputError names the line of a query that is too long, or an empty set."""
    lines = queries.splitlines() if isinstance(queries, str) else list(queries)
    out: list[str] = []
    for n, line in enumerate(lines, start=1):
        if not isinstance(line, str):
            raise InputError(f"query {n} is not text", field="queries", line=n)
        text = line.strip()
        if len(text) > max_query_chars:
            raise InputError(f"query on line {n} is {len(text)} characters long; the limit is {max_query_chars}",
                             field="queries", line=n)
        if text and text not in out:
            out.append(text)
    if not out:
        raise InputError("no queries: give one query per line", field="queries")
    if len(out) > max_queries:
        raise InputError(f"{len(out)} queries; the limit is {max_queries}", field="queries")
    return out


def ranking_metrics(ranked: list[str], grades: dict[str, int], k: int) -> dict[str, float] | None:
    """NDCG@10, MRR@10 and Recall@``k`` of ``ranked`` doc ids against ``grades`` (None when no judged
    document is relevant: such a query has nothing to measure)."""
    from grouprank.metrics import evaluate

    if not any(g > 0 for g in grades.values()):
        return None
    run = {"q": {doc: float(len(ranked) - n) for n, doc in enumerate(ranked)}}
    metrics = evaluate({"q": grades}, run, ("ndcg@10", "mrr@10", f"recall@{k}"))
    return {"ndcg@10": metrics["ndcg@10"], "mrr@10": metrics["mrr@10"], "recall@k": metrics[f"recall@{k}"]}


@dataclass
class QueryResult:
    query: str
    judged: int
    first_stage: dict[str, float] | None
    grouprank: dict[str, float] | None
    retrieval_ms: float
    rerank_ms: float
    reranked: bool
    cached: bool = False
    """Answered from the rerank cache: its ``rerank_ms`` is not what reranking costs."""
    reason: str | None = None
    """Why the query fell back, when it did."""

    @property
    def measured(self) -> bool:
        """Judged and reranked: its metrics compare the two orders."""
        return self.reranked and self.first_stage is not None and self.grouprank is not None


def means(measured: list[QueryResult]) -> dict[str, dict[str, float] | None]:
    """Each order's (``first_stage``, ``grouprank``) mean metrics over measured queries (None for none)."""
    return {side: {m: round(sum(getattr(q, side)[m] for q in measured) / len(measured), 4)
                   for m in ("ndcg@10", "mrr@10", "recall@k")} if measured else None
            for side in ("first_stage", "grouprank")}


@dataclass
class Experiment:
    name: str
    model: str
    version: str | None
    settings: dict[str, Any]
    queries: list[QueryResult] = field(default_factory=list)
    id: int | None = None
    at: str = ""

    def totals(self) -> dict[str, Any]:
        """Mean metrics of both orders over the measured queries (judged and reranked: a query that fell
        back is counted, not averaged), and the mean rerank latency over the reranked queries that the
        cache did not answer (``timed`` of them; None when there is none)."""
        measured = [q for q in self.queries if q.measured]
        timed = [q for q in self.queries if q.reranked and not q.cached]
        out: dict[str, Any] = {"queries": len(self.queries), "measured": len(measured),
                               "fell_back": sum(not q.reranked for q in self.queries),
                               "cached": sum(q.cached for q in self.queries), "timed": len(timed)}
        out.update(means(measured))
        out["rerank_ms"] = round(sum(q.rerank_ms for q in timed) / len(timed), 1) if timed else None
        return out

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "totals": self.totals()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Experiment:
        data = {k: v for k, v in record.items() if k != "totals"}
        data["queries"] = [QueryResult(**q) for q in data.get("queries", [])]
        return cls(**data)


def side_by_side(runs: list[Experiment]) -> dict[str, Any]:
    """Several runs compared query by query: every query of any run, in first-seen order, with each run's
    result for it (None where a run did not have it), and each run's totals over the queries **every run
    measured** (judged and reranked in all of them), so the means compare like with like."""
    order: list[str] = []
    by_run = [{q.query: q for q in run.queries} for run in runs]
    for run in runs:
        order += [q.query for q in run.queries if q.query not in order]
    common = [query for query in order if all(query in r and r[query].measured for r in by_run)]
    totals = [means([results[query] for query in common]) for results in by_run]
    return {"runs": [{"id": r.id, "name": r.name, "model": r.model, "version": r.version, "at": r.at,
                      "settings": r.settings} for r in runs],
            "queries": [{"query": query, "results": [r.get(query) for r in by_run]} for query in order],
            "common": len(common), "totals": totals}


class ExperimentStore(SQLiteStore):
    """Query sets and experiments in ``path``, the judgments' file (see ``SQLiteStore``)."""

    SCHEMA = _SCHEMA

    def save_set(self, name: str, queries: list[str]) -> dict[str, Any]:
        """Store (or replace) the query set ``name``."""
        if not name.strip():
            raise InputError("the query set needs a name", field="name")
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._connect() as conn:
            conn.execute("INSERT INTO query_sets VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "queries = excluded.queries, at = excluded.at", (name, json.dumps(queries), at))
        return {"name": name, "queries": queries, "at": at}

    def sets(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute("SELECT name, queries, at FROM query_sets ORDER BY name").fetchall()
        return [{"name": n, "queries": json.loads(q), "at": a} for n, q, a in rows]

    def get_set(self, name: str) -> list[str] | None:
        return next((s["queries"] for s in self.sets() if s["name"] == name), None)

    def add(self, experiment: Experiment) -> Experiment:
        experiment.at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._connect() as conn:
            cursor = conn.execute("INSERT INTO experiments (name, at, record) VALUES (?, ?, ?)",
                                  (experiment.name, experiment.at, json.dumps(experiment.to_record())))
        experiment.id = cursor.lastrowid
        return experiment

    def all(self) -> list[Experiment]:
        with self._connect() as conn:
            rows = conn.execute("SELECT id, record FROM experiments ORDER BY id DESC").fetchall()
        return [Experiment.from_record({**json.loads(r), "id": i}) for i, r in rows]

    def get(self, experiment_id: int) -> Experiment | None:
        with self._connect() as conn:
            row = conn.execute("SELECT record FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        return Experiment.from_record({**json.loads(row[0]), "id": experiment_id}) if row else None


def plot_png(experiment: Experiment) -> bytes:
    """Quality against rerank latency: each measured query's NDCG@10, first stage (at its retrieval
    time) and GroupRank (at retrieval + rerank time), joined by a line."""
    from grouprank.errors import require

    matplotlib = require("matplotlib", "plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for q in experiment.queries:
        if not q.measured or q.cached:  # a cached answer's latency is not the rerank's
            continue
        x0, x1 = q.retrieval_ms, q.retrieval_ms + q.rerank_ms
        ax.plot([x0, x1], [q.first_stage["ndcg@10"], q.grouprank["ndcg@10"]], color="#bbb", linewidth=0.8)
        ax.scatter([x0], [q.first_stage["ndcg@10"]], color="#888", s=18)
        ax.scatter([x1], [q.grouprank["ndcg@10"]], color="#2a6", s=18)
    totals = experiment.totals()
    title = f"{experiment.name}: {totals['measured']} judged queries"
    if totals["grouprank"]:
        title += f" · NDCG@10 {totals['first_stage']['ndcg@10']:.3f} → {totals['grouprank']['ndcg@10']:.3f}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("latency per query (ms): first stage (grey) → with GroupRank (green)")
    ax.set_ylabel("NDCG@10 over judged documents")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()
