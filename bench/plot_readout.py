"""Quality against latency: NDCG@10 on the DL19 test queries against ms to rerank 20 documents.

    .venv/bin/python bench/plot_readout.py --eval runs/readout-eval.json --speed runs/rerank-speed.json \
        --extra "before (slots + likelihood as shipped)=0.5429" --output docs/results-readout.png

Points: the first stage and the MiniLM reorder (no LLM; drawn at 0 ms), each evaluated model's read-out
alone and fused, and ``--extra`` models whose quality comes from elsewhere (name=ndcg, their speed from the
speed JSON under the same name).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--speed", type=Path, required=True)
    p.add_argument("--subset", default="dl19_test")
    p.add_argument("--extra", default="", help="name=ndcg,... (speed looked up by name)")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = json.loads(args.eval.read_text())
    speed = json.loads(args.speed.read_text())["models"]
    points = [(name, 0.0, row[args.subset]) for name, row in ev["table"].items()]
    for name, row in ev["models"].items():
        ms = speed.get(name, {}).get("top20", {}).get("median_ms")
        if ms is not None:
            points += [(f"{name}: read-out alone", ms, row["readout"][args.subset]),
                       (f"{name}: fused (served)", ms, row["fused"][args.subset])]
    for pair in filter(None, args.extra.split(",")):
        name, value = pair.rsplit("=", 1)
        ms = speed.get(name.split(" (")[0], {}).get("top20", {}).get("median_ms")
        if ms is not None:
            points.append((name, ms, float(value)))
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, ms, ndcg in points:
        ax.scatter([ms], [ndcg])
        ax.annotate(f"{name} ({ndcg:.3f})", (ms, ndcg), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("ms to rerank 20 documents (median, 2 CPU cores)")
    ax.set_ylabel(f"NDCG@10, {args.subset}")
    ax.set_title("Quality against latency (no-LLM baselines drawn at 0 ms)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print(json.dumps({"points": points}))


if __name__ == "__main__":
    main()
