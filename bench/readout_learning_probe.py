"""Does read-out SFT generalise at a learning rate? RankNet loss on held-out groups while training.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/readout_learning_probe.py --lr 1e-3 --steps 400 --threads 1

Small groups (5 documents cut to 150 characters) from the mined synthetic sets of ``--work``: the first
60 are held out, the next ``--steps`` train one step each (no repeats), and the mean RankNet loss of the
held-out groups (0.693 = chance) is printed every 100 steps. A quick check of a training setting before a
full run, on one thread so that it can run beside one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/readout"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.models import resolve_model
    from reranker.readout import ReadoutLayout
    from trainer.readout_data import read_sets, sample_groups
    from trainer.readout_train import ReadoutTrainConfig, encode_examples, forward, sft_loss, truncate_layers
    from trainer.slot_sft import prepare_model

    torch.set_num_threads(args.threads)
    sets = [s for f in sorted(args.work.glob("mined-*.jsonl")) for s in read_sets(f)]
    random.Random(0).shuffle(sets)
    groups = sample_groups(sets, json.loads((args.work / "teacher.json").read_text())["weights"], 5, 1, 0, 150)
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    layout = ReadoutLayout(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], True)
    examples = encode_examples(groups, layout)
    held, train = examples[:60], examples[60:60 + args.steps]
    config = ReadoutTrainConfig(learning_rate=args.lr, freeze_fraction=0.2)
    model = prepare_model(truncate_layers(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                          args.layers), config)

    def held_out() -> float:
        model.eval()
        with torch.no_grad():
            losses = [sft_loss(forward(model, [e], layout.tokens, torch.float32, 0), [e], config)[1]["ranknet"]
                      for e in held]
        model.train()
        return round(sum(losses) / len(losses), 4)

    rows = [{"step": 0, "held_out_ranknet": held_out()}]
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    started = time.monotonic()
    for step, e in enumerate(train, 1):
        loss, _ = sft_loss(forward(model, [e], layout.tokens, torch.float32, 0), [e], config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            rows.append({"step": step, "held_out_ranknet": held_out(), "seconds": round(time.monotonic() - started)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"lr": args.lr, "layers": args.layers, "rows": rows}))


if __name__ == "__main__":
    main()
