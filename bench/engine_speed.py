"""One engine serving the rerank pass: milliseconds per query and NDCG@10, as JSON, one engine per run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_speed.py --engine transformers --llm-engine openvino
    HF_HUB_OFFLINE=1 .venv-vllm/bin/python bench/engine_speed.py --engine vllm --dtype bfloat16
    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_speed.py --engine openai --base-url http://127.0.0.1:8000/v1
    .venv/bin/python bench/engine_speed.py --plot runs/engine-a.json,runs/engine-b.json --output engines.png

The reranker is ``load_reranker("groupwise", model=--model, backend=--engine)`` with the model's own serving
settings (the shipped model: one pass, the query likelihood), ranking by the rerank score alone
(``weight`` 1), so engines that read the same scores give the same NDCG@10. An ``openai`` engine must serve
the model under the name ``--model`` (e.g. ``vllm ... --served-model-name grouprank-smollm2-135m``).

Quality: the DL19 test queries (seeded split), BM25 top 20. Speed: the first ``--speed-queries`` of
them at each depth, after one warm-up rerank; the median and mean wall milliseconds per query, passes
and prompt tokens. ``--plot`` draws NDCG@10 against the milliseconds for 20 documents of several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit


def backend_options(args: argparse.Namespace) -> dict:
    if args.engine == "vllm":
        return {"dtype": args.dtype or "auto", "max_model_len": 4096, "enforce_eager": True}
    if args.engine == "openai":
        return {"base_url": args.base_url, "max_concurrency": args.concurrency}
    return {"dtype": args.dtype or "auto", "engine": args.llm_engine}


def measure(args: argparse.Namespace) -> dict:
    from bench.dl19 import dl19_sets
    from bench.rerank_speed import depth_timings
    from grouprank.metrics import evaluate
    from reranker import load_reranker

    options = {"weight": 1.0, **json.loads(args.options)}
    started = time.monotonic()
    reranker = load_reranker("groupwise", model=args.model, backend=args.engine, **options, **backend_options(args))
    loaded = time.monotonic() - started
    corpus, sets = dl19_sets(args.shared, args.which)
    reranker.rerank(sets[0].query, sets[0].candidates[:20])  # warm-up
    run, traces = {}, []
    for qc in sets:
        ranking = reranker.rerank(qc.query, qc.candidates[:20])
        run[qc.qid] = dict(zip(ranking.ids, ranking.scores, strict=True))
        traces.append(ranking.trace)
    qrels = {qc.qid: corpus.qrels[qc.qid] for qc in sets}
    out: dict = {
        "engine": args.engine, "model": args.model, "dtype": args.dtype,
        "llm_engine": getattr(reranker.backend, "engine", None), "label": args.label or args.engine,
        "machine": platform.processor() or platform.machine(), "load_s": round(loaded, 1),
        "decoding": traces[0].decoding, "queries": len(sets),
        "ndcg@10_top20": round(evaluate(qrels, run, ("ndcg@10",))["ndcg@10"], 4),
        "errors": sum(len(t.errors) for t in traces),
    }
    for depth in (int(d) for d in args.depths.split(",")):
        out[f"top{depth}"] = depth_timings(reranker, sets[: args.speed_queries], depth)
    return out


def plot(files: list[Path], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(f.read_text()) for f in files]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, row in enumerate(rows):
        x, y = row["top20"]["median_ms"], row["ndcg@10_top20"]
        ax.scatter([x], [y], s=50, marker="osD^v"[k % 5], label=f"{row['label']}: {x:,.0f} ms, {y:.4f}")
    values = [row["ndcg@10_top20"] for row in rows]
    ax.set_ylim(min(values) - 0.05, max(values) + 0.05)  # the engines' differences at the scale of real gains
    ax.set_xlim(0, max(row["top20"]["median_ms"] for row in rows) * 1.35)
    ax.set_xlabel("ms to rerank 20 DL19 passages (median per query, 2 CPU cores)")
    ax.set_ylabel("NDCG@10, DL19 test, rerank score alone")
    ax.set_title("One rerank pass (query likelihood) on each engine")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(output, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("transformers", "vllm", "openai"), default="transformers")
    p.add_argument("--model", default="grouprank-smollm2-135m")
    p.add_argument("--dtype", help="transformers / vllm: auto, bfloat16, float32")
    p.add_argument("--llm-engine", default="auto", help="transformers: what runs the forward (auto, torch, openvino)")
    p.add_argument("--base-url", help="openai: the server's /v1 URL")
    p.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight")
    p.add_argument("--options", default="{}", help="reranker options as JSON, e.g. '{\"likelihood_weight\": 1}'")
    p.add_argument("--label")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--which", default="test")
    p.add_argument("--depths", default="20,100")
    p.add_argument("--speed-queries", type=int, default=5)
    p.add_argument("--plot", help="comma-separated JSON files of earlier runs: draw them into --output (PNG)")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.plot:
        if args.output is None:
            p.error("--plot needs --output")
        plot([Path(f) for f in args.plot.split(",")], args.output)
        return
    result = measure(args)
    emit(result, args.output)


if __name__ == "__main__":
    main()
