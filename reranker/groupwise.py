"""GroupRank: score groups of documents together, average over repeats, fuse with the retriever."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from grouprank.errors import InputError
from reranker.backends.base import Backend, GenerationConfig, Messages
from reranker.base import Job, Reranker, check_decoding, check_number
from reranker.likelihood import likelihood_prompt, mix, mix_signals, query_continuation, unit_scores
from reranker.parsing import parse_group_scores
from reranker.prompts import PromptTemplate, groupwise_messages, groupwise_template
from reranker.scoring import Fused, fuse, make_groups, mean_rerank_scores
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

    ``decoding`` says how scores are read. ``"readout"`` (for models trained on it, whose metadata
    sets it): every document of a group is read in ONE forward pass, at a read-out position right
    after the document (``reranker.readout``), with the query (``query_after``) repeated after each
    document; the pass needs no generation. ``"slots"`` feeds the JSON skeleton and takes each document's
    expected score from the model's distribution over 0..10 (``reranker.slots``: continuous scores, no
    parse failures, a fixed answer length); ``"text"`` generates the answer and parses it. ``"auto"`` (the
    default) uses slots when the prompt has no reasoning and the backend can read probabilities, and text
    otherwise; ``Trace.decoding`` says which path answered. ``slot_feed`` says what the skeleton holds
    after each slot: ``"greedy"`` (the model's own most probable score; any model) or ``"fixed"`` (a
    constant, all slots in one pass; for models trained that way, whose metadata says so).

    ``likelihood_weight`` (0..1, default 0) fuses each document's query likelihood (``reranker.likelihood``:
    the mean log-probability of the query after the document, min-max scaled per query) into its rerank
    score: ``(1 - w) * groupwise + w * likelihood``. It costs one more forward pass per document, batched
    with the rest (at ``w = 1`` the groupwise prompts are skipped); with a backend that cannot read it (so
    far only ``transformers`` can) the groupwise scores stand alone and ``trace.likelihood`` is False.
    ``Ranking.signals`` keeps both parts. ``weight_without_likelihood`` (a model's metadata gives it) is the
    fusion ``weight`` to use instead when the likelihood could not be read: weights calibrated for the mix
    do not suit the groupwise scores alone.
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
        likelihood_weight: float = 0.0,
        weight_without_likelihood: float | None = None,
        query_after: bool = True,
        **options,
    ) -> None:
        check_number(likelihood_weight, "likelihood_weight", 0.0, 1.0)
        if weight_without_likelihood is not None:
            check_number(weight_without_likelihood, "weight_without_likelihood", 0.0, 1.0)
        self.likelihood_weight = float(likelihood_weight)
        self.weight_without_likelihood = weight_without_likelihood
        check_number(group_size, "group_size", 1, integer=True)
        check_number(repeats, "repeats", 1, integer=True)
        check_number(seed, "seed", 0, integer=True)
        self.group_size, self.repeats, self.seed, self.reasoning = group_size, repeats, seed, reasoning
        self.rubric = rubric
        check_decoding(decoding)
        if decoding == "slots" and reasoning:
            raise InputError("slot decoding reads scores without reasoning: use decoding='text'", field="decoding")
        if decoding == "readout" and reasoning:
            raise InputError("the read-out scores without reasoning: use decoding='text'", field="decoding")
        self.decoding = decoding
        self.query_after = bool(query_after)
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
        if self.decoding == "readout":
            return self._score_readout(jobs, deadline)
        if self.likelihood_weight >= 1.0 and self._fuse_likelihood(jobs, deadline):
            return 1  # the groupwise part would get no weight: its prompts are skipped
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
        if 0.0 < self.likelihood_weight < 1.0:
            self._fuse_likelihood(jobs, deadline)
        return 1

    def _score_readout(self, jobs: list[Job], deadline: float | None) -> int:
        """The inline read-out (``reranker.readout``): every group of every request and repeat in one
        backend call, one prefill per group. With ``query_after`` the same pass reads each document's
        query likelihood in context, mixed in with ``likelihood_weight`` (``mix_signals``)."""
        groups: list[tuple[str, list[str]]] = []
        owners: list[tuple[Job, list[int]]] = []
        for job in jobs:
            for round_groups in make_groups(len(job.candidates), self.group_size, self.repeats, self.seed):
                for group in round_groups:
                    groups.append((job.query, [job.texts[i] for i in group]))
                    owners.append((job, group))
        if not groups:
            return 0
        try:
            answers = self.backend.score_readout(groups, deadline, query_after=self.query_after,
                                                 likelihood=self.likelihood_weight > 0.0)
        except NotImplementedError as exc:
            raise InputError(f"{exc}: serve this model with backend='transformers'", field="backend") from None
        scored: dict[int, list[tuple[Sequence[int], Mapping[int, float]]]] = {id(job): [] for job in jobs}
        likely: dict[int, list[tuple[Sequence[int], Mapping[int, float]]]] = {id(job): [] for job in jobs}
        for (job, group), answer in zip(owners, answers, strict=True):
            job.trace.decoding = "readout"
            job.trace.llm_calls += 1
            job.trace.prompt_tokens += answer.prompt_tokens
            if answer.error is not None:
                job.trace.errors.append(f"group of {len(group)}: {answer.error}")
            if answer.scored:
                scored[id(job)].append((group, answer.scores))
            if answer.likelihoods:
                # mean_rerank_scores divides by 10: scale up so a mean log-probability survives unchanged
                likely[id(job)].append((group, {k: 10.0 * v for k, v in answer.likelihood.items()}))
        for job in jobs:
            readout = mean_rerank_scores(scored[id(job)])
            likelihood = mean_rerank_scores(likely[id(job)])
            job.trace.likelihood = bool(likelihood)
            job.signals = {"groupwise": readout}
            if likelihood:
                job.signals["likelihood"] = unit_scores(likelihood)
            job.rerank = mix_signals(readout, job.signals.get("likelihood", {}), self.likelihood_weight)
        return 1

    def _fuse(self, job: Job) -> Fused:
        if self.likelihood_weight > 0.0 and not job.trace.likelihood and self.weight_without_likelihood is not None:
            return fuse(len(job.candidates), job.rerank, job.retriever_scores, self.weight_without_likelihood,
                        self.fallback, job.dense_scores, self.dense_weight)
        return super()._fuse(job)

    def _fuse_likelihood(self, jobs: list[Job], deadline: float | None) -> bool:
        """Read every candidate's query likelihood in one backend call and mix it into ``job.rerank``.
        False when the backend cannot read likelihoods (the groupwise scores stand; ``trace.likelihood``
        stays False)."""
        pairs = [(job, i) for job in jobs for i in range(len(job.candidates))]
        try:
            values = self.backend.score_likelihood([likelihood_prompt(job.texts[i]) for job, i in pairs],
                                                   [query_continuation(job.query) for job, _ in pairs], deadline)
        except NotImplementedError:
            return False
        read: dict[int, dict[int, float]] = {id(job): {} for job in jobs}
        for (job, i), value in zip(pairs, values, strict=True):
            job.trace.llm_calls += 1  # one likelihood row per document: every prompt counts
            job.trace.prompt_tokens += value.prompt_tokens + value.tokens
            if value.mean_logprob is not None:
                read[id(job)][i] = value.mean_logprob
            elif value.error:
                job.trace.errors.append(f"likelihood of document {i + 1}: {value.error}")
        for job in jobs:
            likelihood = read[id(job)]
            if not likelihood:
                continue
            job.trace.likelihood = True
            job.trace.decoding = job.trace.decoding or "likelihood"  # the likelihood alone answered
            job.signals = {"groupwise": dict(job.rerank)} if job.rerank else {}
            job.signals["likelihood"] = unit_scores(likelihood)
            job.rerank = mix(job.rerank, likelihood, self.likelihood_weight)
        return True

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
