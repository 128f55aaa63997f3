"""Reading candidate sets to rerank, in the three forms people have them in.

- RankGPT form (``../shared/data/trec-dl-2019/candidates/*.json``): a JSON list of
  ``{"query": str, "hits": [{"qid", "docid", "content", "score", "rank"}]}``.
- rank_llm request form: a JSON list (or JSONL) of ``{"query": {"text", "qid"},
  "candidates": [{"docid", "score", "doc": {"contents" | "text" | "segment", "title"?}}]}``.
- a TREC run plus the corpus (JSONL/BEIR ``corpus.jsonl``) and the queries it ranks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.jsonl import iter_jsonl
from grouprank.trec_files import read_queries, read_run
from reranker.types import Candidate


@dataclass
class QueryCandidates:
    """One query and its first-stage candidates, best first."""

    qid: str
    query: str
    candidates: list[Candidate]


def _rankgpt(item: dict[str, Any], n: int, source: Path) -> QueryCandidates:
    hits = item["hits"]
    if not isinstance(hits, list):
        raise InputError("'hits' must be a list", source=source, line=n, field="hits")
    qid = str(hits[0].get("qid", n)) if hits else str(n)
    candidates = []
    for h in sorted(hits, key=lambda h: h.get("rank", 0)):
        if "docid" not in h or "content" not in h:
            raise InputError("each hit needs 'docid' and 'content'", source=source, line=n, field="hits")
        candidates.append(Candidate(id=str(h["docid"]), text=str(h["content"]), score=_float(h.get("score"))))
    return QueryCandidates(qid=qid, query=str(item["query"]), candidates=candidates)


def _rank_llm(item: dict[str, Any], n: int, source: Path) -> QueryCandidates:
    query = item["query"]
    if not isinstance(query, dict) or "text" not in query:
        raise InputError("'query' must be an object with 'text' and 'qid'", source=source, line=n, field="query")
    candidates = []
    for c in item["candidates"]:
        doc = c.get("doc") or {}
        text = doc.get("contents") or doc.get("text") or doc.get("segment") or ""
        if "docid" not in c or not isinstance(text, str):
            raise InputError("each candidate needs 'docid' and doc text", source=source, line=n, field="candidates")
        candidates.append(Candidate(id=str(c["docid"]), text=text, title=str(doc.get("title") or ""),
                                    score=_float(c.get("score"))))
    return QueryCandidates(qid=str(query.get("qid", n)), query=str(query["text"]), candidates=candidates)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _parse_item(item: Any, n: int, source: Path) -> QueryCandidates:
    if not isinstance(item, dict):
        raise InputError("expected an object per query", source=source, line=n)
    if "hits" in item and "query" in item:
        return _rankgpt(item, n, source)
    if "candidates" in item and "query" in item:
        return _rank_llm(item, n, source)
    raise InputError("unknown candidate format: expected {query, hits} (RankGPT) or {query, candidates} (rank_llm)",
                     source=source, line=n)


def load_candidates(path: str | Path, depth: int | None = None) -> list[QueryCandidates]:
    """Read a RankGPT or rank_llm candidate file (JSON list or JSONL); keep the top ``depth`` of each."""
    source = Path(path)
    if not source.is_file():
        raise InputError("no such candidates file", source=source)
    with source.open(encoding="utf-8") as f:
        head = f.read(1)
    if head == "[":
        try:
            items = json.loads(source.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON ({exc.msg})", source=source, line=exc.lineno) from None
        parsed = [_parse_item(item, n, source) for n, item in enumerate(items, start=1)]
    else:
        parsed = [_parse_item(item, n, source) for n, item in iter_jsonl(source)]
    if depth is not None:
        for qc in parsed:
            qc.candidates = qc.candidates[:depth]
    return parsed


def _read_corpus(path: str | Path) -> dict[str, tuple[str, str]]:
    """``{doc_id: (title, text)}`` from a JSONL corpus or a BEIR directory (no indexer import needed)."""
    source = Path(path)
    if source.is_dir():
        source = source / "corpus.jsonl"
    corpus = {}
    for n, obj in iter_jsonl(source):
        doc_id = obj.get("_id", obj.get("id"))
        if doc_id is None or not isinstance(obj.get("text"), str):
            raise InputError("each document needs an id ('_id' or 'id') and a string 'text'", source=source, line=n)
        corpus[str(doc_id)] = (str(obj.get("title") or ""), obj["text"])
    return corpus


def load_run_candidates(run_path: str | Path, corpus: str | Path, queries: str | Path,
                        depth: int | None = None) -> list[QueryCandidates]:
    """Candidates from a TREC run, with texts from a corpus (JSONL or BEIR dir) and queries from a file."""
    run = read_run(run_path)
    texts = _read_corpus(corpus)
    query_texts = read_queries(queries)
    out = []
    for qid, scores in run.items():
        if qid not in query_texts:
            raise InputError(f"query {qid!r} of the run is not in the queries file", source=queries)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        cands = []
        for docid, score in ranked:
            if docid not in texts:
                raise InputError(f"document {docid!r} of the run is not in the corpus", source=corpus)
            title, text = texts[docid]
            cands.append(Candidate(id=docid, text=text, title=title, score=score))
        out.append(QueryCandidates(qid=qid, query=query_texts[qid], candidates=cands))
    return out
