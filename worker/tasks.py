"""Celery tasks: ``grouprank.rerank`` (queue ``rerank``), ``grouprank.index.*`` (queue ``index``) and
``grouprank.train.pipeline`` (queue ``train``).

Delivery is at least once (late acks), so every task is idempotent: a redelivered task (its worker died
before acknowledging it, or it outlived the broker's visibility timeout) returns the result stored by the
execution that finished, or runs as if for the first time. That check needs the stored state to stay
SUCCESS, so no task reports STARTED. Each finished execution is counted in the Redis hash
``<prefix>grouprank:executions`` (task id -> count), so duplicates would show.

Retraining is the exception to "runs as if for the first time": a run can outlast the visibility timeout,
so its task may be delivered again while the first delivery still trains. That delivery finds the
pipeline lock taken and retries later (state RETRY) until the run it duplicates has stored its result,
which it then returns. A different retraining task that finds a run going is skipped (state SKIPPED,
result ``{"status": "busy", ...}``): neither reports a success for work it did not do.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore
from pydantic import ValidationError

from grouprank.errors import GroupRankError, InputError
from indexer.protocol import SearchIndex
from worker.payloads import RerankJob, ServedRanking, jobs_from_wire, to_wire
from worker.settings import Settings

log = logging.getLogger(__name__)

EXECUTIONS_KEY = "grouprank:executions"
SKIPPED = "SKIPPED"  # the state of a retraining task that found another run going
BUSY_RETRY_MAX_S = 60.0  # a redelivered retraining task checks this often (at most) whether its run ended
FAILED_LOAD_RETRY_S = 60.0  # a promoted model that failed to load is tried again after this long

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
    memory). When a new model is promoted, it is loaded in the background while the previous one keeps
    answering, then swapped in: workers and the embedded API switch models without a restart."""
    return serving_reranker(settings)[0]


def serving_reranker(settings: Settings) -> tuple[Any, str | None]:
    """``(reranker, registry version or None)`` to answer with now; see ``get_reranker``.

    The first call for ``settings`` loads the model (there is nothing else to answer with); after that a
    newly promoted model never makes a request wait: the previous one answers until it is loaded.
    """
    return _serving_slot(settings).serving(settings)


def reranker_state(settings: Settings) -> str:
    """``ok``, or ``error: ...`` when the promoted model could not be loaded (the previous one still
    answers). Checks the registry like a request does, so a promotion is loaded even without traffic."""
    return _serving_slot(settings).state(settings)


def warm_up(reranker: Any) -> None:
    """One rerank of one short passage before a model serves, so that its first request pays no one-off
    cost (OpenVINO compiling the model's graph, 10-30 s the first time; torch's first-call allocations).
    A failure is logged, never raised: the model may still serve."""
    started = time.monotonic()
    try:
        reranker.rerank("what is a warm-up", ["A warm-up is a short run before the real one."])
    except Exception as exc:  # logged as text: a record holding the exception would keep the model alive
        log.warning("the reranker's warm-up failed: %s", f"{type(exc).__name__}: {exc}")
        return
    log.info("reranker warmed up in %.1f s", time.monotonic() - started)


@dataclass
class _Loaded:
    model: str
    version: str | None
    reranker: Any


@dataclass
class _ServingSlot:
    """The reranker one service configuration serves, and the load of a newly promoted model.

    At most two models are in memory at once (the serving one and the one loading); the old one is
    dropped when the new one is swapped in. One load runs at a time.
    """

    key: tuple
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: _Loaded | None = None
    loading: str | None = None  # the model a background thread is loading
    failed: dict[str, tuple[str, float]] = field(default_factory=dict)  # model -> (error, monotonic time)

    def serving(self, settings: Settings) -> tuple[Any, str | None]:
        model, version = serving_model(settings)
        with self.lock:
            current = self.current
            if current is None:  # the first load: nothing else could answer, so the caller waits for it
                self._load(settings, model, version, first=True)
                current = self.current
            elif current.model != model:
                self._start_loading(settings, model, version)
        assert current is not None
        return current.reranker, current.version

    def state(self, settings: Settings) -> str:
        model, version = serving_model(settings)
        with self.lock:
            current = self.current
            if current is not None and current.model != model:
                self._start_loading(settings, model, version)
            if model in self.failed and (current is None or current.model != model):
                serving = "nothing" if current is None else _label(current.model, current.version)
                return f"error: cannot load {_label(model, version)}: {self.failed[model][0]} (serving {serving})"
        return "ok"

    def _start_loading(self, settings: Settings, model: str, version: str | None) -> None:
        """Load ``model`` on a thread unless a load is running or it failed lately (caller holds the lock)."""
        if self.loading is not None:
            return
        failure = self.failed.get(model)
        if failure is not None and time.monotonic() - failure[1] < FAILED_LOAD_RETRY_S:
            return
        self.loading = model
        threading.Thread(target=self._load_in_background, args=(settings, model, version), daemon=True,
                         name="grouprank-load-reranker").start()

    def _load_in_background(self, settings: Settings, model: str, version: str | None) -> None:
        try:
            self._load(settings, model, version, first=False)
        finally:
            with self.lock:
                self.loading = None

    def _load(self, settings: Settings, model: str, version: str | None, *, first: bool) -> None:
        """Load ``model`` and make it the serving one; errors are recorded (and raised on a first load).
        A first load runs under the lock (the caller holds it); a background one outside it."""
        guard = contextlib.nullcontext() if first else self.lock
        failure = self.failed.get(model)
        if first and failure is not None and time.monotonic() - failure[1] < FAILED_LOAD_RETRY_S:
            raise GroupRankError(f"cannot load {_label(model, version)}: {failure[0]}")
        from reranker import load_reranker

        started = time.monotonic()
        try:
            loaded = load_reranker(**{**settings.reranker_kwargs(), "model": model})
        except Exception as exc:
            with guard:
                self.failed[model] = (str(exc) or type(exc).__name__, time.monotonic())
            log.error("cannot load reranker %s/%s: %s%s", settings.rerank_method, _label(model, version), exc,
                      "" if first else " (the previous model keeps serving)")
            if first:
                raise
            return
        warm_up(loaded)
        with guard:
            self.current = _Loaded(model, version, loaded)  # the previous model (if any) is dropped
            self.failed.pop(model, None)
        del loaded
        _release_memory()
        log.info("loaded reranker %s/%s in %.1f s", settings.rerank_method, _label(model, version),
                 time.monotonic() - started)


_slot_lock = threading.Lock()
_slot: _ServingSlot | None = None


def _serving_slot(settings: Settings) -> _ServingSlot:
    """The slot of ``settings``' service configuration. A process serves one: another configuration
    replaces it (and drops its model)."""
    global _slot
    key = (settings.rerank_method, settings.rerank_model, settings.rerank_backend,
           tuple(sorted((k, repr(v)) for k, v in settings.rerank_options.items())),
           None if settings.registry_dir is None else str(settings.registry_dir))
    with _slot_lock:
        if _slot is None or _slot.key != key:
            _slot = _ServingSlot(key)
            _release_memory()
        return _slot


def _label(model: str, version: str | None) -> str:
    return f"registry version {version} ({model})" if version else model


def _release_memory() -> None:
    """Return a dropped model's memory now (host and accelerator), not at some later collection."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


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


def run_rerank(settings: Settings, jobs: list[RerankJob], budget_ms: float | None) -> list[ServedRanking]:
    """Rerank ``jobs`` in one batched call, each answer with the model that gave it."""
    reranker, version = serving_reranker(settings)
    rankings = reranker.rerank_batch([job.request() for job in jobs], deadline_ms=budget_ms)
    return [ServedRanking(ranking=r, model=reranker.backend.model, model_version=version) for r in rankings]


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
    """Rerank one or more queries' candidates in one batched backend call. ``requests`` and the result
    are ``worker.payloads`` (``RerankJob``, ``ServedRanking``) as Celery carries them: JSON.

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
        result = to_wire(run_rerank(settings, jobs_from_wire(requests), budget_ms))
    except (InputError, ValidationError) as exc:
        raise ValueError(str(exc)) from None  # a plain exception type, so the caller can unpickle/JSON it
    _record_execution(self)
    return result


def run_reindex(settings: Settings) -> dict[str, Any]:
    """Rebuild the index's search structures and switch to them: ``{generation, seconds, documents}``."""
    started = time.monotonic()
    index = get_index(settings)
    generation = index.reindex(progress=False)
    return {"generation": generation, "seconds": round(time.monotonic() - started, 3), "documents": len(index)}


def run_upsert(settings: Settings, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate every record (``_id``/``id``, ``text``, ``title``, ``metadata``), then upsert them in one
    transaction: ``{upserted}``. InputError names the bad record."""
    from indexer.documents import Document

    docs = [Document.from_record(r, source=f"documents[{n}]") for n, r in enumerate(records)]
    return {"upserted": get_index(settings).upsert(docs, progress=False)}


@shared_task(name="grouprank.index.reindex", bind=True, acks_late=True)
def reindex(self: Task) -> dict[str, Any]:
    """Rebuild the index's search structures and switch to them; returns the new generation."""
    done, result = _stored_result(self)
    if done:
        return result
    try:
        result = run_reindex(_settings(self))
    except GroupRankError as exc:  # a plain type: some (BulkError) cannot be rebuilt from their message
        raise RuntimeError(str(exc)) from None
    _record_execution(self)
    return result


@shared_task(name="grouprank.index.upsert", bind=True, acks_late=True)
def upsert(self: Task, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Bulk ingestion: ``run_upsert`` of ``records``."""
    done, result = _stored_result(self)
    if done:
        return result
    try:
        result = run_upsert(_settings(self), records)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    except GroupRankError as exc:  # e.g. OpenSearch refused some documents (BulkError) or is unreachable
        raise RuntimeError(str(exc)) from None
    _record_execution(self)
    return result


def run_retraining(settings: Settings, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the training pipeline: ``config`` or the file ``settings.train_config``. Raises
    ``trainer.locks.PipelineBusy`` if another run holds the lock. Without a ``redis_url`` of its own the
    pipeline takes its one-run lock in the broker's Redis, so it holds across machines."""
    from trainer.config import PipelineConfig
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
    return run_pipeline(pipeline)


def adapt_dir(settings: Settings) -> Path | None:
    """Where adaptation runs keep their state and report: ``adapt_dir``, else beside the index."""
    if settings.adapt_dir is not None:
        return settings.adapt_dir
    return None if settings.index_dir is None else settings.index_dir.with_name(settings.index_dir.name + "-adapt")


def run_adaptation(settings: Settings, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``grouprank train adapt`` on the service's index, adapting the reranker it serves; an adapted
    reranker that won its gate is added to the registry and promoted (the rerank workers switch to it).
    ``options``: ``minutes``, ``queries``, ``held_out``, ``stages``."""
    from trainer.adapt import AdaptConfig, run_adapt

    if settings.index_dir is None or settings.opensearch_url:
        raise InputError("adaptation needs the embedded index (GROUPRANK_INDEX_DIR); OpenSearch indexes are not "
                         "adapted yet", field="index_dir")
    values: dict[str, Any] = {"index": str(settings.index_dir), "out": str(adapt_dir(settings)),
                              "minutes": settings.adapt_minutes, "reranker": serving_model(settings)[0]}
    values.update({k: v for k, v in (options or {}).items() if k in ("minutes", "queries", "held_out", "stages")})
    if not settings.embedded:
        values.update(redis_url=settings.celery_broker_url, lock_key=settings.key_prefix + "grouprank:adapt")
    report = run_adapt(AdaptConfig(**values))
    reranker = report.get("reranker") or {}
    if reranker.get("promoted") and settings.registry_dir is not None:
        from trainer.registry import Registry

        registry = Registry(settings.registry_dir)
        version = registry.add(reranker["model"], evaluation={"adaptation": report["run_id"], **reranker})
        registry.promote(version, {"adaptation": report["run_id"], "reason": reranker["reason"]})
        reranker["version"] = version
    return report


def last_adaptation(settings: Settings) -> dict[str, Any] | None:
    """The report of the last finished adaptation, if any (for ``/admin/model``)."""
    folder = adapt_dir(settings)
    path = None if folder is None else folder / "report.json"
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@shared_task(name="grouprank.train.adapt", bind=True, acks_late=True)
def adapt(self: Task, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """An adaptation run (``run_adaptation``), one at a time; a busy lock skips it (state SKIPPED), and a
    run interrupted by a crash resumes at its last finished stage when sent again."""
    from trainer.locks import PipelineBusy

    done, result = _stored_result(self)
    if done:
        return result
    try:
        result = run_adaptation(_settings(self), options)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    except PipelineBusy as exc:
        log.warning("adaptation task %s skipped: %s", self.request.id, exc)
        self.update_state(state=SKIPPED, meta=busy_result(exc))
        raise Ignore() from None
    _record_execution(self)
    return result


def busy_result(exc: Exception) -> dict[str, Any]:
    """The result of a retraining task skipped because another run holds the lock (state ``SKIPPED``)."""
    return {"status": "busy", "detail": str(exc)}


@shared_task(name="grouprank.train.pipeline", bind=True, acks_late=True)
def retrain(self: Task, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole retraining pipeline (mine -> synth -> sft -> grpo -> evaluate -> promote), one run at a
    time; a run interrupted by a crash resumes at its last finished stage when the task is redelivered or
    sent again (beat sends it every ``retrain_every_s``).

    When another run holds the lock: a redelivery (or a retry) of this task waits for it, retrying with a
    growing countdown (state RETRY), since that run may be this very task's first delivery; any other
    task is skipped (state SKIPPED). See the module docstring.
    """
    from trainer.locks import PipelineBusy

    done, result = _stored_result(self)
    if done:
        return result
    settings = _settings(self)
    try:
        result = run_retraining(settings, config)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    except PipelineBusy as exc:
        if self.request.retries or (self.request.delivery_info or {}).get("redelivered"):
            # Well below the visibility timeout: a message held for its countdown must not be redelivered.
            cap = min(BUSY_RETRY_MAX_S, settings.visibility_timeout_s / 4)
            waited = RuntimeError(f"waiting for the run that holds the pipeline lock to finish ({exc}), for at "
                                  f"most the training time limit ({settings.train_time_limit_s:g} s)")
            raise self.retry(exc=waited, countdown=min(cap, 2.0 ** self.request.retries),
                             max_retries=math.ceil(settings.train_time_limit_s / cap) + 8) from None
        log.warning("retraining task %s skipped: %s", self.request.id, exc)
        self.update_state(state=SKIPPED, meta=busy_result(exc))
        raise Ignore() from None
    _record_execution(self)
    return result
