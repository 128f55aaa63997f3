"""Background jobs (reindex, bulk upsert, retraining) and their status, for ``/admin/*`` and ``/tasks``.

``QueuedJobs`` sends them to their queue (``index`` or ``train``); ``LocalJobs`` (embedded mode, no
broker) runs them one at a time on a thread of the API process and remembers the last results.

Both modes answer alike: the same result fields (``worker.tasks.run_reindex``, ``run_upsert``,
``run_retraining``), the same states (PENDING until the job finishes, then SUCCESS, FAILURE, or SKIPPED for
a retraining that found another run going; RETRY while a redelivered retraining waits), and None (the
API's 404) for an id this service did not issue or no longer remembers (its result expired).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from trainer.locks import PipelineBusy
from worker.settings import Settings
from worker.tasks import SKIPPED, busy_result, run_adaptation, run_reindex, run_retraining, run_upsert

KEEP_LOCAL_RESULTS = 1000
JOB_KEY = "grouprank:job:"  # + task id: the ids QueuedJobs issued, kept as long as their results


def task_status(task_id: str, state: str, result: Any) -> dict[str, Any]:
    if state in ("FAILURE", "RETRY"):  # the result is the exception (RETRY: why it is waiting)
        return {"task_id": task_id, "state": state, "result": None, "error": f"{result}"}
    return {"task_id": task_id, "state": state, "result": result, "error": None}


class QueuedJobs:
    def __init__(self, celery_app: Any) -> None:
        self.app = celery_app

    def submit(self, name: str, *args: Any) -> str:
        """Publish task ``name`` (routed to its queue); raises if the broker is down."""
        task_id = str(uuid.uuid4())
        settings: Settings = self.app.settings
        self.app.backend.client.set(self._key(task_id), name, ex=settings.result_expires_s)  # before it can run
        return self.app.send_task(name, args=list(args), task_id=task_id, retry=False).id

    def status(self, task_id: str) -> dict[str, Any] | None:
        """The task's state, or None for an id this service did not issue (Celery reads those as PENDING)."""
        result = self.app.AsyncResult(task_id)
        state = result.state
        if state == "PENDING" and not self.app.backend.client.exists(self._key(task_id)):
            return None
        return task_status(task_id, state, result.result)

    def _key(self, task_id: str) -> str:
        return self.app.settings.key_prefix + JOB_KEY + task_id


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
        # The index (either backend) is looked up in the job: an unreachable one fails the job, not the request.
        if name == "grouprank.train.pipeline":
            return lambda: run_retraining(self.settings, *args)
        if name == "grouprank.train.adapt":
            return lambda: run_adaptation(self.settings, *args)
        if name == "grouprank.index.reindex":
            return lambda: run_reindex(self.settings)
        if name == "grouprank.index.upsert":
            return lambda: run_upsert(self.settings, args[0])
        raise ValueError(f"unknown job {name!r}")

    def _run(self, task_id: str, work: Callable[[], Any]) -> None:
        with self._run_lock:
            try:
                result = work()
            except PipelineBusy as exc:  # another process (e.g. `grouprank train`) is training
                self._set(task_id, SKIPPED, busy_result(exc))
                return
            except Exception as exc:  # the error reads as in queued mode: the exception's message
                self._set(task_id, "FAILURE", exc)
                return
            self._set(task_id, "SUCCESS", result)

    def _set(self, task_id: str, state: str, result: Any) -> None:
        with self._lock:
            self._jobs[task_id] = {"state": state, "result": result}
            self._jobs.move_to_end(task_id)
            while len(self._jobs) > KEEP_LOCAL_RESULTS:
                self._jobs.popitem(last=False)
