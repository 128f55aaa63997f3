"""The quickstart demo: a corpus every Python install ships (the language reference topics in
``pydoc_data.topics``), its queries, and the side-by-side view of retrieval and GroupRank orders."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from indexer.documents import Document

if TYPE_CHECKING:
    from indexer.hits import Hit
    from reranker.types import Ranking

QUICKSTART_QUERIES = (
    "how do I catch an exception and clean up afterwards",
    "what does the yield statement do in a function",
    "operator precedence of boolean and comparison operators",
    "how are default argument values evaluated",
)

LEGEND = ("move: rank change from retrieval to GroupRank; LLM: the model's relevance score (0-1); "
          "fallback: not scored by the LLM, kept its retrieval order")


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


def movement(before: int, after: int) -> str:
    """How far a document moved between two 1-based ranks: ``↑3``, ``↓1`` or ``=``."""
    if after < before:
        return f"↑{before - after}"
    return f"↓{after - before}" if after > before else "="


def side_by_side(
    query: str,
    hits: Sequence[Hit],
    ranking: Ranking | None,
    k: int,
    retrieval_ms: float,
    rerank_ms: float | None = None,
) -> Group:
    """The query, its top ``k`` retrieval hits next to its top ``k`` GroupRank hits, and the latencies.

    Rows read ``rank id score | id move LLM``: ``move`` is how far GroupRank moved the document from its
    retrieval rank, ``LLM`` its rerank score, or ``fallback`` where the LLM did not score it. Ids never
    shrink below 12 characters (longer ones wrap); at 80 columns every quickstart id fits on one line.
    Without a ``ranking`` only the retrieval side is shown.
    """
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("#", justify="right", min_width=2)
    table.add_column("retrieval", min_width=12, overflow="fold")
    table.add_column("score", justify="right", min_width=6)
    rows = [[str(n), hit.id, f"{hit.score:.4f}"] for n, hit in enumerate(hits[:k], start=1)]
    latency = f"retrieval {retrieval_ms:.0f} ms"
    if ranking is not None:
        table.add_column("GroupRank", min_width=12, overflow="fold")
        table.add_column("move", justify="right", min_width=4)
        table.add_column("LLM", justify="right", min_width=4)
        before = {hit.id: n for n, hit in enumerate(hits, start=1)}  # GroupRank reorders these hits
        for n, doc_id in enumerate(ranking.ids[:k], start=1):
            llm = ranking.rerank_scores.get(doc_id)
            fell_back = doc_id in ranking.fallback or llm is None
            rows[n - 1] += [doc_id, movement(before[doc_id], n), "[yellow]fallback[/]" if fell_back else f"{llm:.2f}"]
        t = ranking.trace
        calls = f"{t.llm_calls} LLM call{'s' * (t.llm_calls != 1)}"
        fallback = f", {len(ranking.fallback)} fell back" if ranking.fallback else ""
        latency = (f"rerank {rerank_ms if rerank_ms is not None else t.wall_ms:.0f} ms "
                   f"({len(ranking.ids)} docs, {calls}{fallback}) · {latency}")
    for row in rows:
        table.add_row(*row)
    return Group(Text(query, style="bold"), table, Text(latency, style="dim"))
