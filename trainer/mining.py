"""Hard-candidate mining: each query's candidates come from ``Index.search`` (the serving code path), and
training groups mix known positives with the hard negatives the retriever ranks high.

A mined file is JSONL, one query per line::

    {"qid": "7", "query": "...", "candidates": [{"id", "title", "text", "score", "rank", "label"}, ...],
     "groups": [[3, 0, 5, ...], ...]}

``rank`` is the 1-based retriever rank (None for a positive the retriever missed), ``label`` the qrels grade
(None without qrels), and each group lists indices into ``candidates``.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.jsonl import iter_jsonl
from grouprank.progress import progress_bar
from grouprank.trec_files import Qrels
from trainer.config import MiningConfig


@dataclass
class MinedDoc:
    id: str
    text: str
    title: str = ""
    score: float | None = None
    rank: int | None = None
    label: int | None = None
    dense: float | None = None
    """The first stage's embedding similarity (hybrid and dense searches), as serving hands it on."""


@dataclass
class MinedQuery:
    qid: str
    query: str
    candidates: list[MinedDoc]
    groups: list[list[int]] = field(default_factory=list)

    @property
    def retrieved(self) -> list[MinedDoc]:
        """The candidates the retriever returned, in its order (what serving would rerank)."""
        return sorted((d for d in self.candidates if d.rank is not None), key=lambda d: d.rank)  # type: ignore[arg-type,return-value]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass


def split_queries(qids: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A reproducible split by query: ``(train, test)``, each in the input order. The split of a query
    depends only on ``seed`` and the set of ids, not on their order."""
    ordered = sorted(set(qids))
    random.Random(seed).shuffle(ordered)
    n_test = round(len(ordered) * test_fraction)
    test = set(ordered[:n_test])
    return [q for q in qids if q not in test], [q for q in qids if q in test]


def build_groups(docs: list[MinedDoc], config: MiningConfig, rng: random.Random) -> list[list[int]]:
    """Groups of indices into ``docs`` (see ``MiningConfig``). Positives rotate across groups, negatives
    are taken best-ranked first, so the first group holds the hardest negatives."""
    size = config.group_size
    labelled = any(d.label is not None for d in docs)
    by_rank = sorted((i for i, d in enumerate(docs) if d.rank is not None), key=lambda i: docs[i].rank)  # type: ignore[arg-type,return-value]
    if not labelled:
        groups = [by_rank[g * size:(g + 1) * size] for g in range(config.groups_per_query)]
    else:
        positives = [i for i, d in enumerate(docs) if (d.label or 0) > 0]
        rng.shuffle(positives)
        negatives = [i for i in by_rank if (docs[i].label or 0) <= 0]
        groups, next_pos, next_neg = [], 0, 0
        for _ in range(config.groups_per_query):
            take = min(config.max_positives, len(positives), size)
            group = [positives[(next_pos + j) % len(positives)] for j in range(take)] if take else []
            next_pos += take
            while len(group) < size and next_neg < len(negatives):
                group.append(negatives[next_neg])
                next_neg += 1
            groups.append(group)
    groups = [g for g in groups if len(g) >= 2]
    if config.shuffle:
        for g in groups:
            rng.shuffle(g)
    return groups


def mine(index: Any, queries: dict[str, str], qrels: Qrels | None, config: MiningConfig,
         progress: bool = True) -> list[MinedQuery]:
    """Mine candidates and groups for ``queries`` from ``index`` (an ``indexer.index.Index``).

    With ``qrels``, a query's labels come from them (unjudged documents count as 0) and relevant documents
    the retriever missed are fetched from the index when ``config.unretrieved_positives``.
    """
    qids = list(queries)[: config.max_queries] if config.max_queries else list(queries)
    out: list[MinedQuery] = []
    with (progress_bar("mining", len(qids)) if progress else nullcontext(_NoBar())) as bar:
        for qid in qids:
            hits = index.search(queries[qid], k=config.depth, mode=config.mode)
            judged = (qrels or {}).get(qid)
            docs = [
                MinedDoc(id=h.id, text=h.text, title=h.title, score=float(h.score), rank=n,
                         label=None if qrels is None else int((judged or {}).get(h.id, 0)),
                         dense=h.scores.get("dense"))
                for n, h in enumerate(hits, start=1)
            ]
            if judged and config.unretrieved_positives:
                seen = {d.id for d in docs}
                for doc_id, grade in sorted(judged.items(), key=lambda kv: (-kv[1], kv[0])):
                    if grade > 0 and doc_id not in seen:
                        doc = index.get(doc_id)
                        if doc is not None:
                            docs.append(MinedDoc(id=doc.id, text=doc.text, title=doc.title, label=int(grade)))
            rng = random.Random(f"{config.seed}:{qid}")
            out.append(MinedQuery(qid, queries[qid], docs, build_groups(docs, config, rng)))
            bar.advance()
    return out


def write_mined(path: str | Path, mined: list[MinedQuery]) -> None:
    from trainer.files import write_jsonl_atomic

    write_jsonl_atomic(path, [m.to_dict() for m in mined])


def read_mined(path: str | Path) -> list[MinedQuery]:
    """Read a mined file; a malformed line raises InputError naming the file, line and field."""
    out = []
    for n, obj in iter_jsonl(path):
        try:
            docs = [MinedDoc(**d) for d in obj["candidates"]]
            groups = [[int(i) for i in g] for g in obj.get("groups", [])]
            mined = MinedQuery(str(obj["qid"]), str(obj["query"]), docs, groups)
        except KeyError as exc:
            raise InputError("missing", source=path, line=n, field=exc.args[0]) from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"malformed mined query ({exc})", source=path, line=n) from None
        for g in groups:
            if any(not 0 <= i < len(docs) for i in g):
                raise InputError("group index out of range", source=path, line=n, field="groups")
        out.append(mined)
    return out
