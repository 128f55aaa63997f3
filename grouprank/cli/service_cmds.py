"""Service commands: ``serve`` (the search API), ``worker`` (Celery workers) and ``beat`` (scheduler).

Settings come from ``GROUPRANK_*`` environment variables (see ``worker.settings``); options override them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from grouprank.cli.app import app, console
from grouprank.errors import InputError, require


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class Pool(StrEnum):
    solo = "solo"
    prefork = "prefork"
    threads = "threads"


def _settings(**overrides):
    from worker.settings import Settings

    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    index: Annotated[Path | None, typer.Option("--index", help="Index directory (default: "
                                               "$GROUPRANK_INDEX_DIR).")] = None,
    opensearch_url: Annotated[str | None, typer.Option(
        "--opensearch-url", help="Serve the OpenSearch index at this URL (alias $GROUPRANK_OPENSEARCH_ALIAS) "
        "instead of an index directory (default: $GROUPRANK_OPENSEARCH_URL; \"\" = use --index).")] = None,
    broker: Annotated[str | None, typer.Option(help="Redis URL of the Celery broker (default: "
                                               "$GROUPRANK_BROKER_URL; none = rerank in-process).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes, each on its own reuse-port socket "
                                         "(one uses every core; more spread Python work over cores).")] = 1,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn log level.")] = LogLevel.info,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the search API (FastAPI on uvicorn); OpenAPI docs at /docs."""
    require("uvicorn", "serve")
    settings = _settings(index_dir=index, broker_url=broker, opensearch_url=opensearch_url)
    env = settings.to_env()  # uvicorn's worker processes build the app from the environment:
    for name in settings.env_names() - env.keys():  # a setting now unset (`--opensearch-url ""`) must stay so
        os.environ.pop(name, None)
    os.environ.update(env)
    metrics_dir = None
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # /metrics adds up all workers
        metrics_dir = tempfile.mkdtemp(prefix="grouprank-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    mode = f"broker {settings.broker_url}" if settings.broker_url else "embedded reranker"
    console.print(f"grouprank API on http://{host}:{port} (index: {settings.index_label()}, {mode}, "
                  f"{workers} worker(s)); docs at /docs", markup=False)
    from worker.server import serve

    try:
        serve(host, port, workers, log_level.value, access_log)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command("worker")
def worker_cmd(
    queues: Annotated[str, typer.Option(help="Queue(s) to consume, comma-separated: rerank, index, train.")],
    concurrency: Annotated[int | None, typer.Option(min=1, help="Processes (rerank: always 1, one per "
                                                    "GPU).")] = None,
    pool: Annotated[Pool | None, typer.Option(help="Celery pool (default: solo for rerank, prefork "
                                              "otherwise).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Worker name (default: <queues>@<host>).")] = None,
    loglevel: Annotated[LogLevel, typer.Option(help="Log level.")] = LogLevel.info,
) -> None:
    """Run a Celery worker. A rerank worker is one process (solo pool) that loads the model before it
    takes its first task."""
    from worker.settings import QUEUES

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise InputError(f"unknown queue(s) {', '.join(unknown) or queues!r}; choose from {', '.join(QUEUES)}",
                         field="--queues")
    rerank = "rerank" in names
    if rerank and (concurrency not in (None, 1) or pool not in (None, Pool.solo)):
        raise InputError("a rerank worker runs one process with the solo pool (start one per GPU)",
                         field="--concurrency")
    chosen = Pool.solo if rerank else (pool or Pool.prefork)
    settings = _settings()
    from worker.celery_app import create_celery

    celery = create_celery(settings)
    if rerank:
        from worker.tasks import get_reranker, serving_model

        console.print(f"loading reranker {settings.rerank_method}/{serving_model(settings)[0]}")
        get_reranker(settings)
    if "index" in names and settings.index_backend is not None:
        from grouprank.errors import GroupRankError
        from worker.tasks import get_index

        try:  # open the index and load its embedder now, not in the first job
            get_index(settings).warm_up()
            console.print(f"index: {settings.index_label()}", markup=False)
        except GroupRankError as exc:
            console.print(f"[yellow]index not opened yet ({exc}); jobs will try again[/]")
    argv = ["worker", "--queues", ",".join(names), "--pool", chosen.value,
            "--concurrency", str(1 if rerank else (concurrency or 1)),
            "--hostname", hostname or f"{'-'.join(names)}@%h", "--loglevel", loglevel.value,
            "--without-gossip", "--without-mingle"]
    celery.worker_main(argv)


@app.command("beat")
def beat_cmd(
    schedule: Annotated[Path, typer.Option(help="File where beat keeps the last run times.")]
    = Path(tempfile.gettempdir()) / "grouprank-beat-schedule",
    loglevel: Annotated[LogLevel, typer.Option(help="Log level.")] = LogLevel.info,
) -> None:
    """Run the Celery beat scheduler: it sends a retraining run to the train queue every
    $GROUPRANK_RETRAIN_EVERY_S seconds (with $GROUPRANK_TRAIN_CONFIG)."""
    from worker.celery_app import create_celery

    celery = create_celery(_settings())
    celery.start(["beat", "--schedule", str(schedule), "--loglevel", loglevel.value])
