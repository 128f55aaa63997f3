"""The inline groupwise read-out: one forward pass scores a whole group.

One plain-text prompt holds the instructions and the query, then each document followed at once by its
own read-out position::

    Rate how well each passage answers the query, from 0 (unrelated) to 10 (a perfect answer).
    Query: what causes tides

    [1] Tides are caused by the moon.
    Query: what causes tides
    Relevance: 1

    [2] Bananas are yellow.
    ...

A document's score is read where its ``Relevance:`` line ends: the model's distribution over the next
token, restricted to the scores 0..10, gives the expected score (``reranker.slots.score_distribution``).
Where "10" is two tokens (SmolLM2, Qwen) the prompt goes on with a fixed "1" (``FIXED_SCORE``), whose
next-token probability of "0" splits P("1") into P(1) and P(10); the fixed "1" is the same after every
document, so no read-out sees an earlier score. Each document is read with the instructions, the query
and the earlier documents of its group in view (the groupwise comparison); shuffled repeats average
position out (``reranker.scoring.make_groups``).

With ``query_after=True`` (the default) the query is repeated right after each document. The read-out
then sees the query next to the document, and the log-probabilities of those query tokens are the
document's query likelihood in context (UPR's pointwise signal, ``reranker.likelihood``) from the same
pass, at no extra cost.

The layout is built token by token from pieces (``ReadoutLayout.row``), so training
(``trainer.readout_train``) and serving (``Backend.score_readout``) see the same ids at the same
positions. The maths lives in pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reranker.slots import FIXED_SCORE, ScoreTokens, expected_score, score_tokens

HEADER = "Rate how well each passage answers the query, from 0 (unrelated) to 10 (a perfect answer).\nQuery: {query}\n"
DOCUMENT = "\n[{position}] {text}"
QUERY_AFTER = "Query:"
MARKER = "Relevance: "


def clean(text: str) -> str:
    """Whitespace collapsed: a document or query is one line of the prompt."""
    return " ".join(text.split())


@dataclass
class ReadoutRow:
    """One group's prompt as token ids, with where to read it.

    ``readouts[k]``: the position whose next-token distribution is document k's score; ``ones[k]``: the
    position of the fed "1" (its next token splits "1" from "10"; -1 where every score is one token);
    ``query_spans[k]``: ``(start, end)`` of the query tokens repeated after document k (empty without
    ``query_after``), each predicted from the position before it.
    """

    ids: list[int]
    readouts: list[int]
    ones: list[int]
    query_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.readouts)


class ReadoutLayout:
    """Builds read-out rows for one tokenizer (``encode(text) -> ids``, no special tokens)."""

    def __init__(self, encode: Callable[[str], list[int]], query_after: bool = True) -> None:
        self.encode = encode
        self.query_after = query_after
        self.tokens: ScoreTokens = score_tokens(encode)
        self.fill = list(self.tokens.ids[FIXED_SCORE])
        self._marker = encode(MARKER)
        self._query_label = encode(QUERY_AFTER)
        self._newline = encode("\n")

    @property
    def split(self) -> bool:
        return self.tokens.mode == "split"

    def row(self, query: str, texts: Sequence[str]) -> ReadoutRow:
        """The row for ``query`` and the group's (already truncated) document ``texts``."""
        q = clean(query)
        ids = self.encode(HEADER.format(query=q))
        query_ids = self.encode(" " + q) if self.query_after else []
        readouts, ones, spans = [], [], []
        for position, text in enumerate(texts, 1):
            ids += self.encode(DOCUMENT.format(position=position, text=clean(text))) + self._newline
            if self.query_after:
                ids += self._query_label
                start = len(ids)
                ids += query_ids
                spans.append((start, len(ids)))
                ids += self._newline
            ids += self._marker
            readouts.append(len(ids) - 1)
            ones.append(len(ids) if self.split else -1)
            ids += self.fill
            ids += self._newline
        return ReadoutRow(ids, readouts, ones, spans)


@dataclass
class ReadoutAnswer:
    """One group's read-out: ``distributions[k]`` is P(score) for document k + 1 (the LM head's read-out),
    or ``values[k]`` its 0..10 score from a trained read-out head (``reranker.backends.torch_readout``), and
    ``likelihoods[k]`` its mean query log-probability in context (empty without ``query_after``). Neither
    and ``error`` set: the group was not scored (deadline, failure)."""

    distributions: list[list[float]] = field(default_factory=list)
    likelihoods: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    error: str | None = None
    values: list[float] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        return bool(self.values or self.distributions)

    @property
    def scores(self) -> dict[int, float]:
        """Scores 0..10 keyed by 1-based position, as the other decodings give them."""
        if self.values:
            return dict(enumerate(self.values, 1))
        return {k: expected_score(d) for k, d in enumerate(self.distributions, 1)}

    @property
    def likelihood(self) -> dict[int, float]:
        return dict(enumerate(self.likelihoods, 1))
