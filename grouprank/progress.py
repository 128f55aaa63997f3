"""Progress bars (rich) for long work; silent when ``GROUPRANK_PROGRESS=0``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("GROUPRANK_PROGRESS", "1") != "0"


class _Bar:
    """A handle with ``advance(n)``; a no-op when progress is disabled."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress, self._task = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[_Bar]:
    """``with progress_bar("embedding", n) as bar: ... bar.advance(k)``."""
    if not enabled():
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total) as bar:
        for item in items:
            yield item
            bar.advance()
