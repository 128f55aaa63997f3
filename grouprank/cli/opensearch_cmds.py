"""OpenSearch commands: ``grouprank opensearch index|search|reindex|cleanup|stats|connector`` and
``grouprank index migrate DIR --to opensearch``."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from grouprank.cli.app import app, console
from grouprank.cli.retrieval_cmds import Fusion, Mode, _hits_table, index_app
from grouprank.errors import InputError

CONNECTOR = Path(__file__).resolve().parents[2] / "deploy" / "opensearch" / "grouprank-rerank-connector.json"

opensearch_app = typer.Typer(help="The retrieval tier on an OpenSearch cluster.", no_args_is_help=True)
app.add_typer(opensearch_app, name="opensearch")

Url = Annotated[str, typer.Option("--url", envvar="GROUPRANK_OPENSEARCH_URL",
                                  help="OpenSearch URL (may hold user:password@).")]
Alias = Annotated[str, typer.Option("--alias", help="Index alias (versions are <alias>-v000001, ...).")]
DEFAULT_URL = "http://localhost:9200"


class Target(StrEnum):
    opensearch = "opensearch"


def _config(url: str, alias: str, **settings: Any):
    from indexer.opensearch.settings import OpenSearchConfig

    return OpenSearchConfig(url=url, alias=alias, **{k: v for k, v in settings.items() if v is not None})


def _report(report, what: str) -> None:
    from indexer.opensearch.bulk import BulkError

    console.print(f"{what}: stored {report.written} documents" +
                  (f" ({report.retried} sent again after 429/5xx)" if report.retried else ""))
    if not report.ok:
        for failure in report.failures:
            console.print(f"  [red]not stored[/] {failure}", highlight=False)
        raise BulkError(report)


@opensearch_app.command("index")
def os_index_cmd(
    data: Annotated[Path, typer.Option("--data", help="JSONL file or BEIR directory of documents.")],
    url: Url = DEFAULT_URL,
    alias: Alias = "grouprank",
    embedder: Annotated[str, typer.Option(help="Embedder of a new index.")] = "all-MiniLM-L6-v2",
    hnsw_m: Annotated[int | None, typer.Option(help="HNSW m of a new index.")] = None,
    hnsw_ef_construction: Annotated[int | None, typer.Option(help="HNSW ef_construction of a new index.")] = None,
    replicas: Annotated[int | None, typer.Option(min=0, help="Replicas of a new index.")] = None,
) -> None:
    """Upsert the documents of a JSONL file or BEIR directory into an OpenSearch index (created if missing).
    Documents OpenSearch refuses are listed (exit code 2); the others are stored."""
    from indexer.ingest import load_documents
    from indexer.opensearch.index import OpenSearchIndex

    docs = load_documents(data)  # validates every line before anything is written
    config = _config(url, alias, embedder=embedder, hnsw_m=hnsw_m, hnsw_ef_construction=hnsw_ef_construction,
                     replicas=replicas)
    start = time.perf_counter()
    with OpenSearchIndex.open_or_create(config) as index:
        report = index.bulk_upsert(docs)
        total = len(index)
    console.print(f"{alias} holds {total} documents ({time.perf_counter() - start:.1f} s)")
    _report(report, f"{config.safe_url} {alias}")


@opensearch_app.command("search")
def os_search_cmd(
    query: Annotated[str, typer.Argument(help="Query text.")],
    url: Url = DEFAULT_URL,
    alias: Alias = "grouprank",
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of hits.")] = 10,
    mode: Annotated[Mode, typer.Option(help="Retriever.")] = Mode.hybrid,
    fusion: Annotated[Fusion | None, typer.Option(help="Hybrid fusion (default rrf).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
) -> None:
    """Search an OpenSearch index and print the ranked hits."""
    from indexer.opensearch.index import OpenSearchIndex

    with OpenSearchIndex.open(_config(url, alias)) as index:
        start = time.perf_counter()
        hits = index.search(query, k=k, mode=mode.value, fusion=fusion.value if fusion else None)
        ms = (time.perf_counter() - start) * 1000
    if as_json:
        print(json.dumps([{"id": h.id, "score": h.score, "scores": h.scores, "ranks": h.ranks, "title": h.title,
                           "text": h.text} for h in hits], ensure_ascii=False, indent=1))
        return
    console.print(_hits_table(f"{mode.value} search: {query!r} ({ms:.1f} ms)", hits))


@opensearch_app.command("reindex")
def os_reindex_cmd(
    url: Url = DEFAULT_URL,
    alias: Alias = "grouprank",
    hnsw_m: Annotated[int | None, typer.Option(help="New HNSW m.")] = None,
    hnsw_ef_construction: Annotated[int | None, typer.Option(help="New HNSW ef_construction.")] = None,
    hnsw_ef_search: Annotated[int | None, typer.Option(help="New HNSW ef_search.")] = None,
    grace_s: Annotated[float | None, typer.Option(help="Keep replaced versions this long (default 3600).")] = None,
) -> None:
    """Build the next version of an index and move the alias to it atomically."""
    from indexer.opensearch.index import OpenSearchIndex

    with OpenSearchIndex.open(_config(url, alias, grace_s=grace_s)) as index:
        changes = {"hnsw_m": hnsw_m, "hnsw_ef_construction": hnsw_ef_construction, "hnsw_ef_search": hnsw_ef_search}
        name = index.reindex(config=index.config.with_(**{k: v for k, v in changes.items() if v is not None}))
    console.print(f"{alias} now names {name}")


@opensearch_app.command("cleanup")
def os_cleanup_cmd(
    url: Url = DEFAULT_URL,
    alias: Alias = "grouprank",
    grace_s: Annotated[float, typer.Option(min=0, help="Delete versions replaced more than this long ago.")] = 3600.0,
) -> None:
    """Delete index versions that stopped serving more than --grace-s seconds ago."""
    from indexer.opensearch.index import OpenSearchIndex

    with OpenSearchIndex.open(_config(url, alias)) as index:
        deleted = index.cleanup(grace_s)
    console.print(f"deleted {', '.join(deleted)}" if deleted else "nothing to delete")


@opensearch_app.command("stats")
def os_stats_cmd(url: Url = DEFAULT_URL, alias: Alias = "grouprank") -> None:
    """Print an OpenSearch index's stats as JSON."""
    from indexer.opensearch.index import OpenSearchIndex

    with OpenSearchIndex.open(_config(url, alias)) as index:
        print(json.dumps(index.stats(), indent=1))


@opensearch_app.command("connector")
def os_connector_cmd(
    grouprank_url: Annotated[str, typer.Option("--grouprank-url", help="Where OpenSearch reaches grouprank's "
                                               "API (serves POST /rerank).")] = "http://api:8000",
    output: Annotated[Path | None, typer.Option("--output", help="Write the body here, not to stdout.")] = None,
) -> None:
    """Print the ml-commons connector body (POST /_plugins/_ml/connectors/_create) for GroupRank's /rerank."""
    if not grouprank_url.startswith(("http://", "https://")):
        raise InputError(f"must be an http(s) URL, got {grouprank_url!r}", field="grouprank-url")
    body = json.loads(CONNECTOR.read_text(encoding="utf-8"))
    body["parameters"]["endpoint"] = grouprank_url.rstrip("/")
    text = json.dumps(body, indent=2) + "\n"
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"connector body written to {output}; put your API key in credential.grouprank_api_key")


@index_app.command("migrate")
def migrate_cmd(
    directory: Annotated[Path, typer.Argument(help="Embedded index directory to copy.")],
    to: Annotated[Target, typer.Option("--to", help="Target backend.")],
    url: Url = DEFAULT_URL,
    alias: Alias = "grouprank",
    replicas: Annotated[int | None, typer.Option(min=0, help="Replicas of a new index.")] = None,
) -> None:
    """Copy an embedded index's documents into OpenSearch, re-using its stored embeddings (and its HNSW,
    fusion and depth settings for a new index)."""
    from indexer.index import Index
    from indexer.opensearch.migrate import migrate
    from indexer.opensearch.settings import OpenSearchConfig

    start = time.perf_counter()
    with Index.open(directory) as source:
        config = OpenSearchConfig.from_index_config(source.config, url=url, alias=alias,
                                                    **({"replicas": replicas} if replicas is not None else {}))
        target, report = migrate(source, config)
        with target:
            total = len(target)
    console.print(f"migrated {directory} to {config.safe_url} {alias} in {time.perf_counter() - start:.1f} s; "
                  f"it holds {total} documents")
    _report(report, f"{to.value} {alias}")
