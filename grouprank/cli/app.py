"""The typer applications that command modules attach to.

Command modules import heavy libraries (torch, faiss, transformers) inside their functions, so
``grouprank --help`` stays fast.
"""

from __future__ import annotations

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
