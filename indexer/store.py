"""The document store (SQLite, WAL): the source of truth an index's search structures are built from.

Tables:

- ``documents``: one row per current document version: ``id``, ``key`` (the int64 id of its vector in
  FAISS and of its tantivy document; every version gets a new one), ``title``, ``text``, ``metadata``
  (JSON), ``embedding`` (float32 blob) and ``seq``, the change number that wrote it.
- ``deletions``: every version that stopped being current (deleted, or replaced by a newer version),
  as ``(id, key, seq)``. A generation that has applied changes up to seq S catches up by removing the
  keys logged after S and adding the documents written after S.
- ``meta``: counters (``last_seq``, ``last_key``), the embedder name and its dimension.

Every write is one transaction, so a failed batch leaves nothing behind.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grouprank.errors import NotFoundError
from indexer.documents import Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    key INTEGER NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    embedding BLOB,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_seq ON documents (seq);
CREATE TABLE IF NOT EXISTS deletions (id TEXT NOT NULL, key INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deletions_seq ON deletions (seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
PAGE = 1000  # rows per query when paging through the whole store


@dataclass
class Row:
    """A stored document version with its key and (possibly missing) embedding."""

    id: str
    key: int
    title: str
    text: str
    embedding: np.ndarray | None

    @property
    def body(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass
class Changes:
    """What happened after some seq, up to ``upto``: keys to remove, then rows to (re)add."""

    upto: int
    removed: list[tuple[str, int]]  # (id, key)
    added: list[Row]


class Store:
    """One SQLite file; a connection per thread, so a store can serve a threaded search API."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"{self.path}: no document store")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.dim = int(self.meta("dim"))
        self.embedder = self.meta("embedder")

    @classmethod
    def create(cls, path: str | Path, *, embedder: str, dim: int) -> Store:
        conn = _connect(Path(path))
        with conn:
            conn.executescript(SCHEMA)
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("last_seq", "0"), ("last_key", "0"), ("embedder", embedder), ("dim", str(dim))],
            )
        conn.close()
        return cls(path)

    # -- connections -------------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- reads -------------------------------------------------------------------------------------
    def meta(self, name: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"{self.path}: no {name!r} in the store's meta table")
        return row[0]

    def max_seq(self) -> int:
        return int(self.meta("last_seq"))

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def get(self, doc_id: str) -> Document | None:
        return self.get_many([doc_id]).get(doc_id)

    def get_many(self, ids: Sequence[str]) -> dict[str, Document]:
        """The current documents among ``ids``, in one query."""
        rows = self.conn.execute(
            "SELECT id, title, text, metadata FROM documents WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
        return {r[0]: Document(id=r[0], title=r[1], text=r[2], metadata=json.loads(r[3])) for r in rows}

    def ids_for_keys(self, keys: Iterable[int]) -> dict[int, str]:
        """Map current keys to document ids; keys of replaced or deleted versions are left out."""
        rows = self.conn.execute(
            "SELECT key, id FROM documents WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps([int(k) for k in keys]),),
        )
        return dict(rows)

    def iter_documents(self) -> Iterator[Document]:
        """All documents in id order, a page at a time (no transaction is held between pages)."""
        last = None
        while True:
            if last is None:
                page = self.conn.execute(
                    "SELECT id, title, text, metadata FROM documents ORDER BY id LIMIT ?", (PAGE,)
                ).fetchall()
            else:
                page = self.conn.execute(
                    "SELECT id, title, text, metadata FROM documents WHERE id > ? ORDER BY id LIMIT ?",
                    (last, PAGE),
                ).fetchall()
            for r in page:
                yield Document(id=r[0], title=r[1], text=r[2], metadata=json.loads(r[3]))
            if len(page) < PAGE:
                return
            last = page[-1][0]

    def embeddings(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of ``ids``, in order; NotFoundError names ids with none."""
        found: dict[str, bytes] = {}
        for start in range(0, len(ids), PAGE):
            rows = self.conn.execute(
                "SELECT id, embedding FROM documents WHERE embedding IS NOT NULL "
                "AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids[start : start + PAGE])),),
            )
            found.update(rows)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(
                f"no stored embedding for document(s) {', '.join(map(repr, missing[:10]))}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for n, doc_id in enumerate(ids):
            out[n] = self._vector(found[doc_id])
        return out

    def unchanged_embeddings(self, docs: Sequence[Document]) -> dict[str, np.ndarray]:
        """Stored vectors of the documents whose title and text are already stored as given."""
        wanted = {d.id: d for d in docs}
        out: dict[str, np.ndarray] = {}
        ids = list(wanted)
        for start in range(0, len(ids), PAGE):
            rows = self.conn.execute(
                "SELECT id, title, text, embedding FROM documents WHERE embedding IS NOT NULL "
                "AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids[start : start + PAGE]),),
            )
            for doc_id, title, text, blob in rows:
                doc = wanted[doc_id]
                if doc.title == title and doc.text == text:
                    out[doc_id] = self._vector(blob)
        return out

    def rows(self, conn: sqlite3.Connection) -> Iterator[Row]:
        """Every current version, in key order (use inside ``snapshot()`` for a consistent view)."""
        cursor = conn.execute("SELECT id, key, title, text, embedding FROM documents ORDER BY key")
        for r in cursor:
            yield Row(r[0], r[1], r[2], r[3], self._vector(r[4]) if r[4] is not None else None)

    def changes_since(self, seq: int) -> Changes:
        """Everything written after ``seq``, read in one transaction."""
        with self.snapshot() as conn:
            upto = int(conn.execute("SELECT value FROM meta WHERE name = 'last_seq'").fetchone()[0])
            removed = conn.execute("SELECT id, key FROM deletions WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
            added = [
                Row(r[0], r[1], r[2], r[3], self._vector(r[4]) if r[4] is not None else None)
                for r in conn.execute(
                    "SELECT id, key, title, text, embedding FROM documents WHERE seq > ? ORDER BY seq", (seq,)
                )
            ]
        return Changes(upto=upto, removed=removed, added=added)

    def _vector(self, blob: bytes) -> np.ndarray:
        vector = np.frombuffer(blob, dtype="<f4")
        if vector.shape[0] != self.dim:
            raise ValueError(f"{self.path}: stored embedding has {vector.shape[0]} dimensions, expected {self.dim}")
        return vector

    # -- writes ------------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[Document], vectors: np.ndarray) -> None:
        """Store ``docs`` (unique ids) with their vectors as new versions, in one transaction."""
        if len(docs) != len(vectors):
            raise ValueError(f"{len(docs)} documents but {len(vectors)} vectors")
        with self._write() as conn:
            seq, key = self._counters(conn)
            seq += 1  # one change number for the whole batch
            for doc, vector in zip(docs, vectors, strict=True):
                key += 1
                old = conn.execute("SELECT key FROM documents WHERE id = ?", (doc.id,)).fetchone()
                if old is not None:
                    conn.execute("INSERT INTO deletions (id, key, seq) VALUES (?, ?, ?)", (doc.id, old[0], seq))
                conn.execute(
                    "INSERT INTO documents (id, key, title, text, metadata, embedding, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET key = excluded.key, "
                    "title = excluded.title, text = excluded.text, metadata = excluded.metadata, "
                    "embedding = excluded.embedding, seq = excluded.seq",
                    (doc.id, key, doc.title, doc.text, _json(doc.metadata), _blob(vector, self.dim), seq),
                )
            self._set_counters(conn, seq, key)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id in one transaction; returns how many existed."""
        deleted = 0
        with self._write() as conn:
            seq, key = self._counters(conn)
            seq += 1
            for doc_id in dict.fromkeys(ids):
                old = conn.execute("SELECT key FROM documents WHERE id = ?", (doc_id,)).fetchone()
                if old is None:
                    continue
                conn.execute("INSERT INTO deletions (id, key, seq) VALUES (?, ?, ?)", (doc_id, old[0], seq))
                conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
                deleted += 1
            if deleted:
                self._set_counters(conn, seq, key)
        return deleted

    def set_embeddings(self, vectors: dict[int, np.ndarray]) -> None:
        """Fill in missing embeddings by key (a key names one version, so a newer version is untouched)."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE documents SET embedding = ? WHERE key = ? AND embedding IS NULL",
                [(_blob(v, self.dim), int(k)) for k, v in vectors.items()],
            )

    def replace_embeddings(self, embedder: str, dim: int, vectors: dict[int, np.ndarray]) -> None:
        """Switch the store to ``embedder`` (``dim`` dimensions) in one transaction: every document gets
        its vector from ``vectors`` (by key), or none where it is missing there (computed on the next write)."""
        with self._write() as conn:
            conn.execute("UPDATE documents SET embedding = NULL")
            conn.executemany(
                "UPDATE documents SET embedding = ? WHERE key = ?",
                [(_blob(v, dim), int(k)) for k, v in vectors.items()],
            )
            conn.executemany("UPDATE meta SET value = ? WHERE name = ?", [(embedder, "embedder"), (str(dim), "dim")])
        self.reload_meta()

    def reload_meta(self) -> None:
        """Re-read the embedder and dimension (another process may have switched them)."""
        self.dim = int(self.meta("dim"))
        self.embedder = self.meta("embedder")

    def prune_deletions(self, upto: int) -> None:
        """Forget the deletions log up to ``upto`` (once the serving generation has applied it)."""
        with self._write() as conn:
            conn.execute("DELETE FROM deletions WHERE seq <= ?", (upto,))

    @staticmethod
    def _counters(conn: sqlite3.Connection) -> tuple[int, int]:
        values = dict(conn.execute("SELECT name, value FROM meta WHERE name IN ('last_seq', 'last_key')"))
        return int(values["last_seq"]), int(values["last_key"])

    @staticmethod
    def _set_counters(conn: sqlite3.Connection, seq: int, key: int) -> None:
        conn.executemany("UPDATE meta SET value = ? WHERE name = ?", [(str(seq), "last_seq"), (str(key), "last_key")])


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is on disk before the search structures apply it, so they are never ahead.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL to 64 MB after a big batch
    return conn


def _json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False)


def _blob(vector: np.ndarray, dim: int) -> bytes:
    vector = np.asarray(vector, dtype="<f4")
    if vector.shape != (dim,):
        raise ValueError(f"embedding has shape {vector.shape}, expected ({dim},)")
    return vector.tobytes()
