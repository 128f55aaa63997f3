"""``OpenSearchIndex``: the retrieval tier on an OpenSearch cluster, behind the embedded ``Index``'s interface.

Readers and writers address an alias; the documents live in a versioned index behind it
(``<alias>-v000001``). ``reindex`` builds the next version from the current one (re-using the stored
vectors), catches up with writes made meanwhile, then blocks writes to the old version, catches up with
the last ones and moves the alias in one ``_aliases`` request; until then the old version serves, and a
failed build is deleted without touching the alias. A write refused by that block is sent again until
the alias has moved (``BLOCKED_WAIT_S``), so no acknowledged write is lost. Replaced versions are deleted
``grace_s`` after they stopped serving (they stay write-blocked).

Search modes: "bm25" (a ``match`` query), "dense" (a ``knn`` query; scores are converted back to
inner products, as in the embedded index) and "hybrid" (a ``hybrid`` query fused by a search
pipeline: the score-ranker-processor for RRF, the normalization-processor for weighted fusion).
Hybrid hits carry only the fused score: OpenSearch does not report the sub-queries' scores.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from grouprank.errors import GroupRankError, InputError, NotFoundError
from grouprank.progress import progress_bar
from indexer.config import search_args
from indexer.documents import Document, validate_batch
from indexer.embedder import Embedder, load_embedder
from indexer.hits import Hit
from indexer.opensearch import bulk, mappings, pipelines
from indexer.opensearch import queries as bodies
from indexer.opensearch.client import connect, opensearchpy, status_of, translated
from indexer.opensearch.settings import OpenSearchConfig

MAX_ID_BYTES = 512  # OpenSearch's limit on an _id
CATCH_UP_MARGIN_MS = 5_000  # writers' clocks may differ a little: catch up from a bit earlier
SCROLL = "5m"
BLOCKED_WAIT_S = 30.0  # how long a write refused by a write block (a reindex moving the alias) is retried


class OpenSearchIndex:
    """Open with ``OpenSearchIndex.create``, ``open`` or ``open_or_create``; close (or use ``with``)."""

    def __init__(self, config: OpenSearchConfig, client: Any, dim: int) -> None:
        self.config = config
        self.client = client
        self.dim = dim
        self._embedder: Embedder | None = None
        self._pipelines: set[str] = set()  # fusion pipelines known to exist with our body

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: OpenSearchConfig, client: Any | None = None, dim: int | None = None) -> OpenSearchIndex:
        """A new, empty index: the template, version 1 and the alias. InputError if the alias exists.

        ``dim``: the embedder's dimension, if known (else the embedder is loaded to find out).
        """
        client = client if client is not None else connect(config)
        dim = dim if dim is not None else load_embedder(config.embedder, config.encoder).dim
        with translated(config, f"creating the index {config.alias!r}"):
            if client.indices.exists_alias(name=config.alias) or client.indices.exists(index=config.alias):
                raise InputError(f"OpenSearch at {config.safe_url} already has an index or alias {config.alias!r}; "
                                 "open it instead", field="alias")
            client.indices.put_index_template(name=config.alias, body=mappings.template_body(config, dim))
            name = mappings.version_name(config.alias, 1)
            body = {**mappings.index_body(config, dim), "aliases": {config.alias: {}}}
            client.indices.create(index=name, body=body)
        return cls(config, client, dim)

    @classmethod
    def open(cls, config: OpenSearchConfig, client: Any | None = None) -> OpenSearchIndex:
        """The index behind ``config.alias``; NotFoundError if there is none."""
        client = client if client is not None else connect(config)
        with translated(config, f"opening the index {config.alias!r}"):
            if not client.indices.exists_alias(name=config.alias):
                raise NotFoundError(f"OpenSearch at {config.safe_url} has no grouprank index {config.alias!r}")
            meta = _grouprank_meta(client, config.alias)
            built = _built_with(client, config.alias)
        if meta.get("embedder") != config.embedder:
            raise InputError(f"the index {config.alias!r} was embedded with {meta.get('embedder')!r} but the settings "
                             f"name {config.embedder!r}", field="embedder")
        # The serving version's structure (HNSW parameters, shards) wins over the settings' defaults, so a
        # reindex keeps it unless asked otherwise; search settings (fusion, depth, ...) are the caller's.
        return cls(config.with_(**built), client, int(meta["dim"]))

    @classmethod
    def open_or_create(cls, config: OpenSearchConfig, client: Any | None = None, dim: int | None = None
                       ) -> OpenSearchIndex:
        """Open ``config.alias`` if it exists, else create it."""
        client = client if client is not None else connect(config)
        with translated(config, f"looking for the index {config.alias!r}"):
            exists = client.indices.exists_alias(name=config.alias)
        return cls.open(config, client) if exists else cls.create(config, client, dim)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> OpenSearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            embedder = load_embedder(self.config.embedder, self.config.encoder)
            if embedder.dim != self.dim:
                raise GroupRankError(f"embedder {embedder.name!r} gives {embedder.dim} dimensions but the index "
                                     f"{self.config.alias!r} holds {self.dim}")
            self._embedder = embedder
        return self._embedder

    @property
    def generation(self) -> str:
        """The versioned index serving now (what the alias names)."""
        with translated(self.config, "resolving the alias"):
            return _alias_target(self.client, self.config.alias)

    def warm_up(self) -> None:
        """Load the query embedder now, not on the first query."""
        self.embedder  # noqa: B018

    def ping(self) -> None:
        """Raise if the cluster is unreachable or the alias is gone (one request)."""
        self.generation  # noqa: B018

    # -- documents ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        with translated(self.config, "counting documents"):
            return int(self.client.count(index=self.config.alias)["count"])

    def get(self, doc_id: str) -> Document | None:
        with translated(self.config, f"getting document {doc_id!r}"):
            try:
                hit = self.client.get(index=self.config.alias, id=doc_id, _source_includes=list(mappings.SOURCE_FIELDS))
            except opensearchpy().NotFoundError:
                return None
        return mappings.document_from_hit(hit)

    def iter_documents(self) -> Iterator[Document]:
        """Every document, in no particular order (a scroll over the serving version)."""
        helpers = opensearchpy().helpers
        query = {"query": {"match_all": {}}, "_source": {"includes": list(mappings.SOURCE_FIELDS)}}
        with translated(self.config, "reading documents"):
            for hit in helpers.scan(self.client, index=self.config.alias, query=query, scroll=SCROLL):
                yield mappings.document_from_hit(hit)

    def embeddings(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of ``ids`` (in order) as an (n, dim) float32 array; NotFoundError names missing ids."""
        ids = list(ids)
        found = self._stored(ids, [mappings.VECTOR_FIELD])
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"no stored embedding for document(s) {', '.join(map(repr, missing[:10]))}")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for n, doc_id in enumerate(ids):
            out[n] = found[doc_id][mappings.VECTOR_FIELD]
        return out

    def upsert(self, docs: Iterable[Document], progress: bool = True) -> int:
        """Add or replace documents; returns how many were stored (repeated ids count once, last wins).

        The batch is validated first: an invalid document stores nothing. Documents OpenSearch refuses
        (a mapping conflict) raise ``bulk.BulkError`` naming each of them, after the rest were stored.
        """
        report = self.bulk_upsert(docs, progress)
        if not report.ok:
            raise bulk.BulkError(report)
        return report.written

    def bulk_upsert(self, docs: Iterable[Document], progress: bool = True) -> bulk.BulkReport:
        """``upsert`` that returns the per-document report instead of raising for refused documents."""
        batch = _checked(docs)
        return self.write_documents(batch, None, progress)

    def write_documents(self, batch: Sequence[Document], vectors: np.ndarray | None, progress: bool = True, *,
                        index: str | None = None, refresh: bool = True) -> bulk.BulkReport:
        """Store validated documents in chunks; ``vectors`` (one row per document) skips embedding them.

        Without ``vectors``, a document whose title and text are stored unchanged keeps its stored vector.
        ``refresh`` makes the writes visible to searches when this returns.
        """
        report = bulk.BulkReport()
        target = index or self.config.alias
        step = self.config.bulk_docs
        with maybe_progress("indexing", len(batch), progress) as bar, translated(self.config, f"writing to {target!r}"):
            for start in range(0, len(batch), step):
                chunk = batch[start : start + step]
                chunk_vectors = vectors[start : start + step] if vectors is not None else self._vectors(chunk)
                now = _now_ms()
                actions = [("index", doc.id, mappings.document_source(doc, vector, now))
                           for doc, vector in zip(chunk, chunk_vectors, strict=True)]
                for part in bulk.chunks(actions, step, self.config.bulk_bytes):
                    report.add(self._bulk(target, part))
                bar.advance(len(chunk))
            if batch and refresh:
                self.client.indices.refresh(index=target)
        return report

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; returns how many existed. A single string counts as one id."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        for n, doc_id in enumerate(ids, start=1):
            if not isinstance(doc_id, str):
                raise InputError(f"id #{n} must be a string, got {doc_id!r}", field="id")
        actions = [("delete", doc_id, None) for doc_id in dict.fromkeys(ids)]
        report = bulk.BulkReport()
        with translated(self.config, "deleting documents"):
            for part in bulk.chunks(actions, self.config.bulk_docs, self.config.bulk_bytes):
                report.add(self._bulk(self.config.alias, part))
            if actions:
                self.client.indices.refresh(index=self.config.alias)
        if not report.ok:
            raise bulk.BulkError(report)
        return report.deleted

    # -- search ------------------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, mode: str = "hybrid", *, depth: int | None = None,
               fusion: str | None = None, dense_weight: float | None = None) -> list[Hit]:
        """The ``k`` best documents for ``query`` by ``mode``: "bm25", "dense" or "hybrid" (fused)."""
        if not isinstance(query, str):
            raise InputError(f"query must be a string, got {type(query).__name__}", field="query")
        return self.search_batch([query], k, mode, depth=depth, fusion=fusion, dense_weight=dense_weight)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, mode: str = "hybrid", *, depth: int | None = None,
                     fusion: str | None = None, dense_weight: float | None = None) -> list[list[Hit]]:
        """``search`` for several queries, embedding them in one batch (one request per query)."""
        config = self.config
        args = search_args(queries, k, mode, depth, fusion, dense_weight, config)
        how, depth, weight = args.fusion, args.depth, args.dense_weight
        if not queries:
            return []
        vectors: Any = [None] * len(queries)
        if mode != "bm25":
            vectors = self.embedder.encode(list(queries), config.batch_size, threads=1 if len(queries) <= 8 else None)
        params: dict[str, Any] = {}
        if mode == "hybrid":
            params["search_pipeline"] = self._fusion_pipeline(how, weight)
        results = []
        with translated(config, f"searching {config.alias!r} ({mode})"):
            for query, vector in zip(queries, vectors, strict=True):
                body = bodies.search_body(mode, query, vector, k, depth)
                response = self.client.search(index=config.alias, body=body, params=params)
                results.append(_hits(response["hits"]["hits"][:k], mode))
        return results

    def _fusion_pipeline(self, fusion: str, dense_weight: float) -> str:
        """The name of the fusion pipeline for these settings, created (or corrected) if needed."""
        name, body = pipelines.fusion_pipeline(self.config.alias, fusion, dense_weight, self.config.rrf_k)
        if name in self._pipelines:
            return name
        hint = " (the score-ranker-processor needs OpenSearch 2.19 or later; fusion='weighted' works from 2.10)"
        try:
            with translated(self.config, f"creating the search pipeline {name!r}"):
                try:
                    existing = self.client.transport.perform_request("GET", f"/_search/pipeline/{name}").get(name)
                except opensearchpy().NotFoundError:
                    existing = None
                if existing != body:
                    self.client.transport.perform_request("PUT", f"/_search/pipeline/{name}", body=body)
        except GroupRankError as exc:
            raise GroupRankError(f"{exc}{hint if fusion == 'rrf' else ''}") from exc
        self._pipelines.add(name)
        return name

    # -- maintenance -------------------------------------------------------------------------------
    def reindex(self, progress: bool = True, *, config: OpenSearchConfig | None = None) -> str:
        """Build the next index version from the serving one and move the alias to it; returns its name.

        Stored vectors are re-used. ``config`` may change the HNSW, shard and search settings (not the
        embedder or the alias). Writes made during the build are caught up; then the old version is
        write-blocked (writers retry, see ``BLOCKED_WAIT_S``), the writes that reached it since are caught
        up too, and the alias moves, so none is lost. If anything fails, the new version is deleted, the
        old one unblocked and the alias stays where it was.
        """
        new_config = config if config is not None else self.config
        if not isinstance(new_config, OpenSearchConfig):
            raise InputError(f"config must be an OpenSearchConfig, got {type(new_config).__name__}", field="config")
        for name in ("embedder", "alias"):
            if getattr(new_config, name) != getattr(self.config, name):
                raise InputError(f"cannot change the {name} by reindexing; build a new index", field=name)
        alias = self.config.alias
        with translated(self.config, f"reindexing {alias!r}"):
            old = _alias_target(self.client, alias)
            new = mappings.version_name(alias, max(self._versions(), default=0) + 1)
            self.client.indices.create(index=new, body=mappings.index_body(new_config, self.dim))
            blocked = False
            try:
                started = _now_ms()
                self._copy(old, new, {"match_all": {}}, progress, f"building {new}")
                caught_up = _now_ms()
                self._catch_up(old, new, started - CATCH_UP_MARGIN_MS)
                # Writers still reach the old version until the alias moves: stop them (they retry), take
                # what reached it since the catch-up started, then move the alias.
                self._block_writes(old)
                blocked = True
                self._catch_up(old, new, caught_up - CATCH_UP_MARGIN_MS)
                self.client.indices.update_aliases(body={"actions": [
                    {"remove": {"index": old, "alias": alias}},
                    {"add": {"index": new, "alias": alias}},
                ]})
            except BaseException:
                try:
                    if blocked:
                        with translated(self.config, f"unblocking writes to {old!r}"):
                            self._set_write_block(old, False)
                finally:
                    with translated(self.config, f"removing the failed build {new!r}"):
                        self.client.indices.delete(index=new, ignore_unavailable=True)
                raise
            meta = {"grouprank": {"embedder": self.config.embedder, "dim": self.dim, "serving_since": _now_ms()}}
            self.client.indices.put_mapping(index=new, body={"_meta": meta})
            self.client.indices.put_index_template(name=alias, body=mappings.template_body(new_config, self.dim))
        self.config = new_config
        self._pipelines.clear()
        self.cleanup()
        return new

    def cleanup(self, grace_s: float | None = None) -> list[str]:
        """Delete versions that stopped serving more than ``grace_s`` (default ``config.grace_s``) ago,
        and builds that never served and are older than that; returns the deleted names."""
        grace_ms = (self.config.grace_s if grace_s is None else grace_s) * 1000
        alias = self.config.alias
        now = _now_ms()
        with translated(self.config, f"cleaning up old versions of {alias!r}"):
            current = _alias_target(self.client, alias)
            info = self.client.indices.get(index=f"{alias}-v*")
            versions = {number: name for name in info if (number := mappings.version_number(alias, name)) is not None}
            since = {n: _meta_of(info[name]).get("serving_since") for n, name in versions.items()}
            current_number = mappings.version_number(alias, current)
            doomed = []
            for number, name in sorted(versions.items()):
                if name == current:
                    continue
                if current_number is not None and number < current_number:
                    # It stopped serving when the next version that served started serving.
                    retired = min((t for n, t in since.items() if n > number and t is not None), default=now)
                else:
                    retired = int(info[name]["settings"]["index"].get("creation_date", now))
                if now - retired >= grace_ms:
                    doomed.append(name)
            for name in doomed:
                self.client.indices.delete(index=name, ignore_unavailable=True)
        return doomed

    def stats(self) -> dict[str, Any]:
        alias = self.config.alias
        with translated(self.config, f"reading the stats of {alias!r}"):
            current = _alias_target(self.client, alias)
            store = self.client.indices.stats(index=current, metric="store")
        return {
            "backend": "opensearch",
            "url": self.config.safe_url,
            "alias": alias,
            "generation": current,
            "versions": sorted(mappings.version_name(alias, n) for n in self._versions()),
            "documents": len(self),
            "embedder": self.config.embedder,
            "dim": self.dim,
            "dense_index": "hnsw (faiss, innerproduct)",
            "hnsw_m": self.config.hnsw_m,
            "hnsw_ef_construction": self.config.hnsw_ef_construction,
            "hnsw_ef_search": self.config.hnsw_ef_search,
            "fusion": self.config.fusion,
            "size_bytes": int(store["_all"]["primaries"]["store"]["size_in_bytes"]),
        }

    # -- internals ---------------------------------------------------------------------------------
    def _versions(self) -> list[int]:
        names = self.client.indices.get(index=f"{self.config.alias}-v*", ignore_unavailable=True, allow_no_indices=True)
        return [n for name in names if (n := mappings.version_number(self.config.alias, name)) is not None]

    def _stored(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """``_source`` (only ``fields``) of the stored documents among ``ids``."""
        if not ids:
            return {}
        with translated(self.config, "reading stored documents"):
            response = self.client.mget(index=self.config.alias, body={"ids": ids}, _source_includes=fields)
        return {d["_id"]: d.get("_source") or {} for d in response["docs"] if d.get("found")}

    def _vectors(self, chunk: Sequence[Document]) -> np.ndarray:
        """Embeddings of ``chunk``: the stored ones where title and text are unchanged, the rest computed."""
        stored = self._stored([d.id for d in chunk], ["title", "text", mappings.VECTOR_FIELD])
        vectors = np.empty((len(chunk), self.dim), dtype=np.float32)
        todo = []
        for n, doc in enumerate(chunk):
            source = stored.get(doc.id)
            if source and (source.get("title"), source.get("text")) == (doc.title, doc.text) \
                    and len(source.get(mappings.VECTOR_FIELD) or ()) == self.dim:
                vectors[n] = source[mappings.VECTOR_FIELD]
            else:
                todo.append(n)
        if todo:
            vectors[todo] = self.embedder.encode([chunk[n].body for n in todo], self.config.batch_size)
        return vectors

    def _copy(self, source: str, target: str, query: dict[str, Any], progress: bool, label: str) -> int:
        """Copy the documents of ``source`` matching ``query`` into ``target`` with their vectors."""
        helpers = opensearchpy().helpers
        total = int(self.client.count(index=source, body={"query": query})["count"])
        fields = [*mappings.SOURCE_FIELDS, mappings.VECTOR_FIELD]
        copied = 0
        page: list[tuple[Document, list[float]]] = []

        def flush() -> None:
            docs = [doc for doc, _ in page]
            vectors = np.array([vector for _, vector in page], dtype=np.float32)
            report = self.write_documents(docs, vectors, progress=False, index=target, refresh=False)
            if not report.ok:
                raise bulk.BulkError(report)
            page.clear()

        with maybe_progress(label, total, progress) as bar:
            for hit in helpers.scan(self.client, index=source, scroll=SCROLL, size=self.config.bulk_docs,
                                    query={"query": query, "_source": {"includes": fields}}):
                page.append((mappings.document_from_hit(hit), hit["_source"][mappings.VECTOR_FIELD]))
                if len(page) >= self.config.bulk_docs:
                    copied += len(page)
                    flush()
                    bar.advance(self.config.bulk_docs)
            if page:
                copied += len(page)
                bar.advance(len(page))
                flush()
        return copied

    def _catch_up(self, old: str, new: str, since_ms: int) -> None:
        """Apply to ``new`` what was written to ``old`` since ``since_ms``: changed documents, and deletions."""
        self.client.indices.refresh(index=old)  # writers that do not refresh: their writes count too
        self._copy(old, new, {"range": {"indexed_at": {"gte": since_ms}}}, False, "catching up")
        self.client.indices.refresh(index=new)
        gone = self._ids(new) - self._ids(old)
        if gone:
            report = bulk.BulkReport()
            actions = [("delete", doc_id, None) for doc_id in sorted(gone)]
            for part in bulk.chunks(actions, self.config.bulk_docs, self.config.bulk_bytes):
                report.add(bulk.write(self.client, self.config, new, part))
            if not report.ok:
                raise bulk.BulkError(report)
        self.client.indices.refresh(index=new)

    def _bulk(self, target: str, actions: Sequence[bulk.Action]) -> bulk.BulkReport:
        """``bulk.write``, sending again (for up to ``BLOCKED_WAIT_S``) the items refused because ``target``
        is write-blocked: a reindex blocks the old version while it moves the alias, and the retry then
        reaches the new one."""
        report = bulk.write(self.client, self.config, target, actions)
        end, delay = time.monotonic() + BLOCKED_WAIT_S, 0.05
        while (refused := {f.id for f in report.failures if _write_blocked(f)}) and time.monotonic() < end:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            report.failures = [f for f in report.failures if f.id not in refused]
            report.add(bulk.write(self.client, self.config, target, [a for a in actions if a[1] in refused]))
        return report

    def _block_writes(self, index: str) -> None:
        """Block writes to ``index``. The add-block API also waits for writes in flight to finish; a server
        without it (an older or a fake one) gets the index setting."""
        try:
            self.client.indices.add_block(index=index, block="write")
        except opensearchpy().TransportError as exc:
            if status_of(exc) not in (400, 404, 405):  # 400/404/405: no such endpoint
                raise
            self._set_write_block(index, True)

    def _set_write_block(self, index: str, on: bool) -> None:
        self.client.indices.put_settings(index=index, body={"index": {"blocks": {"write": on}}})

    def _ids(self, index: str) -> set[str]:
        helpers = opensearchpy().helpers
        query = {"query": {"match_all": {}}, "_source": False}
        return {hit["_id"] for hit in helpers.scan(self.client, index=index, query=query, scroll=SCROLL, size=5000)}


def _checked(docs: Iterable[Document]) -> list[Document]:
    """The embedded index's validation, plus OpenSearch's limit on id length."""
    batch = validate_batch(docs)
    for n, doc in enumerate(batch, start=1):
        if len(doc.id.encode("utf-8")) > MAX_ID_BYTES:
            raise InputError(f"document #{n} (id {doc.id[:40]!r}...): longer than OpenSearch's {MAX_ID_BYTES} bytes",
                             field="id")
    return batch


def _write_blocked(failure: bulk.DocumentFailure) -> bool:
    """Whether OpenSearch refused a document because its index is write-blocked (``index.blocks.write``)."""
    return failure.type == "cluster_block_exception" and "index write" in failure.reason


def _hits(raw: list[dict[str, Any]], mode: str) -> list[Hit]:
    hits = []
    for rank, hit in enumerate(raw, start=1):
        doc = mappings.document_from_hit(hit)
        score = float(hit["_score"])
        if mode == "dense":
            score = bodies.cosine_from_score(score)
        per_retriever = {} if mode == "hybrid" else {mode: score}
        hits.append(Hit(id=doc.id, score=score, text=doc.text, title=doc.title, metadata=doc.metadata,
                        scores=per_retriever, ranks={name: rank for name in per_retriever}))
    return hits


def _alias_target(client: Any, alias: str) -> str:
    """The one index ``alias`` names."""
    targets = list(client.indices.get_alias(name=alias))
    if len(targets) != 1:
        raise GroupRankError(f"the alias {alias!r} names {len(targets)} indexes ({', '.join(sorted(targets))}); "
                             "grouprank expects exactly one")
    return targets[0]


def _meta_of(index_info: dict[str, Any]) -> dict[str, Any]:
    return ((index_info.get("mappings") or {}).get("_meta") or {}).get("grouprank") or {}


def _grouprank_meta(client: Any, alias: str) -> dict[str, Any]:
    name = _alias_target(client, alias)
    mapping = client.indices.get_mapping(index=name)[name]
    meta = _meta_of(mapping)
    if "dim" not in meta or "embedder" not in meta:
        raise InputError(f"the index {name!r} behind {alias!r} was not made by grouprank (no _meta.grouprank in "
                         "its mapping)", field="alias")
    return meta


def _built_with(client: Any, alias: str) -> dict[str, int]:
    """The structure settings of the index behind ``alias``: HNSW parameters, shards and replicas."""
    name = _alias_target(client, alias)
    info = client.indices.get(index=name)[name]
    method = info["mappings"]["properties"][mappings.VECTOR_FIELD].get("method") or {}
    params = method.get("parameters") or {}
    settings = info["settings"]["index"]
    built = {"hnsw_m": params.get("m"), "hnsw_ef_construction": params.get("ef_construction"),
             "hnsw_ef_search": params.get("ef_search", settings.get("knn.algo_param.ef_search")),
             "shards": settings.get("number_of_shards"), "replicas": settings.get("number_of_replicas")}
    return {key: int(value) for key, value in built.items() if value is not None}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass


def maybe_progress(description: str, total: int, progress: bool) -> Any:
    """A ``progress_bar`` if ``progress``, else a context whose ``advance`` does nothing."""
    return progress_bar(description, total) if progress else contextlib.nullcontext(_NoBar())

