"""Settings of an OpenSearch-backed index: where the cluster is, and how to map, search and write."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from grouprank.errors import InputError
from indexer.config import ENCODERS, FUSIONS, IndexConfig, check_choice, check_int, check_weight
from indexer.embedder import DEFAULT_EMBEDDER

# Index names: lowercase, no spaces or the characters OpenSearch forbids; we add "-v000001" etc.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,200}$")
# Settings an embedded index's IndexConfig carries over to OpenSearch on migration.
SHARED = ("embedder", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "fusion", "rrf_k", "dense_weight",
          "depth", "batch_size", "encoder")


@dataclass(frozen=True)
class OpenSearchConfig:
    """How grouprank uses one OpenSearch cluster. Invalid values raise ``InputError`` at construction.

    ``alias`` is what readers and writers address; the documents live in versioned indexes
    ``<alias>-v000001``, ``<alias>-v000002``, ... of which the alias names one (see ``reindex``).
    ``url`` may carry credentials (``https://user:password@host:9200``).
    """

    url: str = "http://localhost:9200"
    alias: str = "grouprank"
    embedder: str = DEFAULT_EMBEDDER
    # k-NN field: faiss HNSW over inner product (our embeddings are unit vectors, so this is cosine).
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    shards: int = 1
    replicas: int = 1
    # Hybrid search: "rrf" (score-ranker-processor) or "weighted" (normalization-processor, min_max
    # then arithmetic_mean with weights [1 - dense_weight, dense_weight] for [bm25, dense]).
    fusion: str = "rrf"
    rrf_k: int = 60
    dense_weight: float = 0.5
    depth: int = 100  # candidates per retriever: the k of the k-NN query, the size of a hybrid query
    batch_size: int = 64  # embedding batch size
    # How queries (and documents written through grouprank) are encoded. Not "auto": every process that
    # talks to the cluster must encode alike, whatever its CPU; a migration carries the embedded index's.
    encoder: str = "torch"
    # Bulk writes: documents and bytes per request; a request or document refused with 429 or 5xx is
    # retried up to ``retries`` times, waiting backoff_s, 2 * backoff_s, ... in between.
    bulk_docs: int = 500
    bulk_bytes: int = 10 * 1024 * 1024
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    verify_certs: bool = True
    grace_s: float = 3600.0  # how long a replaced index version is kept after a reindex

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or urlsplit(self.url).scheme not in ("http", "https") \
                or not urlsplit(self.url).hostname:
            raise InputError(f"must be an http(s) URL such as http://localhost:9200, got {self.url!r}", field="url")
        if not isinstance(self.alias, str) or not _NAME.match(self.alias) or self.alias in (".", ".."):
            raise InputError(f"must be a lowercase OpenSearch index name (letters, digits, _ . + -), got "
                             f"{self.alias!r}", field="alias")
        if not isinstance(self.embedder, str) or not self.embedder.strip():
            raise InputError(f"must be a non-empty string, got {self.embedder!r}", field="embedder")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "shards", "depth", "batch_size",
                     "bulk_docs", "bulk_bytes", "rrf_k"):
            check_int(getattr(self, name), name)
        check_int(self.replicas, "replicas", minimum=0)
        check_int(self.retries, "retries", minimum=0)
        if not 2 <= self.hnsw_m <= 100:
            raise InputError(f"OpenSearch accepts an HNSW m between 2 and 100, got {self.hnsw_m}", field="hnsw_m")
        if self.rrf_k > 10_000:
            raise InputError(f"the score-ranker-processor accepts a rank constant up to 10000, got {self.rrf_k}",
                             field="rrf_k")
        check_choice(self.fusion, FUSIONS, "fusion")
        check_choice(self.encoder, tuple(e for e in ENCODERS if e != "auto"), "encoder")
        object.__setattr__(self, "dense_weight", check_weight(self.dense_weight))
        for name in ("backoff_s", "timeout_s", "grace_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise InputError(f"must be a number >= 0, got {value!r}", field=name)
        if not isinstance(self.verify_certs, bool):
            raise InputError(f"must be true or false, got {self.verify_certs!r}", field="verify_certs")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> OpenSearchConfig:
        if not isinstance(data, dict):
            raise InputError(f"expected an object of settings, got {type(data).__name__}", source=source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown OpenSearch setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                             source=source, field=unknown[0])
        return cls(**data)

    @classmethod
    def from_index_config(cls, config: IndexConfig, **overrides: Any) -> OpenSearchConfig:
        """The OpenSearch settings that match an embedded index's (embedder, HNSW, fusion, depth, encoder;
        an unresolved "auto" encoder leaves OpenSearch's default)."""
        shared = {name: getattr(config, name) for name in SHARED}
        if shared["encoder"] == "auto":
            del shared["encoder"]
        return cls(**{**shared, **overrides})

    def with_(self, **changes: Any) -> OpenSearchConfig:
        return replace(self, **changes)

    @property
    def safe_url(self) -> str:
        """``url`` without credentials, for messages and stats."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
