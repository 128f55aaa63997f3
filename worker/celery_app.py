"""The Celery application: Redis broker and result backend, one queue per resource.

- ``rerank``: GPU workers, one process per GPU (solo pool), prefetch 1, late acks, reject on worker lost;
  the reranker is loaded once per worker process (``worker.tasks.get_reranker``).
- ``index``: reindex and bulk ingestion jobs.
- ``train``: retraining (``grouprank.train.pipeline``); beat sends it every ``retrain_every_s`` seconds.

``celery -A worker.celery_app worker -Q rerank`` uses the module-level ``app``, configured from the
environment (see ``worker.settings``) when it is first used, not on import: importing this module (or the
API) reads no ``GROUPRANK_*`` variable. ``grouprank worker`` builds its app with ``create_celery`` and the
right pool options; the API builds one from the settings it is given.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend
from kombu import Exchange, Queue

from worker.settings import QUEUES, Settings

RERANK_TASK = "grouprank.rerank"
RETRAIN_TASK = "grouprank.train.pipeline"
RETRAIN_ENTRY = "grouprank-retrain"
ADAPT_TASK = "grouprank.train.adapt"
ADAPT_ENTRY = "grouprank-adapt"
TASK_ROUTES = {
    RERANK_TASK: {"queue": "rerank"},
    "grouprank.index.*": {"queue": "index"},
    "grouprank.train.*": {"queue": "train"},
}


class GroupRankCelery(Celery):
    """A Celery app that carries the grouprank ``Settings`` its tasks read (``app.settings``)."""

    settings: Settings


class PollingRedisBackend(RedisBackend):
    """The Redis result backend, minus the pub/sub subscription Celery opens for every task it sends.

    The API polls for results (``worker.rerank_stage.ResultWaiter``), and that subscription retries its
    connection for many seconds when Redis is down, which would stall publishing. ``AsyncResult.get``
    still works: it subscribes when it starts waiting.
    """

    def on_task_call(self, producer, task_id):
        pass


def result_backend_url(settings: Settings) -> str:
    url = settings.celery_result_backend
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:PollingRedisBackend+{url}"
    return url


def redis_options(settings: Settings) -> dict:
    """Transport options shared by broker and result backend: bounded connection attempts, key prefix."""
    options: dict = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": max(settings.connect_timeout_s, 5.0),
    }
    if settings.key_prefix:
        options["global_keyprefix"] = settings.key_prefix
    return options


def create_celery(settings: Settings, *, fail_fast: bool = False) -> GroupRankCelery:
    """A Celery app for ``settings`` (tasks come from ``worker.tasks``). ``fail_fast`` (for the API): a
    publish tries to connect once, within ``connect_timeout_s``, instead of retrying."""
    app = GroupRankCelery("grouprank", broker=settings.celery_broker_url,
                          backend=result_backend_url(settings), include=["worker.tasks"])
    app.settings = settings
    broker_options = {
        **redis_options(settings),
        "visibility_timeout": settings.visibility_timeout_s,
        # Look for abandoned (unacked) messages every second, so a redelivery after a crash takes about
        # visibility_timeout, not visibility_timeout + 100 s.
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    if fail_fast:
        broker_options["max_retries"] = 0
    app.conf.update(
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="index",
        task_routes=TASK_ROUTES,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=settings.result_expires_s,
        # At-least-once delivery: a task is acknowledged after it ran, so a crashed worker's task is
        # redelivered; tasks are written to be idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_annotations={
            RERANK_TASK: {"soft_time_limit": settings.rerank_soft_time_limit_s,
                          "time_limit": settings.rerank_time_limit_s},
            "grouprank.index.*": {"time_limit": settings.index_time_limit_s},
            "grouprank.train.*": {"time_limit": settings.train_time_limit_s},
        },
        broker_transport_options=broker_options,
        result_backend_transport_options=redis_options(settings),
        redis_socket_connect_timeout=settings.connect_timeout_s,
        redis_socket_timeout=max(settings.connect_timeout_s, 5.0),
        broker_connection_timeout=settings.connect_timeout_s,
        broker_connection_retry_on_startup=True,
        # Publishing fails fast when the broker is down; the API degrades instead of waiting.
        task_publish_retry=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule=beat_schedule(settings),
    )
    return app


def beat_schedule(settings: Settings) -> dict:
    """Periodic retraining every ``retrain_every_s`` seconds and adaptation every ``adapt_every_s`` (none
    when 0), on the ``train`` queue."""
    schedule = {}
    if settings.retrain_every_s:
        schedule[RETRAIN_ENTRY] = {"task": RETRAIN_TASK, "schedule": settings.retrain_every_s,
                                   "options": {"queue": "train"}}
    if settings.adapt_every_s:
        schedule[ADAPT_ENTRY] = {"task": ADAPT_TASK, "schedule": settings.adapt_every_s, "options": {"queue": "train"}}
    return schedule


@functools.cache
def app_from_env() -> GroupRankCelery:
    """The Celery app configured from the ``GROUPRANK_*`` environment (built once, on first use)."""
    return create_celery(Settings.from_env())


def __getattr__(name: str) -> Any:
    """``app``, built on first access (module ``__getattr__``), so a bad variable fails only its users."""
    if name == "app":
        return app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
