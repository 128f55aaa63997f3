"""LLM backends: ``load_backend("transformers" | "vllm" | "openai", model=..., **options)``."""

from __future__ import annotations

from typing import Any

from grouprank.errors import InputError
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages

BACKENDS = ("transformers", "vllm", "openai")
DEFAULT_MODEL = "grouprank-smollm2-135m"
"""The shipped GroupRank model (SmolLM2-135M-Instruct + the LoRA adapter in reranker/weights)."""

__all__ = ["BACKENDS", "Backend", "Completion", "GenerationConfig", "Messages", "load_backend"]


def load_backend(name: str = "transformers", model: str = DEFAULT_MODEL, **kwargs: Any) -> Backend:
    """Create a backend by name; ``kwargs`` go to its constructor.

    Each backend module is imported only when chosen, so e.g. vLLM is never imported for the
    transformers backend.
    """
    key = name.strip().lower()
    if key == "transformers":
        from reranker.backends.transformers_backend import TransformersBackend

        return TransformersBackend(model, **kwargs)
    if key == "vllm":
        from reranker.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, **kwargs)
    if key == "openai":
        from reranker.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(model, **kwargs)
    raise InputError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}", field="backend")
