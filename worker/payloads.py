"""What crosses the boundary between the API and the rerank stage (in process or a Celery worker):
typed and validated on both sides, turned into JSON only where Celery carries it (``to_wire`` /
``from_wire``). The engine's own types (``reranker.types.Candidate``, ``Ranking``) are the fields.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict

from reranker.types import Candidate, Ranking, RerankRequest


class RerankJob(BaseModel):
    """One query and its candidates, as the API sends them to be reranked."""

    model_config = ConfigDict(extra="forbid")

    query: str
    candidates: list[Candidate]
    top_k: int | None = None

    def request(self) -> RerankRequest:
        return RerankRequest(self.query, self.candidates, self.top_k)


class ServedRanking(BaseModel):
    """A reranker's answer to one job, with the model that gave it (a promotion switches it between
    requests; ``model_version`` is its registry version, None when not promoted)."""

    model_config = ConfigDict(extra="forbid")

    ranking: Ranking
    model: str
    model_version: str | None = None
    cached: bool = False
    """Answered from the rerank cache (``worker.result_cache``): its trace is the rerank that made it."""

    @property
    def complete(self) -> bool:
        """Every document reranked and no error: an answer worth caching."""
        r = self.ranking
        return bool(r.reranked) and not r.fallback and not r.trace.errors

    def trace(self) -> dict[str, Any]:
        """The trace as the API reports it: the reranker's counters plus the serving model, and whether
        the answer came from the rerank cache."""
        return {**asdict(self.ranking.trace), "model": self.model, "model_version": self.model_version,
                "cached": self.cached}


def to_wire(items: list[RerankJob] | list[ServedRanking]) -> list[dict[str, Any]]:
    """JSON-ready dicts for Celery's message or result."""
    return [item.model_dump(mode="json") for item in items]


def jobs_from_wire(data: Any) -> list[RerankJob]:
    return [RerankJob.model_validate(item) for item in data]


def rankings_from_wire(data: Any) -> list[ServedRanking]:
    return [ServedRanking.model_validate(item) for item in data]
