"""The ml-commons connector blueprint (deploy/opensearch) against grouprank's real /rerank endpoint.

OpenSearch cannot run here, so this test plays ml-commons' part as its source defines it: the
``connector.pre_process.cohere.rerank`` function turns the rerank processor's query and hit texts into
the parameters ``query``, ``documents`` (a JSON array) and ``top_n`` (the number of documents), which
fill the action's ``request_body``; ``connector.post_process.cohere.rerank`` reads ``$.results`` and puts
each ``relevance_score`` at its ``index``, one score per hit. Everything on grouprank's side is real:
the FastAPI app, its OpenAPI schema, its API-key check and a (tiny, random) reranker.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from worker.api import create_app
from worker.schemas import RerankBody
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BLUEPRINT = REPO / "deploy" / "opensearch" / "grouprank-rerank-connector.json"
KEY = "opensearch-connector-key"
QUERY = 'what is "groupwise" reranking?'
HITS = ["Bananas are yellow fruit.", "GroupRank reranks candidates in groups.", "Paris is in France.",
        "A reranker reorders what a retriever found."]


@pytest.fixture(scope="module")
def blueprint() -> dict:
    return json.loads(BLUEPRINT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def action(blueprint) -> dict:
    (predict,) = blueprint["actions"]
    return predict


def fill(template: str, blueprint: dict, parameters: dict[str, str]) -> str:
    """Substitute ${parameters.x} and ${credential.x} as ml-commons does (unknown names stay)."""
    values = {f"parameters.{k}": v for k, v in {**blueprint["parameters"], **parameters}.items()}
    values.update({f"credential.{k}": v for k, v in blueprint["credential"].items()})
    return re.sub(r"\$\{([a-z_.]+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


def cohere_rerank_parameters(query: str, documents: list[str]) -> dict[str, str]:
    """What connector.pre_process.cohere.rerank produces: strings escaped for a JSON string, the documents as
    a JSON array, top_n the number of documents."""
    return {"query": json.dumps(query)[1:-1], "documents": json.dumps(documents), "top_n": str(len(documents))}


def cohere_rerank_scores(response: dict) -> list[float]:
    """What connector.post_process.cohere.rerank does with $.results: score[index] = relevance_score."""
    results = response["results"]
    assert all({"index", "relevance_score"} <= set(r) for r in results)
    scores: list[float | None] = [None] * len(results)
    for result in results:
        scores[result["index"]] = result["relevance_score"]
    return scores


@pytest.fixture(scope="module")
def client(tiny_model_path: str):
    settings = Settings(rerank_model=tiny_model_path, rerank_options={"group_size": 4}, api_keys=(KEY,),
                        protect_reads=True)  # so /rerank needs the key the connector sends
    with TestClient(create_app(settings)) as client:
        end = time.monotonic() + 120
        while client.get("/readyz").json()["checks"].get("reranker") != "ok" and time.monotonic() < end:
            time.sleep(0.1)
        yield client


def test_the_blueprint_is_a_cohere_rerank_connector(blueprint, action):
    assert blueprint["protocol"] == "http" and set(blueprint["credential"]) == {"grouprank_api_key"}
    assert action["action_type"] == "predict" and action["method"] == "POST"
    assert action["pre_process_function"] == "connector.pre_process.cohere.rerank"
    assert action["post_process_function"] == "connector.post_process.cohere.rerank"


def test_the_endpoint_and_auth_header_are_the_apis(blueprint, action, client):
    url = fill(action["url"], blueprint, {})
    assert url == "http://api:8000/rerank"  # docker-compose's api service
    openapi = client.app.openapi()
    operation = openapi["paths"][urlsplit(url).path]["post"]
    schemes = openapi["components"]["securitySchemes"]
    used = [schemes[name] for requirement in operation["security"] for name in requirement]
    assert ("http", "bearer") in [(scheme["type"], scheme.get("scheme")) for scheme in used]
    key = blueprint["credential"]["grouprank_api_key"]
    assert fill(action["headers"]["Authorization"], blueprint, {}) == f"Bearer {key}"


def test_the_request_body_is_a_valid_rerank_request(blueprint, action, client):
    body = json.loads(fill(action["request_body"], blueprint, cohere_rerank_parameters(QUERY, HITS)))
    request = RerankBody.model_validate(body)
    assert (request.query, request.documents, request.top_n, request.return_documents) == (QUERY, HITS, 4, False)
    properties = client.app.openapi()["components"]["schemas"]["RerankBody"]["properties"]
    assert set(body) <= set(properties)


def test_a_connector_call_gets_one_score_per_hit(blueprint, action, client):
    url = urlsplit(fill(action["url"], blueprint, {})).path
    headers = {name: fill(value, blueprint, {}).replace(blueprint["credential"]["grouprank_api_key"], KEY)
               for name, value in action["headers"].items()}
    body = fill(action["request_body"], blueprint, cohere_rerank_parameters(QUERY, HITS))
    assert client.post(url, content=body, headers={"Content-Type": "application/json"}).status_code == 401
    response = client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    data = response.json()
    # The response mapping the post-process function relies on, in the schema and in the answer.
    result = client.app.openapi()["components"]["schemas"]["RerankResult"]
    assert {"index", "relevance_score"} <= set(result["required"])
    assert (result["properties"]["index"]["type"], result["properties"]["relevance_score"]["type"]) == (
        "integer", "number")
    scores = cohere_rerank_scores(data)
    assert len(scores) == len(HITS) and all(isinstance(s, float) for s in scores)
    assert sorted(data["results"], key=lambda r: -r["relevance_score"]) == data["results"]


def test_the_cli_fills_in_the_grouprank_url(tmp_path):
    from grouprank.cli.main import app

    result = CliRunner().invoke(app, ["opensearch", "connector", "--grouprank-url", "https://search.example/api/"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["parameters"]["endpoint"] == "https://search.example/api"
    assert fill(body["actions"][0]["url"], body, {}) == "https://search.example/api/rerank"
    bad = CliRunner().invoke(app, ["opensearch", "connector", "--grouprank-url", "search.example"])
    assert bad.exit_code != 0
