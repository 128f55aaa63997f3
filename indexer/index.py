"""The hybrid index: a document store plus generations of BM25 and dense search structures.

Directory layout::

    DIR/config.json          IndexConfig, written at creation (and by ``reindex(config=...)``)
    DIR/store.sqlite         documents, their embeddings and the change log: the source of truth
    DIR/CURRENT              name of the serving generation, replaced atomically
    DIR/generations/<name>/  lexical/ (tantivy), dense.faiss, manifest.json
    DIR/write.lock           fcntl lock held while anything is written
    DIR/reindex.lock         fcntl lock held by the one reindex that may run at a time

The locks are created when first taken; opening for search needs no write access (on a read-only
mount the repairs an open makes under them are skipped, and writes raise ``ReadOnlyIndexError``).

A write stores the batch in SQLite (one transaction), then applies every change the serving
generation has not seen yet (``manifest.json: applied_seq``) to it, under the write lock. So a crash
after the SQLite commit loses nothing: the next write, or the next open, catches up.

A write does not rewrite ``dense.faiss``. That file is the dense *base*, as of ``dense_seq``; the
store's change log (SQLite, append-only between reindexes) is the *delta*: an open loads the base and
replays the vectors changed in ``(dense_seq, applied_seq]`` from the store, and a reader that reloads
after a write replays only what is new. The base is rewritten (merged) once the delta holds more than
``max(DENSE_DELTA_MIN, DENSE_DELTA_SHARE * vectors)`` changes, and by every reindex. A one-document
upsert therefore costs a SQLite commit, a tantivy commit and a small manifest, not the whole index.

A reindex builds ``generations/<name>.tmp`` from a snapshot of the store, then, under the write lock,
applies the changes made meanwhile, renames it, and replaces CURRENT. Until that last step the old
generation serves; leftovers of a crashed reindex are removed on the next open.

A reindex with another embedder (``grouprank train adapt`` promotes one, installed under
``DIR/embedders/``) re-encodes every document into the new generation; the store's vectors and embedder
name change in one SQLite transaction just before CURRENT does, and an open after a crash between the two
finishes the switch.

Readers in other processes notice a new generation or a newer commit by a stat of CURRENT and of the
generation's manifest at the start of each search, and reload (the embedder too, when it changed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import fasteners
import numpy as np

from grouprank.atomic import TMP_SUFFIX
from grouprank.atomic import write_atomic as _write_atomic  # a module name tests can patch
from grouprank.errors import GroupRankError, InputError, NotFoundError
from indexer import fusion as fuse
from indexer.config import IndexConfig, resolve_encoder, search_args
from indexer.dense import DenseIndex, resolve_device
from indexer.documents import Document, validate_batch
from indexer.embedder import Embedder, load_embedder
from indexer.generation import (
    DENSE,
    GENERATIONS,
    LEXICAL,
    MANIFEST,
    Generation,
    apply_dense,
    build_generation,
    finish_generation,
    generation_name,
    generation_number,
    manifest_bytes,
    maybe_bar,
    stat_key,
)
from indexer.hits import Hit
from indexer.lexical import LexicalIndex
from indexer.locks import IndexLock, try_lock
from indexer.store import Changes, Row, Store

__all__ = ["Hit", "Index", "IndexConfig"]

CONFIG = "config.json"
STORE = "store.sqlite"
CURRENT = "CURRENT"
WRITE_LOCK = "write.lock"
REINDEX_LOCK = "reindex.lock"
EMBEDDERS = "embedders"  # embedders installed in the index (an adapted one: ``grouprank train adapt``)
FEW_QUERIES = 8  # encoded single-threaded (see Embedder.encode)
# On a CPU, queries are encoded in sub-batches of this many, of similar length: a batch is padded to its
# longest query, and in a batch of 25 Cranfield queries that doubles the tokens (bench/encode_speed.py,
# "queries"). A GPU keeps IndexConfig.batch_size: small batches would waste it.
QUERY_BATCH = 8
LOAD_ATTEMPTS = 5  # a reader may race a reindex that deletes the generation it was about to open
DENSE_DELTA_MIN = 1_000  # vector changes kept in the delta (the store's log) before dense.faiss is rewritten
DENSE_DELTA_SHARE = 0.05  # ... or this share of the index's vectors, whichever is larger


class Index:
    """Open with ``Index.create``, ``Index.open`` or ``Index.open_or_create``; close (or use ``with``)."""

    def __init__(self, path: Path, config: IndexConfig, store: Store) -> None:
        self.path = path
        self.config = config
        self.store = store
        self._write_lock = IndexLock(path / WRITE_LOCK)
        self._reindex_lock = IndexLock(path / REINDEX_LOCK)
        self._refresh_lock = threading.Lock()
        self._dense_lock = fasteners.ReaderWriterLock()  # searches read the dense index; writes change it in place
        self._embedder: Embedder | None = None
        self._generation: Generation | None = None
        if try_lock(self._reindex_lock):
            try:
                self._remove_leftovers()
            finally:
                self._reindex_lock.release()
        self._generation = self._load_generation(None)
        if try_lock(self._write_lock):  # if no one is writing, repair what a crash left
            try:
                for stray in [*path.glob(f".*{TMP_SUFFIX}"), *self._generation.path.glob(f".*{TMP_SUFFIX}")]:
                    stray.unlink()  # half-written files of _write_atomic
                if self._generation.applied_seq < self.store.max_seq():
                    self._catch_up(progress=False)  # a writer died between its commit and the update
            finally:
                self._write_lock.release()

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: IndexConfig | None = None) -> Index:
        """A new, empty index in ``path`` (which must not exist or be an empty directory)."""
        path = Path(path)
        config = config if config is not None else IndexConfig()
        if not isinstance(config, IndexConfig):
            raise InputError(f"config must be an IndexConfig, got {type(config).__name__}", field="config")
        if (path / CURRENT).exists():
            raise InputError("already holds an index; open it with Index.open", source=path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InputError("exists and is not an empty directory", source=path)
        config = replace(config, encoder=resolve_encoder(config.encoder, resolve_device(config.dense_device)))
        dim = load_embedder(config.embedder, config.encoder).dim
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built aside and renamed into place, so a half-created index is never visible.
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-", dir=path.parent))
        try:
            os.chmod(staging, 0o755)
            (staging / CONFIG).write_text(config.to_json(), encoding="utf-8")
            store = Store.create(staging / STORE, embedder=config.embedder, dim=dim)
            try:
                (staging / GENERATIONS).mkdir()
                name = generation_name(1)
                tmp = staging / GENERATIONS / (name + TMP_SUFFIX)
                lexical, dense, seq = build_generation(store, tmp, config, None, progress=False)
                del lexical
                finish_generation(tmp, name, dense, seq, seq, config, store)
                _write_atomic(staging / CURRENT, name.encode())
            finally:
                store.close()
            try:
                os.rename(staging, path)
            except OSError as exc:
                raise InputError(f"cannot create the index here ({exc.strerror})", source=path) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> Index:
        """An existing index; ``NotFoundError`` if ``path`` is missing or not an index."""
        path = Path(path)
        if not path.is_dir():
            raise NotFoundError(f"{path}: no such index directory")
        for name in (CURRENT, CONFIG, STORE):
            if not (path / name).is_file():
                raise NotFoundError(f"{path}: not a grouprank index (no {name})")
        config = IndexConfig.load(path / CONFIG)
        store = Store(path / STORE)
        if store.embedder != config.embedder:
            config = _finish_switch(path, store, config)
        if store.embedder != config.embedder:
            store.close()
            raise InputError(
                f"the store was embedded with {store.embedder!r} but the config names {config.embedder!r}",
                source=path / CONFIG,
                field="embedder",
            )
        try:
            return cls(path, config, store)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open_or_create(cls, path: str | Path, config: IndexConfig | None = None) -> Index:
        """Open ``path`` if it holds an index (``config`` is then ignored), else create one there."""
        path = Path(path)
        if (path / CURRENT).exists():
            return cls.open(path)
        try:
            return cls.create(path, config)
        except InputError:
            if (path / CURRENT).exists():  # created by someone else meanwhile
                return cls.open(path)
            raise

    def close(self) -> None:
        self._generation = None
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- documents ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._check_open()
        return self.store.count()

    def get(self, doc_id: str) -> Document | None:
        self._check_open()
        return self.store.get(doc_id)

    def iter_documents(self) -> Iterator[Document]:
        self._check_open()
        return self.store.iter_documents()

    def embeddings(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of ``ids`` (in order) as an (n, dim) float32 array."""
        self._check_open()
        return self.store.embeddings(list(ids))

    def upsert(self, docs: Iterable[Document], progress: bool = True, *, vectors: Any = None) -> int:
        """Add or replace documents; returns how many were written (repeated ids count once, last wins).

        The batch is validated and embedded first and stored in one transaction: if any document is
        invalid, nothing from the batch is stored. ``vectors``: the documents' own embeddings, one row
        per document in order (made by this index's embedder, or a benchmark's random unit vectors);
        they are L2-normalised and nothing is encoded.
        """
        self._check_open()
        docs = list(docs)
        own = None if vectors is None else _own_vectors(vectors, len(docs), self.store.dim)
        batch = validate_batch(docs)
        if not batch:
            return 0
        if own is not None:  # each stored document takes the vector of its last occurrence (last wins)
            last = {doc.id: n for n, doc in enumerate(docs)}
            vectors = own[[last[doc.id] for doc in batch]]
        else:
            vectors = np.empty((len(batch), self.store.dim), dtype=np.float32)
            stored = self.store.unchanged_embeddings(batch)  # re-ingesting the same text re-uses its vector
            todo = [n for n, doc in enumerate(batch) if doc.id not in stored]
            for n, doc in enumerate(batch):
                if doc.id in stored:
                    vectors[n] = stored[doc.id]
            if todo:
                vectors[todo] = self.embedder.encode([batch[n].body for n in todo], self.config.batch_size, progress)
        with self._write_lock:
            self.store.upsert(batch, vectors)
            self._catch_up(progress)
        return len(batch)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; returns how many existed. A single string counts as one id."""
        self._check_open()
        ids = [ids] if isinstance(ids, str) else list(ids)
        for n, doc_id in enumerate(ids, start=1):
            if not isinstance(doc_id, str):
                raise InputError(f"id #{n} must be a string, got {doc_id!r}", field="id")
        with self._write_lock:
            deleted = self.store.delete(ids)
            if deleted:
                self._catch_up(progress=False)
        return deleted

    # -- search ------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 10,
        mode: str = "hybrid",
        *,
        depth: int | None = None,
        fusion: str | None = None,
        dense_weight: float | None = None,
    ) -> list[Hit]:
        """The ``k`` best documents for ``query`` by ``mode``: "bm25", "dense" or "hybrid" (fused)."""
        if not isinstance(query, str):
            raise InputError(f"query must be a string, got {type(query).__name__}", field="query")
        return self.search_batch([query], k, mode, depth=depth, fusion=fusion, dense_weight=dense_weight)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        mode: str = "hybrid",
        *,
        depth: int | None = None,
        fusion: str | None = None,
        dense_weight: float | None = None,
    ) -> list[list[Hit]]:
        """``search`` for several queries, embedding them in one batch."""
        self._check_open()
        config = self.config
        args = search_args(queries, k, mode, depth, fusion, dense_weight, config)
        how, depth, weight = args.fusion, args.depth, args.dense_weight
        if not queries:
            return []
        gen = self._fresh_generation()

        raw: list[dict[str, tuple[Sequence[int], Sequence[float]]]] = [{} for _ in queries]
        if mode in ("bm25", "hybrid"):
            for n, query in enumerate(queries):
                raw[n]["bm25"] = gen.lexical.search(query, depth)
        if mode in ("dense", "hybrid"):
            few = len(queries) <= FEW_QUERIES
            batch = QUERY_BATCH if self.embedder.device == "cpu" else config.batch_size
            vectors = self.embedder.encode(list(queries), batch, threads=1 if few else None)
            with self._dense_lock.read_lock():  # a write applies its vectors in place, between searches
                scores, keys = gen.dense.search(vectors, depth)
            for n in range(len(queries)):
                raw[n]["dense"] = (keys[n].tolist(), scores[n].tolist())

        ids = self.store.ids_for_keys({key for r in raw for keys, _ in r.values() for key in keys if key >= 0})
        fused_per_query = []
        for r in raw:
            rankings = {
                name: [(ids[key], score) for key, score in zip(keys, scores, strict=True) if key in ids][:depth]
                for name, (keys, scores) in r.items()
            }
            if mode != "hybrid":
                fused = list(rankings[mode])
            elif how == "rrf":
                fused = fuse.rrf(rankings, config.rrf_k)
            else:
                fused = fuse.weighted(rankings, {"dense": weight, "bm25": 1.0 - weight})
            fused_per_query.append((fused[:k], rankings))

        docs = self.store.get_many(list({doc_id for top, _ in fused_per_query for doc_id, _ in top}))
        results = []
        for top, rankings in fused_per_query:
            per_retriever = {name: (dict(ranking), fuse.ranks(ranking)) for name, ranking in rankings.items()}
            hits = []
            for doc_id, score in top:
                doc = docs.get(doc_id)
                if doc is None:  # deleted since its key was looked up
                    continue
                hits.append(
                    Hit(
                        id=doc_id,
                        score=float(score),
                        text=doc.text,
                        title=doc.title,
                        metadata=doc.metadata,
                        scores={name: float(s[doc_id]) for name, (s, _) in per_retriever.items() if doc_id in s},
                        ranks={name: r[doc_id] for name, (_, r) in per_retriever.items() if doc_id in r},
                    )
                )
            results.append(hits)
        return results

    # -- maintenance -------------------------------------------------------------------------------
    def reindex(self, progress: bool = True, *, config: IndexConfig | None = None) -> str:
        """Build a fresh generation from the store and switch to it atomically; returns its name.

        Stored embeddings are re-used (only missing ones are computed). ``config`` may change the dense
        index type and the search settings; it is saved with the switch. A ``config`` naming another
        embedder re-encodes every document with it (``_switch_embedder``).
        """
        self._fresh_generation()  # picks up a config another process saved with its reindex
        new_config = config if config is not None else self.config
        if not isinstance(new_config, IndexConfig):
            raise InputError(f"config must be an IndexConfig, got {type(new_config).__name__}", field="config")
        if new_config.encoder == "auto":  # "auto" keeps what the index was built with
            new_config = config = replace(new_config, encoder=self.config.encoder)
        if new_config.embedder != self.store.embedder:
            return self._switch_embedder(new_config, progress)
        if new_config.encoder != self.config.encoder:
            raise InputError(
                f"cannot change the encoder from {self.config.encoder!r} to {new_config.encoder!r} by "
                "reindexing (stored vectors would not match the queries'); build a new index",
                field="encoder",
            )
        with self._reindex_lock:
            self._remove_leftovers()
            name = generation_name(self._last_generation_number() + 1)
            tmp = self.path / GENERATIONS / (name + TMP_SUFFIX)
            lexical, dense, snapshot = build_generation(self.store, tmp, new_config, self._encode_rows, progress)
            with self._write_lock:
                applied = self._apply_changes(lexical, dense, snapshot, progress).upto
                del lexical
                if config is not None:
                    _write_atomic(self.path / CONFIG, config.to_json().encode())
                finish_generation(tmp, name, dense, snapshot, applied, new_config, self.store)
                _write_atomic(self.path / CURRENT, name.encode())
                self.config = new_config
                self._generation = self._load_generation(None)
                self.store.prune_deletions(applied)
                self._remove_leftovers()
        return name

    def _switch_embedder(self, config: IndexConfig, progress: bool) -> str:
        """Re-encode every document with ``config.embedder`` into a new generation while the old one
        serves, then switch: under the write lock, encode what was written meanwhile, store the new
        vectors and embedder (one SQLite transaction), save ``config.json``, replace CURRENT.

        A crash before the SQLite commit leaves the old index (the half-built generation is removed on
        the next open); after it, ``Index.open`` finishes the switch (``_finish_switch``)."""
        if config.encoder == "auto":
            config = replace(config, encoder=resolve_encoder("auto", resolve_device(config.dense_device)))
        new = load_embedder(self._location(config.embedder), config.encoder, resolve_device(config.dense_device))
        vectors: dict[int, np.ndarray] = {}

        def encode(rows: list[Row], progress: bool) -> None:  # the new generation's vectors, kept for the store
            for row, vector in zip(rows, new.encode([r.body for r in rows], config.batch_size, progress), strict=True):
                row.embedding = vectors[row.key] = vector

        with self._reindex_lock:
            self._remove_leftovers()
            name = generation_name(self._last_generation_number() + 1)
            tmp = self.path / GENERATIONS / (name + TMP_SUFFIX)
            lexical, dense, snapshot = build_generation(self.store, tmp, config, encode, progress, dim=new.dim,
                                                        reencode=True)
            with self._write_lock:
                changes = self._apply_changes(lexical, dense, snapshot, progress, reencode=encode)
                del lexical
                finish_generation(tmp, name, dense, snapshot, changes.upto, config, self.store,
                                  embedder=config.embedder, dim=new.dim)
                self.store.replace_embeddings(config.embedder, new.dim, vectors)
                _write_atomic(self.path / CONFIG, config.to_json().encode())
                _write_atomic(self.path / CURRENT, name.encode())
                self.config = config
                self._embedder = new
                self._generation = self._load_generation(None)
                self.store.prune_deletions(changes.upto)
                self._remove_leftovers()
        return name

    def install_embedder(self, folder: str | Path, name: str) -> str:
        """Copy a sentence-transformers model folder into ``DIR/embedders/<name>`` (the index stays
        self-contained) and return the embedder name to reindex with (``embedders/<name>``)."""
        source = Path(folder)
        if not (source / "config.json").is_file():
            raise InputError("is not a sentence-transformers model folder (no config.json)", source=source)
        target = self.path / EMBEDDERS / name
        if target.exists():
            raise InputError("an embedder of this name is already installed", source=target)
        target.parent.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            os.chmod(staging, 0o755)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return f"{EMBEDDERS}/{name}"

    def _location(self, embedder: str) -> str:
        """Where an embedder name points: a folder installed in the index, else the name itself."""
        inside = self.path / embedder
        return str(inside) if embedder.startswith(f"{EMBEDDERS}/") and inside.is_dir() else embedder

    def stats(self) -> dict[str, Any]:
        self._check_open()
        gen = self._fresh_generation()
        return {
            "path": str(self.path),
            "documents": self.store.count(),
            "generation": gen.name,
            "applied_seq": gen.applied_seq,
            "store_seq": self.store.max_seq(),
            "dense_base_seq": gen.dense_seq,
            "dense_delta": gen.dense_delta,
            "dense_index": gen.dense.kind,
            "dense_index_configured": self.config.dense_index,
            "dense_note": gen.dense.note,
            "dense_vectors": gen.dense.ntotal,
            "stale_vectors": gen.dense.stale,
            "lexical_documents": gen.lexical.num_docs,
            "embedder": self.store.embedder,
            "encoder": self.config.encoder,
            "dense_device": gen.dense.device,
            "dim": self.store.dim,
            "fusion": self.config.fusion,
            "size_bytes": sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()),
        }

    @property
    def generation(self) -> str:
        """Name of the generation serving now."""
        return self._fresh_generation().name

    def warm_up(self) -> None:
        """Load the query embedder now, not on the first query."""
        self.embedder  # noqa: B018

    def ping(self) -> None:
        """Raise if the index folder can no longer serve (it reads the current generation)."""
        self._fresh_generation()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            device = resolve_device(self.config.dense_device)
            embedder = load_embedder(self._location(self.store.embedder), self.config.encoder, device)
            if embedder.dim != self.store.dim:
                raise GroupRankError(
                    f"embedder {embedder.name!r} gives {embedder.dim} dimensions but the store holds {self.store.dim}"
                )
            self._embedder = embedder
        return self._embedder

    # -- internals ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._generation is None:
            raise GroupRankError(f"{self.path}: the index is closed")

    def _read_current(self) -> str:
        return (self.path / CURRENT).read_text(encoding="utf-8").strip()

    def _fresh_generation(self) -> Generation:
        """The serving generation, reloaded first if another process changed it (two stats)."""
        gen = self._generation
        if gen is None:
            raise GroupRankError(f"{self.path}: the index is closed")
        with contextlib.suppress(FileNotFoundError):
            if (
                stat_key(self.path / CURRENT) == gen.current_stat
                and stat_key(gen.path / MANIFEST) == gen.manifest_stat
            ):
                return gen
        with self._refresh_lock:
            if self._generation is gen:
                self._generation = self._load_generation(gen)
            return self._generation

    def _load_generation(self, previous: Generation | None) -> Generation:
        """Load what CURRENT names; re-uses ``previous``'s tantivy index if it is the same generation."""
        for attempt in range(LOAD_ATTEMPTS):
            current_stat = stat_key(self.path / CURRENT)
            name = self._read_current()
            path = self.path / GENERATIONS / name
            try:
                manifest_stat = stat_key(path / MANIFEST)
                manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
                if previous is None or previous.name != name:
                    self.config = IndexConfig.load(self.path / CONFIG)
                    if manifest.get("embedder", self.store.embedder) != self.store.embedder:
                        self.store.reload_meta()  # another process switched the embedder
                        self._embedder = None
                    lexical = LexicalIndex.open(path / LEXICAL)
                else:
                    lexical = previous.lexical
                    lexical.reload()
                dense_seq = int(manifest.get("dense_seq", manifest["applied_seq"]))
                if previous is not None and previous.name == name and previous.dense_seq == dense_seq:
                    dense, since = previous.dense, previous.applied_seq  # same base: replay the new part in place
                else:
                    dense = DenseIndex.load(path / DENSE, self.config, manifest["dense_index"], manifest["dense_note"])
                    since = dense_seq
                if int(manifest["applied_seq"]) > since:
                    changes = self.store.changes_since(since)
                    with self._dense_lock.write_lock():
                        apply_dense(dense, changes)
            except (OSError, ValueError, RuntimeError):  # e.g. deleted by a reindex meanwhile
                if attempt == LOAD_ATTEMPTS - 1:
                    raise
                continue
            if stat_key(self.path / CURRENT) != current_stat:
                continue  # swapped while loading
            if dense.kind == "hnsw":
                dense.stale = max(0, dense.ntotal - self.store.count())
            return Generation(name, path, manifest, lexical, dense, current_stat, manifest_stat)
        raise GroupRankError(f"{self.path}: the serving generation kept changing while loading it")

    def _catch_up(self, progress: bool) -> None:
        """Apply the store's changes the serving generation has not seen (caller holds the write lock)."""
        gen = self._fresh_generation()
        if gen.applied_seq >= self.store.max_seq():
            return
        dense = gen.dense  # changed in place, under the dense lock: a copy would cost a whole index per write
        changes = self._apply_changes(gen.lexical, dense, gen.applied_seq, progress, self._dense_lock.write_lock)
        applied = changes.upto
        manifest = {**gen.manifest, "applied_seq": applied, "dense_seq": gen.dense_seq,
                    "dense_delta": gen.dense_delta + len(changes.added) + len(changes.removed)}
        if manifest["dense_delta"] > max(DENSE_DELTA_MIN, DENSE_DELTA_SHARE * dense.ntotal):
            _write_atomic(gen.path / DENSE, dense.to_bytes())  # merge the delta into the base
            manifest.update(dense_seq=applied, dense_delta=0)
        _write_atomic(gen.path / MANIFEST, manifest_bytes(manifest))
        self._generation = replace(gen, manifest=manifest, dense=dense, manifest_stat=stat_key(gen.path / MANIFEST))

    def _apply_changes(
        self, lexical: LexicalIndex, dense: DenseIndex, since: int, progress: bool,
        dense_guard: Any = contextlib.nullcontext, reencode: Any = None,
    ) -> Changes:
        """Bring ``lexical`` and ``dense`` from store seq ``since`` to now; returns the changes applied
        (``upto``: the new seq).

        Idempotent, so re-applying after a crash half-way is harmless. ``dense_guard()`` is held while
        the vectors change (the dense lock's write side when ``dense`` is serving). ``reencode(rows,
        progress)``, when given, sets every added row's vector (a new embedder's; the store is not written);
        otherwise rows without a stored vector are encoded and stored.
        """
        changes = self.store.changes_since(since)
        if reencode is not None:
            if changes.added:
                reencode(changes.added, progress)
        elif missing := [row for row in changes.added if row.embedding is None]:
            self._encode_rows(missing, progress)
        with lexical.writer() as writer, maybe_bar("indexing", len(changes.added), progress) as bar:
            for doc_id, _ in changes.removed:
                writer.delete(doc_id)
            for row in changes.added:
                writer.delete(row.id)
                writer.add(row.id, row.key, row.body)
                bar.advance()
        with dense_guard():
            apply_dense(dense, changes)
        return changes

    def _encode_rows(self, rows: list[Row], progress: bool) -> None:
        """Compute and store the embeddings a few rows lack."""
        vectors = self.embedder.encode([row.body for row in rows], self.config.batch_size, progress)
        for row, vector in zip(rows, vectors, strict=True):
            row.embedding = vector
        self.store.set_embeddings({row.key: row.embedding for row in rows})

    def _last_generation_number(self) -> int:
        names = [p.name.removesuffix(TMP_SUFFIX) for p in (self.path / GENERATIONS).iterdir()]
        return max([generation_number(n) for n in [*names, self._read_current()]])

    def _remove_leftovers(self) -> None:
        """Delete half-built and unused generations, keeping CURRENT's and the one before it.

        The caller holds the reindex lock, so no generation is being built.
        """
        current = self._read_current()
        root = self.path / GENERATIONS
        older = sorted(
            (generation_number(p.name), p.name)
            for p in root.iterdir()
            if not p.name.endswith(TMP_SUFFIX) and generation_number(p.name) < generation_number(current)
        )
        keep = {current, *([older[-1][1]] if older else [])}
        for entry in root.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _finish_switch(path: Path, store: Store, config: IndexConfig) -> IndexConfig:
    """After a crash between an embedder switch's SQLite commit and CURRENT: point CURRENT at the newest
    generation built with the store's embedder and save the config; the config as it was if there is none."""
    built = []
    for gen in (path / GENERATIONS).iterdir():
        with contextlib.suppress(OSError, ValueError):
            if not gen.name.endswith(TMP_SUFFIX):
                manifest = json.loads((gen / MANIFEST).read_text(encoding="utf-8"))
                if manifest.get("embedder") == store.embedder:
                    built.append((generation_number(gen.name), gen.name))
    if not built:
        return config
    switched = replace(config, embedder=store.embedder)
    lock = IndexLock(path / WRITE_LOCK)
    if not try_lock(lock):  # read-only, or a writer is busy: the mismatch is reported
        return config
    try:
        _write_atomic(path / CONFIG, switched.to_json().encode())
        _write_atomic(path / CURRENT, max(built)[1].encode())
    finally:
        lock.release()
    return switched


def _own_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    """Caller-supplied embeddings as unit float32 rows, or an ``InputError`` naming what is wrong."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape != (n, dim):
        raise InputError(f"expected {n} vectors of {dim} dimensions, got shape {array.shape}", field="vectors")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(array)) or np.any(norms == 0):
        raise InputError("vectors must be finite and non-zero", field="vectors")
    return np.ascontiguousarray(array / norms)
