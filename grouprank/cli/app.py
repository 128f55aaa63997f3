"""The typer applications that command modules attach to.

Command modules import heavy libraries (torch, faiss, transformers) inside their functions, so
``grouprank --help`` stays fast.
"""

from __future__ import annotations

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
    "--opensearch-url", envvar="GROUPRANK_OPENSEARCH_URL",
    help="Use the OpenSearch cluster at this URL (the alias --alias) instead of an index directory.")]
AliasOpt = Annotated[str, typer.Option("--alias", help="OpenSearch alias (with --opensearch-url).")]


def open_cli_index(index: Path | None, opensearch_url: str | None, alias: str = "grouprank") -> Any:
    """The retrieval tier a command names: ``--index DIR`` (embedded) or ``--opensearch-url`` (+ ``--alias``),
    opened by ``indexer.open_index`` like the service opens it."""
    from grouprank.errors import InputError
    from indexer.backends import open_index

    if (index is None) == (opensearch_url is None):
        raise InputError("give exactly one of --index DIR or --opensearch-url URL", field="index")
    if opensearch_url is not None:
        return open_index(backend="opensearch", url=opensearch_url, alias=alias)
    return open_index(index)
