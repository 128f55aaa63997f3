"""Slot decoding: the maths by hand, and the transformers backend against a teacher-forced forward pass."""

from __future__ import annotations

import math

import pytest

from reranker.slots import (
    POINT_SKELETON,
    ScoreTokens,
    expected_score,
    greedy_score,
    group_skeleton,
    score_distribution,
    score_tokens,
    skeleton_text,
)


def test_skeleton_text_and_pieces() -> None:
    assert group_skeleton(3) == ['{"[1]": ', ', "[2]": ', ', "[3]": ']
    assert skeleton_text([7, 10]) == '{"[1]": 7, "[2]": 10}'
    assert skeleton_text([4], POINT_SKELETON) == "Relevance score: 4"


def test_split_mode_moves_the_mass_of_one_to_ten_by_the_next_token() -> None:
    first = [0.1, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]  # P(first token = digit d)
    dist = score_distribution(first, p10_given_1=0.25)
    assert dist[1] == pytest.approx(0.4 * 0.75)
    assert dist[10] == pytest.approx(0.4 * 0.25)
    assert sum(dist) == pytest.approx(1.0)
    # E = 0*0.1 + 1*0.3 + 9*0.5 + 10*0.1
    assert expected_score(dist) == pytest.approx(0.3 + 4.5 + 1.0)


def test_single_mode_and_renormalisation() -> None:
    first = [0.0] * 10 + [2.0]
    dist = score_distribution(first)
    assert dist[10] == 1.0 and expected_score(dist) == 10.0
    assert score_distribution([0.0] * 11) == [1 / 11] * 11  # nothing known: uniform
    assert greedy_score([0.3, 0.3] + [0.04] * 9) == 0  # ties go to the lower score
    with pytest.raises(ValueError):
        score_distribution([0.5] * 7)


def test_score_tokens_recognises_both_tokenizer_styles() -> None:
    split = score_tokens(lambda text: [100 + int(c) for c in text])
    assert split.mode == "split" and split.first == [100 + d for d in range(10)] and split.one == 101
    single = score_tokens(lambda text: [500 + int(text)])
    assert single.mode == "single" and len(single.first) == 11
    with pytest.raises(ValueError):
        score_tokens(lambda text: [7, 7] if text == "10" else [int(text)])


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_path: str):
    from reranker.backends.transformers_backend import TransformersBackend

    return TransformersBackend(tiny_model_path, dtype="float32")


def _prompt(query: str, docs: list[str]):
    from reranker.prompts import groupwise_messages

    return groupwise_messages(query, docs)


def test_slot_scores_equal_the_hand_computed_sum_over_digit_probabilities(tiny_backend) -> None:
    """The backend's distributions equal softmax probabilities of a plain forward pass over the skeleton
    filled with the greedy scores, with "10" split off "1" by P("0" | "1") read after a "1"."""
    import torch

    b = tiny_backend
    tokens: ScoreTokens = b.score_tokens
    assert tokens.mode == "split"  # SmolLM2's tokenizer writes digits one by one
    messages = _prompt("what causes tides", ["The moon pulls the sea.", "Bananas are yellow.", "Stocks fell."])
    answer = b.score_slots([messages], [group_skeleton(3)])[0]
    assert answer.error is None and len(answer.distributions) == 3 and answer.path == "logprobs"
    greedy = [greedy_score(d) for d in answer.distributions]
    prompt = b.encode(messages[:-1])
    for k in range(3):
        prefix = prompt + b._ids(skeleton_text(greedy[:k]).removesuffix("}") + group_skeleton(3)[k])
        with torch.no_grad():
            probs = torch.softmax(b.lm(torch.tensor([prefix])).logits[0, -1].float(), -1)
            after_one = torch.softmax(b.lm(torch.tensor([[*prefix, tokens.one]])).logits[0, -1].float(), -1)
        digits = [probs[t].item() for t in tokens.first]
        q = after_one[tokens.zero].item()
        total = sum(digits)
        by_hand = [digits[0], digits[1] * (1 - q), *digits[2:], digits[1] * q]
        assert answer.distributions[k] == pytest.approx([p / total for p in by_hand], rel=1e-3, abs=1e-12)
        mean = sum(d * p for d, p in enumerate(digits)) - digits[1] + digits[1] * ((1 - q) * 1 + q * 10)
        assert expected_score(answer.distributions[k]) == pytest.approx(mean / total, abs=1e-4)


def test_batched_slot_decoding_equals_one_at_a_time(tiny_backend) -> None:
    prompts = [_prompt("q one", ["alpha beta", "gamma", "delta epsilon zeta"]),
               _prompt("a much longer second query about rivers", ["rivers flow", "mountains"]),
               _prompt("third", ["x"])]
    skeletons = [group_skeleton(3), group_skeleton(2), POINT_SKELETON]
    batched = tiny_backend.score_slots(prompts, skeletons)
    for prompt, skeleton, together in zip(prompts, skeletons, batched, strict=True):
        alone = tiny_backend.score_slots([prompt], [skeleton])[0]
        assert len(alone.distributions) == len(skeleton)
        for a, b in zip(alone.distributions, together.distributions, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_fixed_feed_reads_every_slot_of_the_training_sequence_in_one_pass(tiny_backend) -> None:
    """Under ``feed="fixed"`` the served distributions are those of one forward pass over exactly the
    sequence the slot trainer builds (``SlotEncoder.encode(..., feed="fixed")``): slot k's digits at its
    slot position, P("0" | "1") at the fed "1" after it."""
    import torch

    from trainer.slot_data import SlotEncoder

    b = tiny_backend
    tokens = b.score_tokens
    messages = _prompt("what causes tides", ["The moon pulls the sea.", "Bananas are yellow.", "Stocks fell."])
    answer = b.score_slots([messages], [group_skeleton(3)], feed="fixed")[0]
    assert answer.error is None and len(answer.distributions) == 3
    example = SlotEncoder(b.tokenizer).encode(messages[:-1], [7, 0, 10], feed="fixed")
    assert all(c == s + 1 for s, c in zip(example.slots, example.ones, strict=True))  # a fed "1" after each slot
    with torch.no_grad():
        probs = torch.softmax(b.lm(torch.tensor([example.input_ids])).logits[0].float(), -1)
    for k, (slot, one) in enumerate(zip(example.slots, example.ones, strict=True)):
        digits = [probs[slot, t].item() for t in tokens.first]
        q = probs[one, tokens.zero].item()
        by_hand = [digits[0], digits[1] * (1 - q), *digits[2:], digits[1] * q]
        assert answer.distributions[k] == pytest.approx([p / sum(digits) for p in by_hand], rel=1e-3, abs=1e-12)
    greedy = b.score_slots([messages], [group_skeleton(3)])[0]  # the greedy feed differs after the first slot
    assert greedy.distributions[0] == pytest.approx(answer.distributions[0], abs=1e-5)
    gaps = [abs(x - y) for g, f in zip(greedy.distributions[1:], answer.distributions[1:], strict=True)
            for x, y in zip(g, f, strict=True)]
    assert max(gaps) > 1e-4


def test_fixed_feed_batched_equals_one_at_a_time(tiny_backend) -> None:
    prompts = [_prompt("q one", ["alpha beta", "gamma", "delta epsilon zeta"]),
               _prompt("a much longer second query about rivers", ["rivers flow", "mountains"])]
    skeletons = [group_skeleton(3), group_skeleton(2)]
    batched = tiny_backend.score_slots(prompts, skeletons, feed="fixed")
    for prompt, skeleton, together in zip(prompts, skeletons, batched, strict=True):
        alone = tiny_backend.score_slots([prompt], [skeleton], feed="fixed")[0]
        assert len(alone.distributions) == len(skeleton) and together.completion_tokens == alone.completion_tokens
        for a, b in zip(alone.distributions, together.distributions, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_unknown_feed_is_refused(tiny_backend) -> None:
    from grouprank.errors import InputError
    from reranker.groupwise import GroupwiseReranker

    with pytest.raises(InputError, match="slot feed"):
        GroupwiseReranker(tiny_backend, slot_feed="teacher")
    with pytest.raises(InputError, match="slot feed"):
        tiny_backend.score_slots([_prompt("q", ["a"])], [group_skeleton(1)], feed="teacher")


def test_groupwise_reranker_reads_slots_and_says_so(tiny_backend) -> None:
    from reranker.groupwise import GroupwiseReranker

    ranking = GroupwiseReranker(tiny_backend, group_size=4).rerank("tides", [f"doc {i}" for i in range(6)])
    assert ranking.trace.decoding == "logprobs" and ranking.trace.parse_failures == 0
    assert len(ranking.rerank_scores) == 6  # every document scored: no parse failures possible
    assert all(0.0 <= s <= 1.0 for s in ranking.rerank_scores.values())
    text = GroupwiseReranker(tiny_backend, group_size=4, decoding="text").rerank("tides", ["a", "b"])
    assert text.trace.decoding == "text"


def test_expired_deadline_scores_nothing(tiny_backend) -> None:
    import time

    answers = tiny_backend.score_slots([_prompt("q", ["a", "b"])], [group_skeleton(2)], time.monotonic() - 1)
    assert answers[0].error == "deadline" and not answers[0].distributions


def test_slot_log_probs_match_score_distribution() -> None:
    import torch

    from trainer.slot_loss import expected_scores, listnet_loss, slot_log_probs, token_loss

    first = torch.log(torch.tensor([[0.1, 0.4, 0, 0, 0, 0, 0, 0, 0, 0.5]]) + 1e-12)
    pair = torch.log(torch.tensor([[0.25, 0.75]]))
    lp = slot_log_probs(first, pair)
    want = score_distribution([0.1, 0.4, 0, 0, 0, 0, 0, 0, 0, 0.5], 0.25)
    assert lp.exp()[0].tolist() == pytest.approx(want, abs=1e-5)
    assert expected_scores(lp).item() == pytest.approx(expected_score(want), abs=1e-4)
    assert token_loss(lp, torch.tensor([10.0])).item() == pytest.approx(-math.log(0.1), abs=1e-4)
    # ListNet: equal scores give log(n); scores ordered like the targets give less.
    flat = listnet_loss(torch.zeros(3), torch.tensor([10.0, 0.0, 0.0]), tau=1.0)
    assert flat.item() == pytest.approx(math.log(3))
    assert listnet_loss(torch.tensor([9.0, 1.0, 1.0]), torch.tensor([10.0, 0.0, 0.0])).item() < flat.item()
