"""The hybrid index end to end: real tantivy, FAISS and all-MiniLM-L6-v2 on a small corpus."""

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from grouprank.errors import GroupRankError, InputError, NotFoundError
from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.embedder import load_embedder
from indexer.index import Hit, Index

REPO = Path(__file__).resolve().parents[1]
CORPUS = [
    Document("astro", "Telescopes observe distant galaxies and nebulae in the night sky.", "Astronomy"),
    Document("bake", "Knead the dough, let the bread rise, then bake it in a hot oven.", "Baking"),
    Document("chess", "The knight moves in an L shape and checkmate ends the game.", "Chess"),
    Document("dino", "Tyrannosaurus rex was a huge carnivorous dinosaur of the Cretaceous.", "Dinosaurs"),
    Document("espresso", "Espresso is brewed by forcing hot water through finely ground coffee.", "Coffee"),
    Document("football", "The striker scored a goal in the last minute of the football match.", ""),
    Document("glacier", "Glaciers are slow rivers of ice that carve valleys into mountains.", "Glaciers"),
    Document(
        "honey",
        "Honey bees collect nectar from flowers and store honey in the hive.",
        "Bees",
        {"source": "field notes", "tags": ["insects", "food"]},
    ),
    Document("jazz", "Jazz musicians improvise solos over swing rhythms on saxophone.", "Music"),
    Document("volcano", "Lava erupts from the crater of the volcano and flows down its slopes.", "Volcanoes"),
    Document("flügel", "Der Flügel des Flugzeugs trägt es durch die Luft — 日本語 — naïve café.", "Flügel ✈"),
]
NEW_BAKE = Document("bake", "Submarines use sonar to navigate the dark ocean depths.", "Submarines")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2", "auto")  # what IndexConfig() resolves to; shared by every Index


def make(path, kind="flat", docs=CORPUS, **settings):
    index = Index.create(path, IndexConfig(dense_index=kind, **settings))
    index.upsert(docs, progress=False)
    return index


@pytest.fixture
def index(tmp_path, embedder):
    """A fresh index of the corpus, for tests that write."""
    with make(tmp_path / "idx") as index:
        yield index


@pytest.fixture(scope="module")
def shared(tmp_path_factory, embedder):
    """One index of the corpus for the tests that only read."""
    with make(tmp_path_factory.mktemp("shared") / "idx") as index:
        yield index


@pytest.fixture
def tiny(tmp_path, embedder):
    with make(tmp_path / "tiny", docs=CORPUS[:2]) as index:
        yield index


def ids(hits):
    return [h.id for h in hits]


def cosine(embedder, query, doc):
    return float(embedder.encode([query])[0] @ embedder.encode([doc.body])[0])


def check_consistent(index, embedder):
    """After replacing "bake" by NEW_BAKE and deleting "volcano": every store agrees."""
    everything = len(CORPUS)
    assert len(index) == everything - 1
    assert index.get("bake") == NEW_BAKE and index.get("volcano") is None
    # BM25: the old text is gone, the new one is found, the deleted doc is gone
    assert "bake" not in ids(index.search("bread dough oven", 10, "bm25"))
    assert ids(index.search("submarine sonar ocean", 10, "bm25")) == ["bake"]
    assert index.search("lava crater volcano", 10, "bm25") == []
    # dense: every current doc exactly once, and "bake" scored with its new vector, not the old one
    hits = index.search("baking bread in a hot oven", everything, "dense")
    assert sorted(ids(hits)) == sorted(d.id for d in CORPUS if d.id != "volcano")
    bake = next(h for h in hits if h.id == "bake")
    assert bake.score == pytest.approx(cosine(embedder, "baking bread in a hot oven", NEW_BAKE), abs=1e-4)
    assert ids(index.search("submarine navigation under the sea", 1, "dense")) == ["bake"]
    assert "volcano" not in ids(index.search("lava erupting from a volcano", everything, "hybrid"))
    # and the hybrid hit carries the new text
    top = index.search("submarine sonar", 1)[0]
    assert (top.id, top.text, top.title) == ("bake", NEW_BAKE.text, NEW_BAKE.title)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_upsert_and_delete_reach_all_three_stores_and_survive_reopen(tmp_path, embedder, kind):
    path = tmp_path / kind
    with make(path, kind) as index:
        assert ids(index.search("bread dough oven", 1, "bm25")) == ["bake"]
        assert ids(index.search("baking bread in a hot oven", 1, "dense")) == ["bake"]
        assert index.upsert([NEW_BAKE], progress=False) == 1
        assert index.delete(["volcano", "no-such-id"]) == 1
        check_consistent(index, embedder)
        stats = index.stats()
        assert stats["lexical_documents"] == len(CORPUS) - 1
        if kind == "flat":
            assert stats["dense_vectors"] == len(CORPUS) - 1 and stats["stale_vectors"] == 0
        else:  # HNSW keeps the two retired vectors until a reindex
            assert stats["dense_vectors"] == len(CORPUS) + 1 and stats["stale_vectors"] == 2
    with Index.open(path) as reopened:
        assert reopened.stats()["dense_index"] == kind
        check_consistent(reopened, embedder)


def test_a_batch_with_one_invalid_document_stores_nothing(index):
    before = index.stats()
    batch = [
        Document("new", "Penguins huddle together in the Antarctic winter."),
        NEW_BAKE,
        Document("broken", 42),  # text must be a string
    ]
    with pytest.raises(InputError) as err:
        index.upsert(batch, progress=False)
    assert err.value.field == "text" and "document #3 (id 'broken')" in str(err.value)
    after = index.stats()
    assert (after["documents"], after["store_seq"], after["applied_seq"]) == (
        before["documents"],
        before["store_seq"],
        before["applied_seq"],
    )
    assert index.get("new") is None and index.get("bake") == CORPUS[1]
    assert index.search("penguins antarctic", 5, "bm25") == []
    assert ids(index.search("bread dough oven", 1, "bm25")) == ["bake"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Document("", "no id"), "id"),
        (Document("x", "t", title=None), "title"),
        (Document("x", "t", metadata=["not", "a", "dict"]), "metadata"),
        (Document("x", "t", metadata={"when": object()}), "metadata"),
        (Document("x", "t", metadata={"score": float("nan")}), "metadata"),
        (Document("x", "lone surrogate \ud800"), "text"),
    ],
)
def test_invalid_documents_are_named(tiny, bad, field):
    with pytest.raises(InputError) as err:
        tiny.upsert([CORPUS[0], bad], progress=False)
    assert err.value.field == field and "document #2" in str(err.value)


def test_not_a_document_is_rejected(tiny):
    with pytest.raises(InputError, match=r"expected an indexer\.documents\.Document, got dict"):
        tiny.upsert([{"id": "a", "text": "dict"}], progress=False)


def test_modes_and_hit_fields(shared):
    bm25 = shared.search("coffee espresso", 3, "bm25")
    assert ids(bm25)[:1] == ["espresso"]
    assert all(set(h.scores) == {"bm25"} == set(h.ranks) for h in bm25)
    assert [h.ranks["bm25"] for h in bm25] == list(range(1, len(bm25) + 1))
    assert all(h.score == h.scores["bm25"] for h in bm25)

    dense = shared.search("a drink made from roasted beans", 3, "dense")
    assert ids(dense)[:1] == ["espresso"] and len(dense) == 3
    assert [h.ranks["dense"] for h in dense] == [1, 2, 3]

    hybrid = shared.search("coffee espresso", 5)
    assert isinstance(hybrid[0], Hit) and hybrid[0].id == "espresso"
    top = hybrid[0]
    assert (top.title, top.text, top.metadata) == ("Coffee", CORPUS[4].text, {})
    for hit in hybrid:  # RRF with k = 60 from the hit's own ranks
        assert hit.score == pytest.approx(sum(1 / (60 + r) for r in hit.ranks.values()))
        assert set(hit.scores) == set(hit.ranks)
    assert shared.search("bees", 1)[0].metadata == {"source": "field notes", "tags": ["insects", "food"]}


def test_weighted_fusion_and_overrides(shared):
    for weight, only in ((0.0, "bm25"), (1.0, "dense")):
        fused = shared.search("hot water", 4, fusion="weighted", dense_weight=weight, depth=50)
        alone = shared.search("hot water", 4, only, depth=50)
        assert len(alone) >= 2
        assert ids(fused)[: len(alone)] == ids(alone)  # the other retriever's candidates add 0
        assert all(h.score == 0.0 for h in fused[len(alone) :])
    hits = shared.search("hot water", 11, fusion="weighted", dense_weight=0.3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(0.0 <= h.score <= 1.0 for h in hits)


def test_depth_limits_each_retriever(shared):
    hits = shared.search("the hot volcano", 10, "dense", depth=3)
    assert len(hits) == 10  # depth never goes below k
    assert len(shared.search("hot oven", 1, "hybrid", depth=1)) == 1


def test_search_batch_equals_search(shared):
    queries = ["coffee", "ice in the mountains", "Flügel", "game of kings"]
    for mode in ("bm25", "dense", "hybrid"):
        batch = shared.search_batch(queries, 4, mode)
        for query, hits in zip(queries, batch, strict=True):
            single = shared.search(query, 4, mode)
            assert ids(hits) == ids(single)
            assert [h.score for h in hits] == pytest.approx([h.score for h in single], abs=1e-5)


def test_unicode_empty_titles_and_a_megabyte(tmp_path, embedder):
    big = Document("big", "ordinary words " * 70_000 + "zeppelinfahrt", "")  # over 1 MB
    with make(tmp_path / "u", docs=[*CORPUS, big]) as index:
        assert index.get("big") == big
        assert ids(index.search("zeppelinfahrt", 3, "bm25")) == ["big"]
        assert ids(index.search("flügel flugzeugs", 1, "bm25")) == ["flügel"]
        assert ids(index.search("日本語", 1, "bm25")) == ["flügel"]
        assert index.search("football match", 1)[0].title == ""
        assert index.search("zeppelinfahrt", 1)[0].text == big.text


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
    for k in (0, -1):
        with pytest.raises(InputError) as err:
            shared.search("coffee", k=k)
        assert err.value.field == "k"
    with pytest.raises(InputError, match="between 0 and 1"):
        shared.search("coffee", fusion="weighted", dense_weight=1.5)
    assert shared.search("the of and", 5, "bm25") == []  # stop words only: no hits, no error


def test_bad_config():
    with pytest.raises(InputError, match=r"unknown dense_index 'annoy'; expected one of: flat, hnsw, ivf"):
        IndexConfig(dense_index="annoy")
    with pytest.raises(InputError, match=r"unknown fusion 'sum'"):
        IndexConfig(fusion="sum")
    with pytest.raises(InputError) as err:
        IndexConfig(depth=0)
    assert err.value.field == "depth"


def test_missing_or_foreign_directories(tmp_path, shared):
    with pytest.raises(NotFoundError, match="no such index directory"):
        Index.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(NotFoundError, match="not a grouprank index"):
        Index.open(tmp_path / "plain")
    with pytest.raises(InputError, match="not an empty directory"):
        Index.create(tmp_path / "plain")
    with pytest.raises(InputError, match="already holds an index"):
        Index.create(shared.path)


def test_open_or_create_and_empty_index(tmp_path, embedder):
    path = tmp_path / "nested" / "new"
    with Index.open_or_create(path, IndexConfig(dense_index="hnsw")) as created:
        assert len(created) == 0 and created.search("anything at all", 5) == []
        created.upsert(CORPUS[:2], progress=False)
    with Index.open_or_create(path) as opened:  # opens; the saved config wins
        assert len(opened) == 2 and opened.config.dense_index == "hnsw"
    assert json.loads((path / "config.json").read_text())["dense_index"] == "hnsw"
    assert not [p for p in path.parent.iterdir() if p.name != "new"]  # no staging leftovers


def test_documents_embeddings_and_stats(shared, embedder):
    assert sorted(d.id for d in shared.iter_documents()) == sorted(d.id for d in CORPUS)
    stored = shared.embeddings(["jazz", "astro"])
    every = embedder.encode([d.body for d in CORPUS])  # one batch, as the upsert encoded them (bf16 varies
    np.testing.assert_allclose(stored, every[[8, 0]], atol=1e-5)  # with its batch by ~1e-3)
    stats = shared.stats()
    assert stats["documents"] == len(CORPUS) and stats["embedder"] == "all-MiniLM-L6-v2"
    assert stats["dense_index"] == "flat" and stats["dim"] == 384 and stats["size_bytes"] > 0
    assert stats["applied_seq"] == stats["store_seq"]


def test_upserting_the_same_text_again_reuses_its_vector(index, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("re-encoded an unchanged document")

    monkeypatch.setattr(index.embedder, "encode", fail)
    changed_metadata = Document("jazz", CORPUS[8].text, CORPUS[8].title, {"era": "bebop"})
    assert index.upsert([CORPUS[0], changed_metadata], progress=False) == 2
    assert index.get("jazz").metadata == {"era": "bebop"}


def test_repeated_ids_in_a_batch_last_wins(tiny):
    assert tiny.upsert([Document("dup", "first version"), Document("dup", "second version")], progress=False) == 1
    assert tiny.get("dup").text == "second version"
    assert ids(tiny.search("first", 5, "bm25")) == []


def test_searches_in_other_threads_while_writing(index):
    """A search API serves from threads while documents are written: no errors, no torn results."""
    errors = []
    stop = threading.Event()

    def search_until_stopped():
        try:
            while not stop.is_set():
                for mode in ("bm25", "dense", "hybrid"):
                    hits = index.search("zither tuning and coffee", 5, mode)
                    assert len({h.id for h in hits}) == len(hits)
                    assert all(h.text for h in hits)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=search_until_stopped) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(5):
            index.upsert([Document(f"extra{n}", f"Note {n}: tuning a zither takes patience.")], progress=False)
            if n:
                index.delete([f"extra{n - 1}"])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert ids(index.search("zither", 10, "bm25")) == ["extra4"]
    assert len(index) == len(CORPUS) + 1


def test_closed_index_refuses_work(tmp_path, embedder):
    index = make(tmp_path / "c", docs=CORPUS[:1])
    index.close()
    with pytest.raises(GroupRankError, match="closed"):
        index.search("telescope")


def test_a_second_process_waits_for_the_write_lock(index, tmp_path):
    """Two processes never write at once: our delete runs only after the other process lets go."""
    marker = tmp_path / "marker"
    script = f"""
import pathlib, time
from indexer.index import Index
index = Index.open({str(index.path)!r})
marker = pathlib.Path({str(marker)!r})
with index._write_lock:
    marker.write_text("locked")
    time.sleep(1.5)
    marker.write_text("released")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        for _ in range(600):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the other process never took the lock"
        assert index.delete(["chess"]) == 1
        assert marker.read_text() == "released"  # we got the lock only after it was released
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert index.search("knight checkmate", 5, "bm25") == []


def test_a_read_only_index_opens_for_search_and_refuses_writes_clearly(tmp_path, embedder, monkeypatch):
    """Simulated: ``os.open`` refuses write access under the index directory with EROFS, as a read-only
    mount does (tests run as root, for whom permission bits do not stop writes). SQLite opens files
    itself, so the store is not covered here."""
    with make(tmp_path / "ro", docs=CORPUS[:3]):
        pass
    (tmp_path / "ro" / "write.lock").unlink()  # e.g. an index copied without its lock files
    (tmp_path / "ro" / "reindex.lock").unlink()
    root, real_open = str(tmp_path / "ro"), os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def read_only_open(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(root) and flags & writing:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with Index.open(tmp_path / "ro") as index:
        assert ids(index.search("bread oven", 1, "bm25")) == ["bake"]
        assert ids(index.search("bread oven", 1, "hybrid")) == ["bake"]
        with pytest.raises(GroupRankError, match="read-only") as caught:
            index.upsert([NEW_BAKE], progress=False)
        assert "write.lock" in str(caught.value)
        assert index.get("bake") == CORPUS[1]  # nothing was written
    assert not (tmp_path / "ro" / "write.lock").exists()


def test_warm_up_and_ping(tmp_path, embedder):
    """``warm_up`` loads the query embedder; ``ping`` raises once the index folder is gone (readiness)."""
    import shutil

    from indexer.protocol import SearchIndex

    path = tmp_path / "idx"
    make(path).close()
    with Index.open(path) as index:
        assert isinstance(index, SearchIndex) and index._embedder is None
        index.warm_up()
        assert index._embedder is not None
        index.ping()
        shutil.rmtree(path)
        with pytest.raises(Exception):  # noqa: B017 (whatever the file system says)
            index.ping()
