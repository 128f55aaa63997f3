"""One prepared GPU check: encoding speed, dense search GPU vs CPU, reranking cost per method. JSON out.

    HF_HUB_OFFLINE=1 python bench/gpu_check.py                 # on a CUDA machine, under 8 minutes
    HF_HUB_OFFLINE=1 python bench/gpu_check.py --smoke --output /tmp/gpu_check.json   # tiny, on CPU

Writes to ``--output`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``gpu_check.json``),
after each part, so a timeout still leaves what was measured.

- ``encoding``: docs/s of MiniLM per encoder (torch float32 / torch-bf16 on the device; onnx-int8 on CPU).
- ``dense``: queries/s of FAISS flat and IVF inner-product search over N x 384 random unit vectors
  (1M full size), on the CPU and, where a faiss GPU build sees a GPU, on it; GPU vs CPU top-10 overlap.
- ``rerank``: per query wall time and tokens to rerank top-100 synthetic candidates: groupwise (G=20,
  all groups in one batch, slot decoding) vs listwise (window 20, stride 10) vs pointwise, on a randomly
  initialised model of real size (Qwen2.5-1.5B shape, bf16 where supported) with the SmolLM2 tokenizer:
  no weights are downloaded, so the quality is noise and only the cost means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL = {"docs": 2048, "vectors": 1_000_000, "nlist": 1024, "queries": 1000, "rerank_queries": 2}
SMOKE = {"docs": 16, "vectors": 5_000, "nlist": 16, "queries": 20, "rerank_queries": 1}
# Qwen2.5-1.5B's shape; the smoke run keeps its structure at a toy size.
QWEN_1_5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
             "tie_word_embeddings": True, "rms_norm_eps": 1e-6}
QWEN_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True}
WORDS = ["wing", "flow", "boundary", "layer", "heat", "transfer", "pressure", "shock", "wave", "supersonic",
         "laminar", "turbulent", "body", "nozzle", "jet", "thermal", "stress", "plate", "shell", "buckling",
         "vibration", "airfoil", "lift", "drag", "mach", "number"]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encoding(sizes: dict[str, int], dev: str) -> dict[str, Any]:
    from indexer.embedder import load_embedder

    texts = [" ".join(random.Random(n).choices(WORDS, k=120)) for n in range(sizes["docs"])]
    out = {}
    for encoder in ("torch", "torch-bf16", "onnx-int8"):
        embedder = load_embedder("all-MiniLM-L6-v2", encoder, dev)
        embedder.encode(texts[:64], 64)  # warm-up
        _sync(dev)
        start = time.perf_counter()
        embedder.encode(texts, 256 if dev == "cuda" else 64)
        _sync(dev)
        elapsed = time.perf_counter() - start
        on = "cpu" if encoder == "onnx-int8" else dev
        out[encoder] = {"docs_per_s": round(len(texts) / elapsed, 1), "device": on}
        _log("encoding", encoder, out[encoder])
    return {"texts": len(texts), "words_per_text": 120, **out}


def dense(sizes: dict[str, int]) -> dict[str, Any]:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    n, dim = sizes["vectors"], 384
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(n, sizes["queries"], replace=False)] + 0.1 * rng.standard_normal(
        (sizes["queries"], dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    out: dict[str, Any] = {"vectors": n, "dim": dim, "queries": len(queries), "k": 10, "faiss_gpus": gpus}
    for kind in ("flat", "ivf"):
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, sizes["nlist"], faiss.METRIC_INNER_PRODUCT)
            index.train(vectors[rng.choice(n, min(n, 64 * sizes["nlist"]), replace=False)])
            index.nprobe = 16
        index.add(vectors)
        row: dict[str, Any] = {}
        cpu_qps, cpu_ids = _qps(index, queries)
        row["cpu_qps"] = round(cpu_qps, 1)
        if gpus > 0:
            resources = faiss.StandardGpuResources()
            gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
            if kind == "ivf":
                gpu_index.nprobe = 16
            gpu_qps, gpu_ids = _qps(gpu_index, queries)
            row["gpu_qps"] = round(gpu_qps, 1)
            row["gpu_over_cpu"] = round(gpu_qps / cpu_qps, 2)
            row["top10_overlap"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                                                        zip(cpu_ids, gpu_ids, strict=True)])), 4)
            del gpu_index, resources
        out[kind] = row
        _log("dense", kind, row)
        del index
    return out


def _qps(index: Any, queries: Any) -> tuple[float, Any]:
    index.search(queries[:8], 10)  # warm-up
    start = time.perf_counter()
    _, ids = index.search(queries, 10)
    return len(queries) / (time.perf_counter() - start), ids


def rerank(sizes: dict[str, int], dev: str, smoke: bool, folder: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from reranker.backends.transformers_backend import TransformersBackend
    from reranker.groupwise import GroupwiseReranker
    from reranker.listwise import ListwiseReranker
    from reranker.models import resolve_model
    from reranker.pointwise import PointwiseReranker
    from reranker.precision import bf16_supported
    from reranker.types import Candidate

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    dtype = torch.bfloat16 if bf16_supported(dev) else torch.float32
    shape = QWEN_TINY if smoke else QWEN_1_5B
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model_dir = folder / ("qwen2-tiny-random" if smoke else "qwen2.5-1.5b-shape-random")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)  # next to it, so the folder loads like a downloaded model
    params = sum(p.numel() for p in model.parameters())
    del model
    dtype_name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    backend = TransformersBackend(str(model_dir), device=dev, dtype=dtype_name)
    depth = 20 if smoke else 100
    rng = random.Random(0)
    requests = []
    for q in range(sizes["rerank_queries"]):
        query = " ".join(rng.choices(WORDS, k=8))
        docs = [Candidate(id=f"q{q}d{n}", text=" ".join(rng.choices(WORDS, k=12 if smoke else 80)), score=-float(n))
                for n in range(depth)]
        requests.append((query, docs))
    methods = {
        "groupwise": GroupwiseReranker(backend, group_size=10 if smoke else 20, decoding="slots"),
        "listwise": ListwiseReranker(backend, window=10 if smoke else 20, stride=5 if smoke else 10),
        "pointwise": PointwiseReranker(backend),
    }
    out: dict[str, Any] = {"model": "Qwen2Config " + ("tiny" if smoke else "Qwen2.5-1.5B shape"),
                           "parameters": params, "dtype": str(dtype).removeprefix("torch."), "device": dev,
                           "candidates": depth, "queries": len(requests), "random_weights": True}
    for name, reranker in methods.items():
        rows = []
        for query, docs in requests:  # one query per call; groupwise batches all its groups in one round
            _sync(dev)
            start = time.perf_counter()
            ranking = reranker.rerank(query, docs)
            _sync(dev)
            t = ranking.trace
            rows.append({"wall_s": time.perf_counter() - start, "llm_calls": t.llm_calls,
                         "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                         "critical_path_depth": t.critical_path_depth, "decoding": t.decoding})
        out[name] = {k: (round(sum(r[k] for r in rows) / len(rows), 3) if k != "decoding" else rows[0][k])
                     for k in rows[0]}
        _log("rerank", name, out[name])
    if out["listwise"]["wall_s"]:
        out["groupwise_over_listwise_wall"] = round(out["groupwise"]["wall_s"] / out["listwise"]["wall_s"], 3)
    return out


def _sync(dev: str) -> None:
    if dev == "cuda":
        import torch

        torch.cuda.synchronize()


def _log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs on a CPU in about a minute")
    parser.add_argument("--parts", default="encoding,dense,rerank")
    default = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")
    parser.add_argument("--output", type=Path, default=default)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    dev = device()
    sizes = SMOKE if args.smoke else FULL
    result: dict[str, Any] = {
        "smoke": args.smoke, "device": dev, "python": platform.python_version(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "sizes": sizes,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
            t = time.perf_counter()
            try:
                if part == "encoding":
                    result[part] = encoding(sizes, dev)
                elif part == "dense":
                    result[part] = dense(sizes)
                elif part == "rerank":
                    result[part] = rerank(sizes, dev, args.smoke, Path(tmp))
                else:
                    raise ValueError(f"unknown part {part!r}")
            except Exception as exc:  # one failing part must not lose the others' numbers
                result[part] = {"error": f"{type(exc).__name__}: {exc}"}
            result.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t, 1)
            args.output.write_text(json.dumps(result, indent=2) + "\n")
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    args.output.write_text(text + "\n")
    print(text)
    return 1 if any(isinstance(v, dict) and "error" in v for v in result.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
