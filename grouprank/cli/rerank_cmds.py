"""Reranking commands: ``rerank`` (one query) and ``eval rerank`` (quality and cost over a candidate file)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from grouprank.cli.app import AliasOpt, OpenSearchUrlOpt, app, console, eval_app, open_cli_index
from grouprank.errors import InputError
from reranker.backends import DEFAULT_MODEL


class Method(StrEnum):
    groupwise = "groupwise"
    pointwise = "pointwise"
    listwise = "listwise"


class BackendName(StrEnum):
    transformers = "transformers"
    vllm = "vllm"
    openai = "openai"


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="HF id, folder or alias (grouprank-smollm2-135m).")]
MethodOpt = Annotated[Method, typer.Option(help="Reranking method.")]
BackendOpt = Annotated[BackendName, typer.Option(help="LLM backend.")]
GroupOpt = Annotated[int | None, typer.Option(
    min=1, help="Documents per groupwise prompt. Default: the model's (its metadata), else 20.")]
RepeatsOpt = Annotated[int, typer.Option(min=1, help="Groupwise repeats with shuffled groups.")]
WeightOpt = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="Weight of the rerank score (1 = rerank only). Default: the model's calibrated weight, "
    "else 0.6.")]
LikelihoodOpt = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="Groupwise: weight of each document's query likelihood in the rerank score (0 = the "
    "groupwise scores only, 1 = the likelihood only). Default: the model's calibrated one, else 0.")]
DocCharsOpt = Annotated[int | None, typer.Option(
    min=1, help="Truncate each document to this many characters. Default: the model's, else 1000.")]
BaseUrlOpt = Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint (openai backend).")]


class Rubric(StrEnum):
    concise = "concise"
    reference = "reference"


RubricOpt = Annotated[Rubric | None, typer.Option(
    help="Groupwise instructions: concise, or the GroupRank release's wording (default: the model's).")]


class ListwisePrompt(StrEnum):
    rankgpt = "rankgpt"
    rearank = "rearank"


ListwisePromptOpt = Annotated[ListwisePrompt, typer.Option(
    help="Listwise prompt: RankGPT's, or the REARANK release's reasoning prompt (for Rearank-7B).")]


def build_reranker(method: Method, model: str, backend: BackendName, group_size: int | None, repeats: int,
                   weight: float | None, max_doc_chars: int | None, base_url: str | None,
                   rubric: Rubric | None = None, listwise_prompt: ListwisePrompt = ListwisePrompt.rankgpt,
                   likelihood_weight: float | None = None):
    """The reranker the CLI options describe."""
    from reranker import load_reranker

    # unset options are left to load_reranker, which applies what the model was trained with (its metadata),
    # else the library's defaults (documents cut at reranker.base.DEFAULT_MAX_DOC_CHARS)
    options: dict = {"max_doc_chars": max_doc_chars} if max_doc_chars else {}
    if weight is not None:  # else the model's calibrated weight (its metadata), or the reranker's default
        options["weight"] = weight
    if method is Method.groupwise:
        options["repeats"] = repeats
        options.update({k: v for k, v in (("group_size", group_size), ("rubric", rubric and rubric.value)) if v})
        if likelihood_weight is not None:  # else the model's calibrated one (its metadata), or 0
            options["likelihood_weight"] = likelihood_weight
    elif likelihood_weight:
        raise InputError("--likelihood-weight is a groupwise option", field="likelihood_weight")
    if method is Method.listwise:
        options["prompt"] = listwise_prompt.value
    if backend is BackendName.openai and base_url:
        options["base_url"] = base_url
    return load_reranker(method.value, model=model, backend=backend.value, **options)


@app.command("rerank")
def rerank_cmd(
    query: Annotated[str, typer.Argument(help="Query text.")],
    model: ModelOpt = DEFAULT_MODEL,
    index: Annotated[Path | None, typer.Option(help="Retrieve candidates from this index (hybrid).")] = None,
    opensearch_url: OpenSearchUrlOpt = None,
    alias: AliasOpt = "grouprank",
    candidates: Annotated[Path | None, typer.Option(help="JSONL of {id, text, score?} candidates.")] = None,
    doc: Annotated[list[str] | None, typer.Option("--doc", help="A candidate text (repeatable).")] = None,
    depth: Annotated[int, typer.Option(min=1, help="Candidates retrieved from --index.")] = 20,
    top_k: Annotated[int, typer.Option("-k", "--top-k", min=1)] = 10,
    method: MethodOpt = Method.groupwise,
    backend: BackendOpt = BackendName.transformers,
    group_size: GroupOpt = None,
    repeats: RepeatsOpt = 1,
    rubric: RubricOpt = None,
    listwise_prompt: ListwisePromptOpt = ListwisePrompt.rankgpt,
    weight: WeightOpt = None,
    likelihood_weight: LikelihoodOpt = None,
    max_doc_chars: DocCharsOpt = None,
    base_url: BaseUrlOpt = None,
) -> None:
    """Rerank one query's candidates (from an index, a JSONL file or --doc texts) and print the ranking."""
    from grouprank.jsonl import read_jsonl
    from reranker.types import Candidate, as_candidate

    sources = [s for s in (index or opensearch_url, candidates, doc) if s]
    if len(sources) != 1:
        raise InputError("give exactly one of --index (or --opensearch-url), --candidates or --doc")
    if index is not None or opensearch_url is not None:
        with open_cli_index(index, opensearch_url, alias) as idx:
            hits = idx.search(query, k=depth, mode="hybrid")
        cands = [Candidate.from_hit(h) for h in hits]
    else:
        raw = read_jsonl(candidates) if candidates is not None else list(doc or [])
        cands = [as_candidate(item, i) for i, item in enumerate(raw)]
    reranker = build_reranker(method, model, backend, group_size, repeats, weight, max_doc_chars, base_url, rubric,
                              listwise_prompt, likelihood_weight)
    ranking = reranker.rerank(query, cands, top_k=top_k)
    texts = {c.id: c.text for c in cands}
    table = Table(title=f"{method.value} rerank: {query!r}", title_justify="left")
    for col in ("#", "id", "final", "rerank", "text"):
        table.add_column(col, justify="right" if col in {"#", "final", "rerank"} else "left")
    for n, (doc_id, score) in enumerate(ranking, start=1):
        rerank = ranking.rerank_scores.get(doc_id)
        table.add_row(str(n), doc_id, f"{score:.3f}", "-" if rerank is None else f"{rerank:.2f}",
                      " ".join(texts[doc_id].split())[:80])
    console.print(table)
    t = ranking.trace
    console.print(f"{t.llm_calls} LLM calls, {t.prompt_tokens} prompt + {t.completion_tokens} completion tokens, "
                  f"depth {t.critical_path_depth}, {t.wall_ms:.0f} ms, parse failures {t.parse_failures}, "
                  f"query likelihood {'read' if t.likelihood else 'not read'}, "
                  f"fallback {len(ranking.fallback)}" + (f", errors: {t.errors}" if t.errors else ""))


@eval_app.command("rerank")
def eval_rerank_cmd(
    qrels: Annotated[Path, typer.Option(help="Qrels (TREC or BEIR TSV).")],
    candidates: Annotated[Path | None, typer.Option(help="RankGPT or rank_llm candidate file.")] = None,
    trec_run: Annotated[Path | None, typer.Option("--trec-run", help="First-stage TREC run (with --corpus).")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Corpus JSONL / BEIR dir for --trec-run.")] = None,
    queries: Annotated[Path | None, typer.Option(help="Queries file for --trec-run.")] = None,
    method: MethodOpt = Method.groupwise,
    model: ModelOpt = DEFAULT_MODEL,
    backend: BackendOpt = BackendName.transformers,
    depth: Annotated[int, typer.Option(min=1, help="Candidates per query to rerank.")] = 100,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries.")] = None,
    batch_queries: Annotated[int, typer.Option(min=1, help="Queries per rerank_batch call.")] = 1,
    group_size: GroupOpt = None,
    repeats: RepeatsOpt = 1,
    rubric: RubricOpt = None,
    listwise_prompt: ListwisePromptOpt = ListwisePrompt.rankgpt,
    weight: WeightOpt = None,
    likelihood_weight: LikelihoodOpt = None,
    max_doc_chars: DocCharsOpt = None,
    base_url: BaseUrlOpt = None,
    run: Annotated[Path | None, typer.Option("--run", help="Write the reranked TREC run here.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write metrics and costs as JSON here.")] = None,
) -> None:
    """Rerank candidate sets and report NDCG@10 (before and after) with the cost per query."""
    from grouprank.trec_files import read_qrels, write_run
    from reranker.candidate_files import load_candidates, load_run_candidates
    from reranker.evaluation import evaluate_reranker

    if (candidates is None) == (trec_run is None):
        raise InputError("give either --candidates FILE or --trec-run FILE (with --corpus and --queries)")
    if candidates is not None:
        sets = load_candidates(candidates, depth=depth)
    else:
        if corpus is None or queries is None:
            raise InputError("--trec-run needs --corpus and --queries")
        sets = load_run_candidates(trec_run, corpus, queries, depth=depth)
    judgements = read_qrels(qrels)
    sets = [qc for qc in sets if qc.qid in judgements][:limit]
    if not sets:
        raise InputError("no query of the candidate file has qrels", source=qrels)
    reranker = build_reranker(method, model, backend, group_size, repeats, weight, max_doc_chars, base_url, rubric,
                              listwise_prompt, likelihood_weight)
    result = evaluate_reranker(reranker, sets, judgements, batch_queries=batch_queries)
    summary = result.summary()
    summary.update(model=model, backend=backend.value, depth=depth, group_size=getattr(reranker, "group_size", None),
                   repeats=repeats, rubric=rubric.value if rubric else getattr(reranker, "rubric", None),
                   decoding=getattr(reranker, "decoding", None), listwise_prompt=listwise_prompt.value,
                   weight=reranker.weight,
                   likelihood_weight=getattr(reranker, "likelihood_weight", None),
                   max_doc_chars=reranker.truncator.max_chars)

    table = Table(title=f"{method.value} with {model} on {len(sets)} queries (top-{depth})", title_justify="left")
    for col in ("ranking", "ndcg@10", "ndcg@5", "mrr@10"):
        table.add_column(col, justify="left" if col == "ranking" else "right")
    table.add_row("retriever", *(f"{result.retriever_metrics[m]:.4f}" for m in ("ndcg@10", "ndcg@5", "mrr@10")))
    table.add_row(f"{method.value}", *(f"{result.metrics[m]:.4f}" for m in ("ndcg@10", "ndcg@5", "mrr@10")))
    console.print(table)
    costs = Table(title="cost per query (mean)", title_justify="left")
    for col in ("LLM calls", "prompt tokens", "completion tokens", "depth", "wall ms", "parse failures",
                "fallback docs"):
        costs.add_column(col, justify="right")
    mc = result.mean_costs()
    costs.add_row(f"{mc['llm_calls']:.1f}", f"{mc['prompt_tokens']:.0f}", f"{mc['completion_tokens']:.0f}",
                  f"{mc['critical_path_depth']:.0f}", f"{mc['wall_ms']:.0f}",
                  f"{result.parse_failures} ({result.parse_failure_rate:.1%})",
                  f"{result.fallback_docs} ({summary['fallback_rate']:.1%})")
    console.print(costs)
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} backend errors[/], first: {result.errors[0]}")
    if run is not None:
        write_run(run, result.run, tag=f"grouprank-{method.value}")
    if output is not None:
        output.write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"metrics and costs written to {output}")
