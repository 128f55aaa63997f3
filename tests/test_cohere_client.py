"""The official ``cohere`` client (v2 and v1) and a Jina-shaped request against a real ``grouprank serve``.

The server runs embedded (no broker, no index: reranking needs neither) with the tiny random model, and
guards reads with an API key, which the clients send as ``Authorization: Bearer``. Run with ``-s`` to see
the transcript of the cohere client's requests and responses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import stop
from worker.settings import Settings

cohere = pytest.importorskip("cohere")

KEY = "cohere-key"
REPO = Path(__file__).resolve().parents[1]
DOCS = ["Bananas are elongated yellow fruit.", "Paris is the capital of France.", "Mars is a red planet.",
        "Lemons are sour yellow citrus fruit.", "Chess is a board game."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 420.0) -> None:
    """Until the reranker is loaded (the server has no index, so /readyz stays 503 for that)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).json()["checks"].get("reranker") == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    state = "timed out" if process.poll() is None else f"exit code {process.poll()}"
    pytest.fail(f"grouprank serve did not load the reranker ({state}):\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_path: str) -> Iterator[str]:
    """``grouprank serve`` on a free port; its base URL."""
    settings = Settings(rerank_model=tiny_model_path, rerank_options={"group_size": 3}, api_keys=(KEY,),
                        protect_reads=True, rerank_timeout_s=300.0)
    env = {k: v for k, v in os.environ.items() if k not in Settings.env_names()}
    env.update(settings.to_env(), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GROUPRANK_PROGRESS="0")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "grouprank.cli.main", "serve", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        stop(process)


class Transcript:
    """httpx event hooks that print each exchange of the client (with ``-s``) and keep the bodies."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[str, dict, dict]] = []

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=300.0, event_hooks={"response": [self._record]})

    def _record(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        sent, received = json.loads(request.content), response.json()
        self.exchanges.append((request.url.path, sent, received))
        print(f"\n>>> {request.method} {request.url}\n{json.dumps(sent, indent=1)}"
              f"\n<<< {response.status_code}\n{json.dumps(received, indent=1)}")


def check_results(results: list, top_n: int) -> None:
    """Distinct request positions, at most top_n, sorted by score, every score in [0, 1]."""
    indices, scores = [r.index for r in results], [r.relevance_score for r in results]
    assert len(results) == top_n and len(set(indices)) == top_n and set(indices) <= set(range(len(DOCS)))
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_cohere_client_v2_reranks(server: str) -> None:
    transcript = Transcript()
    client = cohere.ClientV2(api_key=KEY, base_url=server, httpx_client=transcript.client())
    response = client.rerank(model="rerank-v3.5", query="yellow fruit", documents=DOCS, top_n=3)
    check_results(response.results, 3)
    assert response.id and response.meta.api_version.version == "2"
    assert response.meta.tokens.input_tokens > 0
    [(path, sent, received)] = transcript.exchanges
    assert path == "/v2/rerank" and sent["top_n"] == 3
    assert all("document" not in r for r in received["results"])
    everything = client.rerank(model="rerank-v3.5", query="yellow fruit", documents=DOCS)
    assert sorted(r.index for r in everything.results) == list(range(len(DOCS)))


def test_cohere_client_v1_reranks_and_returns_documents(server: str) -> None:
    transcript = Transcript()
    client = cohere.Client(api_key=KEY, base_url=server, httpx_client=transcript.client())
    response = client.rerank(model="rerank-english-v3.0", query="yellow fruit", documents=DOCS, top_n=2,
                             return_documents=True)
    check_results(response.results, 2)
    assert [r.document.text for r in response.results] == [DOCS[r.index] for r in response.results]
    assert response.meta.api_version.version == "1"
    plain = client.rerank(model="rerank-english-v3.0", query="yellow fruit", documents=DOCS, top_n=4)
    check_results(plain.results, 4)
    assert all(r.document is None for r in plain.results)
    assert [path for path, _, _ in transcript.exchanges] == ["/v1/rerank", "/v1/rerank"]


def test_cohere_client_needs_the_key(server: str) -> None:
    client = cohere.ClientV2(api_key="wrong", base_url=server)
    with pytest.raises(cohere.UnauthorizedError):
        client.rerank(model="rerank-v3.5", query="yellow fruit", documents=DOCS)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_a_jina_request_gets_the_jina_answer(server: str, path: str) -> None:
    body = {"model": "jina-reranker-v2-base-multilingual", "query": "yellow fruit",
            "documents": [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]], "top_n": 3, "return_documents": True}
    response = httpx.post(server + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=300.0)
    assert response.status_code == 200, response.text
    answer = response.json()
    results = answer["results"]
    assert len(results) == 3 and [r["document"]["text"] for r in results] == [DOCS[r["index"]] for r in results]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert answer["model"] == body["model"] and answer["usage"]["total_tokens"] > 0
