"""BM25 over tantivy.

Schema: ``id`` (raw, stored, indexed: the delete term), ``key`` (int64 fast field: the store's key of
the version, so a search returns keys without reading stored documents) and ``body`` (title + text,
not stored) analysed in English: simple tokenizer, long tokens removed, lowercase, English stop
words, English stemmer.

A query is analysed with the same analyzer and becomes an OR of its terms, so any user text is a bag
of words (no query syntax, nothing to escape); a query of stop words only has no hits. BM25 sums over
the query's term occurrences (as Lucene's ``match`` query does): a term that appears twice in the
analysed query counts twice. Scores are tantivy's BM25 (tantivy's own query parser would drop the
repeats).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import tantivy

ANALYZER = "grouprank_en"
MAX_TOKEN_BYTES = 40
WRITER_HEAP_BYTES = 128_000_000


@cache
def analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def query_terms(text: str) -> list[str]:
    """The distinct index terms of ``text``, in order of first appearance."""
    return list(dict.fromkeys(analyzer().analyze(text)))


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_integer_field("key", fast=True)
    builder.add_text_field("body", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    return builder.build()


class LexicalWriter:
    """Adds and deletes documents; changes become visible on ``LexicalIndex.writer()`` exit."""

    def __init__(self, writer: tantivy.IndexWriter) -> None:
        self._writer = writer

    def add(self, doc_id: str, key: int, body: str) -> None:
        self._writer.add_document(tantivy.Document(id=doc_id, key=int(key), body=body))

    def delete(self, doc_id: str) -> None:
        self._writer.delete_documents_by_term("id", doc_id)


class LexicalIndex:
    """A tantivy index in one directory, with a reusable searcher (reloaded only when asked)."""

    def __init__(self, index: tantivy.Index, path: Path) -> None:
        self.path = path
        self._index = index
        self._index.register_tokenizer(ANALYZER, analyzer())
        self._index.config_reader(reload_policy="manual")
        self._schema = index.schema
        self.searcher = index.searcher()

    @classmethod
    def create(cls, path: Path) -> LexicalIndex:
        path.mkdir(parents=True)
        return cls(tantivy.Index(_schema(), path=str(path), reuse=False), path)

    @classmethod
    def open(cls, path: Path) -> LexicalIndex:
        return cls(tantivy.Index.open(str(path)), path)

    @property
    def num_docs(self) -> int:
        return self.searcher.num_docs

    @contextmanager
    def writer(self) -> Iterator[LexicalWriter]:
        """Commit on success (and reload the searcher); roll back on error. One writer at a time.

        Files no commit refers to are collected first: a writer killed inside a commit leaves some (e.g.
        a segment's ``<id>.<opstamp>.del``), and the next commit, reusing that opstamp, would fail on
        "FileAlreadyExists" (found by tests/test_dense_delta.py's kill -9 test)."""
        writer = self._index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        writer.garbage_collect_files()
        try:
            yield LexicalWriter(writer)
            writer.commit()
        except BaseException:
            writer.rollback()
            raise
        finally:
            writer.wait_merging_threads()  # also releases tantivy's writer lock
        self.reload()

    def reload(self) -> None:
        self._index.reload()
        self.searcher = self._index.searcher()

    def search(self, text: str, limit: int) -> tuple[list[int], list[float]]:
        """Keys and BM25 scores of the best ``limit`` documents, best first."""
        tokens = analyzer().analyze(text)
        if not tokens or limit < 1:
            return [], []
        # One clause per occurrence: tantivy then sums a repeated term's score exactly as often as the
        # query says it (a BoostQuery by the count gives the same up to the last bit of an f32).
        clauses = {t: tantivy.Query.term_query(self._schema, "body", t, index_option="freq") for t in tokens}
        query = tantivy.Query.boolean_query([(tantivy.Occur.Should, clauses[t]) for t in tokens])
        searcher = self.searcher
        hits = searcher.search(query, limit, count=False).hits
        if not hits:
            return [], []
        keys = searcher.fast_field_values("key", [address for _, address in hits])
        return [int(k) for k in keys], [float(score) for score, _ in hits]
