"""What only OpenSearch has: ``grouprank opensearch cleanup|connector`` and ``grouprank index migrate DIR
--to opensearch``. Indexing, search, reindex and stats are the retrieval commands' (``--opensearch-url``)."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from grouprank.cli.app import app, console
from grouprank.cli.retrieval_cmds import bulk_report, index_app
from grouprank.errors import InputError

CONNECTOR = Path(__file__).resolve().parents[2] / "deploy" / "opensearch" / "grouprank-rerank-connector.json"

opensearch_app = typer.Typer(help="The retrieval tier on an OpenSearch cluster.", no_args_is_help=True)
app.add_typer(opensearch_app, name="opensearch")

Url = Annotated[str, typer.Option("--opensearch-url", envvar="GROUPRANK_OPENSEARCH_URL",
                                  help="OpenSearch URL (may hold user:password@).")]
Alias = Annotated[str, typer.Option("--alias", help="Index alias (versions are <alias>-v000001, ...).")]
DEFAULT_URL = "http://localhost:9200"


class Target(StrEnum):
    opensearch = "opensearch"


def _config(url: str, alias: str, **settings: Any):
    from indexer.opensearch.settings import OpenSearchConfig

    return OpenSearchConfig(url=url, alias=alias, **{k: v for k, v in settings.items() if v is not None})


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
    bulk_report(report, f"{to.value} {alias}")
