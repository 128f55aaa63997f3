"""OpenAI-compatible chat endpoint backend (OpenAI, vLLM's server, llama.cpp, ...), over httpx.

Each prompt is one ``POST {base_url}/chat/completions``; up to ``max_concurrency`` run at once in a
thread pool. 429, 5xx and connection errors are retried with exponential backoff (honouring
``Retry-After``); other HTTP errors fail that prompt at once. With a deadline, no request starts
after it and a request in flight may take only the time left.

Slot decoding (``score_slots``) asks for one token with its top log-probabilities at each score slot
(``max_tokens: 1``), a prompt's slots one after another (each feeds back the previous greedy score), the
prompts concurrently. Two ways, chosen by what the backend knows:

- ``"completions"`` (``tokenizer=`` given, with a chat template): the prompt is rendered here with that
  template and sent with the skeleton so far as a raw ``prompt`` to ``/completions`` with ``logprobs: 20``
  (llama-cpp-python's and vLLM's servers; the answer's ``logprobs.top_logprobs[0]``);
- ``"chat"`` (``prefill=True``, no tokenizer): the skeleton so far is an open assistant turn continued
  with ``continue_final_message`` (vLLM / SGLang) and ``logprobs: true, top_logprobs: 20``.

Scores are read by token text ("0".."9", "10" where it is one token; a score token outside the top 20
counts as 0). Where "10" may be two tokens, a second request ending in "1" gives P("0" | "1"). A server
whose answers carry no log-probabilities, or no score token, or whose score tokens hold less than
``MIN_SCORE_MASS`` at a first slot (it did not continue the skeleton: llama-cpp-python's chat endpoint
ignores ``continue_final_message``) makes ``score_slots`` raise NotImplementedError, for this call and
later ones (``slots_unsupported`` says why), so rerankers use the text path.

The query likelihood (``score_likelihood``) is one ``/completions`` request per document: the prompt and the
query as one raw ``prompt`` with ``echo: true, logprobs: 1, max_tokens: 1``, which returns every prompt
token's log-probability (vLLM's and llama-cpp-python's servers; lm-evaluation-harness scores the same
way). The query's tokens are the echoed prompt's last tokens: counted with ``tokenizer=`` where given,
else by their text. Before the first pair, ``check_echo`` asks the server to generate one token after a
probe and then to echo the probe with that token: a server that echoes correctly gives the token the
log-probability it generated it with. llama-cpp-python 0.3.36's server does not (it reads each echoed
token at the token's own position: off by one). A server that echoes no log-probabilities, or wrong ones,
makes ``score_likelihood`` raise NotImplementedError, for this call and later ones
(``likelihood_unsupported``), and rerankers go without the likelihood.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from grouprank.errors import require
from grouprank.progress import progress_bar
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages, answer_prefix
from reranker.backends.transformers_backend import truncate_at_stop
from reranker.likelihood import Likelihood, mean_logprob
from reranker.slots import (
    FIXED_SCORE,
    MAX_SCORE,
    SCORES,
    SlotAnswer,
    check_feed,
    greedy_score,
    score_distribution,
    score_tokens,
)

T = TypeVar("T")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_BACKOFF_S = 30.0
SLOT_TOP_LOGPROBS = 20
"""Top log-probabilities asked for at a slot (OpenAI's and vLLM's servers allow at most 20)."""
MIN_SCORE_MASS = 0.5
"""Below this total probability of the score tokens at a prompt's first slot, the server did not continue the
skeleton (llama-cpp-python's chat endpoint, which opens a new turn: about 0.08 there; about 0.99 when the
same model continues it)."""
UNSUPPORTED_STATUS = (404, 405, 501)
ECHO_PROBE = "Passage: Paris is the capital.\nQuestion:"
"""The prompt of the echo check (``OpenAIBackend.check_echo``)."""
ECHO_TOLERANCE = 0.1
"""How far an echoed token's log-probability may be from the same token's when it was generated."""
"""HTTP answers meaning the endpoint (not the request) is not there."""


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


def slot_request_body(model: str, endpoint: str, messages: Messages, prompt: str, answer: str) -> dict[str, Any]:
    """The JSON body of one slot request: ``prompt`` (the rendered prompt) plus ``answer`` (the skeleton so
    far) to ``completions``, or ``messages`` with ``answer`` as an open assistant turn to ``chat/completions``."""
    body: dict[str, Any] = {"model": model, "max_tokens": 1, "temperature": 0.0}
    if endpoint == "completions":
        return {**body, "prompt": prompt + answer, "logprobs": SLOT_TOP_LOGPROBS}
    return {**body, "messages": [*messages, {"role": "assistant", "content": answer}],
            "continue_final_message": True, "add_generation_prompt": False,
            "logprobs": True, "top_logprobs": SLOT_TOP_LOGPROBS}


def first_top_logprobs(data: Mapping[str, Any]) -> dict[str, float] | None:
    """``{token text: logprob}`` at the first generated position of a ``/completions`` answer
    (``logprobs.top_logprobs[0]``) or a ``/chat/completions`` one (``logprobs.content[0].top_logprobs``),
    the chosen token included; None when the answer carries no log-probabilities."""
    logprobs = (data.get("choices") or [{}])[0].get("logprobs")
    if not isinstance(logprobs, Mapping):
        return None
    top: dict[str, Any] = {}
    if "content" in logprobs:  # chat
        first = (logprobs.get("content") or [None])[0]
        if not isinstance(first, Mapping):
            return None
        top = {e["token"]: e.get("logprob") for e in first.get("top_logprobs") or []}
        top.setdefault(first.get("token"), first.get("logprob"))
    else:  # completions (legacy format)
        tops, tokens, values = (logprobs.get(k) or [None] for k in ("top_logprobs", "tokens", "token_logprobs"))
        top = dict(tops[0] or {})
        top.setdefault(tokens[0], values[0])
    result = {str(k): float(v) for k, v in top.items() if k is not None and isinstance(v, int | float)}
    return result or None


def slot_distribution(
    top: Mapping[str, float], after_one: Mapping[str, float] | None = None
) -> tuple[list[float], float] | None:
    """P(score) for 0..10 at a slot, and the probability mass the score tokens hold there, from the top
    log-probabilities ``top`` (token text -> logprob; "10" counts where it is one token) and, where "10"
    may be two tokens, ``after_one``: those right after "1", which split P("1") into 1 and 10. None when
    no score token is in ``top``."""
    probs = [math.exp(top[str(s)]) if str(s) in top else 0.0 for s in SCORES]
    mass = sum(probs)
    if mass <= 0.0:
        return None
    if after_one is not None:
        q = math.exp(after_one["0"]) if "0" in after_one else 0.0
        one = probs[1]
        probs[1], probs[MAX_SCORE] = one * (1.0 - q), probs[MAX_SCORE] + one * q
    return score_distribution(probs), mass


def likelihood_request_body(model: str, prompt: str, continuation: str) -> dict[str, Any]:
    """The JSON body that scores ``continuation`` after ``prompt``: the server echoes the prompt's tokens with
    their log-probabilities (and generates one token, which is ignored)."""
    return {"model": model, "prompt": prompt + continuation, "max_tokens": 1, "temperature": 0.0,
            "echo": True, "logprobs": 1}


def echoed_logprobs(data: Mapping[str, Any]) -> tuple[list[str], list[float | None]] | None:
    """``(tokens, token_logprobs)`` of the echoed prompt in a ``/completions`` answer to
    ``likelihood_request_body``: ``usage.prompt_tokens`` long, else all but the one generated token. None
    when the answer carries no per-token log-probabilities."""
    choice = (data.get("choices") or [{}])[0]
    logprobs = choice.get("logprobs") if isinstance(choice, Mapping) else None
    if not isinstance(logprobs, Mapping):
        return None
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values) or len(tokens) < 2:
        return None
    usage = data.get("usage")
    count = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    if not isinstance(count, int) or not 0 < count <= len(tokens):
        count = len(tokens) - 1  # max_tokens is 1
    return [str(t) for t in tokens[:count]], [v if isinstance(v, int | float) else None for v in values[:count]]


def json_or_none(response: Any) -> Any:
    """A response's JSON body if it is a JSON object, else None (also for no response)."""
    try:
        data = response.json() if response is not None else None
    except ValueError:
        return None
    return data if isinstance(data, Mapping) else None


def generated_logprob(data: Mapping[str, Any]) -> tuple[str, float] | None:
    """The generated token's text and log-probability in a ``/completions`` answer without echo, or None."""
    choice = (data.get("choices") or [{}])[0]
    logprobs = choice.get("logprobs") if isinstance(choice, Mapping) else None
    if not isinstance(logprobs, Mapping):
        return None
    tokens, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
    if not tokens or not values or not isinstance(values[0], int | float):
        return None
    return str(tokens[0]), float(values[0])


def continuation_tokens(tokens: list[str], continuation: str) -> int:
    """How many of the echoed ``tokens``, counted from the end, spell ``continuation`` (at least one)."""
    length, n = 0, 0
    while n < len(tokens) and length < len(continuation):
        n += 1
        length += len(tokens[-n])
    return max(1, n)


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
    Slot decoding needs ``tokenizer`` (its chat template renders prompts for ``/completions``) or
    ``prefill`` (see the module docstring). ``transport`` is an httpx transport (e.g. ``httpx.MockTransport``).
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
        transport: Any = None,
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
        self.client = httpx.Client(headers=headers, timeout=timeout, limits=limits, transport=transport)
        self._httpx = httpx
        self._tokenizer = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            from reranker.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
        self.slots_unsupported: str | None = None
        """Why this server cannot do slot decoding, once a ``score_slots`` call found out."""
        self.likelihood_unsupported: str | None = None
        """Why this server cannot score query likelihoods, once a ``score_likelihood`` call found out."""
        self._echo_checked = False

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
        body = request_body(self.model, messages, config, self.prefill)
        response, error, _ = self._post("chat/completions", body, deadline)
        if response is None:
            return Completion(text="", error=error)
        return self._parse(response, messages, config)

    def _post(self, endpoint: str, body: dict[str, Any], deadline: float | None) -> tuple[Any, str | None, int | None]:
        """POST ``body`` to ``{base_url}/{endpoint}`` with retries: ``(response, None, 200)`` or
        ``(None, error, status)`` (status None when no HTTP answer came)."""
        httpx = self._httpx
        url = f"{self.base_url}/{endpoint}"
        attempt = 0
        while True:
            if self.expired(deadline):
                return None, "deadline", None
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            retry_after, status = None, None
            try:
                response = self.client.post(url, json=body, timeout=timeout)
            except httpx.TimeoutException:
                if self.expired(deadline):
                    return None, "deadline", None
                error = f"timeout: no answer from {url} within {timeout:.1f} s"
            except httpx.TransportError as exc:
                error = f"connection error for {url}: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    return response, None, status
                error = f"HTTP {status} from {url}: {response.text[:300]}"
                if status != 429 and status < 500:
                    return None, error, status
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if attempt >= self.max_retries:
                return None, f"{error} (after {attempt + 1} attempts)", status
            delay = retry_after
            if delay is None:
                delay = self.backoff * 2**attempt * random.uniform(0.8, 1.2)
            delay = min(delay, MAX_BACKOFF_S)
            if deadline is not None and time.monotonic() + delay >= deadline:
                return None, "deadline", status
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

    # -- slot decoding ----------------------------------------------------------------------------

    def slot_endpoint(self) -> str:
        """``"completions"`` or ``"chat"`` (see the module docstring); NotImplementedError when neither works."""
        if self._tokenizer is not None and getattr(self._tokenizer, "chat_template", None):
            return "completions"
        if self.prefill:
            return "chat"
        raise NotImplementedError(
            "slot decoding over an OpenAI-compatible server needs tokenizer= (a chat template, to render "
            "prompts for /completions) or prefill=True (a server that continues an assistant turn, e.g. vLLM's)"
        )

    def score_slots(
        self, prompts: list[Messages], skeletons: list[list[str]], deadline: float | None = None,
        feed: str = "greedy",
    ) -> list[SlotAnswer]:
        """Slot decoding (``reranker.slots``) with the server's log-probabilities: one request per slot (two
        where "10" may be two tokens), a prompt's slots in turn, up to ``max_concurrency`` prompts at once.
        A prompt's own answer prefix is replaced by the skeleton. Raises NotImplementedError when the server
        gives no usable log-probabilities (see the module docstring). ``feed="fixed"`` writes
        ``FIXED_SCORE`` after every slot instead of the greedy score."""
        check_feed(feed)
        if self.slots_unsupported is not None:
            raise NotImplementedError(self.slots_unsupported)
        endpoint = self.slot_endpoint()
        if not prompts:
            return []
        lookahead = endpoint == "chat" or self._score_mode() == "split"

        def work(pair: tuple[Messages, list[str]], stop: threading.Event) -> SlotAnswer:
            return self._slot_answer(endpoint, pair[0], pair[1], lookahead, deadline, stop, feed)

        try:
            return self._concurrently(work, list(zip(prompts, skeletons, strict=True)),
                                      lambda error: SlotAnswer(error=error), "openai-slots")
        except NotImplementedError as exc:
            self.slots_unsupported = str(exc)
            raise

    def _concurrently(self, work: Callable[[Any, threading.Event], T], items: list[Any],
                      failed: Callable[[str], T], name: str) -> list[T]:
        """``work(item, stop)`` for each item, up to ``max_concurrency`` at once, results in order. An item's
        exception becomes ``failed(message)``; a NotImplementedError (the server cannot do this at all) sets
        ``stop`` for the others and is raised once they are done."""
        stop = threading.Event()

        def run(item: Any) -> T:
            try:
                return work(item, stop)
            except NotImplementedError:
                stop.set()
                raise
            except Exception as exc:  # never let one item's surprise fail the whole call
                return failed(f"{type(exc).__name__}: {exc}")

        results: list[T] = []
        unsupported: NotImplementedError | None = None
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)), thread_name_prefix=name) as pool:
            for future in [pool.submit(run, item) for item in items]:
                try:
                    results.append(future.result())
                except NotImplementedError as exc:
                    unsupported = unsupported or exc
        if unsupported is not None:
            raise NotImplementedError(str(unsupported)) from unsupported
        return results

    def _score_mode(self) -> str:
        """``"single"`` or ``"split"`` ("10" is "1" then "0") under the known tokenizer."""
        tokenizer = self._tokenizer
        return score_tokens(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]).mode

    def _slot_answer(
        self, endpoint: str, messages: Messages, skeleton: list[str], lookahead: bool, deadline: float | None,
        stop: threading.Event, feed: str = "greedy",
    ) -> SlotAnswer:
        """One prompt's slots, in turn; each slot's greedy score (or ``FIXED_SCORE``) is written into the
        skeleton for the next."""
        plain = messages[:-1] if answer_prefix(messages) else messages
        prompt = ""
        if endpoint == "completions":
            prompt = self._tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        answer = SlotAnswer(path="logprobs")
        text = ""
        for k, piece in enumerate(skeleton):
            if stop.is_set() or self.expired(deadline):
                break
            text += piece
            top, prompt_tokens, error = self._slot_logprobs(endpoint, plain, prompt, text, deadline)
            after_one = None
            if top is not None and lookahead:
                after_one, _, error = self._slot_logprobs(endpoint, plain, prompt, text + "1", deadline)
            if error is not None:
                answer.error = None if error == "deadline" and answer.distributions else error
                break
            read = slot_distribution(top or {}, after_one if lookahead else None)
            if read is None or (k == 0 and read[1] < MIN_SCORE_MASS):
                raise NotImplementedError(
                    f"the server at {self.base_url} did not continue the answer skeleton: the score tokens hold "
                    f"{0.0 if read is None else read[1]:.3f} of the probability after {text!r} ({endpoint} endpoint)"
                )
            dist = read[0]
            answer.distributions.append(dist)
            if k == 0:
                answer.prompt_tokens = max(0, prompt_tokens - self.count_tokens(piece)) if prompt_tokens else (
                    self.count_tokens(prompt) if prompt else sum(self.count_tokens(m.get("content", "")) for m in plain)
                )
            text += str(FIXED_SCORE if feed == "fixed" else greedy_score(dist))
        if answer.distributions:
            answer.completion_tokens = self.count_tokens(text)
        elif answer.error is None and skeleton:
            answer.error = "deadline"
        return answer

    def _slot_logprobs(
        self, endpoint: str, messages: Messages, prompt: str, answer: str, deadline: float | None
    ) -> tuple[dict[str, float] | None, int, str | None]:
        """One slot request: (top log-probabilities, the server's prompt token count or 0, error). Raises
        NotImplementedError when the endpoint is missing or its answer has no log-probabilities."""
        body = slot_request_body(self.model, endpoint, messages, prompt, answer)
        path = "completions" if endpoint == "completions" else "chat/completions"
        response, error, status = self._post(path, body, deadline)
        if response is None:
            if status in UNSUPPORTED_STATUS:
                raise NotImplementedError(f"no slot decoding: {error}")
            return None, 0, error
        try:
            data = response.json()
        except ValueError:
            return None, 0, f"malformed response: {response.text[:300]}"
        top = first_top_logprobs(data) if isinstance(data, Mapping) else None
        if top is None:
            raise NotImplementedError(
                f"the server at {self.base_url} returned no log-probabilities from /{path}: {response.text[:200]}"
            )
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
        return top, prompt_tokens if isinstance(prompt_tokens, int) else 0, None

    # -- query likelihood -------------------------------------------------------------------------

    def score_likelihood(
        self, prompts: list[str], continuations: list[str], deadline: float | None = None
    ) -> list[Likelihood]:
        """Mean log-probability of each continuation after its prompt, one echoed ``/completions`` request
        per pair, up to ``max_concurrency`` at once (see the module docstring). Raises NotImplementedError
        when the server echoes no log-probabilities."""
        if self.likelihood_unsupported is not None:
            raise NotImplementedError(self.likelihood_unsupported)
        if not prompts:
            return []

        def work(pair: tuple[str, str], stop: threading.Event) -> Likelihood:
            if stop.is_set():
                return Likelihood(error="the server cannot score likelihoods")
            return self._likelihood(pair[0], pair[1], deadline)

        try:
            if not self._echo_checked:
                self.check_echo(deadline)
            return self._concurrently(work, list(zip(prompts, continuations, strict=True)),
                                      lambda error: Likelihood(error=error), "openai-likelihood")
        except NotImplementedError as exc:  # remembered: later calls send nothing
            self.likelihood_unsupported = str(exc)
            raise

    def check_echo(self, deadline: float | None = None) -> None:
        """Does the server echo each prompt token's log-probability given the tokens before it? Generates one
        token after ``ECHO_PROBE``, then echoes the probe with it: the echoed value must be the generated one
        (within ``ECHO_TOLERANCE``). Raises NotImplementedError if not; passes when the server cannot be
        asked (the pairs then report their errors) or re-tokenises the token differently (inconclusive)."""
        body = {"model": self.model, "prompt": ECHO_PROBE, "max_tokens": 1, "temperature": 0.0, "logprobs": 1}
        response, _, status = self._post("completions", body, deadline)
        if response is None and status in UNSUPPORTED_STATUS:
            raise NotImplementedError(f"no query likelihood: the server at {self.base_url} has no /completions")
        data = json_or_none(response)
        if data is None:  # no answer or not JSON: the pairs will say what goes wrong
            return
        generated = generated_logprob(data)
        if generated is None:
            raise NotImplementedError(f"the server at {self.base_url} returned no log-probabilities from /completions")
        token, value = generated
        response, _, _ = self._post("completions", likelihood_request_body(self.model, ECHO_PROBE, token), deadline)
        data = json_or_none(response)
        if data is None:
            return
        echoed = echoed_logprobs(data)
        if echoed is None:
            raise NotImplementedError(f"the server at {self.base_url} echoed no prompt log-probabilities")
        tokens, values = echoed
        self._echo_checked = True
        if tokens[-1] == token and values[-1] is not None and abs(values[-1] - value) > ECHO_TOLERANCE:
            raise NotImplementedError(
                f"the server at {self.base_url} echoes log-probabilities that are not the prompt tokens' given the "
                f"tokens before them ({token!r}: {values[-1]:.3f} echoed, {value:.3f} generated; llama-cpp-python's "
                "server reads each token at its own position): no query likelihood"
            )

    def _likelihood(self, prompt: str, continuation: str, deadline: float | None) -> Likelihood:
        """One pair: its echoed log-probabilities, the continuation's tokens averaged."""
        if not continuation:
            return Likelihood(mean_logprob=0.0, prompt_tokens=self.count_tokens(prompt))
        body = likelihood_request_body(self.model, prompt, continuation)
        response, error, status = self._post("completions", body, deadline)
        if response is None:
            if status in UNSUPPORTED_STATUS:
                raise NotImplementedError(f"no query likelihood: {error}")
            return Likelihood(error=error)
        try:
            data = response.json()
        except ValueError:
            return Likelihood(error=f"malformed response: {response.text[:300]}")
        echoed = echoed_logprobs(data) if isinstance(data, Mapping) else None
        if echoed is None:
            raise NotImplementedError(
                f"the server at {self.base_url} echoed no prompt log-probabilities from /completions "
                f"(echo with logprobs): {response.text[:200]}"
            )
        tokens, values = echoed
        known = self._tokenizer is not None  # count_tokens would estimate without it: count by text then
        n = self.count_tokens(continuation) if known else continuation_tokens(tokens, continuation)
        tail = values[-n:] if 0 < n < len(values) else []
        if not tail or any(v is None for v in tail):
            return Likelihood(prompt_tokens=len(tokens), error=f"no log-probability for the {n} query tokens")
        return Likelihood(mean_logprob=mean_logprob([float(v) for v in tail if v is not None]), tokens=n,
                          prompt_tokens=len(tokens) - n)
