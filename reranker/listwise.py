"""Listwise baseline: RankGPT's sliding window over the candidates, from the bottom up; RankGPT's prompt or
REARANK's reasoning prompt (``reranker.rearank``)."""

from __future__ import annotations

from grouprank.errors import InputError
from grouprank.progress import progress_bar
from reranker.backends.base import Backend, GenerationConfig
from reranker.base import Job, Reranker, check_number
from reranker.parsing import parse_permutation
from reranker.prompts import PromptTemplate, listwise_messages, listwise_template
from reranker.rearank import RearankTemplate, parse_rearank, rearank_template
from reranker.scoring import Fused, window_starts

LISTWISE_PROMPTS = ("rankgpt", "rearank")


class ListwiseReranker(Reranker):
    """The LLM orders a window of ``window`` documents (answer ``[2] > [1] > ...``); the window moves up
    by ``stride`` from the bottom of the list to the top (``scoring.window_starts``), so good documents
    climb. Windows depend on the previous one: each round is one ``generate`` call holding that round's
    window of every request, and the critical-path depth is the number of windows (100 candidates: 9).

    The result is an order, not scores: a document at rank ``r`` of ``n`` scores ``(n - r) / n``. Documents
    that were in no successfully answered window keep their place and are listed in ``Ranking.fallback``
    (``weight`` and ``fallback`` do not apply). At the deadline the remaining windows are not run.

    ``prompt``: ``"rankgpt"`` (default) or ``"rearank"``, the REARANK release's reasoning prompt and answer
    parsing with its 2048-token budget (``reranker.rearank``); a ``template`` given explicitly wins.
    """

    method = "listwise"

    def __init__(
        self, backend: Backend, *, window: int = 20, stride: int = 10, prompt: str = "rankgpt", **options
    ) -> None:
        check_number(window, "window", 2, integer=True)
        check_number(stride, "stride", 1, window, integer=True)
        if prompt not in LISTWISE_PROMPTS:
            raise InputError(f"unknown listwise prompt {prompt!r} (choose from {', '.join(LISTWISE_PROMPTS)})",
                             field="prompt")
        self.window, self.stride, self.prompt = window, stride, prompt
        self.template = options.get("template") or self.default_template()  # default_generation reads it
        super().__init__(backend, **options)

    def default_template(self) -> PromptTemplate:
        return rearank_template() if self.prompt == "rearank" else listwise_template()

    def default_generation(self) -> GenerationConfig:
        if isinstance(self.template, RearankTemplate):  # room for the reasoning, as the release
            return GenerationConfig(max_new_tokens=self.template.max_new_tokens)
        return GenerationConfig(max_new_tokens=16 + 6 * self.window)  # "[12] > " is about 5 tokens

    def _score(self, jobs: list[Job], deadline: float | None) -> int:
        seen: dict[int, set[int]] = {}
        for job in jobs:
            job.order, seen[id(job)] = list(range(len(job.candidates))), set()
        plans = [(job, window_starts(len(job.candidates), self.window, self.stride)) for job in jobs]
        rounds = max((len(starts) for _, starts in plans), default=0)
        parser = parse_rearank if isinstance(self.template, RearankTemplate) else parse_permutation
        depth = 0
        with progress_bar("listwise windows", rounds) as bar:
            for r in range(rounds):
                active = [(job, starts[r], len(starts)) for job, starts in plans if r < len(starts)]
                if self.backend.expired(deadline):
                    for job, _, total in active:
                        job.trace.errors.append(f"deadline: windows {r + 1}-{total} of {total} not run")
                    break
                windows = [job.order[s : s + self.window] for job, s, _ in active]
                prompts = [
                    listwise_messages(job.query, [job.texts[i] for i in window], self.template)
                    for (job, _, _), window in zip(active, windows, strict=True)
                ]
                owners = [(job, f"window {r + 1} of {total}") for job, _, total in active]
                completions = self._generate(prompts, owners, deadline)
                depth += 1
                for (job, s, _), window, completion in zip(active, windows, completions, strict=True):
                    if completion.error is not None:
                        continue
                    parse = parser(completion.text, len(window))
                    job.trace.parse_failures += not parse.ok
                    if parse.given:
                        job.order[s : s + len(window)] = [window[p - 1] for p in parse.order]
                        seen[id(job)].update(window)
                bar.advance()
        for job in jobs:
            n = len(job.candidates)
            job.rerank = {i: (n - rank) / n for rank, i in enumerate(job.order) if i in seen[id(job)]}
        return depth

    def _fuse(self, job: Job) -> Fused:
        order, n = job.order, len(job.order)
        return Fused(
            order=order,
            scores=[(n - rank) / n for rank in range(n)],
            fallback=[i for i in order if i not in job.rerank],
        )
