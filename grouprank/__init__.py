"""grouprank: hybrid retrieval with a GroupRank (groupwise LLM) reranking stage.

Packages: ``indexer`` (retrieval tier), ``reranker`` (GroupRank and baselines), ``worker``
(Celery + API), ``trainer`` (SFT/GRPO). This package holds what they share: errors, file
formats, metrics and the command line.
"""

__version__ = "0.1.0"
