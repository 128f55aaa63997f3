"""The search API in embedded mode (no broker): a real index, real models reranking in-process."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reranker import GroupwiseReranker
from reranker.backends.base import Backend, Completion
from worker.api import create_app
from worker.settings import Settings
from worker.tasks import get_reranker

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The LLM calls here are small; on a shared 2-core machine one thread is faster and steadier."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def settings(tmp_path_factory, service_index_template: Path, tiny_model_path: str) -> Settings:
    index_dir = tmp_path_factory.mktemp("api") / "index"
    shutil.copytree(service_index_template, index_dir)
    return Settings(index_dir=index_dir, rerank_model=tiny_model_path, rerank_options={"group_size": 4},
                    rerank_depth=4, api_keys=(KEY,), default_deadline_ms=60_000, max_rerank_documents=8,
                    max_body_bytes=64 * 1024, rerank_cache_ttl_s=0)  # no cache: tests swap the reranker


def wait_ready(client: TestClient, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > end:
            return response.json()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        yield client


def index_of(client: TestClient):
    return client.app.state.services.index


def candidates(hits) -> list[dict]:
    return [{"id": h.id, "text": h.text, "title": h.title, "score": h.score} for h in hits]


def test_search_without_rerank_returns_the_index_hits(client: TestClient) -> None:
    body = client.post("/search", json={"query": "capital of France", "k": 5, "rerank": False}).json()
    expected = index_of(client).search("capital of France", k=5, mode="hybrid")
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected])
    assert [h["retriever_rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert body["hits"][0]["scores"].keys() == expected[0].scores.keys()
    assert body["reranked"] is False and body["reason"] == "reranking not requested"
    assert set(body["timings_ms"]) == {"retrieval", "rerank", "total"}


def test_an_app_whose_lifespan_restarts_still_searches(settings: Settings) -> None:
    """stop() closed the search thread and start() did not make a new one: every search then waited
    forever (found by schemathesis, whose ASGI client restarts the lifespan)."""
    app = create_app(settings.with_(default_deadline_ms=1))
    with TestClient(app) as first:
        assert first.post("/search", json={"query": "capital of France", "rerank": False}).status_code == 200
    answers: list = []
    with TestClient(app) as again:  # the same app, started a second time
        thread = threading.Thread(target=lambda: answers.append(
            again.post("/search", json={"query": "capital of France", "rerank": False})), daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert answers and answers[0].status_code == 200, "the search never answered"


def test_hybrid_search_hands_the_dense_similarity_to_the_fusion(settings: Settings) -> None:
    """A hit's dense similarity reaches the reranker: with all the first stage's weight on it (and none on
    the LLM), the reranked order is the dense order, not the hybrid retriever's."""
    options = {"group_size": 4, "weight": 0.0, "dense_weight": 1.0, "fallback": "retriever"}
    with TestClient(create_app(settings.with_(rerank_options=options))) as app:
        assert wait_ready(app)["ready"]
        differ = 0
        for query in ("capital of France", "which fruit is yellow", "the moon and the tides", "stock markets"):
            hits = index_of(app).search(query, k=settings.rerank_depth, mode="hybrid")
            low = min((h.scores["dense"] for h in hits if "dense" in h.scores), default=0.0)
            by_dense = [h.id for h in sorted(hits, key=lambda h: -h.scores.get("dense", low))]
            body = app.post("/search", json={"query": query, "k": len(hits), "mode": "hybrid"}).json()
            assert body["reranked"] is True and [h["id"] for h in body["hits"]] == by_dense, query
            differ += by_dense != [h.id for h in hits]
        assert differ  # some query where the dense order is not the hybrid order: the check can fail


def test_search_reranks_in_process_like_the_reranker_itself(client: TestClient, settings: Settings) -> None:
    query = "which fruit is yellow"
    body = client.post("/search", json={"query": query, "k": 3, "mode": "bm25"}).json()
    hits = index_of(client).search(query, k=settings.rerank_depth, mode="bm25")
    expected = get_reranker(settings).rerank(query, candidates(hits), top_k=3)
    assert body["rerank_trace"]["llm_calls"] == expected.trace.llm_calls > 0
    assert body["rerank_trace"]["prompt_tokens"] == expected.trace.prompt_tokens
    if expected.reranked:  # slot decoding reads scores even from the tiny random model
        assert body["reranked"] is True and body["reason"] is None
        assert [h["id"] for h in body["hits"]] == expected.ids
        assert [h["score"] for h in body["hits"]] == pytest.approx(expected.scores)
        assert all(0.0 <= h["score"] <= 1.0 for h in body["hits"])
    else:  # its generated answers do not parse: retrieval order, with the reason
        assert body["reranked"] is False and body["reason"].startswith("the reranker scored no document")
        assert [h["id"] for h in body["hits"]] == [h.id for h in hits[:3]]


def test_search_with_a_real_model_returns_its_ranking(tmp_path_factory, service_index_template: Path,
                                                      smollm2_path: Path) -> None:
    index_dir = tmp_path_factory.mktemp("api-smollm2") / "index"
    shutil.copytree(service_index_template, index_dir)
    settings = Settings(index_dir=index_dir, rerank_model=str(smollm2_path), rerank_method="pointwise",
                        rerank_depth=3, default_deadline_ms=60_000)
    query = "what is the capital of France"
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        response = client.post("/search", json={"query": query, "k": 3})
        assert response.status_code == 200, response.text
        body = response.json()
        hits = index_of(client).search(query, k=3, mode="hybrid")
    expected = get_reranker(settings).rerank(query, candidates(hits), top_k=3)
    assert expected.reranked, "SmolLM2 should score these short documents"
    assert body["reranked"] is True and body["reason"] is None
    assert [h["id"] for h in body["hits"]] == expected.ids
    assert [h["score"] for h in body["hits"]] == pytest.approx(expected.scores)
    for hit in body["hits"]:
        assert hit["reranked"] == (hit["id"] in expected.reranked)
        assert hit["rerank_score"] == pytest.approx(expected.rerank_scores.get(hit["id"]))
        assert hit["retriever_score"] == pytest.approx(next(h.score for h in hits if h.id == hit["id"]))


def test_embedded_api_switches_to_a_promoted_model_and_back(tmp_path_factory, service_index_template: Path,
                                                              tiny_model_path: str, smollm2_path: Path) -> None:
    """The trainer's registry decides the model: a promotion (and a rollback) reaches the running API."""
    from trainer.registry import Registry

    root = tmp_path_factory.mktemp("api-registry")
    shutil.copytree(service_index_template, root / "index")
    settings = Settings(index_dir=root / "index", rerank_model=tiny_model_path, registry_dir=root / "registry",
                        rerank_method="pointwise", rerank_depth=2, default_deadline_ms=60_000)
    registry = Registry(settings.registry_dir)
    first = registry.add(tiny_model_path)
    registry.promote(first)

    def served() -> tuple[str, str | None]:
        body = client.post("/search", json={"query": "what is the capital of France", "k": 2}).json()
        assert body["rerank_trace"] is not None, body["reason"]
        return body["rerank_trace"]["model"], body["rerank_trace"]["model_version"]

    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        assert served() == (str(registry.path(first)), first)
        second = registry.add(smollm2_path)
        registry.promote(second)
        assert client.get("/admin/model").json()["version"] == second
        assert switches_to(served, (str(registry.path(second)), second))
        registry.rollback()
        assert switches_to(served, (str(registry.path(first)), first))


def switches_to(served, expected: tuple[str, str | None], timeout: float = 120.0) -> bool:
    """A promotion is loaded in the background; the previous model answers until it is ready."""
    end = time.monotonic() + timeout
    while (answer := served()) != expected and time.monotonic() < end:
        time.sleep(0.2)
    return answer == expected


def test_a_missed_deadline_returns_retrieval_order_with_a_reason(client: TestClient) -> None:
    plain = client.post("/search", json={"query": "tallest mountain", "k": 4, "rerank": False}).json()
    body = client.post("/search", json={"query": "tallest mountain", "k": 4, "deadline_ms": 1}).json()
    assert body["reranked"] is False and "deadline" in body["reason"]
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in plain["hits"]]
    metrics = client.get("/metrics").text
    assert 'grouprank_rerank_fallbacks_total{reason="deadline"}' in metrics


def test_rerank_endpoint_speaks_the_cohere_shape(client: TestClient, settings: Settings) -> None:
    docs = ["Bananas are yellow.", {"text": "Paris is in France."}, "Tea is a drink.", {"text": "Mars is red."}]
    body = client.post("/rerank", json={"model": "anything", "query": "yellow fruit", "documents": docs,
                                        "top_n": 3, "return_documents": True}).json()
    texts = [d if isinstance(d, str) else d["text"] for d in docs]
    expected = get_reranker(settings).rerank("yellow fruit", texts, top_k=3)
    assert [r["index"] for r in body["results"]] == [int(i) for i in expected.ids]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(expected.scores)
    assert [r["document"]["text"] for r in body["results"]] == [texts[int(i)] for i in expected.ids]
    assert body["model"] == "anything" and body["id"]
    plain = client.post("/rerank", json={"query": "yellow fruit", "documents": texts}).json()
    assert len(plain["results"]) == len(texts) and all("document" not in r for r in plain["results"])


def test_documents_are_validated_before_anything_is_stored(client: TestClient) -> None:
    index = index_of(client)
    before = len(index)
    bad = {"documents": [{"id": "zebra", "text": "Zebras have black and white stripes."}, {"id": "nope"}]}
    response = client.post("/documents", json=bad, headers=AUTH)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "documents", 1, "text"] and "documents[1]" in error["msg"]
    assert len(index) == before and index.get("zebra") is None

    good = {"documents": [{"id": "zebra", "text": "Zebras have black and white stripes."}]}
    assert client.post("/documents", json=good, headers=AUTH).json() == {"upserted": 1}
    found = client.post("/search", json={"query": "striped zebras", "k": 1, "rerank": False}).json()
    assert found["hits"][0]["id"] == "zebra"
    assert client.delete("/documents/zebra", headers={"X-API-Key": KEY}).json() == {"deleted": "zebra"}
    assert client.delete("/documents/zebra", headers=AUTH).status_code == 404
    assert len(index) == before


def test_write_and_admin_endpoints_need_a_key(client: TestClient, settings: Settings) -> None:
    doc = {"documents": [{"id": "k", "text": "keyed"}]}
    assert client.post("/documents", json=doc).status_code == 401
    assert client.post("/documents", json=doc, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/admin/reindex").status_code == 401
    assert client.delete("/documents/k", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # No keys configured: writes stay closed. Reads can be protected too. (No lifespan needed here:
    # the key check runs before the handler.)
    open_app = TestClient(create_app(settings.with_(api_keys=())))
    refused = open_app.post("/documents", json=doc)
    assert refused.status_code == 403 and "GROUPRANK_API_KEYS" in refused.json()["detail"]
    guarded = TestClient(create_app(settings.with_(protect_reads=True)))
    assert guarded.post("/search", json={"query": "x"}).status_code == 401
    assert guarded.get("/tasks/abc").status_code == 401


def test_limits_are_named_in_the_error(client: TestClient, settings: Settings) -> None:
    long = client.post("/search", json={"query": "word " * 500})
    assert long.status_code == 422 and "max_query_chars" in long.json()["detail"][0]["msg"]
    too_deep = client.post("/search", json={"query": "x", "k": settings.max_k + 1})
    assert too_deep.status_code == 422 and "max_k" in too_deep.json()["detail"][0]["msg"]
    many = client.post("/rerank", json={"query": "x", "documents": ["d"] * (settings.max_rerank_documents + 1)})
    assert many.status_code == 422 and "max_rerank_documents" in many.json()["detail"][0]["msg"]
    big = b'{"query": "' + b"x" * settings.max_body_bytes + b'"}'
    declared = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "max_body_bytes" in declared.json()["detail"]
    streamed = client.post("/search", content=iter([big[:1000], big[1000:]]),
                           headers={"content-type": "application/json"})  # chunked: no Content-Length
    assert streamed.status_code == 413 and "max_body_bytes" in streamed.json()["detail"]


def test_text_that_is_not_unicode_is_refused(client: TestClient) -> None:
    # JSON may carry a lone surrogate escape; it is not text, and the 422 must still render.
    for path, raw, field in [("/search", b'{"query": "capital \\ud800"}', "query"),
                             ("/rerank", b'{"query": "q", "documents": ["\\udfff"]}', "documents")]:
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:2] == ["body", field]
    raw = b'{"documents": [{"id": "a", "text": "fine"}, {"id": "b", "text": "\\udfff"}]}'
    response = client.post("/documents", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "documents", 1, "text"]
    assert index_of(client).get("a") is None


def test_reindex_runs_as_a_task(client: TestClient) -> None:
    before = index_of(client).generation
    response = client.post("/admin/reindex", headers=AUTH)
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    end = time.monotonic() + 60
    while (status := client.get(f"/tasks/{task_id}").json())["state"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < end, status
        time.sleep(0.1)
    assert status["state"] == "SUCCESS", status
    assert status["result"]["generation"] == index_of(client).generation != before
    assert client.get("/tasks/no-such-task").status_code == 404


def test_health_readiness_and_metrics(client: TestClient, settings: Settings, tmp_path,
                                      service_index_template: Path, monkeypatch) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"ready": True, "checks": {"index": "ok", "reranker": "ok"}, "failing": []}
    monkeypatch.setattr("worker.services.REOPEN_INTERVAL_S", 0.0)
    with TestClient(create_app(settings.with_(index_dir=tmp_path / "later"))) as late:
        response = late.get("/readyz")
        assert response.status_code == 503 and "index" in response.json()["failing"]
        assert late.post("/search", json={"query": "x"}).status_code == 503
        shutil.copytree(service_index_template, tmp_path / "later")  # created after the API started
        assert late.get("/readyz").status_code == 200
        assert late.post("/search", json={"query": "red planet", "rerank": False}).json()["hits"]
    client.post("/search", json={"query": "planets", "rerank": False})
    metrics = client.get("/metrics").text
    assert 'grouprank_http_requests_total{endpoint="/search",method="POST",status="200"}' in metrics
    assert 'grouprank_http_request_seconds_bucket{endpoint="/search",le="0.1",method="POST"}' in metrics
    assert 'grouprank_stage_seconds_count{stage="retrieval"}' in metrics


class TableBackend(Backend):
    """Answers a groupwise prompt from ``table`` (document text -> 0-10 score); a group holding a document
    scored None gets an answer that does not parse, so its documents fall back."""

    name = "table"
    model = "table"

    def __init__(self, table: dict[str, int | None]) -> None:
        self.table = table

    def generate(self, prompts, config, deadline=None) -> list[Completion]:
        out = []
        for prompt in prompts:
            user = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
            scores = [self.table[text] for text in re.findall(r"^\[\d+\]\. (.*)$", user, re.M)]
            answer = "I cannot score these." if None in scores else \
                json.dumps({f"[{i}]": s for i, s in enumerate(scores, 1)})
            out.append(Completion(answer, 1, 1))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


SCRIPTED = {"Bananas are yellow.": 9, "Paris is in France.": 1, "Tea is a drink.": None, "Mars is red.": 3,
            "Lemons are yellow too.": 6}


@pytest.fixture
def scripted(monkeypatch) -> list[str]:
    """The API's reranker answers from ``SCRIPTED`` (groups of 2: the [Tea, Mars] group fails)."""
    reranker = GroupwiseReranker(TableBackend(SCRIPTED), group_size=2)
    monkeypatch.setattr("worker.tasks.serving_reranker", lambda settings: (reranker, None))
    return list(SCRIPTED)


def test_rerank_scores_are_in_zero_to_one_with_fallbacks_below(client: TestClient, scripted: list[str]) -> None:
    # Groups [Bananas, Paris] [Tea, Mars] [Lemons]; the second fails. No retriever scores: the LLM's score s
    # gives .5 + .5 * s; the fallbacks Tea (request position 2 of 5) and Mars (3) give .4 * minmax(5 - i).
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        response = client.post(path, json={"model": "m", "query": "yellow fruit", "documents": scripted})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["index"] for r in body["results"]] == [0, 4, 1, 2, 3], path
        assert [r["relevance_score"] for r in body["results"]] == pytest.approx([0.95, 0.8, 0.55, 0.2, 0.1])
        assert (body["meta"]["reranked"], body["meta"]["fallback"]) == (3, 2)
        assert body["meta"]["api_version"] == {"version": "1" if path == "/v1/rerank" else "2"}


def test_rerank_routes_share_the_cohere_and_jina_shapes(client: TestClient, scripted: list[str]) -> None:
    docs = [scripted[0], {"text": scripted[1], "title": "France"}, *scripted[2:]]
    jina = {"model": "jina-reranker-v2-base-multilingual", "query": "yellow fruit", "documents": docs, "top_n": 2,
            "return_documents": True}
    for path in ("/rerank", "/v1/rerank"):
        body = client.post(path, json=jina).json()
        assert [r["index"] for r in body["results"]] == [0, 4]
        assert [r["document"] for r in body["results"]] == [{"text": scripted[0]}, {"text": scripted[4]}]
        assert body["model"] == jina["model"] and body["usage"]["total_tokens"] > 0
        assert client.post(path, json={**jina, "top_n": 5}).json()["results"][2]["document"] == docs[1]
    v2 = client.post("/v2/rerank", json={"model": "m", "query": "q", "documents": docs, "top_n": 3,
                                         "max_tokens_per_doc": 64}).json()
    assert [r["index"] for r in v2["results"]] == [0, 4, 1] and all("document" not in r for r in v2["results"])
    assert v2["meta"]["warnings"] == [
        "max_tokens_per_doc is not applied; documents are truncated by the server's reranker settings"]


@pytest.mark.parametrize(("path", "body", "loc"), [
    ("/v2/rerank", {"return_documents": True}, ["body", "return_documents"]),
    ("/v2/rerank", {"top_n": 0}, ["body", "top_n"]),
    ("/v1/rerank", {"rank_fields": ["title"]}, ["body", "rank_fields"]),
    ("/v1/rerank", {"documents": [{"title": "no text"}]}, ["body", "documents", 0]),
    ("/rerank", {"documents": []}, ["body", "documents"]),
])
def test_bad_rerank_requests_name_the_field(client: TestClient, path: str, body: dict, loc: list) -> None:
    response = client.post(path, json={"query": "q", "documents": ["d"], **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][: len(loc)] == loc


def test_rerank_results_are_cached_until_the_model_changes(settings: Settings, scripted: list[str],
                                                           monkeypatch) -> None:
    """The embedded API answers a repeated request from its in-process cache (the reranker is not called
    again; /metrics counts it), a different request or a newly promoted version misses."""
    import worker.tasks

    calls = []
    serving = worker.tasks.serving_reranker
    monkeypatch.setattr("worker.tasks.serving_reranker", lambda s: (calls.append(1), serving(s))[1])
    body = {"query": "yellow fruit", "documents": ["Bananas are yellow.", "Mars is red.", "Lemons are yellow too."]}
    with TestClient(create_app(settings.with_(rerank_cache_ttl_s=60))) as client:
        assert wait_ready(client)["ready"]
        first = client.post("/v1/rerank", json=body).json()
        runs = len(calls)
        again = client.post("/v1/rerank", json=body).json()
        assert again["results"] == first["results"] and len(calls) == runs  # the model was not asked
        other = client.post("/v1/rerank", json={**body, "documents": body["documents"][:2]}).json()
        assert len(other["results"]) == 2 and len(calls) > runs
        monkeypatch.setattr("worker.services.serving_model", lambda s: ("promoted", "v2"))
        runs = len(calls)
        client.post("/v1/rerank", json=body)
        assert len(calls) > runs  # a promotion changes the key: the old answer is not reused
        metrics = client.get("/metrics").text
        assert 'grouprank_rerank_cache_total{result="hit"} 1.0' in metrics
        assert 'grouprank_rerank_cache_total{result="miss"} 3.0' in metrics


def test_a_search_answered_from_the_rerank_cache_says_so(settings: Settings) -> None:
    with TestClient(create_app(settings.with_(rerank_cache_ttl_s=60))) as client:
        assert wait_ready(client)["ready"]
        body = {"query": "capital of Spain", "k": 3, "mode": "bm25"}
        first, again = (client.post("/search", json=body).json() for _ in range(2))
        assert first["reranked"] and again["reranked"]
        assert first["rerank_trace"]["cached"] is False and again["rerank_trace"]["cached"] is True
        assert [h["id"] for h in again["hits"]] == [h["id"] for h in first["hits"]]


def test_incomplete_answers_are_not_cached() -> None:
    from reranker.types import Ranking, Trace
    from worker.payloads import RerankJob, ServedRanking
    from worker.result_cache import cache_key

    def served(fallback=(), errors=()) -> ServedRanking:
        ranking = Ranking(query="q", method="groupwise", ids=["0", "1"], scores=[0.9, 0.1], reranked=["0", "1"],
                          fallback=list(fallback), trace=Trace(errors=list(errors)))
        return ServedRanking(ranking=ranking, model="m")

    assert served().complete
    assert not served(fallback=["1"]).complete
    assert not served(errors=["repeat 0 group 0: deadline"]).complete
    job = RerankJob(query="q", candidates=[{"id": "0", "text": "a"}])
    key = cache_key("m", None, {"group_size": 4}, job)
    assert key == cache_key("m", None, {"group_size": 4}, job.model_copy(deep=True))
    assert key != cache_key("m", "v2", {"group_size": 4}, job)
    assert key != cache_key("m", None, {"group_size": 8}, job)
    assert key != cache_key("m", None, {"group_size": 4}, RerankJob(query="q", candidates=[{"id": "0", "text": "b"}]))


def test_jobs_and_rankings_cross_the_queue_as_validated_json() -> None:
    from pydantic import ValidationError

    from reranker.types import Candidate, Ranking, Trace
    from worker.payloads import RerankJob, ServedRanking, jobs_from_wire, rankings_from_wire, to_wire

    job = RerankJob(query="q", candidates=[Candidate(id="a", text="x", score=1.5)], top_k=1)
    wire = to_wire([job])
    assert json.loads(json.dumps(wire)) == wire and jobs_from_wire(wire) == [job]
    served = ServedRanking(ranking=Ranking(query="q", method="groupwise", ids=["a"], scores=[0.5],
                                           trace=Trace(llm_calls=1)), model="m", model_version="3")
    [back] = rankings_from_wire(to_wire([served]))
    assert isinstance(back.ranking, Ranking) and back == served and back.trace()["model_version"] == "3"
    with pytest.raises(ValidationError, match="candidates"):
        jobs_from_wire([{"query": "q", "candidates": [{"id": "a"}]}])  # no text: refused at the boundary
    with pytest.raises(ValidationError, match="extra"):
        jobs_from_wire([{"query": "q", "candidates": [], "topk": 3}])


def test_a_model_is_warmed_up_before_it_serves(monkeypatch: pytest.MonkeyPatch, tiny_model_path: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The first load reranks one short passage before the model answers (so a first request pays no
    one-off compile); a warm-up that fails is logged and the model still serves."""
    import reranker
    import worker.tasks

    calls: list[list[str]] = []

    class Counting:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def rerank(self, query: str, candidates: list[str], top_k: int | None = None):
            calls.append(list(candidates))
            if self.fail:
                raise RuntimeError("compile failed")
            return None

    for fail in (False, True):
        monkeypatch.setattr(reranker, "load_reranker", lambda fail=fail, **kwargs: Counting(fail))
        settings = Settings(rerank_model=f"{tiny_model_path}-warm-{fail}")
        served = worker.tasks.get_reranker(settings)
        assert isinstance(served, Counting) and len(calls) == 1
        calls.clear()
    assert "warm-up failed: RuntimeError: compile failed" in caplog.text
