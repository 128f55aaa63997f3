"""One generation of an index's search structures (``DIR/generations/<name>/``): its manifest, how it is
built from a snapshot of the store, written and named, and how a change set reaches its dense part.
``indexer.index.Index`` decides when; this module holds what."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grouprank.atomic import TMP_SUFFIX
from grouprank.atomic import fsync_dir as _fsync_dir
from grouprank.atomic import write_atomic as _write_atomic
from grouprank.progress import progress_bar
from indexer.config import IndexConfig
from indexer.dense import DenseIndex
from indexer.lexical import LexicalIndex
from indexer.store import Changes, Row, Store

GENERATIONS = "generations"
MANIFEST = "manifest.json"
LEXICAL = "lexical"
DENSE = "dense.faiss"


@dataclass
class Generation:
    """One loaded generation and the stats that tell whether it is still current."""

    name: str
    path: Path
    manifest: dict[str, Any]
    lexical: LexicalIndex
    dense: DenseIndex
    current_stat: tuple[int, int, int]
    manifest_stat: tuple[int, int, int]

    @property
    def applied_seq(self) -> int:
        return int(self.manifest["applied_seq"])

    @property
    def dense_seq(self) -> int:
        """The store seq that ``dense.faiss`` (the base) reflects; later changes are replayed."""
        return int(self.manifest.get("dense_seq", self.manifest["applied_seq"]))

    @property
    def dense_delta(self) -> int:
        """Vector changes since the base, replayed from the store on open."""
        return int(self.manifest.get("dense_delta", 0))


def apply_dense(dense: DenseIndex, changes: Changes) -> None:
    """Apply a change set's removals and additions to ``dense`` (idempotent)."""
    dense.remove(np.array([key for _, key in changes.removed], dtype=np.int64))
    added = [row for row in changes.added if row.embedding is not None]
    if added:
        dense.add(np.stack([row.embedding for row in added]), np.array([row.key for row in added], dtype=np.int64))


def build_generation(
    store: Store, tmp: Path, config: IndexConfig, encode_rows: Any, progress: bool, *, dim: int | None = None,
    reencode: bool = False,
) -> tuple[LexicalIndex, DenseIndex, int]:
    """Build a generation in ``tmp`` from a snapshot of the store; returns it and the snapshot's seq.

    ``encode_rows(rows, progress)`` sets the embedding of rows that have none (of every row with
    ``reencode``: a new embedder of ``dim`` dimensions)."""
    tmp.mkdir()
    lexical = LexicalIndex.create(tmp / LEXICAL)
    dim = dim if dim is not None else store.dim
    with store.snapshot() as conn:
        seq = int(conn.execute("SELECT value FROM meta WHERE name = 'last_seq'").fetchone()[0])
        count = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        keys = np.empty(count, dtype=np.int64)
        vectors = np.zeros((count, dim), dtype=np.float32)
        missing: list[tuple[int, Row]] = []
        with lexical.writer() as writer, maybe_bar(f"building {tmp.name}", count, progress) as bar:
            for n, row in enumerate(store.rows(conn)):
                writer.add(row.id, row.key, row.body)
                keys[n] = row.key
                if reencode or row.embedding is None:
                    missing.append((n, row))
                else:
                    vectors[n] = row.embedding
                bar.advance()
    if missing:
        encode_rows([row for _, row in missing], progress)
        for n, row in missing:
            vectors[n] = row.embedding
    dense = DenseIndex.build(vectors, keys, config, dim)
    return lexical, dense, seq


def finish_generation(
    tmp: Path, name: str, dense: DenseIndex, built_from: int, applied: int, config: IndexConfig, store: Store,
    *, embedder: str | None = None, dim: int | None = None,
) -> None:
    """Write the dense index and manifest into ``tmp`` and rename it to its final name."""
    _write_atomic(tmp / DENSE, dense.to_bytes())
    manifest = {
        "name": name,
        "applied_seq": applied,
        "dense_seq": applied,
        "dense_delta": 0,
        "built_from_seq": built_from,
        "dense_index": dense.kind,
        "dense_note": dense.note,
        "embedder": embedder if embedder is not None else store.embedder,
        "dim": dim if dim is not None else store.dim,
        "dense_settings": {k: v for k, v in config.to_dict().items() if k.startswith(("hnsw_", "ivf_"))},
    }
    _write_atomic(tmp / MANIFEST, manifest_bytes(manifest))
    final = tmp.with_name(name)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass


def maybe_bar(description: str, total: int, progress: bool) -> contextlib.AbstractContextManager[Any]:
    return progress_bar(description, total) if progress else contextlib.nullcontext(_NoBar())


def generation_name(number: int) -> str:
    return f"gen-{number:06d}"


def generation_number(name: str) -> int:
    try:
        return int(name.removeprefix("gen-").removesuffix(TMP_SUFFIX))
    except ValueError:
        return 0


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def stat_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size
