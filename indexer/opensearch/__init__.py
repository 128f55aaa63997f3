"""The retrieval tier on OpenSearch (opensearch-py, the ``opensearch`` extra): ``OpenSearchIndex``.

Modules: ``settings`` (OpenSearchConfig), ``client`` (connection, retries, errors), ``mappings``
(index template and mapping bodies), ``queries`` (search bodies), ``pipelines`` (search pipeline
bodies), ``bulk`` (batched writes and per-document failures), ``index`` (OpenSearchIndex) and
``migrate`` (copy an embedded index over, re-using its stored vectors).
"""

from indexer.opensearch.bulk import BulkError, BulkReport, DocumentFailure
from indexer.opensearch.index import OpenSearchIndex
from indexer.opensearch.settings import OpenSearchConfig

__all__ = ["BulkError", "BulkReport", "DocumentFailure", "OpenSearchConfig", "OpenSearchIndex"]
