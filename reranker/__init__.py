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


SERVING_DEFAULTS = ("group_size", "max_doc_chars", "slot_feed", "rubric", "likelihood_weight",
                    "weight_without_likelihood", "dense_weight", "decoding", "query_after")


def load_reranker(
    method: str = "groupwise",
    model: str | None = None,
    backend: str | Backend = "transformers",
    **options: Any,
) -> Reranker:
    """A reranker of ``method`` ("groupwise", "pointwise" or "listwise") on an LLM backend.

    ``backend`` is a backend name for ``reranker.backends.load_backend(backend, model, ...)`` or a ready
    Backend instance. The model's metadata (``reranker.models.model_metadata``, found by ``model`` or by
    the backend's model name) is applied unless an option is given: its calibrated fusion ``weight`` and
    its ``serving`` settings (``SERVING_DEFAULTS``: the decoding, group size, document length and weights
    it was trained and calibrated with), whatever the backend's type. ``options`` that the
    reranker class takes (``group_size``, ``repeats``, ``weight``, ``deadline_ms``, ...) configure it; the
    rest go to ``load_backend``.
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
    from reranker.models import model_metadata  # the model's calibrated weight and serving settings, if any

    # the model's own metadata: by name, or by the name a ready backend was loaded with (none if it has none)
    served = model or (backend.model if isinstance(backend, Backend) else DEFAULT_MODEL)
    metadata = (model_metadata(served) if served else None) or {}
    if metadata:
        calibrated = metadata.get("fusion_weight")
        if "weight" in own and "weight" not in reranker_options and isinstance(calibrated, int | float):
            reranker_options["weight"] = float(calibrated)
        serving = metadata.get("serving") or {}
        for name in SERVING_DEFAULTS:  # what the model was trained and calibrated with (its groupwise settings)
            if name in ("decoding", "query_after") and method != "groupwise":
                continue
            if name in own and name not in reranker_options and isinstance(serving.get(name), bool | int | float | str):
                reranker_options[name] = serving[name]
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
