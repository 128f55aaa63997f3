"""The interface every LLM backend implements: chat prompts in, completions out."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from reranker.likelihood import Likelihood
from reranker.readout import ReadoutAnswer
from reranker.slots import SlotAnswer

Messages = list[dict[str, str]]
"""One chat prompt: ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]``.

A trailing ``assistant`` message is an *answer prefix* (prefill): the model continues it instead of
starting a new turn, and the completion's ``text`` starts with it, so callers parse one whole answer.
"""


def answer_prefix(messages: Messages) -> str:
    """The prefill a prompt ends with (its trailing assistant message), or ``""``."""
    return messages[-1].get("content", "") if messages and messages[-1].get("role") == "assistant" else ""


@dataclass
class GenerationConfig:
    """Decoding parameters. Greedy by default (``temperature == 0``)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Completion:
    """One generated answer. ``error`` is set (and ``text`` empty) when this prompt failed or timed out.
    ``finish_reason``: ``"stop"`` (end of sequence or a stop string), ``"length"`` (``max_new_tokens``
    reached) or None (unknown)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    finish_reason: str | None = None


class Backend(ABC):
    """An LLM that completes batches of chat prompts.

    ``generate`` must return one Completion per prompt, in order, and never raise for a single
    prompt's failure: it reports it in ``Completion.error``. ``deadline`` is an absolute
    ``time.monotonic()`` value; prompts not finished by then come back with ``error="deadline"``.
    """

    name: str = "backend"
    model: str = ""

    @abstractmethod
    def generate(
        self, prompts: list[Messages], config: GenerationConfig, deadline: float | None = None
    ) -> list[Completion]: ...

    def score_slots(
        self, prompts: list[Messages], skeletons: list[list[str]], deadline: float | None = None,
        feed: str = "greedy",
    ) -> list[SlotAnswer]:
        """Slot decoding (``reranker.slots``): for prompt ``i``, the distribution of the score 0..10 at each
        slot of the answer skeleton ``skeletons[i]`` (the texts before each score, e.g.
        ``group_skeleton(3)``), with ``feed`` ("greedy" or "fixed") after each slot. A prompt's own answer
        prefix is replaced by the skeleton. Like ``generate``
        it never raises for one prompt's failure. Backends that cannot read token probabilities raise
        NotImplementedError for the whole call; rerankers then use the text path."""
        raise NotImplementedError(f"the {self.name} backend does not read score probabilities")

    def score_likelihood(
        self, prompts: list[str], continuations: list[str], deadline: float | None = None
    ) -> list[Likelihood]:
        """For each ``i``, the mean log-probability of ``continuations[i]``'s tokens after the plain text
        ``prompts[i]`` (no chat template; see ``reranker.likelihood``). Never raises for one pair's failure.
        Backends that cannot read prompt token probabilities raise NotImplementedError for the whole call;
        rerankers then go without the likelihood (the trace says so)."""
        raise NotImplementedError(f"the {self.name} backend does not read query likelihoods")

    def score_readout(
        self, groups: list[tuple[str, list[str]]], deadline: float | None = None, query_after: bool = True,
        likelihood: bool = False,
    ) -> list[ReadoutAnswer]:
        """The inline groupwise read-out (``reranker.readout``) of each ``(query, texts)`` group, one
        prefill per group; with ``likelihood`` (and ``query_after``) also each document's query likelihood
        in context. Never raises for one group's failure. Backends that cannot read prompt token
        probabilities raise NotImplementedError for the whole call."""
        raise NotImplementedError(f"the {self.name} backend does not read the inline read-out")

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` under this model's tokenizer."""

    @staticmethod
    def expired(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline


def prepend_prefixes(prompts: list[Messages], completions: list[Completion]) -> list[Completion]:
    """Put each prompt's answer prefix in front of its (successful) completion's text."""
    for messages, completion in zip(prompts, completions, strict=True):
        prefix = answer_prefix(messages)
        if prefix and completion.error is None:
            completion.text = prefix + completion.text
    return completions
