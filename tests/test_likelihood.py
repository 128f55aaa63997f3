"""Query likelihood: the maths by hand, the transformers backend against a plain forward pass, the
groupwise fusion and its calibration."""

from __future__ import annotations

import pytest

from reranker.likelihood import likelihood_prompt, mean_logprob, mix, query_continuation, unit_scores
from trainer.calibration import ScoredQuery, calibrate_weight


def test_prompt_and_continuation_collapse_whitespace() -> None:
    assert likelihood_prompt("Tides\n are  caused.") == (
        "Passage: Tides are caused.\nPlease write a question based on this passage.\nQuestion:")
    assert query_continuation("  what   causes tides ") == " what causes tides"


def test_mean_unit_and_mix_by_hand() -> None:
    assert mean_logprob([-1.0, -2.0, -3.0]) == pytest.approx(-2.0)
    assert unit_scores({0: -4.0, 1: -2.0, 2: -3.0}) == {0: 0.0, 1: 1.0, 2: 0.5}
    groupwise = {0: 0.8, 1: 0.2, 2: 0.5}
    mixed = mix(groupwise, {0: -4.0, 1: -2.0, 2: -3.0}, 0.25)
    assert mixed == pytest.approx({0: 0.75 * 0.8, 1: 0.75 * 0.2 + 0.25, 2: 0.75 * 0.5 + 0.25 * 0.5})
    assert mix(groupwise, {0: -1.0}, 0.0) == groupwise
    assert mix(groupwise, {0: -4.0, 1: -2.0}, 1.0) == {0: 0.0, 1: 1.0}
    # a document only one side scored keeps that side's score
    assert mix({0: 0.8}, {0: -4.0, 1: -2.0}, 0.5) == pytest.approx({0: 0.4, 1: 1.0})


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_path: str):
    from reranker.backends.transformers_backend import TransformersBackend

    return TransformersBackend(tiny_model_path, dtype="float32")


def test_backend_likelihood_equals_a_plain_forward_pass(tiny_backend) -> None:
    import torch

    prompts = [likelihood_prompt("The moon pulls the sea."), likelihood_prompt("Bananas are yellow and sweet fruit.")]
    cont = [query_continuation("what causes tides"), query_continuation("colour of bananas")]
    got = tiny_backend.score_likelihood(prompts, cont)
    for prompt, query, value in zip(prompts, cont, got, strict=True):
        head, tail = tiny_backend._ids(prompt), tiny_backend._ids(query)
        with torch.no_grad():
            logits = tiny_backend.lm(input_ids=torch.tensor([head + tail])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        want = sum(logp[len(head) - 1 + k, t].item() for k, t in enumerate(tail)) / len(tail)
        assert value.error is None and value.tokens == len(tail) and value.prompt_tokens == len(head)
        assert value.mean_logprob == pytest.approx(want, abs=1e-4)
    # batched (both pairs in one padded pass) equals one at a time
    alone = [tiny_backend.score_likelihood([p], [c])[0].mean_logprob for p, c in zip(prompts, cont, strict=True)]
    assert [v.mean_logprob for v in got] == pytest.approx(alone, abs=1e-4)


def test_rows_split_by_length_read_what_one_padded_batch_reads(tiny_backend, monkeypatch) -> None:
    """Rows of very different lengths: split into length-sorted batches (``plan_forward_batches``), the pass
    runs several forwards with less padding and gives each pair the value one padded batch gives."""
    from reranker.backends import transformers_backend

    docs = ["Tides.", "The moon pulls the sea. " * 12, "Bananas are yellow.", "Rivers run to the sea. " * 10]
    prompts, cont = [likelihood_prompt(d) for d in docs], [query_continuation("what causes tides")] * len(docs)
    shapes: list[tuple[int, int]] = []
    right_padded = transformers_backend.right_padded

    def counted(rows, pad_id):
        ids, mask = right_padded(rows, pad_id)
        shapes.append(tuple(ids.shape))
        return ids, mask

    monkeypatch.setattr(transformers_backend, "right_padded", counted)
    monkeypatch.setattr(tiny_backend, "forward_overhead", 10**9)
    one = tiny_backend.score_likelihood(prompts, cont)
    assert len(shapes) == 1
    monkeypatch.setattr(tiny_backend, "forward_overhead", 8)
    split = tiny_backend.score_likelihood(prompts, cont)
    assert len(shapes) > 2 and sum(r * w for r, w in shapes[1:]) < shapes[0][0] * shapes[0][1]
    assert [v.mean_logprob for v in split] == pytest.approx([v.mean_logprob for v in one], abs=1e-4)


def test_an_expired_deadline_scores_nothing(tiny_backend) -> None:
    got = tiny_backend.score_likelihood([likelihood_prompt("x")], [query_continuation("y")], deadline=0.0)
    assert got[0].mean_logprob is None and got[0].error == "deadline"


def test_groupwise_fuses_the_likelihood_and_keeps_both_parts(tiny_backend) -> None:
    from reranker import GroupwiseReranker

    docs = ["Tides are caused by the moon.", "Bananas are yellow.", "The stock market fell."]
    plain = GroupwiseReranker(tiny_backend, group_size=3, decoding="slots").rerank("what causes tides", docs)
    half = GroupwiseReranker(tiny_backend, group_size=3, decoding="slots", likelihood_weight=0.5)
    ranking = half.rerank("what causes tides", docs)
    assert ranking.trace.likelihood and not plain.trace.likelihood
    assert set(ranking.signals) == {"groupwise", "likelihood"}
    assert ranking.signals["groupwise"] == pytest.approx(plain.rerank_scores)
    backend_values = tiny_backend.score_likelihood([likelihood_prompt(d) for d in docs],
                                                   [query_continuation("what causes tides")] * 3)
    unit = unit_scores({i: v.mean_logprob for i, v in enumerate(backend_values)})
    for i, doc in enumerate(docs):
        assert ranking.signals["likelihood"][str(i)] == pytest.approx(unit[i], abs=1e-6)
        assert ranking.rerank_scores[str(i)] == pytest.approx(0.5 * plain.rerank_scores[str(i)] + 0.5 * unit[i])
        del doc
    only = GroupwiseReranker(tiny_backend, group_size=3, likelihood_weight=1.0).rerank("what causes tides", docs)
    assert set(only.signals) == {"likelihood"} and only.trace.decoding == "likelihood"  # no groupwise prompt
    assert only.trace.llm_calls == 3 and ranking.trace.llm_calls == 1 + 3  # every prompt counts: rows and groups
    assert only.rerank_scores == pytest.approx({str(i): unit[i] for i in range(3)}, abs=1e-6)


def test_a_backend_without_likelihoods_keeps_the_groupwise_scores(tiny_backend, monkeypatch) -> None:
    from reranker import GroupwiseReranker
    from reranker.backends.base import Backend

    docs = ["Tides are caused by the moon.", "Bananas are yellow."]
    plain = GroupwiseReranker(tiny_backend, group_size=2, decoding="slots").rerank("tides", docs)
    monkeypatch.setattr(type(tiny_backend), "score_likelihood", Backend.score_likelihood)  # the base: unsupported
    for weight in (0.5, 1.0):
        ranking = GroupwiseReranker(tiny_backend, group_size=2, decoding="slots", likelihood_weight=weight).rerank(
            "tides", docs)
        assert not ranking.trace.likelihood and not ranking.signals and not ranking.trace.errors
        assert ranking.rerank_scores == pytest.approx(plain.rerank_scores)
    # weights calibrated for the mix do not suit the groupwise scores alone: the model's own fallback weight
    hits = [{"id": "b", "text": docs[1], "score": 2.0}, {"id": "t", "text": docs[0], "score": 1.0}]
    for fallback_weight in (0.0, 1.0):
        reranker = GroupwiseReranker(tiny_backend, group_size=2, decoding="slots", likelihood_weight=0.5, weight=0.7,
                                     weight_without_likelihood=fallback_weight)
        ranking = reranker.rerank("tides", hits)
        want = {"b": 1.0, "t": 0.0} if fallback_weight == 0.0 else ranking.rerank_scores
        for doc, score in ranking:
            assert score == pytest.approx(0.5 + 0.5 * want[doc], abs=1e-6)


def test_calibration_searches_the_likelihood_weight_only_when_read() -> None:
    qrels = {"q": {"a": 1}}
    # the groupwise scores put "a" last, the likelihood puts it first, the retriever in the middle
    query = ScoredQuery("q", ["b", "a", "c"], [3.0, 2.0, 1.0], {0: 0.9, 1: 0.1, 2: 0.5}, {0: 0.0, 1: 1.0, 2: 0.5})
    cal = calibrate_weight([query], qrels)
    assert cal.likelihood_weight > 0 and cal.weight > 0 and cal.best == 1.0 and cal.first_stage < 1.0
    assert "0.00/0.00" in cal.table
    without = calibrate_weight([ScoredQuery("q", query.ids, query.retriever, query.rerank)], qrels)
    assert without.likelihood_weight == 0.0 and without.weight == 0.0 and "0.00" in without.table
    assert cal.weight_without_likelihood == 0.0 and without.weight_without_likelihood is None  # slots alone: no gain
    helpful = ScoredQuery("q", ["b", "a", "c"], [3.0, 2.0, 1.0], {0: 0.1, 1: 0.9, 2: 0.5}, {0: 1.0, 1: 0.0, 2: 0.5})
    assert calibrate_weight([helpful], qrels).weight_without_likelihood > 0


def _needs_both(qid: str) -> ScoredQuery:
    """Neither part alone ranks "a" first; their 50/50 mix does."""
    return ScoredQuery(qid, ["b", "c", "a"], [3.0, 2.0, 1.0], {0: 1.0, 1: 0.0, 2: 0.6}, {0: 0.0, 1: 1.0, 2: 0.6})


def _likelihood_suffices(qid: str) -> ScoredQuery:
    """The likelihood alone ranks "a" first (and so does the 50/50 mix); the groupwise scores put it last."""
    return ScoredQuery(qid, ["b", "c", "a"], [3.0, 2.0, 1.0], {0: 1.0, 1: 0.5, 2: 0.2}, {0: 0.0, 1: 0.2, 2: 1.0})


def test_a_two_pass_mix_is_served_only_when_it_beats_one_pass_beyond_noise() -> None:
    # every query gains from the mix: the gain is consistent (zero spread), so both passes are worth it
    consistent = [_needs_both(f"q{i}") for i in range(4)]
    qrels = {q.qid: {"a": 1} for q in consistent}
    cal = calibrate_weight(consistent, qrels)
    assert 0.0 < cal.likelihood_weight < 1.0 and cal.one_pass is not None and cal.one_pass["margin"] > 0
    assert cal.serve == (cal.weight, cal.likelihood_weight, 0.0)
    assert cal.to_dict()["serve"] == {"weight": cal.weight, "likelihood_weight": cal.likelihood_weight,
                                      "dense_weight": 0.0}
    # one query of four gains: a margin of one standard error is noise, so the best single part is served
    mixed = [_needs_both("q0")] + [_likelihood_suffices(f"q{i}") for i in range(1, 4)]
    cal = calibrate_weight(mixed, qrels)
    assert 0.0 < cal.likelihood_weight < 1.0
    assert cal.one_pass is not None and 0 < cal.one_pass["margin"] <= 2 * cal.one_pass["se"]
    assert cal.serve == (cal.one_pass["weight"], 1.0, 0.0)
    assert cal.to_dict()["serve"]["likelihood_weight"] == 1.0


def test_plackett_luce_and_listnet_by_hand() -> None:
    import math

    import torch

    from trainer.likelihood_train import listnet, plackett_luce_log_prob

    z = torch.tensor([2.0, 0.0, 1.0])
    # P(order 0, 2, 1) = e^2/(e^2+1+e^1) * e^1/(e^1+1) * 1
    want = math.log(math.exp(2) / (math.exp(2) + 1 + math.e) * math.e / (math.e + 1))
    assert plackett_luce_log_prob(z, torch.tensor([0, 2, 1])).item() == pytest.approx(want, abs=1e-6)
    teacher = torch.softmax(torch.tensor([10.0, 0.0]) / 5.0, -1)
    student = torch.log_softmax(torch.tensor([1.0, 0.0]), -1)
    assert listnet(torch.tensor([1.0, 0.0]), torch.tensor([10.0, 0.0]), 5.0).item() == pytest.approx(
        -(teacher * student).sum().item())


@pytest.fixture(scope="module")
def likelihood_trained(tiny_model_path: str):
    """A tiny model trained by likelihood SFT then likelihood GRPO on a toy task (the document naming the
    query's word is the relevant one)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.likelihood_train import (
        LikelihoodGRPOConfig,
        LikelihoodTrainConfig,
        encode_likelihood_groups,
        train_likelihood_grpo,
        train_likelihood_sft,
    )
    from trainer.mining import MinedDoc
    from trainer.slot_dataset import TeacherGroup

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rng = random.Random(0)
    words = ["apple", "river", "engine", "violin", "galaxy", "pepper"]
    groups = []
    for n in range(12):
        q = rng.choice(words)
        docs = [*rng.sample([w for w in words if w != q], 3), q]
        rng.shuffle(docs)
        groups.append(TeacherGroup(str(n), q, [MinedDoc(id=w, text=f"about {w}") for w in docs],
                                   [10 if w == q else 0 for w in docs]))
    examples = encode_likelihood_groups(groups, tok, 250, max_docs=3, seed=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    sft = LikelihoodTrainConfig(epochs=4, learning_rate=5e-3, lora_r=4, lora_alpha=8, dtype="float32",
                                freeze_fraction=0.0)
    model, sft_info = train_likelihood_sft(model, tok, examples, sft)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    grpo = LikelihoodGRPOConfig(learning_rate=1e-3, num_samples=4, dtype="float32")
    model, grpo_info = train_likelihood_grpo(model, tok, examples, grpo)
    changed = any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    return examples, sft_info, grpo_info, changed


def test_likelihood_groups_keep_the_best_document(likelihood_trained) -> None:
    examples, *_ = likelihood_trained
    assert len(examples) == 12
    assert all(len(e.prompts) == 3 and max(e.targets) == 10.0 for e in examples)


def test_likelihood_sft_lowers_the_ranking_loss_and_grpo_updates_the_adapter(likelihood_trained) -> None:
    _, sft_info, grpo_info, changed = likelihood_trained
    log = sft_info["log"]
    first = sum(x["rank"] for x in log[:12]) / 12
    last = sum(x["rank"] for x in log[-12:]) / 12
    assert len(log) == 48 and last < first
    assert grpo_info["metrics"]["steps"] == 12 and changed
    assert all(0.0 <= x["reward"] <= 1.2 for x in grpo_info["log"])


def test_calibration_gives_the_dense_similarity_a_share_only_where_it_helps() -> None:
    # the retriever and the likelihood put "a" last; the first stage's dense similarity puts it first
    helped = [ScoredQuery(f"q{i}", ["b", "c", "a"], [3.0, 2.0, 1.0], {0: 0.5, 1: 0.5, 2: 0.5},
                          {0: 1.0, 1: 0.5, 2: 0.0}, [0.2, 0.1, 0.9]) for i in range(3)]
    qrels = {q.qid: {"a": 1} for q in helped}
    cal = calibrate_weight(helped, qrels)
    assert cal.dense_weight > 0 and cal.best == 1.0 and cal.serve[2] > 0
    assert "0.00/0.00/1.00" in cal.table and cal.to_dict()["serve"]["dense_weight"] == cal.serve[2]
    misleading = [ScoredQuery(q.qid, q.ids, q.retriever, q.rerank, q.likelihood, [0.9, 0.1, 0.2]) for q in helped]
    assert calibrate_weight(misleading, {q.qid: {"b": 1} for q in helped}).dense_weight == 0.0


def test_the_model_card_says_how_many_passes_a_rerank_reads(tmp_path) -> None:
    from trainer.recipe import write_model_card

    base = {"name": "m", "data": {"objective": "likelihood"}, "fusion_weight": 0.4,
            "calibration": {"table": {"0.40/1.00": 0.5}, "best": 0.5, "first_stage": 0.4}}
    for likelihood_weight, says in ((1.0, "ONE batched"), (0.5, "in a second pass"), (0.0, "JSON slots")):
        write_model_card(tmp_path, {**base, "serving": {"likelihood_weight": likelihood_weight, "dense_weight": 0.9}})
        card = (tmp_path / "README.md").read_text()
        assert says in card and "d = **0.9**" in card and '"0.40/1.00"' not in card  # the grid stays in metadata
