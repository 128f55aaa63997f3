"""Does ``/search`` with ``rerank: true`` rerank with every default? The quickstart queries against a running
server, as a new user would send them.

    grouprank quickstart --directory runs/qs --no-rerank
    GROUPRANK_RERANK_CACHE_TTL_S=0 grouprank serve --index runs/qs --port 18011 &
    .venv/bin/python bench/search_defaults.py --url http://127.0.0.1:18011

Start the server with the result cache off (``GROUPRANK_RERANK_CACHE_TTL_S=0``): a cached answer costs no
rerank. Prints JSON: per query whether the answer was reranked, the reason when not, the rerank stage's ms
and whether the answer came from the cache (the trace says so).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:18011")
    p.add_argument("--repeats", type=int, default=2, help="rounds over the queries (the first warms up)")
    args = p.parse_args()

    import httpx

    from grouprank.cli.quickstart import QUICKSTART_QUERIES

    rows = []
    with httpx.Client(base_url=args.url, timeout=120) as client:
        for round_ in range(args.repeats):
            for query in QUICKSTART_QUERIES:
                body = client.post("/search", json={"query": query, "k": 10 - round_, "rerank": True}).json()
                rows.append({"round": round_, "query": query, "reranked": body.get("reranked"),
                             "reason": body.get("reason"), "rerank_ms": body.get("timings_ms", {}).get("rerank"),
                             "cached": bool((body.get("rerank_trace") or {}).get("cached"))})
    last = [r for r in rows if r["round"] == args.repeats - 1]
    print(json.dumps({"url": args.url, "reranked": sum(bool(r["reranked"]) for r in last), "of": len(last),
                      "cached": sum(r["cached"] for r in rows), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
