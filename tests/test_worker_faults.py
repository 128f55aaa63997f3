"""Faults of the service tier: a retraining task redelivered while its first run is still going, a model
promotion while requests are being served, and embedded and queued mode answering job requests alike.

The queued tests use real Redis and a real Celery worker process (``grouprank worker``), as
tests/test_worker_queue.py does; the promotion test uses an embedded API with a stand-in model loader.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_worker_queue import Workers, free_port, start_redis, stop

from grouprank.errors import GroupRankError
from reranker.types import Ranking
from trainer.registry import Registry
from worker.api import create_app
from worker.celery_app import create_celery
from worker.payloads import RerankJob
from worker.settings import Settings
from worker.tasks import run_rerank

redis = pytest.importorskip("redis")

KEY = "faults-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
DONE = ("SUCCESS", "FAILURE", "SKIPPED")


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def task_state(client: TestClient, task_id: str) -> dict:
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_task(client: TestClient, task_id: str, timeout: float = 120.0) -> dict:
    return wait_for(lambda: (s := task_state(client, task_id))["state"] in DONE and s, timeout,
                    f"task {task_id} to finish")


# -- stand-in models for the promotion test ------------------------------------------------------------
class FakeReranker:
    """Answers in retrieval order; enough of a reranker for ``run_rerank`` and the API."""

    def __init__(self, model: str) -> None:
        self.backend = SimpleNamespace(model=model)

    def rerank_batch(self, batch, deadline_ms=None) -> list[Ranking]:
        out = []
        for request in batch:
            n = len(request.candidates)
            ids = [str(i) for i in range(n)]
            out.append(Ranking(query=request.query, method="fake", ids=ids, scores=[1.0 - i / n for i in range(n)],
                               fallback=ids))
        return out


class FakeModels:
    """``reranker.load_reranker`` for registry folders: loading a version in ``gates`` waits for its event,
    loading one in ``broken`` fails. ``alive`` holds the rerankers not yet garbage-collected."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.broken: set[str] = set()
        self.alive: weakref.WeakSet[FakeReranker] = weakref.WeakSet()

    def load(self, method: str = "groupwise", model: str | None = None, backend: str = "", **options: Any):
        name = Path(str(model)).name
        if name in self.gates:
            self.gates[name].wait(60)
        if name in self.broken:
            raise GroupRankError(f"cannot load {name}: corrupt weights")
        reranker = FakeReranker(str(model))
        self.alive.add(reranker)
        return reranker

    def alive_versions(self) -> list[str]:
        gc.collect()
        return sorted(Path(r.backend.model).name for r in self.alive)


@pytest.fixture
def fake_models(monkeypatch) -> Iterator[FakeModels]:
    models = FakeModels()
    monkeypatch.setattr("reranker.load_reranker", models.load)
    yield models
    for gate in models.gates.values():  # never leave a loader thread waiting
        gate.set()


def promote(registry: Registry, folder: Path) -> str:
    """Add a folder shaped like a saved model to ``registry`` and promote it; returns its version."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": folder.name}))
    version = registry.add(folder)
    registry.promote(version)
    return version


def served_version(settings: Settings, timeout: float = 10.0) -> str | None:
    """The registry version that answers a rerank now; fails if the call takes longer than ``timeout``."""
    answer: list = []
    worker = threading.Thread(target=lambda: answer.append(
        run_rerank(settings, [RerankJob(query="q", candidates=[{"id": "0", "text": "a"}, {"id": "1", "text": "b"}])],
                   None)), daemon=True)
    worker.start()
    worker.join(timeout)
    assert answer, f"a rerank waited more than {timeout} s (for a model load?)"
    return answer[0][0].model_version


def test_a_promoted_model_loads_beside_the_serving_one_and_a_failed_load_fails_readiness(
        tmp_path: Path, fake_models: FakeModels) -> None:
    registry = Registry(tmp_path / "registry")
    promote(registry, tmp_path / "m1")
    settings = Settings(registry_dir=tmp_path / "registry", api_keys=(KEY,))
    with TestClient(create_app(settings)) as client:
        def reranker_check() -> str:
            return client.get("/readyz").json()["checks"]["reranker"]

        wait_for(lambda: reranker_check() == "ok", 30, "the startup load")
        assert served_version(settings) == "v0001"

        # A promotion: requests do not wait for the new model, the old one answers until it is ready.
        fake_models.gates["v0002"] = threading.Event()
        promote(registry, tmp_path / "m2")
        assert served_version(settings) == "v0001"
        assert reranker_check() == "ok"  # still serving
        assert fake_models.alive_versions() == ["v0001"]  # the new one is still loading
        fake_models.gates["v0002"].set()
        wait_for(lambda: served_version(settings) == "v0002", 30, "the switch to v0002")
        assert fake_models.alive_versions() == ["v0002"]  # the old model was dropped, not kept

        # A promoted model that cannot be loaded: readiness says so, requests keep the last good one.
        fake_models.broken.add("v0003")
        promote(registry, tmp_path / "m3")
        state = wait_for(lambda: (s := reranker_check()) != "ok" and s, 30, "readiness to report the failure")
        assert state.startswith("error") and "v0003" in state and "corrupt weights" in state, state
        assert "reranker" in client.get("/readyz").json()["failing"]
        assert served_version(settings) == "v0002"


# -- queued mode: Redis and a real worker process ---------------------------------------------------
@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    url = os.environ.get("GROUPRANK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        yield url
        return
    except redis.ConnectionError:
        if shutil.which("redis-server") is None:
            pytest.skip(f"no Redis at {url} and no redis-server to start one")
    port = free_port()
    process = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop(process)


@pytest.fixture(scope="module")
def settings(redis_url: str, tmp_path_factory, service_index_template: Path) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(service_index_template, root / "index")
    # A short visibility timeout, so the broker redelivers a long-running task within the test.
    settings = Settings(
        index_dir=root / "index", broker_url=redis_url, key_prefix=f"grouprank-faults-{uuid.uuid4().hex[:12]}:",
        train_config=root / "pipeline.json", visibility_timeout_s=30, rerank_soft_time_limit_s=2,
        rerank_time_limit_s=3, index_time_limit_s=25, api_keys=(KEY,),
    )
    yield settings
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=settings.key_prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def worker(settings: Settings, tmp_path_factory) -> Iterator[str]:
    """One worker process for the train and index queues, with two pool processes (a second delivery of
    a task can run while the first one still does)."""
    celery = create_celery(settings)
    workers = Workers(settings, celery, tmp_path_factory.mktemp("worker-logs"))
    name = workers.start("train,index", "--pool", "prefork", "--concurrency", "2")
    try:
        workers.wait_ready(name, timeout=900)  # a loaded machine: opening the index takes a while
        yield name
    finally:
        workers.stop_all()
        celery.close()


@pytest.fixture(scope="module")
def client(settings: Settings, worker: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


class HeldManifest:
    """Replaces the index's manifest with a FIFO: whoever opens the index waits on it (a retraining run
    holding the pipeline lock stays in its first stage) until ``release``, after which opening fails."""

    def __init__(self, index_dir: Path, spare: Path) -> None:
        current = (index_dir / "CURRENT").read_text().strip()
        self.path = index_dir / "generations" / current / "manifest.json"
        self.saved = self.path.read_bytes()
        self.link = spare / "manifest.fifo"
        self.path.unlink()
        os.mkfifo(self.path)
        os.link(self.path, self.link)  # a second name, to reach the FIFO after its path is replaced

    def release(self) -> None:
        """Wake the waiting reader; from now on the manifest is a directory, so opening the index fails."""
        if self.path.is_fifo():
            self.path.unlink()
            self.path.mkdir()
        with contextlib.suppress(OSError):  # ENXIO: nobody is waiting on it
            os.close(os.open(self.link, os.O_WRONLY | os.O_NONBLOCK))

    def restore(self) -> None:
        if self.path.is_dir():
            self.path.rmdir()
        self.path.write_bytes(self.saved)


def test_a_redelivered_retraining_task_waits_for_the_run_it_duplicates(
        client: TestClient, settings: Settings, redis_url: str, tmp_path: Path) -> None:
    index_dir = tmp_path / "blocked-index"
    shutil.copytree(settings.index_dir, index_dir)
    (tmp_path / "queries.tsv").write_text("".join(f"q{n}\t{text}\n" for n, text in enumerate(
        ["capital of France", "red planet", "hot drink", "yellow fruit", "chess board"])))
    (tmp_path / "qrels.tsv").write_text("".join(f"q{n} 0 {doc} 1\n" for n, doc in enumerate(
        ["paris", "mars", "coffee", "banana", "chess"])))
    settings.train_config.write_text(json.dumps({
        "work_dir": str(tmp_path / "work"), "registry_dir": str(tmp_path / "registry"),
        "index_dir": str(index_dir), "queries": str(tmp_path / "queries.tsv"), "qrels": str(tmp_path / "qrels.tsv")}))
    broker = redis.Redis.from_url(redis_url)
    lock = settings.key_prefix + "grouprank:train:lock"
    held = HeldManifest(index_dir, tmp_path)
    try:
        task_id = client.post("/admin/retrain", headers=AUTH).json()["task_id"]
        wait_for(lambda: broker.exists(lock), 300, "the first run to take the pipeline lock")
        # The first run is stuck in its first stage; after the visibility timeout the broker delivers the
        # same task again, to the worker's other pool process, which finds the pipeline busy.
        status = wait_for(lambda: (s := task_state(client, task_id))["state"] != "PENDING" and s,
                          settings.visibility_timeout_s * 8, "the redelivered task to answer")
        assert status["state"] == "RETRY", status  # not done: it waits for the run it duplicates
        assert "another training run" in status["error"], status
        time.sleep(3)
        assert task_state(client, task_id)["state"] == "RETRY"

        # A second request while the run goes on is skipped: not done, and not queued behind it.
        other = client.post("/admin/retrain", headers=AUTH).json()["task_id"]
        status = wait_task(client, other)
        assert status["state"] == "SKIPPED" and status["result"]["status"] == "busy", status
        assert broker.exists(lock)  # the first run still holds it
    finally:
        held.release()
    # The first run fails (its index cannot be read); the waiting delivery then resumes it, and fails too.
    status = wait_task(client, task_id, timeout=180)
    assert status["state"] == "FAILURE" and "Is a directory" in status["error"], status
    held.restore()


def test_embedded_and_queued_modes_answer_job_requests_alike(
        client: TestClient, settings: Settings, tmp_path: Path, fake_models: FakeModels) -> None:
    shutil.copytree(settings.index_dir, tmp_path / "index")
    embedded = settings.with_(broker_url=None, index_dir=tmp_path / "index")
    answers = {}
    unknown_id = str(uuid.uuid4())
    with TestClient(create_app(embedded)) as local:
        for mode, api in (("queued", client), ("embedded", local)):
            response = api.post("/admin/reindex", headers=AUTH)
            assert response.status_code == 202, response.text
            status = wait_task(api, response.json()["task_id"])
            assert status["state"] == "SUCCESS", status
            unknown = api.get(f"/tasks/{unknown_id}")
            answers[mode] = {"result": sorted(status["result"]), "documents": status["result"]["documents"],
                             "unknown": (unknown.status_code, unknown.json())}
    assert answers["queued"] == answers["embedded"]
    assert answers["queued"]["result"] == ["documents", "generation", "seconds"]
    assert answers["queued"]["unknown"][0] == 404  # an id the service never issued, in either mode
