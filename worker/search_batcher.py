"""Retrieval for the API on one thread, batching the queries that arrive while a batch runs.

Embedding a query costs nearly as much as embedding sixteen, so under load every ``search_batch`` call
takes all the waiting queries with the same ``(k, mode)``. Nothing waits for a batch to fill: an idle
server answers a lone query at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import defaultdict
from typing import Any

from grouprank.errors import GroupRankError
from indexer.protocol import SearchIndex

MAX_BATCH = 64


class BatcherClosed(GroupRankError):
    """The batcher's thread is gone: a search put on its queue would never be answered."""


class SearchBatcher:
    def __init__(self, index: SearchIndex, max_batch: int = MAX_BATCH) -> None:
        self.index = index
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="grouprank-search", daemon=True)
        self._thread.start()

    async def search(self, query: str, k: int, mode: str) -> list:
        """The index's hits for one query (exceptions of the search propagate). A closed batcher
        raises ``BatcherClosed`` at once: nobody would ever answer the request."""
        if not self._thread.is_alive():
            raise BatcherClosed("the search thread has stopped (the API is shutting down)")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((query, k, mode, loop, future))
        return await future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            groups: dict[tuple[int, str], list] = defaultdict(list)
            for item in batch:
                groups[(item[1], item[2])].append(item)
            for (k, mode), items in groups.items():
                try:
                    self._answer(items, k, mode)
                except BaseException as exc:  # the thread must outlive any one batch, or requests hang
                    for *_, loop, future in items:
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(_settle, future, exc)

    def _answer(self, items: list, k: int, mode: str) -> None:
        try:
            results = self.index.search_batch([item[0] for item in items], k=k, mode=mode)
        except Exception as exc:
            if len(items) > 1:  # one bad query must not fail the others: retry them one by one
                for item in items:
                    self._answer([item], k, mode)
                return
            results = [exc]
        for (_, _, _, loop, future), result in zip(items, results, strict=True):
            with contextlib.suppress(RuntimeError):  # RuntimeError: that event loop has closed
                loop.call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
