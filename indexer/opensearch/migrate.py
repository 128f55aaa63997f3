"""Copy an embedded index into OpenSearch, re-using the vectors it stored."""

from __future__ import annotations

from typing import Any

from grouprank.errors import InputError, NotFoundError
from indexer.index import Index
from indexer.opensearch.bulk import BulkReport
from indexer.opensearch.index import OpenSearchIndex, maybe_progress
from indexer.opensearch.settings import OpenSearchConfig


def migrate(source: Index, config: OpenSearchConfig, *, progress: bool = True, client: Any | None = None,
            ) -> tuple[OpenSearchIndex, BulkReport]:
    """Upsert every document of ``source`` into the OpenSearch index ``config.alias`` (created if needed).

    The embedder must be the source's, so its stored vectors can be sent as they are; documents whose
    vector is missing are embedded. Returns the open OpenSearchIndex and the report of what was stored
    and of each document OpenSearch refused (the rest are stored).
    """
    if config.embedder != source.store.embedder:
        raise InputError(f"the embedded index was embedded with {source.store.embedder!r} but the OpenSearch "
                         f"settings name {config.embedder!r}; migrate with the same embedder", field="embedder")
    target = OpenSearchIndex.open_or_create(config, client, dim=source.store.dim)
    report = BulkReport()
    total = len(source)
    step = config.bulk_docs
    page = []
    try:
        with maybe_progress(f"migrating to {config.alias}", total, progress) as bar:
            for doc in source.iter_documents():
                page.append(doc)
                if len(page) >= step:
                    report.add(_send(source, target, page))
                    bar.advance(len(page))
                    page = []
            if page:
                report.add(_send(source, target, page))
                bar.advance(len(page))
        target.client.indices.refresh(index=config.alias)
    except BaseException:
        target.close()
        raise
    return target, report


def _send(source: Index, target: OpenSearchIndex, page: list) -> BulkReport:
    try:
        vectors = source.embeddings([doc.id for doc in page])
    except NotFoundError:  # some lack a stored vector: let the target embed (or re-use) them
        vectors = None
    return target.write_documents(page, vectors, progress=False, refresh=False)

