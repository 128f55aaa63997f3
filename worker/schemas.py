"""Request and response bodies of the search API (they make its OpenAPI schema).

Limits that come from settings (query length, documents per /rerank) are checked in the handlers,
so their 422 messages can name the setting.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["bm25", "dense", "hybrid"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- /search -----------------------------------------------------------------------------------------
class SearchRequest(Strict):
    query: str = Field(min_length=1, description="Query text.")
    k: int = Field(10, ge=1, description="Number of hits to return (at most the server's max_k).")
    mode: Mode = Field("hybrid", description="Retriever: BM25, dense or both fused.")
    rerank: bool = Field(True, description="Rerank the retrieved candidates with the GroupRank LLM stage.")
    deadline_ms: float | None = Field(
        None, gt=0, description="Time budget of the whole request; reranking that would miss it is "
        "skipped and the hits keep retrieval order. Default: the server's default_deadline_ms.")


class SearchHit(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]
    score: float = Field(description="Final score (hits are sorted by it): the fused rerank score when "
                         "the response is reranked, otherwise the retriever score.")
    retriever_score: float
    retriever_rank: int = Field(description="1-based rank in retrieval order.")
    rerank_score: float | None = Field(description="The LLM's score in 0..1, if it scored this hit.")
    reranked: bool = Field(description="Whether the LLM scored this hit (else it kept retriever order).")
    scores: dict[str, float] = Field(description="Each retriever's own score, e.g. bm25 and dense.")
    ranks: dict[str, int] = Field(description="Each retriever's own 1-based rank.")


class SearchResponse(BaseModel):
    query: str
    mode: Mode
    k: int
    reranked: bool = Field(description="Whether the rerank stage ordered these hits.")
    reason: str | None = Field(description="Why the hits were not reranked (null when they were).")
    hits: list[SearchHit]
    timings_ms: dict[str, float] = Field(description="Wall time per stage: retrieval, rerank, total.")
    rerank_trace: dict[str, Any] | None = Field(
        None, description="The reranker's accounting: LLM calls, tokens, its own wall time, errors, and the "
                          "model that answered (model_version: its registry version, null if not promoted).")


# -- /rerank (the Cohere / Jina rerank shape) ---------------------------------------------------------
class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankBody(BaseModel):
    """Cohere v1/v2 and Jina rerank request. ``model`` is accepted and echoed; the server's reranker runs."""

    model: str | None = None
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1, description="Return only the best top_n results.")
    return_documents: bool = Field(False, description="Include each result's document text.")


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    meta: dict[str, Any]
    usage: dict[str, int]


# -- documents, tasks, health ------------------------------------------------------------------------
class DocumentsBody(Strict):
    documents: list[dict[str, Any]] = Field(
        description="Records with `_id` (or `id`), `text`, optional `title` and `metadata` (an object).")


class UpsertResponse(BaseModel):
    upserted: int | None = None
    task_id: str | None = None
    state: str | None = None


class DeleteResponse(BaseModel):
    deleted: str


class TaskResponse(BaseModel):
    task_id: str
    state: str = Field(description="PENDING (or unknown), STARTED, SUCCESS, FAILURE, ...")
    result: Any = None
    error: str | None = None


class ServingModel(BaseModel):
    model: str = Field(description="What the rerank stage loads: the promoted model's folder, or the configured one.")
    version: str | None = Field(description="The registry version serving, or null before any promotion.")
    registry_dir: str | None
    history: list[dict[str, Any]] = Field(description="Promotions and rollbacks, newest last (at most 20).")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
    failing: list[str]
