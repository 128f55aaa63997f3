"""The search API's own cost around the model: ``POST /search`` with ``rerank: true``, embedded reranking.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/request_path.py --concurrency 1,16 --requests 200

It starts ``grouprank serve`` on loopback (no broker: the rerank stage runs in the API process) over the
Python language reference, with a tiny random model as the reranker (``--model``), so the model's own
time is small and what is left is the request path: HTTP, validation, retrieval hand-off, the result
cache (off), queueing for the one model thread, conversions. Per concurrency (closed loop, keep-alive
connections): requests per second and, per request, the client's wall time, the retrieval and rerank
stages the server reports, the model's own time (``rerank_trace.wall_ms``), and ``path_ms`` = wall time
minus retrieval minus the model. Medians and 95th percentiles, JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Connection, free_port, prepare_index, start, stop, wait_ready


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)}


async def drive(port: int, queries: list[str], concurrency: int, requests: int) -> dict:
    rows: list[dict] = []
    failures = 0
    counter = iter(range(requests))

    async def client() -> None:
        nonlocal failures
        connection = Connection(port)
        try:
            for n in counter:
                payload = json.dumps({"query": queries[n % len(queries)], "k": 10, "rerank": True,
                                      "deadline_ms": 60000}).encode()
                started = time.perf_counter()
                status, body = await connection.post("/search", payload)
                wall = (time.perf_counter() - started) * 1000
                data = json.loads(body) if status == 200 else {}
                trace = data.get("rerank_trace") or {}
                if status != 200 or not data.get("reranked"):
                    failures += 1
                    continue
                timings = data["timings_ms"]
                model = float(trace.get("wall_ms", 0.0))
                rows.append({"wall": wall, "retrieval": timings["retrieval"], "rerank": timings["rerank"],
                             "model": model, "path": wall - timings["retrieval"] - model})
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    out = {"concurrency": concurrency, "requests": len(rows), "failures": failures,
           "qps": round(len(rows) / elapsed, 2)}
    for key in ("wall", "retrieval", "rerank", "model", "path"):
        out[f"{key}_ms"] = percentiles([r[key] for r in rows]) if rows else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--requests", type=int, default=200, help="per concurrency level (after 10 warm-up requests)")
    p.add_argument("--model", help="reranker model (default: a tiny random Qwen2 built here)")
    p.add_argument("--index", type=Path, help="index folder (default: the language reference, built once)")
    p.add_argument("--output", type=Path)
    args = p.parse_args()

    from grouprank.cli.quickstart import QUICKSTART_QUERIES, python_reference_documents
    from reranker.models import build_tiny_model, smollm2_path

    work = Path(tempfile.mkdtemp(prefix="grouprank-path-"))
    model = args.model or str(build_tiny_model(work / "tiny", arch="qwen2", seed=0, tokenizer=str(smollm2_path())))
    index = args.index or Path("runs/request-path-index")
    docs = python_reference_documents()
    prepare_index(index, docs)
    queries = [*QUICKSTART_QUERIES, *(d.title.replace("-", " ") for d in docs[::7])]
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GROUPRANK_RERANK_MODEL": model,
           "GROUPRANK_RERANK_CACHE_TTL_S": "0", "GROUPRANK_BROKER_URL": ""}
    server = start(["serve", "--index", str(index), "--host", "127.0.0.1", "--port", str(port)], env,
                   work / "serve.log")
    results = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", [server], need_workers=True)
        asyncio.run(drive(port, queries, 1, 10))  # warm-up
        for level in (int(c) for c in args.concurrency.split(",")):
            results.append(asyncio.run(drive(port, queries, level, args.requests)))
    finally:
        stop(server)
    report = {"model": model if args.model else "tiny random Qwen2 (2 layers)", "index": str(index),
              "levels": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
