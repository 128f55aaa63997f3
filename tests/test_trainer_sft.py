"""SFT on a real (tiny, random) transformer: the loss covers the answer only, training lowers it, and the
model directory loads as a plain model with its metadata (LoRA merging is covered by the pipeline test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import SFTStageConfig, SynthesisConfig
from trainer.files import file_sha256
from trainer.mining import MinedDoc, MinedQuery
from trainer.modeldir import read_metadata
from trainer.sft import sft_trainer, train_sft
from trainer.synthesis import synthesize
from trainer.teachers import QrelsListwiseTeacher, QrelsPointwiseTeacher


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthesized groups of three short documents."""
    mined = []
    for q in range(4):
        docs = [MinedDoc(id=f"{q}-{i}", text=f"text {q} {i} about lift", rank=i + 1, label=int(i == q % 3))
                for i in range(3)]
        mined.append(MinedQuery(f"q{q}", f"query {q} lift", docs, [[0, 1, 2]]))
    rows = synthesize(mined, QrelsPointwiseTeacher(1), QrelsListwiseTeacher(), SynthesisConfig(max_doc_chars=100))
    path = tmp_path_factory.mktemp("sft") / "dataset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loss_is_on_the_answer_only(dataset: Path, tiny_model_path: str, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    trainer = sft_trainer(rows, tiny_model_path, SFTStageConfig(max_steps=1, device="cpu"), tmp_path / "work")
    example = trainer.train_dataset[0]
    trained = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    text = trainer.processing_class.decode(trained)
    answer = rows[0]["completion"][0]["content"]
    assert text.startswith(answer)
    assert text[len(answer):].strip() == "<|im_end|>"  # plus the end of the assistant turn, nothing of the prompt
    assert len(trained) < len(example["input_ids"]) / 5


@pytest.mark.slow
def test_sft_learns_and_writes_a_model_directory(dataset: Path, tiny_model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft-model"
    config = SFTStageConfig(max_steps=4, batch_size=2, learning_rate=3e-3, warmup_ratio=0.0, device="cpu")
    metadata = train_sft(dataset, tiny_model_path, out, config)
    assert metadata["metrics"]["last_loss"] < metadata["metrics"]["first_loss"]
    stored = read_metadata(out)
    assert stored["stage"] == "sft" and stored["base_model"] == tiny_model_path
    assert stored["data_sha256"] == file_sha256(dataset) and stored["data_rows"] == 4
    assert stored["config"]["max_steps"] == 4 and stored["metrics"]["steps"] == 4
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert not list(tmp_path.glob(".*"))  # work folders and temporaries are gone
