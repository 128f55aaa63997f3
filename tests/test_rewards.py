"""The GRPO reward terms on hand-computed examples, including the edge cases: all-equal scores, groups without
relevant documents, and malformed answers (which must score exactly the floor)."""

from __future__ import annotations

import json
import math

import pytest

from grouprank.errors import InputError
from trainer.config import RewardConfig
from trainer.rewards import (
    distribution_reward,
    distribution_score,
    format_reward,
    ndcg_at_k,
    ndcg_reward,
    parse_answer,
    predicted_order,
    rbo,
    rbo_reward,
    recall_at_k,
    recall_reward,
    target_order,
    total_reward,
    trl_reward_functions,
)

CONFIG = RewardConfig()  # alpha 0.2, beta 0.5, gamma 0.1, k 5, relevant_at 5, rbo_p 0.9, T 1, floor -1


def answer(scores: list[int], fence: bool = True) -> str:
    body = json.dumps({f"[{i}]": s for i, s in enumerate(scores, start=1)})
    return f"```json\n{body}\n```" if fence else body


# -- format ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    answer([3, 0, 10]),
    answer([3, 0, 10], fence=False),
    '```\n{"[2]": 0, "[1]": 3, "[3]": 10}\n```',  # any key order, fence without a language
    '<reason>doc 3 answers it</reason>\n<answer>\n```json\n{"[1]": 3, "[2]": 0, "[3]": 10}\n```\n</answer>',
    '<think>hmm</think>{"[1]": 3, "[2]": 0, "[3]": 10}',
])
def test_well_formed_answers_parse(text: str) -> None:
    parsed = parse_answer(text, 3)
    assert parsed.ok and parsed.error is None
    assert parsed.scores == [3, 0, 10]
    assert format_reward(text, [1, 2, 3], CONFIG) == 0.0


@pytest.mark.parametrize(("text", "why"), [
    ("hello", "not one JSON object"),
    ("", "not one JSON object"),
    ('```json\n{"[1]": 3, "[2]": 0, "[3]": 1', "not one JSON object"),  # cut off
    ('Here you go: {"[1]": 3, "[2]": 0, "[3]": 1}', "not one JSON object"),  # text around the JSON
    ('{"[1]": 3, "[1]": 4, "[2]": 0, "[3]": 1}', "duplicate key"),
    ('{"[1]": 3, "[2]": 0}', "missing score(s) for [3]"),
    ('{"[1]": 3, "[2]": 0, "[3]": 1, "[4]": 2}', "unexpected key '[4]'"),
    ('{"1": 3, "[2]": 0, "[3]": 1}', "unexpected key '1'"),
    ('{"[1]": 7.5, "[2]": 0, "[3]": 1}', "integer 0-10"),
    ('{"[1]": "7", "[2]": 0, "[3]": 1}', "integer 0-10"),
    ('{"[1]": 11, "[2]": 0, "[3]": 1}', "integer 0-10"),
    ('{"[1]": -1, "[2]": 0, "[3]": 1}', "integer 0-10"),
    ('{"[1]": true, "[2]": 0, "[3]": 1}', "integer 0-10"),
    ("[3, 0, 1]", "expected a JSON object"),
])
def test_malformed_answers_score_the_floor(text: str, why: str) -> None:
    parsed = parse_answer(text, 3)
    assert not parsed.ok
    assert why in parsed.error
    targets = [10, 0, 5]
    assert format_reward(text, targets, CONFIG) == -1.0
    for term in (recall_reward, ndcg_reward, rbo_reward, distribution_reward):
        assert term(text, targets, CONFIG) == 0.0
    assert total_reward(text, targets, CONFIG) == -1.0
    assert total_reward(text, targets, RewardConfig(format_floor=-0.5)) == -0.5


def test_non_string_completion_is_malformed() -> None:
    assert not parse_answer(None, 2).ok  # type: ignore[arg-type]


# -- ranking metrics ---------------------------------------------------------------------------------------

TARGETS = [9, 2, 7, 0, 5]      # relevant (>= 5): documents 0, 2, 4
PREDICTED = [1, 8, 6, 0, 9]    # predicted order: 4, 1, 2, 0, 3


def test_predicted_order_and_recall() -> None:
    assert predicted_order(PREDICTED, TARGETS) == [4, 1, 2, 0, 3]
    assert recall_at_k(PREDICTED, TARGETS, k=2, relevant_at=5) == pytest.approx(1 / 2)  # {4} of min(2, 3)
    assert recall_at_k(PREDICTED, TARGETS, k=3, relevant_at=5) == pytest.approx(2 / 3)  # {4, 2} of 3
    assert recall_at_k(PREDICTED, TARGETS, k=5, relevant_at=5) == 1.0
    assert recall_at_k(PREDICTED, TARGETS, k=1, relevant_at=10) == 1.0  # nothing relevant: nothing to miss


def test_ndcg_by_hand() -> None:
    dcg = 5 / math.log2(2) + 2 / math.log2(3) + 7 / math.log2(4)    # gains of documents 4, 1, 2
    ideal = 9 / math.log2(2) + 7 / math.log2(3) + 5 / math.log2(4)  # gains 9, 7, 5
    assert ndcg_at_k(PREDICTED, TARGETS, k=3) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(TARGETS, TARGETS, k=3) == pytest.approx(1.0)
    assert ndcg_at_k([5, 5, 5], [0, 0, 0], k=3) == 1.0  # no gain anywhere: any order is ideal


def test_rbo_by_hand() -> None:
    assert rbo([1, 2, 3], [1, 2, 3], p=0.9) == pytest.approx(1.0)
    assert rbo([1, 2, 3], [4, 5, 6], p=0.9) == 0.0
    # Two items swapped: agreement 0 at depth 1, 1 at depth 2 -> (1-p)/p * (0*p + 1*p^2) + 1*p^2 = p.
    assert rbo([1, 2], [2, 1], p=0.9) == pytest.approx(0.9)
    # [1,2,3] vs [1,3,2]: agreements 1, 1/2, 1.
    p = 0.8
    expected = (1 - p) / p * (1 * p + 0.5 * p**2 + 1 * p**3) + 1 * p**3
    assert rbo([1, 2, 3], [1, 3, 2], p=p) == pytest.approx(expected)
    assert rbo([], [], p=0.9) == 1.0


def test_target_ties_follow_the_prediction() -> None:
    # Documents 1 and 2 are tied in the targets, so either order of them is right: RBO stays 1.
    targets = [8, 0, 0]
    assert target_order(targets, [9, 1, 4]) == [0, 2, 1]
    assert rbo_reward(answer([9, 1, 4]), targets, CONFIG) == pytest.approx(1.0)
    assert rbo_reward(answer([9, 4, 1]), targets, CONFIG) == pytest.approx(1.0)


def test_distribution_by_hand() -> None:
    targets = [8, 6, 2, 0]
    collapsed = [10, 10, 0, 0]
    p = [math.exp(t) for t in targets]
    p = [v / sum(p) for v in p]
    q = [math.exp(s) for s in collapsed]
    q = [v / sum(q) for v in q]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert distribution_score(collapsed, targets) == pytest.approx(math.exp(-kl))
    assert distribution_score(targets, targets) == pytest.approx(1.0)
    # Collapsing to 0s and 10s costs more than keeping the graded shape with the same order.
    assert distribution_score([7, 5, 3, 0], targets) > distribution_score(collapsed, targets)


# -- edge cases --------------------------------------------------------------------------------------------

def test_all_equal_predicted_scores_earn_no_ranking_credit() -> None:
    targets = [0, 10, 0, 0]
    text = answer([5, 5, 5, 5])
    config = RewardConfig(k=2)
    # Ties are broken pessimistically: the relevant document 1 goes last -> predicted order [0, 2, 3, 1].
    assert recall_reward(text, targets, config) == 0.0
    assert ndcg_reward(text, targets, config) == 0.0
    # Target order (ties as predicted): [1, 0, 2, 3]; agreements 0, 1/2, 2/3, 1.
    p = 0.9
    expected_rbo = (1 - p) / p * (0 * p + 0.5 * p**2 + 2 / 3 * p**3 + 1 * p**4) + 1 * p**4
    assert rbo_reward(text, targets, config) == pytest.approx(expected_rbo)
    # Uniform prediction against a peaked target: KL(P || uniform) = sum p log(4 p).
    z = 1 + 3 * math.exp(-10)
    top, rest = 1 / z, math.exp(-10) / z
    kl = top * math.log(4 * top) + 3 * rest * math.log(4 * rest)
    assert distribution_reward(text, targets, config) == pytest.approx(math.exp(-kl))
    assert format_reward(text, targets, config) == 0.0


def test_all_equal_targets_and_no_relevant_documents() -> None:
    targets = [0, 0, 0, 0]
    text = answer([10, 0, 0, 0])
    assert recall_reward(text, targets, CONFIG) == 1.0
    assert ndcg_reward(text, targets, CONFIG) == 1.0
    assert rbo_reward(text, targets, CONFIG) == pytest.approx(1.0)
    q0 = 1 / (1 + 3 * math.exp(-10))
    q1 = math.exp(-10) * q0
    kl = 0.25 * math.log(0.25 / q0) + 3 * 0.25 * math.log(0.25 / q1)
    assert distribution_reward(text, targets, CONFIG) == pytest.approx(math.exp(-kl))
    # Graded but below the relevance threshold: recall is vacuous, NDCG still ranks the gains.
    assert recall_reward(answer([0, 4]), [4, 2], CONFIG) == 1.0
    assert ndcg_reward(answer([0, 4]), [4, 2], CONFIG) == pytest.approx(
        (2 + 4 / math.log2(3)) / (4 + 2 / math.log2(3)))


def test_total_reward_weights() -> None:
    targets = [10, 3, 0, 6]
    assert total_reward(answer(targets), targets, CONFIG) == pytest.approx(1.0 + 0.1)  # perfect: 1 + gamma
    text = answer([0, 3, 10, 6])
    expected = (0.2 * recall_reward(text, targets, CONFIG) + 0.5 * ndcg_reward(text, targets, CONFIG)
                + 0.3 * rbo_reward(text, targets, CONFIG) + 0.1 * distribution_reward(text, targets, CONFIG))
    assert total_reward(text, targets, CONFIG) == pytest.approx(expected)
    assert total_reward(text, targets, CONFIG) < total_reward(answer(targets), targets, CONFIG)


def test_trl_reward_functions() -> None:
    functions, weights = trl_reward_functions(CONFIG)
    assert [f.__name__ for f in functions] == ["format", "recall", "ndcg", "rbo", "distribution"]
    assert weights == pytest.approx([1.0, 0.2, 0.5, 0.3, 0.1])
    targets = [[10, 3, 0, 6], [10, 3, 0, 6]]
    conversational = [[{"role": "assistant", "content": answer([10, 3, 0, 6])}],
                      [{"role": "assistant", "content": "no idea"}]]
    assert functions[0](prompts=[None, None], completions=conversational, targets=targets, trainer_state=None) \
        == [0.0, -1.0]
    assert functions[2](prompts=[None], completions=[answer([10, 3, 0, 6])], targets=targets[:1]) == [1.0]


def test_reward_config_validation() -> None:
    with pytest.raises(InputError) as err:
        RewardConfig(alpha=0.6, beta=0.5)
    assert err.value.field == "beta"
    with pytest.raises(InputError) as err:
        RewardConfig(format_floor=0.5)
    assert err.value.field == "format_floor"
