"""Operations routes: liveness, readiness and Prometheus metrics. Built by ``operations_router``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from worker.metrics import Metrics, QueueDepthCollector
from worker.responses import AsciiJSONResponse
from worker.schemas import Health, Readiness
from worker.services import Services, readiness
from worker.settings import Settings


def operations_router(settings: Settings, services: Services, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Readiness, tags=["operations"],
             responses={503: {"model": Readiness, "description": "Not ready; `failing` names the checks."}})
    async def readyz() -> AsciiJSONResponse:
        """Ready to serve: the index is open and answers (either backend), and the broker and a worker
        answer (distributed mode) or the reranker is loaded (embedded mode)."""
        checks = await asyncio.to_thread(readiness, settings, services)
        failing = [name for name, value in checks.items() if value != "ok"]
        body = Readiness(ready=not failing, checks=checks, failing=failing)
        return AsciiJSONResponse(body.model_dump(), status_code=503 if failing else 200)

    queue_depth = None if settings.embedded else QueueDepthCollector(settings, lambda: services.redis)

    @router.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus text format."""
        text = await asyncio.to_thread(metrics.exposition, queue_depth)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return router
