"""Workbench routes for query sets and experiments (``worker.experiments``): the JSON API
(``/query-sets``, ``/experiments``) and the pages (``/ui/experiments``, ``/ui/experiments/{id}`` with its PNG).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from grouprank.errors import InputError
from worker.experiments import (
    Experiment,
    ExperimentStore,
    QueryResult,
    parse_queries,
    plot_png,
    ranking_metrics,
    side_by_side,
)
from worker.guards import key_guard, limit_error
from worker.judgments import JudgmentStore
from worker.schemas import Mode, SearchRequest, SearchResponse, ServingModel
from worker.settings import Settings

HERE = Path(__file__).resolve().parent
MAX_COMPARED = 6
"""Runs one comparison shows side by side."""
Ids = Annotated[list[int], Query(description="the experiments to compare, e.g. ?ids=3&ids=5")]


class QuerySetBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    queries: list[str] | str  # a list, or the text of a file (one query per line)


class ExperimentBody(BaseModel):
    name: str = Field("", max_length=200)
    query_set: str | None = None
    queries: list[str] | str | None = None
    mode: Mode = "hybrid"
    k: int = Field(10, ge=1)
    deadline_ms: float | None = Field(None, gt=0, description="Time budget per query; default: the server's "
                                      "max_deadline_ms (an experiment waits for the reranker).")


def _input_error(exc: InputError) -> HTTPException:
    return limit_error(["body", exc.field or "queries"], exc.message)


def experiments_router(settings: Settings, folder: Path, search: Callable[[SearchRequest], Awaitable[SearchResponse]],
                       model: Callable[[], Awaitable[ServingModel]]) -> APIRouter:
    router = APIRouter()
    templates = Jinja2Templates(directory=HERE / "templates")
    store, judgments = ExperimentStore.beside(folder), JudgmentStore.beside(folder)
    writer = [Depends(key_guard(settings, required=True))]
    reader = [Depends(key_guard(settings, required=settings.protect_reads))]

    @router.post("/query-sets", dependencies=writer, tags=["workbench"])
    async def save_set(body: QuerySetBody) -> dict[str, Any]:
        """Save (or replace) a named set of queries: a list, or a file's text with one query per line."""
        try:
            queries = parse_queries(body.queries, settings.max_query_chars, settings.max_experiment_queries)
            return await asyncio.to_thread(store.save_set, body.name, queries)
        except InputError as exc:
            raise _input_error(exc) from None
        except (OSError, sqlite3.Error) as exc:
            raise HTTPException(503, f"cannot store the query set: {exc}") from None

    @router.get("/query-sets", dependencies=reader, tags=["workbench"])
    async def list_sets() -> list[dict[str, Any]]:
        return await asyncio.to_thread(store.sets)

    async def run(body: ExperimentBody) -> Experiment:
        if (body.query_set is None) == (body.queries is None):
            raise limit_error(["body", "queries"], "give either query_set (a saved set's name) or queries")
        try:
            if body.query_set is not None:
                saved = await asyncio.to_thread(store.get_set, body.query_set)
                if saved is None:
                    raise HTTPException(404, f"no query set named {body.query_set!r}")
                if len(saved) > settings.max_experiment_queries:
                    raise InputError(f"query set {body.query_set!r} has {len(saved)} queries; the limit is "
                                     f"{settings.max_experiment_queries} (max_experiment_queries)", field="query_set")
                queries = saved
            else:
                queries = parse_queries(body.queries or [], settings.max_query_chars,
                                        settings.max_experiment_queries)
        except InputError as exc:
            raise _input_error(exc) from None
        k = min(body.k, settings.max_k)
        depth = min(max(k, settings.rerank_depth), settings.max_k)
        if body.deadline_ms is not None and body.deadline_ms > settings.max_deadline_ms:
            raise limit_error(["body", "deadline_ms"], f"{body.deadline_ms:g} ms is over the limit of "
                              f"{settings.max_deadline_ms:g} (max_deadline_ms)")
        deadline = body.deadline_ms or settings.max_deadline_ms
        served = await model()
        experiment = Experiment(name=body.name or body.query_set or f"{len(queries)} queries", model=served.model,
                                version=served.version, settings={"mode": body.mode, "k": k, "rerank_depth": depth,
                                                                  "deadline_ms": deadline,
                                                                  "reranker": settings.reranker_kwargs()})
        for query in queries:
            result = await search(SearchRequest(query=query, k=depth, mode=body.mode, rerank=True,
                                                deadline_ms=deadline))
            cached = bool((result.rerank_trace or {}).get("cached"))  # its rerank_ms is the cache's
            grades = await asyncio.to_thread(judgments.grades, query)
            first = [h.id for h in sorted(result.hits, key=lambda h: h.retriever_rank)]
            final = [h.id for h in result.hits]
            experiment.queries.append(QueryResult(
                query=query, judged=len(grades), first_stage=ranking_metrics(first[:k], grades, k),
                grouprank=ranking_metrics(final[:k], grades, k), retrieval_ms=result.timings_ms["retrieval"],
                rerank_ms=result.timings_ms["rerank"], reranked=result.reranked, cached=cached,
                reason=result.reason))
        return await asyncio.to_thread(store.add, experiment)

    @router.post("/experiments", dependencies=writer, tags=["workbench"])
    async def create(body: ExperimentBody) -> dict[str, Any]:
        """Run a query set (or a list of queries) through the first stage and GroupRank; score both against
        the judgments; keep the result with the model version and settings."""
        return (await run(body)).to_record()

    @router.get("/experiments", dependencies=reader, tags=["workbench"])
    async def list_experiments() -> list[dict[str, Any]]:
        return [e.to_record() for e in await asyncio.to_thread(store.all)]

    async def one(experiment_id: int) -> Experiment:
        found = await asyncio.to_thread(store.get, experiment_id)
        if found is None:
            raise HTTPException(404, f"no experiment {experiment_id}")
        return found

    async def several(ids: list[int]) -> list[Experiment]:
        if not 2 <= len(ids) <= MAX_COMPARED:
            raise limit_error(["query", "ids"], f"give 2 to {MAX_COMPARED} experiment ids to compare, got {len(ids)}")
        return [await one(i) for i in ids]

    @router.get("/experiments/compare", dependencies=reader, tags=["workbench"])
    async def compare(ids: Ids) -> dict[str, Any]:
        """Several runs side by side, query by query; the means over the queries every run measured."""
        comparison = side_by_side(await several(ids))
        for row in comparison["queries"]:
            row["results"] = [asdict(r) if r is not None else None for r in row["results"]]
        return comparison

    @router.get("/experiments/{experiment_id}", dependencies=reader, tags=["workbench"])
    async def get(experiment_id: int) -> dict[str, Any]:
        return (await one(experiment_id)).to_record()

    @router.get("/ui/experiments", response_class=HTMLResponse, dependencies=reader, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        sets, experiments = await asyncio.to_thread(store.sets), await asyncio.to_thread(store.all)
        return templates.TemplateResponse(request, "experiments.html", {"sets": sets, "experiments": experiments})

    @router.get("/ui/experiments/compare", response_class=HTMLResponse, dependencies=reader, include_in_schema=False)
    async def compare_page(request: Request, ids: Ids) -> HTMLResponse:
        return templates.TemplateResponse(request, "experiments_compare.html", {"c": side_by_side(await several(ids))})

    # Before the page's route, whose path would also match ".../3.png".
    @router.get("/ui/experiments/{experiment_id}.png", dependencies=reader, include_in_schema=False)
    async def plot(experiment_id: int) -> Response:
        experiment = await one(experiment_id)
        return Response(await asyncio.to_thread(plot_png, experiment), media_type="image/png")

    @router.get("/ui/experiments/{experiment_id}", response_class=HTMLResponse, dependencies=reader,
                include_in_schema=False)
    async def detail(request: Request, experiment_id: int) -> HTMLResponse:
        experiment = await one(experiment_id)
        return templates.TemplateResponse(request, "experiment.html",
                                          {"e": experiment, "totals": experiment.totals()})

    return router
