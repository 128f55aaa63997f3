"""The search API serving an OpenSearch index (``Settings.opensearch_url``) instead of the embedded one.

The first tests need no server: the real opensearch-py client against a closed port shows that a cluster
that cannot be reached fails ``/readyz``'s index check and answers 503, never 500. The last one runs the
API against a real OpenSearch node when OPENSEARCH_URL is set, e.g. docker compose's opensearch service:

    docker compose up -d opensearch
    OPENSEARCH_URL=http://localhost:9200 pytest tests/test_api_opensearch.py
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from indexer.backends import open_index
from indexer.opensearch import OpenSearchConfig, OpenSearchIndex
from indexer.opensearch.client import connect
from tests.opensearch_cleanup import drop
from worker.api import create_app
from worker.search_batcher import SearchBatcher
from worker.settings import Settings

pytest.importorskip("opensearchpy", reason="opensearch-py is not installed (the opensearch extra)")

URL = os.environ.get("OPENSEARCH_URL")
needs_cluster = pytest.mark.skipif(not URL, reason="OPENSEARCH_URL is not set: this test runs the API against a "
                                   "real OpenSearch node, e.g. `docker compose up -d opensearch` and "
                                   "OPENSEARCH_URL=http://localhost:9200")
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCUMENTS = [
    {"id": "espresso", "title": "Espresso", "text": "Espresso is coffee brewed by forcing hot water through beans."},
    {"id": "matcha", "title": "Matcha", "text": "Matcha is powdered green tea whisked with hot water."},
    {"id": "glacier", "title": "Glaciers", "text": "A glacier is a slow river of ice that carves valleys."},
]


def closed_port() -> int:
    """A local port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable(tiny_model_path: str) -> Iterator[tuple[TestClient, str]]:
    """The API (embedded reranking) configured for an OpenSearch node that is not there."""
    url = f"http://127.0.0.1:{closed_port()}"
    settings = Settings(opensearch_url=url, opensearch_alias=f"gone-{uuid.uuid4().hex[:8]}", api_keys=(KEY,),
                        rerank_model=tiny_model_path)
    with TestClient(create_app(settings)) as client:
        yield client, url


def test_an_unreachable_cluster_fails_the_index_check_and_answers_503(unreachable) -> None:
    client, url = unreachable
    started = time.monotonic()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert "index" in body["failing"]
    assert body["checks"]["index"].startswith("not open: cannot reach OpenSearch at " + url)

    response = client.post("/search", json={"query": "hot drinks", "rerank": False})
    assert response.status_code == 503, response.text
    assert "cannot reach OpenSearch at " + url in response.json()["detail"]
    response = client.post("/documents", json={"documents": DOCUMENTS[:1]}, headers=AUTH)
    assert response.status_code == 503, response.text
    assert client.delete("/documents/espresso", headers=AUTH).status_code == 503
    assert time.monotonic() - started < 10, "a refused connection must fail fast"


def test_a_cluster_that_goes_away_after_opening_answers_503(unreachable) -> None:
    """An index that was open when its node went down: searches and writes reach the real client and fail
    with a connection error, which is a 503 naming the index, and the readiness check fails."""
    client, url = unreachable
    services = client.app.state.services
    config = OpenSearchConfig(url=url, alias="went-away", retries=0, timeout_s=2.0)
    index = OpenSearchIndex(config, connect(config), dim=384)  # as OpenSearchIndex.open leaves it
    services.batcher, services.index = SearchBatcher(index), index

    ready = client.get("/readyz").json()
    assert "index" in ready["failing"]
    assert ready["checks"]["index"].startswith("unavailable: cannot reach OpenSearch at " + url)
    for response in (client.post("/search", json={"query": "hot drinks", "mode": "bm25", "rerank": False}),
                     client.post("/documents", json={"documents": DOCUMENTS[:1]}, headers=AUTH),
                     client.delete("/documents/espresso", headers=AUTH)):
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith("the index is unavailable: cannot reach OpenSearch at " + url)


def test_without_opensearch_py_the_index_check_names_the_extra(monkeypatch, tiny_model_path: str) -> None:
    monkeypatch.setitem(sys.modules, "opensearchpy", None)  # what `import opensearchpy` does when not installed
    settings = Settings(opensearch_url=f"http://127.0.0.1:{closed_port()}",
                        opensearch_alias=f"no-client-{uuid.uuid4().hex[:8]}", rerank_model=tiny_model_path)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "index" in ready.json()["failing"]
        assert "pip install 'grouprank[opensearch]'" in ready.json()["checks"]["index"]
        response = client.post("/search", json={"query": "hot drinks", "rerank": False})
        assert response.status_code == 503 and "grouprank[opensearch]" in response.json()["detail"]


def test_serve_has_an_opensearch_url_option() -> None:
    from typer.testing import CliRunner

    from grouprank.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--opensearch-url" in result.output


# -- against a real OpenSearch node -----------------------------------------------------------------------
@pytest.fixture
def cluster_index() -> Iterator[tuple[OpenSearchIndex, set[str]]]:
    """A new index under a unique alias, and a set for the names of the search pipelines the test made;
    both are removed afterwards."""
    index = open_index(backend="opensearch", url=URL, alias=f"api-{uuid.uuid4().hex[:10]}", replicas=0,
                       create=True)
    assert isinstance(index, OpenSearchIndex)
    pipelines: set[str] = set()
    yield index, pipelines
    drop(index, pipelines)
    index.close()


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["hits"]]


@needs_cluster
def test_the_api_serves_an_opensearch_index(cluster_index: tuple[OpenSearchIndex, set[str]],
                                            tiny_model_path: str) -> None:
    index, pipelines = cluster_index
    settings = Settings(opensearch_url=URL, opensearch_alias=index.config.alias, api_keys=(KEY,),
                        rerank_model=tiny_model_path, default_deadline_ms=30_000)
    with TestClient(create_app(settings)) as client:
        try:
            end = time.monotonic() + 120
            while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < end:
                time.sleep(0.2)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["index"] == "ok"

            response = client.post("/documents", json={"documents": DOCUMENTS}, headers=AUTH)
            assert response.status_code == 200, response.text
            assert response.json()["upserted"] == len(DOCUMENTS)
            assert len(index) == len(DOCUMENTS)

            for mode in ("bm25", "dense", "hybrid"):
                found = ids(client.post("/search", json={"query": "green tea", "k": 3, "mode": mode,
                                                           "rerank": False}))
                assert found[0] == "matcha" and set(found) <= {d["id"] for d in DOCUMENTS}, (mode, found)
            assert sorted(ids(client.post("/search", json={"query": "hot water", "mode": "bm25",
                                                             "rerank": False}))) == ["espresso", "matcha"]
            body = client.post("/search", json={"query": "green tea", "k": 2, "rerank": False}).json()
            assert body["reranked"] is False and body["reason"] == "reranking not requested"

            assert client.delete("/documents/matcha", headers=AUTH).json() == {"deleted": "matcha"}
            assert "matcha" not in ids(client.post("/search", json={"query": "green tea", "mode": "bm25",
                                                                      "rerank": False}))
            assert client.delete("/documents/matcha", headers=AUTH).status_code == 404

            # OpenSearch refuses a document whose metadata conflicts with the mapping: a 502 naming it,
            # and the rest of the batch is stored.
            conflict = [{"id": "y1", "text": "Made in 1999.", "metadata": {"year": 1999}},
                        {"id": "y2", "text": "Made some year.", "metadata": {"year": "nineteen ninety"}}]
            response = client.post("/documents", json={"documents": conflict}, headers=AUTH)
            assert response.status_code == 502, response.text
            assert "'y2'" in response.json()["detail"] and "'y1'" not in response.json()["detail"]
            assert index.get("y1") is not None and index.get("y2") is None
        finally:
            served = client.app.state.services.index
            if isinstance(served, OpenSearchIndex):  # the API's own index object made the fusion pipelines
                pipelines.update(served._pipelines)
