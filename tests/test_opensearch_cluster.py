"""Layer 3 of the OpenSearch tests: what only a real cluster can show (k-NN, search pipelines), plus the
writes, reindex and migration again on the real thing. Runs when OPENSEARCH_URL is set, e.g. against
docker compose's opensearch service:

    docker compose up -d opensearch
    OPENSEARCH_URL=http://localhost:9200 pytest tests/test_opensearch_cluster.py tests/test_opensearch_parity.py

The parity suite (tests/test_opensearch_parity.py) runs its BM25, dense and hybrid tests on the cluster too.
Hybrid search needs the neural-search plugin; RRF needs OpenSearch 2.19 or later.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from test_index import CORPUS

from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.embedder import load_embedder
from indexer.index import Index
from indexer.opensearch import BulkError, OpenSearchConfig, OpenSearchIndex, pipelines
from indexer.opensearch.migrate import migrate
from tests.opensearch_cleanup import drop

URL = os.environ.get("OPENSEARCH_URL")
pytestmark = pytest.mark.skipif(not URL, reason="OPENSEARCH_URL is not set: the real-cluster layer runs against an "
                                "OpenSearch node, e.g. `docker compose up -d opensearch` and "
                                "OPENSEARCH_URL=http://localhost:9200")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2")


@pytest.fixture
def make(embedder):
    """Creates OpenSearch indexes on the cluster (one shard, no replica) and removes them afterwards."""
    made = []

    def make(**settings) -> OpenSearchIndex:
        config = OpenSearchConfig(url=URL, alias=f"cluster-{uuid.uuid4().hex[:10]}", replicas=0, **settings)
        made.append(OpenSearchIndex.create(config))
        return made[-1]

    yield make
    for index in made:
        drop(index)
        index.close()


@pytest.fixture
def index(make):
    index = make()
    index.upsert(CORPUS, progress=False)
    return index


def test_the_cluster_accepts_our_mapping(index):
    name = index.generation
    mapping = index.client.indices.get_mapping(index=name)[name]["mappings"]
    method = mapping["properties"]["embedding"]["method"]
    assert (method["engine"], method["space_type"], method["name"]) == ("faiss", "innerproduct", "hnsw")
    assert index.client.indices.get_settings(index=name)[name]["settings"]["index"]["knn"] == "true"


def test_dense_scores_are_cosines(index, embedder):
    query = "a drink made from roasted beans"
    hits = index.search(query, len(CORPUS), "dense")
    assert hits[0].id == "espresso" and len(hits) == len(CORPUS)
    vector = embedder.encode([query])[0]
    expected = {d.id: float(vector @ v) for d, v in zip(CORPUS, embedder.encode([d.body for d in CORPUS]),
                                                         strict=True)}
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.id], abs=1e-4)
    assert [h.id for h in hits] == sorted(expected, key=lambda i: -expected[i])


def test_hybrid_rrf_fuses_the_two_rankings(index):
    query = "hot water"
    hits = index.search(query, 5, "hybrid", fusion="rrf", depth=len(CORPUS))
    bm25 = {h.id: h.ranks["bm25"] for h in index.search(query, len(CORPUS), "bm25")}
    dense = {h.id: h.ranks["dense"] for h in index.search(query, len(CORPUS), "dense")}
    for hit in hits:  # the score-ranker-processor's RRF with rank_constant 60
        expected = sum(1 / (60 + ranks[hit.id]) for ranks in (bm25, dense) if hit.id in ranks)
        assert hit.score == pytest.approx(expected, rel=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_fusion_pipelines_are_created_once_with_our_bodies(index):
    index.search("coffee", 3, "hybrid", fusion="weighted", dense_weight=0.25)
    name, body = pipelines.fusion_pipeline(index.config.alias, "weighted", 0.25, 60)
    stored = index.client.transport.perform_request("GET", f"/_search/pipeline/{name}")[name]
    assert stored["phase_results_processors"] == body["phase_results_processors"]
    # A second index object finds the pipeline as it should be and leaves it alone (idempotent).
    with OpenSearchIndex.open(index.config) as other:
        other.search("coffee", 3, "hybrid", fusion="weighted", dense_weight=0.25)
        assert name in other._pipelines
    only_bm25 = index.search("hot water", 2, "hybrid", fusion="weighted", dense_weight=0.0)
    assert [h.id for h in only_bm25] == [h.id for h in index.search("hot water", 2, "bm25")]


def test_a_mapping_conflict_fails_one_document(index):
    batch = [Document("m1", "From 1999.", metadata={"year": 1999}),
             Document("m2", "From some year.", metadata={"year": "nineteen ninety"}),
             Document("m3", "No metadata.")]
    with pytest.raises(BulkError) as err:
        index.upsert(batch, progress=False)
    assert [f.id for f in err.value.report.failures] == ["m2"] and err.value.report.written == 2
    assert err.value.report.failures[0].type == "mapper_parsing_exception"
    assert index.get("m1") == batch[0] and index.get("m3") == batch[2] and index.get("m2") is None


def test_reindex_on_the_cluster(index):
    before = sorted(d.id for d in index.iter_documents())
    name = index.reindex(progress=False, config=index.config.with_(hnsw_m=16))
    assert index.generation == name and sorted(d.id for d in index.iter_documents()) == before
    assert index.search("a drink made from roasted beans", 1, "dense")[0].id == "espresso"
    assert index.cleanup(grace_s=0) == [f"{index.config.alias}-v000001"]


def test_migration_gives_the_same_dense_ranking(tmp_path, embedder):
    with Index.create(tmp_path / "idx", IndexConfig()) as source:
        source.upsert(CORPUS, progress=False)
        config = OpenSearchConfig.from_index_config(source.config, url=URL, alias=f"cluster-{uuid.uuid4().hex[:10]}",
                                                    replicas=0)
        target, report = migrate(source, config, progress=False)
        try:
            assert report.ok and len(target) == len(CORPUS)
            every = sorted(d.id for d in CORPUS)
            np.testing.assert_allclose(target.embeddings(every), source.embeddings(every), atol=1e-7)
            for query in ("a drink made from roasted beans", "ice in the mountains"):
                ours = source.search(query, 5, "dense")
                theirs = target.search(query, 5, "dense")
                assert [h.id for h in theirs] == [h.id for h in ours]
                assert [h.score for h in theirs] == pytest.approx([h.score for h in ours], abs=1e-4)
        finally:
            drop(target)
            target.close()
