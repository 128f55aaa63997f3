"""Tolerant, total parsers for LLM answers: groupwise JSON scores, pointwise scores, listwise permutations.

None of them raises on any string. Where the answer is looked for, in order:
1. ``<think>...</think>`` blocks are dropped; text after the last ``</think>`` is kept; an unclosed
   ``<think>`` (unfinished thinking) is dropped with everything after it.
2. If there is an ``<answer>`` tag, only the last answer's content counts (up to ``</answer>`` or the
   end, if cut off). Otherwise ``<reason>`` blocks are dropped (an unclosed one with all after it).
3. Code fences (````` ```json ... ``` `````) are preferred to the text around them.

Groupwise scores are read pair by pair, not with ``json.loads``, so trailing commas, single quotes,
numeric strings, floats, missing braces and cut-off output all work. In a cut-off (unclosed) object the
last, unterminated value is not trusted (``"[2]": 1`` may have been ``10``); every complete pair is kept.
Text without any ``{`` is read as bare ``"[1]": 5`` / ``[1]: 5`` pairs (keys must be quoted or bracketed).
Duplicate keys: the FIRST value wins (small models that loop repeat themselves with worse values) and
the id is listed in ``duplicates``. Scores are clamped to 0..10. When several objects appear (say the
prompt's example, then the real answer), the one scoring the most ids wins, the later one on a tie.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

MAX_SCORE = 10.0

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)
_THINK_OPEN = re.compile(r"<think>", re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S | re.I)
_REASON_BLOCK = re.compile(r"<reason(?:ing)?>.*?</reason(?:ing)?>", re.S | re.I)
_REASON_OPEN = re.compile(r"<reason(?:ing)?>", re.I)
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)(```|\Z)", re.S)

# A key: quoted, bracketed (``[3]``, also ``[3]]``), or (inside an object only) a bare integer.
_QUOTED = r""""[^"\n]{0,40}"|'[^'\n]{0,40}'"""
_BRACKETED = r"\[[^\[\]\n]{0,12}\]+"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_VALUE = rf"(?P<value>{_QUOTED}|{_NUMBER})"
_PAIR_IN_OBJECT = re.compile(rf"(?P<key>{_QUOTED}|{_BRACKETED}|[-+]?\d+)\s*[:=]\s*{_VALUE}")
_PAIR_LOOSE = re.compile(rf"(?P<key>{_QUOTED}|{_BRACKETED})\s*[:=]\s*{_VALUE}")
_KEY_ID = re.compile(r"(?:doc(?:ument)?|passage)?\s*\[?\s*(\d{1,9})\s*\]*", re.I)
_LEADING_NUMBER = re.compile(r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))")


@dataclass
class GroupParse:
    """Scores read from one groupwise answer. Ids are 1-based, as numbered in the prompt."""

    scores: dict[int, float] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    clamped: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every id of the group got a score."""
        return not self.missing


@dataclass
class PermutationParse:
    """A listwise answer as a full 1-based permutation: the ids given (deduplicated, unknown ones
    dropped), then the missing ones in their original order."""

    order: list[int]
    given: list[int]
    unknown: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return len(self.given) == len(self.order)


def answer_region(text: str) -> tuple[str, bool]:
    """The part of a completion that holds the answer (steps 1 and 2 of the module docstring), and whether
    it was closed by ``</answer>`` (then it is complete even without a closing brace)."""
    text = _THINK_BLOCK.sub(" ", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    answers = list(_ANSWER.finditer(text))
    if answers:
        last = answers[-1]
        return last.group(1), last.group(0).lower().endswith("</answer>")
    text = _REASON_BLOCK.sub(" ", text)
    opened = _REASON_OPEN.search(text)
    return (text[: opened.start()] if opened else text), False


def _to_score(raw: str) -> float | None:
    """A value as a float, or None. Quoted values count when they start with a number (``"7/10"``)."""
    if raw[:1] in "\"'":
        match = _LEADING_NUMBER.match(raw[1:-1])
        if not match:
            return None
        raw = match.group(1)
    value = float(raw)  # the regexes only let valid float syntax through
    return None if math.isnan(value) else value


def _key_id(raw: str) -> int | None:
    key = raw.strip("\"'").strip()
    match = _KEY_ID.fullmatch(key)
    return int(match.group(1)) if match else None


def _read_pairs(segment: str, closed: bool, n: int, in_object: bool) -> GroupParse:
    result = GroupParse()
    pattern = _PAIR_IN_OBJECT if in_object else _PAIR_LOOSE
    matches = list(pattern.finditer(segment))
    if matches and not closed:
        last = matches[-1]
        if last.group("value")[:1] not in "\"'" and not segment[last.end() :].strip():
            matches.pop()  # cut off mid-number: "[2]": 1 may have been 10
    for m in matches:
        doc = _key_id(m.group("key"))
        if doc is None or not 1 <= doc <= n:
            result.unknown_keys.append(m.group("key").strip("\"'"))
            continue
        value = _to_score(m.group("value"))
        if value is None:
            continue
        if doc in result.scores:
            result.duplicates.append(doc)
            continue
        if not 0.0 <= value <= MAX_SCORE:
            result.clamped.append(doc)
            value = min(max(value, 0.0), MAX_SCORE)
        result.scores[doc] = value
    return result


def _objects(region: str, container_closed: bool) -> list[tuple[str, bool]]:
    """Text between each ``{`` and the next brace, and whether that text is complete (a brace followed it,
    or its enclosing fence or answer tag was closed)."""
    out = []
    for m in re.finditer(r"\{([^{}]*)(?=([{}]?))", region):
        out.append((m.group(1), bool(m.group(2)) or container_closed))
    return out


def parse_group_scores(text: str, n: int, complete: bool = False) -> GroupParse:
    """Scores 0..10 for ids ``1..n`` from a groupwise answer. Never raises on any string.

    ``complete``: the model ended this answer itself (end of sequence or a stop string such as the
    object's closing brace, which the backend strips), so a last value without a delimiter after it is
    whole; otherwise it may have been cut mid-number (``"[2]": 1`` of ``10``) and is dropped.
    """
    if not isinstance(text, str):
        text = ""
    region, answer_closed = answer_region(text)
    answer_closed = answer_closed or complete
    fences = [(m.group(1), bool(m.group(2)) or answer_closed) for m in _FENCE.finditer(region)]
    # The whole answer first, so that on a tie an object inside a (later) fence wins.
    containers = [(region, answer_closed), *fences]

    best = GroupParse()
    for body, closed in containers:
        if "{" in body:
            parses = [_read_pairs(seg, seg_closed, n, True) for seg, seg_closed in _objects(body, closed)]
        else:  # no object at all: read quoted or bracketed "[1]": 5 pairs from the bare text
            parses = [_read_pairs(body, True, n, False)]
        for parse in parses:
            more = len(parse.scores) > len(best.scores)
            if more or (len(parse.scores) == len(best.scores) and (parse.scores or parse.unknown_keys)):
                best = parse
    best.missing = [i for i in range(1, n + 1) if i not in best.scores]
    return best


_SCORE_LABEL = re.compile(r"score\W{0,3}?\s*[:=]?\s*[\"']?\s*([-+]?\d+(?:\.\d+)?)", re.I)
_ANY_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?")


def parse_point_score(text: str) -> float | None:
    """A pointwise score 0..10 (``Relevance score: 7``, ``{"score": 7}``, ``7``), or None if there is none.

    A labelled score wins; otherwise the first number in the answer. Out-of-range values are clamped.
    """
    if not isinstance(text, str):
        return None
    region, _ = answer_region(text)
    fences = [m.group(1) for m in _FENCE.finditer(region)]
    for body in [*reversed(fences), region]:
        match = _SCORE_LABEL.search(body) or _ANY_NUMBER.search(body)
        if match:
            value = float(match.group(1) if match.lastindex else match.group(0))
            return min(max(value, 0.0), MAX_SCORE)
    return None


_BRACKET_ID = re.compile(r"\[\s*(\d+)\s*\]")
_BARE_ID = re.compile(r"(?<!\d)\d+(?!\d)")


def parse_permutation(text: str, n: int) -> PermutationParse:
    """A listwise answer (``[2] > [1] > [3]``, or a JSON list ``[2, 1, 3]``) as a full permutation of
    ``1..n``. Never raises: duplicates are dropped (first kept), unknown ids ignored, missing ids appended
    in their original order."""
    region = answer_region(text)[0] if isinstance(text, str) else ""
    fences = [m.group(1) for m in _FENCE.finditer(region)]
    body = next((f for f in reversed(fences) if _BARE_ID.search(f)), region)
    numbers = _BRACKET_ID.findall(body) or _BARE_ID.findall(body)
    given: list[int] = []
    unknown: list[int] = []
    duplicates: list[int] = []
    seen: set[int] = set()
    for raw in numbers:
        if len(raw) > 9:
            continue  # not an id of any window
        doc = int(raw)
        if not 1 <= doc <= n:
            unknown.append(doc)
        elif doc in seen:
            duplicates.append(doc)
        else:
            given.append(doc)
            seen.add(doc)
    order = given + [i for i in range(1, n + 1) if i not in seen]
    return PermutationParse(order=order, given=given, unknown=unknown, duplicates=duplicates)
