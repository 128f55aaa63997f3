"""The document type and its validation from JSON records."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def validate_batch(docs: Iterable[Document]) -> list[Document]:
    """The batch as a list with unique ids (the last version of a repeated id wins), or InputError."""
    by_id: dict[str, Document] = {}
    for n, doc in enumerate(docs, start=1):
        where = f"document #{n}"
        if not isinstance(doc, Document):
            raise InputError(f"{where}: expected an indexer.documents.Document, got {type(doc).__name__}")
        if not isinstance(doc.id, str) or not doc.id:
            raise InputError(f"{where}: must be a non-empty string, got {doc.id!r}", field="id")
        where = f"document #{n} (id {doc.id!r})"
        for name in ("id", "title", "text"):
            value = getattr(doc, name)
            if not isinstance(value, str):
                raise InputError(f"{where}: must be a string, got {type(value).__name__}", field=name)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"{where}: not valid Unicode text ({exc.reason} at {exc.start})", field=name) from None
        if not isinstance(doc.metadata, dict):
            raise InputError(f"{where}: must be a dict, got {type(doc.metadata).__name__}", field="metadata")
        try:
            json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: not JSON-serialisable: {exc}", field="metadata") from None
        by_id.pop(doc.id, None)
        by_id[doc.id] = doc
    return list(by_id.values())
