"""Retrieval commands: ``index``, ``search``, ``reindex``, ``stats``, ``quickstart`` and ``eval retrieval``.

One set for both retrieval tiers: each command takes an index directory (the embedded index) or
``--opensearch-url URL --alias A`` (an OpenSearch alias), and opens it through ``indexer.open_index``
as the service does."""

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

from grouprank.cli.app import AliasOpt, OpenSearchUrlOpt, app, cli_target, console, eval_app, open_cli_index
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


class Encoder(StrEnum):
    auto = "auto"
    torch = "torch"
    torch_bf16 = "torch-bf16"
    onnx_int8 = "onnx-int8"
    openvino = "openvino"
    openvino_bf16 = "openvino-bf16"


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


OptionalDir = Annotated[Path | None, typer.Argument(help="Index directory (or --opensearch-url).")]


@index_app.command("add")
def index_cmd(
    directory: Annotated[Path | None, typer.Argument(help="Index directory (created if missing), or use "
                                                     "--opensearch-url.")] = None,
    data: Annotated[Path, typer.Option("--data", help="JSONL file or BEIR directory of documents.")] = ...,  # type: ignore[assignment]
    opensearch_url: OpenSearchUrlOpt = None,
    alias: AliasOpt = "grouprank",
    embedder: Annotated[str, typer.Option(help="sentence-transformers model: alias, HF id or local path.")]
    = "all-MiniLM-L6-v2",
    dense_index: Annotated[DenseIndexType, typer.Option(help="FAISS index type of a new embedded index.")]
    = DenseIndexType.flat,
    hnsw_m: Annotated[int | None, typer.Option(help="HNSW m of a new index.")] = None,
    hnsw_ef_construction: Annotated[int | None, typer.Option(help="HNSW ef_construction of a new index.")] = None,
    replicas: Annotated[int | None, typer.Option(min=0, help="Replicas of a new OpenSearch index.")] = None,
) -> None:
    """Add (upsert) the documents of a JSONL file or BEIR directory to an index (created if missing).
    Documents OpenSearch refuses are listed (exit code 2); the others are stored."""
    from indexer.ingest import load_documents

    docs = load_documents(data)  # validates every line before anything is written
    hnsw = {k: v for k, v in {"hnsw_m": hnsw_m, "hnsw_ef_construction": hnsw_ef_construction}.items()
            if v is not None}
    start = time.perf_counter()
    directory, opensearch_url = cli_target(directory, opensearch_url)
    if opensearch_url is not None:
        from indexer.opensearch.index import OpenSearchIndex
        from indexer.opensearch.settings import OpenSearchConfig

        config = OpenSearchConfig(url=opensearch_url, alias=alias, embedder=embedder, **hnsw,
                                  **({"replicas": replicas} if replicas is not None else {}))
        with OpenSearchIndex.open_or_create(config) as index:
            report = index.bulk_upsert(docs)
            total = len(index)
        console.print(f"{alias} holds {total} documents ({time.perf_counter() - start:.1f} s)")
        bulk_report(report, f"{config.safe_url} {alias}")
        return
    from indexer.config import IndexConfig
    from indexer.index import Index

    config = IndexConfig(embedder=embedder, dense_index=dense_index.value, **hnsw)
    with Index.open_or_create(directory, config) as index:
        written = index.upsert(docs)
        stats = index.stats()
    console.print(f"upserted {written} documents into {directory} in {time.perf_counter() - start:.1f} s; "
                  f"the index holds {stats['documents']} documents")


def bulk_report(report, what: str) -> None:
    """Print what OpenSearch stored; raise ``BulkError`` (exit code 2) listing what it refused."""
    from indexer.opensearch.bulk import BulkError

    console.print(f"{what}: stored {report.written} documents" +
                  (f" ({report.retried} sent again after 429/5xx)" if report.retried else ""))
    if not report.ok:
        for failure in report.failures:
            console.print(f"  [red]not stored[/] {failure}", highlight=False)
        raise BulkError(report)


@app.command("search")
def search_cmd(
    where: Annotated[list[str], typer.Argument(metavar="[DIR] QUERY",
                                               help="Index directory and query text; the query alone with "
                                                    "--opensearch-url.")],
    opensearch_url: OpenSearchUrlOpt = None,
    alias: AliasOpt = "grouprank",
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of hits.")] = 10,
    mode: Annotated[Mode, typer.Option(help="Retriever.")] = Mode.hybrid,
    fusion: Annotated[Fusion | None, typer.Option(help="Hybrid fusion (default: the index's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
) -> None:
    """Search an index directory or an OpenSearch alias and print the ranked hits."""
    if len(where) > 2:
        raise InputError(f"expected [DIR] QUERY, got {len(where)} arguments (quote a query of several words)",
                         field="query")
    directory, query = (Path(where[0]), where[1]) if len(where) == 2 else (None, where[0])
    with open_cli_index(directory, opensearch_url, alias) as index:
        start = time.perf_counter()
        hits = index.search(query, k=k, mode=mode.value, fusion=fusion.value if fusion else None)
        ms = (time.perf_counter() - start) * 1000
    if as_json:
        print(json.dumps([{"id": h.id, "score": h.score, "scores": h.scores, "ranks": h.ranks,
                           "title": h.title, "text": h.text} for h in hits], ensure_ascii=False, indent=1))
        return
    console.print(_hits_table(f"{mode.value} search: {query!r} ({ms:.1f} ms)", hits))


@app.command("reindex")
def reindex_cmd(
    directory: OptionalDir = None,
    opensearch_url: OpenSearchUrlOpt = None,
    alias: AliasOpt = "grouprank",
    hnsw_m: Annotated[int | None, typer.Option(help="New HNSW m.")] = None,
    hnsw_ef_construction: Annotated[int | None, typer.Option(help="New HNSW ef_construction.")] = None,
    hnsw_ef_search: Annotated[int | None, typer.Option(help="New HNSW ef_search.")] = None,
    grace_s: Annotated[float | None, typer.Option(help="OpenSearch: keep replaced versions this long "
                                                  "(default 3600).")] = None,
) -> None:
    """Rebuild an index's search structures from its documents and switch to them atomically (an
    OpenSearch alias moves to the next version)."""
    changes = {k: v for k, v in {"hnsw_m": hnsw_m, "hnsw_ef_construction": hnsw_ef_construction,
                                 "hnsw_ef_search": hnsw_ef_search}.items() if v is not None}
    from dataclasses import replace

    from indexer.index import Index

    with open_cli_index(directory, opensearch_url, alias) as index:
        if isinstance(index, Index):
            name = index.reindex(config=replace(index.config, **changes) if changes else None)
            console.print(f"{directory}: now serving generation {name}")
            return
        grace = {"grace_s": grace_s} if grace_s is not None else {}
        name = index.reindex(config=index.config.with_(**changes, **grace))
    console.print(f"{alias} now names {name}")


@app.command("stats")
def stats_cmd(directory: OptionalDir = None, opensearch_url: OpenSearchUrlOpt = None,
              alias: AliasOpt = "grouprank") -> None:
    """Print an index's stats (documents, generation, dense index, sizes) as JSON."""
    with open_cli_index(directory, opensearch_url, alias) as index:
        print(json.dumps(index.stats(), indent=1, default=str))


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
        reranker = load_reranker("groupwise", model=model)  # the settings the model was trained with
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
                ranking = reranker.rerank(query, [Candidate.from_hit(h) for h in hits])
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
    encoder: Annotated[Encoder, typer.Option(help="How the temporary index runs MiniLM (auto: bf16 where the "
                                             "CPU has it natively).")] = Encoder.auto,
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
            from indexer.config import IndexConfig

            index = Index.create(Path(tmp) / "index", IndexConfig(encoder=encoder.value))
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
