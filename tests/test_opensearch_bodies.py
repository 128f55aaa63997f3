"""Layer 1 of the OpenSearch tests: the exact request bodies grouprank sends, against what the OpenSearch
documentation specifies (k-NN index and spaces, hybrid query, normalization and score-ranker processors,
rerank processor, bulk API), and the parsing of a bulk response. No server needed."""

import json
from pathlib import Path

import numpy as np
import pytest

from grouprank.errors import GroupRankError, InputError
from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.opensearch import bulk, mappings, pipelines, queries
from indexer.opensearch.client import backoff, with_retries
from indexer.opensearch.settings import OpenSearchConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = OpenSearchConfig(url="http://localhost:9200", alias="docs", hnsw_m=24, hnsw_ef_construction=128,
                          hnsw_ef_search=100, replicas=0)


def test_knn_vector_field_is_faiss_hnsw_over_inner_product():
    # The field definition of the docs' "Methods and engines" page (faiss, hnsw, parameters m,
    # ef_construction, ef_search) with space_type innerproduct: our embeddings are unit vectors.
    assert mappings.mappings(CONFIG, 384)["properties"]["embedding"] == {
        "type": "knn_vector",
        "dimension": 384,
        "method": {
            "name": "hnsw",
            "engine": "faiss",
            "space_type": "innerproduct",
            "parameters": {"m": 24, "ef_construction": 128, "ef_search": 100},
        },
    }


def test_index_settings_enable_knn_and_set_ef_search():
    assert mappings.index_settings(CONFIG) == {
        "index": {"number_of_shards": 1, "number_of_replicas": 0, "knn": True, "knn.algo_param.ef_search": 100}
    }


def test_text_fields_are_english_analysed_and_copied_into_the_bm25_field():
    body = mappings.mappings(CONFIG, 384)
    assert body["dynamic"] == "strict"
    props = body["properties"]
    assert props["title"] == {"type": "text", "analyzer": "english", "copy_to": "body"}
    assert props["text"] == {"type": "text", "analyzer": "english", "copy_to": "body"}
    assert props["body"] == {"type": "text", "analyzer": "english"}
    assert props["metadata"] == {"type": "object", "dynamic": True}
    assert props["indexed_at"] == {"type": "date", "format": "epoch_millis"}
    assert body["_meta"] == {"grouprank": {"embedder": "all-MiniLM-L6-v2", "dim": 384}}


def test_index_template_covers_every_version_of_the_alias():
    body = mappings.template_body(CONFIG, 384)
    assert body["index_patterns"] == ["docs-v*"] and body["priority"] > 0
    assert body["template"] == {"settings": mappings.index_settings(CONFIG), "mappings": mappings.mappings(CONFIG, 384)}
    assert mappings.version_name("docs", 7) == "docs-v000007"
    assert mappings.version_number("docs", "docs-v000007") == 7
    assert mappings.version_number("docs", "docs-archive-v000007") is None
    assert mappings.version_number("docs", "docs-v7") is None


def test_document_source_holds_the_fields_and_the_rounded_vector():
    vector = np.array([0.123456789012, -0.5, 0.0], dtype=np.float32)
    doc = Document("d1", "Some text.", "A title", {"year": 1999})
    source = mappings.document_source(doc, vector, indexed_at=1234)
    assert set(source) == {"title", "text", "metadata", "indexed_at", "embedding"}
    assert (source["title"], source["text"], source["metadata"], source["indexed_at"]) == ("A title", "Some text.",
                                                                                          {"year": 1999}, 1234)
    assert source["embedding"] == pytest.approx(vector.tolist(), abs=1e-8)
    assert all(len(repr(x)) <= 12 for x in source["embedding"])  # 8 decimals, not float32 noise
    assert mappings.document_from_hit({"_id": "d1", "_source": source}) == doc


def test_search_bodies_of_the_three_modes():
    vector = np.array([0.6, 0.8], dtype=np.float32)
    match = {"match": {"body": {"query": "lift drag"}}}
    knn = {"knn": {"embedding": {"vector": pytest.approx([0.6, 0.8]), "k": 50}}}
    source = {"includes": ["title", "text", "metadata"]}  # never the vector
    assert queries.search_body("bm25", "lift drag", None, 5, 50) == {"size": 5, "_source": source, "query": match}
    assert queries.search_body("dense", "lift drag", vector, 5, 50) == {"size": 5, "_source": source, "query": knn}
    # The hybrid query of the docs: sub-queries in "queries", fused by the search pipeline; each sub-query
    # contributes up to `size` hits, so it asks for `depth`.
    assert queries.search_body("hybrid", "lift drag", vector, 5, 50) == {
        "size": 50, "_source": source, "query": {"hybrid": {"queries": [match, knn]}}}
    assert queries.search_body("dense", "q", vector, 80, 50)["query"]["knn"]["embedding"]["k"] == 80


@pytest.mark.parametrize("inner_product", [-1.0, -0.731, -0.05, 0.0, 0.02, 0.4, 0.999, 1.0])
def test_knn_scores_convert_back_to_inner_products(inner_product):
    # The docs' Spaces table, faiss innerproduct: d = -(x.y); score = 1 / (1 + d) if d >= 0, else -d + 1.
    d = -inner_product
    score = 1 / (1 + d) if d >= 0 else -d + 1
    assert queries.cosine_from_score(score) == pytest.approx(inner_product, abs=1e-12)


def test_normalization_pipeline_is_the_documented_min_max_arithmetic_mean():
    # The docs' example: weights 0.3 for the first query (BM25), 0.7 for the second (k-NN).
    name, body = pipelines.fusion_pipeline("docs", "weighted", 0.7, 60)
    assert name == "docs-minmax-w07000"
    assert body["phase_results_processors"] == [{
        "normalization-processor": {
            "normalization": {"technique": "min_max"},
            "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [0.3, 0.7]}},
        }
    }]
    for weight in (0.0, 0.1, 1 / 3, 0.5, 0.999, 1.0):
        fused = pipelines.weights(weight)
        assert sum(fused) == pytest.approx(1.0, abs=1e-9) and all(0.0 <= w <= 1.0 for w in fused)
    assert pipelines.fusion_pipeline("docs", "weighted", 0.3, 60)[0] != name  # one name per body


def test_rrf_pipeline_is_the_documented_score_ranker():
    name, body = pipelines.fusion_pipeline("docs", "rrf", 0.5, 40)
    assert name == "docs-rrf-k40"
    assert body["phase_results_processors"] == [
        {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": 40}}}
    ]


def test_rerank_pipeline_matches_the_docs_and_the_shipped_file():
    body = pipelines.rerank_pipeline("gnDIbI0BfUsSoeNT_jAw")
    assert body["response_processors"] == [{
        "rerank": {"ml_opensearch": {"model_id": "gnDIbI0BfUsSoeNT_jAw"},
                   "context": {"document_fields": ["title", "text"]}}
    }]
    shipped = json.loads((REPO / "deploy" / "opensearch" / "grouprank-rerank-pipeline.json").read_text())
    model_id = shipped["response_processors"][0]["rerank"]["ml_opensearch"]["model_id"]
    assert shipped == pipelines.rerank_pipeline(model_id)


# A _bulk response as the bulk API documents it: per item the action, its status and result or error.
BULK_RESPONSE = {
    "took": 11,
    "errors": True,
    "items": [
        {"index": {"_index": "docs-v000001", "_id": "a", "_version": 1, "result": "created", "status": 201}},
        {"index": {"_index": "docs-v000001", "_id": "b", "_version": 3, "result": "updated", "status": 200}},
        {"index": {"_index": "docs-v000001", "_id": "c", "status": 400, "error": {
            "type": "mapper_parsing_exception",
            "reason": "failed to parse field [metadata.year] of type [long] in document with id 'c'",
            "caused_by": {"type": "illegal_argument_exception", "reason": "For input string: \"1999a\""}}}},
        {"index": {"_index": "docs-v000001", "_id": "d", "status": 429, "error": {
            "type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}},
        {"delete": {"_index": "docs-v000001", "_id": "e", "_version": 2, "result": "deleted", "status": 200}},
        {"delete": {"_index": "docs-v000001", "_id": "f", "_version": 1, "result": "not_found", "status": 404}},
    ],
}
ACTIONS = [("index", i, {"text": i}) for i in "abcd"] + [("delete", "e", None), ("delete", "f", None)]


def test_a_bulk_response_is_parsed_per_document():
    items = bulk.parse_response(BULK_RESPONSE, ACTIONS)
    assert [(i.id, i.status, i.result) for i in items] == [
        ("a", 201, "created"), ("b", 200, "updated"), ("c", 400, None), ("d", 429, None), ("e", 200, "deleted"),
        ("f", 404, "not_found")]
    assert [i.retry for i in items] == [False, False, False, True, False, False]
    failure = items[2].failure()
    assert (failure.id, failure.status, failure.type) == ("c", 400, "mapper_parsing_exception")
    assert "metadata.year" in failure.reason and "1999a" in failure.reason
    assert "'c': mapper_parsing_exception (400)" in str(failure)
    with pytest.raises(GroupRankError, match="6 actions sent, 2 items returned"):
        bulk.parse_response({"items": BULK_RESPONSE["items"][:2]}, ACTIONS)


def test_bulk_request_lines_and_chunks():
    assert bulk.request_lines("docs", ACTIONS[:1] + ACTIONS[4:5]) == [
        {"index": {"_index": "docs", "_id": "a"}}, {"text": "a"}, {"delete": {"_index": "docs", "_id": "e"}}]
    actions = [("index", str(n), {"text": "x" * 1000}) for n in range(10)]
    assert [len(c) for c in bulk.chunks(actions, max_docs=4, max_bytes=10**6)] == [4, 4, 2]
    assert [len(c) for c in bulk.chunks(actions, max_docs=100, max_bytes=2500)] == [2, 2, 2, 2, 2]
    assert [len(c) for c in bulk.chunks(actions[:2], max_docs=100, max_bytes=10)] == [1, 1]  # too big: alone


def test_a_report_summarises_its_failures():
    report = bulk.BulkReport(written=7, failures=[bulk.DocumentFailure(str(n), 400, "mapper_parsing_exception", "bad")
                                                  for n in range(7)])
    assert not report.ok
    text = bulk.BulkError(report).args[0]
    assert text.startswith("7 document(s) failed (the others were stored): '0': mapper_parsing_exception")
    assert text.endswith("and 2 more")


def test_retries_back_off_on_429_and_5xx_only():
    import opensearchpy

    config = CONFIG.with_(retries=3, backoff_s=0.5)
    waits, calls = [], []

    def flaky(statuses):
        def call():
            calls.append(1)
            if len(calls) <= len(statuses):
                raise opensearchpy.TransportError(statuses[len(calls) - 1], "error", {})
            return "done"
        return call

    assert with_retries(config, flaky([429, 503, 502]), waits.append) == "done"
    assert waits == [0.5, 1.0, 2.0] == [backoff(config, n) for n in (1, 2, 3)]
    calls.clear()
    with pytest.raises(opensearchpy.TransportError):  # a fourth refusal is one too many
        with_retries(config, flaky([429, 429, 429, 429]), waits.append)
    calls.clear()
    waits.clear()
    with pytest.raises(opensearchpy.TransportError):  # a 400 is the request's fault: never retried
        with_retries(config, flaky([400]), waits.append)
    assert waits == [] and len(calls) == 1


@pytest.mark.parametrize(("settings", "field"), [
    ({"url": "localhost:9200"}, "url"),
    ({"alias": "Docs"}, "alias"),
    ({"alias": "my docs"}, "alias"),
    ({"hnsw_m": 1}, "hnsw_m"),
    ({"hnsw_m": 101}, "hnsw_m"),
    ({"rrf_k": 0}, "rrf_k"),
    ({"fusion": "max"}, "fusion"),
    ({"dense_weight": 1.5}, "dense_weight"),
    ({"replicas": -1}, "replicas"),
    ({"backoff_s": -1}, "backoff_s"),
])
def test_bad_settings_are_named(settings, field):
    with pytest.raises(InputError) as err:
        OpenSearchConfig(**settings)
    assert err.value.field == field


def test_settings_from_an_embedded_index_config_and_from_a_dict():
    config = OpenSearchConfig.from_index_config(IndexConfig(hnsw_m=16, fusion="weighted", dense_weight=0.3, depth=50),
                                                url="https://admin:secret@search.example:9200", alias="docs")
    assert (config.hnsw_m, config.fusion, config.dense_weight, config.depth) == (16, "weighted", 0.3, 50)
    assert config.encoder == "torch"  # "auto" is not carried: every process must encode alike
    assert OpenSearchConfig.from_index_config(IndexConfig(encoder="torch-bf16")).encoder == "torch-bf16"
    with pytest.raises(InputError, match="encoder"):
        OpenSearchConfig(encoder="auto")
    assert config.safe_url == "https://search.example:9200"  # no password in messages
    with pytest.raises(InputError, match="unknown OpenSearch setting") as err:
        OpenSearchConfig.from_dict({"url": "http://x:9200", "shard": 2})
    assert err.value.field == "shard"
