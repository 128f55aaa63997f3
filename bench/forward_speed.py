"""One forward pass of SmolLM2-135M over a group-sized prompt, by precision and depth, on this CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/forward_speed.py --tokens 1600 --layers 30,15,10

Prints JSON: the CPU's native bf16 support (what ``dtype="auto"`` decides on), and the median seconds of
a forward pass (no KV cache, no generation: the read-out's pass) for float32 and bfloat16 at each depth,
plus torch's dynamic int8 quantisation at full depth.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=1600)
    p.add_argument("--layers", default="30,15,10")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM

    from grouprank.precision import bf16_supported
    from reranker.models import resolve_model

    path = resolve_model(args.model)
    ids = torch.randint(100, 40000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    out: dict = {"tokens": args.tokens, "torch_threads": torch.get_num_threads(), "native_bf16": bf16_supported("cpu"),
                 "seconds": {}}

    def timed(model) -> float:
        runs = []
        with torch.inference_mode():
            model.model(input_ids=ids)  # warm-up
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model.model(input_ids=ids)
                runs.append(time.perf_counter() - t0)
        return round(statistics.median(runs), 3)

    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        layers = model.model.layers
        for depth in (int(x) for x in args.layers.split(",")):
            model.model.layers = layers[:depth]
            out["seconds"][f"{str(dtype).split('.')[1]}_{depth}L"] = timed(model)
            print(json.dumps(out["seconds"]), file=sys.stderr)
        model.model.layers = layers
        if dtype is torch.float32:
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            out["seconds"][f"int8-dynamic_{len(layers)}L"] = timed(quantized)
    out["tokens_per_s"] = {k: round(args.tokens / v, 1) for k, v in out["seconds"].items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
