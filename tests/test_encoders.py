"""Embedder encoders (IndexConfig.encoder): torch float32 and bf16, ONNX int8, OpenVINO float32 and bf16;
stored with the index."""

import importlib.util
import json

import numpy as np
import pytest

from grouprank.errors import InputError
from indexer.config import IndexConfig, resolve_encoder
from indexer.documents import Document
from indexer.embedder import ONNX_INT8_FILE, cache_root, load_embedder, onnx_int8_dir, resolve
from indexer.index import Index

TEXTS = [
    "The boundary layer separates from the wing at high angles of attack.",
    "Heat transfer in hypersonic flow around a blunt body.",
    "A recipe for apple pie with cinnamon.",
]


@pytest.fixture(scope="module")
def onnx_cache():
    """The real export cache (~/.cache/grouprank): exporting takes a while, so tests share it."""
    return cache_root()


@pytest.fixture(scope="module")
def reference():
    return load_embedder("all-MiniLM-L6-v2", "torch").encode(TEXTS)


def test_config_has_the_encoder_and_old_configs_mean_torch(monkeypatch):
    import indexer.config

    assert IndexConfig().encoder == "auto"
    with pytest.raises(InputError, match="encoder"):
        IndexConfig(encoder="tensorrt")
    old = IndexConfig().to_dict()
    del old["encoder"], old["dense_device"]
    assert IndexConfig.from_dict(old, stored=True).encoder == "torch"
    assert IndexConfig.from_dict(old).encoder == "auto"  # settings given now, not an old config.json
    # a missing setting means the legacy encoder, not whatever the default is now
    monkeypatch.setattr(indexer.config, "LEGACY_ENCODER", "torch-bf16")
    assert IndexConfig.from_dict(old, stored=True).encoder == "torch-bf16"
    monkeypatch.undo()
    assert IndexConfig.from_dict(old).dense_device == "auto"
    assert json.loads(IndexConfig(encoder="onnx-int8").to_json())["encoder"] == "onnx-int8"


def test_auto_is_resolved_when_the_index_is_created_and_stored_resolved(tmp_path):
    from grouprank.precision import bf16_supported
    from indexer.index import Index

    openvino = importlib.util.find_spec("openvino") is not None
    expected = ("openvino-bf16" if openvino else "torch-bf16") if bf16_supported("cpu") else "torch"
    assert resolve_encoder("auto", "cpu") == expected and resolve_encoder("auto", "cuda") == "torch"
    assert resolve_encoder("onnx-int8", "cpu") == "onnx-int8"
    with Index.create(tmp_path / "idx", IndexConfig(dense_device="cpu")) as index:
        assert index.config.encoder == expected and index.stats()["encoder"] == expected
        assert json.loads((tmp_path / "idx" / "config.json").read_text())["encoder"] == expected
        index.reindex(progress=False, config=IndexConfig(dense_index="hnsw"))  # "auto" keeps the built one
        assert json.loads((tmp_path / "idx" / "config.json").read_text())["encoder"] == expected


# Cosine to float32 torch per text, and between a text alone and in a batch (measured: bf16 >= 0.9999,
# OpenVINO >= 0.99998; int8 0.96-0.98 per text and 0.992 alone: its activations are quantized per batch).
AGREEMENT = {"torch-bf16": (0.98, 0.999), "onnx-int8": (0.95, 0.98), "openvino": (0.9999, 0.9999),
             "openvino-bf16": (0.99, 0.999)}


@pytest.mark.parametrize("encoder", list(AGREEMENT))
def test_fast_encoders_agree_with_float32(onnx_cache, reference, encoder):
    if encoder.startswith("openvino"):
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    to_float32, alone = AGREEMENT[encoder]
    embedder = load_embedder("all-MiniLM-L6-v2", encoder)
    assert embedder.encoder == encoder and embedder.dim == 384
    vectors = embedder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert (vectors * reference).sum(axis=1).min() > to_float32  # the same embedding up to rounding
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]  # and still meaningful
    one = embedder.encode(TEXTS[:1], threads=1)  # alone, on one thread
    assert float(one[0] @ vectors[0]) > alone


def test_onnx_export_is_built_locally_and_cached(onnx_cache):
    load_embedder("all-MiniLM-L6-v2", "onnx-int8")
    folder = onnx_int8_dir(resolve("all-MiniLM-L6-v2"))
    assert folder.is_relative_to(onnx_cache)
    exported = list(folder.glob("model_qint8*.onnx"))
    assert [p.name for p in exported] == [ONNX_INT8_FILE]
    assert exported[0].stat().st_size < 40e6  # int8: about a quarter of float32 (90 MB)
    assert not [p for p in folder.iterdir() if p.name.startswith(".export-")]


def test_index_stores_its_encoder_and_keeps_it(onnx_cache, tmp_path):
    docs = [Document(id=str(n), text=text) for n, text in enumerate(TEXTS)]
    with Index.create(tmp_path / "idx", IndexConfig(encoder="onnx-int8")) as index:
        index.upsert(docs, progress=False)
        assert index.embedder.encoder == "onnx-int8"
        assert index.search("hypersonic heat transfer", k=1, mode="dense")[0].id == "1"
        assert index.stats()["encoder"] == "onnx-int8"
        with pytest.raises(InputError, match="encoder"):
            index.reindex(progress=False, config=IndexConfig(encoder="torch"))
    assert json.loads((tmp_path / "idx" / "config.json").read_text())["encoder"] == "onnx-int8"
    with Index.open(tmp_path / "idx") as index:
        assert index.config.encoder == "onnx-int8" and index.embedder.encoder == "onnx-int8"


def test_an_index_without_the_setting_opens_as_torch(tmp_path):
    with Index.create(tmp_path / "idx", IndexConfig(encoder="torch")) as index:
        index.upsert([Document(id="a", text=TEXTS[0])], progress=False)
    path = tmp_path / "idx" / "config.json"
    data = json.loads(path.read_text())
    del data["encoder"], data["dense_device"]
    path.write_text(json.dumps(data))
    with Index.open(tmp_path / "idx") as index:
        assert index.config.encoder == "torch" and index.embedder.encoder == "torch"
        assert index.search("boundary layer", k=1, mode="dense")[0].id == "a"


def test_openvino_encoders_without_openvino_name_the_extra(monkeypatch):
    """An index stored with an OpenVINO encoder, opened where OpenVINO is missing, says what to install."""
    import importlib.util

    from grouprank.errors import NotFoundError
    from indexer import embedder

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(NotFoundError, match=r"grouprank\[openvino\]"):
        embedder._load_openvino(resolve("all-MiniLM-L6-v2"), "bf16")
    from grouprank.precision import bf16_supported

    assert resolve_encoder("auto", "cpu") == ("torch-bf16" if bf16_supported("cpu") else "torch")
