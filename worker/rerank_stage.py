"""The API's rerank stage: in-process (embedded) or through the ``rerank`` queue, always within a deadline.

Both raise ``RerankUnavailable(reason)`` instead of waiting past the deadline; the caller then answers in
retrieval order. Deadlines are ``time.monotonic()`` values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from grouprank.errors import GroupRankError
from worker.celery_app import RERANK_TASK
from worker.payloads import RerankJob, ServedRanking, rankings_from_wire, to_wire
from worker.settings import Settings
from worker.tasks import get_reranker, reranker_state, run_rerank

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.004


class RerankUnavailable(Exception):
    """Reranking could not finish in time (or at all); ``str(exc)`` is the reason shown to clients."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind  # a short label for metrics: deadline, broker, worker, model


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


class EmbeddedRerankStage:
    """Reranks in this process: one model on one thread; requests queue for it (a queued request whose
    deadline passes is dropped before it runs)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grouprank-rerank")
        self._state = "not loaded"

    def load(self) -> None:
        """Load the model now (the API calls this in the background at startup)."""
        self._state = "loading"
        try:
            get_reranker(self.settings)
        except Exception as exc:
            self._state = f"error: {exc}"
            log.error("cannot load the reranker: %s", exc)
            return
        self._state = "ok"

    @property
    def state(self) -> str:
        """``ok``, ``loading``, ``not loaded`` or ``error: ...`` (also when a newly promoted model could not
        be loaded: the previous one keeps answering, but this instance no longer serves what it should)."""
        if self._state != "ok":
            return self._state
        try:
            return reranker_state(self.settings)
        except Exception as exc:  # e.g. the registry cannot be read
            return f"error: {exc}"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def rerank(self, requests: list[RerankJob], deadline: float) -> list[ServedRanking]:
        if _left(deadline) <= 0:
            raise RerankUnavailable("the deadline passed before reranking could start", "deadline")

        def work() -> list[ServedRanking]:
            budget_ms = _left(deadline) * 1000.0
            if budget_ms <= 0:
                raise RerankUnavailable("the deadline passed while waiting for the reranker", "deadline")
            return run_rerank(self.settings, requests, budget_ms)

        future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        try:
            return await asyncio.wait_for(future, _left(deadline))
        except TimeoutError:
            raise RerankUnavailable("the reranker missed the deadline", "deadline") from None
        except RerankUnavailable:
            raise
        except GroupRankError as exc:
            raise RerankUnavailable(f"the reranker is unavailable: {exc}", "model") from None
        except Exception as exc:  # a failing model must not fail the search
            log.exception("reranking failed")
            raise RerankUnavailable(f"the reranker failed: {type(exc).__name__}: {exc}", "model") from None


class ResultWaiter:
    """Waits for Celery results: one coroutine per process fetches every awaited result with one MGET
    per poll (results are small and polling a local Redis is cheaper than a subscription per task)."""

    def __init__(self, celery_app: Any, redis_client: Any) -> None:
        self.backend = celery_app.backend
        self.redis = redis_client
        self._pending: dict[bytes, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task | None = None

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """The task's result meta (``status``, ``result``); TimeoutError after ``timeout`` seconds."""
        key = self.backend.get_key_for_task(task_id)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(key, None)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self.redis.aclose()

    async def _poll(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            keys = list(self._pending)
            try:
                values = await self.redis.mget(keys)
            except Exception as exc:  # result backend down: fail the waiters now, not at their deadline
                for key in keys:
                    future = self._pending.get(key)
                    if future is not None and not future.done():
                        future.set_exception(RerankUnavailable(f"the result backend is unreachable: {exc}",
                                                               "broker"))
                await asyncio.sleep(0.05)
                continue
            done = []
            for key, raw in zip(keys, values, strict=True):
                future = self._pending.get(key)
                if raw is None or future is None or future.done():
                    continue
                try:
                    meta = self.backend.decode_result(raw)
                except Exception as exc:
                    future.set_exception(exc)
                    continue
                if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                    future.set_result(meta)
                    done.append(key)
            if done:  # a search result is read once; do not keep it for result_expires
                with contextlib.suppress(Exception):
                    await self.redis.delete(*done)
            await asyncio.sleep(POLL_INTERVAL_S)


class QueuedRerankStage:
    """Publishes a ``grouprank.rerank`` task on the ``rerank`` queue and waits for its result."""

    def __init__(self, celery_app: Any, waiter: ResultWaiter) -> None:
        self.app = celery_app
        self.waiter = waiter

    async def rerank(self, requests: list[RerankJob], deadline: float) -> list[ServedRanking]:
        if _left(deadline) <= 0:
            raise RerankUnavailable("the deadline passed before reranking could start", "deadline")
        task_id = str(uuid.uuid4())
        wire = to_wire(requests)
        deadline_at = time.time() + _left(deadline)

        def publish() -> None:
            self.app.send_task(RERANK_TASK, args=[wire, deadline_at], task_id=task_id, queue="rerank",
                               expires=datetime.fromtimestamp(deadline_at, UTC), retry=False)

        try:
            await asyncio.wait_for(asyncio.to_thread(publish), _left(deadline))
        except TimeoutError:
            raise RerankUnavailable("the broker did not accept the task before the deadline", "broker") \
                from None
        except Exception as exc:
            raise RerankUnavailable(f"the broker is unavailable: {exc}", "broker") from None
        try:
            meta = await self.waiter.wait(task_id, max(_left(deadline), 0.0))
        except TimeoutError:
            raise RerankUnavailable("no rerank worker answered before the deadline", "deadline") from None
        except RerankUnavailable:
            raise
        except Exception as exc:  # e.g. a result that does not decode
            log.exception("waiting for rerank task %s failed", task_id)
            raise RerankUnavailable(f"cannot read the rerank result: {exc}", "worker") from None
        if meta.get("status") != "SUCCESS":
            raise RerankUnavailable(f"the rerank worker failed: {meta.get('result')!r}", "worker")
        try:
            return rankings_from_wire(meta["result"])
        except ValidationError as exc:  # a worker of another version answered
            raise RerankUnavailable(f"the rerank worker's answer does not validate: {exc}", "worker") from None
