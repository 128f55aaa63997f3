"""The retraining pipeline: mine -> synth -> sft -> grpo -> evaluate -> promote, one run at a time,
resumable at stage boundaries.

Each run lives in ``work_dir/runs/<run id>/``. Its ``state.json`` (rewritten atomically after every stage)
lists the finished stages and their outputs; every output is written under a temporary name and renamed
when complete. ``run_pipeline`` resumes the newest unfinished run made with the same settings (a crash,
a killed worker) and skips its finished stages; otherwise it starts a new run.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.progress import console, enabled
from trainer.config import PipelineConfig
from trainer.files import read_json, write_json_atomic
from trainer.locks import run_lock

STAGES = ("mine", "synth", "sft", "grpo", "evaluate", "promote")


class Run:
    """One pipeline run's directory and state."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.state = state

    @property
    def id(self) -> str:
        return self.state["run_id"]

    @classmethod
    def resume_or_start(cls, work_dir: Path, config: PipelineConfig) -> tuple[Run, bool]:
        """The newest unfinished run with ``config``'s fingerprint, or a new one; and whether it resumed."""
        runs = work_dir / "runs"
        fingerprint = config.fingerprint()
        if runs.is_dir():
            for path in sorted((p for p in runs.iterdir() if (p / "state.json").is_file()), reverse=True):
                state = read_json(path / "state.json")
                if state.get("status") != "done" and state.get("fingerprint") == fingerprint:
                    return cls(path, state), True
                break  # only the newest run may be resumed: an older one was superseded
        run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = runs / run_id
        path.mkdir(parents=True)
        state = {"run_id": run_id, "fingerprint": fingerprint, "config": config.to_dict(),
                 "status": "running", "stages": {}}
        run = cls(path, state)
        run.save()
        return run, False

    def save(self) -> None:
        write_json_atomic(self.path / "state.json", self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def outputs(self, stage: str) -> dict[str, Any]:
        return self.state["stages"][stage]


def _stage_mine(config: PipelineConfig, run: Run) -> dict[str, Any]:
    from grouprank.trec_files import read_qrels, read_queries
    from indexer.index import Index
    from trainer.mining import mine, split_queries, write_mined

    queries = read_queries(config.queries)
    qrels = read_qrels(config.qrels)
    judged = {q: t for q, t in queries.items() if any(r > 0 for r in qrels.get(q, {}).values())}
    if not judged:
        raise InputError("no query of the queries file has a relevant document in the qrels", source=config.qrels)
    train, test = split_queries(list(judged), config.mining.test_fraction, config.mining.seed)
    if config.mining.max_queries:
        train = train[: config.mining.max_queries]
        test = test[: config.mining.max_queries]
    if not train or not test:
        raise InputError(f"the split left {len(train)} train and {len(test)} test queries; both must be non-empty",
                         field="mining.test_fraction")
    with Index.open(config.index_dir) as index:
        mined_train = mine(index, {q: judged[q] for q in train}, qrels, config.mining)
        mined_test = mine(index, {q: judged[q] for q in test}, qrels, config.mining)
    write_mined(run.path / "mined-train.jsonl", mined_train)
    write_mined(run.path / "mined-test.jsonl", mined_test)
    return {"train": str(run.path / "mined-train.jsonl"), "test": str(run.path / "mined-test.jsonl"),
            "train_queries": len(train), "test_queries": len(test),
            "groups": sum(len(m.groups) for m in mined_train)}


def _stage_synth(config: PipelineConfig, run: Run) -> dict[str, Any]:
    from grouprank.trec_files import read_qrels
    from trainer.files import file_sha256, write_jsonl_atomic
    from trainer.mining import read_mined
    from trainer.synthesis import synthesize
    from trainer.teachers import load_teachers

    qrels = read_qrels(config.qrels)
    max_grade = max((r for d in qrels.values() for r in d.values()), default=0)
    point, lister = load_teachers(config.synthesis.pointwise, config.synthesis.listwise, max_grade)
    rows = synthesize(read_mined(run.outputs("mine")["train"]), point, lister, config.synthesis)
    if not rows:
        raise InputError("mining produced no training groups", field="mining")
    path = run.path / "dataset.jsonl"
    write_jsonl_atomic(path, rows)
    return {"dataset": str(path), "rows": len(rows), "sha256": file_sha256(path)}


def _stage_sft(config: PipelineConfig, run: Run) -> dict[str, Any]:
    if config.sft.max_steps == 0:
        return {"model": config.base_model, "skipped": "max_steps is 0"}
    from trainer.sft import train_sft

    out = run.path / "sft-model"
    metadata = train_sft(run.outputs("synth")["dataset"], config.base_model, out, config.sft)
    return {"model": str(out), "metrics": metadata["metrics"]}


def _stage_grpo(config: PipelineConfig, run: Run) -> dict[str, Any]:
    base = run.outputs("sft")["model"]
    if config.grpo.max_steps == 0:
        return {"model": base, "skipped": "max_steps is 0"}
    from trainer.grpo import train_grpo

    out = run.path / "grpo-model"
    metadata = train_grpo(run.outputs("synth")["dataset"], base, out, config.grpo)
    return {"model": str(out), "metrics": metadata["metrics"]}


def _current_model(config: PipelineConfig) -> str:
    from trainer.registry import Registry

    current = Registry(config.registry_dir).current()
    if current is not None:
        return str(current.path)
    return config.gate.baseline_model or config.base_model


def _stage_evaluate(config: PipelineConfig, run: Run) -> dict[str, Any]:
    from grouprank.trec_files import read_qrels
    from trainer.evaluation import candidate_sets, decide, evaluate_model
    from trainer.mining import read_mined

    qrels = read_qrels(config.qrels)
    sets = candidate_sets(read_mined(run.outputs("mine")["test"]))
    candidate_model = run.outputs("grpo")["model"]
    current_model = _current_model(config)
    candidate = evaluate_model(candidate_model, sets, qrels, config.evaluation)
    same = Path(candidate_model).resolve() == Path(current_model).resolve()  # nothing was trained
    current = candidate if same else evaluate_model(current_model, sets, qrels, config.evaluation)
    metric = config.evaluation.metric
    decision = decide(candidate[metric], current[metric], config.gate.margin, metric)
    report = {"run_id": run.id, "candidate": candidate, "current": current, "decision": decision.to_dict()}
    write_json_atomic(run.path / "evaluation.json", report)
    return {"evaluation": str(run.path / "evaluation.json"), "candidate": candidate[metric],
            "current": current[metric], "retriever": candidate["retriever"].get(metric),
            "promote": decision.promote, "reason": decision.reason}


def _stage_promote(config: PipelineConfig, run: Run) -> dict[str, Any]:
    from trainer.registry import Registry

    registry = Registry(config.registry_dir)
    evaluation = run.outputs("evaluate")
    if not evaluation["promote"]:
        current = registry.current()
        return {"promoted": False, "version": None, "current": current.version if current else None}
    report = read_json(evaluation["evaluation"])
    # Resuming after a crash between add and promote: reuse the version this run already added.
    version = next((v for v in reversed(registry.versions())
                    if (registry.info(v)["evaluation"] or {}).get("run_id") == run.id), None)
    if version is None:
        version = registry.add(run.outputs("grpo")["model"], evaluation=report)
    registry.promote(version, {"run_id": run.id, "reason": evaluation["reason"]})
    pruned = registry.prune(config.keep_models)
    return {"promoted": True, "version": version, "current": version, "pruned": pruned}


STAGE_FUNCTIONS: dict[str, Callable[[PipelineConfig, Run], dict[str, Any]]] = {
    "mine": _stage_mine,
    "synth": _stage_synth,
    "sft": _stage_sft,
    "grpo": _stage_grpo,
    "evaluate": _stage_evaluate,
    "promote": _stage_promote,
}


def _say(message: str) -> None:
    if enabled():
        console.print(message)


def run_pipeline(config: PipelineConfig | dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the whole pipeline under the run lock; returns a JSON-ready summary.

    Raises ``PipelineBusy`` when another run holds the lock, and re-raises a stage's error after marking
    the run failed (the next call resumes it from that stage).
    """
    if isinstance(config, dict):
        config = PipelineConfig.from_dict(config)
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(work_dir, config.redis_url, config.lock_key):
        run, resumed = Run.resume_or_start(work_dir, config)
        _say(f"training run {run.id} ({'resumed' if resumed else 'new'}) in {run.path}")
        ran, skipped = [], []
        run.state.update(status="running", error=None)
        run.save()
        for stage in STAGE_FUNCTIONS:
            if run.done(stage):
                skipped.append(stage)
                continue
            _say(f"[bold]stage {stage}[/]")
            started = time.monotonic()
            try:
                outputs = STAGE_FUNCTIONS[stage](config, run)
            except BaseException as exc:
                run.state.update(status="failed", failed_stage=stage,
                                 error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                run.save()
                raise
            run.state["stages"][stage] = {**outputs, "seconds": round(time.monotonic() - started, 2)}
            run.save()
            ran.append(stage)
        run.state.update(status="done", failed_stage=None, traceback=None)
        run.save()
    stages = run.state["stages"]
    return {
        "run_id": run.id,
        "run_dir": str(run.path),
        "status": "done",
        "resumed": resumed,
        "ran": ran,
        "skipped": skipped,
        "metric": config.evaluation.metric,
        "candidate": stages["evaluate"]["candidate"],
        "current": stages["evaluate"]["current"],
        "retriever": stages["evaluate"]["retriever"],
        "decision": stages["evaluate"]["reason"],
        "promoted": stages["promote"]["promoted"],
        "version": stages["promote"]["version"],
        "serving": stages["promote"]["current"],
        "seconds": {s: stages[s]["seconds"] for s in STAGES},
    }
