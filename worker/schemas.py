"""Request and response bodies of the search API (they make its OpenAPI schema).

Limits that come from settings (query length, documents per rerank request) are checked in the
handlers, so their 422 messages can name the setting.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    score: float = Field(description="Final score (hits are sorted by it): when the response is reranked, "
                         "the fused rerank score in [0, 1] (with the default fallback, [0.5, 1] for hits the "
                         "LLM scored and [0, 0.4] for the others); otherwise the retriever score.")
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


# -- /rerank, /v1/rerank, /v2/rerank (the Cohere and Jina rerank shapes) --------------------------------
SCORE_RANGE = ("In [0, 1], results sorted by it. With the default fallback (`bottom`), documents the LLM scored "
               "are in [0.5, 1] and documents it could not score (e.g. their group's answer did not parse; "
               "`meta.fallback` counts them) are in [0, 0.4], below every scored one, in request order.")


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankBodyBase(BaseModel):
    """What every rerank route accepts. ``model`` is accepted and echoed; the server's reranker runs."""

    model: str | None = Field(None, description="Echoed back; the server's configured reranker runs.")
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(
        min_length=1, description="Texts, or objects with a `text` field (Cohere v1, Jina).")
    top_n: int | None = Field(None, ge=1, description="Return only the best top_n results.")

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def echo(self, index: int) -> dict[str, Any]:
        """Document ``index`` as returned with ``return_documents``: ``{"text": ...}`` plus its other fields."""
        document = self.documents[index]
        return {"text": document} if isinstance(document, str) else document.model_dump()

    def warnings(self) -> list[str]:
        """Options this server accepts but does not apply (listed in ``meta.warnings``)."""
        return []


class RerankBody(RerankBodyBase):
    """``POST /rerank`` and ``/v1/rerank``: the Cohere v1 and Jina rerank request (other fields are ignored)."""

    return_documents: bool = Field(False, description="Include each result's document (`document.text`).")
    rank_fields: list[str] | None = Field(
        None, description='Cohere v1: the fields of object documents to rank on; only ["text"] is supported.')
    max_chunks_per_doc: int | None = Field(None, ge=1, description="Cohere v1: accepted, not applied.")

    @field_validator("rank_fields")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and value != ["text"]:
            raise ValueError(f'only ["text"] is supported, got {value!r}')
        return value

    def warnings(self) -> list[str]:
        return ["max_chunks_per_doc is not applied"] if self.max_chunks_per_doc is not None else []


class RerankV2Body(RerankBodyBase):
    """``POST /v2/rerank``: the Cohere v2 rerank request. Unknown fields (e.g. ``return_documents``, which v2
    does not have) are refused."""

    model_config = ConfigDict(extra="forbid")
    return_documents: ClassVar[bool] = False  # v2 results carry no document
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="Accepted, not applied: documents are truncated by the server's reranker "
                                "settings (max_doc_chars, max_doc_tokens).")
    priority: int | None = Field(None, ge=0, description="Accepted, not applied.")

    def warnings(self) -> list[str]:
        return ["max_tokens_per_doc is not applied; documents are truncated by the server's reranker settings"
                ] if self.max_tokens_per_doc is not None else []


class RerankResultDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankV2Result(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(ge=0.0, le=1.0, description=SCORE_RANGE)


class RerankResult(RerankV2Result):
    document: RerankResultDocument | None = Field(None, description="With return_documents: the document.")


class RerankV2Response(BaseModel):
    """The Cohere v2 rerank response (plus Jina's ``model`` and ``usage``)."""

    id: str
    model: str
    results: list[RerankV2Result]
    meta: dict[str, Any] = Field(
        description="Cohere's `api_version` and `tokens`, any `warnings`, and grouprank's counts over the returned "
                    "results: `reranked` (scored by the LLM), `fallback` (not scored), and the `errors`.")
    usage: dict[str, int] = Field(description="Jina's `total_tokens`.")


class RerankResponse(RerankV2Response):
    """The Cohere v1 and Jina rerank response."""

    results: list[RerankResult]


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
    adaptation: dict[str, Any] | None = Field(default=None, description="The last `train adapt` report: "
                                              "queries kept and dropped, steps, held-out scores, what was promoted.")


class RetrainBody(BaseModel):
    """``POST /admin/retrain``'s optional body: ``adapt`` runs ``grouprank train adapt`` on the index
    instead of the pipeline."""

    model_config = ConfigDict(extra="forbid")
    adapt: bool = False
    minutes: float | None = Field(default=None, gt=0, description="Adaptation time budget (default: the "
                                  "service's adapt_minutes).")
    queries: int | None = Field(default=None, ge=2, description="Queries to synthesize, at most.")
    held_out: int | None = Field(default=None, ge=1, description="Synthesized queries held out for the gates.")
    stages: list[Literal["embedder", "reranker"]] | None = Field(default=None, min_length=1)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
    failing: list[str]
