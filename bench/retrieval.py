"""Retrieval benchmark: build throughput, query latency per mode, index size, peak RSS (JSON on stdout).

    python bench/retrieval.py --docs 50000 --output runs/bench-retrieval.json
    python bench/retrieval.py --data ../shared/data/cranfield
    python bench/retrieval.py --docs 1000000 --random-vectors --dense-index hnsw   # scale: no encoding

``--random-vectors`` stores seeded random unit vectors with the documents instead of encoding them, so
that a million documents build in minutes; queries are still encoded for real, so dense and hybrid
latency include encoding (the dense ranking is meaningless then, its cost is not).

Synthetic documents are seeded: words drawn (Zipf-like) from the vocabulary of the Python language
reference, 30-90 words each; queries are 3-6 words taken from random documents. Query latency
includes query encoding (the embedder runs per query, one query at a time, as a search API does).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.index import Index


def synthetic_corpus(n: int, seed: int) -> tuple[list[Document], list[str]]:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    vocab = sorted({w.lower() for text in topics.values() for w in re.findall(r"[A-Za-z]{3,}", text)})
    rng.shuffle(vocab)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf
    docs = []
    for i in range(n):
        words = rng.choices(vocab, weights=weights, k=rng.randint(30, 90))
        docs.append(Document(id=f"d{i}", title=" ".join(words[:5]), text=" ".join(words[5:])))
    queries = []
    for _ in range(200):
        words = rng.choice(docs).text.split()
        start = rng.randrange(max(1, len(words) - 6))
        queries.append(" ".join(words[start:start + rng.randint(3, 6)]))
    return docs, queries


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000, help="synthetic documents (ignored with --data)")
    parser.add_argument("--data", type=Path, help="a BEIR directory or JSONL corpus instead of synthetic docs")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per mode")
    parser.add_argument("--dense-index", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-vectors", action="store_true",
                        help="store random unit vectors instead of encoding the documents (scale runs)")
    parser.add_argument("--no-reindex", action="store_true", help="skip the timed rebuild from stored vectors")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("GROUPRANK_PROGRESS", "0")

    if args.data:
        from indexer.ingest import load_documents

        docs = load_documents(args.data)
        rng = random.Random(args.seed)
        queries = [" ".join(rng.choice(docs).text.split()[:6]) for _ in range(args.queries)]
        corpus = str(args.data)
    else:
        docs, queries = synthetic_corpus(args.docs, args.seed)
        corpus = f"synthetic(seed={args.seed})"
    queries = (queries * (args.queries // len(queries) + 1))[: args.queries]

    tmp = Path(tempfile.mkdtemp(prefix="grouprank-bench-"))
    try:
        index = Index.create(tmp / "index", IndexConfig(dense_index=args.dense_index))
        index.search("warm up the embedder", k=1, mode="dense")
        start = time.perf_counter()
        if args.random_vectors:
            import numpy as np

            rng = np.random.default_rng(args.seed)
            for first in range(0, len(docs), 20_000):
                chunk = docs[first : first + 20_000]
                index.upsert(chunk, progress=False, vectors=rng.standard_normal((len(chunk), index.store.dim)))
        else:
            index.upsert(docs, progress=False)
        upsert_s = time.perf_counter() - start
        reindex_s = None
        if not args.no_reindex:
            start = time.perf_counter()
            index.reindex(progress=False)  # from stored embeddings: no encoding
            reindex_s = time.perf_counter() - start

        latency: dict[str, dict[str, float]] = {}
        for mode in ("bm25", "dense", "hybrid"):
            for q in queries[:10]:  # warm-up
                index.search(q, k=10, mode=mode)
            times = []
            for q in queries:
                t0 = time.perf_counter()
                index.search(q, k=10, mode=mode)
                times.append((time.perf_counter() - t0) * 1000)
            latency[mode] = {"p50_ms": round(statistics.median(times), 2),
                             "p99_ms": round(percentile(times, 99), 2),
                             "mean_ms": round(statistics.fmean(times), 2)}
        stats = index.stats()
        index.close()
        result = {
            "corpus": corpus,
            "documents": len(docs),
            "dense_index": stats.get("dense_index"),  # what serves: IVF falls back to flat until trained
            "dense_index_configured": args.dense_index,
            "dense_note": stats.get("dense_note"),
            "embedder": stats.get("embedder"),
            "random_vectors": args.random_vectors,
            "build_docs_per_s_with_embeddings": None if args.random_vectors else round(len(docs) / upsert_s, 1),
            "build_s_upsert": round(upsert_s, 1),
            "build_docs_per_s_without_embeddings": round(len(docs) / reindex_s, 1) if reindex_s else None,
            "build_s_without_embeddings": round(reindex_s, 1) if reindex_s else None,
            "queries_per_mode": len(queries),
            "latency": latency,
            "index_size_bytes": dir_size(tmp / "index"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
