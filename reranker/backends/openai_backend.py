"""OpenAI-compatible chat endpoint backend (OpenAI, vLLM's server, llama.cpp, ...), over httpx.

Each prompt is one ``POST {base_url}/chat/completions``; up to ``max_concurrency`` run at once in a
thread pool. 429, 5xx and connection errors are retried with exponential backoff (honouring
``Retry-After``); other HTTP errors fail that prompt at once. With a deadline, no request starts
after it and a request in flight may take only the time left.
"""

from __future__ import annotations

import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grouprank.errors import require
from grouprank.progress import progress_bar
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages, answer_prefix
from reranker.backends.transformers_backend import truncate_at_stop

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_BACKOFF_S = 30.0


def request_body(model: str, messages: Messages, config: GenerationConfig, prefill: bool = False) -> dict[str, Any]:
    """The JSON body of a chat completion request for one prompt. A prompt's answer prefix is sent as an
    open assistant turn with vLLM's ``continue_final_message`` when ``prefill``, else left out."""
    if answer_prefix(messages) and not prefill:
        messages = messages[:-1]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": config.max_new_tokens,
        "temperature": 0.0 if config.greedy else config.temperature,
    }
    if not config.greedy:
        body["top_p"] = config.top_p
        if config.top_k:
            body["top_k"] = config.top_k  # not in OpenAI's API; vLLM and llama.cpp servers accept it
    if config.seed is not None:
        body["seed"] = config.seed
    if config.stop:
        body["stop"] = list(config.stop)
    if answer_prefix(messages):  # vLLM / SGLang chat extensions, not in OpenAI's API
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


def retry_after_seconds(value: str | None) -> float | None:
    """The delay a ``Retry-After`` header asks for (seconds form only), if any."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIBackend(Backend):
    """A remote model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` defaults to ``$OPENAI_BASE_URL`` or OpenAI's; ``api_key`` to ``$OPENAI_API_KEY``
    (none is sent when neither is set, as local servers expect). ``timeout`` bounds one request,
    ``max_retries`` the retries after a retryable failure. Token counts come from the response's
    ``usage``; when a server leaves it out they are counted with ``tokenizer`` (a Hugging Face id,
    folder or alias) if given, else estimated as one token per four characters. ``prefill=True`` sends
    answer prefixes (see ``Messages``) with vLLM's ``continue_final_message`` extension (for ``vllm serve``
    and SGLang; OpenAI's own API rejects it); by default they are left out and the model answers whole.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 8,
        tokenizer: str | None = None,
        prefill: bool = False,
    ) -> None:
        httpx = require("httpx", "llm")
        self.prefill = prefill
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_concurrency = max(1, max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        self.client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._httpx = httpx
        self._tokenizer = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            from reranker.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))

    def close(self) -> None:
        self.client.close()

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / 4)

    def generate(
        self, prompts: list[Messages], config: GenerationConfig, deadline: float | None = None
    ) -> list[Completion]:
        if not prompts:
            return []
        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            futures = [pool.submit(self._complete, messages, config, deadline) for messages in prompts]
            if len(prompts) <= self.max_concurrency:
                return [future.result() for future in futures]
            with progress_bar("generating", len(prompts)) as bar:
                results = []
                for future in futures:
                    results.append(future.result())
                    bar.advance()
                return results

    def _complete(self, messages: Messages, config: GenerationConfig, deadline: float | None) -> Completion:
        try:
            return self._request_with_retries(messages, config, deadline)
        except Exception as exc:  # never let one prompt's surprise fail the whole call
            return Completion(text="", error=f"{type(exc).__name__}: {exc}")

    def _request_with_retries(self, messages: Messages, config: GenerationConfig, deadline: float | None) -> Completion:
        httpx = self._httpx
        body = request_body(self.model, messages, config, self.prefill)
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            if self.expired(deadline):
                return Completion(text="", error="deadline")
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            retry_after = None
            try:
                response = self.client.post(url, json=body, timeout=timeout)
            except httpx.TimeoutException:
                if self.expired(deadline):
                    return Completion(text="", error="deadline")
                error = f"timeout: no answer from {url} within {timeout:.1f} s"
            except httpx.TransportError as exc:
                error = f"connection error for {url}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return self._parse(response, messages, config)
                error = f"HTTP {response.status_code} from {url}: {response.text[:300]}"
                if response.status_code != 429 and response.status_code < 500:
                    return Completion(text="", error=error)
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if attempt >= self.max_retries:
                return Completion(text="", error=f"{error} (after {attempt + 1} attempts)")
            delay = retry_after
            if delay is None:
                delay = self.backoff * 2**attempt * random.uniform(0.8, 1.2)
            delay = min(delay, MAX_BACKOFF_S)
            if deadline is not None and time.monotonic() + delay >= deadline:
                return Completion(text="", error="deadline")
            time.sleep(delay)
            attempt += 1

    def _parse(self, response: Any, messages: Messages, config: GenerationConfig) -> Completion:
        try:
            data = response.json()
            text = data["choices"][0]["message"].get("content") or ""
            reason = data["choices"][0].get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Completion(text="", error=f"malformed response ({exc!r}): {response.text[:300]}")
        text, _ = truncate_at_stop(text, config.stop)  # servers strip stop strings; some do not
        if self.prefill:
            text = answer_prefix(messages) + text
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = sum(self.count_tokens(m.get("content", "")) for m in messages)
        completion_tokens = usage.get("completion_tokens")
        if not isinstance(completion_tokens, int):
            completion_tokens = self.count_tokens(text)
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reason=reason if reason in ("stop", "length") else None)
