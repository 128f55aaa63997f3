"""Loading documents and evaluation sets: BEIR directories and plain JSONL files.

A BEIR directory holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` and
``qrels/<split>.tsv``. A plain JSONL corpus is one document per line with ``id`` (or ``_id``) and
``text``. Loading validates everything before returning, so a bad line never half-stores a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grouprank.errors import InputError
from grouprank.jsonl import iter_jsonl
from grouprank.trec_files import Qrels, read_qrels, read_queries
from indexer.documents import Document


@dataclass
class BeirDataset:
    """A corpus with queries and graded relevance judgements."""

    documents: list[Document]
    queries: dict[str, str]
    qrels: Qrels
    name: str = ""

    def judged_queries(self) -> dict[str, str]:
        """Queries with at least one relevant document (the ones metrics average over)."""
        return {q: t for q, t in self.queries.items() if any(r > 0 for r in self.qrels.get(q, {}).values())}


def corpus_path(path: str | Path) -> Path:
    """The JSONL file holding the documents: ``path`` itself, or ``path/corpus.jsonl``."""
    path = Path(path)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise InputError("no such corpus file (expected a JSONL file or a BEIR directory with corpus.jsonl)",
                         source=path)
    return path


def load_documents(path: str | Path) -> list[Document]:
    """Read and validate every document of a JSONL file or BEIR directory.

    Duplicate ids are an error (naming both lines): silently keeping one would hide a data bug.
    """
    source = corpus_path(path)
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for line, record in iter_jsonl(source):
        doc = Document.from_record(record, source=source, line=line)
        if doc.id in seen:
            raise InputError(f"duplicate document id {doc.id!r} (first on line {seen[doc.id]})",
                             source=source, line=line, field="_id")
        seen[doc.id] = line
        docs.append(doc)
    return docs


def find_qrels(directory: Path, split: str = "test") -> Path:
    """``qrels/<split>.tsv``, or the only TSV in ``qrels/``."""
    qrels_dir = directory / "qrels"
    wanted = qrels_dir / f"{split}.tsv"
    if wanted.is_file():
        return wanted
    found = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise InputError(f"no qrels for split {split!r} (looked for {wanted})", source=directory)


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR-format directory: corpus, queries and the qrels of ``split``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory (expected a BEIR directory with corpus.jsonl, queries.jsonl, qrels/)",
                         source=directory)
    queries_file = directory / "queries.jsonl"
    if not queries_file.is_file():
        raise InputError("missing queries.jsonl", source=directory)
    return BeirDataset(
        documents=load_documents(directory),
        queries=read_queries(queries_file),
        qrels=read_qrels(find_qrels(directory, split)),
        name=directory.name,
    )
