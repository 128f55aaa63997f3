"""LLM backends: transformers (a real tiny model), openai (against a real local HTTP server), vllm."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from grouprank.errors import InputError, MissingExtraError
from reranker.backends import load_backend
from reranker.backends.base import Completion, GenerationConfig, Messages
from reranker.backends.openai_backend import OpenAIBackend, request_body, retry_after_seconds
from reranker.backends.transformers_backend import TransformersBackend, plan_batches, truncate_at_stop
from reranker.backends.vllm_backend import completion_from_output, sampling_kwargs

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
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

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
