"""Switching an index to another embedder by reindexing (what ``grouprank train adapt`` promotes): every
vector re-encoded while the old generation serves, writes made meanwhile included, crashes survived."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer.documents import Document
from indexer.index import CONFIG, CURRENT, Index


@pytest.fixture(scope="module")
def other_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged MiniLM with its last layer perturbed: same dimension, different vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    from indexer.embedder import resolve

    model = SentenceTransformer(resolve("all-MiniLM-L6-v2"), device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model[0].auto_model.encoder.layer[-1].parameters():
            p.add_(torch.randn_like(p) * 0.2)
    folder = tmp_path_factory.mktemp("embedders") / "perturbed"
    model.save(str(folder))
    return folder


@pytest.fixture
def index_path(service_index_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "index"
    shutil.copytree(service_index_template, path)
    return path


def _stored(index: Index) -> np.ndarray:
    ids = sorted(d.id for d in index.iter_documents())
    return index.embeddings(ids)


def _encoded(index: Index) -> np.ndarray:
    docs = sorted(index.iter_documents(), key=lambda d: d.id)
    return index.embedder.encode([d.body for d in docs], 64, False)


def test_switch_re_encodes_every_document_and_readers_follow(index_path: Path, other_embedder: Path) -> None:
    reader = Index.open(index_path)  # another process's view, opened before the switch
    before = reader.search("capital of France", k=3, mode="dense")
    with Index.open(index_path) as index:
        old_vectors = _stored(index)
        name = index.install_embedder(other_embedder, "perturbed")
        index.reindex(config=replace(index.config, embedder=name), progress=False)
        assert index.store.embedder == name == index.config.embedder
        new_vectors = _stored(index)
        assert not np.allclose(old_vectors, new_vectors, atol=1e-3)  # every vector was recomputed
        np.testing.assert_allclose(new_vectors, _encoded(index), atol=2e-2)
        expected = index.search("capital of France", k=3, mode="dense")
    after = reader.search("capital of France", k=3, mode="dense")
    assert reader.embedder.name == str(index_path / name)  # the reader reloaded the new embedder
    assert [h.id for h in after] == [h.id for h in expected]
    assert [h.scores["dense"] for h in after] == pytest.approx([h.scores["dense"] for h in expected], abs=1e-4)
    assert [h.scores["dense"] for h in after] != pytest.approx([h.scores["dense"] for h in before], abs=1e-4)
    reader.close()
    with Index.open(index_path) as again:  # and the switch persists
        assert again.config.embedder == name and again.search("capital of France", k=1)[0].id == "paris"


def test_a_write_made_during_the_switch_gets_the_new_embedder(index_path: Path, other_embedder: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import indexer.index as module

    writer = Index.open(index_path)
    real_build = module.build_generation

    def build_then_write(*args, **kwargs):  # another writer commits while the new generation is built
        built = real_build(*args, **kwargs)
        writer.upsert([Document(id="late", text="A late document about lighthouses and ships.")], progress=False)
        writer.delete(["banana"])
        return built

    monkeypatch.setattr(module, "build_generation", build_then_write)
    with Index.open(index_path) as index:
        index.reindex(config=replace(index.config, embedder=index.install_embedder(other_embedder, "p")),
                      progress=False)
        late = index.embeddings(["late"])[0]
        fresh = index.embedder.encode(["A late document about lighthouses and ships."], 8, False)[0]
        np.testing.assert_allclose(late, fresh, atol=2e-2)
        assert index.get("banana") is None
        assert index.search("lighthouses and ships", k=1, mode="dense")[0].id == "late"
        assert "banana" not in {h.id for h in index.search("bananas potassium", k=40, mode="hybrid")}
    writer.close()


def test_a_crash_after_the_commit_is_finished_on_open(index_path: Path, other_embedder: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import indexer.index as module

    real = module._write_atomic

    def crash_on_config(path: Path, data: bytes) -> None:
        if Path(path).name == CONFIG:
            raise OSError("killed")
        real(path, data)

    with Index.open(index_path) as index:
        name = index.install_embedder(other_embedder, "p")
        old_current = (index_path / CURRENT).read_text()
        monkeypatch.setattr(module, "_write_atomic", crash_on_config)
        with pytest.raises(OSError, match="killed"):
            index.reindex(config=replace(index.config, embedder=name), progress=False)
        monkeypatch.setattr(module, "_write_atomic", real)
    assert (index_path / CURRENT).read_text() == old_current  # the crash left the switch half done
    with Index.open(index_path) as index:
        assert index.config.embedder == name and (index_path / CURRENT).read_text() != old_current
        np.testing.assert_allclose(_stored(index), _encoded(index), atol=2e-2)
        assert index.search("capital of Germany", k=1)[0].id == "berlin"


def test_a_crash_before_the_commit_leaves_the_old_index(index_path: Path, other_embedder: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.store import Store

    def crash(*_args, **_kwargs) -> None:
        raise OSError("killed")

    with Index.open(index_path) as index:
        old_name, old_vectors = index.store.embedder, _stored(index)
        new_name = index.install_embedder(other_embedder, "p")
        monkeypatch.setattr(Store, "replace_embeddings", crash)
        with pytest.raises(OSError, match="killed"):
            index.reindex(config=replace(index.config, embedder=new_name), progress=False)
    monkeypatch.undo()
    with Index.open(index_path) as index:
        assert index.config.embedder == old_name == index.store.embedder
        np.testing.assert_array_equal(_stored(index), old_vectors)
        assert len(list((index_path / "generations").iterdir())) <= 2  # the half-switched generation is gone
        assert index.search("capital of Germany", k=1)[0].id == "berlin"


def test_install_refuses_a_folder_that_is_not_a_model(index_path: Path, tmp_path: Path) -> None:
    from grouprank.errors import InputError

    with Index.open(index_path) as index, pytest.raises(InputError, match=r"no config\.json"):
        index.install_embedder(tmp_path, "empty")
