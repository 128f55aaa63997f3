"""Background jobs (reindex, bulk upsert, retraining) and their status, for ``/admin/*`` and ``/tasks``.

``QueuedJobs`` sends them to their queue (``index`` or ``train``); ``LocalJobs`` (embedded mode, no
broker) runs them one at a time on a thread of the API process and remembers the last results.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from indexer.protocol import SearchIndex
from worker.settings import Settings
from worker.tasks import get_index, run_retraining

KEEP_LOCAL_RESULTS = 1000


def task_status(task_id: str, state: str, result: Any) -> dict[str, Any]:
    if state == "FAILURE":
        return {"task_id": task_id, "state": state, "result": None, "error": f"{result}"}
    return {"task_id": task_id, "state": state, "result": result, "error": None}


class QueuedJobs:
    def __init__(self, celery_app: Any) -> None:
        self.app = celery_app

    def submit(self, name: str, *args: Any) -> str:
        """Publish task ``name`` (routed to its queue); raises if the broker is down."""
        return self.app.send_task(name, args=list(args), retry=False).id

    def status(self, task_id: str) -> dict[str, Any]:
        """The task's state; an id the result backend does not know reads as PENDING (Celery's rule)."""
        result = self.app.AsyncResult(task_id)
        return task_status(task_id, result.state, result.result)


class LocalJobs:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # one job at a time, like a worker with concurrency 1
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def submit(self, name: str, *args: Any) -> str:
        work = self._work(name, args)
        task_id = str(uuid.uuid4())
        self._set(task_id, "PENDING", None)
        threading.Thread(target=self._run, args=(task_id, work), daemon=True,
                         name=f"grouprank-job-{name}").start()
        return task_id

    def status(self, task_id: str) -> dict[str, Any] | None:
        """The job's state, or None for an id this process never ran (or has forgotten)."""
        with self._lock:
            job = self._jobs.get(task_id)
            return None if job is None else task_status(task_id, job["state"], job["result"])

    def _work(self, name: str, args: tuple) -> Callable[[], Any]:
        from indexer.documents import Document

        if name == "grouprank.train.pipeline":
            return lambda: run_retraining(self.settings, *args)
        # The index (either backend) is looked up in the job: an unreachable one fails the job, not the request.
        if name == "grouprank.index.reindex":
            def reindex() -> dict[str, Any]:
                index: SearchIndex = get_index(self.settings)
                return {"generation": index.reindex(progress=False), "documents": len(index)}

            return reindex
        if name == "grouprank.index.upsert":
            docs = [Document.from_record(r) for r in args[0]]
            return lambda: {"upserted": get_index(self.settings).upsert(docs, progress=False)}
        raise ValueError(f"unknown job {name!r}")

    def _run(self, task_id: str, work: Callable[[], Any]) -> None:
        with self._run_lock:
            self._set(task_id, "STARTED", None)
            try:
                result = work()
            except Exception as exc:
                self._set(task_id, "FAILURE", f"{type(exc).__name__}: {exc}")
                return
            self._set(task_id, "SUCCESS", result)

    def _set(self, task_id: str, state: str, result: Any) -> None:
        with self._lock:
            self._jobs[task_id] = {"state": state, "result": result}
            self._jobs.move_to_end(task_id)
            while len(self._jobs) > KEEP_LOCAL_RESULTS:
                self._jobs.popitem(last=False)
