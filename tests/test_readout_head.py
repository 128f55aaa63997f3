"""The read-out head: its loss terms by hand, training and GRPO on toy states, and a head model folder
served exactly as it was trained (states collected by the trainer = states the backend reads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from trainer.readout_head import (  # noqa: E402
    HeadConfig,
    HeadData,
    group_ndcg,
    grpo_head,
    masked_kl,
    masked_ranknet,
    point_bce,
    train_head,
)

TIDES = ("what causes tides", ["Tides are caused by the moon.", "Bananas are yellow.", "The stock market fell.",
                               "Gravity of the moon pulls water."])


def test_loss_terms_by_hand_ignore_padding() -> None:
    logits = torch.tensor([[1.0, 0.0, 99.0]])
    targets = torch.tensor([[10.0, 0.0, 5.0]])
    mask = torch.tensor([[True, True, False]])
    p = torch.softmax(torch.tensor([5.0, 0.0]), -1)  # tau 2
    q = torch.softmax(torch.tensor([1.0, 0.0]), -1)
    assert masked_kl(logits, targets, mask, 2.0).item() == pytest.approx((p * (p / q).log()).sum().item(), abs=1e-6)
    assert masked_ranknet(logits, targets, mask).item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)
    bce = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 - 0.5)) / 2
    assert point_bce(logits, targets, mask).item() == pytest.approx(bce, abs=1e-6)
    assert group_ndcg(torch.tensor([[0.0, 1.0, 9.0]]), torch.tensor([[3.0, 0.0, 3.0]]), mask) == pytest.approx(
        (7 / math.log2(3)) / 7)


def toy(groups: int, seed: int) -> tuple[HeadData, HeadData]:
    """States whose first coordinate is the grade plus noise; targets (0..10) and grades (0..3)."""
    g = torch.Generator().manual_seed(seed)
    grades = torch.randint(0, 4, (groups, 10), generator=g).float()
    states = torch.randn(groups, 10, 16, generator=g)
    states[:, :, 0] += grades
    mask = torch.ones(groups, 10, dtype=torch.bool)
    return HeadData(states, grades * 10 / 3, mask), HeadData(states, grades, mask)


def test_head_learns_to_rank_toy_states() -> None:
    train, _ = toy(64, 0)
    _, held = toy(32, 1)
    head, out = train_head(train, HeadConfig(epochs=60, learning_rate=3e-2), held)
    from reranker.backends.torch_readout import head_logits

    before = group_ndcg(torch.zeros(32, 10) + torch.arange(10.0), held.targets, held.mask)
    after = group_ndcg(head_logits(held.states, head), held.targets, held.mask)
    assert after > 0.9 > before + 0.1
    assert out["report"]["best_held_ndcg"] == pytest.approx(after, abs=1e-6)


def test_grpo_head_raises_the_reward_of_a_weak_head() -> None:
    train, _ = toy(48, 2)
    head, _ = train_head(train, HeadConfig(epochs=3, learning_rate=1e-2))
    from reranker.backends.torch_readout import head_logits

    before = group_ndcg(head_logits(train.states, head), train.targets, train.mask)
    tuned, report = grpo_head(head, train, HeadConfig(grpo_epochs=4, grpo_lr=3e-2, kl_beta=0.0))
    after = group_ndcg(head_logits(train.states, tuned), train.targets, train.mask)
    assert after > before + 0.02
    assert report["steps"] == 4 * 48


def test_a_head_model_folder_is_served_as_it_was_trained(tiny_model_path: str, tmp_path: Path) -> None:
    """A folder holding only metadata and a head serves its base at ``serving.layers`` plus the head, and the
    trainer's collected states give the served scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker import load_reranker
    from reranker.backends.torch_readout import head_logits, head_scores, save_head
    from reranker.models import truncate_layers
    from reranker.readout import ReadoutLayout
    from reranker.types import Candidate, RerankRequest
    from trainer.readout_head import collect_states

    folder = tmp_path / "head-model"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    width = AutoModelForCausalLM.from_pretrained(tiny_model_path).config.hidden_size
    head = {"mean": torch.zeros(width), "scale": torch.ones(width), "w": 0.05 * torch.randn(width, generator=g),
            "b": torch.tensor(0.1)}
    save_head(folder, head)
    (folder / "metadata.json").write_text(json.dumps({
        "name": "head-model", "base_model": tiny_model_path,
        "serving": {"decoding": "readout", "layers": 1, "query_after": True, "group_size": 4,
                    "max_doc_chars": 250, "likelihood_weight": 0.0}}))
    reranker = load_reranker("groupwise", model=str(folder), dtype="float32")
    assert reranker.backend.lm.config.num_hidden_layers == 1 and reranker.backend.readout_head is not None
    query, texts = TIDES
    ranking = reranker.rerank_batch([RerankRequest(query, [Candidate(str(i), t) for i, t in enumerate(texts)])])[0]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)  # 2 layers, read at depth 1
    layout = ReadoutLayout(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], True)
    row = layout.row(query, texts)
    states = collect_states(full, [row], reranker.backend.pad_id, depths=[1, 2])[1][0]
    cut = truncate_layers(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), 1)
    assert torch.allclose(collect_states(cut, [row], reranker.backend.pad_id)[1][0], states, atol=1e-5)
    want = (head_scores(head_logits(states, head)) / 10).tolist()  # signals are on 0..1
    served = ranking.signals["groupwise"]
    assert [served[str(i)] for i in range(4)] == pytest.approx(want, abs=1e-4)
    assert ranking.trace.llm_calls == 1 and ranking.trace.decoding == "readout"


def test_a_saved_head_is_readable_by_other_users(tmp_path) -> None:
    """A model folder is often written by the trainer and served by a worker running as another user."""
    import stat

    from reranker.backends.torch_readout import load_head, save_head

    head = {"mean": torch.zeros(4), "scale": torch.ones(4), "w": torch.arange(4.0), "b": torch.tensor(0.5)}
    path = save_head(tmp_path, head)
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044
    loaded = load_head(tmp_path)
    assert loaded is not None and torch.equal(loaded["w"], head["w"]) and float(loaded["b"]) == 0.5
