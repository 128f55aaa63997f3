"""Index template and mapping bodies, versioned index names, and documents as OpenSearch sources.

Fields of a stored document:

- ``title``, ``text``: English-analysed text, both copied into ``body`` (not in ``_source``), which BM25
  searches: the same "title + text" the embedded index's BM25 sees.
- ``metadata``: an object mapped dynamically, so its fields can be filtered on; a value whose type
  conflicts with an earlier document's (``"year": "1999"`` after ``"year": 1999``) is refused for that
  document only.
- ``embedding``: a ``knn_vector`` (faiss HNSW, ``innerproduct``: our vectors have unit length).
- ``indexed_at``: when grouprank wrote it (epoch ms), so a reindex can catch up with writes made meanwhile.

The mapping's ``_meta.grouprank`` records the embedder and dimension, so an index is never searched
with vectors of another model.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from indexer.documents import Document
from indexer.opensearch.settings import OpenSearchConfig

VECTOR_FIELD = "embedding"
BM25_FIELD = "body"
SOURCE_FIELDS = ("title", "text", "metadata")
TEMPLATE_PRIORITY = 100  # above catch-all templates (priority 0), which would otherwise clash with ours
VECTOR_DECIMALS = 8  # JSON payload: 8 decimals of a unit vector change a cosine by < 1e-7


def version_name(alias: str, number: int) -> str:
    """The name of version ``number`` of the index behind ``alias``: ``<alias>-v000001``."""
    return f"{alias}-v{number:06d}"


def version_number(alias: str, name: str) -> int | None:
    """The version number in ``name``, or None if ``name`` is not a version of ``alias``."""
    match = re.fullmatch(re.escape(alias) + r"-v(\d{6,})", name)
    return int(match.group(1)) if match else None


def index_settings(config: OpenSearchConfig) -> dict[str, Any]:
    return {
        "index": {
            "number_of_shards": config.shards,
            "number_of_replicas": config.replicas,
            "knn": True,
            # Where the faiss HNSW example of the OpenSearch docs sets ef_search; recent versions also
            # read it from the method parameters below.
            "knn.algo_param.ef_search": config.hnsw_ef_search,
        }
    }


def mappings(config: OpenSearchConfig, dim: int) -> dict[str, Any]:
    english = {"type": "text", "analyzer": "english"}
    return {
        "dynamic": "strict",
        "_meta": {"grouprank": {"embedder": config.embedder, "dim": dim}},
        "properties": {
            "title": {**english, "copy_to": BM25_FIELD},
            "text": {**english, "copy_to": BM25_FIELD},
            BM25_FIELD: english,
            "metadata": {"type": "object", "dynamic": True},
            "indexed_at": {"type": "date", "format": "epoch_millis"},
            VECTOR_FIELD: {
                "type": "knn_vector",
                "dimension": dim,
                "method": {
                    "name": "hnsw",
                    "engine": "faiss",
                    "space_type": "innerproduct",
                    "parameters": {
                        "m": config.hnsw_m,
                        "ef_construction": config.hnsw_ef_construction,
                        "ef_search": config.hnsw_ef_search,
                    },
                },
            },
        },
    }


def index_body(config: OpenSearchConfig, dim: int) -> dict[str, Any]:
    """The body of ``PUT /<alias>-v000001``: settings and mappings, no alias (that comes with the swap)."""
    return {"settings": index_settings(config), "mappings": mappings(config, dim)}


def template_body(config: OpenSearchConfig, dim: int) -> dict[str, Any]:
    """The body of ``PUT /_index_template/<alias>``: every ``<alias>-v*`` index gets our mapping."""
    return {
        "index_patterns": [f"{config.alias}-v*"],
        "priority": TEMPLATE_PRIORITY,
        "template": index_body(config, dim),
        "_meta": {"description": f"grouprank documents behind the alias {config.alias!r}"},
    }


def vector_json(vector: np.ndarray) -> list[float]:
    return np.round(np.asarray(vector, dtype=np.float64), VECTOR_DECIMALS).tolist()


def document_source(doc: Document, vector: np.ndarray, indexed_at: int) -> dict[str, Any]:
    """What ``_source`` holds for ``doc`` (its id is the ``_id``)."""
    return {"title": doc.title, "text": doc.text, "metadata": doc.metadata, "indexed_at": indexed_at,
            VECTOR_FIELD: vector_json(vector)}


def document_from_hit(hit: dict[str, Any]) -> Document:
    """The Document of a search or get hit."""
    source = hit.get("_source") or {}
    return Document(id=hit["_id"], text=source.get("text", ""), title=source.get("title", ""),
                    metadata=source.get("metadata") or {})
