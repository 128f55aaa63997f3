"""Removing a test's OpenSearch index from the server (used by the OpenSearch test modules)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def drop(index: Any, pipelines: Iterable[str] = ()) -> None:
    """Delete every version of ``index``'s alias, its index template, and the search pipelines it made
    (plus ``pipelines``: those another client made for the same alias)."""
    client, alias = index.client, index.config.alias
    for name in client.indices.get(index=f"{alias}-v*", ignore_unavailable=True, allow_no_indices=True):
        client.indices.delete(index=name)
    client.indices.delete_index_template(name=alias, ignore=404)
    for name in set(index._pipelines) | set(pipelines):
        client.transport.perform_request("DELETE", f"/_search/pipeline/{name}")
