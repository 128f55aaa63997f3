"""The answer parsers: every tolerance on a concrete case, then fuzzing (>= 10,000 examples in all)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reranker.parsing import GroupParse, parse_group_scores, parse_permutation, parse_point_score

# A reasoning-style answer in the reference release's format (<reason> block, then a fenced JSON answer
# inside <answer>), with ids mentioned in the reasoning that must not be read as scores.
REFERENCE_STYLE = """<reason>
The query asks when Michigan became a state.
- **[1]**: about Mississippi (1817); [1]: 9 would be wrong.
- **[3]**: gives the exact date, January 26, 1837.
</reason>

<answer>
```json
{
  "[1]": 1,
  "[2]": 1,
  "[3]": 10,
  "[4]": 8
}
```
</answer>"""


def scores_of(text: str, n: int) -> dict[int, float]:
    return parse_group_scores(text, n).scores


# --- groupwise: concrete cases ------------------------------------------------------------------


def test_reference_style_answer():
    parse = parse_group_scores(REFERENCE_STYLE, 4)
    assert parse.scores == {1: 1.0, 2: 1.0, 3: 10.0, 4: 8.0}
    assert parse.ok and parse.missing == [] and parse.unknown_keys == []


def test_plain_json_and_code_fences():
    assert scores_of('{"[1]": 5, "[2]": 3}', 2) == {1: 5.0, 2: 3.0}
    assert scores_of('Here:\n```json\n{"[1]": 5, "[2]": 3}\n```\nDone.', 2) == {1: 5.0, 2: 3.0}
    assert scores_of('```\n{"[1]": 2, "[2]": 7}\n```', 2) == {1: 2.0, 2: 7.0}


def test_answer_wrapper_wins_over_other_text():
    text = 'Draft {"[1]": 1, "[2]": 1} <answer>{"[1]": 9, "[2]": 8}</answer>'
    assert scores_of(text, 2) == {1: 9.0, 2: 8.0}


def test_think_blocks_are_ignored():
    assert scores_of('<think>{"[1]": 0, "[2]": 0}</think>{"[1]": 6, "[2]": 4}', 2) == {1: 6.0, 2: 4.0}
    # Qwen3-style: the opening tag was in the prompt, only the closing one is generated.
    assert scores_of('draft "[1]": 0 </think>\n{"[1]": 6, "[2]": 4}', 2) == {1: 6.0, 2: 4.0}
    # Unfinished thinking: nothing in it is trusted.
    parse = parse_group_scores('<think>I guess {"[1]": 6, "[2]": 4}', 2)
    assert parse.scores == {} and parse.missing == [1, 2] and not parse.ok


def test_reason_block_without_answer_tag():
    assert scores_of('<reason>[1]: 9, [2]: 9</reason>\n{"[1]": 2, "[2]": 3}', 2) == {1: 2.0, 2: 3.0}
    assert scores_of("<reason>[1]: 9, [2]: 9 and then the output was cut", 2) == {}


@pytest.mark.parametrize(
    "text",
    [
        '{"[1]": 4, "[2]": 7}',
        '{"1": 4, "2": 7}',
        "{1: 4, 2: 7}",
        "{'[1]': 4, '[2]': 7}",
        "{[1]: 4, [2]: 7}",
        '{"[1]]": 4, "[2]]": 7}',  # the stray bracket the reference release also repairs
        '{"Document [1]": 4, "doc 2": 7}',
        '{"[1]" : 4 , "[2]":7 ,}',
    ],
)
def test_key_forms(text):
    assert scores_of(text, 2) == {1: 4.0, 2: 7.0}


def test_value_forms_and_clamping():
    parse = parse_group_scores('{"[1]": 7.5, "[2]": "6", "[3]": \'8\', "[4]": "9/10", "[5]": 12, "[6]": -3}', 6)
    assert parse.scores == {1: 7.5, 2: 6.0, 3: 8.0, 4: 9.0, 5: 10.0, 6: 0.0}
    assert parse.clamped == [5, 6]
    parse = parse_group_scores('{"[1]": "high", "[2]": 5}', 2)
    assert parse.scores == {2: 5.0} and parse.missing == [1]


def test_truncated_json_keeps_complete_pairs():
    parse = parse_group_scores('```json\n{"[1]": 5, "[2]": 3, "[3]": 1', 3)
    assert parse.scores == {1: 5.0, 2: 3.0}  # "[3]": 1 may have been cut from 10
    assert parse.missing == [3] and not parse.ok
    assert scores_of('{"[1]": 5, "[2]": 3, "[3', 3) == {1: 5.0, 2: 3.0}
    assert scores_of('{"[1]": 5, "[2]": "3"', 3) == {1: 5.0, 2: 3.0}  # a closed quote is complete
    # A missing closing brace is fine when the fence or answer tag around it closed.
    assert scores_of('```json\n{"[1]": 5, "[2]": 3\n```', 2) == {1: 5.0, 2: 3.0}
    assert scores_of('<answer>{"[1]": 5, "[2]": 3</answer>', 2) == {1: 5.0, 2: 3.0}


def test_a_complete_answer_keeps_its_last_value():
    """A backend that stopped at the closing brace strips it: the last value is then whole."""
    stopped = '{"[1]": 4, "[2]": 10'
    assert parse_group_scores(stopped, 2).scores == {1: 4.0}  # may have been cut mid-number
    assert parse_group_scores(stopped, 2, complete=True).scores == {1: 4.0, 2: 10.0}
    assert parse_group_scores('```json\n{"[1]": 3', 1, complete=True).scores == {1: 3.0}


def test_duplicate_keys_first_wins():
    parse = parse_group_scores('{"[1]": 4, "[2]": 5, "[1]": 9}', 2)
    assert parse.scores == {1: 4.0, 2: 5.0} and parse.duplicates == [1]


def test_unknown_keys_are_ignored_and_reported():
    parse = parse_group_scores('{"[1]": 4, "[7]": 9, "0": 3, "reason": "fine", "[2]": 1}', 2)
    assert parse.scores == {1: 4.0, 2: 1.0}
    assert parse.unknown_keys == ["[7]", "0", "reason"]
    assert parse.ok


def test_trailing_commas_single_quotes_and_nesting():
    assert scores_of("{'[1]': 4, '[2]': 5,,}", 2) == {1: 4.0, 2: 5.0}
    assert scores_of('{"scores": {"[1]": 4, "[2]": 5}}', 2) == {1: 4.0, 2: 5.0}


def test_several_objects_the_fullest_wins_then_the_last():
    echo = 'Format: {"[1]": 5, "[2]": 3, "[3]": 8}\n'
    assert scores_of(echo + '{"[1]": 1, "[2]": 2, "[3]": 3, "[4]": 4}', 4) == {1: 1, 2: 2, 3: 3, 4: 4}
    assert scores_of('{"[1]": 1} then {"[1]": 7}', 1) == {1: 7.0}


def test_bare_pairs_without_braces():
    assert scores_of("[1]: 6\n[2]: 2\n", 2) == {1: 6.0, 2: 2.0}
    assert scores_of('"[1]": 6, "[2]": 2', 2) == {1: 6.0, 2: 2.0}
    # Without an object, bare numbers are not keys (times, years in prose are not scores).
    assert scores_of("At 10:45 in 1837: nothing", 2) == {}


def test_nothing_usable():
    for text in ["", "I cannot help with that.", "{}", "{,,}", "```json\n```", "<answer></answer>"]:
        parse = parse_group_scores(text, 3)
        assert parse == GroupParse(missing=[1, 2, 3])
        assert not parse.ok
    assert parse_group_scores(None, 2).missing == [1, 2]  # type: ignore[arg-type]


# --- pointwise and listwise: concrete cases ----------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Relevance score: 7.", 7.0),
        ('{"score": 8}', 8.0),
        ("```json\n{\"score\": 3}\n```", 3.0),
        ("I'd give it 6/10", 6.0),
        ("<think>maybe 2</think>Relevance score: 9", 9.0),
        ("Relevance Score = 4.5", 4.5),
        ("score: 15", 10.0),
        ("score: -2", 0.0),
        ("nothing here", None),
        ("", None),
        ("<think>Relevance score: 8", None),
    ],
)
def test_point_score(text, expected):
    assert parse_point_score(text) == expected


def test_permutation_forms():
    assert parse_permutation("[2] > [1] > [3]", 3).order == [2, 1, 3]
    assert parse_permutation("[2] > [1] > [3]", 3).ok
    parse = parse_permutation("[3] > [1] > [3] > [9] > [0]", 4)
    assert parse.order == [3, 1, 2, 4]  # missing ids appended in their original order
    assert parse.given == [3, 1] and parse.duplicates == [3] and parse.unknown == [9, 0]
    assert not parse.ok
    assert parse_permutation("```json\n[3, 1, 2]\n```", 3).order == [3, 1, 2]
    assert parse_permutation("<think>[1] > [2]</think>[2] > [1]", 2).order == [2, 1]
    garbage = parse_permutation("no idea", 3)
    assert garbage.order == [1, 2, 3] and garbage.given == [] and not garbage.ok


# --- fuzzing ----------------------------------------------------------------------------------


def check_group_parse(parse: GroupParse, n: int) -> None:
    assert set(parse.scores) <= set(range(1, n + 1))
    assert all(math.isfinite(v) and 0.0 <= v <= 10.0 for v in parse.scores.values())
    assert parse.missing == [i for i in range(1, n + 1) if i not in parse.scores]
    assert parse.ok == (not parse.missing)


JSONISH = st.text(alphabet=list('{}[]"\':,0123456789 .-+eE\n<>/`answerthinkjso'), max_size=200)
GROUP_SIZES = st.integers(min_value=0, max_value=25)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz(2500)
@given(text=st.text(max_size=300), n=GROUP_SIZES)
def test_fuzz_random_text(text, n):
    check_group_parse(parse_group_scores(text, n), n)


@fuzz(2500)
@given(text=JSONISH, n=GROUP_SIZES)
def test_fuzz_json_like_text(text, n):
    check_group_parse(parse_group_scores(text, n), n)


@st.composite
def valid_answers(draw) -> tuple[str, int, dict[int, float]]:
    """A well-formed answer in one of the styles models produce, and the scores it holds."""
    n = draw(st.integers(min_value=1, max_value=20))
    values = draw(st.lists(st.integers(min_value=0, max_value=10), min_size=n, max_size=n))
    order = draw(st.permutations(range(1, n + 1)))
    key = draw(st.sampled_from(['"[{}]"', '"{}"', "{}", "'[{}]'", "[{}]"]))
    value = draw(st.sampled_from(["{}", '"{}"', "{}.0"]))
    sep = draw(st.sampled_from([", ", ",\n  ", ","]))
    body = sep.join(f"{key.format(i)}: {value.format(values[i - 1])}" for i in order)
    obj = "{" + body + draw(st.sampled_from(["", ","])) + "}"
    prose = draw(st.text(alphabet="abcdefgh ijklm.\n", max_size=40))
    wrapper = draw(st.sampled_from(["plain", "fence", "answer", "reason", "think"]))
    text = {
        "plain": obj,
        "fence": f"```json\n{obj}\n```",
        "answer": f"<answer>\n```json\n{obj}\n```\n</answer>",
        "reason": f"<reason>\n{prose}\n</reason>\n<answer>\n```json\n{obj}\n```\n</answer>",
        "think": f"<think>{prose}</think>\n{obj}",
    }[wrapper]
    return text, n, {i: float(values[i - 1]) for i in range(1, n + 1)}


@fuzz(1000)
@given(answer=valid_answers())
def test_fuzz_valid_answers_are_read_exactly(answer):
    text, n, expected = answer
    parse = parse_group_scores(text, n)
    assert parse.scores == expected and parse.ok


@fuzz(2000)
@given(answer=valid_answers(), data=st.data())
def test_fuzz_truncated_answers_keep_only_true_scores(answer, data):
    text, n, expected = answer
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    parse = parse_group_scores(text[:cut], n)
    check_group_parse(parse, n)
    # Whatever survives a cut is exactly what the model wrote: no half-read "1" from a "10".
    assert all(expected[k] == v for k, v in parse.scores.items())


@st.composite
def mutated_answers(draw) -> tuple[str, int]:
    text, n, _ = draw(valid_answers())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["insert", "delete", "key", "value"]))
        pos = draw(st.integers(min_value=0, max_value=len(text)))
        if kind == "insert":
            text = text[:pos] + draw(st.text(min_size=1, max_size=5)) + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(min_value=1, max_value=8)) :]
        else:
            # Corrupt the next key (digits before a colon) or value (digits after one).
            colon = text.find(":", pos)
            if colon < 0:
                continue
            junk = draw(st.sampled_from(["x", "-5", "99", "1e999", "'7'", "[", "", "0", "nan", "3.5.5"]))
            if kind == "key":
                start = max(text.rfind(",", 0, colon), text.rfind("{", 0, colon)) + 1
                text = text[:start] + junk + text[colon:]
            else:
                end = min((p for p in (text.find(",", colon), text.find("}", colon)) if p >= 0), default=len(text))
                text = text[: colon + 1] + junk + text[end:]
    return text, n


@fuzz(2000)
@given(answer=mutated_answers())
def test_fuzz_mutated_answers(answer):
    text, n = answer
    check_group_parse(parse_group_scores(text, n), n)


@fuzz(1000)
@given(text=st.one_of(st.text(max_size=200), JSONISH), n=st.integers(min_value=0, max_value=30))
def test_fuzz_permutation(text, n):
    parse = parse_permutation(text, n)
    assert sorted(parse.order) == list(range(1, n + 1))
    assert parse.order[: len(parse.given)] == parse.given
    assert parse.ok == (len(parse.given) == n)


@fuzz(1000)
@given(text=st.one_of(st.text(max_size=200), JSONISH))
def test_fuzz_point_score(text):
    score = parse_point_score(text)
    assert score is None or (math.isfinite(score) and 0.0 <= score <= 10.0)
