"""Retrieval commands: ``index``, ``search``, ``reindex``, ``quickstart`` and ``eval retrieval``."""

from __future__ import annotations

import json
import shutil
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.table import Table
from typer.core import TyperGroup

from grouprank.cli.app import app, console, eval_app
from grouprank.errors import InputError


class Mode(StrEnum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


class EvalMode(StrEnum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"
    all = "all"


class DenseIndexType(StrEnum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


class Fusion(StrEnum):
    rrf = "rrf"
    weighted = "weighted"


def _hits_table(title: str, hits, width: int = 90) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column("bm25 (rank)", justify="right")
    table.add_column("dense (rank)", justify="right")
    table.add_column("text", no_wrap=True, overflow="ellipsis", max_width=width)
    for n, hit in enumerate(hits, start=1):
        def part(name: str, hit=hit) -> str:
            return f"{hit.scores[name]:.3f} ({hit.ranks[name]})" if name in hit.scores else "-"
        snippet = " ".join(hit.text.split())
        snippet = snippet[:width] + ("…" if len(snippet) > width else "")
        table.add_row(str(n), hit.id, f"{hit.score:.4f}", part("bm25"), part("dense"), snippet)
    return table


class _IndexGroup(TyperGroup):
    """``grouprank index DIR --data PATH`` is short for ``grouprank index add DIR --data PATH``: arguments
    that do not start with a subcommand name go to ``add``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["add", *args]
        return super().parse_args(ctx, args)


index_app = typer.Typer(
    cls=_IndexGroup,
    no_args_is_help=True,
    help="Add documents to an index (`grouprank index DIR --data PATH`, short for `index add`), or migrate it.",
)
app.add_typer(index_app, name="index")


@index_app.command("add")
def index_cmd(
    directory: Annotated[Path, typer.Argument(help="Index directory (created if missing).")],
    data: Annotated[Path, typer.Option("--data", help="JSONL file or BEIR directory of documents.")],
    embedder: Annotated[str, typer.Option(help="sentence-transformers model: alias, HF id or local path.")]
    = "all-MiniLM-L6-v2",
    dense_index: Annotated[DenseIndexType, typer.Option(help="FAISS index type for a new index.")]
    = DenseIndexType.flat,
) -> None:
    """Add (upsert) the documents of a JSONL file or BEIR directory to an index."""
    from indexer.config import IndexConfig
    from indexer.index import Index
    from indexer.ingest import load_documents

    docs = load_documents(data)  # validates every line before anything is written
    config = IndexConfig(embedder=embedder, dense_index=dense_index.value)
    start = time.perf_counter()
    with Index.open_or_create(directory, config) as index:
        written = index.upsert(docs)
        stats = index.stats()
    console.print(f"upserted {written} documents into {directory} in {time.perf_counter() - start:.1f} s; "
                  f"the index holds {stats['documents']} documents")


@app.command("search")
def search_cmd(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    query: Annotated[str, typer.Argument(help="Query text.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of hits.")] = 10,
    mode: Annotated[Mode, typer.Option(help="Retriever.")] = Mode.hybrid,
    fusion: Annotated[Fusion | None, typer.Option(help="Hybrid fusion (default: the index's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
) -> None:
    """Search an index and print the ranked hits."""
    from indexer.index import Index

    with Index.open(directory) as index:
        start = time.perf_counter()
        hits = index.search(query, k=k, mode=mode.value, fusion=fusion.value if fusion else None)
        ms = (time.perf_counter() - start) * 1000
    if as_json:
        print(json.dumps([{"id": h.id, "score": h.score, "scores": h.scores, "ranks": h.ranks,
                           "title": h.title, "text": h.text} for h in hits], ensure_ascii=False, indent=1))
        return
    console.print(_hits_table(f"{mode.value} search: {query!r} ({ms:.1f} ms)", hits))


@app.command("reindex")
def reindex_cmd(directory: Annotated[Path, typer.Argument(help="Index directory.")]) -> None:
    """Rebuild an index's search structures from its document store and switch to them atomically."""
    from indexer.index import Index

    with Index.open(directory) as index:
        generation = index.reindex()
    console.print(f"{directory}: now serving generation {generation}")


@app.command("quickstart")
def quickstart_cmd(
    directory: Annotated[Path, typer.Option(help="Where to build the demo index (rebuilt each run).")]
    = Path.home() / ".cache" / "grouprank" / "quickstart",
    k: Annotated[int, typer.Option("-k", min=1, help="Hits shown per query.")] = 5,
    rerank: Annotated[bool, typer.Option(help="Rerank with GroupRank (--no-rerank: retrieval only).")] = True,
    model: Annotated[str | None, typer.Option("--model", "-m", help="GroupRank LLM: HF id, local path or "
                                              "alias (default: reranker.backends.DEFAULT_MODEL).")] = None,
    depth: Annotated[int, typer.Option(min=1, help="Hits per query that GroupRank reranks.")] = 10,
    max_chunks: Annotated[int | None, typer.Option(min=1, help="Index only this many chunks, spread "
                                                   "over the corpus (a faster demo).")] = None,
) -> None:
    """Index the Python language reference (shipped with Python), run a few hybrid queries and show the
    retrieval order next to the GroupRank order, offline."""
    from grouprank.cli import quickstart as demo
    from indexer.index import Index
    from reranker.types import Candidate

    run_start = time.perf_counter()
    docs = demo.python_reference_documents()
    if max_chunks is not None and max_chunks < len(docs):
        docs = docs[:: len(docs) // max_chunks][:max_chunks]
    if directory.exists() and not (directory / "store.sqlite").exists():
        raise InputError("exists and is not a grouprank index; pass another --directory", source=directory)
    reranker = None
    if rerank:  # load the LLM first: a missing model fails before minutes of indexing
        from reranker import load_reranker
        from reranker.backends import DEFAULT_MODEL

        model = model or DEFAULT_MODEL
        start = time.perf_counter()
        reranker = load_reranker("groupwise", model=model, group_size=demo.GROUP_SIZE, max_doc_chars=demo.DOC_CHARS)
        console.print(f"GroupRank model {model} loaded in {time.perf_counter() - start:.1f} s")
    if directory.exists():
        shutil.rmtree(directory)
    console.print(f"[bold]grouprank quickstart[/]: indexing {len(docs)} chunks of the Python language "
                  f"reference into {directory}")
    start = time.perf_counter()
    with Index.create(directory) as index:
        index.upsert(docs)
        console.print(f"built in {time.perf_counter() - start:.1f} s")
        if reranker is not None:
            console.print(demo.LEGEND)
        for query in demo.QUICKSTART_QUERIES:
            t0 = time.perf_counter()
            hits = index.search(query, k=max(k, depth) if reranker else k, mode="hybrid")
            retrieval_ms = (time.perf_counter() - t0) * 1000
            ranking, rerank_ms = None, None
            if reranker is not None:  # rerank every retrieved hit: at least the k shown
                t0 = time.perf_counter()
                ranking = reranker.rerank(query, [Candidate(id=h.id, text=h.text, title=h.title, score=h.score)
                                                  for h in hits])
                rerank_ms = (time.perf_counter() - t0) * 1000
            console.print()
            console.print(demo.side_by_side(query, hits, ranking, k, retrieval_ms, rerank_ms))
    console.print(f"done in {time.perf_counter() - run_start:.1f} s. "
                  f'Try: grouprank search {directory} "how do decorators work"')


@eval_app.command("retrieval")
def eval_retrieval_cmd(
    data: Annotated[Path, typer.Option("--data", help="BEIR directory (corpus.jsonl, queries.jsonl, qrels/).")],
    mode: Annotated[EvalMode, typer.Option(help="Retriever(s) to evaluate.")] = EvalMode.all,
    index_dir: Annotated[Path | None, typer.Option("--index", help="Existing index of this corpus; "
                                                   "default: build a temporary one.")] = None,
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
    depth: Annotated[int, typer.Option(min=1, help="Hits retrieved per query (recall@100 needs 100).")] = 100,
    fusion: Annotated[Fusion | None, typer.Option(help="Hybrid fusion (default: the index's).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write metrics as JSON here.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Write a TREC run per mode into this directory.")] = None,
) -> None:
    """NDCG@10, Recall@100 and MRR@10 of BM25, dense and hybrid retrieval on a BEIR dataset."""
    import tempfile

    from grouprank.metrics import evaluate
    from grouprank.trec_files import write_run
    from indexer.index import Index
    from indexer.ingest import load_beir

    dataset = load_beir(data, split=split)
    queries = dataset.judged_queries()
    if not queries:
        raise InputError("no query has a relevant document in the qrels", source=data)
    modes = ["bm25", "dense", "hybrid"] if mode is EvalMode.all else [mode.value]
    with tempfile.TemporaryDirectory(prefix="grouprank-eval-") as tmp:
        if index_dir is None:
            index = Index.create(Path(tmp) / "index")
            index.upsert(dataset.documents)
        else:
            index = Index.open(index_dir)
        results: dict[str, dict[str, float]] = {}
        with index:
            qids = list(queries)
            for m in modes:
                start = time.perf_counter()
                ranked = index.search_batch([queries[q] for q in qids], k=depth, mode=m,
                                            depth=max(depth, index.config.depth),
                                            fusion=fusion.value if fusion else None)
                elapsed = time.perf_counter() - start
                run = {q: {h.id: h.score for h in hits} for q, hits in zip(qids, ranked, strict=True)}
                results[m] = evaluate(dataset.qrels, run)
                results[m]["ms_per_query"] = elapsed * 1000 / len(qids)
                if run_dir is not None:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    write_run(run_dir / f"{dataset.name or 'run'}.{m}.trec", run, tag=f"grouprank-{m}")
    table = Table(title=f"{dataset.name}: {len(queries)} judged queries, {len(dataset.documents)} documents",
                  title_justify="left")
    for column in ("mode", "ndcg@10", "recall@100", "mrr@10", "ms/query"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for m, r in results.items():
        table.add_row(m, f"{r['ndcg@10']:.4f}", f"{r['recall@100']:.4f}", f"{r['mrr@10']:.4f}",
                      f"{r['ms_per_query']:.1f}")
    console.print(table)
    if output is not None:
        payload = {"dataset": str(data), "queries": len(queries), "documents": len(dataset.documents)}
        payload.update(results[modes[0]] if len(modes) == 1 else {"mode": "all", **results})
        if len(modes) == 1:
            payload["mode"] = modes[0]
        output.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"metrics written to {output}")
