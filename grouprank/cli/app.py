"""The typer applications that command modules attach to.

Command modules import heavy libraries (torch, faiss, transformers) inside their functions, so
``grouprank --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="grouprank",
    help="Hybrid retrieval with a GroupRank (groupwise LLM) reranking stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate retrieval or reranking against qrels.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

console = Console()
err_console = Console(stderr=True)

OpenSearchUrlOpt = Annotated[str | None, typer.Option(
    "--opensearch-url",
    help="Use the OpenSearch cluster at this URL (the alias --alias) instead of an index directory "
         "(default: $GROUPRANK_OPENSEARCH_URL when no directory is given).")]
AliasOpt = Annotated[str, typer.Option("--alias", help="OpenSearch alias (with --opensearch-url).")]


def cli_target(index: Path | None, opensearch_url: str | None) -> tuple[Path | None, str | None]:
    """``(directory, None)`` or ``(None, url)`` for what a command names: an index directory or
    ``--opensearch-url``; with neither, $GROUPRANK_OPENSEARCH_URL; with both, an error."""
    from grouprank.errors import InputError

    if index is not None and opensearch_url:
        raise InputError("give exactly one of --index DIR (or a directory) and --opensearch-url URL", field="index")
    if index is not None:
        return index, None
    url = opensearch_url or os.environ.get("GROUPRANK_OPENSEARCH_URL")
    if url:
        return None, url
    raise InputError("give an index directory or --opensearch-url URL (or set GROUPRANK_OPENSEARCH_URL)",
                     field="index")


def open_cli_index(index: Path | None, opensearch_url: str | None, alias: str = "grouprank") -> Any:
    """The retrieval tier a command names (``cli_target``), opened by ``indexer.open_index`` like the
    service opens it."""
    from indexer.backends import open_index

    directory, url = cli_target(index, opensearch_url)
    return open_index(directory) if directory is not None else open_index(backend="opensearch", url=url, alias=alias)
