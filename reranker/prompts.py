"""Prompts for groupwise (GroupRank), pointwise and listwise (RankGPT) reranking.

The groupwise prompt follows the GroupRank reference release (AQ-MedAI/Diver, ``Reranker/
rerank_groupwise.py``): a system rubric of 0-10 usefulness/relevance bands, the query, documents as
``[i]. text`` and an answer of integer scores as JSON keyed by ``"[i]"``, after a ``<reason>`` block when
``reasoning=True``. Two rubrics share that format:

- ``concise`` (the default): the six bands in a few words each, about 150 tokens of instructions;
- ``reference``: the release's own wording (evaluation priority, process and bands, about 450 tokens),
  for GroupRank checkpoints trained on exactly that prompt.

Every prompt repeats its instructions once per group, so the rubric is paid ``ceil(N / G)`` times per
query; the concise one keeps a group of 20 MS MARCO passages under 0.6x the tokens of the RankGPT window
covering the same passages twice. The listwise prompt keeps RankGPT's answer format ``[2] > [1] > [3]``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from grouprank.errors import InputError
from reranker.backends.base import Messages
from reranker.types import Candidate

# Placeholders each kind of template must contain (in its system or user text), and may contain.
REQUIRED_PLACEHOLDERS = {
    "groupwise": {"query", "documents"},
    "pointwise": {"query", "document"},
    "listwise": {"query", "documents"},
}
ALLOWED_PLACEHOLDERS = {
    "groupwise": {"query", "documents", "num"},
    "pointwise": {"query", "document"},
    "listwise": {"query", "documents", "num"},
}


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt: ``system`` and ``user`` are ``str.format`` strings (literal braces doubled).

    Placeholders: ``{query}``, ``{documents}`` (the numbered documents) and ``{num}`` (how many) for
    groupwise and listwise; ``{query}`` and ``{document}`` for pointwise. Validated on creation.
    ``answer_prefix`` (literal text, no placeholders) starts the model's answer: it is sent as an open
    assistant turn that the backend continues (prefill), which keeps small models on the JSON format.
    """

    system: str
    user: str
    kind: str = "groupwise"
    answer_prefix: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REQUIRED_PLACEHOLDERS:
            raise InputError(f"unknown template kind {self.kind!r}", field="kind")
        found: set[str] = set()
        for name in ("system", "user"):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None]
            except ValueError as exc:
                raise InputError(
                    f"not a valid format string ({exc}); double literal braces", field=name
                ) from exc
            for f in fields:
                if f not in ALLOWED_PLACEHOLDERS[self.kind]:
                    allowed = ", ".join("{" + p + "}" for p in sorted(ALLOWED_PLACEHOLDERS[self.kind]))
                    raise InputError(
                        f"unknown placeholder {{{f}}} in the {self.kind} template (allowed: {allowed})",
                        field=name,
                    )
            found.update(fields)
        missing = REQUIRED_PLACEHOLDERS[self.kind] - found
        if missing:
            names = ", ".join("{" + p + "}" for p in sorted(missing))
            raise InputError(f"the {self.kind} template lacks the placeholder(s) {names}", field="user")

    def render(self, **values: object) -> Messages:
        """The chat messages; the system message is left out when ``system`` is empty."""
        messages = [{"role": "system", "content": self.system.format(**values)}] if self.system else []
        messages.append({"role": "user", "content": self.user.format(**values)})
        if self.answer_prefix:
            messages.append({"role": "assistant", "content": self.answer_prefix})
        return messages

    def without_prefix(self) -> PromptTemplate:
        """The same prompt with the model writing its whole answer (e.g. for training data)."""
        return replace(self, answer_prefix="")


SCORING_SCALE = """Scoring Scale (0-10):
- 9-10: Extremely helpful, directly answers the query with actionable information
- 7-8: Very helpful, provides substantial useful information for the query
- 5-6: Moderately helpful, contains some useful information but incomplete
- 3-4: Minimally helpful, limited useful information despite topic relevance
- 1-2: Barely helpful, mentions related topics but provides little useful information
- 0: Not helpful at all, cannot assist with answering the query
"""

GROUPWISE_SYSTEM = (
    """Your task is to evaluate and rank documents based on how well they help answer the given query. \
Follow this evaluation priority:
1. PRIMARY: Usefulness & Helpfulness - Does the document provide actionable information, solutions, \
or direct answers that help address the user's needs?
2. SECONDARY: Relevance - Does the document contain information related to the query topic?

Evaluation Process:
1. First, identify the user's core intent and what kind of help they need from the query
2. For each document, assess:
   - How directly it addresses the user's intent
   - What actionable information or answers it provides
   - How much it helps solve the user's problem or need
3. Compare documents against each other to ensure proper ranking
4. Assign scores that reflect the relative usefulness ranking

"""
    + SCORING_SCALE
)

CONCISE_SYSTEM = """Score how useful and relevant each document is to the query, comparing the documents \
with each other.
Scale (0-10):
- 9-10: directly answers the query
- 7-8: substantial useful information
- 5-6: some useful information, incomplete
- 3-4: on topic, little useful information
- 1-2: mentions related topics only
- 0: not helpful
"""

CONCISE_USER_DIRECT = """Query: {query}

Documents:
{documents}

Answer with JSON only: keys "[1]" to "[{num}]", one integer score 0-10 for each of the {num} documents, \
like {{"[1]": 4, "[2]": 9, ..., "[{num}]": 0}}
"""

CONCISE_USER_REASONING = """Query: {query}

Documents:
{documents}

First reason briefly inside <reason> </reason>, then answer inside <answer> </answer> with JSON: keys \
"[1]" to "[{num}]", one integer score 0-10 for each of the {num} documents, like \
<answer>{{"[1]": 4, "[2]": 9, ..., "[{num}]": 0}}</answer>
"""

_GROUPWISE_HEAD = """I will provide you {num} documents, each indicated by a numerical identifier []. \
Score these documents based on their Usefulness and Relevance to the query.
Query:
{query}

Documents:
{documents}

## Final Output Format
"""

_JSON_EXAMPLE = '```json\n{{"[1]": 5, "[2]": 3, "[3]": 8}}\n```'

GROUPWISE_USER_REASONING = (
    _GROUPWISE_HEAD
    + """You must structure your response in exactly two parts: provide your brief reasoning process \
first, then output final scores in JSON format like below, with document IDs as string keys and integer \
scores as values for all {num} documents.
The reasoning process and answer are enclosed within <reason> </reason> and <answer> </answer> tags, \
respectively. Do NOT output anything outside the specified tags. Follow this exact format:
<reason>
[Analyze each document's usefulness and relevance to the query, explaining your scoring rationale]
</reason>
<answer>
"""
    + _JSON_EXAMPLE
    + "\n</answer>\n"
)

GROUPWISE_USER_DIRECT = (
    _GROUPWISE_HEAD
    + """Output the final scores in JSON format like below, with document IDs as string keys and \
integer scores from 0 to 10 as values for all {num} documents. Output only the JSON, no reasoning and \
no other text:
"""
    + _JSON_EXAMPLE
    + "\n"
)

POINTWISE_SYSTEM = (
    "Your task is to judge how well a document helps answer the given query: first its usefulness "
    "(actionable information or direct answers), then its relevance to the query topic.\n\n" + SCORING_SCALE
)

POINTWISE_USER = """Query:
{query}

Document:
{document}

Score the document's usefulness and relevance to the query. The answer should be 'Relevance score: X' \
where X is an integer from 0 to 10. Don't output anything else.
"""

POINTWISE_USER_JSON = """Query:
{query}

Document:
{document}

Score the document's usefulness and relevance to the query. Answer in JSON like {{"score": X}} where \
X is an integer from 0 to 10. Don't output anything else.
"""

LISTWISE_SYSTEM = (
    "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
)

LISTWISE_USER = """I will provide you with {num} passages, each indicated by number identifier [].
Rank the passages based on their relevance to query: {query}

{documents}

Search Query: {query}
Rank the {num} passages above based on their relevance to the search query. The passages should be \
listed in descending order using identifiers. The most relevant passages should be listed first. The \
output format should be [] > [], e.g., [2] > [1] > [3]. Only respond with the ranking results, do not \
say any word or explain.
"""


RUBRICS = ("concise", "reference")
ANSWER_PREFIX = '{"[1]":'
"""The concise direct prompt's prefill: the answer is JSON from its first token."""


def groupwise_template(reasoning: bool = False, rubric: str = "concise") -> PromptTemplate:
    """The GroupRank prompt with the ``concise`` or the release's ``reference`` rubric (see the module
    docstring); ``reasoning=False`` asks for the JSON directly (what small models manage)."""
    if rubric == "concise":
        if reasoning:
            return PromptTemplate(CONCISE_SYSTEM, CONCISE_USER_REASONING, "groupwise", "<reason>")
        return PromptTemplate(CONCISE_SYSTEM, CONCISE_USER_DIRECT, "groupwise", ANSWER_PREFIX)
    if rubric == "reference":
        user = GROUPWISE_USER_REASONING if reasoning else GROUPWISE_USER_DIRECT
        return PromptTemplate(GROUPWISE_SYSTEM, user, "groupwise")
    raise InputError(f"unknown rubric {rubric!r} (choose from {', '.join(RUBRICS)})", field="rubric")


def pointwise_template(json_answer: bool = False) -> PromptTemplate:
    """One document, answered ``Relevance score: X`` (or ``{"score": X}`` with ``json_answer``)."""
    return PromptTemplate(
        POINTWISE_SYSTEM, POINTWISE_USER_JSON if json_answer else POINTWISE_USER, "pointwise"
    )


def listwise_template() -> PromptTemplate:
    """RankGPT's permutation prompt, as one user message."""
    return PromptTemplate(LISTWISE_SYSTEM, LISTWISE_USER, "listwise")


_NEWLINES = re.compile(r"\s*\n\s*")


def document_text(candidate: Candidate) -> str:
    """Title and text on one line: every run of whitespace holding a newline becomes one space."""
    text = f"{candidate.title}: {candidate.text}" if candidate.title else candidate.text
    return _NEWLINES.sub(" ", text).strip()


@dataclass(frozen=True)
class Truncator:
    """Cuts a document to ``max_chars`` characters, then to ``max_tokens`` tokens under ``count_tokens``
    (the backend's tokenizer). Either limit may be None (no limit)."""

    max_chars: int | None = 3000
    max_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        for name in ("max_chars", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"must be a positive integer or None, got {value!r}", field=name)
        if self.max_tokens is not None and self.count_tokens is None:
            raise InputError("a token limit needs a tokenizer (count_tokens)", field="max_tokens")

    def __call__(self, text: str) -> tuple[str, bool]:
        """``(text, was_truncated)``."""
        cut = False
        if self.max_chars is not None and len(text) > self.max_chars:
            text, cut = text[: self.max_chars], True
        if self.max_tokens is not None and self.count_tokens and self.count_tokens(text) > self.max_tokens:
            # Longest prefix (in characters) that fits: binary search over its length.
            lo, hi = 0, len(text)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.count_tokens(text[:mid]) <= self.max_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            text, cut = text[:lo], True
        return text, cut


def number_documents(texts: Sequence[str], listwise: bool = False) -> str:
    """``[1]. text`` blocks separated by blank lines (GroupRank), or ``[1] text`` lines (RankGPT)."""
    if listwise:
        return "\n".join(f"[{i}] {t}" for i, t in enumerate(texts, 1))
    return "\n\n".join(f"[{i}]. {t}" for i, t in enumerate(texts, 1))


def groupwise_messages(query: str, texts: Sequence[str], template: PromptTemplate | None = None) -> Messages:
    """The prompt scoring one group of (already truncated) document texts."""
    template = template or groupwise_template()
    return template.render(query=query, documents=number_documents(texts), num=len(texts))


def pointwise_messages(query: str, text: str, template: PromptTemplate | None = None) -> Messages:
    """The prompt scoring one document."""
    return (template or pointwise_template()).render(query=query, document=text)


def listwise_messages(query: str, texts: Sequence[str], template: PromptTemplate | None = None) -> Messages:
    """The prompt ordering one window of documents."""
    template = template or listwise_template()
    return template.render(query=query, documents=number_documents(texts, listwise=True), num=len(texts))
