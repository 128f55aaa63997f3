"""The DL19 data the probes read: the pooled corpus (with its qrels) and the BM25 top-100 candidates of
the queries in some of the seeded splits (``trainer.recipe.split_dl19``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dl19_sets(shared: Path, which: str, seed: int = 2026) -> tuple[Any, list[Any]]:
    """``(corpus, candidate sets)`` for the comma-separated splits ``which`` (train, val, test)."""
    from indexer.ingest import load_beir
    from reranker.candidate_files import load_candidates
    from trainer.recipe import split_dl19

    dl19 = shared / "trec-dl-2019"
    corpus = load_beir(dl19 / "beir_pooled")
    split = split_dl19(list(corpus.judged_queries()), seed)
    qids = {q for name in which.split(",") for q in getattr(split, name.strip())}
    return corpus, [qc for qc in load_candidates(dl19 / "candidates" / "BM25_top100.json") if qc.qid in qids]
