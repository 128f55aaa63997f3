"""The Reranker interface and what all three methods share: input checks, truncation, one batched
``generate`` call with its accounting, fusion and the Ranking."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from grouprank.errors import InputError
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages
from reranker.prompts import PromptTemplate, Truncator, document_text
from reranker.scoring import FALLBACKS, Fused, fuse
from reranker.types import Candidate, CandidateLike, Ranking, RerankRequest, Trace, as_request


@dataclass
class Job:
    """One request while it is being reranked. Candidates are in retriever order; indices refer to it."""

    query: str
    candidates: list[Candidate]
    texts: list[str]
    top_k: int | None
    trace: Trace
    rerank: dict[int, float] = field(default_factory=dict)
    """Candidate index -> rerank score in 0..1, for those the LLM scored."""
    order: list[int] = field(default_factory=list)
    """The final order, for rerankers that produce one directly (listwise)."""
    signals: dict[str, dict[int, float]] = field(default_factory=dict)
    """The parts of ``rerank`` by name, for rerankers that fuse several (see ``Ranking.signals``)."""

    @property
    def retriever_scores(self) -> list[float] | None:
        if not self.candidates or self.candidates[0].score is None:
            return None
        return [c.score for c in self.candidates]  # type: ignore[misc]

    @property
    def dense_scores(self) -> list[float | None] | None:
        """The first stage's embedding similarities (None where a candidate has none), or None."""
        if not any(c.dense is not None for c in self.candidates):
            return None
        return [c.dense for c in self.candidates]


def check_number(
    value: object, name: str, low: float, high: float | None = None, integer: bool = False
) -> None:
    """Raise InputError unless ``low <= value (<= high)`` (and an int when ``integer``)."""
    kinds = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or value < low
        or (high is not None and value > high)
    ):
        want = "an integer" if integer else "a number"
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"must be {want} {bound}, got {value!r}", field=name)


DECODINGS = ("auto", "readout", "slots", "text")


def check_decoding(decoding: str) -> None:
    """Raise InputError unless ``decoding`` is one of ``DECODINGS``."""
    if decoding not in DECODINGS:
        raise InputError(f"must be one of {', '.join(DECODINGS)}, got {decoding!r}", field="decoding")


DEFAULT_MAX_DOC_CHARS = 1000
"""Where documents are cut when a model says nothing (a trained model's metadata gives its own length):
the library, the CLI and the service share it. 1,000 characters keep a group of 20 within a small model's
context and a CPU's budget."""


class Reranker(ABC):
    """Reorders a query's candidates with an LLM behind ``backend``.

    Common options: ``weight`` of the rerank score in the fused score (the rest is the min-max normalised
    retriever score; 1.0 = rerank only), ``dense_weight`` (the share of that first-stage part given to the
    candidates' ``dense`` similarities, when they carry them), ``fallback`` (``"bottom"`` or
    ``"retriever"``: where documents the LLM did not score go), ``max_doc_chars`` / ``max_doc_tokens``
    (document truncation), ``deadline_ms`` (default time budget per call), ``generation`` (decoding
    settings) and ``template``.
    """

    method = "reranker"

    def __init__(
        self,
        backend: Backend,
        *,
        weight: float = 0.6,
        dense_weight: float = 0.0,
        fallback: str = "bottom",
        max_doc_chars: int | None = DEFAULT_MAX_DOC_CHARS,
        max_doc_tokens: int | None = None,
        deadline_ms: float | None = None,
        generation: GenerationConfig | None = None,
        template: PromptTemplate | None = None,
    ) -> None:
        check_number(weight, "weight", 0.0, 1.0)
        check_number(dense_weight, "dense_weight", 0.0, 1.0)
        if fallback not in FALLBACKS:
            raise InputError(f"must be one of {', '.join(FALLBACKS)}, got {fallback!r}", field="fallback")
        if deadline_ms is not None:
            check_number(deadline_ms, "deadline_ms", 0.0)
        for name, limit in (("max_doc_chars", max_doc_chars), ("max_doc_tokens", max_doc_tokens)):
            if limit is not None:
                check_number(limit, name, 1, integer=True)
        if template is not None and template.kind != self.method:
            raise InputError(
                f"a {template.kind} template cannot drive the {self.method} reranker", field="template"
            )
        self.backend = backend
        self.weight = float(weight)
        self.dense_weight = float(dense_weight)
        self.fallback = fallback
        self.deadline_ms = deadline_ms
        self.truncator = Truncator(max_doc_chars, max_doc_tokens, backend.count_tokens)
        self.generation = generation or self.default_generation()
        self.template = template or self.default_template()

    @abstractmethod
    def default_template(self) -> PromptTemplate: ...

    @abstractmethod
    def default_generation(self) -> GenerationConfig: ...

    @abstractmethod
    def _score(self, jobs: list[Job], deadline: float | None) -> int:
        """Ask the LLM and fill ``job.rerank`` for every job; return the number of sequential
        ``generate`` rounds (the critical-path depth)."""

    def rerank(
        self,
        query: str,
        candidates: Sequence[CandidateLike],
        top_k: int | None = None,
        *,
        deadline_ms: float | None = None,
    ) -> Ranking:
        """Rerank one query's candidates (Candidates, plain strings or dicts)."""
        return self.rerank_batch([RerankRequest(query, candidates, top_k)], deadline_ms=deadline_ms)[0]

    def rerank_batch(
        self,
        requests: Sequence[RerankRequest | tuple[str, Sequence[CandidateLike]]],
        *,
        deadline_ms: float | None = None,
    ) -> list[Ranking]:
        """Rerank many queries together: the LLM work of all of them goes into the same ``generate``
        rounds. ``deadline_ms`` (default: the reranker's) bounds the whole call; documents not scored in
        time fall back to retriever order (see ``Ranking.reranked`` / ``Ranking.fallback``)."""
        start = time.monotonic()
        if deadline_ms is not None:
            check_number(deadline_ms, "deadline_ms", 0.0)
        budget = deadline_ms if deadline_ms is not None else self.deadline_ms
        deadline = start + budget / 1000.0 if budget is not None else None
        single = isinstance(requests, tuple) and bool(requests) and isinstance(requests[0], str)
        if isinstance(requests, RerankRequest) or single:
            raise InputError("rerank_batch takes a list of requests; use rerank() for one", field="requests")
        jobs = [self._prepare(as_request(r, i)) for i, r in enumerate(requests)]
        depth = self._score(jobs, deadline)
        wall_ms = (time.monotonic() - start) * 1000.0
        rankings = []
        for job in jobs:
            job.trace.critical_path_depth = depth
            job.trace.wall_ms = wall_ms
            rankings.append(self._ranking(job, self._fuse(job)))
        return rankings

    def _prepare(self, request: RerankRequest) -> Job:
        candidates: list[Candidate] = list(request.candidates)  # type: ignore[arg-type]  # validated
        if candidates and candidates[0].score is not None:
            candidates = sorted(candidates, key=lambda c: -c.score)  # type: ignore[operator]
        trace = Trace()
        texts = []
        for c in candidates:
            text, cut = self.truncator(document_text(c))
            texts.append(text)
            trace.truncated_docs += cut
        return Job(request.query, candidates, texts, request.top_k, trace)

    def _generate(
        self,
        prompts: list[Messages],
        owners: list[tuple[Job, str]],
        deadline: float | None,
        config: GenerationConfig | None = None,
    ) -> list[Completion]:
        """One ``backend.generate`` call (with ``config``, default the reranker's). ``owners[i]`` is the job
        prompt ``i`` belongs to and a label for its errors; tokens, calls and errors are booked to that
        job's trace."""
        completions = self.backend.generate(prompts, config or self.generation, deadline)
        if len(completions) != len(prompts):
            raise RuntimeError(
                f"backend {self.backend.name!r} returned {len(completions)} completions "
                f"for {len(prompts)} prompts"
            )
        for (job, label), c in zip(owners, completions, strict=True):
            job.trace.llm_calls += 1
            job.trace.prompt_tokens += c.prompt_tokens
            job.trace.completion_tokens += c.completion_tokens
            if c.error is not None:
                job.trace.errors.append(f"{label}: {c.error}")
        return completions

    def _read_slots(
        self,
        prompts: list[Messages],
        owners: list[tuple[Job, str]],
        skeletons: list[list[str]],
        deadline: float | None,
        required: bool = False,
        feed: str = "greedy",
    ) -> list[dict[int, float] | None] | None:
        """Expected scores (keyed by 1-based slot) by slot decoding, booked to each owner's trace; None
        when the backend cannot read probabilities, unless ``required``."""
        try:
            answers = self.backend.score_slots(prompts, skeletons, deadline, feed=feed)
        except NotImplementedError:
            if required:
                raise
            return None
        results: list[dict[int, float] | None] = []
        for (job, label), answer in zip(owners, answers, strict=True):
            job.trace.decoding = answer.path
            job.trace.llm_calls += 1
            job.trace.prompt_tokens += answer.prompt_tokens
            job.trace.completion_tokens += answer.completion_tokens
            if answer.error is not None:
                job.trace.errors.append(f"{label}: {answer.error}")
            results.append(answer.scores if answer.distributions else None)
        return results

    def _fuse(self, job: Job) -> Fused:
        return fuse(len(job.candidates), job.rerank, job.retriever_scores, self.weight, self.fallback,
                    job.dense_scores, self.dense_weight)

    def _ranking(self, job: Job, fused: Fused) -> Ranking:
        keep = fused.order if job.top_k is None else fused.order[: job.top_k]
        ids = [job.candidates[i].id for i in keep]
        fallback = set(fused.fallback)
        return Ranking(
            query=job.query,
            method=self.method,
            ids=ids,
            scores=fused.scores[: len(keep)],
            rerank_scores={job.candidates[i].id: job.rerank[i] for i in keep if i in job.rerank},
            reranked=[job.candidates[i].id for i in keep if i not in fallback],
            fallback=[job.candidates[i].id for i in keep if i in fallback],
            trace=job.trace,
            signals={name: {job.candidates[i].id: v for i, v in part.items()} for name, part in job.signals.items()},
        )
