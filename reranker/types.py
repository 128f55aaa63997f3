"""The reranker's input and output types: candidates in, a Ranking (with its Trace) out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grouprank.errors import InputError


@dataclass
class Candidate:
    """One retrieved document to rerank. ``score`` is the retriever's score (higher is better); ``dense``
    its embedding similarity to the query, when the first stage computed one (a hybrid search does), which
    the fusion can weigh on its own (``Reranker(dense_weight=...)``)."""

    id: str
    text: str
    score: float | None = None
    title: str = ""
    dense: float | None = None

    @classmethod
    def from_hit(cls, hit: Any) -> Candidate:
        """A first-stage hit (``id``, ``text``, ``title``, ``score`` and per-retriever ``scores``, such as an
        index's ``Hit``) as a candidate, with its dense similarity when the search computed one."""
        return cls(id=hit.id, text=hit.text, title=hit.title, score=hit.score,
                   dense=(getattr(hit, "scores", None) or {}).get("dense"))


CandidateLike = Candidate | str | Mapping[str, Any]
"""What callers may pass: a Candidate, a plain string (its id is its position), or a dict."""


@dataclass
class RerankRequest:
    """One query and its candidates. ``top_k`` cuts the returned ranking (None: all candidates)."""

    query: str
    candidates: Sequence[CandidateLike]
    top_k: int | None = None


def as_candidate(item: CandidateLike, position: int, where: str = "candidates") -> Candidate:
    """Turn a Candidate, string or dict (``id``/``_id``/``docid``, ``text``/``contents``, ``score``,
    ``title``) into a validated Candidate. Errors name the field, e.g. ``candidates[3].score``."""
    here = f"{where}[{position}]"
    if isinstance(item, str):
        return Candidate(id=str(position), text=item)
    if isinstance(item, Candidate):
        doc_id, text, score, title, dense = item.id, item.text, item.score, item.title, item.dense
    elif isinstance(item, Mapping):
        doc_id = next((item[k] for k in ("id", "_id", "docid") if k in item), None)
        if doc_id is None:
            raise InputError("missing candidate id (expected 'id', '_id' or 'docid')", field=f"{here}.id")
        text = next((item[k] for k in ("text", "contents") if k in item), None)
        if text is None:
            raise InputError("missing candidate text (expected 'text' or 'contents')", field=f"{here}.text")
        score, title, dense = item.get("score"), item.get("title") or "", item.get("dense")
    else:
        raise InputError(
            f"a candidate must be a Candidate, a string or a dict, got {type(item).__name__}", field=here
        )
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id:
        raise InputError(f"candidate id must be a non-empty string, got {doc_id!r}", field=f"{here}.id")
    if not isinstance(text, str):
        raise InputError(f"must be a string, got {type(text).__name__}", field=f"{here}.text")
    if not isinstance(title, str):
        raise InputError(f"must be a string, got {type(title).__name__}", field=f"{here}.title")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise InputError(f"retriever score must be a finite number, got {score!r}", field=f"{here}.score")
        score = float(score)
    if dense is not None:
        if isinstance(dense, bool) or not isinstance(dense, int | float) or not math.isfinite(dense):
            raise InputError(f"dense similarity must be a finite number, got {dense!r}", field=f"{here}.dense")
        dense = float(dense)
    return Candidate(id=doc_id, text=text, score=score, title=title, dense=dense)


def as_request(item: RerankRequest | tuple, position: int = 0) -> RerankRequest:
    """Validate one request: a RerankRequest or a ``(query, candidates)`` / ``(query, candidates, top_k)``
    tuple. Raises InputError for a non-string query, a bad candidate, a duplicate id or a bad top_k."""
    where = f"requests[{position}]"
    if isinstance(item, RerankRequest):
        query, raw, top_k = item.query, item.candidates, item.top_k
    elif isinstance(item, tuple) and len(item) in (2, 3):
        query, raw, top_k = item[0], item[1], (item[2] if len(item) == 3 else None)
    else:
        raise InputError("expected a RerankRequest or a (query, candidates) tuple", field=where)
    if not isinstance(query, str):
        raise InputError(f"query must be a string, got {type(query).__name__}", field=f"{where}.query")
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Iterable):
        raise InputError("candidates must be a list", field=f"{where}.candidates")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise InputError(
            f"top_k must be a non-negative integer or None, got {top_k!r}", field=f"{where}.top_k"
        )
    candidates = [as_candidate(c, i, f"{where}.candidates") for i, c in enumerate(raw)]
    first_seen: dict[str, int] = {}
    for i, c in enumerate(candidates):
        if c.id in first_seen:
            raise InputError(
                f"duplicate candidate id {c.id!r} (positions {first_seen[c.id]} and {i})",
                field=f"{where}.candidates[{i}].id",
            )
        first_seen[c.id] = i
    with_score = [c.score is not None for c in candidates]
    if any(with_score) and not all(with_score):
        i = with_score.index(False)
        raise InputError(
            f"candidate {candidates[i].id!r} has no retriever score while others do: give all or none",
            field=f"{where}.candidates[{i}].score",
        )
    return RerankRequest(query=query, candidates=candidates, top_k=top_k)


@dataclass
class Trace:
    """What reranking one request cost and what went wrong.

    ``llm_calls`` counts prompts sent to the LLM for this request; ``critical_path_depth`` counts the
    sequential ``generate`` rounds of the whole call (1 for groupwise and pointwise, the number of
    windows for listwise). In a batch, ``critical_path_depth`` and ``wall_ms`` describe the whole batch;
    the other counters are this request's share. ``parse_failures`` counts answers (without backend
    error) that did not give every asked-for score; ``errors`` holds backend errors, never dropped.
    """

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    critical_path_depth: int = 0
    wall_ms: float = 0.0
    parse_failures: int = 0
    truncated_docs: int = 0
    errors: list[str] = field(default_factory=list)
    decoding: str = ""
    """How the scores were read: "logprobs" (slot decoding), "text" (generated and parsed), "readout" (the
    inline read-out), "likelihood" (the query likelihood alone), or "" (no LLM call)."""
    likelihood: bool = False
    """Whether query likelihoods were read and fused into the rerank scores (``reranker.likelihood``)."""


@dataclass
class Ranking:
    """A reranked list: ``ids`` best first with their final ``scores`` (strictly in that order).

    ``rerank_scores`` maps the ids the LLM scored to their rerank score in 0..1; ``reranked`` lists
    those ids and ``fallback`` the others, which kept their retriever order (both in ranked order).
    """

    query: str
    method: str
    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    rerank_scores: dict[str, float] = field(default_factory=dict)
    reranked: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace)
    signals: dict[str, dict[str, float]] = field(default_factory=dict)
    """The parts of ``rerank_scores`` when a reranker fuses several, by name, each id's score in 0..1
    (groupwise with a likelihood weight: ``"groupwise"`` and ``"likelihood"``); empty otherwise."""

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(zip(self.ids, self.scores, strict=True))

    def __len__(self) -> int:
        return len(self.ids)

    def top(self, k: int) -> list[tuple[str, float]]:
        """The best ``k`` as ``(id, score)`` pairs."""
        return list(zip(self.ids[:k], self.scores[:k], strict=True))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)
