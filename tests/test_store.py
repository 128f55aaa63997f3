"""The SQLite document store: transactions, the change log, keys, paging. Vectors are random here."""

import numpy as np
import pytest

from grouprank.errors import NotFoundError
from indexer import store as store_module
from indexer.documents import Document
from indexer.store import Store

DIM = 8


def unit_vectors(n, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    s = Store.create(tmp_path / "store.sqlite", embedder="test-embedder", dim=DIM)
    yield s
    s.close()


def docs(*ids, text="text of {}"):
    return [Document(id=i, text=text.format(i), title=f"title {i}", metadata={"n": i}) for i in ids]


def test_round_trip_unicode_empty_title_metadata_and_a_megabyte(store, tmp_path):
    big = "wort " * 200_000  # 1 MB
    batch = [
        Document(id="ü-1 ✈", text="Flügel — 日本語 — naïve café", title="", metadata={"tags": ["a", "ß"], "x": 1.5}),
        Document(id="big", text=big, title="Groß"),
    ]
    store.upsert(batch, unit_vectors(2))
    store.close()
    reopened = Store(tmp_path / "store.sqlite")
    assert reopened.get("ü-1 ✈") == batch[0]
    assert reopened.get("big") == batch[1]
    assert reopened.get("missing") is None
    assert reopened.embedder == "test-embedder" and reopened.dim == DIM
    np.testing.assert_array_equal(reopened.embeddings(["big", "ü-1 ✈"]), unit_vectors(2)[::-1])
    reopened.close()


def test_every_version_gets_a_new_key_and_old_keys_are_logged(store):
    store.upsert(docs("a", "b"), unit_vectors(2))
    keys_v1 = {v: k for k, v in store.ids_for_keys(range(100)).items()}
    seq_v1 = store.max_seq()
    store.upsert(docs("a", text="new {}"), unit_vectors(1, seed=1))
    keys_v2 = {v: k for k, v in store.ids_for_keys(range(100)).items()}
    assert keys_v2["a"] > max(keys_v1.values()) and keys_v2["b"] == keys_v1["b"]
    assert store.ids_for_keys([keys_v1["a"]]) == {}  # the replaced version's key maps to nothing

    changes = store.changes_since(seq_v1)
    assert changes.upto == store.max_seq() > seq_v1
    assert changes.removed == [("a", keys_v1["a"])]
    assert [(r.id, r.key, r.text) for r in changes.added] == [("a", keys_v2["a"], "new a")]
    np.testing.assert_array_equal(changes.added[0].embedding, unit_vectors(1, seed=1)[0])

    assert store.delete(["b", "nope", "b"]) == 1
    changes = store.changes_since(seq_v1)
    assert changes.removed == [("a", keys_v1["a"]), ("b", keys_v1["b"])]
    assert store.changes_since(store.max_seq()).removed == []

    # a deleted id that comes back gets a key never used before
    store.upsert(docs("b"), unit_vectors(1))
    assert {v: k for k, v in store.ids_for_keys(range(100)).items()}["b"] > keys_v2["a"]


def test_a_failing_batch_stores_nothing(store):
    store.upsert(docs("keep"), unit_vectors(1))
    before = (store.max_seq(), store.count(), store.get("keep"))
    bad = [unit_vectors(1)[0], np.ones(DIM + 1, dtype=np.float32)]  # the second vector has a wrong size
    with pytest.raises(ValueError, match="shape"):
        store.upsert(docs("new", "keep", text="changed {}"), bad)
    assert (store.max_seq(), store.count(), store.get("keep")) == before
    assert store.get("new") is None
    assert store.changes_since(before[0]).added == []


def test_delete_of_nothing_changes_nothing(store):
    store.upsert(docs("a"), unit_vectors(1))
    seq = store.max_seq()
    assert store.delete(["x", "y"]) == 0
    assert store.max_seq() == seq


def test_iter_documents_pages_in_id_order(store, monkeypatch):
    monkeypatch.setattr(store_module, "PAGE", 3)
    ids = [f"d{i}" for i in (5, 1, 9, 3, 7, 2, 8)]
    store.upsert(docs(*ids), unit_vectors(len(ids)))
    assert [d.id for d in store.iter_documents()] == sorted(ids)


def test_embeddings_of_missing_ids_name_them(store):
    store.upsert(docs("a"), unit_vectors(1))
    with pytest.raises(NotFoundError, match="'zz'"):
        store.embeddings(["a", "zz"])


def test_unchanged_embeddings_only_for_identical_text_and_title(store):
    store.upsert(docs("a", "b", "c"), unit_vectors(3))
    again = [*docs("a"), Document(id="b", text="text of b", title="other title"), *docs("c", text="changed {}")]
    found = store.unchanged_embeddings(again)
    assert set(found) == {"a"}
    np.testing.assert_array_equal(found["a"], unit_vectors(3)[0])


def test_missing_embeddings_are_filled_by_key_only(store):
    store.upsert(docs("a"), unit_vectors(1))
    key = next(iter(store.ids_for_keys(range(100))))
    store.conn.execute("UPDATE documents SET embedding = NULL")  # as a store filled without vectors
    with pytest.raises(NotFoundError):
        store.embeddings(["a"])
    store.set_embeddings({key: unit_vectors(1, seed=3)[0], key + 100: unit_vectors(1)[0]})
    np.testing.assert_array_equal(store.embeddings(["a"])[0], unit_vectors(1, seed=3)[0])


def test_prune_deletions_forgets_the_log_up_to_a_seq(store):
    store.upsert(docs("a", "b"), unit_vectors(2))
    store.delete(["a"])
    upto = store.max_seq()
    store.delete(["b"])
    store.prune_deletions(upto)
    assert [doc_id for doc_id, _ in store.changes_since(0).removed] == ["b"]


def test_opening_a_missing_store_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="no document store"):
        Store(tmp_path / "nope.sqlite")
