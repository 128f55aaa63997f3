"""Pointwise baseline: one prompt per document, a 0-10 score, fused like GroupRank."""

from __future__ import annotations

from grouprank.errors import InputError
from reranker.backends.base import Backend, GenerationConfig, Messages
from reranker.base import Job, Reranker, check_decoding
from reranker.parsing import parse_point_score
from reranker.prompts import PromptTemplate, pointwise_messages, pointwise_template
from reranker.slots import POINT_SKELETON


class PointwiseReranker(Reranker):
    """Each document is scored alone (``Relevance score: X``, or ``{"score": X}`` with ``json_answer``);
    rerank score = score / 10, fused with the retriever like GroupRank. All documents of all requests go
    to the backend in one call (critical-path depth 1). ``decoding`` as for GroupRank: ``"auto"`` reads the
    expected score at the ``Relevance score: `` slot when the backend can (``reranker.slots``)."""

    method = "pointwise"

    def __init__(self, backend: Backend, *, json_answer: bool = False, decoding: str = "auto", **options) -> None:
        check_decoding(decoding)
        if decoding == "readout":
            raise InputError("the read-out is groupwise: use the groupwise reranker", field="decoding")
        if decoding == "slots" and json_answer:
            raise InputError("slot decoding reads the 'Relevance score: X' answer: use json_answer=False",
                             field="decoding")
        self.json_answer, self.decoding = json_answer, decoding
        super().__init__(backend, **options)

    def default_template(self) -> PromptTemplate:
        return pointwise_template(self.json_answer)

    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=24)

    def _score(self, jobs: list[Job], deadline: float | None) -> int:
        prompts: list[Messages] = []
        owners: list[tuple[Job, str]] = []
        docs: list[int] = []
        for job in jobs:
            for i, text in enumerate(job.texts):
                prompts.append(pointwise_messages(job.query, text, self.template))
                owners.append((job, f"document {job.candidates[i].id!r}"))
                docs.append(i)
        if not prompts:
            return 0
        if self.decoding != "text" and not self.json_answer:
            slots = self._read_slots(prompts, owners, [POINT_SKELETON] * len(prompts), deadline,
                                     required=self.decoding == "slots")
            if slots is not None:
                for (job, _), i, scores in zip(owners, docs, slots, strict=True):
                    if scores:
                        job.rerank[i] = scores[1] / 10.0
                return 1
        completions = self._generate(prompts, owners, deadline)
        for (job, _), i, completion in zip(owners, docs, completions, strict=True):
            job.trace.decoding = "text"
            if completion.error is not None:
                continue
            score = parse_point_score(completion.text)
            if score is None:
                job.trace.parse_failures += 1
            else:
                job.rerank[i] = score / 10.0
        return 1
