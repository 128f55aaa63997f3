"""Routes that change or inspect what is served: documents (upsert, delete), admin jobs (reindex, retrain),
the serving model and background tasks. Built by ``admin_router`` for ``worker.api.create_app``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from grouprank.errors import InputError
from indexer.protocol import SearchIndex
from worker.guards import key_guard, limit_error
from worker.jobs import QueuedJobs
from worker.schemas import DeleteResponse, DocumentsBody, RetrainBody, ServingModel, TaskResponse, UpsertResponse
from worker.services import Services, index_errors, submit
from worker.settings import Settings
from worker.tasks import last_adaptation, serving_model


async def serving_model_info(settings: Settings) -> ServingModel:
    """The rerank model being served: the trainer's last promoted version, or the configured model."""
    name, version = await asyncio.to_thread(serving_model, settings)
    history: list[dict[str, Any]] = []
    if settings.registry_dir is not None:
        from trainer.registry import Registry

        history = (await asyncio.to_thread(Registry(settings.registry_dir).history))[-20:]
    adaptation = await asyncio.to_thread(last_adaptation, settings)
    return ServingModel(model=name, version=version, history=history, adaptation=adaptation,
                        registry_dir=None if settings.registry_dir is None else str(settings.registry_dir))


def admin_router(settings: Settings, services: Services, need_index: Callable[[], Awaitable[SearchIndex]],
                 check_text: Callable[[str, list[Any], str], None]) -> APIRouter:
    router = APIRouter()
    writer = [Depends(key_guard(settings, required=True))]
    reader = [Depends(key_guard(settings, required=settings.protect_reads))]

    @router.post("/documents", response_model=UpsertResponse, response_model_exclude_none=True,
              dependencies=writer, tags=["documents"],
              responses={202: {"model": UpsertResponse, "description": "Queued (background=true)."}})
    async def upsert(body: DocumentsBody, response: Response,
                     background: bool = Query(False, description="Queue the upsert on the index queue "
                                              "and return a task id (needs a broker).")) -> UpsertResponse:
        """Add or replace documents. Every document is validated first: one bad document gives a 422
        naming its position and field, and nothing is stored. Documents the OpenSearch backend refuses
        give a 502 naming them (the others were stored); an unreachable index gives a 503."""
        from indexer.documents import Document

        docs = []
        for n, record in enumerate(body.documents):
            try:
                docs.append(Document.from_record(record))
            except InputError as exc:
                raise limit_error(["body", "documents", n, exc.field or ""],
                                  f"documents[{n}]: {exc.message}") from None
            for name in ("id", "title", "text"):
                check_text(getattr(docs[-1], name), ["body", "documents", n, name], f"documents[{n}].{name}")
            if len(docs[-1].text) > settings.max_document_chars:
                raise limit_error(["body", "documents", n, "text"], f"documents[{n}]: text is "
                                  f"{len(docs[-1].text)} characters long; the limit is "
                                  f"{settings.max_document_chars} (max_document_chars)")
        index = await need_index()
        if background and isinstance(services.jobs, QueuedJobs):
            task_id = await submit(services, "grouprank.index.upsert", [d.to_record() for d in docs])
            response.status_code = 202
            return UpsertResponse(task_id=task_id, state="PENDING")
        try:
            with index_errors():
                written = await asyncio.to_thread(index.upsert, docs, False)
        except InputError as exc:
            raise limit_error(["body", "documents"], str(exc)) from None
        return UpsertResponse(upserted=written)

    @router.delete("/documents/{doc_id}", response_model=DeleteResponse, dependencies=writer, tags=["documents"])
    async def delete(doc_id: str) -> DeleteResponse:
        """Delete one document; 404 if there is none with this id, 503 if the index is unreachable."""
        index = await need_index()
        try:
            with index_errors():
                deleted = await asyncio.to_thread(index.delete, [doc_id])
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        if not deleted:
            raise HTTPException(404, f"no document with id {doc_id!r}")
        return DeleteResponse(deleted=doc_id)

    @router.post("/admin/reindex", response_model=TaskResponse, status_code=202, dependencies=writer,
              tags=["admin"])
    async def reindex() -> TaskResponse:
        """Queue a rebuild of the index's search structures (on the index queue); returns its task id."""
        await need_index()
        task_id = await submit(services, "grouprank.index.reindex")
        return TaskResponse(task_id=task_id, state="PENDING")

    @router.post("/admin/retrain", response_model=TaskResponse, status_code=202, dependencies=writer,
              tags=["admin"])
    async def retrain(body: RetrainBody | None = None) -> TaskResponse:
        """Queue a retraining run (mine -> synth -> SFT -> GRPO -> evaluate -> promote) on the train queue,
        with the service's pipeline config; a better model is promoted and served without a restart.
        With ``{"adapt": true}``: an adaptation to the index's own documents (``grouprank train adapt``,
        no labels); its report shows in ``/admin/model``."""
        if body is not None and body.adapt:
            if settings.index_dir is None or settings.opensearch_url:
                raise HTTPException(409, "adaptation needs the embedded index (GROUPRANK_INDEX_DIR)")
            options = body.model_dump(exclude={"adapt"}, exclude_none=True)
            return TaskResponse(task_id=await submit(services, "grouprank.train.adapt", options), state="PENDING")
        if settings.train_config is None:
            raise HTTPException(409, "no training config: set GROUPRANK_TRAIN_CONFIG to a pipeline config file")
        task_id = await submit(services, "grouprank.train.pipeline")
        return TaskResponse(task_id=task_id, state="PENDING")

    @router.get("/admin/model", response_model=ServingModel, dependencies=reader, tags=["admin"])
    async def model() -> ServingModel:
        """The rerank model being served: the trainer's last promoted version, or the configured model."""
        return await serving_model_info(settings)

    @router.get("/tasks/{task_id}", response_model=TaskResponse, dependencies=reader, tags=["admin"])
    async def task(task_id: str) -> TaskResponse:
        """State and result of a background task."""
        try:
            status = await asyncio.to_thread(services.jobs.status, task_id)
        except Exception as exc:
            raise HTTPException(503, f"the result backend is unavailable: {exc}") from None
        if status is None:
            raise HTTPException(404, f"no task with id {task_id!r}")
        return TaskResponse(**status)

    return router
