"""Fine-tuning the index's embedder on synthesized queries (GPL / InPars style, no labels).

A training triple is a synthesized query, the passage it was written from and hard negatives mined
through the same index. The loss is sentence-transformers' ``MultipleNegativesRankingLoss`` (the
positive against the other passages of the batch and the hard negatives), run in a plain loop with a
time budget so ``grouprank train adapt`` stays within its minutes. bf16 autocast where the CPU computes
it natively (``grouprank.precision``), dropout off (see ``train_embedder``).

``held_out_retrieval`` scores an embedder the way the index serves it: BM25 and dense top-``depth``
over the whole corpus, fused as the index fuses (RRF), with the query's source passage the one relevant
document (MRR@10, recall@10), so the current and the adapted embedder are compared on the same queries.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grouprank.errors import InputError
from grouprank.loading import model_loading


@dataclass
class Triple:
    """A query, the passage it was written from, and hard negatives (passage texts)."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)


@dataclass
class EmbedderTrainConfig:
    """One embedder fine-tuning run."""

    learning_rate: float = 2e-5
    batch_size: int = 32
    epochs: float = 4.0  # bounded by max_seconds
    hard_negatives: int = 1  # per query (0: in-batch negatives only)
    max_seq_length: int = 256
    warmup_ratio: float = 0.1
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        checks = {"learning_rate": self.learning_rate > 0, "batch_size": self.batch_size >= 2,
                  "epochs": self.epochs > 0, "hard_negatives": self.hard_negatives >= 0,
                  "max_seq_length": self.max_seq_length >= 8, "warmup_ratio": 0 <= self.warmup_ratio < 1}
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"out of range: {getattr(self, name)!r}", field=name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Step = Callable[[int, int, float], None]


def train_embedder(location: str, triples: Sequence[Triple], out: Path, config: EmbedderTrainConfig,
                   on_step: Step | None = None) -> dict[str, Any]:
    """Fine-tune the sentence-transformers model at ``location`` on ``triples`` and save it to ``out``
    (written aside, then renamed). Returns the run's metrics."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from grouprank.precision import bf16_supported

    if len(triples) < 2:
        raise InputError(f"needs at least 2 training queries, got {len(triples)}", field="triples")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    with model_loading():
        model = SentenceTransformer(location, device="cpu")
    model.max_seq_length = config.max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    batch_size = min(config.batch_size, len(triples))  # fewer triples than a batch: one batch of them all
    per_epoch = max(1, len(triples) // batch_size)
    total = max(1, round(per_epoch * config.epochs))
    warmup = max(1, int(total * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total - s) / max(1, total - warmup)))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported("cpu"))
    started, losses, step = time.monotonic(), [], 0
    # Dropout stays off (eval mode; gradients flow all the same): with it, a bf16 step on this project's
    # 2-core CPU took 2.7x as long (17-19 s against 6.5-8 s for 32 triples of 256 tokens).
    model.eval()
    while step < total:
        order = list(range(len(triples)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = [triples[i] for i in order[start:start + batch_size]]
            columns = [[t.query for t in batch], [t.positive for t in batch]]
            for n in range(config.hard_negatives):
                columns.append([t.negatives[n % len(t.negatives)] if t.negatives else t.positive for t in batch])
            features = [model.tokenize(texts) for texts in columns]
            with autocast:
                loss = loss_fn(features, torch.empty(0))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if on_step is not None:
                on_step(step, total, losses[-1])
            over = config.max_seconds is not None and time.monotonic() - started > config.max_seconds
            if step >= total or over:
                break
        if config.max_seconds is not None and time.monotonic() - started > config.max_seconds:
            break
    _save(model, out)
    tail = losses[-10:]
    return {"steps": step, "planned_steps": total, "seconds": round(time.monotonic() - started, 1),
            "first_loss": round(losses[0], 4), "last_loss": round(sum(tail) / len(tail), 4)}


def _save(model: Any, out: Path) -> None:
    from grouprank.atomic import make_public
    from trainer.files import replace_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent))
    try:
        model.save(str(tmp))
        make_public(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class HeldOut:
    """A held-out synthesized query and the passage it was written from."""

    query: str
    doc_id: str


def held_out_retrieval(index: Any, queries: Sequence[HeldOut], embed: Callable[[list[str]], np.ndarray] | None,
                       doc_vectors: tuple[list[str], np.ndarray] | None = None) -> dict[str, Any]:
    """MRR@10 and recall@10 of the source passage, for BM25 alone, dense alone and their fusion as the
    index fuses them (its ``fusion``, ``rrf_k``, ``dense_weight`` and ``depth``), and the hybrid reciprocal
    rank of each query (``hybrid_rr``).

    ``embed`` and ``doc_vectors`` (ids and unit vectors of every document) give the dense side of an
    embedder the index does not serve yet; without them the index's own dense search is used."""
    from indexer import fusion

    if not queries:
        raise InputError("no held-out queries", field="queries")
    texts = [q.query for q in queries]
    config = index.config
    depth = config.depth

    def fuse(b: list[tuple[str, float]], d: list[tuple[str, float]]) -> list[tuple[str, float]]:
        if config.fusion == "rrf":
            return fusion.rrf({"bm25": b, "dense": d}, config.rrf_k)
        return fusion.weighted({"bm25": b, "dense": d}, {"dense": config.dense_weight, "bm25": 1 - config.dense_weight})

    bm25 = [[(h.id, h.score) for h in hits] for hits in index.search_batch(texts, k=depth, mode="bm25")]
    if embed is None or doc_vectors is None:
        dense = [[(h.id, h.score) for h in hits] for hits in index.search_batch(texts, k=depth, mode="dense")]
    else:
        ids, matrix = doc_vectors
        sims = embed(texts) @ matrix.T
        top = np.argsort(-sims, axis=1)[:, :depth]
        dense = [[(ids[j], float(sims[n, j])) for j in row] for n, row in enumerate(top)]
    out: dict[str, Any] = {}
    for name, runs in (("bm25", bm25), ("dense", dense),
                       ("hybrid", [fuse(b, d) for b, d in zip(bm25, dense, strict=True)])):
        ranks = [next((r for r, (doc, _) in enumerate(run[:10], start=1) if doc == q.doc_id), None)
                 for q, run in zip(queries, runs, strict=True)]
        out[f"{name}_mrr@10"] = round(sum(1 / r for r in ranks if r) / len(ranks), 4)
        out[f"{name}_recall@10"] = round(sum(1 for r in ranks if r) / len(ranks), 4)
        if name == "hybrid":  # per query, for the gate's paired standard error
            out["hybrid_rr"] = [round(1 / r, 4) if r else 0.0 for r in ranks]
    return out
