"""Entry point: registers every command module and turns user errors into exit code 2."""

from __future__ import annotations

import sys

from grouprank.cli import app as _app_module

# Each command module registers its commands on the shared typer app when imported.
from grouprank.cli import (  # noqa: F401
    judgments_cmds,
    opensearch_cmds,
    rerank_cmds,
    retrieval_cmds,
    service_cmds,
    train_cmds,
)
from grouprank.errors import GroupRankError

app = _app_module.app


def main() -> None:
    """Run the CLI; a GroupRankError prints one red line and exits with code 2 (no traceback)."""
    try:
        app()
    except GroupRankError as exc:
        _app_module.err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
