"""Training data for slot decoding, mined through the serving index.

Three sources, all turned into ``MinedQuery`` objects by ``trainer.mining.mine`` (hybrid search on the
same ``Index`` that serves queries) or by ``synthetic_queries``:

- judged queries (qrels): DL19 train queries over the pooled passages, the Cranfield train split;
- synthesized queries: a document's title, or its first sentence (then cut from the document, so the
  positive is not a verbatim copy of its query), with that document as the positive and hybrid hard
  negatives;
- any queries without labels: the dense teacher alone.

Targets fuse a pointwise and a listwise teacher as the GroupRank release does
(``trainer.synthesis.fuse_targets``): pointwise = the qrels grade scaled to 0..10 where judged, else the
dense teacher's score; listwise = the group ordered by grade, then dense score. The dense teacher is a
sentence-transformers model (the shipped MiniLM bi-encoder by default, or any CrossEncoder), scoring
every candidate, judged or not.

Groups are drawn many times per query under seeded shuffles: positions carry no signal, and
``position_balance`` measures it (mean target per prompt position).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grouprank.loading import model_loading
from grouprank.progress import progress_bar
from trainer.mining import MinedDoc, MinedQuery
from trainer.synthesis import fuse_targets

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class TeacherGroup:
    """One training group: the query, the documents in prompt order and their 0..10 targets."""

    qid: str
    query: str
    docs: list[MinedDoc]
    targets: list[int]


class DenseTeacher:
    """A sentence-transformers teacher: a bi-encoder (cosine of normalised embeddings) or, for a name
    loaded as a ``CrossEncoder``, its scores. ``score(query, texts)`` returns raw scores."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", cross_encoder: bool = False, batch_size: int = 64) -> None:
        import sentence_transformers as st

        from indexer.embedder import resolve

        self.name, self.cross, self.batch_size = name, cross_encoder, batch_size
        with model_loading():
            self.model = st.CrossEncoder(resolve(name)) if cross_encoder else st.SentenceTransformer(resolve(name))

    def score_docs(self, query: str, docs: Sequence[MinedDoc], index: Any | None = None) -> list[float]:
        """Raw scores of mined documents. A bi-encoder that is the index's own embedder reuses the vectors
        the index stores (no re-encoding); documents whose text was changed (synthetic positives) or that
        the index lacks are encoded."""
        texts = [f"{d.title}: {d.text}" if d.title else d.text for d in docs]
        stored_by = getattr(getattr(index, "store", None), "embedder", None)
        if self.cross or stored_by not in (self.name, f"sentence-transformers/{self.name}"):
            return self.score(query, texts)
        import numpy as np

        stored = {}
        lookup = [d.id for d in docs if d.rank is not None]
        if lookup:
            stored = dict(zip(lookup, index.embeddings(lookup), strict=True))
        missing = [i for i, d in enumerate(docs) if d.id not in stored]
        encoded = self.model.encode([query] + [texts[i] for i in missing], normalize_embeddings=True,
                                    batch_size=self.batch_size)
        vectors = [stored.get(d.id) for d in docs]
        for j, i in enumerate(missing, 1):
            vectors[i] = encoded[j]
        return [float(v) for v in np.stack(vectors) @ encoded[0]]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self.cross:
            return [float(s) for s in self.model.predict([(query, t) for t in texts], batch_size=self.batch_size)]
        emb = self.model.encode([query, *texts], normalize_embeddings=True, batch_size=self.batch_size)
        return [float(x) for x in emb[1:] @ emb[0]]


def dense_points(raw: Sequence[float]) -> list[float]:
    """A query's raw teacher scores min-max scaled to 0..10 (all equal: 5)."""
    if not raw:
        return []
    low, high = min(raw), max(raw)
    return [5.0 if high == low else 10.0 * (r - low) / (high - low) for r in raw]


def synthetic_queries(docs: Sequence[Any], count: int, seed: int, min_words: int = 3,
                      max_words: int = 24) -> list[tuple[str, str, str]]:
    """Up to ``count`` ``(doc_id, query, positive_text)`` triples: the title when the document has one,
    else its first sentence, which is then cut from the positive text. Documents whose query would be
    too short or too long, or whose remaining text is empty, are skipped."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out: list[tuple[str, str, str]] = []
    for i in order:
        if len(out) >= count:
            break
        doc = docs[i]
        title, text = (getattr(doc, "title", "") or "").strip(), (doc.text or "").strip()
        if title:
            query, rest = title, text
        else:
            parts = _SENTENCE.split(text, maxsplit=1)
            if len(parts) < 2:
                continue
            query, rest = parts[0].rstrip(".!? "), parts[1]
        if min_words <= len(query.split()) <= max_words and len(rest) > 40:
            out.append((doc.id, query, rest))
    return out


def mine_synthetic(index: Any, triples: Sequence[tuple[str, str, str]], depth: int = 30,
                   mode: str = "hybrid") -> list[MinedQuery]:
    """A MinedQuery per synthetic query: the hybrid top ``depth`` (the source document excluded) plus
    the source document, with its cut text, as the one positive (label 1; the rest unlabelled)."""
    out = []
    with progress_bar("mining synthetic queries", len(triples)) as bar:
        for n, (doc_id, query, rest) in enumerate(triples):
            hits = [h for h in index.search(query, k=depth + 1, mode=mode) if h.id != doc_id][:depth]
            docs = [MinedDoc(id=h.id, text=h.text, title=h.title, score=float(h.score), rank=r, label=None)
                    for r, h in enumerate(hits, 1)]
            docs.append(MinedDoc(id=doc_id, text=rest, label=1))
            out.append(MinedQuery(qid=f"synthetic-{n}", query=query, candidates=docs))
            bar.advance()
    return out


def teacher_points(mined: MinedQuery, teacher: DenseTeacher | None, max_grade: int,
                   index: Any | None = None, unjudged_max: float = 6.0) -> tuple[list[float], list[float]]:
    """``(pointwise 0..10, listwise key)`` per candidate: the qrels grade (or synthetic positive) scaled to
    0..10 where known, else the dense score; the listwise key orders by grade, then dense score. On a
    judged query an unjudged candidate's dense score is scaled to 0..``unjudged_max``: judges looked at
    the likely relevant ones, so the teacher may not rank an unjudged one with the best graded ones."""
    n = len(mined.candidates)
    dense = dense_points(teacher.score_docs(mined.query, mined.candidates, index)) if teacher else [0.0] * n
    labelled = any(d.label is not None for d in mined.candidates)
    synthetic = mined.qid.startswith("synthetic-")
    points, keys = [], []
    for d, s in zip(mined.candidates, dense, strict=True):
        if synthetic:
            grade = 1.0 if d.label else 0.0
            points.append(10.0 if d.label else s)
        elif labelled:
            grade = min(max(d.label or 0, 0), max_grade) / max_grade
            points.append(10.0 * grade if d.label is not None else s * unjudged_max / 10.0)
        else:
            grade = 0.0
            points.append(s)
        keys.append(grade * 100.0 + s)
    return points, keys


def sample_groups(mined: MinedQuery, points: list[float], keys: list[float], sizes: Sequence[int], count: int,
                  rng: random.Random, a: float = 0.6, b: float = 0.4) -> list[TeacherGroup]:
    """``count`` groups of a size drawn from ``sizes``: each holds at least one of the query's best
    candidates (by teacher key) when it has any above the rest, the rest drawn at random; documents are
    shuffled, so every position sees every kind of target."""
    n = len(mined.candidates)
    ranked = sorted(range(n), key=lambda i: -keys[i])
    top = ranked[: max(1, n // 10)]
    groups = []
    for _ in range(count):
        size = min(rng.choice(list(sizes)), n)
        if size < 2:
            continue
        picks = {rng.choice(top)}
        while len(picks) < size:
            picks.add(rng.randrange(n))
        order = list(picks)
        rng.shuffle(order)
        tiebreak = [rng.random() for _ in order]  # ties by chance, never by position
        listwise = sorted(range(size), key=lambda j: (-keys[order[j]], tiebreak[j]))
        targets = fuse_targets([points[i] for i in order], listwise, a, b)
        groups.append(TeacherGroup(mined.qid, mined.query, [mined.candidates[i] for i in order], targets))
    return groups


def position_balance(groups: Sequence[TeacherGroup], positions: int = 20) -> list[float | None]:
    """Mean of (target - its group's mean target) at each prompt position 1..``positions`` (None where no
    group reaches it): about 0 everywhere when the position within a group carries no signal. (Raw means
    would also reflect group size: a group of 5 holds one best candidate in 5, a group of 20 one in 20.)"""
    sums, counts = [0.0] * positions, [0] * positions
    for g in groups:
        mean = sum(g.targets) / len(g.targets) if g.targets else 0.0
        for p, t in enumerate(g.targets[:positions]):
            sums[p] += t - mean
            counts[p] += 1
    return [round(s / c, 3) if c else None for s, c in zip(sums, counts, strict=True)]
