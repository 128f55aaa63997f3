"""vLLM backend: a thin layer over vLLM's offline API (``vllm.LLM.chat`` with ``SamplingParams``).

vLLM needs a CUDA GPU; install it with the ``vllm`` extra. vLLM batches and schedules the prompts of
one call itself (continuous batching, prefix caching for the shared prompt head), so ``generate``
hands it all prompts at once. The call cannot be interrupted: the deadline is checked before it.
"""

from __future__ import annotations

from typing import Any

from grouprank.errors import require
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages, answer_prefix, prepend_prefixes
from reranker.backends.transformers_backend import truncate_at_stop
from reranker.models import resolve_model


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
