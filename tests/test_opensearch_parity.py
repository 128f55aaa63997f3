"""The same retrieval tests on every backend: the embedded index, OpenSearch as osmem-server plays it,
and a real OpenSearch cluster when OPENSEARCH_URL is set.

Each test states what it needs; osmem-server has no k-NN and no search pipelines, so dense and hybrid
search run on the embedded index and the real cluster only.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_index import CORPUS, NEW_BAKE

from grouprank.errors import InputError
from indexer.backends import open_index
from indexer.config import IndexConfig, resolve_encoder
from indexer.documents import Document
from indexer.embedder import load_embedder
from indexer.index import Index
from indexer.protocol import SearchIndex
from tests.opensearch_cleanup import drop

BACKENDS = ["embedded", "osmem", "cluster"]
CLUSTER_URL = os.environ.get("OPENSEARCH_URL")
NO_CLUSTER = ("OPENSEARCH_URL is not set: the real-cluster layer runs against an OpenSearch node, e.g. "
              "`docker compose up -d opensearch` and OPENSEARCH_URL=http://localhost:9200")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def osmem_url():
    osmem_server = pytest.importorskip("osmem_server", reason="osmem-server is not installed")
    server = osmem_server.OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    yield server.url
    server.close()


def supports(backend: str, mode: str) -> None:
    """Skip unless ``backend`` can search in ``mode``."""
    if backend == "osmem" and mode != "bm25":
        pytest.skip(f"osmem-server has no k-NN or search pipelines ({mode} search)")


@pytest.fixture(scope="module")
def template(tmp_path_factory, embedder):
    """The corpus embedded once: an embedded index to copy, and the vectors for OpenSearch."""
    path = tmp_path_factory.mktemp("parity-template") / "idx"
    with Index.create(path, IndexConfig(encoder="torch")) as index:  # OpenSearchConfig's encoder: queries alike
        index.upsert(CORPUS, progress=False)
        vectors = index.embeddings([doc.id for doc in CORPUS])
    return path, vectors


def build(backend: str, request: pytest.FixtureRequest, path: Path) -> Iterator[SearchIndex]:
    """An index of the corpus on ``backend`` (upsert itself is tested below)."""
    template_path, vectors = request.getfixturevalue("template")
    if backend == "embedded":
        shutil.copytree(template_path, path)
        with open_index(path) as index:
            yield index
        return
    if backend == "cluster" and not CLUSTER_URL:
        pytest.skip(NO_CLUSTER)
    url = CLUSTER_URL if backend == "cluster" else request.getfixturevalue("osmem_url")
    alias = f"parity-{uuid.uuid4().hex[:10]}"
    # One shard, so BM25 statistics (and so scores) are corpus-wide as in the embedded index.
    with open_index(backend="opensearch", url=url, alias=alias, replicas=0, create=True) as index:
        try:
            assert index.write_documents(CORPUS, vectors, progress=False).written == len(CORPUS)
            yield index
        finally:
            drop(index)


@pytest.fixture(params=BACKENDS)
def fresh(request, tmp_path):
    """A new index of the corpus on each backend, for tests that write."""
    yield from build(request.param, request, tmp_path / "idx")


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request, tmp_path_factory):
    """One index of the corpus per backend, for tests that only read."""
    yield from build(request.param, request, tmp_path_factory.mktemp("parity") / "idx")


def backend_of(index) -> str:
    if isinstance(index, Index):
        return "embedded"
    return "cluster" if CLUSTER_URL and index.config.url == CLUSTER_URL else "osmem"


def ids(hits):
    return [h.id for h in hits]


def test_every_backend_satisfies_the_protocol(shared):
    assert isinstance(shared, SearchIndex)


def test_documents_round_trip(shared, embedder):
    assert len(shared) == len(CORPUS)
    assert sorted(d.id for d in shared.iter_documents()) == sorted(d.id for d in CORPUS)
    for doc in CORPUS:
        assert shared.get(doc.id) == doc
    assert shared.get("no-such-id") is None
    np.testing.assert_allclose(shared.embeddings(["jazz", "astro"]),
                               embedder.encode([CORPUS[8].body, CORPUS[0].body]), atol=1e-5)


def test_upsert_and_delete_semantics(fresh):
    assert fresh.upsert([Document("dup", "first version"), Document("dup", "second version")], progress=False) == 1
    assert fresh.get("dup").text == "second version"
    assert fresh.upsert([NEW_BAKE], progress=False) == 1
    assert fresh.delete(["volcano", "no-such-id"]) == 1
    assert fresh.delete("dup") == 1 and fresh.delete("dup") == 0
    assert len(fresh) == len(CORPUS) - 1
    assert fresh.get("bake") == NEW_BAKE and fresh.get("volcano") is None
    assert "bake" not in ids(fresh.search("bread dough oven", 10, "bm25"))
    assert ids(fresh.search("submarine sonar ocean", 10, "bm25")) == ["bake"]
    assert fresh.search("lava crater volcano", 10, "bm25") == []


@pytest.mark.parametrize(("bad", "field"), [
    (Document("", "no id"), "id"),
    (Document("x", "t", title=None), "title"),
    (Document("x", "t", metadata=["not", "a", "dict"]), "metadata"),
    (Document("x", "t", metadata={"score": float("nan")}), "metadata"),
    (Document("x", "lone surrogate \ud800"), "text"),
])
def test_an_invalid_document_stores_nothing(fresh, bad, field):
    with pytest.raises(InputError) as err:
        fresh.upsert([Document("new", "Penguins huddle in the Antarctic winter."), bad], progress=False)
    assert err.value.field == field and "document #2" in str(err.value)
    assert fresh.get("new") is None and len(fresh) == len(CORPUS)


def test_bm25_search(shared):
    hits = shared.search("coffee espresso", 3, "bm25")
    assert ids(hits)[:1] == ["espresso"]
    assert all(set(h.scores) == {"bm25"} == set(h.ranks) and h.score == h.scores["bm25"] for h in hits)
    assert [h.ranks["bm25"] for h in hits] == list(range(1, len(hits) + 1))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert (hits[0].title, hits[0].text, hits[0].metadata) == ("Coffee", CORPUS[4].text, {})
    assert shared.search("bees", 1, "bm25")[0].metadata == {"source": "field notes", "tags": ["insects", "food"]}
    assert ids(shared.search("bread dough oven", 1, "bm25")) == ["bake"]
    assert ids(shared.search("Glaciers", 1, "bm25")) == ["glacier"]  # stemmed: glacier(s)
    assert ids(shared.search("flügel flugzeugs", 1, "bm25")) == ["flügel"]
    assert shared.search("the of and", 5, "bm25") == []  # stop words only
    batch = shared.search_batch(["coffee", "ice in the mountains"], 3, "bm25")
    assert [ids(b) for b in batch] == [ids(shared.search(q, 3, "bm25")) for q in ("coffee", "ice in the mountains")]


def test_bm25_counts_a_repeated_query_term_per_occurrence(shared):
    """BM25 sums over query-term occurrences on every backend, as a ``match`` query does in OpenSearch."""
    assert ids(shared.search("water ice", 2, "bm25")) == ["glacier", "espresso"]
    assert ids(shared.search("water ice ice", 2, "bm25")) == ["glacier", "espresso"]
    assert ids(shared.search("water water ice", 2, "bm25")) == ["espresso", "glacier"]
    assert ids(shared.search("waters, the water and ice", 2, "bm25")) == ["espresso", "glacier"]  # after analysis
    single = {q: {h.id: h.score for h in shared.search(q, 5, "bm25")} for q in ("water", "ice")}
    scores = {h.id: h.score for h in shared.search("water ice water", 5, "bm25")}
    assert scores == pytest.approx({"espresso": 2 * single["water"]["espresso"], "glacier": single["ice"]["glacier"]},
                                   rel=1e-5)


def test_bad_search_input(shared):
    for query in ("", "   \n\t"):
        with pytest.raises(InputError, match="empty"):
            shared.search(query)
    with pytest.raises(InputError, match="query #2 is empty"):
        shared.search_batch(["fine", ""])
    with pytest.raises(InputError, match=r"unknown mode 'semantic'; expected one of: bm25, dense, hybrid"):
        shared.search("coffee", mode="semantic")
    with pytest.raises(InputError, match=r"unknown fusion 'max'; expected one of: rrf, weighted"):
        shared.search("coffee", fusion="max")
    with pytest.raises(InputError) as err:
        shared.search("coffee", k=0)
    assert err.value.field == "k"


def test_dense_search(shared, embedder):
    supports(backend_of(shared), "dense")
    hits = shared.search("a drink made from roasted beans", 3, "dense")
    assert ids(hits)[:1] == ["espresso"] and [h.ranks["dense"] for h in hits] == [1, 2, 3]
    query = embedder.encode(["a drink made from roasted beans"])[0]
    for hit in hits:  # the score is the cosine, on both backends
        doc = shared.get(hit.id)
        assert hit.score == hit.scores["dense"] == pytest.approx(float(query @ embedder.encode([doc.body])[0]),
                                                                 abs=1e-4)


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_search(shared, fusion):
    supports(backend_of(shared), "hybrid")
    hits = shared.search("coffee espresso", 5, "hybrid", fusion=fusion)
    assert ids(hits)[0] == "espresso" and len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    bm25_only = shared.search("hot water", 3, "hybrid", fusion="weighted", dense_weight=0.0)
    assert ids(bm25_only)[:2] == ids(shared.search("hot water", 2, "bm25"))


def test_reindex_serves_the_same_documents(fresh):
    before = fresh.generation
    after = fresh.reindex(progress=False)
    assert after != before and fresh.generation == after
    assert sorted(d.id for d in fresh.iter_documents()) == sorted(d.id for d in CORPUS)
    assert ids(fresh.search("bread dough oven", 1, "bm25")) == ["bake"]
    assert fresh.upsert([NEW_BAKE], progress=False) == 1  # writes go to the new generation
    assert ids(fresh.search("submarine sonar", 1, "bm25")) == ["bake"]


def test_open_index_picks_the_backend(tmp_path, osmem_url, embedder):
    from indexer.opensearch import OpenSearchConfig, OpenSearchIndex

    with open_index(tmp_path / "e", create=True, dense_index="hnsw") as embedded:
        assert isinstance(embedded, Index) and embedded.config == IndexConfig(
            dense_index="hnsw", encoder=resolve_encoder("auto", "cpu"))
    with open_index(tmp_path / "e") as again:
        assert isinstance(again, Index)
    alias = f"factory-{uuid.uuid4().hex[:8]}"
    with open_index({"backend": "opensearch", "url": osmem_url, "alias": alias}, create=True, replicas=0) as remote:
        assert isinstance(remote, OpenSearchIndex) and remote.generation == f"{alias}-v000001"
    with open_index(OpenSearchConfig(url=osmem_url, alias=alias)) as remote:
        assert isinstance(remote, OpenSearchIndex) and len(remote) == 0
    with pytest.raises(InputError, match="unknown backend 'solr'"):
        open_index(backend="solr")
    with pytest.raises(InputError, match="only apply when creating"):
        open_index(tmp_path / "e", dense_index="flat")
