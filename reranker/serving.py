"""How a model is served, resolved once from its metadata (``reranker.models.model_metadata``).

A trained model's ``metadata.json`` says what it was trained and calibrated with: the fusion weight
(``fusion_weight``) and its ``serving`` settings (``SERVING_FIELDS``: decoding, group size, document
length, the likelihood and dense weights, ...). ``ServingConfig.from_model(name)`` reads them;
``options(accepted, given)`` turns them into reranker options, what the caller gave winning.
``load_reranker`` uses it whatever the backend's type, and so do the CLI and the trainer's evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVING_FIELDS = ("group_size", "max_doc_chars", "slot_feed", "rubric", "likelihood_weight",
                  "weight_without_likelihood", "dense_weight", "decoding", "query_after")
GROUPWISE_ONLY = ("decoding", "query_after")
"""Settings of the groupwise prompt that other methods do not take."""


@dataclass(frozen=True)
class ServingConfig:
    """A model's serving settings: ``weight`` (its calibrated fusion weight, None when it has none) and
    ``settings`` (the ``SERVING_FIELDS`` its metadata gives)."""

    model: str | None
    weight: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: str | None) -> ServingConfig:
        """The serving settings in ``model``'s metadata (none for a model without metadata)."""
        from reranker.models import model_metadata

        metadata = (model_metadata(model) if model else None) or {}
        weight = metadata.get("fusion_weight")
        serving = metadata.get("serving") or {}
        settings = {k: serving[k] for k in SERVING_FIELDS if isinstance(serving.get(k), bool | int | float | str)}
        return cls(model, float(weight) if isinstance(weight, int | float) else None, settings)

    def options(self, accepted: set[str], given: dict[str, Any] | None = None,
                method: str = "groupwise") -> dict[str, Any]:
        """Reranker options: the model's settings that the reranker ``accepted`` (its keyword names) and
        ``method`` takes, then ``given`` on top."""
        out: dict[str, Any] = {}
        if self.weight is not None and "weight" in accepted:
            out["weight"] = self.weight
        for name, value in self.settings.items():
            if name in accepted and (method == "groupwise" or name not in GROUPWISE_ONLY):
                out[name] = value
        return {**out, **(given or {})}
