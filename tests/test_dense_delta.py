"""Writes that scale: a write leaves dense.faiss (the base) alone and the store's log is the delta,
replayed on open; the base is merged past a threshold; kill -9 in the middle of writes loses no
committed write and leaves none half-written. Real SQLite, tantivy and FAISS; the crash test's writer
brings its own random unit vectors, so no model runs in it."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from grouprank.errors import InputError
from indexer import index as index_module
from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.embedder import load_embedder
from indexer.index import Index
from tests.topics_corpus import CORPUS as TOPICS

REPO = Path(__file__).resolve().parents[1]
CORPUS = TOPICS[:4]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2", "auto")  # what IndexConfig() resolves to


def base_stat(path: Path) -> tuple[int, int, int]:
    [dense] = (path / "generations").glob("*/dense.faiss")
    st = dense.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def store_keys(index: Index) -> dict[str, int]:
    with index.store.snapshot() as conn:
        return {row.id: row.key for row in index.store.rows(conn)}


def dense_keys(index: Index) -> set[int]:
    return set(faiss.vector_to_array(index._fresh_generation().dense.index.id_map).tolist())


def test_a_small_write_leaves_the_base_and_a_fresh_open_replays_it(tmp_path, embedder):
    path = tmp_path / "idx"
    with Index.create(path, IndexConfig()) as index:
        index.upsert(CORPUS, progress=False)
        before = base_stat(path)
        index.upsert([Document("volcano", "Lava erupts from the crater of the volcano.", "Volcanoes")], progress=False)
        index.delete(["chess"])
        assert base_stat(path) == before  # no rewrite of dense.faiss
        stats = index.stats()
        assert stats["dense_base_seq"] < stats["applied_seq"] and stats["dense_delta"] == len(CORPUS) + 2
        writer_hits = [h.id for h in index.search("volcanic lava eruption", 3, "dense")]
    with Index.open(path) as reader:  # loads the base, replays the delta from the store
        assert [h.id for h in reader.search("volcanic lava eruption", 3, "dense")] == writer_hits
        assert writer_hits[0] == "volcano"
        assert "chess" not in [h.id for h in reader.search("knight checkmate", 4, "dense")]
        assert dense_keys(reader) == set(store_keys(reader).values())


def test_a_reader_that_reloads_replays_only_the_new_changes(tmp_path, embedder, monkeypatch):
    path = tmp_path / "idx"
    with Index.create(path, IndexConfig()) as writer, Index.open(path) as reader:
        writer.upsert(CORPUS, progress=False)
        [hit] = reader.search("bees nectar", 1, "dense")
        assert hit.id == "honey"
        loads = []
        real_load = index_module.DenseIndex.load
        monkeypatch.setattr(index_module.DenseIndex, "load",
                            classmethod(lambda cls, *a, **k: loads.append(a) or real_load(*a, **k)))
        writer.upsert([Document("honey", "A sourdough loaf rises overnight before baking.", "Bread")], progress=False)
        new = {h.id: h.score for h in reader.search("bees nectar", 4, "dense")}
        assert new["honey"] < hit.score - 0.3  # the old vector is gone, the new one answers
        assert reader.search("sourdough bread baking", 1, "dense")[0].id == "honey"
        assert loads == []  # the reader kept its base and replayed two changes onto a copy
        assert dense_keys(reader) == set(store_keys(reader).values())


def test_the_delta_is_merged_into_the_base_past_the_threshold(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(index_module, "DENSE_DELTA_MIN", 3)
    monkeypatch.setattr(index_module, "DENSE_DELTA_SHARE", 0.0)
    path = tmp_path / "idx"
    with Index.create(path, IndexConfig()) as index:
        index.upsert(CORPUS, progress=False)  # 4 changes past 3: merged at once
        assert index.stats()["dense_delta"] == 0
        before = base_stat(path)
        index.upsert([Document("espresso", "Espresso is strong coffee.", "Coffee")], progress=False)  # 2 changes
        index.upsert([Document("jazz", "Jazz musicians improvise solos on saxophone.", "Music")], progress=False)
        assert base_stat(path) == before and index.stats()["dense_delta"] == 3  # not past 3 yet
        index.delete(["glacier"])  # the fourth change: merged
        stats = index.stats()
        assert base_stat(path) != before
        assert stats["dense_delta"] == 0 and stats["dense_base_seq"] == stats["applied_seq"]
        hits = [h.id for h in index.search("saxophone solos", 4, "dense")]
    with Index.open(path) as reader:  # the merged base alone, nothing to replay
        assert [h.id for h in reader.search("saxophone solos", 4, "dense")] == hits
        assert "glacier" not in hits and dense_keys(reader) == set(store_keys(reader).values())


def test_own_vectors_are_checked_and_a_bad_batch_stores_nothing(tmp_path, embedder):
    with Index.create(tmp_path / "idx", IndexConfig()) as index:
        with pytest.raises(InputError, match="expected 2 vectors of 384 dimensions") as exc:
            index.upsert(CORPUS[:2], vectors=np.ones((2, 10)))
        assert exc.value.field == "vectors"
        with pytest.raises(InputError, match="finite and non-zero"):
            index.upsert(CORPUS[:2], vectors=np.zeros((2, 384)))
        assert len(index) == 0
        vectors = np.random.default_rng(0).standard_normal((2, 384))
        assert index.upsert(CORPUS[:2], vectors=vectors) == 2
        stored = index.embeddings(["espresso"])[0]
        assert stored == pytest.approx(vectors[0] / np.linalg.norm(vectors[0]), abs=1e-6)


WRITER = """
import sys
import numpy as np
from indexer import index as index_module
from indexer.documents import Document
from indexer.index import Index

index_module.DENSE_DELTA_MIN, index_module.DENSE_DELTA_SHARE = 7, 0.0  # merge often: kills land in merges too
first, path = int(sys.argv[1]), sys.argv[2]
index = Index.open(path)
for batch in range(first, first + 10_000):
    rng = np.random.default_rng(batch)
    ids = [f"b{batch}-{n}" for n in range(3)]
    if batch % 4 == 3:
        ids.append(f"b{batch - 3}-0")  # replace an earlier document: a removal in the delta too
    docs = [Document(i, f"token{batch} body of {i}") for i in ids[:3]]
    docs += [Document(i, f"token{batch - 3} replaced in {batch}") for i in ids[3:]]
    index.upsert(docs, progress=False, vectors=rng.standard_normal((len(docs), 384)))
    print(batch, flush=True)
"""


def test_kill_9_during_writes_keeps_every_committed_write_and_no_half_written_one(tmp_path, embedder):
    path = tmp_path / "idx"
    Index.create(path, IndexConfig()).close()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GROUPRANK_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    rng = random.Random(0)
    committed: list[int] = []
    for _ in range(3):
        first = committed[-1] + 1 if committed else 0
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(first), str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wanted = rng.randint(5, 25)
            deadline = time.monotonic() + 120
            while len(committed) < first + wanted and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    pytest.fail(f"the writer exited early: {proc.stderr.read()[-2000:]}")
                committed.append(int(line))
            time.sleep(rng.random() * 0.05)  # land somewhere inside the next write
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with Index.open(path) as index:
            keys = store_keys(index)
            for batch in committed:  # every committed write is there, in every retriever
                for n in range(3):
                    assert f"b{batch}-{n}" in keys, (batch, n)
                assert {h.id for h in index.search(f"token{batch}", 10, "bm25")} >= {f"b{batch}-{n}" for n in range(3)}
                if batch % 4 == 3:
                    assert index.get(f"b{batch - 3}-0").text.endswith(f"replaced in {batch}")
            in_flight = committed[-1] + 1  # all of it or none of it
            assert len({f"b{in_flight}-{n}" in keys for n in range(3)}) == 1
            assert dense_keys(index) == set(keys.values())  # no vector missing, stale or half-written
            dense = index._fresh_generation().dense.index
            for doc_id in rng.sample(sorted(keys), 10):
                assert dense.reconstruct(keys[doc_id]) == pytest.approx(index.embeddings([doc_id])[0], abs=1e-6)


def test_the_dense_lock_keeps_searches_safe_while_writes_change_the_vectors_in_place(tmp_path, embedder):
    path = tmp_path / "idx"
    rng = np.random.default_rng(1)
    with Index.create(path, IndexConfig()) as index:
        base = [Document(f"d{n}", f"document {n}") for n in range(2000)]
        index.upsert(base, progress=False, vectors=rng.standard_normal((len(base), 384)))
        gen = index._fresh_generation()
        queries = rng.standard_normal((4, 384)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        errors: list[BaseException] = []
        stop = threading.Event()

        def search() -> None:  # what Index.search_batch does around the dense search
            while not stop.is_set():
                try:
                    with index._dense_lock.read_lock():
                        _, keys = gen.dense.search(queries, 10)
                    assert (keys >= 0).all()  # without the lock: slots of vectors being removed come back -1
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=search) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for n in range(40):  # replace 50 documents per write: removals and additions in place
                ids = [f"d{(50 * n + i) % 2000}" for i in range(50)]
                index.upsert([Document(i, f"new {i}") for i in ids], progress=False,
                             vectors=rng.standard_normal((50, 384)))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert errors == []
        assert dense_keys(index) == set(store_keys(index).values())


def test_a_search_reads_the_dense_index_under_the_lock(tmp_path, embedder):
    with Index.create(tmp_path / "idx", IndexConfig()) as index:
        index.upsert(CORPUS, progress=False)
        taken = []
        real = index._dense_lock

        class Recording:
            def read_lock(self):
                taken.append("read")
                return real.read_lock()

            def write_lock(self):
                taken.append("write")
                return real.write_lock()

        index._dense_lock = Recording()
        index.search("coffee", 2, "bm25")
        assert taken == []
        index.search("coffee", 2, "dense")
        assert taken == ["read"]
        index.upsert([Document("jazz", "Jazz musicians improvise solos.")], progress=False)
        assert taken == ["read", "write"]
