"""JSON Lines reading with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grouprank.errors import InputError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad lines raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", source=path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON ({exc.msg} at column {exc.colno})", source=path, line=n) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", source=path, line=n)
            yield n, obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a whole JSONL file; nothing is returned unless every line is valid."""
    return [obj for _, obj in iter_jsonl(path)]


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON Lines (UTF-8, one object per line)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
