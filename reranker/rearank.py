"""REARANK (Zhang et al., EMNLP 2025, arXiv 2505.20046): a listwise reranker that reasons about each passage
in ``<think>`` and then answers ``<answer> [2] > [1] > [3] </answer>``; for checkpoints such as
``le723z/Rearank-7B``. Use ``ListwiseReranker(backend, prompt="rearank")`` (or ``template=rearank_template()``).

Source: the public release lezhang7/Rearank (README at commit 43071525a99d8692cadc644bb295ad0483ccc76b),
``rank_gpt.py``: ``create_permutation_instruction_rearank`` (the prompt), ``clean_response`` /
``receive_permutation`` (the parsing) and ``sliding_windows_batch`` (window 20, step 10); ``agent.py``
``QwenClient`` (greedy, ``max_tokens=2048``). The search index stores that ``rank_gpt.py`` without its
commit; the same system and instruction turns are in the training prompts of the predecessor repository
lezhang7/DeepRerank (``data/zero_shot_rerank/rerank_results_0.json`` at
a326dd883b9592125b6cc8006ed3a222478afdfb) and in the paper's appendix A.1.

The prompt text below is the release's, character for character (its missing spaces after "query." and
the 12-space indentation of the post prompt included): it is what the model was trained and evaluated on.
The chat has RankGPT's multi-turn form: system; instruction; "Okay, please provide the passages."; per
passage a user turn ``[i] text`` (whitespace collapsed, cut to 400 characters) answered by
"Received passage [i]."; then the post prompt. Documents are cut here, after ``max_doc_chars``, so
``Trace.truncated_docs`` does not count this cut.

Deliberate differences from the release:

- Parsing (``parse_rearank``): the release reads the FIRST closed ``<answer>...</answer>`` anywhere, even
  one echoed inside the thinking; without one, every number after the last ``</think>``, which is the whole
  completion when the thinking was cut off (passage numbers and years in the reasoning included). Here
  closed ``<think>`` blocks are dropped first; the last answer outside them counts (an unclosed one runs to
  the end, also after an unclosed ``<think>``); without any answer tag, ``parse_permutation`` applies (text
  after ``</think>``; nothing when the thinking never ended, so the window keeps its order). As in the
  release, duplicates keep their first place, unknown ids are ignored and missing ones follow in their
  window order.
- Windows: ``scoring.window_starts`` always ends with a window at the top; the release's loop skips the top
  when ``n - 20`` is not a multiple of 10 (25 candidates: one window, at 5) and runs none below 20.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from grouprank.errors import InputError
from reranker.backends.base import Messages
from reranker.base import check_number
from reranker.parsing import PermutationParse, parse_permutation
from reranker.prompts import PromptTemplate

REARANK_SYSTEM = (
    "You are DeepRerank, an intelligent assistant that can rank passages based on their relevancy to the "
    "search query. You first thinks about the reasoning process in the mind and then provides the user with "
    "the answer."
)
REARANK_INSTRUCTION = (
    "I will provide you with passages, each indicated by number identifier []. Rank the passages based on "
    "their relevance to the search query.Search Query: {query}. \nRank the {num} passages above based on "
    "their relevance to the search query.The passages should be listed in descending order using "
    "identifiers. The most relevant passages should be listed first. The output format should be "
    "<answer> [] > [] </answer>, e.g., <answer> [1] > [2] </answer>."
)
REARANK_POST = (
    'Please rank these passages according to their relevance to the search query: "{query}"\n'
    "            Follow these steps exactly:\n"
    "            1. First, within <think> tags, analyze EACH passage individually:\n"
    "            - Evaluate how well it addresses the query\n"
    "            - Note specific relevant information or keywords\n"
    "\n"
    "            2. Then, within <answer> tags, provide ONLY the final ranking in descending order of "
    "relevance using the format: [X] > [Y] > [Z]"
)
REARANK_ACK = "Okay, please provide the passages."
REARANK_RECEIVED = "Received passage [{i}]."

_PLACEHOLDERS = {"query", "num"}
_NUMBERED = re.compile(r"^\[\d+\] ")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S | re.I)


@dataclass(frozen=True)
class RearankTemplate(PromptTemplate):
    """The release's multi-turn listwise chat (module docstring). ``system``, ``user`` (the instruction) and
    ``post`` are ``str.format`` strings with ``{query}`` and ``{num}``; ``passage_chars`` cuts each passage
    (None: no cut); ``max_new_tokens`` is the reasoning-plus-answer budget the listwise reranker uses."""

    system: str = REARANK_SYSTEM
    user: str = REARANK_INSTRUCTION
    kind: str = "listwise"
    post: str = REARANK_POST
    passage_chars: int | None = 400
    max_new_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.kind != "listwise":
            raise InputError(f"a REARANK template is listwise, not {self.kind!r}", field="kind")
        for name in ("system", "user", "post"):
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            except ValueError as exc:
                raise InputError(f"not a valid format string ({exc})", field=name) from exc
            if fields - _PLACEHOLDERS:
                raise InputError(
                    f"unknown placeholder(s) {sorted(fields - _PLACEHOLDERS)}; use {{query}}, {{num}}", field=name
                )
        check_number(self.max_new_tokens, "max_new_tokens", 1, integer=True)
        if self.passage_chars is not None:
            check_number(self.passage_chars, "passage_chars", 1, integer=True)

    def messages(self, query: str, texts: Sequence[str]) -> Messages:
        """The chat ordering one window of documents."""
        values = {"query": query, "num": len(texts)}
        chat = [{"role": "system", "content": self.system.format(**values)}] if self.system else []
        chat += [{"role": "user", "content": self.user.format(**values)}, {"role": "assistant", "content": REARANK_ACK}]
        for i, text in enumerate(texts, 1):
            chat.append({"role": "user", "content": f"[{i}] {' '.join(text.split())[: self.passage_chars]}"})
            chat.append({"role": "assistant", "content": REARANK_RECEIVED.format(i=i)})
        chat.append({"role": "user", "content": self.post.format(**values)})
        if self.answer_prefix:
            chat.append({"role": "assistant", "content": self.answer_prefix})
        return chat

    def render(self, **values: object) -> Messages:
        """``messages`` for ``prompts.listwise_messages``, whose ``documents`` are ``[i] text`` lines."""
        documents, num = str(values["documents"]), values["num"]
        lines = documents.split("\n") if documents else []
        if len(lines) != num:
            raise InputError(f"{num} passages need {num} one-line '[i] text' entries", field="documents")
        return self.messages(str(values["query"]), [_NUMBERED.sub("", line, count=1) for line in lines])


def rearank_template() -> RearankTemplate:
    """The REARANK release's prompt (for ``ListwiseReranker(template=...)``)."""
    return RearankTemplate()


def parse_rearank(text: str, n: int) -> PermutationParse:
    """A REARANK answer as a full permutation of ``1..n``: the last ``<answer>`` outside closed ``<think>``
    blocks (unclosed: up to the end), else ``parse_permutation`` of the whole text. Never raises."""
    if not isinstance(text, str):
        text = ""
    answers = _ANSWER.findall(_THINK_BLOCK.sub(" ", text))
    return parse_permutation(f"<answer>{answers[-1]}</answer>" if answers else text, n)
