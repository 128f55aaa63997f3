"""The relevance workbench: ``GET /ui`` (first-stage vs GroupRank side by side, grading), the judgments API
(``POST /judgments``, ``GET /judgments``) and their exports (``GET /ui/judgments.qrels``, ``.jsonl``,
``.queries.jsonl``).

The page runs the API's own ``/search`` handler (passed in by ``create_app``), asking for the whole rerank
depth so that both columns come from one retrieval and one rerank. Judgments live in ``judgments.sqlite``
in the index folder (OpenSearch: the registry folder, else the working directory).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError

from grouprank.errors import InputError
from indexer.protocol import SearchIndex
from worker.experiments import ranking_metrics
from worker.guards import key_guard, limit_error
from worker.judgments import JudgmentStore
from worker.judgments import check as check_judgment
from worker.schemas import SearchHit, SearchRequest, SearchResponse, ServingModel
from worker.settings import Settings

HERE = Path(__file__).resolve().parent
SNIPPET_CHARS = 240


class JudgmentBody(BaseModel):
    query: str
    doc_id: str
    grade: int


class JudgmentRecord(BaseModel):
    query_id: str
    query: str
    doc_id: str
    grade: int
    who: str
    at: str


def judgments_folder(settings: Settings) -> Path:
    """Where ``judgments.sqlite`` lives: the index folder, else the registry folder, else the working directory."""
    return settings.index_dir or settings.registry_dir or Path.cwd()


def key_name(request: Request) -> str:
    """Who wrote: the name part of a ``name:secret`` API key, a short hash of another key, or "anonymous"."""
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if key is None and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    if not key:
        return "anonymous"
    name, sep, _ = key.partition(":")
    return name if sep and name else "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def error_message(detail: Any) -> str:
    """An HTTPException's detail (a string, or FastAPI's list of ``{loc, msg}``) as one line."""
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" if isinstance(d, dict)
                         else str(d) for d in detail)
    return str(detail)


def column_quality(first: list[dict[str, Any]], reranked: list[dict[str, Any]], grades: dict[str, int],
                   k: int) -> dict[str, Any]:
    """How many of the shown documents are judged, and each column's NDCG@10 and precision@k over the
    judgments (None while no shown document is judged relevant)."""
    shown = {h["id"] for h in first} | {h["id"] for h in reranked}
    out: dict[str, Any] = {"judged": len(shown & grades.keys()), "shown": len(shown), "k": k}
    for name, hits in (("first", first), ("grouprank", reranked)):
        ids = [h["id"] for h in hits]
        metrics = ranking_metrics(ids, grades, k)
        out[name] = None if metrics is None else {
            "ndcg@10": metrics["ndcg@10"], "precision": sum(grades.get(d, 0) > 0 for d in ids[:k]) / k}
    return out


def fallback_hint(reason: str | None, settings: Settings) -> str:
    """How to get a reranked answer after a fallback, by its reason."""
    if reason and "deadline" in reason:
        return (f"The reranker needs more time on this machine: raise the deadline (box above; up to "
                f"{settings.max_deadline_ms:.0f} ms), or lower the server's GROUPRANK_RERANK_DEPTH "
                f"({settings.rerank_depth} documents now) or GROUPRANK_DEFAULT_DEADLINE_MS "
                f"({settings.default_deadline_ms:.0f} ms now).")
    return "The ranking shown is the first stage's: the rerank stage did not answer (see the reason above)."


def columns(response: SearchResponse, k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first-stage top ``k`` and the GroupRank top ``k`` of one search response (whose hits are the whole
    rerank depth), each hit with its rank in both orders and how far reranking moved it."""
    final = {h.id: n for n, h in enumerate(response.hits, start=1)}

    def row(hit: SearchHit) -> dict[str, Any]:
        text = hit.text if len(hit.text) <= SNIPPET_CHARS else hit.text[:SNIPPET_CHARS].rstrip() + "…"
        return {**hit.model_dump(), "snippet": text, "final_rank": final[hit.id],
                "moved": hit.retriever_rank - final[hit.id]}

    first = sorted(response.hits, key=lambda h: h.retriever_rank)[:k]
    return [row(h) for h in first], [row(h) for h in response.hits[:k]]


def ui_router(settings: Settings, search: Callable[[SearchRequest], Awaitable[SearchResponse]],
              model: Callable[[], Awaitable[ServingModel]],
              need_index: Callable[[], Awaitable[SearchIndex]]) -> APIRouter:
    """The workbench routes, using the API's own ``search``, ``model`` and ``need_index`` handlers."""
    router = APIRouter()
    templates = Jinja2Templates(directory=HERE / "templates")
    store = JudgmentStore.beside(judgments_folder(settings))
    writer = [Depends(key_guard(settings, required=True))]
    reader = [Depends(key_guard(settings, required=settings.protect_reads))]

    @router.get("/ui", response_class=HTMLResponse, dependencies=reader, include_in_schema=False)  # a page, not API
    async def page(request: Request, q: str | None = None, mode: str = "hybrid", k: str = "10",
                   deadline_ms: str | None = None) -> HTMLResponse:
        """The comparison page: first-stage ranking and GroupRank ranking of ``q``, with grading buttons
        (an empty ``deadline_ms``, as the form sends it, is the server's default). Bad parameters are
        explained on the page, never answered with raw JSON."""
        context: dict[str, Any] = {"q": q or "", "mode": mode, "k": k, "deadline_ms": deadline_ms, "error": None,
                                   "hint": None, "result": None, "first": [], "reranked": [], "grades": {}}
        status = 200
        served = await model()
        context["model"] = {"name": served.model, "version": served.version}
        if not k.strip().isdigit() or int(k) < 1:
            status, context["error"] = 422, f"k: must be a whole number of at least 1, got {k}"
            return templates.TemplateResponse(request, "compare.html", context, status_code=status)
        k_value = int(k)
        if q == "":  # the form was sent empty
            context["hint"] = "Type a query to compare the first stage's ranking with GroupRank's."
        if q is not None and q != "":
            try:
                wanted = max(k_value, settings.rerank_depth)  # the whole rerank depth, for the columns
                depth = k_value if k_value > settings.max_k else min(wanted, settings.max_k)
                body = SearchRequest(query=q, k=depth, mode=mode, rerank=True, deadline_ms=deadline_ms or None)
                result = await search(body)
            except ValidationError as exc:
                status, context["error"] = 422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                          for e in exc.errors())
            except HTTPException as exc:
                status, context["error"] = exc.status_code, error_message(exc.detail)
            else:
                context["result"] = result
                context["first"], context["reranked"] = columns(result, k_value)
                if not result.reranked:
                    context["hint"] = fallback_hint(result.reason, settings)
                context["grades"] = await asyncio.to_thread(store.grades, q)
                context["quality"] = column_quality(context["first"], context["reranked"], context["grades"], k_value)
        return templates.TemplateResponse(request, "compare.html", context, status_code=status)

    @router.get("/ui/static/workbench.js", include_in_schema=False)
    async def script() -> FileResponse:
        return FileResponse(HERE / "static" / "workbench.js", media_type="text/javascript")

    @router.get("/favicon.ico", include_in_schema=False)  # browsers ask for it on every page, with no key
    async def favicon() -> FileResponse:
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    @router.post("/judgments", response_model=JudgmentRecord, dependencies=writer, tags=["workbench"])
    async def judge(body: JudgmentBody, request: Request) -> dict[str, Any]:
        """Grade ``doc_id`` 0-3 for ``query`` (replacing an earlier grade); needs an API key, whose name
        (``name:secret`` keys) is stored as who graded."""
        index = await need_index()
        try:
            check_judgment(body.query, body.doc_id, body.grade, settings.max_query_chars)
        except InputError as exc:
            raise limit_error(["body", exc.field or "query"], exc.message) from None
        if await asyncio.to_thread(index.get, body.doc_id) is None:
            raise HTTPException(404, f"no document with id {body.doc_id!r} in the index")
        try:
            stored = await asyncio.to_thread(store.upsert, body.query, body.doc_id, body.grade, key_name(request),
                                             settings.max_query_chars)
        except (OSError, sqlite3.Error) as exc:  # nothing was written: earlier judgments are untouched
            raise HTTPException(503, f"cannot store the judgment: {exc}") from None
        return stored.to_record()

    @router.get("/judgments", response_model=list[JudgmentRecord], dependencies=reader, tags=["workbench"])
    async def list_judgments(query: str | None = None) -> list[dict[str, Any]]:
        """Every judgment, or those of ``query``."""
        return [j.to_record() for j in await asyncio.to_thread(store.all, query)]

    def text(render: Callable[[], str], media_type: str, filename: str) -> Callable[[], Awaitable[PlainTextResponse]]:
        async def export() -> PlainTextResponse:
            return PlainTextResponse(await asyncio.to_thread(render), media_type=media_type,
                                     headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return export

    for path, render, media_type, filename, summary in [
        ("/ui/judgments.qrels", store.qrels_text, "text/plain", "judgments.qrels", "TREC qrels of the judgments"),
        ("/ui/judgments.jsonl", store.jsonl, "application/x-ndjson", "judgments.jsonl", "The judgments as JSONL"),
        ("/ui/judgments.queries.jsonl", store.queries_jsonl, "application/x-ndjson", "queries.jsonl",
         "The judged queries as BEIR queries.jsonl"),
    ]:
        router.add_api_route(path, text(render, media_type, filename), methods=["GET"], dependencies=reader,
                             response_class=PlainTextResponse, summary=summary, tags=["workbench"])
    return router
