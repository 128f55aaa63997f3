"""Int8 variants of the OpenVINO decoder for the shipped model's one pass: NDCG@10 and milliseconds.

    pip install -e '.[quantize]'
    HF_HUB_OFFLINE=1 .venv/bin/python bench/quantize_probe.py --output runs/quantize-probe.json \
        --plot docs/results-int8.png

Variants of the decoder graph ``OpenVINODecoder`` caches (compiled bf16, as served):
- ``bf16``: as served;
- ``w8``: int8 weights (``nncf.compress_weights``, INT8_ASYM), activations quantized at run time by the
  CPU plugin;
- ``ptq``, ``ptq-mixed``, ``ptq-mixed-sq``: int8 weights and activations (``nncf.quantize``, transformer
  model type; the performance or mixed preset; ``-sq``: SmoothQuant, alpha 0.5), calibrated on likelihood rows
  built from the Python language reference (``pydoc_data.topics``), never from the evaluation data.

A variant is judged on the DL19 train and validation queries (28, BM25 top 20, rerank score alone): it
would be served only if it kept NDCG@10 within 0.005 of ``bf16`` there. The test queries (15) are shown too.
Speed: every variant on each train + validation query in turn (``--rounds`` passes), the median ms per query
and the median per-query speed-up over ``bf16``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit

QUESTIONS = ("how does this work", "what is the syntax of a loop", "when is an exception raised",
             "what does the keyword mean")


def calibration(backend, batches: int = 4, rows: int = 16) -> list[dict]:
    """Padded likelihood rows (input ids and mask) over the Python language reference."""
    from pydoc_data.topics import topics

    import numpy as np

    from reranker.likelihood import likelihood_prompt, query_continuation

    texts = [" ".join(topics[k].split())[:250] for k in sorted(topics)]
    rng = np.random.default_rng(0)
    out = []
    for b in range(batches):
        picked = rng.choice(len(texts), rows, replace=False)
        ids = [backend._ids(likelihood_prompt(texts[p])) + backend._ids(query_continuation(QUESTIONS[(b + k) % 4]))
               for k, p in enumerate(picked)]
        width = max(map(len, ids))
        tokens = np.full((rows, width), backend.pad_id, np.int64)
        mask = np.zeros((rows, width), np.int64)
        for r, row in enumerate(ids):
            tokens[r, : len(row)], mask[r, : len(row)] = row, 1
        out.append({"input_ids": tokens, "attention_mask": mask})
    return out


def variant(name: str, graph, calib: list[dict]):
    from grouprank.errors import require

    nncf = require("nncf", "quantize")
    if name == "w8":
        return nncf.compress_weights(graph, mode=nncf.CompressWeightsMode.INT8_ASYM)
    if name.startswith("ptq"):
        preset = nncf.QuantizationPreset.MIXED if "mixed" in name else nncf.QuantizationPreset.PERFORMANCE
        advanced = nncf.AdvancedQuantizationParameters(smooth_quant_alpha=0.5 if name.endswith("-sq") else -1)
        return nncf.quantize(graph, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, preset=preset,
                             subset_size=len(calib), advanced_parameters=advanced)
    if name != "bf16":
        raise SystemExit(f"unknown variant {name!r}")
    return graph


def score(reranker, sets, qrels) -> tuple[float, list[float]]:
    from grouprank.metrics import evaluate

    run, walls = {}, []
    for qc in sets:
        ranking = reranker.rerank(qc.query, qc.candidates[:20])
        run[qc.qid] = dict(zip(ranking.ids, ranking.scores, strict=True))
        walls.append(ranking.trace.wall_ms)
    return evaluate(qrels, run, ("ndcg@10",))["ndcg@10"], walls


def plot(result: dict, output: Path) -> None:
    """NDCG@10 (train + validation) against ms for 20 documents, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    base = next(r for r in result["rows"] if r["variant"] == "bf16")["ndcg@10_train_val"]
    ax.axhspan(base - 0.005, base + 0.005, color="tab:green", alpha=0.15, label="bf16 +/- 0.005 (allowed)")
    for k, row in enumerate(result["rows"]):
        x, y = row["median_ms_20"], row["ndcg@10_train_val"]
        ax.scatter([x], [y], s=50, marker="osD^v"[k % 5], label=f"{row['variant']}: {x:,.0f} ms, {y:.4f}")
    ax.set_xlim(0, max(r["median_ms_20"] for r in result["rows"]) * 1.3)
    ax.set_xlabel("ms to rerank 20 DL19 passages (median per query, 2 CPU cores, OpenVINO)")
    ax.set_ylabel("NDCG@10, DL19 train + validation")
    ax.set_title("The shipped model's pass: bf16 against int8 variants")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(output, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="grouprank-smollm2-135m")
    p.add_argument("--variants", default="bf16,w8,ptq,ptq-mixed,ptq-mixed-sq")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--output", type=Path)
    p.add_argument("--plot", type=Path, help="also draw the result as this PNG")
    p.add_argument("--rounds", type=int, default=2, help="timed passes over the train + validation queries")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import openvino as ov

    from bench.dl19 import dl19_sets
    from reranker import load_reranker
    from reranker.backends.openvino_decoder import GRAPH_FILE, graph_folder

    corpus, chosen_on = dl19_sets(args.shared, "train,val")
    _, test = dl19_sets(args.shared, "test")
    qrels = {qc.qid: corpus.qrels[qc.qid] for qc in chosen_on + test}
    reranker = load_reranker("groupwise", model=args.model, backend="transformers", weight=1.0, engine="openvino")
    reranker.rerank(test[0].query, test[0].candidates[:20])  # converts (or reads) the graph
    backend = reranker.backend
    decoder = backend._openvino
    folder = graph_folder(backend.path, backend.lm.config.num_hidden_layers)
    config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": decoder.compiled.get_property("INFERENCE_NUM_THREADS")}
    calib = calibration(backend)
    compiled, rows = {}, []
    for name in args.variants.split(","):
        started = time.monotonic()
        graph = variant(name, ov.Core().read_model(folder / GRAPH_FILE), calib)
        compiled[name] = decoder.compiled = ov.Core().compile_model(graph, "CPU", config)
        built = time.monotonic() - started
        chosen_ndcg, _ = score(reranker, chosen_on, {q: qrels[q] for q in (qc.qid for qc in chosen_on)})
        test_ndcg, _ = score(reranker, test, {q: qrels[q] for q in (qc.qid for qc in test)})
        rows.append({"variant": name, "ndcg@10_train_val": round(chosen_ndcg, 4),
                     "ndcg@10_test": round(test_ndcg, 4), "build_s": round(built, 1)})
    # speed: the variants in turn on each query (the order rotating), so a busy machine's drift falls on all
    names, walls = list(compiled), {name: [] for name in compiled}
    for k, qc in enumerate(chosen_on * args.rounds):
        for name in names[k % len(names):] + names[: k % len(names)]:
            decoder.compiled = compiled[name]
            walls[name].append(reranker.rerank(qc.query, qc.candidates[:20]).trace.wall_ms)
    for row in rows:
        mine = walls[row["variant"]]
        row["median_ms_20"] = round(statistics.median(mine), 1)
        if "bf16" in walls:
            ratios = [b / m for b, m in zip(walls["bf16"], mine, strict=True)]
            row["speedup_vs_bf16"] = round(statistics.median(ratios), 3)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out = {"model": args.model, "speed_queries": len(chosen_on) * args.rounds, "rows": rows}
    emit(out, args.output)
    if args.plot:
        plot(out, args.plot)


if __name__ == "__main__":
    main()
