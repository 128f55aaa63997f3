"""GroupRank: score groups of documents together, average over repeats, fuse with the retriever."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from grouprank.errors import InputError
from reranker.backends.base import Backend, GenerationConfig, Messages
from reranker.base import Job, Reranker, check_decoding, check_number
from reranker.parsing import parse_group_scores
from reranker.prompts import PromptTemplate, groupwise_messages, groupwise_template
from reranker.scoring import make_groups, mean_rerank_scores
from reranker.slots import check_feed, group_skeleton


class GroupwiseReranker(Reranker):
    """Candidates are split into groups of ``group_size`` (even sizes, see ``scoring.split_balanced``);
    the LLM gives each document of a group a 0-10 score in one answer. With ``repeats > 1`` the candidates
    are regrouped at random (seeded by ``seed``; repeat 0 keeps retriever order) and each document's
    rerank score is the mean of its scores / 10. All groups of all requests and repeats go to the backend
    in ONE ``generate`` call, so the critical-path depth is 1. ``reasoning=True`` asks for a ``<reason>``
    block before the JSON (the reference release's format; needs a capable model and more tokens).
    ``rubric`` picks the prompt's instructions: ``"concise"`` (default) or the release's ``"reference"``
    wording, for GroupRank checkpoints trained on it (see ``reranker.prompts``).

    ``decoding`` says how scores are read. ``"slots"`` feeds the JSON skeleton and takes each document's
    expected score from the model's distribution over 0..10 (``reranker.slots``: continuous scores, no
    parse failures, a fixed answer length); ``"text"`` generates the answer and parses it. ``"auto"`` (the
    default) uses slots when the prompt has no reasoning and the backend can read probabilities, and text
    otherwise; ``Trace.decoding`` says which path answered. ``slot_feed`` says what the skeleton holds
    after each slot: ``"greedy"`` (the model's own most probable score; any model) or ``"fixed"`` (a
    constant, all slots in one pass; for models trained that way, whose metadata says so).
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
        decoding: str = "auto",
        slot_feed: str = "greedy",
        **options,
    ) -> None:
        check_number(group_size, "group_size", 1, integer=True)
        check_number(repeats, "repeats", 1, integer=True)
        check_number(seed, "seed", 0, integer=True)
        self.group_size, self.repeats, self.seed, self.reasoning = group_size, repeats, seed, reasoning
        self.rubric = rubric
        check_decoding(decoding)
        if decoding == "slots" and reasoning:
            raise InputError("slot decoding reads scores without reasoning: use decoding='text'", field="decoding")
        self.decoding = decoding
        self.slot_feed = check_feed(slot_feed)
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
        return GenerationConfig(max_new_tokens=32 + 10 * self.group_size, stop=["}"])

    def _score(self, jobs: list[Job], deadline: float | None) -> int:
        prompts, owners, groups = self._prompts(jobs)
        if not prompts:
            return 0
        results = None
        if self.decoding != "text" and not self.reasoning:
            skeletons = [group_skeleton(len(g)) for g in groups]
            results = self._read_slots(prompts, owners, skeletons, deadline, required=self.decoding == "slots",
                                       feed=self.slot_feed)
        if results is None:
            results = self._read_text(prompts, owners, groups, deadline)
        answered: dict[int, list[tuple[Sequence[int], Mapping[int, float]]]] = {id(job): [] for job in jobs}
        for (job, _), group, scores in zip(owners, groups, results, strict=True):
            if scores is not None:
                answered[id(job)].append((group, scores))
        for job in jobs:
            job.rerank = mean_rerank_scores(answered[id(job)])
        return 1

    def _prompts(self, jobs: list[Job]) -> tuple[list[Messages], list[tuple[Job, str]], list[list[int]]]:
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
        return prompts, owners, groups

    def _read_text(
        self, prompts: list[Messages], owners: list[tuple[Job, str]], groups: list[list[int]], deadline: float | None
    ) -> list[Mapping[int, float] | None]:
        """Parsed scores of generated answers. Generation stops after the JSON, or at the key after the
        largest group actually sent (a model that keeps counting)."""
        largest = max(len(g) for g in groups)
        config = replace(self.generation, stop=[*self.generation.stop, f'"[{largest + 1}]"'])
        if not self.reasoning:
            config.max_new_tokens = min(config.max_new_tokens, 32 + 10 * largest)
        completions = self._generate(prompts, owners, deadline, config)
        results: list[Mapping[int, float] | None] = []
        for (job, _), group, completion in zip(owners, groups, completions, strict=True):
            job.trace.decoding = "text"
            if completion.error is not None:
                results.append(None)
                continue
            parse = parse_group_scores(completion.text, len(group), complete=completion.finish_reason == "stop")
            job.trace.parse_failures += not parse.ok
            results.append(parse.scores)
        return results
