"""Reindexing: crash safety (kill -9 in other processes), catch-up of concurrent writes, readers that
follow a swap, and switching the dense index type. Real tantivy, FAISS and all-MiniLM-L6-v2."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer import index as index_module
from indexer.config import IndexConfig
from indexer.dense import DenseIndex
from indexer.documents import Document
from indexer.embedder import load_embedder
from indexer.index import Index
from tests.topics_corpus import CORPUS

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["coffee espresso", "ice carving mountains", "bees and flowers", "knight checkmate", "bread oven"]
MODES = ("bm25", "dense", "hybrid")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2", "auto")  # what IndexConfig() resolves to


def make(path, kind="flat"):
    index = Index.create(path, IndexConfig(dense_index=kind))
    index.upsert(CORPUS, progress=False)
    return index


def results(index):
    """Ranked ids and scores of every query in every mode."""
    return {(q, mode): [(h.id, h.score) for h in index.search(q, 5, mode)] for q in QUERIES for mode in MODES}


def assert_same_results(actual, expected, bm25_scores=True):
    """Same ranked ids and scores. BM25 scores may shift after a rebuild that follows deletions:
    tantivy counts a deleted document's tokens in the average length until its segment is merged."""
    assert actual.keys() == expected.keys()
    for key in expected:
        assert [i for i, _ in actual[key]] == [i for i, _ in expected[key]], key
        if bm25_scores or key[1] == "dense":
            assert [s for _, s in actual[key]] == pytest.approx([s for _, s in expected[key]], abs=1e-4), key


def generations(path):
    return sorted(p.name for p in (path / "generations").iterdir())


def start(script):
    """Run ``script`` in another Python process (no model is loaded there: nothing needs encoding)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GROUPRANK_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(marker, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the subprocess exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the subprocess never reached the marker")
        time.sleep(0.05)


# Each patch parks the reindexing process at one point, after writing a marker file, until it is killed.
PARK_DURING_BUILD = """
from indexer.dense import DenseIndex
def parked(*args, **kwargs):  # the lexical part is built in <name>.tmp; the dense part would be next
    park()
DenseIndex.build = parked
"""
PARK_BEFORE_SWAP = """
from indexer import index as index_module
real_write = index_module._write_atomic
def parked(path, data):  # the new generation is complete and renamed; CURRENT is next
    if path.name == "CURRENT":
        park()
    real_write(path, data)
index_module._write_atomic = parked
"""


@pytest.mark.parametrize("stage", ["during_build", "before_swap"])
def test_kill_9_during_reindex_leaves_the_old_generation_serving(tmp_path, embedder, stage):
    path = tmp_path / "idx"
    with make(path) as index:
        expected = results(index)
        old_generation = index.generation
    current_before = (path / "CURRENT").read_bytes()
    marker = tmp_path / "parked"
    patch = PARK_DURING_BUILD if stage == "during_build" else PARK_BEFORE_SWAP
    proc = start(f"""
import pathlib, time
def park():
    pathlib.Path({str(marker)!r}).write_text("parked")
    time.sleep(600)
{patch}
from indexer.index import Index
Index.open({str(path)!r}).reindex(progress=False)
""")
    try:
        wait_for(marker, proc)
        if stage == "during_build":
            [half_built] = (path / "generations").glob("*.tmp")
            assert (half_built / "lexical").is_dir() and not (half_built / "manifest.json").exists()
        else:
            assert len(generations(path)) == 2  # the old one and the complete, unreferenced new one
        assert (path / "CURRENT").read_bytes() == current_before
        with Index.open(path) as reader:  # while the reindex is still alive: serve, touch nothing
            assert reader.generation == old_generation
            assert_same_results(results(reader), expected)
        assert len(generations(path)) == 2
    finally:
        proc.kill()  # SIGKILL
        proc.wait()

    assert (path / "CURRENT").read_bytes() == current_before
    with Index.open(path) as reopened:
        assert generations(path) == [old_generation]  # the leftovers were removed on open
        assert reopened.generation == old_generation
        assert_same_results(results(reopened), expected)
        new_generation = reopened.reindex(progress=False)  # and the next reindex works
        assert new_generation != old_generation
        assert_same_results(results(reopened), expected)


def test_a_reader_in_another_process_follows_commits_and_swaps(tmp_path, embedder):
    path = tmp_path / "idx"
    with make(path) as index:
        expected = results(index)
    with Index.open(path) as reader:
        old_generation = reader.generation
        assert [h.id for h in reader.search("knight checkmate", 1, "bm25")] == ["chess"]

        writer = start(f"from indexer.index import Index\nIndex.open({str(path)!r}).delete(['chess'])")
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
        assert reader.search("knight checkmate", 5, "bm25") == []
        assert reader.stats()["lexical_documents"] == len(CORPUS) - 1  # reloaded, not just filtered
        assert reader.generation == old_generation
        after_delete = results(reader)
        for key, hits in after_delete.items():
            assert "chess" not in [i for i, _ in hits]
            if key[1] == "bm25":
                assert [i for i, _ in hits] == [i for i, _ in expected[key] if i != "chess"]

        reindexer = start(f"from indexer.index import Index\nprint(Index.open({str(path)!r}).reindex(progress=False))")
        out, err = reindexer.communicate(timeout=120)
        assert reindexer.returncode == 0, err
        assert reader.generation == out.strip() != old_generation
        assert_same_results(results(reader), after_delete, bm25_scores=False)


def test_a_reader_opened_before_a_reindex_sees_the_new_generation(tmp_path, embedder):
    path = tmp_path / "idx"
    with make(path) as writer, Index.open(path) as reader:
        expected = results(reader)
        first = reader.generation
        second = writer.reindex(progress=False)
        assert reader.generation == second != first
        assert_same_results(results(reader), expected)
        third = writer.reindex(progress=False)
        assert reader.generation == third
        assert generations(path) == [second, third]  # the one before the current is kept, older ones go
        assert_same_results(results(reader), expected)


def test_reindex_catches_up_with_writes_made_during_the_build(tmp_path, embedder, monkeypatch):
    path = tmp_path / "idx"
    new_doc = Document("penguin", "Emperor penguins huddle together through the Antarctic winter.", "Penguins")
    new_bake = Document("bake", "Submarines use sonar to navigate the dark ocean depths.", "Submarines")
    with make(path) as index, Index.open(path) as other:
        real_build = DenseIndex.build

        def build_while_another_handle_writes(*args, **kwargs):
            # The store snapshot has been read and the lexical part built; the write lock is free.
            other.upsert([new_doc, new_bake], progress=False)
            other.delete(["volcano"])
            return real_build(*args, **kwargs)

        monkeypatch.setattr(index_module.DenseIndex, "build", build_while_another_handle_writes)
        name = index.reindex(progress=False)
        monkeypatch.undo()

        manifest = json.loads((path / "generations" / name / "manifest.json").read_text())
        assert manifest["applied_seq"] > manifest["built_from_seq"]
        stats = index.stats()
        assert stats["generation"] == name and stats["applied_seq"] == stats["store_seq"]
        assert stats["documents"] == stats["lexical_documents"] == stats["dense_vectors"] == len(CORPUS)
        assert [h.id for h in index.search("antarctic penguins", 1, "bm25")] == ["penguin"]
        assert [h.id for h in index.search("birds that live on the ice near the south pole", 1, "dense")] == ["penguin"]
        assert "bake" not in [h.id for h in index.search("bread dough oven", 5, "bm25")]
        assert [h.id for h in index.search("submarine sonar", 1, "bm25")] == ["bake"]
        assert index.search("lava crater", 5, "bm25") == []
        dense_ids = [h.id for h in index.search("lava", 20, "dense")]
        assert "volcano" not in dense_ids and len(dense_ids) == len(set(dense_ids)) == len(CORPUS)


def test_switching_flat_to_hnsw_by_reindex_keeps_results(tmp_path, embedder):
    path = tmp_path / "idx"
    with make(path, "flat") as index:
        expected = results(index)
        index.reindex(progress=False, config=IndexConfig(dense_index="hnsw", hnsw_ef_search=64))
        stats = index.stats()
        assert (stats["dense_index"], stats["dense_index_configured"]) == ("hnsw", "hnsw")
        assert_same_results(results(index), expected)

        # HNSW keeps a replaced version's vector; the next reindex drops it
        changed = Document("jazz", CORPUS[6].text + " Bebop came later.", CORPUS[6].title)
        index.upsert([changed], progress=False)
        assert index.stats()["stale_vectors"] == 1
        expected = results(index)
        index.reindex(progress=False)
        assert index.stats()["stale_vectors"] == 0 and index.stats()["dense_vectors"] == len(CORPUS)
        assert_same_results(results(index), expected, bm25_scores=False)
        expected = results(index)
    with Index.open(path) as reopened:
        assert reopened.config.dense_index == "hnsw" and reopened.config.hnsw_ef_search == 64
        assert reopened.stats()["dense_index"] == "hnsw"
        assert_same_results(results(reopened), expected)


def test_ivf_with_too_few_documents_says_it_serves_flat(tmp_path, embedder):
    with make(tmp_path / "idx") as index:
        expected = results(index)
        index.reindex(progress=False, config=IndexConfig(dense_index="ivf", ivf_nlist=16))
        stats = index.stats()
        assert (stats["dense_index"], stats["dense_index_configured"]) == ("flat", "ivf")
        assert "ivf needs at least" in stats["dense_note"]
        assert_same_results(results(index), expected)


def test_reindex_to_an_embedder_that_cannot_load_changes_nothing(tmp_path, embedder):
    """Switching embedders is allowed (tests/test_reembed.py); one that cannot be loaded fails before any
    generation is built, and the index serves on as it was."""
    with make(tmp_path / "idx") as index:
        before = (index.config.embedder, index.generation, index.search("wing", k=3, mode="dense"))
        with pytest.raises(Exception, match="other-model"):
            index.reindex(progress=False, config=IndexConfig(embedder="/nonexistent/other-model"))
        assert (index.config.embedder, index.generation) == before[:2]
        assert [h.id for h in index.search("wing", k=3, mode="dense")] == [h.id for h in before[2]]
    with Index.open(tmp_path / "idx") as again:
        assert again.config.embedder == before[0]


def test_a_writer_killed_after_its_commit_is_caught_up_on_open(tmp_path, embedder):
    """The store commit is the point of no return: the generation update is redone by the next open."""
    path = tmp_path / "idx"
    make(path).close()
    marker = tmp_path / "parked"
    proc = start(f"""
import pathlib, time
from indexer.lexical import LexicalIndex
def parked(self):  # the delete is committed in SQLite; the search structures would be updated next
    pathlib.Path({str(marker)!r}).write_text("parked")
    time.sleep(600)
LexicalIndex.writer = parked
from indexer.index import Index
Index.open({str(path)!r}).delete(["chess"])
""")
    try:
        wait_for(marker, proc)
    finally:
        proc.kill()
        proc.wait()
    with Index.open(path) as reopened:
        stats = reopened.stats()
        assert stats["applied_seq"] == stats["store_seq"]
        assert stats["documents"] == stats["lexical_documents"] == stats["dense_vectors"] == len(CORPUS) - 1
        assert reopened.search("knight checkmate", 5, "bm25") == []
        reopened.upsert([Document("chess2", "Knights and bishops on the board.")], progress=False)
        assert [h.id for h in reopened.search("knight", 5, "bm25")] == ["chess2"]
