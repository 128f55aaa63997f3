"""The document type and its validation from JSON records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grouprank.errors import InputError


@dataclass
class Document:
    """A searchable document. ``id`` is the user's key; a new version with the same id replaces the old."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> str:
        """What the retrievers index: title and text."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    @classmethod
    def from_record(
        cls, record: dict[str, Any], *, source: str | Path | None = None, line: int | None = None
    ) -> Document:
        """Build from a BEIR/JSONL record (``_id`` or ``id``, ``text``, optional ``title``, ``metadata``)."""

        def bad(message: str, name: str) -> InputError:
            return InputError(message, source=source, line=line, field=name)

        doc_id = record.get("_id", record.get("id"))
        if doc_id is None:
            raise bad("missing document id (expected '_id' or 'id')", "_id")
        if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id) == "":
            raise bad(f"document id must be a non-empty string or integer, got {doc_id!r}", "_id")
        if "text" not in record:
            raise bad("missing", "text")
        text = record["text"]
        if not isinstance(text, str):
            raise bad(f"must be a string, got {type(text).__name__}", "text")
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise bad(f"must be a string, got {type(title).__name__}", "title")
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad(f"must be a JSON object, got {type(metadata).__name__}", "metadata")
        return cls(id=str(doc_id), text=text, title=title, metadata=metadata)

    def to_record(self) -> dict[str, Any]:
        return {"_id": self.id, "title": self.title, "text": self.text, "metadata": self.metadata}
