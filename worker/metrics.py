"""Prometheus metrics of the API: requests and latency per endpoint, time per stage, rerank fallbacks,
and the depth of each Celery queue (Redis LLEN at scrape time).

With several uvicorn worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (``grouprank serve`` does) and
``/metrics`` aggregates all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.settings import QUEUES, Settings

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The API's metrics, in a registry of their own (one per app, so tests can build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("grouprank_http_requests", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("grouprank_http_request_seconds", "HTTP request latency by endpoint.",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("grouprank_stage_seconds", "Time spent per stage of a search or rerank.",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.fallbacks = Counter("grouprank_rerank_fallbacks",
                                 "Requests answered without reranking, by reason.", ["reason"],
                                 registry=self.registry)
        self.cache = Counter("grouprank_rerank_cache", "Rerank requests answered from the result cache (hit) "
                             "or by the reranker (miss).", ["result"], registry=self.registry)
        self.fallback_documents = Counter("grouprank_rerank_fallback_documents",
                                          "Documents the reranker did not score (they kept retriever order).",
                                          registry=self.registry)

    def exposition(self, extra: Collector | None = None) -> bytes:
        """The text format for ``/metrics``."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        text = generate_latest(registry)
        if extra is not None:
            one_off = CollectorRegistry()
            one_off.register(extra)
            text += generate_latest(one_off)
        return text


class QueueDepthCollector(Collector):
    """``grouprank_queue_depth{queue}`` from Redis LLEN, and ``grouprank_broker_up``."""

    def __init__(self, settings: Settings, client_factory: Callable[[], Any]) -> None:
        self.settings = settings
        self.client_factory = client_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("grouprank_broker_up", "1 if the broker answered the last scrape.")
        depth = GaugeMetricFamily("grouprank_queue_depth", "Messages waiting in each queue.", labels=["queue"])
        try:
            client = self.client_factory()
            pipe = client.pipeline()
            for queue in QUEUES:
                pipe.llen(self.settings.key_prefix + queue)
            lengths = pipe.execute()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for queue, length in zip(QUEUES, lengths, strict=True):
            depth.add_metric([queue], length)
        yield up
        yield depth


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (e.g. ``/documents/{doc_id}``)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - start)
