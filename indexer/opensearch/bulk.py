"""Bulk writes: batching, retries of what OpenSearch refused for load (429/5xx), per-document failures.

A bulk response says per item whether it was stored; an item refused for load is sent again after a
backoff, an item refused for its content (a mapping conflict, a malformed value) is reported and the
rest of the batch is stored regardless.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from grouprank.errors import GroupRankError
from indexer.opensearch.client import RETRY_STATUSES, backoff, with_retries
from indexer.opensearch.settings import OpenSearchConfig

# One write: ("index", id, source) or ("delete", id, None).
Action = tuple[str, str, dict[str, Any] | None]


@dataclass(frozen=True)
class DocumentFailure:
    """A document OpenSearch did not store, and why."""

    id: str
    status: int
    type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id!r}: {self.type} ({self.status}): {self.reason}"


@dataclass
class BulkReport:
    """The outcome of a batch of writes: what was stored or deleted, and each document that failed."""

    written: int = 0
    deleted: int = 0
    not_found: int = 0
    retried: int = 0  # items sent again after a 429/5xx
    failures: list[DocumentFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def add(self, other: BulkReport) -> None:
        self.written += other.written
        self.deleted += other.deleted
        self.not_found += other.not_found
        self.retried += other.retried
        self.failures.extend(other.failures)

    def summary(self, limit: int = 5) -> str:
        shown = "; ".join(str(f) for f in self.failures[:limit])
        more = f"; and {len(self.failures) - limit} more" if len(self.failures) > limit else ""
        return f"{len(self.failures)} document(s) failed (the others were stored): {shown}{more}"


class BulkError(GroupRankError):
    """Some documents of a write were not stored; ``report`` names each, and the rest were stored."""

    def __init__(self, report: BulkReport) -> None:
        self.report = report
        super().__init__(report.summary())


@dataclass(frozen=True)
class ItemResult:
    op: str
    id: str
    status: int
    result: str | None  # "created", "updated", "deleted", "not_found" on success
    error: dict[str, Any] | None

    @property
    def retry(self) -> bool:
        return self.error is not None and self.status in RETRY_STATUSES

    def failure(self) -> DocumentFailure:
        error = self.error or {}
        reason = str(error.get("reason", ""))
        cause = error.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            reason += f" (caused by {cause.get('type', 'error')}: {cause['reason']})"
        return DocumentFailure(self.id, self.status, str(error.get("type", "error")), reason)


def parse_response(response: dict[str, Any], actions: Sequence[Action]) -> list[ItemResult]:
    """One ItemResult per action, in order, from a ``_bulk`` response."""
    items = response.get("items")
    if not isinstance(items, list) or len(items) != len(actions):
        raise GroupRankError(f"malformed bulk response: {len(actions)} actions sent, "
                             f"{len(items) if isinstance(items, list) else 'no'} items returned")
    out = []
    for (op, doc_id, _), item in zip(actions, items, strict=True):
        body = item.get(op) or next(iter(item.values()))
        error = body.get("error")
        if error is not None and not isinstance(error, dict):
            error = {"type": "error", "reason": str(error)}
        out.append(ItemResult(op, str(body.get("_id", doc_id)), int(body.get("status", 0)), body.get("result"),
                              error))
    return out


def request_lines(index: str, actions: Sequence[Action]) -> list[dict[str, Any]]:
    """The NDJSON lines of a ``_bulk`` request body."""
    lines: list[dict[str, Any]] = []
    for op, doc_id, source in actions:
        lines.append({op: {"_index": index, "_id": doc_id}})
        if op != "delete":
            lines.append(source or {})
    return lines


def chunks(actions: Sequence[Action], max_docs: int, max_bytes: int) -> Iterator[list[Action]]:
    """Consecutive runs of ``actions`` of at most ``max_docs`` actions and about ``max_bytes`` of JSON
    (a single larger document goes alone)."""
    chunk: list[Action] = []
    size = 0
    for action in actions:
        length = len(json.dumps(action[2], ensure_ascii=False)) + len(action[1]) + 64 if action[2] else 64
        if chunk and (len(chunk) >= max_docs or size + length > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(action)
        size += length
    if chunk:
        yield chunk


def write(client: Any, config: OpenSearchConfig, index: str, actions: Sequence[Action],
          sleep: Callable[[float], None] = time.sleep) -> BulkReport:
    """Send ``actions`` to ``index`` in one ``_bulk`` request; items refused for load are retried.

    The whole request is retried on 429/5xx or a lost connection (writes by id are idempotent); after
    ``config.retries`` retries an item still refused is reported as failed.
    """
    report = BulkReport()
    pending = list(actions)
    attempt = 0
    while pending:
        response = with_retries(config, lambda p=pending: client.bulk(body=request_lines(index, p)), sleep)
        retry: list[Action] = []
        for action, item in zip(pending, parse_response(response, pending), strict=True):
            if item.error is None:
                if item.op == "delete":
                    report.deleted += item.result == "deleted"
                    report.not_found += item.result == "not_found"
                else:
                    report.written += 1
            elif item.op == "delete" and item.status == 404:
                report.not_found += 1
            elif item.retry and attempt < config.retries:
                retry.append(action)
            else:
                report.failures.append(item.failure())
        attempt += 1
        if retry:
            report.retried += len(retry)
            sleep(backoff(config, attempt))
        pending = retry
    return report
