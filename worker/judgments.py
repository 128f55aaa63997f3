"""Relevance judgments from the workbench: a SQLite file (``judgments.sqlite``) next to the index.

One row per (query, doc_id), upserted, with the grade (0-3), who gave it and when. Exported as TREC qrels
(``qid 0 doc_id grade``) and BEIR ``queries.jsonl`` (``_id``, ``text``), the two files the training
pipeline reads as ``qrels`` and ``queries``; query ids are a stable hash of the query text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from grouprank.atomic import write_atomic
from grouprank.errors import InputError
from worker.sqlite_store import FILENAME, SQLiteStore  # noqa: F401 (FILENAME: re-exported)

MAX_GRADE = 3
_SCHEMA = """CREATE TABLE IF NOT EXISTS judgments (
    query TEXT NOT NULL, doc_id TEXT NOT NULL, grade INTEGER NOT NULL CHECK (grade BETWEEN 0 AND 3),
    who TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (query, doc_id))"""


def query_id(query: str) -> str:
    """A stable id for ``query`` (the same text always gets the same id, in every export)."""
    return "q" + hashlib.sha256(query.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Judgment:
    query: str
    doc_id: str
    grade: int
    who: str
    at: str  # ISO 8601, UTC

    @property
    def query_id(self) -> str:
        return query_id(self.query)

    def to_record(self) -> dict[str, str | int]:
        return {"query_id": self.query_id, **asdict(self)}


def check(query: str, doc_id: str, grade: object, max_query_chars: int = 2048) -> None:
    """Raise InputError (naming the field) unless this is a judgment that can be stored and exported."""
    if not query.strip():
        raise InputError("query is blank", field="query")
    if len(query) > max_query_chars:
        raise InputError(f"query is {len(query)} characters long; the limit is {max_query_chars}", field="query")
    if not doc_id or any(c.isspace() for c in doc_id):
        raise InputError(f"document id {doc_id!r} is empty or has whitespace (TREC qrels cannot hold it)",
                         field="doc_id")
    if not isinstance(grade, int) or isinstance(grade, bool) or not 0 <= grade <= MAX_GRADE:
        raise InputError(f"grade must be an integer from 0 to {MAX_GRADE}, got {grade!r}", field="grade")


class JudgmentStore(SQLiteStore):
    """The judgments in ``path`` (see ``SQLiteStore``)."""

    SCHEMA = (_SCHEMA,)

    def upsert(self, query: str, doc_id: str, grade: int, who: str, max_query_chars: int = 2048) -> Judgment:
        """Store (or replace) the grade of ``doc_id`` for ``query``."""
        check(query, doc_id, grade, max_query_chars)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._connect() as conn:
            conn.execute("INSERT INTO judgments VALUES (?, ?, ?, ?, ?) ON CONFLICT (query, doc_id) DO UPDATE "
                         "SET grade = excluded.grade, who = excluded.who, at = excluded.at",
                         (query, doc_id, grade, who, at))
        return Judgment(query, doc_id, grade, who, at)

    def all(self, query: str | None = None) -> list[Judgment]:
        """Every judgment (of ``query`` only, if given), by query then document."""
        if not self.path.is_file():
            return []
        where, args = ("WHERE query = ?", (query,)) if query is not None else ("", ())
        with self._connect() as conn:
            rows = conn.execute(f"SELECT query, doc_id, grade, who, at FROM judgments {where} "
                                "ORDER BY query, doc_id", args).fetchall()
        return [Judgment(*row) for row in rows]

    def grades(self, query: str) -> dict[str, int]:
        """``{doc_id: grade}`` for ``query``."""
        return {j.doc_id: j.grade for j in self.all(query)}

    def qrels_text(self) -> str:
        """TREC qrels: ``query_id 0 doc_id grade``."""
        return "".join(f"{j.query_id} 0 {j.doc_id} {j.grade}\n" for j in self.all())

    def queries_jsonl(self) -> str:
        """BEIR queries (``{"_id", "text"}``), one per judged query."""
        queries = dict.fromkeys(j.query for j in self.all())
        return "".join(json.dumps({"_id": query_id(q), "text": q}, ensure_ascii=False) + "\n" for q in queries)

    def jsonl(self) -> str:
        """Every judgment as a JSON line (query_id, query, doc_id, grade, who, at)."""
        return "".join(json.dumps(j.to_record(), ensure_ascii=False) + "\n" for j in self.all())

    def export(self, qrels: str | Path, queries: str | Path | None = None) -> int:
        """Write the qrels (and the queries) files atomically; returns the number of judgments."""
        judgments = self.all()
        if not judgments:
            raise InputError("there are no judgments to export", source=self.path)
        write_atomic(qrels, self.qrels_text().encode())
        if queries is not None:
            write_atomic(queries, self.queries_jsonl().encode())
        return len(judgments)
