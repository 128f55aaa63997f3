"""Slot training: data encoding, groups and teachers, the calibrated fusion weight, SFT and GRPO on a tiny
model, and the calibrated weight stored and used by ``load_reranker``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from trainer.calibration import ScoredQuery, calibrate_weight, fused_run
from trainer.mining import MinedDoc, MinedQuery
from trainer.slot_dataset import dense_points, position_balance, sample_groups, synthetic_queries, teacher_points


def test_calibration_picks_the_best_weight_and_zero_when_the_model_adds_nothing() -> None:
    qrels = {"q": {"a": 1, "b": 0, "c": 0}}
    # The retriever puts the relevant document last; the model puts it first.
    good = [ScoredQuery("q", ["b", "c", "a"], [3.0, 2.0, 1.0], {0: 0.1, 1: 0.2, 2: 0.9})]
    cal = calibrate_weight(good, qrels)
    assert cal.adds_value and cal.weight > 0.5 and cal.best == pytest.approx(1.0)
    assert cal.first_stage == pytest.approx(0.5)  # relevant at rank 3: 1 / log2(4)
    # A model that ranks like the retriever adds nothing: every weight ties, the smallest (0) wins.
    same = [ScoredQuery("q", ["a", "b", "c"], [3.0, 2.0, 1.0], {0: 0.9, 1: 0.5, 2: 0.1})]
    cal = calibrate_weight(same, qrels)
    assert cal.weight == 0.0 and not cal.adds_value
    # Weight 0 is exactly the retriever's order.
    run = fused_run(good, 0.0)["q"]
    assert sorted(run, key=lambda d: -run[d]) == ["b", "c", "a"]


def _mined(n: int = 12) -> MinedQuery:
    docs = [MinedDoc(id=f"d{i}", text=f"text {i}", rank=i + 1, score=float(n - i), label=1 if i == 7 else 0)
            for i in range(n)]
    return MinedQuery("q1", "a query", docs)


def test_teacher_points_grade_first_then_dense() -> None:
    points, keys = teacher_points(_mined(), None, max_grade=1)
    assert points[7] == 10.0 and all(p == 0.0 for i, p in enumerate(points) if i != 7)
    assert max(range(12), key=lambda i: keys[i]) == 7
    assert dense_points([1.0, 3.0, 2.0]) == [0.0, 10.0, 5.0]


def test_unjudged_candidates_of_a_judged_query_stay_below_the_graded_ones() -> None:
    class Teacher:  # a stand-in for the dense teacher: its raw scores by document id
        def score_docs(self, query, docs, index=None):
            return [{"top": 0.9, "pos": 0.5, "neg": 0.1}[d.id] for d in docs]

    docs = [MinedDoc(id="top", text="a", rank=1, label=None), MinedDoc(id="pos", text="b", rank=2, label=2),
            MinedDoc(id="neg", text="c", rank=3, label=0)]
    points, keys = teacher_points(MinedQuery("q", "query", docs), Teacher(), max_grade=2)
    assert points == [6.0, 10.0, 0.0]  # the unjudged one's dense 10 is scaled to unjudged_max
    assert keys[1] > keys[0] > keys[2]
    assert teacher_points(MinedQuery("q", "query", docs), Teacher(), 2, unjudged_max=10.0)[0][0] == 10.0


def test_groups_are_shuffled_so_positions_carry_no_signal() -> None:
    mined = _mined()
    points, keys = teacher_points(mined, None, max_grade=1)
    groups = sample_groups(mined, points, keys, [4], 2000, random.Random(0))
    assert all(any(d.id == "d7" for d in g.docs) for g in groups)  # the best candidate is in every group
    balance = position_balance(groups, 4)
    assert max(abs(b) for b in balance) < 0.3  # the relevant document sits at every position alike
    # Without the shuffle the best candidate would always come first: the measure would show it.
    for g in groups:
        g.targets.sort(reverse=True)
    assert position_balance(groups, 4)[0] > 3


def test_synthetic_queries_cut_the_first_sentence_from_the_positive() -> None:
    class Doc:
        def __init__(self, id: str, text: str, title: str = "") -> None:
            self.id, self.text, self.title = id, text, title

    docs = [Doc("a", "Tides rise and fall twice a day. The moon's gravity pulls the oceans toward it, "
                     "and the earth's rotation does the rest."),
            Doc("b", "Short."), Doc("c", "Body text long enough to be a positive passage here.", "A titled doc")]
    triples = {t[0]: t for t in synthetic_queries(docs, 10, seed=0)}
    assert triples["a"][1] == "Tides rise and fall twice a day" and "Tides rise" not in triples["a"][2]
    assert triples["c"][1] == "A titled doc" and "b" not in triples


def test_slot_encoder_positions_point_at_the_score_tokens(smollm2_path: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.slot_data import SlotEncoder, length_batches

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    enc = SlotEncoder(tok)
    ex = enc.encode([{"role": "user", "content": "q"}], [10, 3, 1], feed="greedy")  # teacher forcing
    digits = [tok.decode([ex.input_ids[s + 1]]) for s in ex.slots]
    assert digits == ["1", "3", "1"]  # the token after each slot is the score's first token
    assert ex.ones[0] >= 0 and tok.decode([ex.input_ids[ex.ones[0] + 1]]) == "0"  # "10": a "1" then "0"
    assert ex.ones[1] == -1 and ex.ones[2] >= 0
    assert tok.decode(ex.input_ids[ex.slots[0] - 5:]).startswith('{"[1]"')
    fixed = enc.encode([{"role": "user", "content": "q"}], [10, 3, 1])  # the default: no target is fed
    assert tok.decode(fixed.input_ids[fixed.slots[0] - 5:]).endswith('{"[1]": 1, "[2]": 1, "[3]": 1}')
    assert fixed.ones == [s + 1 for s in fixed.slots] and fixed.targets == [10.0, 3.0, 1.0]
    assert sorted(i for b in length_batches([5, 100, 6, 99], 200, 0) for i in b) == [0, 1, 2, 3]
    assert all(len(b) * max([5, 100, 6, 99][i] for i in b) <= 200 for b in length_batches([5, 100, 6, 99], 200, 0))


@pytest.fixture(scope="module")
def trained(tiny_model_path: str):
    """A tiny model trained by slot SFT then slot GRPO on a toy task (the document naming the query's word
    is the relevant one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.prompts import groupwise_messages
    from trainer.slot_data import SlotEncoder
    from trainer.slot_grpo import SlotGRPOConfig, train_slot_grpo
    from trainer.slot_sft import SlotTrainConfig, train_slot_sft

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    enc = SlotEncoder(tok)
    rng = random.Random(0)
    words = ["apple", "river", "engine", "violin", "galaxy", "pepper"]
    examples = []
    for _ in range(12):
        q = rng.choice(words)
        docs = rng.sample(words, 3)
        targets = [10.0 if w == q else 0.0 for w in docs]
        examples.append(enc.encode(groupwise_messages(q, [f"about {w}" for w in docs])[:-1], targets))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    sft = SlotTrainConfig(epochs=3, learning_rate=5e-3, lora_r=4, lora_alpha=8, dtype="float32", batch_tokens=2048)
    model, sft_info = train_slot_sft(model, tok, examples, sft)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    grpo = SlotGRPOConfig(epochs=1, learning_rate=1e-3, num_samples=4, dtype="float32", batch_tokens=2048)
    model, grpo_info = train_slot_grpo(model, tok, examples, grpo)
    changed = any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    return model, tok, sft_info, grpo_info, changed


def test_slot_sft_lowers_the_loss_and_grpo_updates_the_adapter(trained) -> None:
    _, _, sft_info, grpo_info, changed = trained
    log = sft_info["log"]
    assert len(log) >= 3 and log[-1]["loss"] < log[0]["loss"]
    assert sft_info["metrics"]["tokens_per_s"] > 0
    assert grpo_info["metrics"]["steps"] >= 1 and changed
    assert all(0.0 <= x["reward"] <= 1.2 for x in grpo_info["log"])


def test_calibrated_weight_is_stored_and_used(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter folder with metadata.json: load_reranker resolves it (merged once into the cache) and
    fuses with its calibrated weight unless the caller gives one."""
    from reranker import load_reranker

    model, _tok, *_ = trained
    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).exists()
    (adapter / "metadata.json").write_text(json.dumps({"fusion_weight": 0.3}))
    assert load_reranker("groupwise", model=str(adapter), dtype="float32").weight == 0.3
    assert load_reranker("groupwise", model=str(adapter), weight=0.8, dtype="float32").weight == 0.8
    (adapter / "metadata.json").write_text(json.dumps({"fusion_weight": 0.3, "serving": {"likelihood_weight": 0.4}}))
    assert load_reranker("groupwise", model=str(adapter), dtype="float32").likelihood_weight == 0.4
    assert load_reranker("groupwise", model=str(adapter), likelihood_weight=0.0, dtype="float32").likelihood_weight == 0
    (adapter / "metadata.json").write_text(json.dumps({"fusion_weight": 0.3}))
    ranking = load_reranker("groupwise", model=str(adapter), dtype="float32").rerank(
        "apple", [{"id": "x", "text": "about river", "score": 2.0}, {"id": "y", "text": "about apple", "score": 1.0}])
    fused = {i: s for i, s in ranking}
    minmax = {"x": 1.0, "y": 0.0}
    for doc, score in fused.items():
        # reranked documents map the fused score into 0.5..1 (reranker.scoring.fuse)
        assert score == pytest.approx(0.5 + 0.5 * (0.3 * ranking.rerank_scores[doc] + 0.7 * minmax[doc]), abs=1e-6)
