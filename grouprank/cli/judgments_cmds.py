"""``grouprank judgments export``: the workbench's judgments as the training pipeline's qrels and queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grouprank.cli.app import app, console

judgments_app = typer.Typer(help="Relevance judgments made in the workbench (GET /ui).", no_args_is_help=True)
app.add_typer(judgments_app, name="judgments")


@judgments_app.command("export")
def export_cmd(
    index: Annotated[Path, typer.Option("--index", help="Index directory holding judgments.sqlite "
                                        "(or the judgments.sqlite file itself).")],
    qrels: Annotated[Path, typer.Option("--qrels", help="TREC qrels file to write (the pipeline's `qrels`).")],
    queries: Annotated[Path | None, typer.Option("--queries", help="BEIR queries.jsonl to write "
                                                 "(the pipeline's `queries`).")] = None,
) -> None:
    """Write the judgments as TREC qrels (and BEIR queries) for `grouprank train pipeline`."""
    from worker.judgments import JudgmentStore

    store = JudgmentStore(index) if index.suffix == ".sqlite" else JudgmentStore.beside(index)
    count = store.export(qrels, queries)
    console.print(f"wrote {count} judgments to {qrels}" + (f" and their queries to {queries}" if queries else ""),
                  markup=False)
