"""The workbench's SQLite file (``judgments.sqlite`` beside the index), shared by its stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Self

FILENAME = "judgments.sqlite"


class SQLiteStore:
    """A store in ``path`` (created on first use) with the tables of ``SCHEMA``. Each call opens its own
    connection, so a store is safe to share between threads; each write is one transaction (a failed one
    changes nothing)."""

    SCHEMA: tuple[str, ...] = ()

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def beside(cls, folder: str | Path) -> Self:
        """The store of the index in ``folder`` (``folder/judgments.sqlite``)."""
        return cls(Path(folder) / FILENAME)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=10.0)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in self.SCHEMA:
                conn.execute(statement)
            with conn:  # commit, or roll back on an error
                yield conn
