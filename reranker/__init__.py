"""GroupRank reranking: groupwise LLM scoring plus pointwise and listwise baselines.

One line to rerank::

    from reranker import load_reranker
    ranking = load_reranker("groupwise", model="smollm2").rerank("query", ["doc one", "doc two"])
    for doc_id, score in ranking: ...
"""

from __future__ import annotations

import inspect
from typing import Any

from grouprank.errors import InputError
from reranker.backends.base import Backend, GenerationConfig
from reranker.base import Reranker
from reranker.groupwise import GroupwiseReranker
from reranker.listwise import ListwiseReranker
from reranker.parsing import GroupParse, parse_group_scores, parse_permutation, parse_point_score
from reranker.pointwise import PointwiseReranker
from reranker.prompts import PromptTemplate
from reranker.rearank import RearankTemplate, parse_rearank, rearank_template
from reranker.types import Candidate, Ranking, RerankRequest, Trace

METHODS: dict[str, type[Reranker]] = {
    "groupwise": GroupwiseReranker,
    "pointwise": PointwiseReranker,
    "listwise": ListwiseReranker,
}

__all__ = [
    "METHODS",
    "Candidate",
    "GenerationConfig",
    "GroupParse",
    "GroupwiseReranker",
    "ListwiseReranker",
    "PointwiseReranker",
    "PromptTemplate",
    "Ranking",
    "RearankTemplate",
    "RerankRequest",
    "Reranker",
    "Trace",
    "load_reranker",
    "parse_group_scores",
    "parse_permutation",
    "parse_point_score",
    "parse_rearank",
    "rearank_template",
]


def _reranker_options(cls: type[Reranker]) -> set[str]:
    names: set[str] = set()
    for klass in (cls, Reranker):
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                names.add(p.name)
    return names


def load_reranker(
    method: str = "groupwise",
    model: str | None = None,
    backend: str | Backend = "transformers",
    **options: Any,
) -> Reranker:
    """A reranker of ``method`` ("groupwise", "pointwise" or "listwise") on an LLM backend.

    ``backend`` is a backend name for ``reranker.backends.load_backend(backend, model, ...)`` or a ready
    Backend instance. The model's serving settings (``reranker.serving.ServingConfig.from_model``, found by
    ``model`` or by the backend's model name: its calibrated fusion ``weight``, decoding, group size,
    document length and weights) are applied unless an option is given, whatever the backend's type.
    ``options`` that the reranker class takes (``group_size``, ``repeats``, ``weight``, ``deadline_ms``, ...)
    configure it; the rest go to ``load_backend``.
    """
    if method not in METHODS:
        raise InputError(
            f"unknown reranking method {method!r} (choose from {', '.join(METHODS)})", field="method"
        )
    cls = METHODS[method]
    own = _reranker_options(cls)
    reranker_options = {k: v for k, v in options.items() if k in own}
    backend_options = {k: v for k, v in options.items() if k not in own}
    from reranker.backends import DEFAULT_MODEL
    from reranker.serving import ServingConfig

    # the model's own settings: by name, or by the name a ready backend was loaded with (none if it has none)
    served = model or (backend.model if isinstance(backend, Backend) else DEFAULT_MODEL)
    reranker_options = ServingConfig.from_model(served).options(own, reranker_options, method)
    if isinstance(backend, Backend):
        if backend_options:
            raise InputError(
                f"unknown option(s) for the {method} reranker: {', '.join(sorted(backend_options))}",
                field="options",
            )
        instance = backend
    else:
        from reranker.backends import load_backend  # lazy: backends import heavy libraries

        if model is not None:
            backend_options["model"] = model
        instance = load_backend(backend, **backend_options)
    return cls(instance, **reranker_options)
