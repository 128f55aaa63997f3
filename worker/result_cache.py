"""Rerank results cached in front of the rerank stage: in Redis when the API has a broker (shared by every
API process), in process when embedded.

A key hashes everything an answer depends on: the serving model and its registry version (a promotion
changes the version, so older entries are never read again and expire), the reranker settings (method,
backend, options such as the group size, decoding or fusion weight), the query, ``top_k`` and every
candidate's id, text, title and retriever score. Only complete answers of the version the key names are
stored: not a ranking with fallback documents (a missed deadline, an unparsable group), so a later request
gets another try, nor one the previous model gave while a promoted one was loading.
A cache that fails (Redis down) is a miss, never an error. ``Settings.rerank_cache_ttl_s`` 0 turns it off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from worker.payloads import RerankJob, ServedRanking

log = logging.getLogger(__name__)

KEY_SPACE = "grouprank:rerank-cache:"


def cache_key(model: str, version: str | None, reranker: dict[str, Any], job: RerankJob) -> str:
    """The SHA-256 of the canonical JSON of what the answer to ``job`` depends on."""
    candidates = [[c.id, c.text, c.title, c.score] for c in job.candidates]
    payload = {"model": model, "version": version, "reranker": reranker, "query": job.query,
               "top_k": job.top_k, "candidates": candidates}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Store(Protocol):
    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]: ...

    async def set_many(self, items: dict[str, dict[str, Any]]) -> None: ...


class MemoryStore:
    """An in-process LRU of at most ``entries`` answers, each kept ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, entries: int) -> None:
        self.ttl_s, self.entries = ttl_s, entries
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        now, out = time.monotonic(), []
        with self._lock:
            for key in keys:
                item = self._items.get(key)
                if item is None or item[0] < now:
                    self._items.pop(key, None)
                    out.append(None)
                    continue
                self._items.move_to_end(key)
                out.append(json.loads(item[1]))  # a copy: callers may change what they get
        return out

    async def set_many(self, items: dict[str, dict[str, Any]]) -> None:
        expires = time.monotonic() + self.ttl_s
        with self._lock:
            for key, value in items.items():
                self._items[key] = (expires, json.dumps(value))
                self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)


class RedisStore:
    """Answers in Redis under ``prefix + KEY_SPACE``, each with a TTL of ``ttl_s``."""

    def __init__(self, client: Any, ttl_s: float, prefix: str = "") -> None:
        self.client, self.ttl_ms, self.prefix = client, max(1, int(ttl_s * 1000)), prefix + KEY_SPACE

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        raw = await self.client.mget([self.prefix + k for k in keys])
        return [json.loads(r) if r is not None else None for r in raw]

    async def set_many(self, items: dict[str, dict[str, Any]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.prefix + key, json.dumps(value), px=self.ttl_ms)
            await pipe.execute()


class CachedRerankStage:
    """``rerank(requests, deadline)`` like the rerank stage it wraps, answering what it can from ``store``.

    ``serving`` returns ``(model, version)`` of the model answering now; ``count(result, n)`` records
    ``n`` hits or misses (``result`` "hit" or "miss")."""

    def __init__(self, stage: Any, store: Store, serving: Callable[[], tuple[str, str | None]],
                 reranker: dict[str, Any], count: Callable[[str, int], None]) -> None:
        self.stage, self.store, self.serving, self.reranker, self.count = stage, store, serving, reranker, count

    async def rerank(self, requests: list[RerankJob], deadline: float) -> list[ServedRanking]:
        model, version = await asyncio.to_thread(self.serving)
        keys = [cache_key(model, version, self.reranker, r) for r in requests]
        try:
            stored = await self.store.get_many(keys)
        except Exception as exc:  # a cache that is down is a miss
            log.warning("rerank cache unavailable: %s", exc)
            stored = [None] * len(keys)
        found = [None if hit is None else hit.model_copy(update={"cached": True})
                 for hit in (_valid(item) for item in stored)]
        missing = [i for i, hit in enumerate(found) if hit is None]
        self.count("hit", len(keys) - len(missing))
        self.count("miss", len(missing))
        if missing:
            answers = await self.stage.rerank([requests[i] for i in missing], deadline)
            fresh = {}
            for i, answer in zip(missing, answers, strict=True):
                found[i] = answer
                # While a promoted model loads, the previous one still answers: such an answer must not
                # be stored under the new version's key.
                if answer.complete and answer.model_version == version:
                    fresh[keys[i]] = answer.model_dump(mode="json")
            if fresh:
                try:
                    await self.store.set_many(fresh)
                except Exception as exc:
                    log.warning("rerank cache unavailable: %s", exc)
        return found  # type: ignore[return-value]


def _valid(item: dict[str, Any] | None) -> ServedRanking | None:
    """A stored answer, or None (a miss) when there is none or it no longer validates."""
    if item is None:
        return None
    try:
        return ServedRanking.model_validate(item)
    except ValidationError:  # written by another version of grouprank
        return None
