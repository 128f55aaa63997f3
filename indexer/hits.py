"""A search result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Hit:
    """One ranked document. ``score`` is what the hits are sorted by (the fused score in hybrid mode).

    ``scores`` and ``ranks`` (1-based) hold each retriever's own score and rank, e.g.
    ``{"bm25": 12.3, "dense": 0.71}``; a retriever that did not return the document is absent.
    """

    id: str
    score: float
    text: str
    title: str
    metadata: dict[str, Any]
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
