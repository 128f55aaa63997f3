"""Celery tasks: ``grouprank.rerank`` (queue ``rerank``), ``grouprank.index.*`` (queue ``index``) and
``grouprank.train.pipeline`` (queue ``train``).

Delivery is at least once (late acks), so every task is idempotent: a redelivered task (its worker died
before acknowledging it, or it outlived the broker's visibility timeout) returns the result stored by the
execution that finished, or runs as if for the first time. That check needs the stored state to stay
SUCCESS, so no task reports STARTED. Each finished execution is counted in the Redis hash
``<prefix>grouprank:executions`` (task id -> count), so duplicates would show.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery import Task, shared_task

from grouprank.errors import GroupRankError, InputError
from indexer.protocol import SearchIndex
from worker.settings import Settings

log = logging.getLogger(__name__)

EXECUTIONS_KEY = "grouprank:executions"

_reranker_lock = threading.Lock()
_rerankers: dict[tuple, tuple[Any, str | None]] = {}
_index_lock = threading.Lock()
_indexes: dict[tuple[str, ...], SearchIndex] = {}


def serving_model(settings: Settings) -> tuple[str, str | None]:
    """``(model, version)``: the model the trainer promoted last (``registry_dir``), if any, else
    ``rerank_model`` (version None). Reads one small file, so it is checked before every rerank."""
    if settings.registry_dir is not None:
        from trainer.registry import Registry

        current = Registry(settings.registry_dir).current()
        if current is not None:
            return str(current.path), current.version
    return settings.rerank_model, None


def get_reranker(settings: Settings):
    """The reranker for ``settings`` and the serving model, loaded once per process (the model stays in
    memory). When a new model is promoted, the next call loads it and drops the previous one: workers and
    the embedded API switch models without a restart."""
    return serving_reranker(settings)[0]


def serving_reranker(settings: Settings) -> tuple[Any, str | None]:
    """``(reranker, registry version or None)``; see ``get_reranker``."""
    model, version = serving_model(settings)
    key = (settings.rerank_method, model, settings.rerank_backend,
           tuple(sorted((k, repr(v)) for k, v in settings.rerank_options.items())))
    with _reranker_lock:
        if key not in _rerankers:
            from reranker import load_reranker

            started = time.monotonic()
            loaded = load_reranker(**{**settings.reranker_kwargs(), "model": model})
            _rerankers.clear()  # the previous model (if any) is no longer served
            _rerankers[key] = (loaded, version)
            log.info("loaded reranker %s/%s%s in %.1f s", settings.rerank_method, model,
                     f" (registry version {version})" if version else "", time.monotonic() - started)
        return _rerankers[key]


def get_index(settings: Settings) -> SearchIndex:
    """The index ``settings`` name, opened once per process: the OpenSearch alias at ``opensearch_url`` if
    that is set, else the embedded index at ``index_dir`` (it refreshes itself on each search)."""
    from indexer.backends import open_index

    backend = settings.index_backend
    if backend is None:
        raise GroupRankError("no index configured: set GROUPRANK_INDEX_DIR or GROUPRANK_OPENSEARCH_URL")
    target = settings.opensearch_config() if backend == "opensearch" else settings.index_dir
    key = (backend, str(target))
    with _index_lock:
        if key not in _indexes:
            _indexes[key] = open_index(target)
        return _indexes[key]


def _reconnect_after_fork() -> None:
    """A forked worker process must not share its parent's HTTP connections to OpenSearch (prefork pool):
    give each cached OpenSearch index a client of its own, keeping its loaded embedder."""
    module = sys.modules.get("indexer.opensearch.index")
    if module is None:
        return
    from indexer.opensearch.client import connect

    for index in _indexes.values():
        if isinstance(index, module.OpenSearchIndex):
            index.client = connect(index.config)


os.register_at_fork(after_in_child=_reconnect_after_fork)


def run_rerank(settings: Settings, requests: list[dict[str, Any]], budget_ms: float | None) -> list[dict]:
    """Rerank ``requests`` (``{query, candidates, top_k}`` dicts) in one batched call; JSON-ready rankings."""
    from reranker.types import RerankRequest

    batch = [RerankRequest(r.get("query"), r.get("candidates"), r.get("top_k")) for r in requests]
    reranker, version = serving_reranker(settings)
    rankings = reranker.rerank_batch(batch, deadline_ms=budget_ms)
    out = [ranking.to_dict() for ranking in rankings]
    for ranking in out:  # which model answered (a promotion switches it between requests)
        ranking["trace"].update(model=reranker.backend.model, model_version=version)
    return out


def _settings(task: Task) -> Settings:
    return task.app.settings


def _stored_result(task: Task) -> tuple[bool, Any]:
    """``(True, result)`` if this task id already finished (a redelivery after a crash before the ack)."""
    meta = task.backend.get_task_meta(task.request.id)
    return meta.get("status") == "SUCCESS", meta.get("result")


def _record_execution(task: Task) -> None:
    settings = _settings(task)
    key = settings.key_prefix + EXECUTIONS_KEY
    try:
        client = task.backend.client
        count = client.hincrby(key, task.request.id, 1)
        client.expire(key, settings.result_expires_s)
    except Exception as exc:  # bookkeeping must never fail the task
        log.warning("could not record the execution of %s: %s", task.request.id, exc)
        return
    if count > 1:
        log.warning("task %s finished %d times (redelivered)", task.request.id, count)


@shared_task(name="grouprank.rerank", bind=True, acks_late=True, reject_on_worker_lost=True)
def rerank(self: Task, requests: list[dict[str, Any]], deadline_at: float | None = None) -> list[dict]:
    """Rerank one or more queries' candidates in one batched backend call.

    ``deadline_at`` (Unix time) is when the caller stops waiting: the reranker gets the time left, capped
    by the soft time limit, and documents it could not score keep their retriever order.
    """
    done, result = _stored_result(self)
    if done:
        return result
    settings = _settings(self)
    budget_ms = settings.rerank_soft_time_limit_s * 1000.0
    if deadline_at is not None:
        budget_ms = max(0.0, min(budget_ms, (deadline_at - time.time()) * 1000.0))
    try:
        result = run_rerank(settings, requests, budget_ms)
    except InputError as exc:
        raise ValueError(str(exc)) from None  # a plain exception type, so the caller can unpickle/JSON it
    _record_execution(self)
    return result


@shared_task(name="grouprank.index.reindex", bind=True, acks_late=True)
def reindex(self: Task) -> dict[str, Any]:
    """Rebuild the index's search structures and switch to them; returns the new generation."""
    done, result = _stored_result(self)
    if done:
        return result
    started = time.monotonic()
    try:
        index = get_index(_settings(self))
        generation = index.reindex(progress=False)
        seconds, documents = round(time.monotonic() - started, 3), len(index)
    except GroupRankError as exc:  # a plain type: some (BulkError) cannot be rebuilt from their message
        raise RuntimeError(str(exc)) from None
    _record_execution(self)
    return {"generation": generation, "seconds": seconds, "documents": documents}


@shared_task(name="grouprank.index.upsert", bind=True, acks_late=True)
def upsert(self: Task, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Bulk ingestion: validate every record (``_id``/``id``, ``text``, ``title``, ``metadata``), then
    upsert them in one transaction."""
    from indexer.documents import Document

    done, result = _stored_result(self)
    if done:
        return result

    try:
        docs = [Document.from_record(r, source=f"documents[{n}]") for n, r in enumerate(records)]
    except InputError as exc:
        raise ValueError(str(exc)) from None
    try:
        written = get_index(_settings(self)).upsert(docs, progress=False)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    except GroupRankError as exc:  # e.g. OpenSearch refused some documents (BulkError) or is unreachable
        raise RuntimeError(str(exc)) from None
    _record_execution(self)
    return {"upserted": written}


def run_retraining(settings: Settings, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the training pipeline: ``config`` or the file ``settings.train_config``. A run that
    another worker holds the lock for answers ``{"status": "busy"}``. Without a ``redis_url`` of its own
    the pipeline takes its one-run lock in the broker's Redis, so it holds across machines."""
    from trainer.config import PipelineConfig
    from trainer.locks import PipelineBusy
    from trainer.pipeline import run_pipeline

    if config is not None:
        pipeline = PipelineConfig.from_dict(config)
    elif settings.train_config is not None:
        pipeline = PipelineConfig.load(settings.train_config)
    else:
        raise InputError("no training config: set GROUPRANK_TRAIN_CONFIG or pass one", field="train_config")
    if pipeline.redis_url is None and not settings.embedded:
        pipeline = replace(pipeline, redis_url=settings.celery_broker_url,
                           lock_key=settings.key_prefix + pipeline.lock_key)
    if settings.registry_dir is not None and Path(pipeline.registry_dir).resolve() != settings.registry_dir.resolve():
        log.warning("the pipeline promotes into %s but the service serves from %s", pipeline.registry_dir,
                    settings.registry_dir)
    try:
        return run_pipeline(pipeline)
    except PipelineBusy as exc:
        return {"status": "busy", "detail": str(exc)}


@shared_task(name="grouprank.train.pipeline", bind=True, acks_late=True)
def retrain(self: Task, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole retraining pipeline (mine -> synth -> sft -> grpo -> evaluate -> promote), one run at a
    time; a run interrupted by a crash resumes at its last finished stage when the task is redelivered or
    sent again (beat sends it every ``retrain_every_s``)."""
    done, result = _stored_result(self)
    if done:
        return result
    try:
        result = run_retraining(_settings(self), config)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    _record_execution(self)
    return result
