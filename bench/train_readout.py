"""Train the read-out model from scratch with no relevance labels (the shipped model's command).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_readout.py --work runs/readout --out runs/readout-model

Stages (each cached in --work; a killed run resumes after its last finished stage):
1. the DL19 pooled corpus and Cranfield indexed by the serving ``Index`` (hybrid, MiniLM);
2. queries synthesized by SmolLM2 from passages (DL19: outside the candidate pools of the validation and
   test queries), kept when hybrid search ranks their passage in its top 10, with their top-30 candidates;
3. the BM25 + MiniLM teacher, its weights calibrated on the validation queries (8 DL19 + 20 Cranfield);
4. read-out SFT (listwise KL + RankNet + point CE) and GRPO on the lower ``--layers`` layers
   (``trainer.readout_train``); the LoRA adapter and its metadata go to --out.
Prints a JSON summary (the training log goes to --work/train-log.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from trainer.readout_recipe import ReadoutRecipe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("runs/readout"))
    p.add_argument("--out", type=Path, default=Path("runs/readout-model"))
    p.add_argument("--dl19-queries", type=int, default=3700, help="queries to synthesize from DL19 passages")
    p.add_argument("--cranfield-queries", type=int, default=1400, help="queries to synthesize from Cranfield")
    p.add_argument("--corpora", default="dl19,cranfield", help="whose kept queries train the model")
    p.add_argument("--stop-after", choices=["data", "teacher"], help="stop once these stages are cached")
    for f in fields(ReadoutRecipe):
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "int": int, "float": float,
                "int | None": lambda s: None if s.lower() == "none" else int(s)}.get(str(f.type), str)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from indexer.ingest import load_beir
    from reranker.candidate_files import load_candidates
    from trainer.readout_recipe import Corpus, DataConfig, synthesize_and_mine, teacher_weights, train_readout
    from trainer.recipe import split_cranfield, split_dl19

    recipe = ReadoutRecipe(**{f.name: getattr(args, f.name) for f in fields(ReadoutRecipe)})
    dl19_dir, cran_dir = args.shared / "trec-dl-2019", args.shared / "cranfield"
    dl19, cran = load_beir(dl19_dir / "beir_pooled"), load_beir(cran_dir)
    dl19_split = split_dl19(list(dl19.judged_queries()), recipe.seed)
    cran_split = split_cranfield(list(cran.judged_queries()))
    held = set(dl19_split.val) | set(dl19_split.test)
    pooled = {c.id for run in sorted((dl19_dir / "candidates").glob("*_top100.json"))
              for qc in load_candidates(run) if qc.qid in held for c in qc.candidates}
    data = DataConfig(group_size=recipe.group_size, max_doc_chars=recipe.max_doc_chars, seed=recipe.seed,
                      generator=recipe.base_model)
    corpora = [Corpus("cranfield", cran_dir, args.cranfield_queries),
               Corpus("dl19", dl19_dir / "beir_pooled", args.dl19_queries, pooled)]
    args.work.mkdir(parents=True, exist_ok=True)
    summary = {"data": synthesize_and_mine(args.work, corpora, data)}
    if args.stop_after == "data":
        print(json.dumps(summary, indent=2))
        return
    val = {"dl19": (args.work / "index-dl19", {q: dl19.queries[q] for q in dl19_split.val}),
           "cranfield": (args.work / "index-cranfield", {q: cran.queries[q] for q in cran_split.val})}
    qrels = {**{q: dl19.qrels[q] for q in dl19_split.val}, **{q: cran.qrels[q] for q in cran_split.val}}
    summary["teacher"] = teacher_weights(args.work, val, qrels, data.depth)
    if args.stop_after == "teacher":
        print(json.dumps(summary, indent=2))
        return
    trained = train_readout(args.work, args.out, recipe, args.corpora.split(","), summary["teacher"]["weights"])
    (args.work / "train-log.json").write_text(json.dumps(trained.pop("log")))
    summary["training"] = trained
    summary["command"] = "HF_HUB_OFFLINE=1 .venv/bin/python bench/train_readout.py " + " ".join(sys.argv[1:])
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
