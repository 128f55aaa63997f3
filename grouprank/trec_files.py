"""TREC run and qrels files, and BEIR-style queries/qrels.

Types used across grouprank:
- ``Qrels``: ``{query_id: {doc_id: graded_relevance}}``
- ``Run``: ``{query_id: {doc_id: score}}`` (higher is better)
"""

from __future__ import annotations

from pathlib import Path

from grouprank.errors import InputError
from grouprank.jsonl import iter_jsonl

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def read_qrels(path: str | Path) -> Qrels:
    """Read TREC qrels (``qid iter docid rel``) or BEIR TSV (``query-id corpus-id score`` with a header)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such qrels file", source=path)
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if n == 1 and parts[0].lower() in {"query-id", "query_id", "qid"}:
                continue  # BEIR header
            if len(parts) == 3:
                qid, docid, rel = parts
            elif len(parts) == 4:
                qid, _, docid, rel = parts
            else:
                raise InputError(f"expected 3 (BEIR) or 4 (TREC) columns, got {len(parts)}", source=path, line=n)
            try:
                qrels.setdefault(qid, {})[docid] = int(float(rel))
            except ValueError:
                raise InputError(f"relevance {rel!r} is not a number", source=path, line=n) from None
    return qrels


def read_queries(path: str | Path) -> dict[str, str]:
    """Read queries from BEIR ``queries.jsonl`` (``_id``, ``text``) or a TSV file (``qid<TAB>text``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        queries: dict[str, str] = {}
        for n, obj in iter_jsonl(path):
            qid = obj.get("_id", obj.get("id", obj.get("qid")))
            if qid is None:
                raise InputError("missing query id", source=path, line=n, field="_id")
            text = obj.get("text", obj.get("query"))
            if not isinstance(text, str):
                raise InputError("missing or non-string query text", source=path, line=n, field="text")
            queries[str(qid)] = text
        return queries
    if not path.is_file():
        raise InputError("no such queries file", source=path)
    queries = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            qid, sep, text = line.rstrip("\n").partition("\t")
            if not sep:
                raise InputError("expected 'query_id<TAB>text'", source=path, line=n)
            queries[qid] = text
    return queries


def write_run(path: str | Path, run: Run, tag: str = "grouprank") -> None:
    """Write a TREC run file: ``qid Q0 docid rank score tag``, ranked by score (ties by doc id)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (docid, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_run(path: str | Path) -> Run:
    """Read a TREC run file (six whitespace-separated columns)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such run file", source=path)
    run: Run = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InputError(f"expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}",
                                 source=path, line=n)
            qid, _, docid, _, score, _ = parts
            try:
                run.setdefault(qid, {})[docid] = float(score)
            except ValueError:
                raise InputError(f"score {score!r} is not a number", source=path, line=n) from None
    return run
