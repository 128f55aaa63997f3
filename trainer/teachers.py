"""Teachers label training groups: a pointwise teacher scores each document 0-10, a listwise teacher orders
the group. Each is backed by gold qrels or by a reranker on any backend (in production a strong LLM through
the OpenAI-compatible or vLLM backend)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from grouprank.errors import InputError
from trainer.config import TeacherConfig
from trainer.mining import MinedDoc


@dataclass
class TeacherGroup:
    """One group to label: the query and its documents, in prompt order."""

    query: str
    docs: list[MinedDoc]


class PointwiseTeacher(ABC):
    @abstractmethod
    def score(self, groups: list[TeacherGroup]) -> list[list[float]]:
        """A 0-10 score per document of each group."""


class ListwiseTeacher(ABC):
    @abstractmethod
    def rank(self, groups: list[TeacherGroup]) -> list[list[int]]:
        """Each group's document indices, best first (a permutation of ``range(len(docs))``)."""


class QrelsPointwiseTeacher(PointwiseTeacher):
    """Score = 10 * grade / ``max_grade`` (an unjudged document counts as grade 0)."""

    def __init__(self, max_grade: int) -> None:
        if max_grade < 1:
            raise InputError(f"qrels hold no positive grade (max grade {max_grade})", field="qrels")
        self.max_grade = max_grade

    def score(self, groups: list[TeacherGroup]) -> list[list[float]]:
        return [[10.0 * min(max(d.label or 0, 0), self.max_grade) / self.max_grade for d in g.docs] for g in groups]


class QrelsListwiseTeacher(ListwiseTeacher):
    """The order induced by the qrels grades; ties (e.g. all non-relevant documents) keep the retriever's
    order, and documents the retriever did not return come last."""

    def rank(self, groups: list[TeacherGroup]) -> list[list[int]]:
        def key(item: tuple[int, MinedDoc]) -> tuple[int, float, int]:
            i, d = item
            return (-(d.label or 0), d.rank if d.rank is not None else math.inf, i)

        return [[i for i, _ in sorted(enumerate(g.docs), key=key)] for g in groups]


def _requests(groups: list[TeacherGroup]) -> list[Any]:
    from reranker.types import Candidate, RerankRequest

    # No retriever scores: the teacher's own judgement only (rerank-only fusion).
    return [RerankRequest(g.query, [Candidate(id=d.id, text=d.text, title=d.title) for d in g.docs]) for g in groups]


class RerankerPointwiseTeacher(PointwiseTeacher):
    """Any reranker that scores documents (pointwise or groupwise): its rerank score (0..1) times 10;
    a document it failed to score gets 0."""

    def __init__(self, reranker: Any) -> None:
        self.reranker = reranker

    def score(self, groups: list[TeacherGroup]) -> list[list[float]]:
        rankings = self.reranker.rerank_batch(_requests(groups))
        return [[10.0 * r.rerank_scores.get(d.id, 0.0) for d in g.docs] for g, r in zip(groups, rankings, strict=True)]


class RerankerListwiseTeacher(ListwiseTeacher):
    """Any reranker's final order (listwise: RankGPT's sliding window)."""

    def __init__(self, reranker: Any) -> None:
        self.reranker = reranker

    def rank(self, groups: list[TeacherGroup]) -> list[list[int]]:
        rankings = self.reranker.rerank_batch(_requests(groups))
        out = []
        for g, r in zip(groups, rankings, strict=True):
            position = {d.id: i for i, d in enumerate(g.docs)}
            out.append([position[doc_id] for doc_id in r.ids])
        return out


def load_teachers(pointwise: TeacherConfig, listwise: TeacherConfig,
                  max_grade: int | None) -> tuple[PointwiseTeacher, ListwiseTeacher]:
    """The two teachers a SynthesisConfig describes (``max_grade``: the qrels' highest grade)."""

    def reranker(config: TeacherConfig, default_method: str) -> Any:
        from reranker import load_reranker

        options = dict(config.options)
        method = options.pop("method", default_method)
        return load_reranker(method, model=config.model, backend=config.backend, **options)

    if pointwise.kind == "qrels":
        if max_grade is None:
            raise InputError("a qrels teacher needs qrels", field="synthesis.pointwise.kind")
        point: PointwiseTeacher = QrelsPointwiseTeacher(max_grade)
    else:
        point = RerankerPointwiseTeacher(reranker(pointwise, "pointwise"))
    if listwise.kind == "qrels":
        lister: ListwiseTeacher = QrelsListwiseTeacher()
    else:
        lister = RerankerListwiseTeacher(reranker(listwise, "listwise"))
    return point, lister
