"""Load benchmark of the search API on loopback: N concurrent clients for T seconds (JSON on stdout).

    python bench/load.py --scenario retrieval --clients 50 --seconds 20
    python bench/load.py --scenario rerank --clients 8 --seconds 20
    python bench/load.py --scenario both --index runs/load-index --output runs/bench-load.json

It starts the API (``grouprank serve`` on 127.0.0.1, ``--api-workers`` processes) and, for the
rerank scenario, Celery rerank workers (``grouprank worker --queues rerank``) on Redis with a tiny random
model (or ``--model``). Scenarios:

- ``retrieval``: ``POST /search`` with ``rerank: false``.
- ``rerank``: ``POST /search`` with ``rerank: true`` through the rerank queue; a search whose reranking
  misses ``--deadline-ms`` still answers (degraded, in retrieval order) and is counted as such.

Reported per scenario: requests, QPS, latency p50/p90/p99/max (ms), errors (non-200 answers), lost
requests (no answer at all), and for rerank how many searches the rerank stage answered in time
(`rerank_answered`) and how many degraded to retrieval order, and why.
The corpus is the BEIR directory ``--data`` (default: the shared Cranfield copy, if present) or else the
Python language reference; queries come from the same source. Clients and duration are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MAX_CLIENTS = 256
MAX_SECONDS = 300
HOST = "127.0.0.1"  # loopback only: this benchmark never targets another machine


def default_data() -> Path | None:
    shared = Path(os.environ.get("GROUPRANK_DATA", REPO.parent / "shared" / "data")) / "cranfield"
    return shared if (shared / "corpus.jsonl").is_file() else None


def corpus(data: Path | None) -> tuple[list, list[str]]:
    """Documents and query texts."""
    if data is not None:
        from indexer.ingest import load_beir

        dataset = load_beir(data)
        return dataset.documents, list(dataset.queries.values())
    from grouprank.cli.quickstart import QUICKSTART_QUERIES, python_reference_documents

    docs = python_reference_documents()
    return docs, [*QUICKSTART_QUERIES, *(d.title.replace("-", " ") for d in docs[::7])]


def prepare_index(path: Path, docs: list) -> None:
    from indexer.index import Index

    if (path / "CURRENT").exists():
        return
    started = time.monotonic()
    with Index.create(path) as index:
        index.upsert(docs)
    print(f"built {path} ({len(docs)} documents) in {time.monotonic() - started:.0f} s", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grouprank.cli.main", *args], cwd=REPO, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(base: str, processes: list[subprocess.Popen], need_workers: bool, timeout: float = 300.0) -> None:
    """Until ``/readyz`` reports the index open (and, with ``need_workers``, every check ok)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(p.poll() is not None for p in processes):
            raise SystemExit("a service exited during start-up (see the logs in --logs)")
        try:
            checks = httpx.get(f"{base}/readyz", timeout=5).json()["checks"]
            if checks["index"] == "ok" and (not need_workers or set(checks.values()) == {"ok"}):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{base}/readyz never reported ready (see the logs in --logs)")


class Connection:
    """A minimal HTTP/1.1 keep-alive client (POST, Content-Length bodies): the load generator shares the
    CPU with the server, so it should cost as little as possible (a general client costs ~1 ms/request)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: application/json"
                          f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        status = int((await self.reader.readuntil(b"\r\n")).split()[1])
        length = None
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError("response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(port: int, queries: list[str], body: dict, clients: int, seconds: float, warmup: float,
               timeout: float) -> dict:
    """``clients`` connections post searches back to back; only requests started after ``warmup`` count.
    A request with no complete answer within ``timeout`` is lost (its connection is reopened)."""
    records: list[tuple[float, int | None, str | None]] = []
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup, begin + warmup + seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = Connection(port)
        while (sent := time.perf_counter()) < stop_at:
            payload = json.dumps({**body, "query": rng.choice(queries)}).encode()
            outcome = None
            try:
                status, answer = await asyncio.wait_for(connection.post("/search", payload), timeout)
                if status == 200 and body.get("rerank"):
                    data = json.loads(answer)
                    outcome = "answered" if data["rerank_trace"] is not None else f"degraded: {data['reason']}"
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                status, outcome = None, f"lost: {type(exc).__name__}"
                connection.close()
            if sent >= measure_from:
                records.append((time.perf_counter() - sent, status, outcome))
        connection.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - measure_from
    latencies = sorted(r[0] * 1000 for r in records)
    statuses = Counter(str(r[1]) for r in records)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, round(q / 100 * (len(latencies) - 1)))], 2) \
            if latencies else 0.0

    result = {
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(records),
        "qps": round(len(records) / elapsed, 1), "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
        "max_ms": round(latencies[-1], 2) if latencies else 0.0,
        "errors": sum(n for s, n in statuses.items() if s not in ("200", "None")),
        "lost": statuses.get("None", 0), "status_counts": dict(statuses),
    }
    if body.get("rerank"):
        outcomes = Counter(r[2] for r in records if r[2] is not None)
        result["rerank_answered"] = outcomes.pop("answered", 0)
        result["degraded"] = sum(n for o, n in outcomes.items() if o.startswith("degraded"))
        result["outcomes"] = dict(outcomes.most_common(5))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("retrieval", "rerank", "both"), default="both")
    parser.add_argument("--clients", type=int, default=None,
                        help="concurrent clients (default: 50 for retrieval, 8 for rerank)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--mode", choices=("bm25", "dense", "hybrid"), default="hybrid")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--deadline-ms", type=float, default=5000.0, help="per-search deadline (rerank)")
    # One API process using every core, as `grouprank serve` runs by default. With several uvicorn workers
    # the 50 keep-alive connections, opened in a burst, are all accepted by whichever worker wakes first
    # (asyncio accepts a backlog's worth per wake-up): measured, docs/results.md "Load".
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--rerank-workers", type=int, default=1, help="Celery rerank worker processes")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="OMP_NUM_THREADS of every service (default: the CPU count; lower it for several workers)")
    parser.add_argument("--data", type=Path, default=default_data(), help="BEIR directory for the corpus")
    parser.add_argument("--index", type=Path, default=None,
                        help="index directory (built there if missing and kept; default: a temporary one)")
    parser.add_argument("--model", default=None, help="rerank model (default: a tiny random model)")
    parser.add_argument("--rerank-depth", type=int, default=10, help="hits reranked per search")
    parser.add_argument("--group-size", type=int, default=10, help="documents per GroupRank prompt")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--logs", type=Path, default=None, help="directory for service logs")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    scenarios = ["retrieval", "rerank"] if args.scenario == "both" else [args.scenario]
    for name in ("clients", "api_workers", "rerank_workers", "torch_threads", "rerank_depth", "group_size"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= MAX_CLIENTS:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.warmup <= 60:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}] and --warmup in [0, 60]")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="grouprank-load-"))
    logs = args.logs or work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    docs, queries = corpus(args.data)
    index_dir = args.index or work / "index"
    prepare_index(index_dir, docs)

    model = args.model
    if model is None and "rerank" in scenarios:
        from reranker.models import SMOLLM2_ALIAS, build_tiny_model, resolve_model

        model = build_tiny_model(work / "tiny-model", tokenizer=resolve_model(SMOLLM2_ALIAS))
    prefix = f"grouprank-load-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "GROUPRANK_INDEX_DIR": str(index_dir), "GROUPRANK_BROKER_URL": args.redis_url,
           "GROUPRANK_KEY_PREFIX": prefix, "GROUPRANK_RERANK_MODEL": model or "unused",
           "GROUPRANK_RERANK_DEPTH": str(args.rerank_depth),
           "GROUPRANK_RERANK_OPTIONS": json.dumps({"group_size": args.group_size}),
           "GROUPRANK_MAX_DEADLINE_MS": str(max(args.deadline_ms, 60000.0)), "GROUPRANK_PROGRESS": "0",
           "OMP_NUM_THREADS": str(args.torch_threads)}
    port = free_port()
    base = f"http://{HOST}:{port}"
    report: dict = {"corpus": str(args.data) if args.data else "python-reference", "documents": len(docs),
                    "mode": args.mode, "k": args.k, "api_workers": args.api_workers,
                    "torch_threads": args.torch_threads, "cpus": os.cpu_count()}
    processes: list[subprocess.Popen] = []
    try:
        processes.append(start(["serve", "--host", HOST, "--port", str(port), "--workers", str(args.api_workers),
                                "--log-level", "warning"], env, logs / "api.log"))
        if "rerank" in scenarios:
            report.update(rerank_workers=args.rerank_workers, rerank_model=model, deadline_ms=args.deadline_ms,
                          rerank_depth=args.rerank_depth, group_size=args.group_size)
            for n in range(args.rerank_workers):
                processes.append(start(["worker", "--queues", "rerank", "--hostname", f"load{n}-{prefix}@%h",
                                        "--loglevel", "warning"], env, logs / f"rerank-{n}.log"))
        wait_ready(base, processes, need_workers="rerank" in scenarios)
        for scenario in scenarios:
            rerank = scenario == "rerank"
            clients = args.clients or (8 if rerank else 50)
            body = {"k": args.k, "mode": args.mode, "rerank": rerank}
            if rerank:
                body["deadline_ms"] = args.deadline_ms
            timeout = args.deadline_ms / 1000 + 30 if rerank else 30
            print(f"{scenario}: {clients} clients for {args.seconds:g} s", file=sys.stderr)
            report[scenario] = asyncio.run(load(port, queries, body, clients, args.seconds, args.warmup, timeout))
    finally:
        for process in processes:
            stop(process)
        try:
            import redis

            client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=1)
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        except Exception:
            pass
        if args.logs is None:
            shutil.rmtree(work, ignore_errors=True)
        elif args.index is None:
            shutil.rmtree(work / "index", ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
