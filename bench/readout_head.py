"""Train and evaluate read-out heads on the frozen decoder, no relevance labels in training.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/readout_head.py --work runs/readout --out runs/readout-head-model

Needs the cached stages of ``bench/train_readout.py --stop-after teacher`` in --work (the kept synthetic
sets and the teacher's weights). Then:

1. ``--train-groups`` synthetic groups of 20 (teacher targets) and every evaluation group (DL19: BM25
   top-100 of the 43 judged queries in groups of 20 as serving forms them; Cranfield: hybrid top-20 of
   the judged queries) are read ONCE by SmolLM2 cut to the largest of ``--depths``; one pass gives the
   read-out state at every depth (``trainer.readout_head.collect_states``, cached in --work).
2. For each depth and head (linear; one GELU layer of 256), SFT on the synthetic groups with the epoch
   chosen on the validation queries (8 DL19 + 20 Cranfield, qrels), then GRPO on and off.
3. Each head is evaluated alone and fused with the first stage (weight calibrated on the validation
   queries), on the DL19 test (15) and non-validation (35) queries, Cranfield test (40) and non-validation.
4. The shallowest head within ``--tie`` of the best validation NDCG@10 is written to --out as a model folder
   (``metadata.json`` + ``readout_head.safetensors``) that ``load_reranker`` serves.
Prints JSON (also --output).
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


def model_card(metadata: dict, results: dict) -> str:
    """What the model computes, from which data, and how well (its own numbers)."""
    serving, row = metadata["serving"], metadata["evaluation"]
    kind = "linear" if "linear" in metadata["head"] else "one GELU layer, then linear"
    return "\n".join([
        f"# {metadata['name']}",
        "",
        "A GroupRank reranker that scores a whole group of documents in **one forward pass**: SmolLM2-135M-Instruct",
        f"cut to its lower **{serving['layers']} layers** reads one prompt holding the instructions, the query, then",
        "each document followed by the query and `Relevance: ` (`reranker/readout.py`). A document's score is",
        f"`10 * sigmoid(head(h))`, with `h` the hidden state at its `Relevance: ` position ({kind} head,",
        "`readout_head.safetensors`): that state has the query, the earlier documents of the group and the",
        "document itself in view. The decoder's weights are the base model's, unchanged.",
        f"Groups of {serving['group_size']}, documents cut to {serving['max_doc_chars']} characters; fused with the",
        f"first stage at weight **{metadata['fusion_weight']}** (calibrated on the validation queries).",
        "",
        "## Data (no relevance labels in training)",
        f"- {results['train_groups']} groups of queries that SmolLM2 wrote for passages of Cranfield and of the",
        "  TREC DL 2019 pooled corpus (outside the validation and test queries' candidate pools), kept when the",
        "  hybrid index ranks their passage in its top 10, with hard candidates from the same search.",
        f"- Targets: BM25 and MiniLM cosine, min-max per query, weights {metadata['teacher']} calibrated on the",
        "  validation queries (8 DL19 + 20 Cranfield); the source passage 10. The epoch is also chosen there.",
        "- MS MARCO passages: non-commercial research terms; Cranfield: public research collection; base model",
        "  and MiniLM: Apache-2.0.",
        "",
        "## NDCG@10 (this model alone / fused with the first stage)",
        "| | DL19 test (15) | DL19 non-val (35) | Cranfield test (40) | Cranfield non-val |",
        "|---|---|---|---|---|",
        "| first stage | " + " | ".join(str(results["first_stage"][k]) for k in
                                         ("dl19_test", "dl19_nonval", "cranfield_test", "cranfield_nonval")) + " |",
        "| read-out alone | " + " | ".join(str(row["alone"][k]) for k in
                                            ("dl19_test", "dl19_nonval", "cranfield_test", "cranfield_nonval")) + " |",
        "| fused | " + " | ".join(str(row["fused"][k]) for k in
                                   ("dl19_test", "dl19_nonval", "cranfield_test", "cranfield_nonval")) + " |",
        "",
        "## Reproduce",
        "```",
        "HF_HUB_OFFLINE=1 .venv/bin/python bench/train_readout.py --work runs/readout --dl19-queries 3800 "
        "--cranfield-queries 1400 --stop-after teacher",
        metadata["command"],
        "```",
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("runs/readout"))
    p.add_argument("--out", type=Path, default=Path("runs/readout-head-model"))
    p.add_argument("--output", type=Path, default=Path("runs/readout-head.json"))
    p.add_argument("--base-model", default="smollm2-135m-instruct")
    p.add_argument("--depths", default="10,15,20")
    p.add_argument("--train-groups", type=int, default=500)
    p.add_argument("--group-size", type=int, default=20)
    p.add_argument("--max-doc-chars", type=int, default=250)
    p.add_argument("--cranfield-depth", type=int, default=20)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--tie", type=float, default=0.01, help="validation NDCG@10 within which the shallower depth wins")
    p.add_argument("--smoke", action="store_true", help="a few queries of each split only (checks the script)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grouprank.metrics import evaluate
    from grouprank.progress import console, progress_bar
    from grouprank.scores import min_max
    from indexer.index import Index
    from indexer.ingest import load_beir
    from reranker.backends.torch_readout import head_logits, head_scores, save_head
    from reranker.candidate_files import load_candidates
    from reranker.models import resolve_model
    from reranker.readout import ReadoutLayout
    from reranker.scoring import make_groups
    from reranker.types import Candidate
    from trainer.readout_data import _text, read_sets, sample_groups
    from trainer.readout_head import HeadConfig, HeadData, collect_states, grpo_head, train_head
    from trainer.recipe import QuerySplit, split_cranfield, split_dl19

    torch.manual_seed(args.seed)
    depths = [int(d) for d in args.depths.split(",")]
    teacher = json.loads((args.work / "teacher.json").read_text())["weights"]
    dl19_dir = args.shared / "trec-dl-2019"
    dl19, cran = load_beir(dl19_dir / "beir_pooled"), load_beir(args.shared / "cranfield")
    dl19_split = split_dl19(list(dl19.judged_queries()), args.seed)
    cran_split = split_cranfield(list(cran.judged_queries()))

    # -- evaluation sets: key -> (query, candidates, first-stage scores) ---------------------------------
    sets: dict[str, tuple[str, list[Candidate], list[float]]] = {}
    for qc in load_candidates(dl19_dir / "candidates" / "BM25_top100.json"):
        if qc.qid in dl19.qrels:
            sets[f"dl19:{qc.qid}"] = (qc.query, qc.candidates, [float(c.score) for c in qc.candidates])
    cran_ids = list(cran.judged_queries())
    with Index.open(args.work / "index-cranfield") as index:
        hits = index.search_batch([cran.queries[q] for q in cran_ids], k=args.cranfield_depth, mode="hybrid")
        for qid, found in zip(cran_ids, hits, strict=True):
            cands = [Candidate(id=h.id, text=h.text, title=h.title, score=float(h.score)) for h in found]
            sets[f"cran:{qid}"] = (cran.queries[qid], cands, [float(c.score) for c in cands])
    qrels = {**{f"dl19:{q}": v for q, v in dl19.qrels.items()}, **{f"cran:{q}": v for q, v in cran.qrels.items()}}
    if args.smoke:
        keep = {f"dl19:{q}" for s in (dl19_split.val, dl19_split.test, dl19_split.train) for q in s[:2]}
        keep |= {f"cran:{q}" for s in (cran_split.val, cran_split.test) for q in s[:3]}
        sets = {k: v for k, v in sets.items() if k in keep}
        dl19_split, cran_split = (
            QuerySplit(*[[q for q in getattr(split, part) if f"{tag}:{q}" in keep]
                         for part in ("train", "val", "test")])
            for tag, split in (("dl19", dl19_split), ("cran", cran_split)))
        cran_ids = [q for q in cran_ids if f"cran:{q}" in keep]
    val_set = {f"dl19:{q}" for q in dl19_split.val} | {f"cran:{q}" for q in cran_split.val}
    subsets = {
        "dl19_test": [f"dl19:{q}" for q in dl19_split.test],
        "dl19_nonval": [f"dl19:{q}" for q in dl19_split.train + dl19_split.test],
        "cranfield_test": [f"cran:{q}" for q in cran_split.test],
        "cranfield_nonval": [f"cran:{q}" for q in cran_ids if f"cran:{q}" not in val_set],
        "val": sorted(val_set),
    }

    # -- rows: synthetic training groups, then every evaluation group as serving forms it ---------------
    path = resolve_model(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    query_after = True  # the query repeated after each document, as the states were read and are served
    layout = ReadoutLayout(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], query_after)
    mined = [s for name in ("cranfield", "dl19") if (args.work / f"mined-{name}.jsonl").exists()
             for s in read_sets(args.work / f"mined-{name}.jsonl")]
    random.Random(args.seed).shuffle(mined)
    groups = sample_groups(mined[: args.train_groups], teacher, args.group_size, 1, args.seed, args.max_doc_chars)
    train_rows = [layout.row(g.query, g.texts) for g in groups]
    eval_owner: list[tuple[str, list[int]]] = []
    eval_rows = []
    for key, (query, cands, _) in sets.items():
        texts = [_text(c, args.max_doc_chars) for c in cands]
        for group in make_groups(len(cands), args.group_size, 1, 0)[0]:
            eval_owner.append((key, group))
            eval_rows.append(layout.row(query, [texts[i] for i in group]))

    name = f"head-states-{'-'.join(map(str, depths))}-{args.train_groups}{'-smoke' if args.smoke else ''}.pt"
    cache = args.work / name
    if cache.exists():
        states = torch.load(cache)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        from reranker.models import truncate_layers

        truncate_layers(model, max(depths))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = train_rows + eval_rows
        t0 = time.monotonic()
        with progress_bar(f"read-out states of {len(rows)} groups", len(rows)) as bar:
            seen = [0]

            def step(done: int, total: int) -> None:
                bar.advance(done - seen[0])
                seen[0] = done

            collected = collect_states(model, rows, pad, depths, on_step=step)
        states = {"depths": collected, "train": len(train_rows), "seconds": round(time.monotonic() - t0, 1),
                  "tokens": sum(len(r.ids) for r in rows)}
        torch.save(states, cache)
    console.print(f"states: {states['seconds']} s for {states['tokens']} tokens "
                  f"({states['tokens'] / states['seconds']:.0f} tokens/s at depth {max(depths)})")

    def eval_data(d: int, keys: set[str]) -> tuple[HeadData, list[tuple[str, list[int]]]]:
        """Evaluation groups of ``keys`` with qrels grades as targets."""
        picked = [(i, o) for i, o in enumerate(eval_owner) if o[0] in keys]
        xs = [states["depths"][d][states["train"] + i] for i, _ in picked]
        ys = [[float(qrels[key].get(sets[key][1][j].id, 0)) for j in group] for _, (key, group) in picked]
        return HeadData.from_groups(xs, ys), [o for _, o in picked]

    def scores_of(d: int, head: dict) -> dict[str, list[float]]:
        data, owners = eval_data(d, set(sets))
        with torch.no_grad():
            values = head_scores(head_logits(data.states, head))
        out = {key: [0.0] * len(sets[key][1]) for key in sets}
        for g, (key, group) in enumerate(owners):
            for k, j in enumerate(group):
                out[key][j] = float(values[g, k])
        return out

    def ndcg(scores: dict[str, list[float]], ids: list[str]) -> float:
        run = {}
        for key in ids:
            cands = sets[key][1]
            n = len(cands)
            run[key] = {c.id: v + 1e-9 * (n - i) for i, (c, v) in enumerate(zip(cands, scores[key], strict=True))}
        return round(evaluate({k: qrels[k] for k in ids}, run, ("ndcg@10",))["ndcg@10"], 4)

    first = {k: min_max(s[2]) for k, s in sets.items()}
    results: dict = {"train_groups": len(train_rows), "teacher_weights": teacher,
                     "subsets": {k: len(v) for k, v in subsets.items()},
                     "first_stage": {sub: ndcg(first, ids) for sub, ids in subsets.items()},
                     "states_seconds": states["seconds"], "heads": {}}
    # The untrained LM head's read-out at each depth, from the same states: expected score over the
    # tokens "0".."9" (P("1") stands for 1 and 10 together here: no second pass for the split)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    digits = torch.tensor(layout.tokens.first)
    values = torch.arange(len(layout.tokens.first), dtype=torch.float32)
    zero_shot = {}
    for d in depths:
        data, owners = eval_data(d, set(sets))
        with torch.no_grad():
            probs = torch.softmax(data.states @ lm.lm_head.weight[digits].T.float(), -1)
        flat = {key: [0.0] * len(sets[key][1]) for key in sets}
        expected = probs @ values
        for g, (key, group) in enumerate(owners):
            for k, j in enumerate(group):
                flat[key][j] = float(expected[g, k])
        zero_shot[f"depth{d}"] = {sub: ndcg(flat, ids) for sub, ids in subsets.items()}
    results["zero_shot_lm_readout"] = zero_shot
    console.print({"zero-shot LM-head read-out": zero_shot})
    del lm
    heads = {}
    for d in depths:
        train = HeadData.from_groups(states["depths"][d][: states["train"]], [g.targets for g in groups])
        held, _ = eval_data(d, val_set)
        for kind, hidden in (("linear", 0), ("mlp256", 256)):
            config = HeadConfig(hidden=hidden, epochs=300, seed=args.seed, grpo_epochs=2)
            head, out = train_head(train, config, held)
            variants = {"sft": head}
            tuned, grpo_report = grpo_head(head, train, config)
            variants["sft+grpo"] = tuned
            for stage, h in variants.items():
                scores = scores_of(d, h)
                row = {"alone": {sub: ndcg(scores, ids) for sub, ids in subsets.items()}}
                best_w, best = 0.0, -1.0
                for w in [i / 10 for i in range(11)]:
                    fused = {k: [w * r / 10 + (1 - w) * f for r, f in zip(scores[k], first[k], strict=True)]
                             for k in subsets["val"]}
                    if (v := ndcg(fused, subsets["val"])) > best:
                        best_w, best = w, v
                fused = {k: [best_w * r / 10 + (1 - best_w) * f for r, f in zip(scores[k], first[k], strict=True)]
                         for k in sets}
                row["fused"] = {sub: ndcg(fused, ids) for sub, ids in subsets.items()}
                row["fusion_weight"] = best_w
                row["sft"] = out["report"]
                if stage == "sft+grpo":
                    row["grpo"] = grpo_report
                name = f"depth{d}-{kind}-{stage}"
                results["heads"][name] = row
                heads[name] = (d, h, row)
                console.print({name: {"alone": row["alone"], "fused": row["fused"], "w": best_w}})
    # the shallowest (fastest) head within --tie of the best validation NDCG@10
    top = max(row["alone"]["val"] for _, _, row in heads.values())
    best_name = min((n for n in heads if heads[n][2]["alone"]["val"] >= top - args.tie),
                    key=lambda n: (heads[n][0], -heads[n][2]["alone"]["val"]))
    d, head, row = heads[best_name]

    # Ablations at the chosen depth and head: training data size, and the source passage alone as the label
    kind = best_name.split("-")[1]
    hidden = 0 if kind == "linear" else int(kind.removeprefix("mlp"))
    held, _ = eval_data(d, val_set)
    every = states["depths"][d][: states["train"]]
    ablations = {}
    variants = {f"{n} groups": (every[:n], [g.targets for g in groups[:n]])
                for n in (50, 150, len(groups) // 2) if n < len(groups)}
    variants["source passage only (10, others 0)"] = (every, [[10.0 if p else 0.0 for p in g.positive] for g in groups])
    for label, (xs, ys) in variants.items():
        h, _ = train_head(HeadData.from_groups(xs, ys), HeadConfig(hidden=hidden, epochs=300, seed=args.seed), held)
        scores = scores_of(d, h)
        ablations[label] = {sub: ndcg(scores, ids) for sub, ids in subsets.items()}
        console.print({label: ablations[label]})
    results["ablations"] = {"depth": d, "head": kind, "rows": ablations}
    results["chosen"] = best_name
    args.out.mkdir(parents=True, exist_ok=True)
    save_head(args.out, head)
    metadata = {"name": args.out.name, "stage": "readout-head", "base_model": args.base_model,
                "fusion_weight": row["fusion_weight"],
                "serving": {"decoding": "readout", "layers": d, "query_after": query_after,
                            "group_size": args.group_size, "max_doc_chars": args.max_doc_chars,
                            "likelihood_weight": 0.0},
                "head": best_name, "teacher": teacher, "evaluation": row,
                "training": {"recipe": {"layers": d, "query_after": query_after, "group_size": args.group_size,
                                        "max_doc_chars": args.max_doc_chars, "train_groups": len(train_rows),
                                        "seed": args.seed}},
                "command": "HF_HUB_OFFLINE=1 .venv/bin/python bench/readout_head.py " + " ".join(sys.argv[1:])}
    (args.out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(metadata, results))
    print(json.dumps(results, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
