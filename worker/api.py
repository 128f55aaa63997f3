"""The search API (FastAPI): ``create_app(settings)``; ``app_from_env()`` for uvicorn's ``--factory``.

Routes: ``POST /search``, ``POST /rerank`` and ``POST /v1/rerank`` (Cohere v1 / Jina shape), ``POST /v2/rerank``
(Cohere v2 shape), ``POST /documents``, ``DELETE /documents/{doc_id}``, ``POST /admin/reindex``,
``POST /admin/retrain``, ``GET /admin/model``, ``GET /tasks/{task_id}``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``; OpenAPI docs at ``/docs``. Writes and admin need an API key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from grouprank.errors import GroupRankError, InputError
from indexer.protocol import SearchIndex
from worker.experiments_ui import experiments_router
from worker.guards import BodyLimitMiddleware, key_guard, limit_error
from worker.jobs import LocalJobs, QueuedJobs
from worker.metrics import Metrics, MetricsMiddleware, QueueDepthCollector
from worker.rerank_stage import (
    EmbeddedRerankStage,
    QueuedRerankStage,
    RerankUnavailable,
    ResultWaiter,
)
from worker.result_cache import CachedRerankStage, MemoryStore, RedisStore
from worker.schemas import (
    DeleteResponse,
    DocumentsBody,
    Health,
    Readiness,
    RerankBody,
    RerankResponse,
    RerankV2Body,
    RerankV2Response,
    SearchHit,
    SearchRequest,
    SearchResponse,
    ServingModel,
    TaskResponse,
    UpsertResponse,
)
from worker.search_batcher import SearchBatcher
from worker.settings import Settings
from worker.tasks import get_index, serving_model
from worker.ui import judgments_folder, ui_router

log = logging.getLogger(__name__)

RESPONSE_MARGIN_S = 0.01  # kept from the deadline for building the response
PING_TIMEOUT_S = 1.0
REOPEN_INTERVAL_S = 5.0


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so text that is not valid UTF-8 (a lone surrogate echoed back from
    a request) still renders."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


@dataclass
class Services:
    """What the routes use, created at startup."""

    index: SearchIndex | None = None  # the embedded index or an OpenSearch one (Settings.index_backend)
    index_error: str | None = None
    open_lock: threading.Lock = field(default_factory=threading.Lock)
    next_open: float = 0.0  # monotonic time of the next attempt to open a missing index
    batcher: SearchBatcher | None = None
    stage: EmbeddedRerankStage | QueuedRerankStage | None = None
    results: CachedRerankStage | EmbeddedRerankStage | QueuedRerankStage | None = None  # the stage, cached
    jobs: LocalJobs | QueuedJobs | None = None
    celery: Any = None
    redis: Any = None  # synchronous client, for readiness and queue depth
    cache_client: Any = None  # asynchronous client of the result cache
    waiter: ResultWaiter | None = None


def app_from_env() -> FastAPI:
    return create_app(Settings.from_env())


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``: embedded (``broker_url`` None) or distributed over Celery/Redis."""
    services = Services()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await _start(settings, services, metrics)
        try:
            yield
        finally:
            await _stop(services)

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
    writer = [Depends(key_guard(settings, required=True))]
    reader = [Depends(key_guard(settings, required=settings.protect_reads))]

    async def need_index() -> SearchIndex:
        if services.index is None:
            await asyncio.to_thread(_open_index, settings, services)
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
            with _index_errors():
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
            candidates = [{"id": h.id, "text": h.text, "title": h.title, "score": h.score} for h in hits]
            try:
                ranking = (await services.results.rerank(
                    [{"query": body.query, "candidates": candidates, "top_k": body.k}],
                    deadline - RESPONSE_MARGIN_S))[0]
            except RerankUnavailable as exc:
                reason = str(exc)
                metrics.fallbacks.labels(exc.kind).inc()
            else:
                trace = ranking["trace"]
                metrics.fallback_documents.inc(len(ranking["fallback"]))
                if not ranking["reranked"]:
                    reason = "the reranker scored no document" + (
                        f" ({trace['errors'][0]})" if trace["errors"] else
                        f" ({trace['parse_failures']} unparsable answers)" if trace["parse_failures"] else "")
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
        request = {"query": body.query, "candidates": [{"id": str(n), "text": t} for n, t in enumerate(texts)],
                   "top_k": body.top_n}
        try:
            ranking = (await services.results.rerank([request], start + settings.rerank_timeout_s))[0]
        except RerankUnavailable as exc:
            metrics.fallbacks.labels(exc.kind).inc()
            raise HTTPException(503, f"reranking failed: {exc}") from None
        metrics.stage.labels("rerank").observe(time.monotonic() - start)
        metrics.fallback_documents.inc(len(ranking["fallback"]))
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
    @app.post("/documents", response_model=UpsertResponse, response_model_exclude_none=True,
              dependencies=writer, tags=["documents"],
              responses={202: {"model": UpsertResponse, "description": "Queued (background=true)."}})
    async def upsert(body: DocumentsBody, response: Response,
                     background: bool = Query(False, description="Queue the upsert on the index queue "
                                              "and return a task id (needs a broker).")) -> UpsertResponse:
        """Add or replace documents. Every document is validated first: one bad document gives a 422
        naming its position and field, and nothing is stored. Documents the OpenSearch backend refuses
        give a 502 naming them (the others were stored); an unreachable index gives a 503."""
        from indexer.documents import Document

        docs = []
        for n, record in enumerate(body.documents):
            try:
                docs.append(Document.from_record(record))
            except InputError as exc:
                raise limit_error(["body", "documents", n, exc.field or ""],
                                  f"documents[{n}]: {exc.message}") from None
            for name in ("id", "title", "text"):
                check_text(getattr(docs[-1], name), ["body", "documents", n, name], f"documents[{n}].{name}")
            if len(docs[-1].text) > settings.max_document_chars:
                raise limit_error(["body", "documents", n, "text"], f"documents[{n}]: text is "
                                  f"{len(docs[-1].text)} characters long; the limit is "
                                  f"{settings.max_document_chars} (max_document_chars)")
        index = await need_index()
        if background and isinstance(services.jobs, QueuedJobs):
            task_id = await _submit(services, "grouprank.index.upsert", [d.to_record() for d in docs])
            response.status_code = 202
            return UpsertResponse(task_id=task_id, state="PENDING")
        try:
            with _index_errors():
                written = await asyncio.to_thread(index.upsert, docs, False)
        except InputError as exc:
            raise limit_error(["body", "documents"], str(exc)) from None
        return UpsertResponse(upserted=written)

    @app.delete("/documents/{doc_id}", response_model=DeleteResponse, dependencies=writer, tags=["documents"])
    async def delete(doc_id: str) -> DeleteResponse:
        """Delete one document; 404 if there is none with this id, 503 if the index is unreachable."""
        index = await need_index()
        try:
            with _index_errors():
                deleted = await asyncio.to_thread(index.delete, [doc_id])
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        if not deleted:
            raise HTTPException(404, f"no document with id {doc_id!r}")
        return DeleteResponse(deleted=doc_id)

    @app.post("/admin/reindex", response_model=TaskResponse, status_code=202, dependencies=writer,
              tags=["admin"])
    async def reindex() -> TaskResponse:
        """Queue a rebuild of the index's search structures (on the index queue); returns its task id."""
        await need_index()
        task_id = await _submit(services, "grouprank.index.reindex")
        return TaskResponse(task_id=task_id, state="PENDING")

    @app.post("/admin/retrain", response_model=TaskResponse, status_code=202, dependencies=writer,
              tags=["admin"])
    async def retrain() -> TaskResponse:
        """Queue a retraining run (mine -> synth -> SFT -> GRPO -> evaluate -> promote) on the train queue,
        with the service's pipeline config; a better model is promoted and served without a restart."""
        if settings.train_config is None:
            raise HTTPException(409, "no training config: set GROUPRANK_TRAIN_CONFIG to a pipeline config file")
        task_id = await _submit(services, "grouprank.train.pipeline")
        return TaskResponse(task_id=task_id, state="PENDING")

    @app.get("/admin/model", response_model=ServingModel, dependencies=reader, tags=["admin"])
    async def model() -> ServingModel:
        """The rerank model being served: the trainer's last promoted version, or the configured model."""
        name, version = await asyncio.to_thread(serving_model, settings)
        history: list[dict[str, Any]] = []
        if settings.registry_dir is not None:
            from trainer.registry import Registry

            history = (await asyncio.to_thread(Registry(settings.registry_dir).history))[-20:]
        return ServingModel(model=name, version=version, history=history,
                            registry_dir=None if settings.registry_dir is None else str(settings.registry_dir))

    @app.get("/tasks/{task_id}", response_model=TaskResponse, dependencies=reader, tags=["admin"])
    async def task(task_id: str) -> TaskResponse:
        """State and result of a background task."""
        try:
            status = await asyncio.to_thread(services.jobs.status, task_id)
        except Exception as exc:
            raise HTTPException(503, f"the result backend is unavailable: {exc}") from None
        if status is None:
            raise HTTPException(404, f"no task with id {task_id!r}")
        return TaskResponse(**status)

    # -- operations --------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             responses={503: {"model": Readiness, "description": "Not ready; `failing` names the checks."}})
    async def readyz() -> AsciiJSONResponse:
        """Ready to serve: the index is open and answers (either backend), and the broker and a worker
        answer (distributed mode) or the reranker is loaded (embedded mode)."""
        checks = await asyncio.to_thread(_readiness, settings, services)
        failing = [name for name, value in checks.items() if value != "ok"]
        body = Readiness(ready=not failing, checks=checks, failing=failing)
        return AsciiJSONResponse(body.model_dump(), status_code=503 if failing else 200)

    queue_depth = None if settings.embedded else QueueDepthCollector(settings, lambda: services.redis)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus text format."""
        text = await asyncio.to_thread(metrics.exposition, queue_depth)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(ui_router(settings, search=search, model=model, need_index=need_index))  # the workbench
    app.include_router(experiments_router(settings, judgments_folder(settings), search=search, model=model))
    return app


def _hits(hits: list, ranking: dict | None, k: int) -> list[SearchHit]:
    by_id = {h.id: (n, h) for n, h in enumerate(hits, start=1)}
    if ranking is None:
        order = [(h.id, h.score) for h in hits[:k]]
        rerank_scores: dict[str, float] = {}
        scored: set[str] = set()
    else:
        order = list(zip(ranking["ids"], ranking["scores"], strict=True))[:k]
        rerank_scores, scored = ranking["rerank_scores"], set(ranking["reranked"])
    out = []
    for doc_id, score in order:
        rank, hit = by_id[doc_id]
        out.append(SearchHit(id=hit.id, title=hit.title, text=hit.text, metadata=hit.metadata, score=score,
                             retriever_score=hit.score, retriever_rank=rank,
                             rerank_score=rerank_scores.get(doc_id), reranked=doc_id in scored,
                             scores=hit.scores, ranks=hit.ranks))
    return out


def _rerank_response(body: RerankBody | RerankV2Body, ranking: dict, api_version: str, model: str) -> dict:
    """The rerank response (Cohere's ``id``, ``results``, ``meta``; Jina's ``model``, ``usage``) for ``ranking``."""
    trace = ranking["trace"]
    results = [{"index": int(doc_id), "relevance_score": score,
                "document": body.echo(int(doc_id)) if body.return_documents else None}
               for doc_id, score in zip(ranking["ids"], ranking["scores"], strict=True)]
    meta = {"api_version": {"version": api_version},
            "tokens": {"input_tokens": trace["prompt_tokens"], "output_tokens": trace["completion_tokens"]},
            "reranked": len(ranking["reranked"]), "fallback": len(ranking["fallback"]), "errors": trace["errors"]}
    if warnings := body.warnings():
        meta["warnings"] = warnings
    return {"id": str(uuid.uuid4()), "model": model, "results": results, "meta": meta,
            "usage": {"total_tokens": trace["prompt_tokens"] + trace["completion_tokens"]}}


async def _submit(services: Services, name: str, *args: Any) -> str:
    try:
        return await asyncio.wait_for(asyncio.to_thread(services.jobs.submit, name, *args), 10.0)
    except (GroupRankError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:
        raise HTTPException(503, f"cannot queue the job, the broker is unavailable: {exc}") from None


@contextmanager
def _index_errors() -> Iterator[None]:
    """Index failures as HTTP errors: a backend that cannot be reached (connection error, timeout, or
    OpenSearch answering 429/5xx) is a 503; another GroupRankError (e.g. ``BulkError``: OpenSearch refused
    some documents) a 502 with its message. ``InputError`` passes through (the caller's 422)."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if _unreachable(exc):
            raise HTTPException(503, f"the index is unavailable: {exc}") from None
        if isinstance(exc, GroupRankError):
            raise HTTPException(502, str(exc)) from None
        raise


def _unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception that caused it, says the index backend is down or overloaded."""
    opensearchpy = sys.modules.get("opensearchpy")  # only loaded (and only possible) with the OpenSearch backend
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        if opensearchpy is not None:
            from indexer.opensearch.client import RETRY_STATUSES, status_of

            if isinstance(exc, opensearchpy.ConnectionError) or (
                    isinstance(exc, opensearchpy.TransportError) and status_of(exc) in RETRY_STATUSES):
                return True
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__
    return False


def _readiness(settings: Settings, services: Services) -> dict[str, str]:
    _open_index(settings, services)
    if services.index is None:
        checks = {"index": f"not open: {services.index_error}"}
    else:
        try:
            services.index.ping()  # OpenSearch: one request, so a cluster that went down shows
        except Exception as exc:
            checks = {"index": f"unavailable: {exc}"}
        else:
            checks = {"index": "ok"}
    if settings.embedded:
        checks["reranker"] = services.stage.state
        return checks
    try:
        services.redis.ping()
    except Exception as exc:
        checks["broker"] = f"unreachable: {exc}"
        checks["workers"] = "unknown: the broker is unreachable"
        return checks
    checks["broker"] = "ok"
    try:
        replies = services.celery.control.ping(timeout=PING_TIMEOUT_S, limit=1)  # the first reply suffices
    except Exception as exc:
        replies, error = [], f"ping failed: {exc}"
    else:
        error = f"no worker answered a ping within {PING_TIMEOUT_S:g} s"
    checks["workers"] = "ok" if replies else error
    return checks


def _open_index(settings: Settings, services: Services) -> None:
    """Open the index (and load its query embedder). If that fails, ``/readyz`` and requests try again,
    at most every ``REOPEN_INTERVAL_S``: the index may be created after the API starts."""
    with services.open_lock:
        if services.index is not None or time.monotonic() < services.next_open:
            return
        services.next_open = time.monotonic() + REOPEN_INTERVAL_S
        if settings.index_backend is None:
            services.index_error = "no index configured (set GROUPRANK_INDEX_DIR or GROUPRANK_OPENSEARCH_URL)"
            return
        try:
            index = get_index(settings)
            index.warm_up()  # loads the query embedder now, not on the first query
        except GroupRankError as exc:  # includes MissingExtraError (opensearch-py not installed)
            services.index_error = str(exc)
            log.error("cannot open the index (%s): %s", settings.index_label(), exc)
            return
        except Exception as exc:  # an unexpected failure of a backend's client must not stop the API
            services.index_error = f"{type(exc).__name__}: {exc}"
            log.exception("cannot open the index (%s)", settings.index_label())
            return
        services.batcher = SearchBatcher(index)
        services.index, services.index_error = index, None
        log.info("serving the index: %s", settings.index_label())


def _cached(settings: Settings, services: Services, metrics: Metrics, store: Any) -> None:
    """Put the result cache in front of the rerank stage (unless its TTL is 0)."""
    services.results = services.stage
    if settings.rerank_cache_ttl_s > 0:
        services.results = CachedRerankStage(services.stage, store, lambda: serving_model(settings),
                                             settings.reranker_kwargs(),
                                             lambda result, n: metrics.cache.labels(result).inc(n))


async def _start(settings: Settings, services: Services, metrics: Metrics) -> None:
    await asyncio.to_thread(_open_index, settings, services)
    if settings.embedded:
        stage = EmbeddedRerankStage(settings)
        threading.Thread(target=stage.load, daemon=True, name="grouprank-load-reranker").start()
        services.stage, services.jobs = stage, LocalJobs(settings)
        _cached(settings, services, metrics, MemoryStore(settings.rerank_cache_ttl_s, settings.rerank_cache_entries))
        return
    import redis
    import redis.asyncio

    from worker.celery_app import create_celery

    services.celery = create_celery(settings, fail_fast=True)
    timeouts = {"socket_connect_timeout": settings.connect_timeout_s,
                "socket_timeout": max(settings.connect_timeout_s, 5.0)}
    services.redis = redis.Redis.from_url(settings.celery_broker_url, **timeouts)
    waiter = ResultWaiter(services.celery, redis.asyncio.Redis.from_url(settings.celery_result_backend,
                                                                          **timeouts))
    services.waiter = waiter
    services.stage, services.jobs = QueuedRerankStage(services.celery, waiter), QueuedJobs(services.celery)
    services.cache_client = redis.asyncio.Redis.from_url(settings.celery_broker_url, **timeouts)
    _cached(settings, services, metrics, RedisStore(services.cache_client, settings.rerank_cache_ttl_s,
                                                   settings.key_prefix))


async def _stop(services: Services) -> None:
    if services.batcher is not None:
        await asyncio.to_thread(services.batcher.close)
    if isinstance(services.stage, EmbeddedRerankStage):
        services.stage.close()
    if services.waiter is not None:
        await services.waiter.close()
    if services.redis is not None:
        services.redis.close()
    if services.cache_client is not None:
        await services.cache_client.aclose()
    if services.celery is not None:
        services.celery.close()
