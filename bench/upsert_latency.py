"""One-document upsert latency of the embedded index, before and after the dense delta, in one run.

    HF_HUB_OFFLINE=1 python bench/upsert_latency.py --docs 50000,500000 --output runs/upsert-latency.json

For each size, an index of synthetic documents (bench/retrieval.py's corpus) is built with stored
random unit vectors (no encoding, so 500k documents build in minutes), then single documents are
upserted with their own vector (so the figure is the index's cost, not the encoder's):

- ``before``: every write rewrites ``dense.faiss`` (the threshold set to 0: what every write did
  before the delta existed);
- ``after``: the default, the store's change log is the delta and ``dense.faiss`` is left alone.

Then one upsert that encodes its text, for scale. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import synthetic_corpus

from grouprank.progress import progress_bar
from indexer import index as index_module
from indexer.config import IndexConfig
from indexer.documents import Document
from indexer.index import Index

BATCH = 20_000


def timed_upserts(index: Index, n: int, rng: np.random.Generator, tag: str) -> list[float]:
    times = []
    for i in range(n):
        doc = Document(f"{tag}-{i}", f"a fresh document number {i} about {tag}")
        vector = rng.standard_normal((1, index.store.dim))
        start = time.perf_counter()
        index.upsert([doc], progress=False, vectors=vector)
        times.append(1000 * (time.perf_counter() - start))
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "mean_ms": round(statistics.fmean(ordered), 2)}


def measure(n_docs: int, writes: int, dense_index: str, root: Path) -> dict[str, object]:
    rng = np.random.default_rng(0)
    docs, _ = synthetic_corpus(n_docs, seed=0)
    path = root / f"idx-{n_docs}"
    start = time.perf_counter()
    with Index.create(path, IndexConfig(dense_index=dense_index)) as index:
        dim = index.store.dim
        with progress_bar(f"building {n_docs:,} documents", len(docs)) as bar:
            for first in range(0, len(docs), BATCH):
                chunk = docs[first : first + BATCH]
                index.upsert(chunk, progress=False, vectors=rng.standard_normal((len(chunk), dim)))
                bar.advance(len(chunk))
        index.reindex(progress=False)  # a fresh generation: the base holds everything
        build_s = time.perf_counter() - start
        dense_file = next(path.glob("generations/*/dense.faiss"))
        row: dict[str, object] = {"docs": n_docs, "dense_index": dense_index, "build_s": round(build_s, 1),
                                  "dense_faiss_mb": round(dense_file.stat().st_size / 2**20, 1)}
        saved = index_module.DENSE_DELTA_MIN, index_module.DENSE_DELTA_SHARE
        try:
            index_module.DENSE_DELTA_MIN, index_module.DENSE_DELTA_SHARE = 0, 0.0
            row["before"] = summary(timed_upserts(index, writes, rng, "before"))
        finally:
            index_module.DENSE_DELTA_MIN, index_module.DENSE_DELTA_SHARE = saved
        row["after"] = summary(timed_upserts(index, writes, rng, "after"))
        row["speedup_p50"] = round(row["before"]["p50_ms"] / row["after"]["p50_ms"], 1)  # type: ignore[index]
        start = time.perf_counter()
        index.upsert([Document("encoded", "one document whose text the index encodes itself")], progress=False)
        row["after_with_encoding_ms"] = round(1000 * (time.perf_counter() - start), 1)
        start = time.perf_counter()
        with Index.open(path) as reader:  # cold open: the base plus the delta's replay
            reader.search("fresh document", 10, "bm25")
        row["cold_open_ms"] = round(1000 * (time.perf_counter() - start), 1)
        row["delta_at_open"] = index.stats()["dense_delta"]
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    shutil.rmtree(path)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", default="50000,500000", help="comma-separated index sizes")
    parser.add_argument("--writes", type=int, default=20, help="timed one-document upserts per variant")
    parser.add_argument("--dense-index", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="upsert-bench-") as tmp:
        rows = [measure(int(n), args.writes, args.dense_index, Path(tmp)) for n in args.docs.split(",")]
    text = json.dumps({"writes": args.writes, "results": rows}, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
