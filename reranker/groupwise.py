"""GroupRank: score groups of documents together, average over repeats, fuse with the retriever."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reranker.backends.base import Backend, GenerationConfig, Messages
from reranker.base import Job, Reranker, check_number
from reranker.parsing import parse_group_scores
from reranker.prompts import PromptTemplate, groupwise_messages, groupwise_template
from reranker.scoring import make_groups, mean_rerank_scores


class GroupwiseReranker(Reranker):
    """Candidates are split into groups of ``group_size`` (even sizes, see ``scoring.split_balanced``);
    the LLM gives each document of a group a 0-10 score in one answer. With ``repeats > 1`` the candidates
    are regrouped at random (seeded by ``seed``; repeat 0 keeps retriever order) and each document's
    rerank score is the mean of its scores / 10. All groups of all requests and repeats go to the backend
    in ONE ``generate`` call, so the critical-path depth is 1. ``reasoning=True`` asks for a ``<reason>``
    block before the JSON (the reference release's format; needs a capable model and more tokens).
    ``rubric`` picks the prompt's instructions: ``"concise"`` (default) or the release's ``"reference"``
    wording, for GroupRank checkpoints trained on it (see ``reranker.prompts``).
    """

    method = "groupwise"

    def __init__(
        self,
        backend: Backend,
        *,
        group_size: int = 20,
        repeats: int = 1,
        seed: int = 0,
        reasoning: bool = False,
        rubric: str = "concise",
        **options,
    ) -> None:
        check_number(group_size, "group_size", 1, integer=True)
        check_number(repeats, "repeats", 1, integer=True)
        check_number(seed, "seed", 0, integer=True)
        self.group_size, self.repeats, self.seed, self.reasoning = group_size, repeats, seed, reasoning
        self.rubric = rubric
        groupwise_template(reasoning, rubric)  # an unknown rubric fails here, before any model work
        super().__init__(backend, **options)

    def default_template(self) -> PromptTemplate:
        return groupwise_template(self.reasoning, self.rubric)

    def default_generation(self) -> GenerationConfig:
        # About 8 tokens per '"[12]": 7, ' entry; reasoning needs room for the analysis too. Without
        # reasoning the answer is one JSON object: stop at its closing brace, or when a model that keeps
        # counting writes a key past the largest group (the parser ignores unknown keys anyway).
        if self.reasoning:
            return GenerationConfig(max_new_tokens=2048 + 10 * self.group_size)
        return GenerationConfig(max_new_tokens=32 + 10 * self.group_size, stop=["}", f'"[{self.group_size + 1}]"'])

    def _score(self, jobs: list[Job], deadline: float | None) -> int:
        prompts: list[Messages] = []
        owners: list[tuple[Job, str]] = []
        groups: list[list[int]] = []
        for job in jobs:
            rounds = make_groups(len(job.candidates), self.group_size, self.repeats, self.seed)
            for r, round_groups in enumerate(rounds):
                for g, group in enumerate(round_groups):
                    texts = [job.texts[i] for i in group]
                    prompts.append(groupwise_messages(job.query, texts, self.template))
                    owners.append((job, f"repeat {r} group {g}"))
                    groups.append(group)
        if not prompts:
            return 0
        completions = self._generate(prompts, owners, deadline)
        answered: dict[int, list[tuple[Sequence[int], Mapping[int, float]]]] = {id(job): [] for job in jobs}
        for (job, _), group, completion in zip(owners, groups, completions, strict=True):
            if completion.error is not None:
                continue
            parse = parse_group_scores(completion.text, len(group), complete=completion.finish_reason == "stop")
            job.trace.parse_failures += not parse.ok
            answered[id(job)].append((group, parse.scores))
        for job in jobs:
            job.rerank = mean_rerank_scores(answered[id(job)])
        return 1
