"""Skeleton ("slot") decoding: scores read from the model's distribution instead of parsed from text.

A groupwise answer is always the same JSON skeleton, ``{"[1]": S, "[2]": S, ..., "[n]": S}``: only the
scores ``S`` are the model's. Slot decoding feeds the skeleton itself and, at each score slot, reads the
probability of every score 0..10. A document's rerank score is the expected value of that distribution:
continuous, never a parse failure, and the answer length is fixed by the group size.

Tokenizers write scores in one of two ways, both handled here:

- ``"single"``: every score 0..10 is one token (e.g. Llama 3, which keeps numbers up to 999 whole);
- ``"split"``: digits are tokens of their own (SmolLM2, Qwen), so "10" is ``"1"`` then ``"0"``. The
  first-token distribution gives P(0), P(2..9) and P("1"), and P("1") splits into P(1) and P(10) by the
  probability of ``"0"`` right after ``"1"`` (``p10_given_1``).

What follows a slot in the fed skeleton is the ``feed``:

- ``"greedy"`` (any model, zero-shot included): the most probable score, as if the model had written it;
  slots are read one after another.
- ``"fixed"`` (models trained that way, e.g. the shipped GroupRank adapter): always ``FIXED_SCORE``. No
  slot sees an earlier score, so a document's score cannot be predicted from the scores before it (under
  teacher forcing the earlier *targets* leak the answer, and a model learns that shortcut instead of
  reading the documents), and every slot of a prompt is read in one forward pass. ``FIXED_SCORE`` is 1
  so that, where "10" is two tokens, the fed "1" itself gives P("0" | "1").

The maths lives in pure functions (``score_distribution``, ``expected_score``) so it is tested by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from grouprank.errors import InputError

MAX_SCORE = 10
SCORES = tuple(range(MAX_SCORE + 1))
CLOSE = "}"


def slot_prefix(position: int) -> str:
    """The skeleton text right before score ``position`` (1-based)."""
    return f'{{"[{position}]": ' if position == 1 else f', "[{position}]": '


def group_skeleton(size: int) -> list[str]:
    """The texts before each score of a groupwise answer of ``size`` documents."""
    return [slot_prefix(i) for i in range(1, size + 1)]


FEEDS = ("greedy", "fixed")
FIXED_SCORE = 1
"""The score fed after every slot under ``feed="fixed"``."""


def check_feed(feed: str) -> str:
    if feed not in FEEDS:
        raise InputError(f"unknown slot feed {feed!r} (one of {', '.join(FEEDS)})", field="slot_feed")
    return feed


POINT_SKELETON = ["Relevance score: "]
"""The pointwise answer's one slot (the pointwise prompt asks for ``Relevance score: X``)."""


def skeleton_text(scores: Sequence[int], skeleton: Sequence[str] | None = None) -> str:
    """The whole answer for integer ``scores``, e.g. ``{"[1]": 7, "[2]": 10}`` (groupwise, the default
    skeleton) or ``Relevance score: 7`` with ``POINT_SKELETON``."""
    if skeleton is None:
        return "".join(slot_prefix(i) + str(s) for i, s in enumerate(scores, 1)) + CLOSE
    return "".join(piece + str(s) for piece, s in zip(skeleton, scores, strict=True))


@dataclass(frozen=True)
class ScoreTokens:
    """How a tokenizer writes the scores 0..10: ``ids[s]`` is the token sequence of ``str(s)``."""

    ids: tuple[tuple[int, ...], ...]
    mode: str
    """``"single"`` (every score one token) or ``"split"`` ("10" is the token of "1" then of "0")."""

    @property
    def first(self) -> list[int]:
        """The first token of each score the first-token distribution tells apart: 0..10 in ``single``
        mode, 0..9 in ``split`` mode (where "1" also starts "10")."""
        n = len(SCORES) if self.mode == "single" else MAX_SCORE
        return [self.ids[s][0] for s in range(n)]

    @property
    def one(self) -> int:
        return self.ids[1][0]

    @property
    def zero(self) -> int:
        return self.ids[0][0]


def score_tokens(encode: Callable[[str], list[int]]) -> ScoreTokens:
    """Inspect a tokenizer (``encode(text) -> ids`` without special tokens). Raises ValueError for a
    tokenizer that writes the scores in neither supported way."""
    ids = tuple(tuple(encode(str(s))) for s in SCORES)
    if all(len(t) == 1 for t in ids) and len({t[0] for t in ids}) == len(SCORES):
        return ScoreTokens(ids, "single")
    digits_single = all(len(ids[s]) == 1 for s in range(MAX_SCORE)) and len({ids[s][0] for s in range(10)}) == 10
    if digits_single and ids[MAX_SCORE] == (ids[1][0], ids[0][0]):
        return ScoreTokens(ids, "split")
    raise ValueError(f"cannot read scores 0..10 from this tokenizer: their tokens are {ids}")


def score_distribution(first: Sequence[float], p10_given_1: float | None = None) -> list[float]:
    """P(score = s) for s = 0..10 from the first-token probabilities ``first`` (11 values in single
    mode; 10 in split mode, where ``p10_given_1`` splits the mass of "1" into 1 and 10). The result is
    renormalised to sum to 1; an all-zero input gives the uniform distribution."""
    probs = [max(0.0, float(p)) for p in first]
    if len(probs) == MAX_SCORE:
        q = min(1.0, max(0.0, float(p10_given_1 or 0.0)))
        one = probs[1]
        probs[1] = one * (1.0 - q)
        probs.append(one * q)
    elif len(probs) != len(SCORES):
        raise ValueError(f"expected 10 or 11 first-token probabilities, got {len(probs)}")
    total = sum(probs)
    if total <= 0.0 or not math.isfinite(total):
        return [1.0 / len(SCORES)] * len(SCORES)
    return [p / total for p in probs]


def expected_score(distribution: Sequence[float]) -> float:
    """The expected score, sum of s * P(s), in 0..10."""
    return float(sum(s * p for s, p in zip(SCORES, distribution, strict=True)))


def greedy_score(distribution: Sequence[float]) -> int:
    """The most probable score (the lowest on ties), the one fed back into the skeleton."""
    return max(SCORES, key=lambda s: (distribution[s], -s))


@dataclass
class SlotAnswer:
    """One group's slot-decoded answer: ``distributions[k]`` is P(score) for document k + 1.

    Fewer distributions than asked for mean the deadline cut the answer (``error`` says so when none
    came back). ``path`` says how the scores were read: ``"logprobs"`` (slot decoding) or ``"text"``.
    """

    distributions: list[list[float]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    path: str = "logprobs"

    @property
    def scores(self) -> dict[int, float]:
        """Expected scores keyed by 1-based position, as ``parse_group_scores`` gives them."""
        return {k: expected_score(d) for k, d in enumerate(self.distributions, 1)}
