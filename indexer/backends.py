"""``open_index``: the embedded index or an OpenSearch one, chosen by settings.

    open_index("my-index")                                    # embedded, a directory
    open_index(backend="opensearch", url="http://localhost:9200", alias="docs")
    open_index({"backend": "opensearch", "url": "...", "hnsw_m": 16}, create=True)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from indexer.config import IndexConfig
from indexer.protocol import SearchIndex

BACKENDS = ("embedded", "opensearch")


def open_index(target: str | Path | Mapping[str, Any] | Any | None = None, *, backend: str | None = None,
               create: bool = False, **settings: Any) -> SearchIndex:
    """Open (``create=True``: open or create) an index.

    ``target`` is an index directory (embedded), an ``OpenSearchConfig``, or a mapping of settings with
    a ``backend`` key ("embedded" with ``path``, or "opensearch" with ``OpenSearchConfig`` fields such
    as ``url`` and ``alias``). Keyword ``settings`` add to (or replace) the mapping's. For a new
    embedded index, settings other than ``path`` are ``IndexConfig`` fields.
    """
    from indexer.opensearch.settings import OpenSearchConfig

    if isinstance(target, OpenSearchConfig):
        config = target.with_(**settings) if settings else target
        return _opensearch(config, create)
    values: dict[str, Any] = {}
    if isinstance(target, Mapping):
        values.update(target)
    elif isinstance(target, str | Path):
        values["path"] = target
    elif target is not None:
        raise InputError(f"expected an index directory, an OpenSearchConfig or a mapping of settings, got "
                         f"{type(target).__name__}", field="target")
    values.update(settings)
    if backend is not None:
        values["backend"] = backend
    kind = values.pop("backend", "embedded")
    if kind not in BACKENDS:
        raise InputError(f"unknown backend {kind!r}; expected one of: {', '.join(BACKENDS)}", field="backend")
    if kind == "opensearch":
        if values.get("path") is not None:
            raise InputError("the opensearch backend takes a url and an alias, not a directory", field="path")
        values.pop("path", None)
        return _opensearch(OpenSearchConfig.from_dict(values), create)
    if "path" not in values or values["path"] is None:
        raise InputError("the embedded backend needs the index directory (path)", field="path")
    path = Path(values.pop("path"))
    from indexer.index import Index

    if create:
        return Index.open_or_create(path, IndexConfig.from_dict(values) if values else None)
    if values:
        raise InputError(f"settings {', '.join(sorted(values))} only apply when creating an embedded index "
                         "(create=True)", field=sorted(values)[0])
    return Index.open(path)


def _opensearch(config: Any, create: bool) -> SearchIndex:
    from indexer.opensearch.index import OpenSearchIndex

    return OpenSearchIndex.open_or_create(config) if create else OpenSearchIndex.open(config)
