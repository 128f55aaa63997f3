"""Training examples for slot decoding: a groupwise prompt, its answer skeleton and one target per slot.

An example is tokenised exactly as ``TransformersBackend.score_slots`` feeds it when serving: the chat
template's prompt (with its generation prompt), then for each slot the skeleton text before it and the
score's tokens (a fixed "1" by default, see ``reranker.slots``), then ``}``. ``slots[k]`` is the position
whose next-token distribution is slot k's first score token; where "10" is two tokens and the fed score
starts with "1", ``ones[k]`` is the position of that "1" (its next token tells 1 from 10), else -1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reranker.slots import CLOSE, FIXED_SCORE, ScoreTokens, check_feed, group_skeleton, score_tokens


@dataclass
class SlotExample:
    """One tokenised training example."""

    input_ids: list[int]
    slots: list[int]
    ones: list[int]
    targets: list[float]
    """Teacher scores 0..10 (may be fractional: the ranking loss uses them as they are)."""


class SlotEncoder:
    """Tokenises prompts and skeletons for one tokenizer, caching the skeleton pieces."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: ScoreTokens = score_tokens(self._ids)
        self._pieces: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def piece(self, text: str) -> list[int]:
        if text not in self._pieces:
            self._pieces[text] = self._ids(text)
        return self._pieces[text]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._ids(text)

    def encode(self, messages: list[dict[str, str]], targets: Sequence[float],
               skeleton: Sequence[str] | None = None, feed: str = "fixed") -> SlotExample:
        """The example for ``messages`` (system + user, no answer) with teacher scores ``targets``. The
        tokens fed after each slot are ``FIXED_SCORE``'s (``feed="fixed"``, the default: no slot sees an
        earlier target, see ``reranker.slots``) or the rounded target's (``"greedy"``: teacher forcing)."""
        check_feed(feed)
        skeleton = list(skeleton) if skeleton is not None else group_skeleton(len(targets))
        ids = self.prompt_ids(messages)
        slots, ones = [], []
        for piece, target in zip(skeleton, targets, strict=True):
            ids += self.piece(piece)
            slots.append(len(ids) - 1)
            score = FIXED_SCORE if feed == "fixed" else min(10, max(0, round(float(target))))
            score_ids = self.tokens.ids[score]
            ones.append(len(ids) if self.tokens.mode == "split" and score_ids[0] == self.tokens.one else -1)
            ids += list(score_ids)
        if skeleton and skeleton[0].startswith('{"'):
            ids += self.piece(CLOSE)
        return SlotExample(ids, slots, ones, [float(t) for t in targets])


def length_batches(lengths: Sequence[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Batches of example indices of similar length (little padding), each at most ``max_tokens`` padded
    tokens (an example longer than that is a batch of its own), in a seeded random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    random.Random(seed).shuffle(batches)
    return batches
