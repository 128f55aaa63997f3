"""User-facing errors: the CLI prints them (exit code 2) without a traceback."""

from __future__ import annotations

from pathlib import Path


class GroupRankError(Exception):
    """Base class for errors caused by input or configuration, not by a bug."""


class InputError(GroupRankError, ValueError):
    """Bad input, located as precisely as possible: file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        source: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = str(source) if source is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        what = f"field {self.field!r}: " if self.field else ""
        return f"{where}{what}{self.message}"


class NotFoundError(GroupRankError, LookupError):
    """A named thing (index directory, document, model) does not exist."""


class MissingExtraError(GroupRankError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module!r} is not installed: install it with `pip install 'grouprank[{extra}]'`"
        )


def require(module: str, extra: str):
    """Import an optional dependency, or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra) from exc
