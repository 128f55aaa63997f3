"""Search request bodies for the three modes, and the conversion of k-NN scores back to cosines."""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.opensearch.mappings import BM25_FIELD, SOURCE_FIELDS, VECTOR_FIELD, vector_json


def bm25_query(query: str) -> dict[str, Any]:
    """A ``match`` query: the query's English-analysed words, OR-ed (stop words only: no hits)."""
    return {"match": {BM25_FIELD: {"query": query}}}


def knn_query(vector: np.ndarray, k: int) -> dict[str, Any]:
    """A ``knn`` query for the ``k`` nearest stored vectors."""
    return {"knn": {VECTOR_FIELD: {"vector": vector_json(vector), "k": k}}}


def hybrid_query(query: str, vector: np.ndarray, k: int) -> dict[str, Any]:
    """A ``hybrid`` query of [BM25, k-NN]; the search pipeline fuses the two in that order."""
    return {"hybrid": {"queries": [bm25_query(query), knn_query(vector, k)]}}


def search_body(mode: str, query: str, vector: np.ndarray | None, k: int, depth: int) -> dict[str, Any]:
    """The body of ``POST /<alias>/_search`` for ``mode`` ("bm25", "dense" or "hybrid").

    A hybrid query's sub-queries each contribute up to ``size`` hits to the fusion, so it asks for
    ``depth`` hits and the caller keeps the first ``k``.
    """
    if mode == "bm25":
        size, clause = k, bm25_query(query)
    elif mode == "dense":
        size, clause = k, knn_query(vector, max(k, depth))
    else:
        size, clause = max(k, depth), hybrid_query(query, vector, max(k, depth))
    return {"size": size, "_source": {"includes": list(SOURCE_FIELDS)}, "query": clause}


def cosine_from_score(score: float) -> float:
    """The inner product behind a faiss ``innerproduct`` k-NN score.

    OpenSearch turns the distance d = -(x·y) into score = 1 / (1 + d) if d >= 0, else 1 - d; this
    inverts that, so a dense hit carries the same score as in the embedded index.
    """
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
