"""A corpus every Python install ships: the language reference topics in ``pydoc_data.topics``."""

from __future__ import annotations

import re

from indexer.documents import Document

QUICKSTART_QUERIES = (
    "how do I catch an exception and clean up afterwards",
    "what does the yield statement do in a function",
    "operator precedence of boolean and comparison operators",
    "how are default argument values evaluated",
)


def python_reference_documents(max_chars: int = 1200) -> list[Document]:
    """Chunks of the Python language reference, split on blank lines into pieces of <= ``max_chars``."""
    from pydoc_data.topics import topics

    docs: list[Document] = []
    for topic in sorted(topics):
        chunk: list[str] = []
        size = 0
        part = 0
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[topic]) if p.strip()]
        for para in [*paragraphs, ""]:
            if chunk and (not para or size + len(para) > max_chars):
                docs.append(Document(id=f"{topic}#{part}", title=topic, text="\n\n".join(chunk),
                                     metadata={"topic": topic, "part": part}))
                chunk, size, part = [], 0, part + 1
            if para:
                chunk.append(para)
                size += len(para)
    return docs
