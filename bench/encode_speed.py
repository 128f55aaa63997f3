"""Encoding speed and Cranfield quality of each embedder encoder (``IndexConfig.encoder``); prints JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/encode_speed.py --data ../shared/data/cranfield \
        --output runs/encode-speed.json

Speed: every encoder embeds the same corpus texts (the first ``--speed-docs``, as an index would: title
and text), after a warm-up, ``--repeats`` times in turn; the best run counts. ``docs_per_s`` is wall
time; ``docs_per_cpu_s`` divides by the process's CPU time, which holds steadier on a shared machine.
Queries: milliseconds per query for ``--query-batch`` random queries encoded together on one thread.
Quality: a temporary index per encoder over the whole corpus, NDCG@10 of dense and hybrid retrieval
on the judged queries (as ``grouprank eval retrieval`` measures it), and the difference from "torch".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.config import ENCODERS


def speed(encoders: list[str], texts: list[str], batch_size: int, repeats: int, threads: int | None) -> dict:
    from indexer.embedder import load_embedder

    loaded = {}
    for name in encoders:
        start = time.perf_counter()
        loaded[name] = load_embedder("all-MiniLM-L6-v2", name)
        loaded[name].encode(texts[:8], batch_size, threads=threads)  # warm-up
        print(f"{name}: loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, embedder in loaded.items():
            wall, cpu = time.perf_counter(), time.process_time()
            embedder.encode(texts, batch_size, threads=threads)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            run = {"docs_per_s": len(texts) / wall, "docs_per_cpu_s": len(texts) / cpu}
            prev = best.get(name)
            best[name] = {k: max(v, prev[k]) if prev else v for k, v in run.items()}
            print(f"{name}: {run}", file=sys.stderr, flush=True)
    base = best.get("torch")
    out = {}
    for name, run in best.items():
        out[name] = {k: round(v, 1) for k, v in run.items()}
        if base:
            out[name]["speedup"] = round(run["docs_per_s"] / base["docs_per_s"], 2)
            out[name]["speedup_cpu"] = round(run["docs_per_cpu_s"] / base["docs_per_cpu_s"], 2)
    return out


def quality(encoders: list[str], data: Path, batch_size: int) -> dict:
    from grouprank.metrics import evaluate
    from indexer.config import IndexConfig
    from indexer.index import Index
    from indexer.ingest import load_beir

    dataset = load_beir(data, split="test")
    queries = dataset.judged_queries()
    qids = list(queries)
    out: dict[str, Any] = {}
    for name in encoders:
        with tempfile.TemporaryDirectory(prefix="encode-speed-") as tmp:
            start = time.perf_counter()
            index = Index.create(Path(tmp) / "index", IndexConfig(encoder=name, batch_size=batch_size))
            with index:
                index.upsert(dataset.documents, progress=False)
                built = time.perf_counter() - start
                out[name] = {"build_s": round(built, 1)}
                for mode in ("dense", "hybrid"):
                    ranked = index.search_batch([queries[q] for q in qids], k=100, mode=mode)
                    run = {q: {h.id: h.score for h in hits} for q, hits in zip(qids, ranked, strict=True)}
                    out[name][f"{mode}_ndcg@10"] = round(evaluate(dataset.qrels, run)["ndcg@10"], 4)
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    if "torch" in out:
        for row in out.values():
            for mode in ("dense", "hybrid"):
                row[f"{mode}_delta"] = round(row[f"{mode}_ndcg@10"] - out["torch"][f"{mode}_ndcg@10"], 4)
    return {"dataset": str(data), "queries": len(qids), "documents": len(dataset.documents), "encoders": out}


def query_speed(encoders: list[str], queries: list[str], batch: int, repeats: int = 40) -> dict:
    """Milliseconds per query when ``batch`` random queries are encoded together, one thread, as the API's
    search batcher does under load: padded to the longest (one batch) or in the index's sub-batches."""
    import random

    from indexer.embedder import load_embedder
    from indexer.index import QUERY_BATCH

    out: dict[str, dict[str, float]] = {}
    for name in encoders:
        embedder = load_embedder("all-MiniLM-L6-v2", name)
        embedder.encode(queries[:8], threads=1)  # warm-up
        rng = random.Random(0)
        row = {}
        for label, size in (("one_batch", batch), (f"sub_batches_of_{QUERY_BATCH}", QUERY_BATCH)):
            times = []
            for _ in range(repeats):
                sample = rng.sample(queries, batch)
                start = time.perf_counter()
                embedder.encode(sample, size, threads=1)
                times.append(time.perf_counter() - start)
            row[f"{label}_ms_per_query"] = round(sorted(times)[len(times) // 2] / batch * 1000, 3)
        out[name] = row
        print(f"{name} queries: {row}", file=sys.stderr, flush=True)
    return {"batch": batch, "threads": 1, "encoders": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cranfield"))
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated, 'torch' first")
    parser.add_argument("--speed-docs", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads while timing (default: all)")
    parser.add_argument("--query-batch", type=int, default=25, help="queries encoded together in 'queries'")
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from indexer.ingest import load_beir

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    docs = load_beir(args.data, split="test").documents[: args.speed_docs]
    texts = [doc.body for doc in docs]
    result: dict[str, Any] = {"texts": len(texts), "batch_size": args.batch_size, "threads": args.threads}
    result["speed"] = speed(encoders, texts, args.batch_size, args.repeats, args.threads)
    queries = list(load_beir(args.data, split="test").queries.values())
    result["queries"] = query_speed(encoders, queries, args.query_batch)
    if not args.no_quality:
        result["quality"] = quality(encoders, args.data, args.batch_size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
