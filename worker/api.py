"""The search API (FastAPI): ``create_app(settings)``; ``app_from_env()`` for uvicorn's ``--factory``.

Routes: ``POST /search``, ``POST /rerank`` and ``POST /v1/rerank`` (Cohere v1 / Jina shape), ``POST /v2/rerank``
(Cohere v2 shape), ``POST /documents``, ``DELETE /documents/{doc_id}``, ``POST /admin/reindex``,
``POST /admin/retrain``, ``GET /admin/model``, ``GET /tasks/{task_id}``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``; OpenAPI docs at ``/docs``. Writes and admin need an API key.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from grouprank.errors import InputError
from indexer.protocol import SearchIndex
from reranker.types import Candidate, Ranking
from worker.admin_routes import admin_router, serving_model_info
from worker.experiments_ui import experiments_router
from worker.guards import BodyLimitMiddleware, key_guard, limit_error
from worker.metrics import Metrics, MetricsMiddleware
from worker.operations import operations_router
from worker.payloads import RerankJob
from worker.rerank_stage import (
    RerankUnavailable,
)
from worker.responses import AsciiJSONResponse
from worker.schemas import (
    RerankBody,
    RerankResponse,
    RerankV2Body,
    RerankV2Response,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from worker.services import Services, index_errors, open_index_now, start, stop
from worker.settings import Settings
from worker.ui import judgments_folder, ui_router

log = logging.getLogger(__name__)

RESPONSE_MARGIN_S = 0.01  # kept from the deadline for building the response


def app_from_env() -> FastAPI:
    return create_app(Settings.from_env())


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``: embedded (``broker_url`` None) or distributed over Celery/Redis."""
    services = Services()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await start(settings, services, metrics)
        try:
            yield
        finally:
            await stop(services)

    app = FastAPI(
        title="grouprank",
        summary="Hybrid BM25 + dense retrieval with a GroupRank (groupwise LLM) reranking stage.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> AsciiJSONResponse:
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> AsciiJSONResponse:
        return AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.services = services
    app.state.settings = settings
    reader = [Depends(key_guard(settings, required=settings.protect_reads))]

    async def need_index() -> SearchIndex:
        if services.index is None:
            await asyncio.to_thread(open_index_now, settings, services)
        if services.index is None:
            raise HTTPException(503, f"no index is open: {services.index_error}")
        return services.index

    def check_text(text: str, loc: list[Any], what: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise limit_error(loc, f"{what} is not valid Unicode text ({exc.reason} at {exc.start})") from None

    def check_query(query: str, loc: list[Any]) -> None:
        check_text(query, loc, "query")
        if len(query) > settings.max_query_chars:
            raise limit_error(loc, f"query is {len(query)} characters long; the limit is "
                                   f"{settings.max_query_chars} (max_query_chars)")
        if not query.strip():
            raise limit_error(loc, "query is blank; give some words to search for")

    # -- search and rerank -------------------------------------------------------------------------
    @app.post("/search", response_model=SearchResponse, dependencies=reader, tags=["search"])
    async def search(body: SearchRequest) -> SearchResponse:
        """Retrieve, then rerank through the rerank stage within ``deadline_ms``. If reranking cannot
        finish in time (or the broker is down) the hits come back in retrieval order with
        ``reranked: false`` and a ``reason``."""
        start = time.monotonic()
        check_query(body.query, ["body", "query"])
        if body.k > settings.max_k:
            raise limit_error(["body", "k"], f"k is {body.k}; the limit is {settings.max_k} (max_k)")
        deadline_ms = body.deadline_ms if body.deadline_ms is not None else settings.default_deadline_ms
        if deadline_ms > settings.max_deadline_ms:
            raise limit_error(["body", "deadline_ms"], f"deadline_ms is {deadline_ms:g}; the limit is "
                                                       f"{settings.max_deadline_ms:g} (max_deadline_ms)")
        deadline = start + deadline_ms / 1000.0
        await need_index()
        depth = max(body.k, settings.rerank_depth) if body.rerank else body.k
        try:
            with index_errors():
                hits = await services.batcher.search(body.query, depth, body.mode)
        except InputError as exc:
            raise limit_error(["body", exc.field or "query"], exc.message) from None
        retrieved = time.monotonic()
        metrics.stage.labels("retrieval").observe(retrieved - start)

        ranking, trace, reason = None, None, None
        if not body.rerank:
            reason = "reranking not requested"
        elif not hits:
            reason = "nothing retrieved"
        else:
            job = RerankJob(query=body.query, top_k=body.k,
                            candidates=[Candidate.from_hit(h) for h in hits])
            try:
                served = (await services.results.rerank([job], deadline - RESPONSE_MARGIN_S))[0]
            except RerankUnavailable as exc:
                reason = str(exc)
                metrics.fallbacks.labels(exc.kind).inc()
            else:
                ranking, trace = served.ranking, served.trace()
                metrics.fallback_documents.inc(len(ranking.fallback))
                if not ranking.reranked:
                    reason = "the reranker scored no document" + (
                        f" ({ranking.trace.errors[0]})" if ranking.trace.errors else
                        f" ({ranking.trace.parse_failures} unparsable answers)" if ranking.trace.parse_failures
                        else "")
                    metrics.fallbacks.labels("unscored").inc()
                    ranking = None
            metrics.stage.labels("rerank").observe(time.monotonic() - retrieved)
        done = time.monotonic()
        return SearchResponse(
            query=body.query, mode=body.mode, k=body.k, reranked=ranking is not None, reason=reason,
            hits=_hits(hits, ranking, body.k),
            timings_ms={"retrieval": round((retrieved - start) * 1000, 3),
                        "rerank": round((done - retrieved) * 1000, 3),
                        "total": round((done - start) * 1000, 3)},
            rerank_trace=trace,
        )

    async def rerank_documents(body: RerankBody | RerankV2Body, api_version: str) -> dict[str, Any]:
        """The one implementation behind the rerank routes: checks, reranking, the Cohere/Jina response."""
        check_query(body.query, ["body", "query"])
        if len(body.documents) > settings.max_rerank_documents:
            raise limit_error(["body", "documents"], f"{len(body.documents)} documents; the limit is "
                                                     f"{settings.max_rerank_documents} (max_rerank_documents)")
        texts = body.texts()
        for n, text in enumerate(texts):
            check_text(text, ["body", "documents", n], f"documents[{n}]")
            if len(text) > settings.max_document_chars:
                raise limit_error(["body", "documents", n], f"document is {len(text)} characters long; the "
                                  f"limit is {settings.max_document_chars} (max_document_chars)")
        start = time.monotonic()
        job = RerankJob(query=body.query, top_k=body.top_n,
                        candidates=[Candidate(id=str(n), text=t) for n, t in enumerate(texts)])
        try:
            ranking = (await services.results.rerank([job], start + settings.rerank_timeout_s))[0].ranking
        except RerankUnavailable as exc:
            metrics.fallbacks.labels(exc.kind).inc()
            raise HTTPException(503, f"reranking failed: {exc}") from None
        metrics.stage.labels("rerank").observe(time.monotonic() - start)
        metrics.fallback_documents.inc(len(ranking.fallback))
        return _rerank_response(body, ranking, api_version, body.model or settings.rerank_model)

    rerank_route = {"response_model_exclude_none": True, "dependencies": reader, "tags": ["search"]}

    @app.post("/rerank", response_model=RerankResponse, **rerank_route)
    async def rerank(body: RerankBody) -> dict[str, Any]:
        """Rerank documents for a query. Takes a Cohere v1 or Jina rerank request and answers in their
        shape (Cohere's ``id``/``meta``, Jina's ``model``/``usage``); the same as ``/v1/rerank``."""
        return await rerank_documents(body, "2")

    @app.post("/v1/rerank", response_model=RerankResponse, **rerank_route)
    async def rerank_v1(body: RerankBody) -> dict[str, Any]:
        """Cohere's v1 rerank (``cohere.Client(base_url=...).rerank``), also Jina's request shape."""
        return await rerank_documents(body, "1")

    @app.post("/v2/rerank", response_model=RerankV2Response, **rerank_route)
    async def rerank_v2(body: RerankV2Body) -> dict[str, Any]:
        """Cohere's v2 rerank (``cohere.ClientV2(base_url=...).rerank``): results carry no document."""
        return await rerank_documents(body, "2")

    # -- documents and jobs ------------------------------------------------------------------------
    app.include_router(admin_router(settings, services, need_index, check_text))  # documents, admin, tasks
    app.include_router(operations_router(settings, services, metrics))  # healthz, readyz, metrics
    model = partial(serving_model_info, settings)
    app.include_router(ui_router(settings, search=search, model=model, need_index=need_index))  # the workbench
    app.include_router(experiments_router(settings, judgments_folder(settings), search=search, model=model))
    return app


def _hits(hits: list, ranking: Ranking | None, k: int) -> list[SearchHit]:
    by_id = {h.id: (n, h) for n, h in enumerate(hits, start=1)}
    if ranking is None:
        order = [(h.id, h.score) for h in hits[:k]]
        rerank_scores: dict[str, float] = {}
        scored: set[str] = set()
    else:
        order = list(zip(ranking.ids, ranking.scores, strict=True))[:k]
        rerank_scores, scored = ranking.rerank_scores, set(ranking.reranked)
    out = []
    for doc_id, score in order:
        rank, hit = by_id[doc_id]
        out.append(SearchHit(id=hit.id, title=hit.title, text=hit.text, metadata=hit.metadata, score=score,
                             retriever_score=hit.score, retriever_rank=rank,
                             rerank_score=rerank_scores.get(doc_id), reranked=doc_id in scored,
                             scores=hit.scores, ranks=hit.ranks))
    return out


def _rerank_response(body: RerankBody | RerankV2Body, ranking: Ranking, api_version: str, model: str) -> dict:
    """The rerank response (Cohere's ``id``, ``results``, ``meta``; Jina's ``model``, ``usage``) for ``ranking``."""
    trace = ranking.trace
    results = [{"index": int(doc_id), "relevance_score": score,
                "document": body.echo(int(doc_id)) if body.return_documents else None}
               for doc_id, score in zip(ranking.ids, ranking.scores, strict=True)]
    meta = {"api_version": {"version": api_version},
            "tokens": {"input_tokens": trace.prompt_tokens, "output_tokens": trace.completion_tokens},
            "reranked": len(ranking.reranked), "fallback": len(ranking.fallback), "errors": trace.errors}
    if warnings := body.warnings():
        meta["warnings"] = warnings
    return {"id": str(uuid.uuid4()), "model": model, "results": results, "meta": meta,
            "usage": {"total_tokens": trace.prompt_tokens + trace.completion_tokens}}
