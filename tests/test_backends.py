"""LLM backends: transformers (a real tiny model), openai (against a real local HTTP server), vllm."""

from __future__ import annotations

import importlib.util
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import torch

from grouprank.errors import InputError, MissingExtraError
from reranker.backends import load_backend
from reranker.backends.base import Completion, GenerationConfig, Messages
from reranker.backends.batching import plan_batches, plan_forward_batches
from reranker.backends.openai_backend import OpenAIBackend, request_body, retry_after_seconds
from reranker.backends.transformers_backend import TransformersBackend, truncate_at_stop
from reranker.backends.vllm_backend import VLLMBackend, completion_from_output, sampling_kwargs

GREEDY = GenerationConfig(max_new_tokens=12)


def chat(text: str) -> Messages:
    return [{"role": "system", "content": "You rank documents."}, {"role": "user", "content": text}]


# Prompts of clearly different lengths, so batches need real left padding.
PROMPTS = [
    chat("hello"),
    chat("What is the capital of France? " * 6),
    chat("Rank these: [1] cats purr [2] dogs bark [3] birds sing"),
    chat("x " * 90),
    chat("Paris"),
    chat("The quick brown fox jumps over the lazy dog. " * 3),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_path: str) -> TransformersBackend:
    backend = load_backend("transformers", model=tiny_model_path)
    assert isinstance(backend, TransformersBackend)
    return backend


@pytest.fixture(scope="module")
def singles(tiny: TransformersBackend) -> list[Completion]:
    """Each prompt generated on its own: the reference for the batched paths."""
    return [tiny.generate([prompt], GREEDY)[0] for prompt in PROMPTS]


# -- load_backend --------------------------------------------------------------------------------


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(InputError) as info:
        load_backend("llamafile", model="x")
    for name in ("transformers", "vllm", "openai"):
        assert name in str(info.value)


# -- transformers --------------------------------------------------------------------------------


def test_plan_batches_respects_budget_and_size() -> None:
    lengths = [10, 300, 50, 40, 1000, 45, 20]
    batches = plan_batches(lengths, max_new_tokens=20, max_batch_tokens=400, max_batch_size=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)  # longest first, so batches hold similar lengths
    for batch in batches:
        assert len(batch) <= 3
        if len(batch) > 1:
            assert len(batch) * (max(lengths[i] for i in batch) + 20) <= 400
    assert [4] in batches and [1] in batches  # too long to share: alone, never dropped


def test_generates_text_with_token_counts(tiny: TransformersBackend, singles: list[Completion]) -> None:
    for prompt, answer in zip(PROMPTS, singles, strict=True):
        assert answer.error is None
        assert answer.text
        assert answer.prompt_tokens == len(tiny.encode(prompt))
        expected = tiny.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert answer.prompt_tokens == len(expected)
        assert 0 < answer.completion_tokens <= GREEDY.max_new_tokens


def test_matches_a_plain_model_generate_call(tiny: TransformersBackend, singles: list[Completion]) -> None:
    """The backend's answer is what ``model.generate`` gives for the unpadded prompt."""
    ids = torch.tensor([tiny.encode(PROMPTS[1])])
    with torch.inference_mode():
        out = tiny.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    eos = tiny.tokenizer.eos_token_id
    new = new[: new.index(eos) + 1] if eos in new else new
    assert singles[1].text == tiny.tokenizer.decode(new, skip_special_tokens=True)
    assert singles[1].completion_tokens == len(new)


def test_forward_batches_split_where_padding_costs_more_than_a_call() -> None:
    # one batch of [100, 10, 10, 10] pads to 4 * 100 = 400 (+5); apart: 100 + 3 * 10 (+2 * 5) = 140
    assert plan_forward_batches([10, 100, 10, 10], max_batch_tokens=1000, max_batch_size=8, overhead=5) == [
        [1], [0, 2, 3]]
    # nearly equal rows: the padding (3 tokens) is cheaper than another call (48)
    assert plan_forward_batches([50, 49, 48], max_batch_tokens=1000, max_batch_size=8, overhead=48) == [[0, 1, 2]]
    # the budget and the size bound hold; a row over the budget alone still gets its batch
    plan = plan_forward_batches([300, 20, 20, 20, 20], max_batch_tokens=50, max_batch_size=2, overhead=0)
    assert plan[0] == [0] and all(len(b) <= 2 and (len(b) == 1 or 20 * len(b) <= 50) for b in plan)
    assert sorted(i for b in plan for i in b) == list(range(5))


def _partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1:]]


@pytest.mark.parametrize("seed", range(20))
def test_forward_batches_are_the_cheapest_of_every_grouping(seed: int) -> None:
    """Against brute force over every set partition (not only contiguous ones) of up to 7 rows."""
    import random

    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 7))]
    budget, size, overhead = rng.choice([60, 120, 10_000]), rng.randint(1, 4), rng.choice([0, 8, 48])

    def cost(plan: list[list[int]]) -> float:
        if any(len(b) > size or (len(b) > 1 and len(b) * max(lengths[i] for i in b) > budget) for b in plan):
            return float("inf")
        return sum(len(b) * max(lengths[i] for i in b) + overhead for b in plan)

    plan = plan_forward_batches(lengths, budget, size, overhead)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert cost(plan) == min(cost(p) for p in _partitions(list(range(len(lengths)))))


@pytest.mark.parametrize("max_batch_tokens", [16_384, 200])
def test_batched_equals_one_at_a_time(
    tiny: TransformersBackend, singles: list[Completion], max_batch_tokens: int
) -> None:
    """Greedy answers do not depend on batching (one batch, or several with a small budget)."""
    tiny.max_batch_tokens = max_batch_tokens
    try:
        batched = tiny.generate(PROMPTS, GREEDY)
    finally:
        tiny.max_batch_tokens = 16_384
    assert [b.text for b in batched] == [s.text for s in singles]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in singles]
    assert [b.completion_tokens for b in batched] == [s.completion_tokens for s in singles]
    assert len({s.text for s in singles}) > 1  # the answers depend on the prompt


def test_empty_and_malformed_prompts(tiny: TransformersBackend, singles: list[Completion]) -> None:
    assert tiny.generate([], GREEDY) == []
    bad: Any = [{"content": "no role"}]
    answers = tiny.generate([PROMPTS[0], bad], GREEDY)
    assert answers[0].text == singles[0].text and answers[0].error is None
    assert answers[1].text == "" and "chat template" in (answers[1].error or "")


def test_deadline_already_passed_gives_deadline_errors(tiny: TransformersBackend) -> None:
    answers = tiny.generate(PROMPTS, GREEDY, deadline=time.monotonic() - 1)
    assert [a.error for a in answers] == ["deadline"] * len(PROMPTS)
    assert all(a.text == "" and a.prompt_tokens > 0 for a in answers)


def test_deadline_during_generation_stops_it(tiny: TransformersBackend) -> None:
    # 3000 tokens take the tiny model far longer than the 0.5 s allowed; generation must stop early.
    answers = tiny.generate(PROMPTS[:2], GenerationConfig(max_new_tokens=3000), deadline=time.monotonic() + 0.5)
    assert [a.error for a in answers] == ["deadline", "deadline"]
    assert all(a.text == "" and a.completion_tokens < 3000 for a in answers)


def test_future_deadline_changes_nothing(tiny: TransformersBackend, singles: list[Completion]) -> None:
    answers = tiny.generate(PROMPTS[:3], GREEDY, deadline=time.monotonic() + 600)
    assert [a.text for a in answers] == [s.text for s in singles[:3]]


def test_stop_string_cuts_the_answer(tiny: TransformersBackend, singles: list[Completion]) -> None:
    reference = singles[2]
    stop = reference.text[len(reference.text) // 2 :][:3]  # a piece from the second half
    assert stop.strip()
    [answer] = tiny.generate([PROMPTS[2]], GenerationConfig(max_new_tokens=12, stop=[stop]))
    assert answer.text == reference.text[: reference.text.find(stop)]
    assert answer.completion_tokens < reference.completion_tokens
    assert answer.finish_reason == "stop"
    if reference.completion_tokens == 12 and not reference.text.endswith(tiny.tokenizer.eos_token or "\0"):
        assert reference.finish_reason == "length"
    # In a batch, the stopped row is padded while the others go on: same text, same token count.
    config = GenerationConfig(max_new_tokens=12, stop=[stop])
    batched = tiny.generate([PROMPTS[2], *PROMPTS[3:]], config)
    alone = [tiny.generate([p], config)[0] for p in PROMPTS[3:]]
    assert batched[0] == answer
    assert batched[1:] == alone


def test_truncate_at_stop_uses_the_earliest_stop() -> None:
    assert truncate_at_stop("a [9] > [2] END", ["END", ">"]) == ("a [9] ", True)
    assert truncate_at_stop("no stops", ["END"]) == ("no stops", False)


def test_failing_batches_are_split_and_one_bad_prompt_fails_alone(
    tiny: TransformersBackend, singles: list[Completion], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real out-of-memory error cannot be provoked on this CPU, so the model's generate is wrapped
    # to raise for batches of more than two rows, and always for the row holding prompt 3.
    real_generate = tiny.lm.generate
    poison = tiny.encode(PROMPTS[3])
    calls: list[int] = []

    def flaky_generate(**kwargs: Any) -> torch.Tensor:
        input_ids = kwargs["input_ids"]
        calls.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise RuntimeError("simulated out of memory")
        if any(row[-len(poison) :].tolist() == poison for row in input_ids):
            raise RuntimeError("simulated bad prompt")
        return real_generate(**kwargs)

    monkeypatch.setattr(tiny.lm, "generate", flaky_generate)
    answers = tiny.generate(PROMPTS, GREEDY)
    assert calls == [6, 3, 1, 2, 3, 1, 2]  # 6 fails -> halves of 3 fail -> 1 + 2 each
    assert answers[3].error == "RuntimeError: simulated bad prompt" and answers[3].text == ""
    for i, (answer, single) in enumerate(zip(answers, singles, strict=True)):
        if i != 3:
            assert answer.error is None and answer.text == single.text


def test_sampling_with_a_seed_is_reproducible(tiny: TransformersBackend) -> None:
    config = GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=50, seed=123)
    first = tiny.generate(PROMPTS[:3], config)
    second = tiny.generate(PROMPTS[:3], config)
    assert [a.text for a in first] == [b.text for b in second]
    assert all(a.error is None and a.text for a in first)


def test_count_tokens_uses_the_tokenizer(tiny: TransformersBackend) -> None:
    text = "GroupRank scores documents in groups."
    assert tiny.count_tokens(text) == len(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tiny.count_tokens("") == 0


# -- openai (a real HTTP server on 127.0.0.1) ----------------------------------------------------


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, respond: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            self.server.headers_seen.append(dict(self.headers))
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            if self.path != "/v1/chat/completions":
                status, payload = 404, {"error": "not found"}
            else:
                status, payload = self.server.respond(body)
        finally:
            # Done before the answer is sent: a client that gets it may send its next request at once.
            with self.server.lock:
                self.server.in_flight -= 1
        try:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def chat_server(respond: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> Iterator[ChatServer]:
    server = ChatServer(respond)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def canned(text: str = "[2] > [1]", usage: bool = True) -> dict[str, Any]:
    payload: dict[str, Any] = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    if usage:
        payload["usage"] = {"prompt_tokens": 17, "completion_tokens": 5}
    return payload


def test_openai_backend_against_a_server_running_the_tiny_model(
    tiny: TransformersBackend, singles: list[Completion]
) -> None:
    model_lock = threading.Lock()

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        config = GenerationConfig(max_new_tokens=body["max_tokens"], temperature=body["temperature"])
        with model_lock:
            [answer] = tiny.generate([body["messages"]], config)
        usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens}
        return 200, {"choices": [{"message": {"role": "assistant", "content": answer.text}}], "usage": usage}

    with chat_server(respond) as server:
        backend = load_backend("openai", model="tiny", base_url=server.url, api_key="k", max_concurrency=3)
        answers = backend.generate(PROMPTS, GREEDY)
    assert [a.error for a in answers] == [None] * len(PROMPTS)
    assert [a.text for a in answers] == [s.text for s in singles]
    assert [a.prompt_tokens for a in answers] == [s.prompt_tokens for s in singles]
    assert [a.completion_tokens for a in answers] == [s.completion_tokens for s in singles]
    assert all(r["model"] == "tiny" and r["temperature"] == 0.0 for r in server.requests)


# The servers below return canned answers: these tests check retries, timeouts and concurrency only.


def test_openai_retries_500_then_succeeds() -> None:
    statuses = iter([500, 503])

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status = next(statuses, 200)
        return (status, canned()) if status == 200 else (status, {"error": "busy"})

    with chat_server(respond) as server:
        backend = OpenAIBackend("m", base_url=server.url, max_retries=3, backoff=0.01)
        [answer] = backend.generate([chat("q")], GREEDY)
    assert answer == Completion(text="[2] > [1]", prompt_tokens=17, completion_tokens=5)
    assert len(server.requests) == 3


def test_openai_gives_up_after_max_retries_and_does_not_retry_400() -> None:
    with chat_server(lambda body: (429, {"error": "slow down"})) as server:
        backend = OpenAIBackend("m", base_url=server.url, max_retries=2, backoff=0.01)
        [answer] = backend.generate([chat("q")], GREEDY)
    assert answer.text == "" and "HTTP 429" in (answer.error or "") and len(server.requests) == 3

    with chat_server(lambda body: (400, {"error": "bad model"})) as server:
        backend = OpenAIBackend("m", base_url=server.url, max_retries=2, backoff=0.01)
        [answer] = backend.generate([chat("q")], GREEDY)
    assert "HTTP 400" in (answer.error or "") and "bad model" in (answer.error or "")
    assert len(server.requests) == 1


def test_openai_timeout_becomes_an_error_in_the_completion() -> None:
    def slow(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(1.5)
        return 200, canned()

    with chat_server(slow) as server:
        backend = OpenAIBackend("m", base_url=server.url, timeout=0.2, max_retries=1, backoff=0.01)
        [answer] = backend.generate([chat("q")], GREEDY)
        assert answer.text == "" and "timeout" in (answer.error or "")
        assert len(server.requests) == 2  # one retry


def test_openai_connection_refused_is_an_error_not_an_exception() -> None:
    with chat_server(lambda body: (200, canned())) as server:
        url = server.url
    backend = OpenAIBackend("m", base_url=url, max_retries=1, backoff=0.01)  # the server is gone
    [answer] = backend.generate([chat("q")], GREEDY)
    assert answer.text == "" and "connection error" in (answer.error or "")


def test_openai_concurrency_bound_is_honoured() -> None:
    def slow(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(0.2)
        return 200, canned(body["messages"][-1]["content"])

    with chat_server(slow) as server:
        backend = OpenAIBackend("m", base_url=server.url, max_concurrency=3)
        prompts = [chat(f"q{i}") for i in range(10)]
        answers = backend.generate(prompts, GREEDY)
    assert [a.text for a in answers] == [f"q{i}" for i in range(10)]  # original order
    assert 1 < server.max_in_flight <= 3


def test_openai_deadline_passed_sends_nothing() -> None:
    with chat_server(lambda body: (200, canned())) as server:
        backend = OpenAIBackend("m", base_url=server.url)
        answers = backend.generate([chat("a"), chat("b")], GREEDY, deadline=time.monotonic() - 1)
    assert [a.error for a in answers] == ["deadline", "deadline"]
    assert server.requests == []


def test_openai_deadline_bounds_a_request_in_flight() -> None:
    def slow(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(2.0)
        return 200, canned()

    with chat_server(slow) as server:
        backend = OpenAIBackend("m", base_url=server.url, timeout=30)
        [answer] = backend.generate([chat("q")], GREEDY, deadline=time.monotonic() + 0.3)
    assert answer.error == "deadline"
    assert len(server.requests) == 1


def test_openai_counts_tokens_when_usage_is_missing(tiny_model_path: str, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "secret-key")
    with chat_server(lambda body: (200, canned("The answer is [3] > [1] > [2].", usage=False))) as server:
        backend = OpenAIBackend("m", base_url=server.url, tokenizer=tiny_model_path)
        [answer] = backend.generate([chat("rank")], GREEDY)
    assert server.headers_seen[0]["Authorization"] == "Bearer secret-key"
    assert answer.completion_tokens == backend.count_tokens("The answer is [3] > [1] > [2].")
    assert answer.completion_tokens == len(backend._tokenizer("The answer is [3] > [1] > [2].")["input_ids"])
    assert answer.prompt_tokens == backend.count_tokens("You rank documents.") + backend.count_tokens("rank")


def test_answer_prefix_is_continued_and_returned(tiny: TransformersBackend) -> None:
    """A trailing assistant message is prefilled: the prompt ends with it (no new turn), the model
    continues it, and the completion text starts with it."""
    prefix = '{"[1]":'
    prompt = [*PROMPTS[2], {"role": "assistant", "content": prefix}]
    ids = tiny.encode(prompt)
    head = tiny.encode(PROMPTS[2])  # the same prompt with a generation prompt for a new answer
    assert tiny.tokenizer.decode(ids).rstrip().endswith(prefix)
    assert ids[: len(head)] == head and len(ids) > len(head)
    answer = tiny.generate([prompt], GREEDY)[0]
    assert answer.error is None and answer.text.startswith(prefix)
    with torch.inference_mode():
        t = torch.tensor([ids])
        out = tiny.lm.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=12, do_sample=False)
    new = out[0, len(ids) :].tolist()
    eos = tiny.tokenizer.eos_token_id
    new = new[: new.index(eos) + 1] if eos in new else new
    assert answer.text == prefix + tiny.tokenizer.decode(new, skip_special_tokens=True)
    assert answer.prompt_tokens == len(ids)


def test_openai_answer_prefix_is_sent_only_when_asked() -> None:
    prompt = [*chat("q"), {"role": "assistant", "content": '{"[1]":'}]
    dropped = request_body("m", prompt, GenerationConfig())
    assert dropped["messages"] == chat("q") and "continue_final_message" not in dropped
    sent = request_body("m", prompt, GenerationConfig(), prefill=True)
    assert sent["messages"] == prompt
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False


def test_openai_request_body_translates_the_config() -> None:
    greedy = request_body("m", chat("q"), GenerationConfig(max_new_tokens=7, stop=["</s>"]))
    assert greedy == {
        "model": "m",
        "messages": chat("q"),
        "max_tokens": 7,
        "temperature": 0.0,
        "stop": ["</s>"],
    }
    sampled = request_body("m", chat("q"), GenerationConfig(temperature=0.7, top_p=0.9, top_k=20, seed=1))
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.7, 0.9, 20, 1)
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("soon") is None


# -- vllm ----------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_missing_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"grouprank\[vllm\]"):
        load_backend("vllm", model="smollm2-135m-instruct")


def test_vllm_sampling_params_translation() -> None:
    assert sampling_kwargs(GenerationConfig(max_new_tokens=64)) == {
        "n": 1,
        "max_tokens": 64,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    sampled = sampling_kwargs(GenerationConfig(temperature=0.6, top_p=0.95, top_k=20, seed=3, stop=["\n\n"]))
    assert sampled == {
        "n": 1,
        "max_tokens": 512,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "seed": 3,
        "stop": ["\n\n"],
    }


def test_vllm_output_translation() -> None:
    # vLLM cannot run here (it needs CUDA): a namespace shaped like vllm.RequestOutput stands in.
    output = SimpleNamespace(
        prompt_token_ids=[1, 2, 3, 4],
        outputs=[SimpleNamespace(text="[2] > [1]", token_ids=[7, 8, 9], finish_reason="stop")],
    )
    assert completion_from_output(output) == Completion(text="[2] > [1]", prompt_tokens=4, completion_tokens=3,
                                                        finish_reason="stop")
    output.outputs[0].finish_reason = "abort"  # anything else reads as unknown
    assert completion_from_output(output).finish_reason is None


# -- vllm slot decoding (a stand-in LLM computing logprobs with the tiny model) ------------------------


class TinyVLLM:
    """Stands in for ``vllm.LLM`` in ``VLLMBackend.score_slots``: ``generate`` takes token-id prompts and
    answers each with the tiny model's log-probabilities of the asked token ids at the next position."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self.calls: list[int] = []

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], use_tqdm: bool = False) -> list[Any]:
        self.calls.append(len(prompts))
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            with torch.inference_mode():
                logprobs = torch.log_softmax(self.backend.lm(input_ids=ids).logits[0, -1].float(), dim=-1)
            position = {t: SimpleNamespace(logprob=float(logprobs[t])) for t in p.logprob_token_ids}
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(logprobs=[position])]))
        return outputs


def tiny_vllm(tiny: TransformersBackend) -> VLLMBackend:
    backend = VLLMBackend.__new__(VLLMBackend)  # no engine: its LLM is the stand-in above
    backend.model, backend.llm, backend.tokenizer = "tiny", TinyVLLM(tiny), tiny.tokenizer
    backend._sampling_params, backend.chat_template_kwargs = SimpleNamespace, {}
    return backend


@pytest.fixture(scope="module")
def tiny32(tiny_model_path: str) -> TransformersBackend:
    """The tiny model in float32: batched and one-row forward passes then agree to rounding."""
    return TransformersBackend(tiny_model_path, dtype="float32")


def test_vllm_slot_decoding_equals_the_transformers_backend(tiny32: TransformersBackend) -> None:
    """Same tokens and the same model behind the logprobs: VLLMBackend.score_slots (one generate call per
    slot position, a lookahead request for "10") gives the transformers backend's distributions."""
    from reranker.slots import group_skeleton

    tiny = tiny32
    prompts = [PROMPTS[2], PROMPTS[0], [*PROMPTS[4], {"role": "assistant", "content": '{"[1]":'}]]
    skeletons = [group_skeleton(3), group_skeleton(1), group_skeleton(2)]
    backend = tiny_vllm(tiny)
    answers = backend.score_slots(prompts, skeletons)
    reference = tiny.score_slots(prompts, skeletons)
    assert backend.llm.calls == [6, 4, 2]  # 3 slot positions; 2 requests per prompt ("10" is split)
    for got, ref in zip(answers, reference, strict=True):
        assert got.error is None and got.path == "logprobs"
        assert (got.prompt_tokens, got.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens)
        assert len(got.distributions) == len(ref.distributions)
        for dist, ref_dist in zip(got.distributions, ref.distributions, strict=True):
            assert dist == pytest.approx(ref_dist, rel=1e-4, abs=1e-12)  # P(10) is ~1e-6 here: relative


def test_vllm_slot_decoding_reports_failures_per_prompt(tiny: TransformersBackend) -> None:
    from reranker.slots import group_skeleton

    backend = tiny_vllm(tiny)
    original = backend.llm.generate

    def generate(prompts: list[dict[str, Any]], params: list[Any], use_tqdm: bool = False) -> list[Any]:
        if any(len(p["prompt_token_ids"]) > 150 for p in prompts):
            raise ValueError("prompt too long")
        return original(prompts, params, use_tqdm)

    backend.llm.generate = generate
    long = chat("x " * 200)
    answers = backend.score_slots([PROMPTS[0], long], [group_skeleton(2), group_skeleton(2)])
    assert answers[0].error is None and len(answers[0].distributions) == 2
    assert "prompt too long" in (answers[1].error or "") and answers[1].distributions == []
    assert backend.score_slots([PROMPTS[0]], [group_skeleton(2)], deadline=time.monotonic() - 1)[0].error == "deadline"


# -- openai slot decoding, over a fake httpx transport with recorded answers -----------------------------

# Recorded from llama-cpp-python 0.3.36's server (SmolLM2-135M-Instruct Q4_1), /v1/completions with
# logprobs 20 and max_tokens 1, for a groupwise prompt followed by '{"[1]": ' and by '{"[1]": 1'; and its
# /v1/chat/completions answer (logprobs, top_logprobs 20) to the same prompt with the skeleton as an open
# assistant turn, which that server does not continue (its first token opens a new JSON answer).
LLAMA_AT_SLOT = {"id": "cmpl-f0762aed", "object": "text_completion", "created": 1795964680, "model": "smollm2",
                 "choices": [{"text": "4", "index": 0, "logprobs": {
                     "text_offset": [779], "token_logprobs": [-0.03299707919359207], "tokens": ["4"],
                     "top_logprobs": [{"4": -0.03299707919359207, "2": -4.724128723144531, "1": -5.032840728759766,
                                       "3": -5.326606750488281, "5": -5.570014953613281, "9": -6.285959243774414,
                                       "0": -6.303760528564453, "8": -6.374700546264648, "7": -6.4368743896484375,
                                       "6": -6.675224304199219, "\n": -10.51327896118164, ' "': -10.835952758789062,
                                       "": -13.298595428466797, "¼": -12.37828254699707, "²": -13.204320907592773,
                                       " France": -13.279716491699219, " **": -13.600105285644531}]},
                     "finish_reason": "length"}],
                 "usage": {"prompt_tokens": 227, "completion_tokens": 1, "total_tokens": 228}}
LLAMA_AFTER_ONE = {"id": "cmpl-90ed5d94", "object": "text_completion", "created": 1795964966, "model": "smollm2",
                   "choices": [{"text": ",", "index": 0, "logprobs": {
                       "text_offset": [780], "token_logprobs": [-0.28806352615356445], "tokens": [","],
                       "top_logprobs": [{",": -0.28806352615356445, "0": -2.6565403938293457, "4": -2.881115436553955,
                                         "2": -3.4564690589904785, "1": -4.153696537017822, "}": -4.529272556304932,
                                         ".": -4.702394962310791, ',"': -4.7237114906311035, "9": -4.842621326446533,
                                         "8": -4.87290620803833, "3": -4.955053806304932, "5": -4.9810357093811035,
                                         "7": -5.207529544830322, "6": -5.3654351234436035, "},": -6.229563236236572,
                                         "\n": -7.728359699249268, " ,": -8.02931022644043, ' "': -8.299186706542969,
                                         " (": -8.412633895874023, " ": -8.447772979736328}]},
                       "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 228, "completion_tokens": 1, "total_tokens": 229}}
LLAMA_CHAT_NEW_TURN = {"id": "chatcmpl-8d767365", "object": "chat.completion", "created": 1795965037,
                       "model": "smollm2",
                       "choices": [{"index": 0, "message": {"content": '{"', "role": "assistant"}, "logprobs": {
                           "content": [{"token": '{"', "logprob": -0.961854100227356, "bytes": None, "top_logprobs": [
                               {"token": t, "logprob": lp, "bytes": None} for t, lp in [
                                   ('{"', -0.961854100227356), ("{", -2.622677803039551), ("[", -2.758162498474121),
                                   ("1", -2.866827964782715), ('"', -2.926163673400879), ("The", -3.4396581649780273),
                                   ("JSON", -3.6727914810180664), ('["', -3.98085880279541), ("2", -4.246840476989746),
                                   ("Paris", -4.354016304016113), ("This", -4.916348457336426),
                                   ("0", -4.9556989669799805), ("['", -5.001999855041504), ("```", -5.011120796203613),
                                   ("json", -5.1131086349487305), ("I", -5.242026329040527), ("-", -5.3140668869018555),
                                   ("9", -5.316941261291504), ("Question", -5.3434553146362305),
                                   ('"{', -5.422158241271973)]]}], "refusal": None},
                           "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 233, "completion_tokens": 1, "total_tokens": 234}}


def chat_logprobs(top: dict[str, float]) -> dict[str, Any]:
    """A /chat/completions answer in OpenAI's logprobs format (what vLLM's server returns)."""
    first = max(top, key=top.__getitem__)
    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": first}, "finish_reason": "length",
                         "logprobs": {"content": [{**entries[list(top).index(first)], "top_logprobs": entries}]}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 1}}


class FakeEngine:
    """An httpx.MockTransport handler: records request bodies, answers with ``answer(path, body)``."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.requests.append((request.url.path, body))
        status, payload = self.answer(request.url.path, body)
        return httpx.Response(status, json=payload)


def llama_answers(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if path == "/v1/completions":
        return 200, LLAMA_AFTER_ONE if body["prompt"].endswith("1") else LLAMA_AT_SLOT
    return 200, canned('{"[1]": 7, "[2]": 2}')


def test_openai_slot_decoding_reads_recorded_completions_logprobs(tiny_model_path: str) -> None:
    """tokenizer= given: prompts rendered here, /completions with logprobs; P("1") split by P("0" | "1")."""
    from reranker.slots import expected_score, group_skeleton

    engine = FakeEngine(llama_answers)
    backend = OpenAIBackend("smollm2", base_url="http://engine.test/v1", tokenizer=tiny_model_path,
                            transport=httpx.MockTransport(engine), max_concurrency=1)
    prompt = [*chat("rank"), {"role": "assistant", "content": '{"[1]":'}]  # the answer prefix is replaced
    [answer] = backend.score_slots([prompt], [group_skeleton(2)])
    assert answer.error is None and answer.path == "logprobs"
    first = LLAMA_AT_SLOT["choices"][0]["logprobs"]["top_logprobs"][0]
    p = [math.exp(first[str(s)]) for s in range(10)]
    q = math.exp(LLAMA_AFTER_ONE["choices"][0]["logprobs"]["top_logprobs"][0]["0"])
    want = [p[0], p[1] * (1 - q), *p[2:], p[1] * q]
    want = [x / sum(want) for x in want]
    assert answer.distributions == [pytest.approx(want, abs=1e-12)] * 2
    assert expected_score(answer.distributions[0]) == pytest.approx(3.982, abs=1e-3)
    rendered = backend._tokenizer.apply_chat_template(chat("rank"), add_generation_prompt=True, tokenize=False)
    assert [(path, body["prompt"]) for path, body in engine.requests] == [
        ("/v1/completions", rendered + '{"[1]": '),
        ("/v1/completions", rendered + '{"[1]": 1'),  # "10" is "1" then "0" for this tokenizer
        ("/v1/completions", rendered + '{"[1]": 4, "[2]": '),  # the greedy score 4 fed back
        ("/v1/completions", rendered + '{"[1]": 4, "[2]": 1'),
    ]
    assert all(b["max_tokens"] == 1 and b["logprobs"] == 20 and b["temperature"] == 0.0 for _, b in engine.requests)
    assert answer.prompt_tokens == 227 - backend.count_tokens('{"[1]": ')
    assert answer.completion_tokens == backend.count_tokens('{"[1]": 4, "[2]": 4')


def test_openai_slot_decoding_over_chat_logprobs() -> None:
    """prefill=True, no tokenizer: the skeleton is an open assistant turn (continue_final_message), and the
    answer's logprobs.content[0].top_logprobs are read; "10" as one token counts too."""
    from reranker.slots import group_skeleton

    at_slot = {"7": math.log(0.5), "10": math.log(0.2), "1": math.log(0.2), '"': math.log(0.1)}
    after_one = {"0": math.log(0.25), ",": math.log(0.75)}

    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert path == "/v1/chat/completions"
        return 200, chat_logprobs(after_one if body["messages"][-1]["content"].endswith("1") else at_slot)

    engine = FakeEngine(answer)
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", prefill=True, transport=httpx.MockTransport(engine))
    [result] = backend.score_slots([chat("rank")], [group_skeleton(1)])
    assert result.error is None
    want = [0.0, 0.2 * 0.75, 0, 0, 0, 0, 0, 0.5, 0, 0, 0.2 + 0.2 * 0.25]
    assert result.distributions == [pytest.approx([x / 0.9 for x in want], abs=1e-12)]
    [(_, body), (_, lookahead)] = engine.requests
    assert body["messages"] == [*chat("rank"), {"role": "assistant", "content": '{"[1]": '}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert lookahead["messages"][-1]["content"] == '{"[1]": 1'
    assert result.prompt_tokens == 40 - backend.count_tokens('{"[1]": ')


def test_openai_slot_decoding_refuses_a_chat_server_that_opens_a_new_turn() -> None:
    """The recorded llama-cpp-python chat answer: the score tokens hold ~0.08 of the probability, so the
    skeleton was not continued; the call raises NotImplementedError, later calls too without a request, and
    the groupwise reranker falls back to text, which its trace says."""
    from reranker.groupwise import GroupwiseReranker
    from reranker.slots import group_skeleton

    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("logprobs"):
            return 200, LLAMA_CHAT_NEW_TURN
        text = canned(' 7, "[2]": 2}')  # what follows the prefilled '{"[1]":'
        text["choices"][0]["finish_reason"] = "stop"
        return 200, text

    engine = FakeEngine(answer)
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", prefill=True, transport=httpx.MockTransport(engine))
    with pytest.raises(NotImplementedError, match="did not continue the answer skeleton"):
        backend.score_slots([chat("a"), chat("b")], [group_skeleton(2)] * 2)
    sent = len(engine.requests)
    assert sent <= 4
    with pytest.raises(NotImplementedError):
        backend.score_slots([chat("a")], [group_skeleton(2)])
    assert len(engine.requests) == sent and "0.083" in (backend.slots_unsupported or "")
    ranking = GroupwiseReranker(backend, group_size=2).rerank("q", ["a", "b"])
    assert ranking.trace.decoding == "text" and ranking.rerank_scores == {"0": 0.7, "1": 0.2}


@pytest.mark.parametrize(
    ("status", "payload"),
    [(200, canned("7")), (404, {"error": "not found"})],  # an answer without logprobs; no /completions route
)
def test_openai_slot_decoding_unsupported_server(tiny_model_path: str, status: int, payload: dict[str, Any]) -> None:
    engine = FakeEngine(lambda path, body: (status, payload))
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", tokenizer=tiny_model_path,
                            transport=httpx.MockTransport(engine))
    with pytest.raises(NotImplementedError):
        backend.score_slots([chat("a")], [["x: "]])
    assert len(engine.requests) == 1


def test_openai_slot_decoding_errors_stay_per_prompt(tiny_model_path: str) -> None:
    from reranker.slots import group_skeleton

    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "broken" in body["prompt"]:
            return 500, {"error": "engine crashed"}
        return llama_answers(path, body)

    engine = FakeEngine(answer)
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", tokenizer=tiny_model_path, max_retries=1,
                            backoff=0.01, transport=httpx.MockTransport(engine))
    ok, broken = backend.score_slots([chat("fine"), chat("broken")], [group_skeleton(2)] * 2)
    assert ok.error is None and len(ok.distributions) == 2
    assert broken.distributions == [] and "HTTP 500" in (broken.error or "") and "after 2 attempts" in broken.error
    late = backend.score_slots([chat("fine")], [group_skeleton(2)], deadline=time.monotonic() - 1)
    assert late[0].error == "deadline" and backend.slots_unsupported is None
    with pytest.raises(NotImplementedError, match=r"tokenizer= .* or prefill=True"):
        OpenAIBackend("m", base_url="http://engine.test/v1", transport=httpx.MockTransport(engine)).score_slots(
            [chat("a")], [["x: "]])


# -- query likelihood on vLLM and OpenAI-compatible servers (the tiny model behind the logprobs) ---------

LIKELIHOOD_DOCS = ["Tides are caused by the moon.", "Bananas are yellow and sweet, and grow in bunches.", "é ü"]
LIKELIHOOD_QUERY = " what causes tides?"


def likelihood_pairs() -> tuple[list[str], list[str]]:
    from reranker.likelihood import likelihood_prompt

    return [likelihood_prompt(d) for d in LIKELIHOOD_DOCS], [LIKELIHOOD_QUERY] * len(LIKELIHOOD_DOCS)


def token_logprobs(backend: TransformersBackend, ids: list[int]) -> list[float]:
    """The tiny model's log-probability of each token after the ones before it (the first has none)."""
    with torch.inference_mode():
        logits = backend.lm(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[k - 1, ids[k]]) for k in range(1, len(ids))]


class TinyPromptLogprobs(TinyVLLM):
    """``vllm.LLM.generate`` with ``prompt_logprobs=0``: each prompt position's own token and log-probability."""

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], use_tqdm: bool = False) -> list[Any]:
        self.calls.append(len(prompts))
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            assert p.prompt_logprobs == 0 and p.max_tokens == 1
            ids = prompt["prompt_token_ids"]
            values = token_logprobs(self.backend, ids)
            positions = [None, *({t: SimpleNamespace(logprob=v)} for t, v in zip(ids[1:], values, strict=True))]
            outputs.append(SimpleNamespace(prompt_logprobs=positions, outputs=[SimpleNamespace(logprobs=None)]))
        return outputs


def test_vllm_query_likelihood_equals_the_transformers_backend(tiny32: TransformersBackend) -> None:
    """One generate call with prompt_logprobs=0 for every pair, the same token ids as the transformers
    backend: the same mean log-probabilities."""
    backend = tiny_vllm(tiny32)
    backend.llm = TinyPromptLogprobs(tiny32)
    prompts, continuations = likelihood_pairs()
    got = backend.score_likelihood(prompts, continuations)
    want = tiny32.score_likelihood(prompts, continuations)
    assert backend.llm.calls == [3]
    for g, w in zip(got, want, strict=True):
        assert g.error is None and (g.tokens, g.prompt_tokens) == (w.tokens, w.prompt_tokens)
        assert g.mean_logprob == pytest.approx(w.mean_logprob, abs=1e-4)
    assert len({round(g.mean_logprob or 0.0, 4) for g in got}) == 3  # the documents differ
    assert backend.score_likelihood(prompts, continuations, deadline=time.monotonic() - 1)[0].error == "deadline"


def echo_answer(backend: TransformersBackend, body: dict[str, Any], usage: bool = True) -> dict[str, Any]:
    """A /completions answer in the legacy format llama-cpp-python's and vLLM's servers return, computed by
    the tiny model: with ``echo``, every prompt token (the first without a log-probability) then the greedy
    generated one; without, the generated token alone."""
    ids = backend._ids(body["prompt"])
    with torch.inference_mode():
        last = torch.log_softmax(backend.lm(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    nxt = int(last.argmax())
    gen_text, gen_value = backend.tokenizer.decode([nxt]), float(last[nxt])
    if not body.get("echo"):
        return {"choices": [{"index": 0, "text": gen_text, "finish_reason": "length", "logprobs": {
            "tokens": [gen_text], "token_logprobs": [gen_value], "top_logprobs": [{gen_text: gen_value}]}}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1}}
    values: list[float | None] = [None, *token_logprobs(backend, ids), gen_value]
    tokens = [backend.tokenizer.decode([t]) for t in [*ids, nxt]]
    offsets = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
    answer: dict[str, Any] = {"choices": [{"index": 0, "text": body["prompt"] + gen_text, "logprobs": {
        "tokens": tokens, "token_logprobs": values, "text_offset": offsets,
        "top_logprobs": [None, *({t: v} for t, v in zip(tokens[1:], values[1:], strict=True))]},
        "finish_reason": "length"}]}
    if usage:
        answer["usage"] = {"prompt_tokens": len(ids), "completion_tokens": 1}
    return answer


@pytest.mark.parametrize(("tokenizer", "usage"), [(True, True), (False, True), (False, False)])
def test_openai_query_likelihood_from_echoed_logprobs(
    tiny32: TransformersBackend, tiny_model_path: str, tokenizer: bool, usage: bool
) -> None:
    """echo + logprobs on /completions: the query's tokens are the echo's last ones, counted with the
    tokenizer or by their text, and the prompt's end found by usage or by text offsets."""
    lock = threading.Lock()

    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert path == "/v1/completions"
        with lock:
            return 200, echo_answer(tiny32, body, usage)

    engine = FakeEngine(answer)
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", transport=httpx.MockTransport(engine),
                            tokenizer=tiny_model_path if tokenizer else None)
    prompts, continuations = likelihood_pairs()
    got = backend.score_likelihood(prompts, continuations)
    want = tiny32.score_likelihood(prompts, continuations)
    for g, w in zip(got, want, strict=True):
        assert g.error is None and (g.tokens, g.prompt_tokens) == (w.tokens, w.prompt_tokens)
        assert g.mean_logprob == pytest.approx(w.mean_logprob, abs=1e-4)
    from reranker.backends.openai_backend import ECHO_PROBE

    check, bodies = [b for _, b in engine.requests[:2]], [b for _, b in engine.requests[2:]]
    assert [b["prompt"].startswith(ECHO_PROBE) for b in check] == [True, True] and "echo" not in check[0]
    bodies.sort(key=lambda b: b["prompt"])
    assert [b["prompt"] for b in bodies] == sorted(p + c for p, c in zip(prompts, continuations, strict=True))
    assert all(b["echo"] is True and b["logprobs"] == 1 and b["max_tokens"] == 1 for b in bodies)
    backend.score_likelihood(prompts[:1], continuations[:1])
    assert len(engine.requests) == 2 + len(prompts) + 1  # checked once


def test_openai_query_likelihood_serves_the_groupwise_reranker(tiny32: TransformersBackend) -> None:
    """The likelihood alone (likelihood_weight=1) over an OpenAI-compatible server ranks as over the
    transformers backend, in one pass, and the trace says the likelihood answered."""
    from reranker.groupwise import GroupwiseReranker

    lock = threading.Lock()

    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with lock:
            return 200, echo_answer(tiny32, body)

    remote = OpenAIBackend("m", base_url="http://engine.test/v1", transport=httpx.MockTransport(FakeEngine(answer)))
    served = GroupwiseReranker(remote, likelihood_weight=1.0, weight=1.0).rerank("what causes tides?", LIKELIHOOD_DOCS)
    local = GroupwiseReranker(tiny32, likelihood_weight=1.0, weight=1.0).rerank("what causes tides?", LIKELIHOOD_DOCS)
    assert served.trace.likelihood and served.trace.decoding == "likelihood" and served.trace.errors == []
    assert served.ids == local.ids
    assert served.rerank_scores == pytest.approx(local.rerank_scores, abs=1e-3)


@pytest.mark.parametrize(
    ("status", "payload"),
    [(200, canned("7")), (404, {"error": "not found"})],  # no echoed logprobs; no /completions route
)
def test_openai_query_likelihood_unsupported_server(status: int, payload: dict[str, Any]) -> None:
    """A server that cannot echo log-probabilities raises NotImplementedError once and is remembered; the
    reranker then goes without the likelihood and says so."""
    from reranker.groupwise import GroupwiseReranker

    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return (status, payload) if path == "/v1/completions" else (200, canned('{"[1]": 7}'))

    engine = FakeEngine(answer)
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", transport=httpx.MockTransport(engine),
                            max_concurrency=1)
    prompts, continuations = likelihood_pairs()
    with pytest.raises(NotImplementedError):
        backend.score_likelihood(prompts, continuations)
    assert len(engine.requests) == 1 and backend.likelihood_unsupported
    ranking = GroupwiseReranker(backend, likelihood_weight=1.0, group_size=1).rerank("q", ["a"])
    assert not ranking.trace.likelihood and ranking.trace.decoding == "text"
    assert [path for path, _ in engine.requests[1:]] == ["/v1/chat/completions"]


def test_openai_query_likelihood_errors_stay_per_pair() -> None:
    def answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not body.get("echo"):  # the echo check's generation: the token it then echoes
            return 200, {"choices": [{"text": " Paris", "logprobs": {"tokens": [" Paris"], "token_logprobs": [-0.3]}}]}
        if body["prompt"].endswith(" Paris"):
            return 200, {"choices": [{"text": "!", "logprobs": {"tokens": [" x", " Paris", "!"],
                                                              "token_logprobs": [None, -0.3, -1.0]}}]}
        if "Bananas" in body["prompt"]:
            return 400, {"error": "prompt too long"}
        tokens = [" x", " what", " causes", " tides", "?", "!"]
        return 200, {"choices": [{"text": "!", "logprobs": {"tokens": tokens, "token_logprobs": [None, -1.0, -2.0,
                                                             -3.0, -6.0, -9.0]}}], "usage": {"prompt_tokens": 5}}

    backend = OpenAIBackend("m", base_url="http://engine.test/v1", transport=httpx.MockTransport(FakeEngine(answer)))
    prompts, continuations = likelihood_pairs()
    got = backend.score_likelihood(prompts, continuations)
    assert got[0].mean_logprob == pytest.approx(-3.0) and got[0].tokens == 4 and got[0].prompt_tokens == 1
    assert got[1].mean_logprob is None and "HTTP 400" in (got[1].error or "")
    late = backend.score_likelihood(prompts[:1], continuations[:1], deadline=time.monotonic() - 1)
    assert late[0].error == "deadline"


# Recorded from llama-cpp-python 0.3.36's server (SmolLM2-135M-Instruct Q4_1), /v1/completions: the token it
# generates after the echo check's probe (" What", -1.71), and its echo of the probe with that token, where
# " What" gets -13.95: each value is read at the token's own position (the transformers backend gives the
# generated value).
LLAMA_GENERATED = {"choices": [{"text": " What", "index": 0, "finish_reason": "length", "logprobs": {
    "text_offset": [40], "token_logprobs": [-1.7126693725585938], "tokens": [" What"],
    "top_logprobs": [{" What": -1.7126693725585938}]}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}}
LLAMA_ECHO_TOKENS = ["Pass", "age", ":", " Paris", " is", " the", " capital", ".", "\n", "Question", ":", " What"]
LLAMA_ECHO_VALUES = [
    None, -9.69403076171875, -9.319511413574219, -6.908443450927734, -10.199033737182617,
    -10.361822128295898, -10.992836952209473, -14.266519546508789, -1.843461275100708, -13.612604141235352,
    -10.516822814941406, -13.947545051574707,
]
LLAMA_ECHO_TOPS = [
    None,
    {".": -2.1529767513275146, "age": -9.69403076171875},
    {"\n": -1.7513446807861328, ":": -9.319511413574219},
    {",": -1.2230224609375, " Paris": -6.908443450927734},
    {" a": -0.9179881811141968, " is": -10.199033737182617},
    {" capital": -0.7181664109230042, " the": -10.361822128295898},
    {" of": -0.19165745377540588, " capital": -10.992836952209473},
    {"\n": -1.0059103965759277, ".": -14.266519546508789},
    {"\n": -1.843461275100708},
    {":": -0.037033431231975555, "Question": -13.612604141235352},
    {" What": -1.7126693725585938, ":": -10.516822814941406},
    {" is": -0.8052253127098083, " What": -13.947545051574707},
]
LLAMA_ECHO = {"choices": [{"text": "Passage: Paris is the capital.\nQuestion: What is", "index": 0, "logprobs": {
    "text_offset": [0, 4, 7, 8, 14, 17, 21, 29, 30, 31, 39, 40],
    "token_logprobs": LLAMA_ECHO_VALUES, "tokens": LLAMA_ECHO_TOKENS, "top_logprobs": LLAMA_ECHO_TOPS},
    "finish_reason": "length"}], "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}


def test_openai_query_likelihood_refuses_logprobs_read_at_the_wrong_position() -> None:
    """The recorded llama-cpp-python answers fail the echo check: NotImplementedError naming both values, after
    the check's two requests, remembered (no request on the next call)."""
    from reranker.backends.openai_backend import ECHO_PROBE

    engine = FakeEngine(lambda path, body: (200, LLAMA_ECHO if body.get("echo") else LLAMA_GENERATED))
    backend = OpenAIBackend("m", base_url="http://engine.test/v1", transport=httpx.MockTransport(engine),
                            max_concurrency=1)
    with pytest.raises(NotImplementedError, match=r"-13\.948 echoed, -1\.713 generated"):
        backend.score_likelihood(["Passage: Paris is the capital.\nQuestion:"], [" What is it"])
    assert [b["prompt"] for _, b in engine.requests] == [ECHO_PROBE, ECHO_PROBE + " What"]
    with pytest.raises(NotImplementedError):
        backend.score_likelihood(["p"], [" q"])
    assert len(engine.requests) == 2


# -- the OpenVINO engine for the score-reading passes -------------------------------------------------------


def test_engine_choice() -> None:
    from reranker.backends.transformers_backend import resolve_engine

    installed = importlib.util.find_spec("openvino") is not None
    assert resolve_engine("auto", "cpu", torch.bfloat16) == ("openvino" if installed else "torch")
    assert resolve_engine("auto", "cpu", torch.float32) == "torch"  # OpenVINO f32 was slower than torch f32
    assert resolve_engine("auto", "cuda", torch.bfloat16) == "torch"
    assert resolve_engine("torch", "cpu", torch.bfloat16) == "torch"
    with pytest.raises(InputError, match="unknown engine"):
        resolve_engine("onnx", "cpu", torch.float32)
    with pytest.raises(InputError, match="runs on the CPU"):
        resolve_engine("openvino", "cuda", torch.float32)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_openvino_engine_reads_the_scores_of_the_torch_engine(
    tiny_model_path: str, tiny32: TransformersBackend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In float32 the OpenVINO-compiled decoder gives the torch decoder's likelihoods and fixed-feed slot
    scores; the converted graph is cached, so a second backend does not convert again; generation stays torch."""
    from reranker.backends import openvino_decoder
    from reranker.slots import group_skeleton

    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path))
    backend = TransformersBackend(tiny_model_path, dtype="float32", engine="openvino")
    prompts, continuations = likelihood_pairs()
    got, want = backend.score_likelihood(prompts, continuations), tiny32.score_likelihood(prompts, continuations)
    assert backend.engine == "openvino" and backend._openvino is not None
    assert [g.mean_logprob for g in got] == pytest.approx([w.mean_logprob for w in want], abs=1e-3)
    slots = backend.score_slots(PROMPTS[:3], [group_skeleton(2)] * 3, feed="fixed")
    reference = tiny32.score_slots(PROMPTS[:3], [group_skeleton(2)] * 3, feed="fixed")
    for g, w in zip(slots, reference, strict=True):
        assert g.distributions == [pytest.approx(d, abs=1e-4) for d in w.distributions]
    assert backend.generate(PROMPTS[:1], GREEDY)[0].text == tiny32.generate(PROMPTS[:1], GREEDY)[0].text
    assert list(tmp_path.glob("openvino/*/decoder.xml"))

    def no_conversion(decoder: Any) -> Any:
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino_decoder, "convert", no_conversion)
    again = TransformersBackend(tiny_model_path, dtype="float32", engine="openvino")
    assert again.score_likelihood(prompts[:1], continuations[:1])[0].mean_logprob == pytest.approx(
        want[0].mean_logprob, abs=1e-3)
    assert again.engine == "openvino"


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_openvino_engine_that_cannot_convert_falls_back_to_torch(
    tiny_model_path: str, tiny32: TransformersBackend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from reranker.backends import openvino_decoder

    def broken(decoder: Any) -> Any:
        raise RuntimeError("unsupported operation")

    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path))
    monkeypatch.setattr(openvino_decoder, "convert", broken)
    backend = TransformersBackend(tiny_model_path, dtype="float32", engine="openvino")
    prompts, continuations = likelihood_pairs()
    got = backend.score_likelihood(prompts, continuations)
    assert backend.engine == "torch" and "unsupported operation" in caplog.text
    assert [g.mean_logprob for g in got] == pytest.approx(
        [w.mean_logprob for w in tiny32.score_likelihood(prompts, continuations)], abs=1e-5)
