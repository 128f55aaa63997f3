"""Training speed per configuration: tokens/s and peak RSS of slot SFT steps on SmolLM2-135M. Prints JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_speed.py --steps 4 --output runs/train-speed.json

Each configuration runs in its own subprocess (so its peak RSS is its own) on the same synthetic batch
of groupwise prompts (4 groups of 10 documents, ~850 tokens each), after one warm-up step. The
defaults of ``bench/train_grouprank.py`` (bf16, LoRA r=16, lower third frozen, slot-only logits) were
chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit

CONFIGS = {
    "float32 full fine-tuning": {"dtype": "float32", "lora_r": 0, "freeze_fraction": 0.0},
    "bf16 full fine-tuning (fp32 master weights)": {"dtype": "bfloat16", "lora_r": 0, "freeze_fraction": 0.0},
    "bf16 full, lower 2/3 frozen": {"dtype": "bfloat16", "lora_r": 0, "freeze_fraction": 0.67},
    "bf16 LoRA r=16": {"dtype": "bfloat16", "lora_r": 16, "freeze_fraction": 0.0},
    "bf16 LoRA r=16, lower 1/3 frozen (default)": {"dtype": "bfloat16", "lora_r": 16, "freeze_fraction": 0.33},
    "bf16 LoRA r=16, lower 2/3 frozen": {"dtype": "bfloat16", "lora_r": 16, "freeze_fraction": 0.67},
}


def run_one(name: str, steps: int) -> dict:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.models import resolve_model
    from reranker.prompts import groupwise_messages
    from trainer.slot_data import SlotEncoder
    from trainer.slot_sft import SlotTrainConfig, train_slot_sft

    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    enc = SlotEncoder(tok)
    rng = random.Random(0)
    words = ["the", "river", "carries", "water", "from", "mountains", "to", "the", "sea", "while", "the",
             "moon", "pulls", "tides"]
    examples = []
    for _ in range(4 * (steps + 1)):
        docs = [" ".join(rng.choices(words, k=45)) for _ in range(10)]
        examples.append(enc.encode(groupwise_messages("what moves water", docs)[:-1],
                                   [rng.randrange(11) for _ in docs]))
    options = CONFIGS[name]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokens = sum(len(e.input_ids) for e in examples[:4])
    config = SlotTrainConfig(epochs=1, batch_tokens=4 * max(len(e.input_ids) for e in examples),
                             learning_rate=1e-4, **options)
    times: list[float] = []
    last = [time.monotonic()]

    def on_step(step: int, total: int, logs: dict) -> None:
        now = time.monotonic()
        times.append(now - last[0])
        last[0] = now

    train_slot_sft(model, tok, examples, config, on_step)
    measured = times[1:] or times  # the first step warms up
    seconds = sum(measured) / len(measured)
    return {"config": name, **options, "seconds_per_step": round(seconds, 2),
            "tokens_per_step": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--only", help="one configuration (used by the subprocesses)")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.only:
        print(json.dumps(run_one(args.only, args.steps)))
        return
    rows = []
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--only", name, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    emit({"model": "smollm2-135m-instruct", "threads": __import__("torch").get_num_threads(),
                       "rows": rows}, args.output)


if __name__ == "__main__":
    main()
