"""Can a group's context help a 135M model rank? Two zero-cost readings of ONE pass over a group, probed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/group_context_probe.py --model grouprank-smollm2-135m --which train,val
    HF_HUB_OFFLINE=1 .venv/bin/python bench/group_context_probe.py --model smollm2-135m-instruct --which train --icr

DL19, BM25 top-20 of the chosen seeded splits (``trainer.recipe.split_dl19``), documents cut to 250
characters. Readings, each NDCG@10 of the top 20 reordered, and ms per query:

- ``rows``: the query likelihood as served (``Backend.score_likelihood``: one row per document, batched).
- ``packed``: the same likelihood prompts packed into ONE sequence per group, with a block attention mask
  (each document's block sees only itself) and positions restarting per block: must equal ``rows``.
- ``context``: as ``packed``, but each block also sees the passages of the earlier blocks (never their
  queries, so the repeated query is not a copy task): the likelihood with the group in view.
- ``--icr``: in-context reranking (Chen et al., 2024): all passages in one prompt, then the query; a
  passage's score is the attention its tokens get from the query's tokens (summed over heads, averaged over
  query tokens, by layer band) minus the same for the content-free query "N/A".

Prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dl19 import dl19_sets
from bench.report import emit

CHARS = 250


def block_pack(blocks: list[tuple[list[int], list[int], int]], context: bool) -> tuple[Any, Any, Any, list[int]]:
    """``(ids [1, T], mask [1, 1, T, T], positions [1, T], starts)`` of likelihood blocks ``(head, tail,
    passage_tokens)`` packed in one sequence. A block attends causally to itself and, with ``context``, to
    the passage tokens (the first ``passage_tokens`` of a head) of every earlier block; positions count the
    tokens a block sees, so each block reads as a contiguous text."""
    import torch

    ids: list[int] = []
    owner: list[int] = []
    passage: list[bool] = []
    positions: list[int] = []
    starts: list[int] = []
    seen = 0  # passage tokens of earlier blocks visible to the next one
    for b, (head, tail, n_passage) in enumerate(blocks):
        row = head + tail
        starts.append(len(ids))
        base = seen if context else 0
        ids += row
        positions += [base + k for k in range(len(row))]
        owner += [b] * len(row)
        passage += [k < n_passage for k in range(len(row))]
        seen += n_passage
    own = torch.tensor(owner)
    causal = torch.tril(torch.ones(len(ids), len(ids), dtype=torch.bool))
    allowed = own[:, None] == own[None, :]
    if context:
        allowed = allowed | ((own[None, :] < own[:, None]) & torch.tensor(passage)[None, :])
    return torch.tensor([ids]), (causal & allowed)[None, None], torch.tensor([positions]), starts


def packed_likelihoods(backend: Any, query: str, texts: list[str], context: bool) -> list[float]:
    import torch

    from reranker.likelihood import likelihood_prompt, query_continuation

    blocks = []
    for text in texts:
        head = backend._ids(likelihood_prompt(text[:CHARS]))
        n_passage = len(backend._ids("Passage: " + " ".join(text[:CHARS].split())))
        blocks.append((head, backend._ids(query_continuation(query)), n_passage))
    ids, mask, positions, starts = block_pack(blocks, context)
    with torch.inference_mode():
        decoder, lm_head = backend._decoder_and_head()
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state[0]
        out = []
        for start, (head, tail, _) in zip(starts, blocks, strict=True):
            at = torch.arange(start + len(head) - 1, start + len(head) - 1 + len(tail))
            logits = lm_head(hidden[at]).float()
            lp = logits.gather(1, torch.tensor(tail)[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
            out.append(float(lp.mean()))
    return out


def icr_scores(lm: Any, tok: Any, query: str, texts: list[str]) -> Any:
    """[documents, layers] calibrated attention mass from the query's tokens to each passage."""
    import torch

    ids = tok("Here are some passages:\n", add_special_tokens=False)["input_ids"]
    spans = []
    for i, text in enumerate(texts):
        piece = tok(f"[{i + 1}] " + " ".join(text[:CHARS].split()) + "\n", add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    with torch.inference_mode():
        cache = lm(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
        mass = {}
        for name, q in (("query", query), ("none", "N/A")):
            q_ids = tok("Query: " + " ".join(q.split()), add_special_tokens=False)["input_ids"]
            out = lm(input_ids=torch.tensor([q_ids]), past_key_values=copy.deepcopy(cache), output_attentions=True)
            mass[name] = torch.stack([a[0, :, :, :len(ids)].sum(0).mean(0) for a in out.attentions])  # [L, T]
    diff = mass["query"] - mass["none"]
    return torch.stack([diff[:, s:e].sum(1) for s, e in spans])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--model", default="grouprank-smollm2-135m")
    p.add_argument("--which", default="train,val", help="comma-separated seeded splits: train, val, test")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--icr", action="store_true", help="probe in-context reranking instead of the likelihood")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from grouprank.metrics import evaluate
    from reranker.likelihood import likelihood_prompt, query_continuation

    corpus, sets = dl19_sets(args.shared, args.which, args.seed)
    runs: dict[str, dict[str, dict[str, float]]] = {"bm25": {}}
    ms: dict[str, float] = {}

    def record(name: str, qc: Any, values: list[float], started: float) -> None:
        runs.setdefault(name, {})[qc.qid] = {c.id: v for c, v in zip(qc.candidates[:20], values, strict=True)}
        ms[name] = ms.get(name, 0.0) + (time.monotonic() - started) * 1000.0

    if args.icr:
        import torch
        import transformers

        from reranker.models import resolve_model

        path = resolve_model(args.model)
        tok = transformers.AutoTokenizer.from_pretrained(path)
        lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
        layers = lm.config.num_hidden_layers
        bands = {"all": (0, layers), "lower third": (0, layers // 3), "middle third": (layers // 3, 2 * layers // 3),
                 "upper third": (2 * layers // 3, layers)}
    else:
        from reranker.backends.transformers_backend import TransformersBackend

        backend = TransformersBackend(args.model)
    for qc in sets:
        cands = qc.candidates[:20]
        texts = [c.text for c in cands]
        runs["bm25"][qc.qid] = {c.id: float(len(cands) - i) for i, c in enumerate(cands)}
        if args.icr:
            t0 = time.monotonic()
            scores = icr_scores(lm, tok, qc.query, texts)
            for band, (lo, hi) in bands.items():
                record(f"icr {band}", qc, scores[:, lo:hi].sum(1).tolist(), t0)
            continue
        t0 = time.monotonic()
        lls = backend.score_likelihood([likelihood_prompt(t[:CHARS]) for t in texts],
                                       [query_continuation(qc.query)] * len(texts))
        record("rows", qc, [x.mean_logprob for x in lls], t0)
        for name, context in (("packed", False), ("context", True)):
            t0 = time.monotonic()
            record(name, qc, packed_likelihoods(backend, qc.query, texts, context), t0)
    qrels = {qc.qid: corpus.qrels[qc.qid] for qc in sets}
    out: dict[str, Any] = {"model": args.model, "which": args.which, "queries": len(sets)}
    for name, run in runs.items():
        out[f"ndcg@10 {name}"] = round(evaluate(qrels, run, ("ndcg@10",))["ndcg@10"], 4)
    out["ms per query"] = {name: round(v / len(sets)) for name, v in ms.items() if not name.startswith("icr ")}
    if args.icr:
        out["ms per query"]["icr (all bands)"] = round(ms["icr all"] / len(sets))
    emit(out, args.output)


if __name__ == "__main__":
    main()
