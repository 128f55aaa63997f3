"""The distributed mode end to end: the API publishes to Redis, real Celery worker subprocesses (solo pool,
tiny model) answer. Faults: a rerank worker killed with SIGKILL mid-task, and a broker that goes away.
Retraining: a train worker runs the whole pipeline from ``POST /admin/retrain``, the rerank worker switches
to the promoted model without a restart, and beat sends retraining runs on schedule.

Uses the Redis at 127.0.0.1:6379 (or $GROUPRANK_TEST_REDIS_URL) under a key prefix unique to this run,
deleted at the end; without one it starts a private redis-server, or skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from worker.api import create_app
from worker.celery_app import RERANK_TASK, create_celery
from worker.payloads import rankings_from_wire
from worker.settings import Settings
from worker.tasks import EXECUTIONS_KEY, get_reranker

redis = pytest.importorskip("redis")

KEY = "queue-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[1]
SHORT_DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Mars is a red planet.",
              "Tea is brewed from leaves."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, directory: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    end = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            if time.monotonic() > end:
                process.kill()
                raise
            time.sleep(0.05)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
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
def settings(redis_url, tmp_path_factory, service_index_template: Path, tiny_model_path: str):
    index_dir = tmp_path_factory.mktemp("queue") / "index"
    shutil.copytree(service_index_template, index_dir)
    # A short visibility timeout, so a killed worker's task is redelivered within seconds. It must still
    # exceed every task's run time (here well under a second; the workers load their models before they
    # consume), or a running task is delivered a second time.
    root = index_dir.parent
    settings = Settings(
        index_dir=index_dir, broker_url=redis_url, key_prefix=f"grouprank-test-{uuid.uuid4().hex[:12]}:",
        registry_dir=root / "registry", train_config=root / "pipeline.json",  # written by the retraining test
        visibility_timeout_s=10, rerank_soft_time_limit_s=3, rerank_time_limit_s=4, index_time_limit_s=8,
        rerank_model=tiny_model_path, rerank_options={"group_size": 4}, rerank_depth=4, api_keys=(KEY,),
        default_deadline_ms=30_000,
    )
    yield settings
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=settings.key_prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def celery(settings):
    app = create_celery(settings)
    yield app
    app.close()


class Workers:
    """Worker subprocesses started with ``grouprank worker`` and stopped at the end of the module."""

    def __init__(self, settings: Settings, celery, logs: Path) -> None:
        self.settings, self.celery, self.logs = settings, celery, logs
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, queues: str, *extra: str) -> str:
        name = f"{queues}-{uuid.uuid4().hex[:8]}@test"
        env = {**os.environ, **self.settings.to_env(), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "GROUPRANK_PROGRESS": "0"}
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (the process writes it until stopped)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "grouprank.cli.main", "worker", "--queues", queues, "--hostname", name,
             "--loglevel", "info", *extra], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return name

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while not self.celery.control.ping(destination=[name], timeout=0.5):
            process = self.processes[name]
            if process.poll() is not None or time.monotonic() > end:
                log = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"worker {name} did not come up (exit code {process.poll()}):\n{log}")

    def kill(self, name: str) -> None:
        stop(self.processes[name], signal.SIGKILL)

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop(process)


@pytest.fixture(scope="module")
def workers(settings, celery, tmp_path_factory):
    workers = Workers(settings, celery, tmp_path_factory.mktemp("worker-logs"))
    rerank = workers.start("rerank")
    index = workers.start("index", "--pool", "solo")
    workers.wait_ready(rerank)
    workers.wait_ready(index)
    workers.rerank = rerank
    yield workers
    workers.stop_all()


@pytest.fixture(scope="module")
def client(settings, workers):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def local_reranker(settings):
    """The same reranker in this process, to compare the workers' answers with."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield get_reranker(settings)
    torch.set_num_threads(before)


def executions(settings: Settings) -> dict[str, int]:
    client = redis.Redis.from_url(settings.celery_broker_url, decode_responses=True)
    return {k: int(v) for k, v in client.hgetall(settings.key_prefix + EXECUTIONS_KEY).items()}


def wait_task(client: TestClient, task_id: str, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while (status := client.get(f"/tasks/{task_id}").json())["state"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < end, status
        time.sleep(0.1)
    return status


def test_readyz_sees_the_broker_and_a_worker(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"index": "ok", "broker": "ok", "workers": "ok"}


def test_search_is_reranked_by_the_worker(client: TestClient, settings: Settings, local_reranker) -> None:
    before = executions(settings)
    query = "which planet is red"
    body = client.post("/search", json={"query": query, "k": 3, "mode": "bm25"}).json()
    hits = client.app.state.services.index.search(query, k=settings.rerank_depth, mode="bm25")
    expected = local_reranker.rerank(query, [{"id": h.id, "text": h.text, "score": h.score} for h in hits],
                                     top_k=3)
    trace = body["rerank_trace"]
    assert trace is not None, body["reason"]
    assert (trace["llm_calls"], trace["prompt_tokens"], trace["completion_tokens"]) == \
        (expected.trace.llm_calls, expected.trace.prompt_tokens, expected.trace.completion_tokens)
    assert [h["id"] for h in body["hits"]] == expected.ids  # the tiny model scores nothing: retrieval order
    assert len(executions(settings)) == len(before) + 1  # one task ran on the worker


def test_rerank_endpoint_goes_through_the_queue(client: TestClient, local_reranker) -> None:
    body = client.post("/rerank", json={"query": "yellow fruit", "documents": SHORT_DOCS, "top_n": 2}).json()
    expected = local_reranker.rerank("yellow fruit", SHORT_DOCS, top_k=2)
    assert [r["index"] for r in body["results"]] == [int(i) for i in expected.ids]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(expected.scores)
    assert body["meta"]["tokens"]["input_tokens"] == expected.trace.prompt_tokens


def test_one_task_reranks_several_queries_in_one_batch(celery, workers, local_reranker) -> None:
    requests = [{"query": q, "candidates": [{"id": str(n), "text": t} for n, t in enumerate(SHORT_DOCS)],
                 "top_k": None} for q in ("capital of France", "red planet", "a hot drink")]
    answers = celery.send_task(RERANK_TASK, args=[requests, None]).get(timeout=60)
    assert json.loads(json.dumps(answers)) == answers  # plain JSON on the wire
    rankings = [served.ranking for served in rankings_from_wire(answers)]
    expected = local_reranker.rerank_batch([(r["query"], SHORT_DOCS) for r in requests])
    assert [r.query for r in rankings] == [r["query"] for r in requests]
    assert [r.ids for r in rankings] == [e.ids for e in expected]
    assert [r.trace.critical_path_depth for r in rankings] == [1, 1, 1]  # one generate call for all


def test_index_jobs_run_on_the_index_worker(client: TestClient) -> None:
    doc = {"documents": [{"id": "okapi", "text": "The okapi is a forest giraffe from the Congo."}]}
    response = client.post("/documents?background=true", json=doc, headers=AUTH)
    assert response.status_code == 202
    status = wait_task(client, response.json()["task_id"])
    assert status["state"] == "SUCCESS" and status["result"] == {"upserted": 1}
    # The API's index handle sees the worker's commit without reopening.
    found = client.post("/search", json={"query": "forest giraffe okapi", "k": 1, "rerank": False}).json()
    assert found["hits"][0]["id"] == "okapi"

    index = client.app.state.services.index
    before = index.generation
    response = client.post("/admin/reindex", headers=AUTH)
    status = wait_task(client, response.json()["task_id"])
    assert status["state"] == "SUCCESS", status
    assert status["result"]["generation"] == index.generation != before


def test_metrics_show_queue_depths(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert "grouprank_broker_up 1.0" in text
    for queue in ("rerank", "index", "train"):
        assert f'grouprank_queue_depth{{queue="{queue}"}}' in text


def test_a_killed_worker_loses_no_task_and_runs_none_twice(settings: Settings, celery, workers) -> None:
    def request(n: int, copies: int) -> list[dict]:
        docs = [{"id": f"{c}-{i}", "text": t} for c in range(copies) for i, t in enumerate(SHORT_DOCS)]
        return [{"query": f"query number {n}", "candidates": docs}]

    # Tasks run in order, one at a time; task 3 is 300 times longer, so the kill lands inside it (slot
    # decoding makes a tiny model's answer short: a 10x task can end within the 0.05 s below).
    requests = [request(n, 300 if n == 3 else 1) for n in range(24)]
    before = set(executions(settings))
    tasks = [celery.send_task(RERANK_TASK, args=[r, None]) for r in requests]
    ids = [t.id for t in tasks]
    end = time.monotonic() + 60
    while len(set(executions(settings)) - before) < 3:
        assert time.monotonic() < end, "the worker did not start on the tasks"
        time.sleep(0.01)
    time.sleep(0.05)
    workers.kill(workers.rerank)
    # The dead worker held exactly the task it was running (prefetch 1): received, never acknowledged.
    client = redis.Redis.from_url(settings.celery_broker_url)
    held = {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals(settings.key_prefix + "unacked")}
    assert held == {ids[3]}

    replacement = workers.start("rerank")
    workers.wait_ready(replacement)
    workers.rerank = replacement
    results = [t.get(timeout=120) for t in tasks]  # redelivered after the visibility timeout
    assert [r[0]["ranking"]["query"] for r in results] == [f"query number {n}" for n in range(24)]
    counts = executions(settings)
    assert {i: counts.get(i) for i in ids} == dict.fromkeys(ids, 1)  # every task finished exactly once


def test_broker_down_readyz_fails_and_search_degrades_in_time(settings: Settings, tmp_path) -> None:
    port = free_port()
    broker = start_redis(port, tmp_path)
    own = settings.with_(broker_url=f"redis://127.0.0.1:{port}/0")
    try:
        with TestClient(create_app(own)) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["failing"] == ["workers"]  # nobody consumes
            stop(broker)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "broker" in ready.json()["failing"]

            started = time.monotonic()
            body = client.post("/search", json={"query": "capital of France", "k": 3, "deadline_ms": 1500})
            elapsed = time.monotonic() - started
            assert body.status_code == 200
            assert body.json()["reranked"] is False and "broker" in body.json()["reason"]
            assert [h["retriever_rank"] for h in body.json()["hits"]] == [1, 2, 3]
            # Bounded, not hanging: within the deadline plus test-client overhead on a busy machine.
            assert elapsed < 1.5 + 1.0
            assert client.post("/rerank", json={"query": "x", "documents": ["a"]}).status_code == 503
            assert client.post("/admin/reindex", headers=AUTH).status_code == 503
            assert "grouprank_broker_up 0.0" in client.get("/metrics").text

            broker = start_redis(port, tmp_path)  # back again: the API recovers without a restart
            ready = client.get("/readyz")
            assert ready.json()["checks"]["broker"] == "ok"
            body = client.post("/search", json={"query": "capital of France", "deadline_ms": 300}).json()
            assert body["reason"] == "no rerank worker answered before the deadline"  # published this time
    finally:
        stop(broker)


# -- retraining (the trainer through the train queue) ----------------------------------------------


def test_retrain_needs_a_key_and_a_config(settings: Settings) -> None:
    without = settings.with_(broker_url=None, train_config=None)  # embedded: nothing is sent anywhere
    with TestClient(create_app(without)) as client:
        assert client.post("/admin/retrain").status_code == 401
        response = client.post("/admin/retrain", headers=AUTH)
        assert response.status_code == 409 and "GROUPRANK_TRAIN_CONFIG" in response.json()["detail"]
        assert client.get("/admin/model").json()["version"] is None


@pytest.mark.slow
def test_retraining_promotes_and_the_rerank_worker_switches_without_a_restart(
    client: TestClient, settings: Settings, workers, pipeline_config, tmp_path: Path
) -> None:
    config = {**pipeline_config(tmp_path), "registry_dir": str(settings.registry_dir)}  # the gate promotes
    settings.train_config.write_text(json.dumps(config))
    before = client.get("/admin/model").json()
    assert before == {"model": settings.rerank_model, "version": None, "history": [],
                      "registry_dir": str(settings.registry_dir), "adaptation": None}
    body = client.post("/search", json={"query": "which planet is red", "k": 3, "mode": "bm25"}).json()
    # The rerank worker answered (a random tiny model's scores may not parse: then the hits keep
    # retriever order, but the trace still says which model answered).
    assert body["rerank_trace"] is not None, body["reason"]
    assert body["rerank_trace"]["model"] == settings.rerank_model and body["rerank_trace"]["model_version"] is None

    trainer = workers.start("train", "--pool", "solo")
    workers.wait_ready(trainer)
    response = client.post("/admin/retrain", headers=AUTH)
    assert response.status_code == 202
    status = wait_task(client, response.json()["task_id"], timeout=900)
    assert status["state"] == "SUCCESS", status
    result = status["result"]
    assert result["status"] == "done" and result["ran"] == ["mine", "synth", "sft", "grpo", "evaluate", "promote"]
    assert result["promoted"] is True and result["version"] == "v0001"

    after = client.get("/admin/model").json()
    assert after["version"] == "v0001" and Path(after["model"]) == settings.registry_dir / "models" / "v0001"
    assert after["history"][-1]["version"] == "v0001"
    # The same API process and the same rerank worker process now serve the promoted model: the worker
    # loads it in the background (the first search after the promotion starts that), answering with the
    # previous model until it is ready.
    end = time.monotonic() + 300
    while True:
        body = client.post("/search", json={"query": "which planet is red", "k": 3, "mode": "bm25"}).json()
        assert body["rerank_trace"] is not None, body["reason"]
        if body["rerank_trace"]["model_version"] == "v0001" or time.monotonic() > end:
            break
        assert body["rerank_trace"]["model"] == settings.rerank_model  # the previous model, meanwhile
        time.sleep(0.5)
    assert body["rerank_trace"]["model_version"] == "v0001" and body["rerank_trace"]["model"] == after["model"]
    assert workers.processes[workers.rerank].poll() is None


def test_beat_sends_retraining_runs_to_the_train_queue(settings: Settings, tmp_path: Path) -> None:
    prefix = f"grouprank-beat-{uuid.uuid4().hex[:12]}:"
    beat = settings.with_(key_prefix=prefix, retrain_every_s=1.0)
    env = {**os.environ, **beat.to_env(), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "grouprank.cli.main", "beat", "--schedule",
                                str(tmp_path / "schedule"), "--loglevel", "info"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(settings.celery_broker_url)
    try:
        end = time.monotonic() + 60
        while client.llen(prefix + "train") < 2:  # two ticks: it is periodic, not a one-off
            assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < end, "beat sent fewer than 2 retraining runs in 60 s"
            time.sleep(0.2)
        messages = [json.loads(m) for m in client.lrange(prefix + "train", 0, -1)]
        assert {m["headers"]["task"] for m in messages} == {"grouprank.train.pipeline"}
        assert client.llen(prefix + "rerank") == 0 and client.llen(prefix + "index") == 0
    finally:
        stop(process)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


def test_rerank_results_are_cached_in_redis(client: TestClient, settings: Settings) -> None:
    """With a broker the cache is Redis: a repeated /rerank is answered without a worker task, and the
    entry carries the configured TTL."""
    from worker.result_cache import KEY_SPACE

    body = {"query": "cached: which planet is red", "documents": ["Mars is red.", "Venus is hot.", "Tea."]}
    def hits() -> float:
        line = [x for x in client.get("/metrics").text.splitlines()
                if x.startswith('grouprank_rerank_cache_total{result="hit"}')]
        return float(line[0].split()[-1]) if line else 0.0

    first = client.post("/v2/rerank", json=body)
    assert first.status_code == 200, first.text
    before, hits_before = executions(settings), hits()
    again = client.post("/v2/rerank", json=body)
    assert again.json()["results"] == first.json()["results"]
    assert executions(settings) == before  # no task ran for the repeat
    assert hits() == hits_before + 1
    store = redis.Redis.from_url(settings.celery_broker_url)
    keys = list(store.scan_iter(match=settings.key_prefix + KEY_SPACE + "*"))
    assert keys and 0 < store.pttl(keys[0]) <= settings.rerank_cache_ttl_s * 1000
