"""What the API's routes share at run time (``Services``: the index, the rerank stage, the job runner,
the broker clients) and its lifecycle: opening the index (retried while it is missing), readiness,
start-up and shut-down, queueing a job, and index failures as HTTP errors."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from grouprank.errors import GroupRankError, InputError
from indexer.protocol import SearchIndex
from worker.jobs import LocalJobs, QueuedJobs
from worker.metrics import Metrics
from worker.rerank_stage import EmbeddedRerankStage, QueuedRerankStage, ResultWaiter
from worker.result_cache import CachedRerankStage, MemoryStore, RedisStore
from worker.search_batcher import BatcherClosed, SearchBatcher
from worker.settings import Settings
from worker.tasks import get_index, serving_model

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 1.0
REOPEN_INTERVAL_S = 5.0


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


async def submit(services: Services, name: str, *args: Any) -> str:
    try:
        return await asyncio.wait_for(asyncio.to_thread(services.jobs.submit, name, *args), 10.0)
    except (GroupRankError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:
        raise HTTPException(503, f"cannot queue the job, the broker is unavailable: {exc}") from None


@contextmanager
def index_errors() -> Iterator[None]:
    """Index failures as HTTP errors: a backend that cannot be reached (connection error, timeout, or
    OpenSearch answering 429/5xx) is a 503; another GroupRankError (e.g. ``BulkError``: OpenSearch refused
    some documents) a 502 with its message. ``InputError`` passes through (the caller's 422)."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if _unreachable(exc) or isinstance(exc, BatcherClosed):
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


def readiness(settings: Settings, services: Services) -> dict[str, str]:
    open_index_now(settings, services)
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


def open_index_now(settings: Settings, services: Services) -> None:
    """Open the index (and load its query embedder). If that fails, ``/readyz`` and requests try again,
    at most every ``REOPEN_INTERVAL_S``: the index may be created after the API starts."""
    with services.open_lock:
        if services.index is not None:
            if services.batcher is None:  # the lifespan stopped and started again (stop() closed it)
                services.batcher = SearchBatcher(services.index)
            return
        if time.monotonic() < services.next_open:
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


async def start(settings: Settings, services: Services, metrics: Metrics) -> None:
    await asyncio.to_thread(open_index_now, settings, services)
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


async def stop(services: Services) -> None:
    if services.batcher is not None:
        batcher, services.batcher = services.batcher, None
        await asyncio.to_thread(batcher.close)
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
