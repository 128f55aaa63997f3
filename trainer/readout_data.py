"""Training data for the read-out, made by the product's own tiers, with no relevance labels.

1. ``synthesize_queries``: the LLM writes a search query for each sampled corpus passage (doc2query,
   InPars-style), seeded and cached line by line, so a killed run resumes where it stopped.
2. ``round_trip``: each synthesized query is searched through the serving ``Index`` (hybrid); it is kept
   only when the retrieval tier ranks its source passage in its top ``keep_k`` (a query the tier cannot
   find its own passage for is too vague or wrong). The same search gives the hard candidates.
3. ``teacher_scores``: each candidate's BM25 and dense (MiniLM) scores, min-max per query, fused with
   weights ``calibrate_teacher`` picks on validation queries; the source passage is the known positive.
4. ``sample_groups``: groups of ``group_size`` (the source passage and hard negatives, shuffled) with
   0..10 targets.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.jsonl import iter_jsonl
from grouprank.loading import model_loading
from grouprank.progress import progress_bar
from grouprank.scores import min_max

SIGNALS = ("bm25", "dense")


@dataclass
class SyntheticQuery:
    """A query the LLM wrote for passage ``doc_id``."""

    doc_id: str
    query: str


@dataclass
class Candidate:
    """One mined candidate: its text and each signal's raw score (None where that retriever missed it)."""

    id: str
    text: str
    title: str = ""
    bm25: float | None = None
    dense: float | None = None
    positive: bool = False


@dataclass
class MinedSet:
    """A kept query and its hybrid candidates (the source passage among them)."""

    qid: str
    query: str
    candidates: list[Candidate]
    source_rank: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> MinedSet:
        return cls(str(obj["qid"]), str(obj["query"]), [Candidate(**c) for c in obj["candidates"]],
                   int(obj["source_rank"]))


@dataclass
class ReadoutGroup:
    """One training group: the query, documents in prompt order, their 0..10 teacher targets and which of
    them is the passage the query was written for (empty where unknown)."""

    qid: str
    query: str
    texts: list[str]
    targets: list[float]
    positive: list[bool] = field(default_factory=list)


QUERY_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
"""The doc2query prompt: plain text, the query likelihood's own (``reranker.likelihood``). A small instruct
model asked through its chat template chats instead of writing a query (measured on SmolLM2-135M)."""


def llm_generator(model: str, seed: int = 0, max_new_tokens: int = 20, temperature: float = 0.7,
                  top_p: float = 0.9) -> Callable[[list[str]], list[str]]:
    """``generate(prompts) -> completions``: plain-text sampling with a transformers causal LM (left
    padding, one ``generate`` call per batch), seeded once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.models import resolve_model

    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    with model_loading():
        lm = AutoModelForCausalLM.from_pretrained(path).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # a query is one line: a row is done at its newline (the batch ends when every row is)
    stops = [tokenizer.eos_token_id, *tokenizer("\n", add_special_tokens=False)["input_ids"][-1:]]
    torch.manual_seed(seed)

    def generate(prompts: list[str]) -> list[str]:
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = lm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                              top_p=top_p, pad_token_id=pad, eos_token_id=stops)
        return tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)

    return generate


def clean_query(text: str) -> str | None:
    """The first line of a generated query, stripped of quotes and labels; None when unusable."""
    line = text.strip().split("\n")[0].strip().strip('"').strip()
    for cut in ("Answer:", "Question:"):
        line = line.split(cut)[0].strip()
    words = line.split()
    if not 3 <= len(words) <= 20 or not any(c.isalpha() for c in line) or len(set(words)) < len(words) / 2:
        return None
    return line


def synthesize_queries(generate: Callable[[list[str]], list[str]], docs: Sequence[Any], count: int, cache: Path,
                       seed: int = 0, batch: int = 64, max_chars: int = 240,
                       max_seconds: float | None = None) -> list[SyntheticQuery]:
    """Up to ``count`` queries for passages of ``docs`` drawn in a seeded order. ``generate(prompts)``
    returns one completion per user prompt. Each finished batch is appended to ``cache`` (JSONL), and a
    rerun continues after the passages already there. Stops early after ``max_seconds``."""
    import time

    started = time.monotonic()
    done: list[SyntheticQuery] = []
    tried: set[str] = set()
    if cache.exists():
        for _, obj in iter_jsonl(cache):
            tried.add(str(obj["doc_id"]))
            if obj.get("query"):
                done.append(SyntheticQuery(str(obj["doc_id"]), str(obj["query"])))
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    todo = [docs[i] for i in order if docs[i].id not in tried and len(docs[i].text.split()) >= 8]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar("synthesizing queries", max(0, count - len(done))) as bar, cache.open("a") as out:
        for start in range(0, len(todo), batch):
            if len(done) >= count or (max_seconds is not None and time.monotonic() - started > max_seconds):
                break
            chunk = todo[start:start + batch]
            passages = [" ".join(d.text.split())[:max_chars] for d in chunk]
            answers = generate([QUERY_PROMPT.format(passage=p) for p in passages])
            for doc, answer in zip(chunk, answers, strict=True):
                query = clean_query(answer)
                out.write(json.dumps({"doc_id": doc.id, "query": query}) + "\n")
                if query:
                    done.append(SyntheticQuery(doc.id, query))
                    if len(done) <= count:
                        bar.advance()
            out.flush()
    return done[:count]


def round_trip(index: Any, queries: Sequence[SyntheticQuery], keep_k: int = 10, depth: int = 30,
               prefix: str = "synthetic", batch: int = 32) -> tuple[list[MinedSet], int]:
    """``(kept, dropped)``: the queries whose source passage the index's hybrid search ranks in its top
    ``keep_k``, each with its top ``depth`` candidates and their BM25 and dense scores."""
    kept: list[MinedSet] = []
    dropped = 0
    with progress_bar("round-trip filter and mining", len(queries)) as bar:
        for start in range(0, len(queries), batch):
            chunk = queries[start:start + batch]
            results = index.search_batch([q.query for q in chunk], k=depth, mode="hybrid")
            for n, (q, hits) in enumerate(zip(chunk, results, strict=True), start):
                ids = [h.id for h in hits]
                if q.doc_id not in ids[:keep_k]:
                    dropped += 1
                    continue
                cands = [Candidate(h.id, h.text, h.title, h.scores.get("bm25"), h.scores.get("dense"),
                                   h.id == q.doc_id) for h in hits]
                kept.append(MinedSet(f"{prefix}-{n}", q.query, cands, ids.index(q.doc_id) + 1))
            bar.advance(len(chunk))
    return kept, dropped


def signal_scores(candidates: Sequence[Candidate]) -> dict[str, list[float]]:
    """Each signal min-max scaled over the query's candidates; a candidate a retriever missed gets 0."""
    out = {}
    for name in SIGNALS:
        raw = [getattr(c, name) for c in candidates]
        low = min((r for r in raw if r is not None), default=0.0)
        out[name] = min_max([low if r is None else r for r in raw])
    return out


def teacher_scores(candidates: Sequence[Candidate], weights: dict[str, float]) -> list[float]:
    """The teacher's 0..10 score per candidate: the weighted signals (weights sum to 1), min-max per query;
    a known positive (the passage the query was written for) gets 10."""
    signals = signal_scores(candidates)
    fused = [sum(weights[n] * signals[n][i] for n in SIGNALS) for i in range(len(candidates))]
    scaled = min_max(fused)
    return [10.0 if c.positive else 10.0 * s for c, s in zip(candidates, scaled, strict=True)]


def calibrate_teacher(sets: Sequence[MinedSet], qrels: dict[str, dict[str, int]],
                      grid: Sequence[float] = tuple(i / 10 for i in range(11))) -> dict[str, Any]:
    """The dense weight (BM25 gets the rest) whose fused ranking has the best NDCG@10 on judged ``sets``
    (validation queries); ties go to the smaller weight."""
    from grouprank.metrics import evaluate

    table = {}
    for w in grid:
        weights = {"bm25": 1.0 - w, "dense": w}
        run = {s.qid: {c.id: v for c, v in zip(s.candidates, teacher_scores(s.candidates, weights), strict=True)}
               for s in sets}
        table[f"{w:.1f}"] = evaluate(qrels, run, ("ndcg@10",))["ndcg@10"]
    best = max(table, key=lambda k: (table[k], -float(k)))
    return {"weights": {"bm25": round(1.0 - float(best), 2), "dense": float(best)}, "ndcg@10": table[best],
            "table": table, "queries": len(sets)}


def sample_groups(mined: Sequence[MinedSet], weights: dict[str, float], group_size: int, per_query: int,
                  seed: int, max_doc_chars: int) -> list[ReadoutGroup]:
    """``per_query`` groups per kept query: the positive and ``group_size - 1`` candidates drawn from the
    rest, shuffled (a seeded draw per query), with the teacher's targets."""
    if group_size < 2:
        raise InputError("must be >= 2", field="group_size")
    groups = []
    for m in mined:
        targets = teacher_scores(m.candidates, weights)
        rng = random.Random(f"{seed}:{m.qid}")
        pos = [i for i, c in enumerate(m.candidates) if c.positive]
        rest = [i for i, c in enumerate(m.candidates) if not c.positive]
        for _ in range(per_query):
            picks = pos[:1] + rng.sample(rest, min(len(rest), group_size - len(pos[:1])))
            rng.shuffle(picks)
            texts = [_text(m.candidates[i], max_doc_chars) for i in picks]
            groups.append(ReadoutGroup(m.qid, m.query, texts, [targets[i] for i in picks],
                                       [m.candidates[i].positive for i in picks]))
    return groups


def _text(c: Candidate, max_doc_chars: int) -> str:
    """The document as the reranker cuts it when serving with ``max_doc_chars``."""
    from reranker.prompts import Truncator, document_text
    from reranker.types import Candidate as ServedCandidate

    return Truncator(max_chars=max_doc_chars)(document_text(ServedCandidate(id=c.id, text=c.text, title=c.title)))[0]


def write_sets(path: Path, sets: Sequence[MinedSet]) -> None:
    from trainer.files import write_jsonl_atomic

    write_jsonl_atomic(path, [s.to_dict() for s in sets])


def read_sets(path: Path) -> list[MinedSet]:
    out = []
    for n, obj in iter_jsonl(path):
        try:
            out.append(MinedSet.from_dict(obj))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed mined set ({exc})", source=path, line=n) from None
    return out
