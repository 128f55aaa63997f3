"""Layer 2 of the OpenSearch tests: the backend against osmem-server, an in-memory reimplementation of
OpenSearch's REST API started here as a subprocess.

Covered: the index template and mapping, bulk ingestion in batches, BM25 search, get, upsert and delete,
per-document bulk failures (osmem enforces mappings, so a metadata type conflict is a real one),
retries of requests and of documents refused with 429/5xx, the alias swap of a reindex (and a failed
build leaving the alias alone, and writes made during the build), clean-up of old versions,
migration from an embedded index and the CLI.

Not covered here, because osmem-server has no k-NN and no search pipelines: dense and hybrid search,
the fusion pipelines and the k-NN mapping's behaviour. tests/test_opensearch_cluster.py runs those
against a real cluster when OPENSEARCH_URL is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_index import CORPUS, NEW_BAKE

from grouprank.errors import GroupRankError, InputError, NotFoundError
from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.embedder import load_embedder
from indexer.index import Index
from indexer.opensearch import BulkError, OpenSearchConfig, OpenSearchIndex
from indexer.opensearch.migrate import migrate

osmem_pkg = pytest.importorskip("osmem_server", reason="osmem-server is not installed (pip install osmem-server)")


@pytest.fixture(scope="module")
def osmem():
    server = osmem_pkg.OsmemServer.start(japanese=False, addr="127.0.0.1:0")  # port 0: a free port
    yield server
    server.close()


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2")


def config_for(url: str, **settings) -> OpenSearchConfig:
    """Settings for a fresh alias (tests share the server), with short retry waits."""
    return OpenSearchConfig(url=url, alias=f"t-{uuid.uuid4().hex[:10]}", replicas=0, backoff_s=0.01, **settings)


@pytest.fixture(scope="module")
def corpus_vectors(embedder):
    return embedder.encode([doc.body for doc in CORPUS])


@pytest.fixture
def index(osmem, corpus_vectors):
    """A fresh index of the corpus (its vectors computed once per module: upsert itself is tested below)."""
    with OpenSearchIndex.create(config_for(osmem.url)) as index:
        assert index.write_documents(CORPUS, corpus_vectors, progress=False).written == len(CORPUS)
        yield index


def ids(hits):
    return [h.id for h in hits]


class FaultProxy:
    """A real HTTP proxy in front of osmem that can answer chosen requests itself, to play a loaded cluster
    (osmem never answers 429 or 5xx). ``rules`` are called with (method, path, body); the first that
    returns (status, json_body) answers, else the request goes to osmem. ``requests`` logs (method, path)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list = []
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests.append((self.command, self.path))
                for rule in list(proxy.rules):
                    answer = rule(self.command, self.path, body)
                    if answer is not None:
                        status, payload = answer
                        return self.reply(status, json.dumps(payload).encode())
                request = urllib.request.Request(proxy.upstream + self.path, data=body or None, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        self.reply(response.status, response.read())
                except urllib.error.HTTPError as exc:
                    self.reply(exc.code, exc.read())

            def reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bulk_requests(self) -> int:
        return sum(path.startswith("/_bulk") for _, path in self.requests)


@pytest.fixture
def proxy(osmem):
    proxy = FaultProxy(osmem.url)
    yield proxy
    proxy.close()


def answer_bulk(answers: list):
    """A rule that answers the next bulk requests with ``answers`` (a status, or "reject each" for a 200
    whose items are all 429, as OpenSearch answers when its write queue is full), then lets them through."""

    def rule(method, path, body):
        if not path.startswith("/_bulk") or not answers:
            return None
        answer = answers.pop(0)
        if answer == "reject each":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            items = []
            for line in lines:
                op = next(iter(line))
                if op in ("index", "delete") and isinstance(line[op], dict) and "_id" in line[op]:
                    items.append({op: {"_index": line[op]["_index"], "_id": line[op]["_id"], "status": 429,
                                       "error": {"type": "es_rejected_execution_exception",
                                                 "reason": "rejected execution of coordinating operation"}}})
            return 200, {"took": 1, "errors": True, "items": items}
        return answer, {"error": {"root_cause": [{"type": "overloaded", "reason": "try later"}], "type": "overloaded",
                                  "reason": "try later"}, "status": answer}

    return rule


# -- the mapping and ingestion ---------------------------------------------------------------------------
def test_create_puts_the_template_and_version_one_behind_the_alias(osmem, embedder):
    config = config_for(osmem.url, hnsw_m=16)
    with OpenSearchIndex.create(config) as index:
        client = index.client
        assert list(client.indices.get_alias(name=config.alias)) == [f"{config.alias}-v000001"]
        template = client.indices.get_index_template(name=config.alias)["index_templates"][0]["index_template"]
        assert template["index_patterns"] == [f"{config.alias}-v*"]
        mapping = client.indices.get_mapping(index=config.alias)[f"{config.alias}-v000001"]["mappings"]
        vector = mapping["properties"]["embedding"]
        assert (vector["type"], vector["dimension"], vector["method"]["space_type"]) == ("knn_vector", 384,
                                                                                          "innerproduct")
        assert vector["method"]["parameters"]["m"] == 16
        assert mapping["_meta"]["grouprank"] == {"embedder": "all-MiniLM-L6-v2", "dim": 384}
        assert len(index) == 0 and index.search("anything at all", 5, "bm25") == []
        with pytest.raises(InputError, match="already has an index or alias"):
            OpenSearchIndex.create(config)
    with OpenSearchIndex.open(config) as reopened:
        assert reopened.dim == 384
    with pytest.raises(InputError, match="embedded with 'all-MiniLM-L6-v2'") as err:
        OpenSearchIndex.open(config.with_(embedder="another-model"))
    assert err.value.field == "embedder"
    with pytest.raises(NotFoundError, match="no grouprank index"):
        OpenSearchIndex.open(config.with_(alias="no-such-alias"))


def test_bulk_ingestion_in_batches_stores_everything(osmem, proxy, embedder):
    config = config_for(proxy.url, bulk_docs=3)
    with OpenSearchIndex.create(config) as index:
        assert index.upsert(CORPUS, progress=False) == len(CORPUS)
        assert proxy.bulk_requests() == 4  # 11 documents, 3 per request
        assert len(index) == len(CORPUS)
        assert sorted(d.id for d in index.iter_documents()) == sorted(d.id for d in CORPUS)
        for doc in CORPUS:
            assert index.get(doc.id) == doc  # title, text, metadata and unicode round-trip
        np.testing.assert_allclose(index.embeddings(["jazz", "astro"]),
                                   embedder.encode([CORPUS[8].body, CORPUS[0].body]), atol=1e-6)
        with pytest.raises(NotFoundError, match="'nope'"):
            index.embeddings(["jazz", "nope"])


def test_bm25_search_hits(index):
    hits = index.search("coffee espresso", 3, "bm25")
    assert ids(hits)[:1] == ["espresso"]
    assert all(set(h.scores) == {"bm25"} == set(h.ranks) and h.score == h.scores["bm25"] for h in hits)
    assert [h.ranks["bm25"] for h in hits] == list(range(1, len(hits) + 1))
    top = hits[0]
    assert (top.title, top.text, top.metadata) == ("Coffee", CORPUS[4].text, {})
    assert index.search("bees", 1, "bm25")[0].metadata == {"source": "field notes", "tags": ["insects", "food"]}
    assert ids(index.search("Knead the bread", 1, "bm25")) == ["bake"]  # title and text are both searched
    assert ids(index.search("Baking", 1, "bm25")) == ["bake"]  # the title alone
    assert index.search("the of and", 5, "bm25") == []


def test_upsert_replaces_and_delete_removes(index):
    assert index.upsert([NEW_BAKE], progress=False) == 1
    assert index.delete(["volcano", "no-such-id"]) == 1
    assert index.delete("volcano") == 0
    assert len(index) == len(CORPUS) - 1
    assert index.get("bake") == NEW_BAKE and index.get("volcano") is None
    assert "bake" not in ids(index.search("bread dough oven", 10, "bm25"))
    assert ids(index.search("submarine sonar ocean", 10, "bm25")) == ["bake"]
    assert index.search("lava crater volcano", 10, "bm25") == []


def test_unchanged_documents_keep_their_stored_vectors(index, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("re-encoded an unchanged document")

    monkeypatch.setattr(index.embedder, "encode", fail)
    changed_metadata = Document("jazz", CORPUS[8].text, CORPUS[8].title, {"era": "bebop"})
    assert index.upsert([CORPUS[0], changed_metadata], progress=False) == 2
    assert index.get("jazz").metadata == {"era": "bebop"}


def test_a_mapping_conflict_fails_one_document_and_the_rest_are_stored(index):
    batch = [Document("m1", "A paper from 1999.", metadata={"year": 1999}),
             Document("m2", "A paper from an unknown year.", metadata={"year": "nineteen ninety"}),
             Document("m3", "A paper without metadata.")]
    with pytest.raises(BulkError) as err:
        index.upsert(batch, progress=False)
    report = err.value.report
    assert report.written == 2 and [f.id for f in report.failures] == ["m2"]
    failure = report.failures[0]
    assert failure.status == 400 and failure.type == "mapper_parsing_exception" and "metadata.year" in failure.reason
    assert "'m2'" in str(err.value) and "the others were stored" in str(err.value)
    assert index.get("m1") == batch[0] and index.get("m3") == batch[2] and index.get("m2") is None
    assert len(index) == len(CORPUS) + 2  # nothing stored before was lost
    again = index.bulk_upsert([Document("m2", "Fixed.", metadata={"year": 1998})], progress=False)
    assert again.ok and index.get("m2").metadata == {"year": 1998}


def test_an_invalid_document_stores_nothing(index, proxy):
    with pytest.raises(InputError) as err:
        index.upsert([Document("new", "Penguins huddle."), Document("broken", 42)], progress=False)
    assert err.value.field == "text" and "document #2 (id 'broken')" in str(err.value)
    with pytest.raises(InputError, match="longer than OpenSearch's 512 bytes"):
        index.upsert([Document("x" * 600, "too long an id")], progress=False)
    assert index.get("new") is None and len(index) == len(CORPUS)


# -- retries -----------------------------------------------------------------------------------------
def test_refusals_with_429_and_503_are_retried(proxy, embedder):
    proxy.rules.append(answer_bulk([429, 503, "reject each"]))
    with OpenSearchIndex.create(config_for(proxy.url)) as index:
        report = index.bulk_upsert(CORPUS[:4], progress=False)
        assert report.ok and report.written == 4 and report.retried == 4
        assert proxy.bulk_requests() == 4  # two refused requests, one with every item refused, one stored
        assert sorted(d.id for d in index.iter_documents()) == sorted(d.id for d in CORPUS[:4])


def test_documents_still_refused_after_the_retries_are_reported(proxy, embedder):
    with OpenSearchIndex.create(config_for(proxy.url, retries=1)) as index:
        proxy.rules.append(answer_bulk(["reject each", "reject each"]))
        report = index.bulk_upsert(CORPUS[:3], progress=False)
        assert report.written == 0 and sorted(f.id for f in report.failures) == sorted(d.id for d in CORPUS[:3])
        assert {(f.status, f.type) for f in report.failures} == {(429, "es_rejected_execution_exception")}
        proxy.rules.append(answer_bulk([500, 500]))
        with pytest.raises(GroupRankError, match=r"refused writing.*500"):
            index.upsert(CORPUS[:3], progress=False)
        assert len(index) == 0


# -- reindex with aliases ----------------------------------------------------------------------------------
def test_reindex_swaps_the_alias_and_cleans_up_after_the_grace_period(index, embedder):
    alias = index.config.alias
    before = {d.id: d for d in index.iter_documents()}
    vectors = index.embeddings(sorted(before))
    assert index.reindex(progress=False, config=index.config.with_(hnsw_m=8)) == f"{alias}-v000002"
    assert index.generation == f"{alias}-v000002"
    assert {d.id: d for d in index.iter_documents()} == before
    np.testing.assert_allclose(index.embeddings(sorted(before)), vectors, atol=1e-7)  # vectors copied, not recomputed
    mapping = index.client.indices.get_mapping(index=f"{alias}-v000002")[f"{alias}-v000002"]["mappings"]
    assert mapping["properties"]["embedding"]["method"]["parameters"]["m"] == 8
    assert mapping["_meta"]["grouprank"]["serving_since"] > 0
    assert ids(index.search("bread dough oven", 1, "bm25")) == ["bake"]
    # The old version is kept for the grace period (an hour by default), then deleted.
    assert index.stats()["versions"] == [f"{alias}-v000001", f"{alias}-v000002"]
    assert index.cleanup() == []
    assert index.cleanup(grace_s=0) == [f"{alias}-v000001"]
    assert index.stats()["versions"] == [f"{alias}-v000002"]


def test_a_failed_build_leaves_the_alias_on_the_old_version(proxy, corpus_vectors):
    config = config_for(proxy.url, retries=1)
    with OpenSearchIndex.create(config) as index:
        index.write_documents(CORPUS, corpus_vectors, progress=False)
        proxy.rules.append(lambda method, path, body: (500, {"error": "disk full"})
                           if path.startswith("/_bulk") and b"-v000002" in body else None)
        with pytest.raises(GroupRankError, match="500"):
            index.reindex(progress=False)
        assert index.generation == f"{config.alias}-v000001"
        assert index.stats()["versions"] == [f"{config.alias}-v000001"]  # the half-built version is gone
        assert ids(index.search("bread dough oven", 1, "bm25")) == ["bake"] and len(index) == len(CORPUS)


def test_writes_made_during_a_build_reach_the_new_version(osmem, proxy, corpus_vectors):
    config = config_for(proxy.url)
    with OpenSearchIndex.create(config) as index:
        index.write_documents(CORPUS, corpus_vectors, progress=False)
        done = []

        def write_meanwhile(method, path, body):
            # The first copy request to the new version: another writer (straight to osmem) changes things.
            if path.startswith("/_bulk") and b"-v000002" in body and not done:
                done.append(True)
                with OpenSearchIndex.open(config.with_(url=osmem.url)) as other:
                    other.upsert([Document("late", "Written while the new version was being built."), NEW_BAKE],
                                 progress=False)
                    other.delete(["volcano"])
            return None

        proxy.rules.append(write_meanwhile)
        index.reindex(progress=False)
        assert done and index.generation == f"{config.alias}-v000002"
        assert index.get("late") is not None and index.get("bake") == NEW_BAKE and index.get("volcano") is None
        assert len(index) == len(CORPUS)  # one added, one deleted
        assert ids(index.search("submarine sonar", 1, "bm25")) == ["bake"]


def test_writes_made_after_the_catch_up_reach_the_new_version(osmem, corpus_vectors, monkeypatch):
    config = config_for(osmem.url)
    with OpenSearchIndex.create(config) as index:
        index.write_documents(CORPUS, corpus_vectors, progress=False)
        catch_up = OpenSearchIndex._catch_up
        done = []

        def catch_up_then_write(self, old, new, since_ms):
            catch_up(self, old, new, since_ms)
            if not done:  # another writer, after the catch-up and before the alias moves
                done.append(True)
                with OpenSearchIndex.open(config) as other:
                    other.upsert([Document("late", "Written just before the alias moved."), NEW_BAKE], progress=False)
                    assert other.delete(["volcano"]) == 1

        monkeypatch.setattr(OpenSearchIndex, "_catch_up", catch_up_then_write)
        index.reindex(progress=False)
        assert done and index.generation == f"{config.alias}-v000002"
        assert index.get("late") is not None and index.get("bake") == NEW_BAKE and index.get("volcano") is None
        assert len(index) == len(CORPUS)


def test_a_write_that_meets_the_alias_swap_lands_on_the_new_version(osmem, corpus_vectors, embedder, monkeypatch):
    """A write sent while the alias moves waits for the move (the old version refuses writes meanwhile)
    and is then stored in the new version; the writer sees it succeed."""
    from indexer.opensearch import bulk

    config = config_for(osmem.url)
    late = Document("late", "Written while the alias moved.")
    with OpenSearchIndex.create(config) as index, OpenSearchIndex.open(config) as other:
        index.write_documents(CORPUS, corpus_vectors, progress=False)
        attempted, outcome = threading.Event(), {}
        real_write = bulk.write

        def write(client, *args, **kwargs):
            report = real_write(client, *args, **kwargs)
            if client is other.client:
                attempted.set()
            return report

        def writer() -> None:
            try:
                outcome["report"] = other.write_documents([late], embedder.encode([late.body]), progress=False)
            except Exception as exc:
                outcome["error"] = exc

        swap = index.client.indices.update_aliases
        thread = threading.Thread(target=writer)

        def write_then_swap(*args, **kwargs):
            thread.start()
            assert attempted.wait(30)  # the write reached the cluster before the alias moved
            return swap(*args, **kwargs)

        monkeypatch.setattr(bulk, "write", write)
        monkeypatch.setattr(index.client.indices, "update_aliases", write_then_swap)
        index.reindex(progress=False)
        thread.join(30)
        assert "error" not in outcome and outcome["report"].ok and outcome["report"].written == 1, outcome
        assert index.generation == f"{config.alias}-v000002" and index.get("late") == late
        assert len(index) == len(CORPUS) + 1


# -- what osmem cannot do -----------------------------------------------------------------------------------
def test_dense_search_on_a_cluster_without_knn_is_a_clean_error(index):
    with pytest.raises(GroupRankError, match=r"refused searching .*\(dense\).*knn"):
        index.search("anything", 3, "dense")


# -- migration ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded(tmp_path_factory, embedder):
    path = tmp_path_factory.mktemp("migrate") / "idx"
    with Index.create(path, IndexConfig(hnsw_m=16, fusion="weighted", dense_weight=0.3)) as index:
        index.upsert(CORPUS, progress=False)
    return path


def test_migration_copies_documents_and_stored_vectors(osmem, embedded, monkeypatch):
    with Index.open(embedded) as source:
        monkeypatch.setattr(source.embedder, "encode", lambda *a, **k: pytest.fail("re-embedded a stored document"))
        config = OpenSearchConfig.from_index_config(source.config, url=osmem.url, alias=f"m-{uuid.uuid4().hex[:8]}",
                                                    replicas=0)
        target, report = migrate(source, config, progress=False)
        with target:
            assert report.ok and report.written == len(CORPUS)
            assert {d.id: d for d in target.iter_documents()} == {d.id: d for d in source.iter_documents()}
            every = sorted(d.id for d in CORPUS)
            np.testing.assert_allclose(target.embeddings(every), source.embeddings(every), atol=1e-7)
            assert (target.config.hnsw_m, target.config.fusion, target.config.dense_weight) == (16, "weighted", 0.3)
            assert target.client.indices.get_mapping(index=config.alias)[target.generation]["mappings"][
                "properties"]["embedding"]["method"]["parameters"]["m"] == 16
            assert ids(target.search("bread dough oven", 1, "bm25")) == ["bake"]
    with Index.open(embedded) as source, pytest.raises(InputError, match="same embedder"):
        migrate(source, config.with_(embedder="another-model"), progress=False)


def test_cli_migrate_then_search(osmem, embedded):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GROUPRANK_PROGRESS": "0", "COLUMNS": "200",
           "GROUPRANK_OPENSEARCH_URL": osmem.url}
    alias = f"cli-{uuid.uuid4().hex[:8]}"

    def grouprank(*args):
        return subprocess.run([sys.executable, "-m", "grouprank.cli.main", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    result = grouprank("index", "migrate", str(embedded), "--to", "opensearch", "--alias", alias, "--replicas", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stored {len(CORPUS)} documents" in result.stdout
    result = grouprank("search", "bread dough oven", "--alias", alias, "--mode", "bm25", "-k", "2",
                       "--json")  # the URL from $GROUPRANK_OPENSEARCH_URL
    assert result.returncode == 0, result.stdout + result.stderr
    hits = json.loads(result.stdout)
    assert hits[0]["id"] == "bake" and hits[0]["ranks"] == {"bm25": 1}
    result = grouprank("search", "bread", "--alias", "no-such-alias", "--mode", "bm25")
    assert result.returncode == 2 and "no grouprank index 'no-such-alias'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_index_reports_refused_documents_then_reindex_stats_and_cleanup(osmem, tmp_path, embedder):
    from typer.testing import CliRunner

    from grouprank.cli.main import app

    data = tmp_path / "docs.jsonl"
    records = [{"id": "a", "text": "Wings make lift.", "metadata": {"year": 1999}},
               {"id": "b", "text": "Heat flows in slabs.", "metadata": {"year": "unknown"}},
               {"id": "c", "text": "Supersonic flow."}]
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    alias = f"cli-{uuid.uuid4().hex[:8]}"
    where = ["--opensearch-url", osmem.url, "--alias", alias]
    runner = CliRunner(env={"GROUPRANK_PROGRESS": "0", "COLUMNS": "200"})
    result = runner.invoke(app, ["index", "--data", str(data), *where, "--replicas", "0"])
    assert isinstance(result.exception, BulkError)  # the entry point prints it and exits with code 2
    assert "stored 2 documents" in result.output and "not stored 'b': mapper_parsing_exception" in result.output
    result = runner.invoke(app, ["reindex", *where, "--hnsw-m", "12"])
    assert result.exit_code == 0 and f"{alias} now names {alias}-v000002" in result.output, result.output
    result = runner.invoke(app, ["opensearch", "cleanup", *where, "--grace-s", "0"])
    assert result.exit_code == 0 and f"deleted {alias}-v000001" in result.output, result.output
    stats = json.loads(runner.invoke(app, ["stats", *where]).stdout)
    assert (stats["documents"], stats["generation"], stats["versions"]) == (2, f"{alias}-v000002",
                                                                           [f"{alias}-v000002"])
    assert stats["hnsw_m"] == 12  # read from the serving version, not the defaults
    result = runner.invoke(app, ["reindex", *where])  # keeps m = 12
    assert result.exit_code == 0, result.output
    stats = json.loads(runner.invoke(app, ["stats", *where]).stdout)
    assert (stats["generation"], stats["hnsw_m"]) == (f"{alias}-v000003", 12)


def test_training_mines_through_the_opensearch_alias(osmem, index, tmp_path):
    """``grouprank train mine --opensearch-url`` mines from the serving alias (BM25: osmem has no k-NN),
    through ``open_index`` like the service."""
    from typer.testing import CliRunner

    from grouprank.cli.main import app
    from trainer.mining import read_mined

    (tmp_path / "queries.tsv").write_text("q1\thow is bread baked in an oven\nq2\tstars and galaxies\n")
    (tmp_path / "qrels.tsv").write_text("q1\t0\tbake\t1\nq2\t0\tastro\t1\n")
    runner = CliRunner(env={"GROUPRANK_PROGRESS": "0", "COLUMNS": "200"})
    result = runner.invoke(app, ["train", "mine", "--opensearch-url", osmem.url, "--alias", index.config.alias,
                                 "--mode", "bm25", "--queries", str(tmp_path / "queries.tsv"),
                                 "--qrels", str(tmp_path / "qrels.tsv"), "--out", str(tmp_path / "mined"),
                                 "--depth", "3", "--test-fraction", "0.5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    mined = read_mined(tmp_path / "mined" / "mined-train.jsonl") + read_mined(tmp_path / "mined" / "mined-test.jsonl")
    by_query = {m.qid: m for m in mined}
    assert set(by_query) == {"q1", "q2"}
    assert by_query["q1"].candidates[0].id == "bake" and by_query["q1"].candidates[0].label == 1
    assert by_query["q2"].candidates[0].id == "astro"
    both = runner.invoke(app, ["train", "mine", "--opensearch-url", osmem.url, "--index", str(tmp_path),
                               "--queries", str(tmp_path / "queries.tsv"), "--qrels", str(tmp_path / "qrels.tsv"),
                               "--out", str(tmp_path / "x")])
    assert isinstance(both.exception, InputError) and "exactly one of --index" in str(both.exception)
