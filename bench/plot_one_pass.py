"""Quality against latency of what the rerank stage serves: two passes (as stored) against one pass.

    .venv/bin/python bench/plot_one_pass.py --eval runs/one-pass-eval-dense.json \
        --speed runs/rerank-speed-one-pass.json --output docs/results-one-pass.png

Reads ``bench/eval_grouprank.py --likelihood`` (one model) and ``bench/rerank_speed.py`` (models "before"
and "after", top-100). Left: NDCG@10 on the DL19 test queries (BM25 top-100); right: on the Cranfield test
queries (hybrid top-20); x: ms per query to rerank a top-100 (the first stage and the dense similarity at
0 ms: the first stage computes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--speed", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = json.loads(args.eval.read_text())["models"][0]
    speed = json.loads(args.speed.read_text())["models"]
    two, one = speed["before"]["top100"]["median_ms"], speed["after"]["top100"]["median_ms"]
    points = [  # label, key suffix, ms
        ("first stage", None, 0.0), ("dense similarity alone", "dense_only", 0.0),
        ("slots alone (1 pass)", "groupwise_only", two - one), ("likelihood alone (1 pass)", "likelihood_only", one),
        ("before: slots + likelihood, as stored (2 passes)", "fused_as_stored", two),
        ("best mix with dense (2 passes)", "fused_best_mix", two),
        ("served: likelihood + dense + retriever (1 pass)", "fused", one),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for ax, subset, title in ((axes[0], "dl19", "DL19 test (15 q, BM25 top-100)"),
                              (axes[1], "cranfield", "Cranfield test (40 q, hybrid top-20)")):
        baseline = json.loads(args.eval.read_text())["baselines"][f"{subset}_first_stage"]
        for label, key, ms in points:
            y = baseline if key is None else row[f"{subset}_{key}"]
            ax.scatter([ms / 1000], [y], marker="*" if key == "fused" else "o", s=90 if key == "fused" else 30)
            ax.annotate(label, (ms / 1000, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("s per query to rerank a top-100 (2 CPU cores)")
        ax.set_xlim(-0.5, 12)
        ax.set_ylabel("NDCG@10")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
