"""The inline read-out: its layout, serving against a plain forward pass and against training (parity),
the deadline cases, the loss terms by hand and GRPO on a toy task."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reranker.likelihood import mix_signals
from reranker.readout import ReadoutLayout

TIDES = ("what causes tides", ["Tides are caused by the moon.", "Bananas are yellow.", "The stock market fell.",
                               "Gravity of the moon pulls water."])


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_path: str):
    from reranker.backends.transformers_backend import TransformersBackend

    return TransformersBackend(tiny_model_path, dtype="float32")


def test_layout_puts_each_readout_right_after_its_document(tiny_backend) -> None:
    layout = ReadoutLayout(tiny_backend._ids, query_after=True)
    row = layout.row("what  causes\ntides", ["Tides are caused by the moon.", "Bananas are yellow."])
    decode = tiny_backend.tokenizer.decode
    text = decode(row.ids)
    assert text.count("what causes tides") == 3  # the header and once after each document
    assert row.size == 2 and len(row.query_spans) == 2
    for k, (at, one, (start, end)) in enumerate(zip(row.readouts, row.ones, row.query_spans, strict=True)):
        assert decode(row.ids[:at + 1]).endswith("Relevance: ")
        assert decode(row.ids[start:end]) == " what causes tides"
        assert decode([row.ids[one]]) == "1"  # the fed "1": P("0" | "1") is read here
        # document k + 1 stands before its own read-out and after the previous one
        before = decode(row.ids[(row.readouts[k - 1] if k else 0):at])
        assert ["Tides are caused", "Bananas are yellow"][k] in before
    plain = ReadoutLayout(tiny_backend._ids, query_after=False).row("q", ["a", "b"])
    assert plain.query_spans == [] and plain.size == 2


def test_backend_readout_equals_a_plain_forward_pass(tiny_backend) -> None:
    import torch

    from reranker.slots import score_distribution

    layout = tiny_backend.readout_layout(True)
    answers = tiny_backend.score_readout([TIDES, ("colour of bananas", ["Bananas are yellow.", "Sky is blue."])],
                                         likelihood=True)
    for (query, texts), answer in zip([TIDES, ("colour of bananas", ["Bananas are yellow.", "Sky is blue."])],
                                      answers, strict=True):
        row = layout.row(query, texts)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_backend.lm(input_ids=torch.tensor([row.ids])).logits[0].float(), -1)
        for k, dist in enumerate(answer.distributions):
            first = logp[row.readouts[k], layout.tokens.first].exp().tolist()
            p10 = logp[row.ones[k], layout.tokens.zero].exp().item()
            assert dist == pytest.approx(score_distribution(first, p10), abs=1e-4)
            start, end = row.query_spans[k]
            want = sum(logp[j - 1, row.ids[j]].item() for j in range(start, end)) / (end - start)
            assert answer.likelihoods[k] == pytest.approx(want, abs=1e-4)
        assert answer.error is None and answer.prompt_tokens == len(row.ids)


def test_training_reads_what_serving_reads(tiny_model_path: str, tiny_backend) -> None:
    """Serve/train parity: the trainer's differentiable forward gives the backend's scores."""
    import torch
    from transformers import AutoModelForCausalLM

    from reranker.slots import expected_score
    from trainer.readout_train import ReadoutExample, forward

    layout = tiny_backend.readout_layout(True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    groups = [TIDES, ("colour of bananas", ["Bananas are yellow and sweet, a fruit rich in potassium.", "x"])]
    examples = [ReadoutExample(layout.row(q, texts), [0.0] * len(texts)) for q, texts in groups]
    out = forward(model, examples, layout.tokens, torch.float32, tiny_backend.pad_id)  # one padded batch
    served = [d for answer in tiny_backend.score_readout(groups) for d in answer.distributions]
    assert out.expected.tolist() == pytest.approx([expected_score(d) for d in served], abs=1e-4)
    assert out.expected.requires_grad


def _reranker(backend, **options):
    from reranker.groupwise import GroupwiseReranker

    return GroupwiseReranker(backend, decoding="readout", weight=1.0, **options)


def test_readout_reranker_scores_every_document_in_one_pass_per_group(tiny_backend) -> None:
    ranking = _reranker(tiny_backend, group_size=2).rerank(*TIDES)
    assert sorted(ranking.reranked) == ["0", "1", "2", "3"] and ranking.fallback == []
    assert ranking.trace.decoding == "readout"
    assert ranking.trace.llm_calls == 2  # two groups of two: every pass is counted
    assert set(ranking.signals["groupwise"]) == {"0", "1", "2", "3"}


def test_a_missed_deadline_is_a_fallback_never_reranked(tiny_backend) -> None:
    ranking = _reranker(tiny_backend, group_size=2).rerank(*TIDES, deadline_ms=0.0)
    assert ranking.reranked == [] and ranking.ids == ["0", "1", "2", "3"]  # the first stage's order
    assert "deadline" in " ".join(ranking.trace.errors)


def test_a_pass_cut_partway_leaves_the_unscored_group_as_fallback(tiny_backend, monkeypatch) -> None:
    """Two groups; the deadline passes after the first: its documents are reranked, the second group's
    fall back below them, in first-stage order."""
    real = tiny_backend._readout_batch
    calls = []

    def slow(rows, layout, likelihood=False):
        calls.append(len(rows))
        out = real(rows, layout, likelihood)
        time.sleep(0.3)
        return out

    monkeypatch.setattr(tiny_backend, "_readout_batch", slow)
    monkeypatch.setattr(tiny_backend, "max_batch_size", 1)
    ranking = _reranker(tiny_backend, group_size=2).rerank(*TIDES, deadline_ms=150.0)
    assert calls == [1]
    assert len(ranking.reranked) == 2 and len(ranking.fallback) == 2
    assert ranking.ids[2:] == ranking.fallback  # fallback documents rank below every reranked one


def test_mix_signals_leaves_out_a_document_missing_a_signal() -> None:
    readout, likelihood = {0: 0.9, 1: 0.2, 2: 0.5}, {0: 0.0, 1: 1.0}
    assert mix_signals(readout, likelihood, 0.5) == pytest.approx({0: 0.45, 1: 0.6})
    assert mix_signals(readout, likelihood, 0.0) == readout
    assert mix_signals(readout, likelihood, 1.0) == likelihood


# -- training: the loss terms by hand -----------------------------------------------------------------


def test_loss_terms_by_hand() -> None:
    import math

    import torch

    from trainer.readout_train import listwise_kl, point_ce, ranknet

    t = torch.tensor([8.0, 2.0, 5.0])
    assert listwise_kl(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert listwise_kl(torch.tensor([2.0, 8.0, 5.0]), t, 2.0).item() > 0.5
    # pairs (0 > 1), (0 > 2), (2 > 1): all ordered right by 1 point each
    s = torch.tensor([3.0, 1.0, 2.0])
    want = (math.log1p(math.exp(-2.0)) + 2 * math.log1p(math.exp(-1.0))) / 3
    assert ranknet(s, t).item() == pytest.approx(want, abs=1e-6)
    assert ranknet(s, torch.tensor([5.0, 5.0, 5.0])).item() == 0.0
    dist = torch.full((1, 11), 1e-9)
    dist[0, 7], dist[0, 8] = 0.7, 0.3
    low = point_ce(dist, torch.tensor([7.3])).item()
    assert low == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), abs=1e-4)
    assert point_ce(dist, torch.tensor([2.0])).item() > low + 10


def test_grpo_raises_ndcg_on_a_toy_task() -> None:
    """Policy logits trained by ``grpo_loss`` alone must come to rank the documents as the targets do; with
    the advantage's sign flipped they would not."""
    import torch

    from trainer.readout_train import ReadoutGRPOConfig, grpo_loss
    from trainer.rewards import ndcg_at_k

    targets = [0.0, 10.0, 3.0, 0.0, 7.0, 1.0]
    z = torch.nn.Parameter(torch.zeros(len(targets)))
    optimizer = torch.optim.SGD([z], lr=0.5)
    config = ReadoutGRPOConfig(num_samples=16, kl_beta=0.0)
    generator = torch.Generator().manual_seed(0)

    def ndcg() -> float:
        return ndcg_at_k(z.detach().tolist(), [round(t) for t in targets], 5)

    before = ndcg()
    for _ in range(60):
        loss, _ = grpo_loss(z, targets, config, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert ndcg() > before + 0.2 and ndcg() > 0.95


def test_mix_signals_without_likelihood_keeps_the_readout() -> None:
    assert mix_signals({0: 0.9, 1: 0.2}, {}, 0.5) == {0: 0.9, 1: 0.2}


def test_metadata_comes_from_the_model_served_only(tiny_backend, tmp_path: Path) -> None:
    """A ready backend gets its own model's metadata (none for a model without it), never the shipped
    model's; a model folder with readout metadata is served as it says."""
    import json

    from reranker import load_reranker

    name = tiny_backend.model
    tiny_backend.model = ""  # a backend that names no model
    try:
        plain = load_reranker("groupwise", backend=tiny_backend)
    finally:
        tiny_backend.model = name
    assert plain.decoding == "auto" and plain.weight == 0.6 and plain.group_size == 20
    (tmp_path / "metadata.json").write_text(json.dumps({"fusion_weight": 0.3, "serving": {
        "decoding": "readout", "group_size": 7, "max_doc_chars": 120, "query_after": False}}))
    tiny_backend.model = str(tmp_path)
    try:
        served = load_reranker("groupwise", backend=tiny_backend)
        pointwise = load_reranker("pointwise", backend=tiny_backend)
    finally:
        tiny_backend.model = name
    assert (served.decoding, served.group_size, served.truncator.max_chars, served.query_after, served.weight) == (
        "readout", 7, 120, False, 0.3)
    assert pointwise.decoding == "auto"  # the read-out settings are the groupwise reranker's


def test_promotion_needs_a_better_validation_score(tiny_model_path: str, tmp_path: Path) -> None:
    import json

    import peft
    from transformers import AutoModelForCausalLM

    from trainer.readout_recipe import ReadoutRecipe, promote

    candidate = tmp_path / "candidate"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(candidate)
    subsets = {"dl19_val": 8, "cranfield_val": 20}
    row = {"fused": {"dl19_val": 0.6, "cranfield_val": 0.4}, "readout": {"dl19_val": 0.5, "cranfield_val": 0.3},
           "fusion_weight": 0.7, "calibration": {"0.7": 0.46}, "permutation_spearman": 0.9,
           "tides": {"order": ["a"]}, "ms_per_query": {"dl19_top100": 1.0}}
    evaluation = {"subsets": subsets, "table": {"first_stage": {"dl19_val": 0.4, "cranfield_val": 0.3}},
                  "models": {"m": row}}
    trained = {"recipe": {**ReadoutRecipe().__dict__, "layers": 3}, "grpo": {"metrics": {"steps": 5}},
               "sft": {}, "examples": 1, "queries": 1, "tokens_per_group": 10, "seconds": 1}
    training = {"training": trained, "teacher": {"weights": {"bm25": 0.4, "dense": 0.6}},
                "data": {"dl19": {"kept": 1, "synthesized": 2}}, "command": "train it"}
    validation = (0.6 * 8 + 0.4 * 20) / 28
    refused = promote(candidate, tmp_path / "out", training, evaluation, "m", bar=validation + 0.01)
    assert not refused["promoted"] and not (tmp_path / "out").exists()
    done = promote(candidate, tmp_path / "out", training, evaluation, "m", bar=validation - 0.01)
    assert done["promoted"] and done["validation_fused"] == pytest.approx(validation, abs=1e-4)
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["serving"]["layers"] == 3 and metadata["serving"]["decoding"] == "readout"
    assert metadata["fusion_weight"] == 0.7 and "train it" in (tmp_path / "out" / "README.md").read_text()


def test_the_shipped_model_is_served_as_it_was_trained() -> None:
    """Whatever the backend type, ``load_reranker`` serves the shipped model with the settings in its
    metadata, and those are the ones its training recipe used."""
    from reranker import load_reranker
    from reranker.backends.base import Backend
    from reranker.models import GROUPRANK_ALIAS, model_metadata

    class Named(Backend):  # no weights are needed to resolve the settings
        model = GROUPRANK_ALIAS

        def generate(self, prompts, config, deadline=None):  # pragma: no cover - never called
            raise AssertionError

        def count_tokens(self, text: str) -> int:
            return len(text.split())

    metadata = model_metadata(GROUPRANK_ALIAS)
    assert metadata is not None
    serving = metadata["serving"]
    served = load_reranker("groupwise", backend=Named())
    assert served.weight == metadata["fusion_weight"]
    assert served.truncator.max_chars == serving["max_doc_chars"] and served.group_size == serving["group_size"]
    for name in ("decoding", "query_after", "likelihood_weight", "slot_feed"):
        if name in serving:
            assert getattr(served, name) == serving[name], name
    chosen = metadata.get("calibration", {}).get("serve")
    if chosen:  # the calibration's choice (one pass unless a mix beat it beyond noise) is what is served
        assert (served.weight, served.likelihood_weight) == (chosen["weight"], chosen["likelihood_weight"])
        assert served.dense_weight == chosen.get("dense_weight", 0.0) == serving.get("dense_weight", 0.0)
    if serving.get("decoding") == "readout":
        recipe = metadata["training"]["recipe"]
        for name in ("layers", "query_after", "max_doc_chars", "group_size"):
            assert serving[name] == recipe[name], name
