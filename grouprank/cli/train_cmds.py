"""Training commands: ``grouprank train mine|synth|sft|grpo|evaluate|promote|pipeline|models``.

Each stage command reads the previous stage's file and writes its own, so the pipeline can be run by hand;
``train pipeline`` runs them all (resumable, locked) from one JSON config.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from grouprank.cli.app import AliasOpt, OpenSearchUrlOpt, app, console, open_cli_index
from grouprank.errors import InputError

train_app = typer.Typer(help="Train GroupRank rerankers: mining, label synthesis, SFT, GRPO, gated promotion.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


class TeacherKind(StrEnum):
    qrels = "qrels"
    reranker = "reranker"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Optimisation steps.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Sequences per step.")]
AccumOpt = Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")]
LoraOpt = Annotated[int, typer.Option(min=0, help="LoRA rank (0 = full fine-tuning).")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to train.")]
DataOpt = Annotated[Path, typer.Option("--data", help="Synthesized dataset (JSONL from `train synth`).")]
BaseOpt = Annotated[str, typer.Option("--base-model", "-m", help="Model to start from: alias, folder or HF id.")]
OutDirOpt = Annotated[Path, typer.Option("--out", help="Model directory to write.")]
DocCharsOpt = Annotated[int, typer.Option(min=1, help="Truncate each document to this many characters.")]


def _print_json(obj: object) -> None:
    console.print_json(json.dumps(obj, default=str))


@train_app.command("mine")
def mine_cmd(
    queries: Annotated[Path, typer.Option(help="Queries (BEIR queries.jsonl or TSV).")],
    qrels: Annotated[Path, typer.Option(help="Qrels: labels for positives and the train/test split.")],
    out: Annotated[Path, typer.Option(help="Folder for mined-train.jsonl and mined-test.jsonl.")],
    index: Annotated[Path | None, typer.Option(help="Index directory to retrieve candidates from.")] = None,
    opensearch_url: OpenSearchUrlOpt = None,
    alias: AliasOpt = "grouprank",
    depth: Annotated[int, typer.Option(min=1, help="Top-K candidates per query.")] = 20,
    mode: Annotated[str, typer.Option(help="Retrieval mode: hybrid, bm25 or dense.")] = "hybrid",
    group_size: Annotated[int, typer.Option(min=2, help="Documents per training group.")] = 8,
    groups_per_query: Annotated[int, typer.Option(min=1)] = 2,
    max_positives: Annotated[int, typer.Option(min=0, help="Known positives per group at most.")] = 3,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of judged queries held out.")] = 0.3,
    seed: Annotated[int, typer.Option(min=0)] = 13,
    max_queries: Annotated[int | None, typer.Option(min=1, help="At most N train and N test queries.")] = None,
) -> None:
    """Mine candidates (the serving Index.search) and training groups, split by query into train and test."""
    from grouprank.trec_files import read_qrels, read_queries
    from trainer.config import MiningConfig
    from trainer.mining import mine, split_queries, write_mined

    config = MiningConfig(depth=depth, mode=mode, group_size=group_size, groups_per_query=groups_per_query,
                          max_positives=max_positives, test_fraction=test_fraction, seed=seed, max_queries=max_queries)
    texts, judgements = read_queries(queries), read_qrels(qrels)
    judged = {q: t for q, t in texts.items() if any(r > 0 for r in judgements.get(q, {}).values())}
    if not judged:
        raise InputError("no query has a relevant document in the qrels", source=qrels)
    train, test = split_queries(list(judged), test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    with open_cli_index(index, opensearch_url, alias) as idx:  # the serving tier, embedded or OpenSearch
        for name, qids in (("train", train), ("test", test)):
            mined = mine(idx, {q: judged[q] for q in qids}, judgements, config)
            write_mined(out / f"mined-{name}.jsonl", mined)
            console.print(f"{name}: {len(mined)} queries, {sum(len(m.groups) for m in mined)} groups -> "
                          f"{out / f'mined-{name}.jsonl'}")


@train_app.command("synth")
def synth_cmd(
    mined: Annotated[Path, typer.Option(help="Mined file (mined-train.jsonl).")],
    out: Annotated[Path, typer.Option(help="Dataset JSONL to write.")],
    qrels: Annotated[Path | None, typer.Option(help="Qrels (needed by qrels teachers).")] = None,
    pointwise: Annotated[TeacherKind, typer.Option(help="Pointwise teacher.")] = TeacherKind.qrels,
    listwise: Annotated[TeacherKind, typer.Option(help="Listwise teacher.")] = TeacherKind.qrels,
    teacher_model: Annotated[str | None, typer.Option(help="Model of reranker teachers.")] = None,
    teacher_backend: Annotated[str, typer.Option(help="Backend of reranker teachers.")] = "transformers",
    a: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the pointwise teacher.")] = 0.6,
    max_doc_chars: DocCharsOpt = 300,
) -> None:
    """Label the mined groups with two teachers, fused as in GroupRank, and write the training conversations."""
    from grouprank.trec_files import read_qrels
    from trainer.config import SynthesisConfig, TeacherConfig
    from trainer.files import write_jsonl_atomic
    from trainer.mining import read_mined
    from trainer.synthesis import synthesize
    from trainer.teachers import load_teachers

    def teacher(kind: TeacherKind) -> TeacherConfig:
        return TeacherConfig(kind=kind.value, model=teacher_model, backend=teacher_backend)

    config = SynthesisConfig(a=a, b=round(1.0 - a, 10), pointwise=teacher(pointwise), listwise=teacher(listwise),
                             max_doc_chars=max_doc_chars)
    max_grade = None
    if qrels is not None:
        max_grade = max((r for d in read_qrels(qrels).values() for r in d.values()), default=0)
    point, lister = load_teachers(config.pointwise, config.listwise, max_grade)
    rows = synthesize(read_mined(mined), point, lister, config)
    write_jsonl_atomic(out, rows)
    console.print(f"{len(rows)} training groups -> {out}")


@train_app.command("sft")
def sft_cmd(
    data: DataOpt,
    out: OutDirOpt,
    base_model: BaseOpt = "smollm2-135m-instruct",
    steps: StepsOpt = 20,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate.")] = 2e-5,
    batch_size: BatchOpt = 4,
    grad_accumulation: AccumOpt = 1,
    lora_r: LoraOpt = 0,
    device: DeviceOpt = Device.auto,
    max_length: Annotated[int, typer.Option(min=16, help="Longest training sequence in tokens.")] = 2048,
) -> None:
    """Supervised fine-tuning (loss on the answer only); writes a model directory with metadata.json."""
    from trainer.config import SFTStageConfig
    from trainer.sft import train_sft

    config = SFTStageConfig(max_steps=steps, learning_rate=lr, batch_size=batch_size,
                            grad_accumulation=grad_accumulation, lora_r=lora_r, device=device.value,
                            max_length=max_length)
    metadata = train_sft(data, base_model, out, config)
    console.print(f"SFT model -> {out}")
    _print_json(metadata["metrics"])


@train_app.command("grpo")
def grpo_cmd(
    data: DataOpt,
    out: OutDirOpt,
    base_model: BaseOpt = "smollm2-135m-instruct",
    steps: StepsOpt = 20,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate.")] = 1e-6,
    batch_size: Annotated[int, typer.Option(min=2, help="Completions per step (a multiple of "
                                            "--num-generations).")] = 4,
    num_generations: Annotated[int, typer.Option(min=2, help="Completions sampled per prompt.")] = 4,
    max_completion_length: Annotated[int, typer.Option(min=4, help="Longest completion in tokens.")] = 96,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of recall@k.")] = 0.2,
    beta: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of NDCG@k.")] = 0.5,
    gamma: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the distribution reward.")] = 0.1,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of recall@k and NDCG@k.")] = 5,
    grad_accumulation: AccumOpt = 1,
    lora_r: LoraOpt = 0,
    device: DeviceOpt = Device.auto,
    use_vllm: Annotated[bool, typer.Option(help="Generate with vLLM (GPU).")] = False,
) -> None:
    """GRPO with the heterogeneous reward (format, recall, NDCG, RBO, distribution)."""
    from trainer.config import GRPOStageConfig, RewardConfig
    from trainer.grpo import train_grpo

    config = GRPOStageConfig(max_steps=steps, learning_rate=lr, batch_size=batch_size,
                             grad_accumulation=grad_accumulation, lora_r=lora_r, device=device.value,
                             num_generations=num_generations, max_completion_length=max_completion_length,
                             use_vllm=use_vllm, reward=RewardConfig(alpha=alpha, beta=beta, gamma=gamma, k=k))
    metadata = train_grpo(data, base_model, out, config)
    console.print(f"GRPO model -> {out}")
    _print_json(metadata["metrics"])


@train_app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Candidate model: folder, alias or HF id.")],
    mined: Annotated[Path, typer.Option(help="Held-out queries (mined-test.jsonl).")],
    qrels: Annotated[Path, typer.Option(help="Qrels of the held-out queries.")],
    baseline: Annotated[str | None, typer.Option(help="Current model to beat (registry path, alias, ...).")] = None,
    margin: Annotated[float, typer.Option(help="NDCG@10 the candidate must gain over the baseline.")] = 0.0,
    group_size: Annotated[int, typer.Option(min=1, help="Documents per groupwise prompt.")] = 8,
    weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the rerank score.")] = 0.6,
    max_doc_chars: DocCharsOpt = 300,
    output: Annotated[Path | None, typer.Option(help="Write the evaluation (and decision) as JSON here.")] = None,
) -> None:
    """Rerank the held-out queries with the model (the engine's eval rerank); with --baseline, also the
    baseline, and print the promotion decision."""
    from grouprank.trec_files import read_qrels
    from trainer.config import EvalConfig
    from trainer.evaluation import candidate_sets, decide, evaluate_model
    from trainer.files import write_json_atomic
    from trainer.mining import read_mined

    config = EvalConfig(group_size=group_size, weight=weight, max_doc_chars=max_doc_chars)
    sets, judgements = candidate_sets(read_mined(mined)), read_qrels(qrels)
    results = {"candidate": evaluate_model(model, sets, judgements, config)}
    if baseline is not None:
        results["current"] = evaluate_model(baseline, sets, judgements, config)
        results["decision"] = decide(results["candidate"]["ndcg@10"], results["current"]["ndcg@10"], margin).to_dict()
    table = Table(title=f"{len(sets)} held-out queries", title_justify="left")
    for col in ("ranking", "ndcg@10", "ndcg@5", "mrr@10", "ms/query", "parse failures"):
        table.add_column(col, justify="left" if col == "ranking" else "right")
    first = results["candidate"]
    table.add_row("retriever", *(f"{first['retriever'][m]:.4f}" for m in ("ndcg@10", "ndcg@5", "mrr@10")), "", "")
    for name, r in results.items():
        if name != "decision":
            table.add_row(f"{name} ({r['model']})", *(f"{r[m]:.4f}" for m in ("ndcg@10", "ndcg@5", "mrr@10")),
                          f"{r['wall_ms']:.0f}", str(r["parse_failures"]))
    console.print(table)
    if "decision" in results:
        console.print(("[green]promote[/]: " if results["decision"]["promote"] else "[yellow]keep current[/]: ")
                      + results["decision"]["reason"])
    if output is not None:
        write_json_atomic(output, results)


@train_app.command("promote")
def promote_cmd(
    registry: Annotated[Path, typer.Option(help="Model registry directory.")],
    model: Annotated[Path | None, typer.Argument(help="Model directory to add and promote.")] = None,
    version: Annotated[str | None, typer.Option(help="Promote this registry version instead.")] = None,
    rollback: Annotated[bool, typer.Option(help="Serve the previous model again.")] = False,
    evaluation: Annotated[Path | None, typer.Option(help="Evaluation JSON (`train evaluate --output`): promote "
                                                    "only if its decision says so.")] = None,
) -> None:
    """Point the serving model at a new model (or an older version, or back with --rollback); atomic."""
    from trainer.files import read_json
    from trainer.registry import Registry

    reg = Registry(registry)
    if [model is not None, version is not None, rollback].count(True) != 1:
        raise InputError("give exactly one of MODEL, --version or --rollback")
    if rollback:
        current = reg.rollback()
        console.print(f"rolled back: serving {current.version} ({current.path})")
        return
    report = read_json(evaluation) if evaluation is not None else None
    if report is not None and not report.get("decision", {}).get("promote", False):
        reason = report.get("decision", {}).get("reason", "the evaluation has no decision (run with --baseline)")
        console.print(f"[yellow]not promoted[/]: {reason}")
        raise typer.Exit(1)
    chosen = reg.add(model, evaluation=report) if model is not None else str(version)
    current = reg.promote(chosen, {"reason": (report or {}).get("decision", {}).get("reason", "manual")})
    console.print(f"serving {current.version} ({current.path})")


@train_app.command("models")
def models_cmd(registry: Annotated[Path, typer.Option(help="Model registry directory.")]) -> None:
    """List the registry's versions and the one serving."""
    from trainer.registry import Registry

    reg = Registry(registry)
    current = reg.current()
    table = Table(title=f"models in {registry}", title_justify="left")
    for col in ("version", "serving", "stage", "base model", "ndcg@10", "created"):
        table.add_column(col)
    for v in reg.versions():
        info = reg.info(v)
        meta, ev = info["metadata"], info["evaluation"] or {}
        ndcg = ev.get("candidate", {}).get("ndcg@10")
        table.add_row(v, "*" if current and current.version == v else "", str(meta.get("stage", "")),
                      str(meta.get("base_model", "")), "" if ndcg is None else f"{ndcg:.4f}",
                      str(meta.get("created_at", "")))
    console.print(table)


@train_app.command("pipeline")
def pipeline_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline config (JSON, see trainer.config).")],
    redis_url: Annotated[str | None, typer.Option(help="Take the run lock in this Redis (default: a file "
                                                  "lock in work_dir).")] = None,
) -> None:
    """Run mine -> synth -> sft -> grpo -> evaluate -> promote; resumes an unfinished run; one at a time."""
    from dataclasses import replace

    from trainer.config import PipelineConfig
    from trainer.pipeline import run_pipeline

    settings = PipelineConfig.load(config)
    if redis_url:
        settings = replace(settings, redis_url=redis_url)
    _print_json(run_pipeline(settings))


@train_app.command("adapt")
def adapt_cmd(
    index: Annotated[Path, typer.Option("--index", help="The embedded index to adapt to (its embedder is "
                                        "switched in place if the adapted one wins).")],
    out: Annotated[Path, typer.Option("--out", help="Where the run keeps its state, data, report and the "
                                      "adapted reranker (OUT/reranker).")],
    minutes: Annotated[float, typer.Option(min=1.0, help="Time budget, shared between the stages.")] = 60.0,
    queries: Annotated[int, typer.Option(min=2, help="Queries to synthesize (at most).")] = 3000,
    held_out: Annotated[int, typer.Option(min=1, help="Synthesized queries held out for the gates.")] = 100,
    reranker: Annotated[str, typer.Option("--model", help="The reranker to adapt.")] = "grouprank-smollm2-135m",
    writer: Annotated[str, typer.Option(help="The LLM that writes the queries.")] = "smollm2-135m-instruct",
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Adapt only this stage "
                                                   "(embedder, reranker; repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling, synthesis and training.")] = 0,
    redis_url: Annotated[str | None, typer.Option(help="Take the training lock in this Redis (default: a file "
                                                  "lock in OUT).")] = None,
) -> None:
    """Adapt the embedder and the reranker to the index's own documents, no labels: synthesize queries,
    filter and mine them through the index, train, and keep what beats the current models on held-out
    queries. Resumes an unfinished run in OUT."""
    from trainer.adapt import AdaptConfig, run_adapt

    _print_json(run_adapt(AdaptConfig(
        index=str(index), out=str(out), minutes=minutes, queries=queries, held_out=held_out, reranker=reranker,
        writer=writer, stages=tuple(stage or ("embedder", "reranker")), seed=seed, redis_url=redis_url)))
