"""Search pipeline bodies: hybrid fusion (normalization or score-ranker processor) and GroupRank reranking.

The fusion pipelines are named after their parameters (``<alias>-minmax-w0350``, ``<alias>-rrf-k60``),
so a name always means the same body and creating one is idempotent.
"""

from __future__ import annotations

from typing import Any


def weights(dense_weight: float) -> list[float]:
    """Sub-query weights for the hybrid query's [BM25, k-NN] order; they sum to 1 as the processor requires."""
    dense = round(dense_weight, 4)
    return [round(1.0 - dense, 4), dense]


def normalization_pipeline(dense_weight: float) -> dict[str, Any]:
    """min_max normalization, then a weighted arithmetic mean (OpenSearch's ``normalization-processor``)."""
    return {
        "description": "grouprank hybrid search: min_max normalization, weighted arithmetic mean",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {"technique": "arithmetic_mean", "parameters": {"weights": weights(dense_weight)}},
                }
            }
        ],
    }


def rrf_pipeline(rank_constant: int) -> dict[str, Any]:
    """Reciprocal rank fusion (OpenSearch's ``score-ranker-processor``, 2.19 and later)."""
    return {
        "description": "grouprank hybrid search: reciprocal rank fusion",
        "phase_results_processors": [
            {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": rank_constant}}}
        ],
    }


def fusion_pipeline(alias: str, fusion: str, dense_weight: float, rank_constant: int) -> tuple[str, dict[str, Any]]:
    """The name and body of the pipeline that fuses a hybrid query as ``fusion`` says."""
    if fusion == "rrf":
        return f"{alias}-rrf-k{rank_constant}", rrf_pipeline(rank_constant)
    return f"{alias}-minmax-w{round(dense_weight * 10_000):05d}", normalization_pipeline(dense_weight)


def rerank_pipeline(model_id: str, document_fields: list[str] | None = None) -> dict[str, Any]:
    """A ``rerank`` response processor that sends each page of hits to a remote model (``ml_opensearch``):
    with the connector in deploy/opensearch, GroupRank's ``/rerank``."""
    return {
        "description": "rerank hits with GroupRank (grouprank's /rerank through an ml-commons connector)",
        "response_processors": [
            {
                "rerank": {
                    "ml_opensearch": {"model_id": model_id},
                    "context": {"document_fields": document_fields or ["title", "text"]},
                }
            }
        ],
    }
