"""The retraining pipeline: mine -> synth -> sft -> grpo -> evaluate -> promote, one run at a time,
resumable at stage boundaries.

Each run lives in ``work_dir/runs/<run id>/``. Its ``state.json`` (rewritten atomically after every stage)
lists the finished stages and their outputs; every output is written under a temporary name and renamed
when complete. ``run_pipeline`` resumes the newest unfinished run made with the same settings (a crash,
a killed worker) and skips its finished stages; otherwise it starts a new run.

``config.objective`` picks the training stages. ``"slots"``: slot SFT then slot GRPO train one LoRA adapter
(``run/sft-model``, ``run/grpo-model``: adapter folders whose ``adapter_config.json`` names the pipeline's
base model, so ``reranker.models`` merges them when loading), and the gate calibrates each model's fusion
weight (``trainer.calibration``), storing the candidate's as ``fusion_weight`` in its ``metadata.json``,
which ``load_reranker`` then fuses with. ``"likelihood"`` (``trainer.likelihood_stages``): the same mined
groups train the query likelihood (the shipped model's objective); its gate reads both the slots and the
likelihood and stores which to serve. ``"text"``: trl's SFT and GRPO on the answer text (merged model
folders) and a gate at the configured ``evaluation.weight``.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.loading import model_loading
from grouprank.progress import console, enabled, progress_bar
from trainer.config import SLOT_LORA_R, PipelineConfig
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
    from indexer.backends import open_index
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
    synthetic: dict[str, Any] = {}
    with open_index(config.index_target()) as index:  # the serving tier: embedded or OpenSearch
        mined_train = mine(index, {q: judged[q] for q in train}, qrels, config.mining)
        mined_test = mine(index, {q: judged[q] for q in test}, qrels, config.mining)
        if config.objective == "readout":  # training queries synthesized from the index
            from trainer.readout_stages import mine_synthetic

            # never from a test query's candidates or judged documents: the gate stays held out
            held_out = {d.id for m in mined_test for d in m.candidates} | {d for q in test for d in qrels.get(q, {})}
            synthetic = mine_synthetic(config, run, index, held_out)
    write_mined(run.path / "mined-train.jsonl", mined_train)
    write_mined(run.path / "mined-test.jsonl", mined_test)
    return {"train": str(run.path / "mined-train.jsonl"), "test": str(run.path / "mined-test.jsonl"),
            "train_queries": len(train), "test_queries": len(test),
            "groups": sum(len(m.groups) for m in mined_train), **synthetic}


def _stage_synth(config: PipelineConfig, run: Run) -> dict[str, Any]:
    if config.objective == "readout":
        from trainer.readout_stages import stage_synth

        return stage_synth(config, run)
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


# -- slot stages (objective "slots") ---------------------------------------------------------------------


def _load_slot_model(name: str, device: str) -> tuple[Any, Any]:
    """The base model on ``device`` (bfloat16 where the device computes it natively, else float32) and its
    tokenizer: LoRA adapters train in float32 on top of it (``trainer.slot_sft.prepare_model``)."""
    import torch

    from grouprank.precision import bf16_supported
    from trainer.modeldir import load_model

    model, tokenizer = load_model(name, device, torch.bfloat16 if bf16_supported(device) else torch.float32)
    return model.to(device), tokenizer


def _slot_examples(tokenizer: Any, rows: list[dict[str, Any]], max_length: int | None = None) -> list[Any]:
    """The dataset rows (``prompt`` messages, ``targets``) as slot examples, those longer than
    ``max_length`` tokens left out."""
    from trainer.slot_data import SlotEncoder

    encoder = SlotEncoder(tokenizer)
    examples = [encoder.encode(r["prompt"], r["targets"]) for r in rows]
    if max_length is not None:
        examples = [e for e in examples if len(e.input_ids) <= max_length]
        if not examples:
            raise InputError(f"every training group is longer than {max_length} tokens", field="sft.max_length")
    return examples


def _batch_plan(examples: list[Any], per_batch: int, batches: int) -> tuple[int, float]:
    """``batch_tokens`` that fit ``per_batch`` of the longest examples, and the ``epochs`` that make exactly
    ``batches`` length-bucketed batches (how the slot trainers plan their steps)."""
    from trainer.slot_data import length_batches

    lengths = [len(e.input_ids) for e in examples]
    batch_tokens = max(64, per_batch * max(lengths))
    return batch_tokens, batches / len(length_batches(lengths, batch_tokens, 0))


def _stage_config(make: Callable[..., Any], where: str, **values: Any) -> Any:
    """A slot trainer's config; its errors name the pipeline setting (``sft.learning_rate``)."""
    try:
        return make(**values)
    except InputError as exc:
        raise InputError(exc.message, field=f"{where}.{exc.field}" if exc.field else where) from None


def _dataset_description(run: Run, rows: int) -> dict[str, Any]:
    synth = run.outputs("synth")
    return {"data": synth["dataset"], "data_sha256": synth["sha256"], "data_rows": rows}


def _save_adapter(out: Path, model: Any, base_model: str, metadata: dict[str, Any]) -> None:
    """Write the LoRA adapter, with ``base_model_name_or_path`` set to ``base_model`` and ``metadata.json``,
    to a temporary sibling, then rename it to ``out``."""
    import shutil
    import tempfile

    from grouprank.atomic import make_public
    from trainer.files import replace_dir
    from trainer.modeldir import METADATA, now_iso

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        adapter_config = tmp / "adapter_config.json"
        write_json_atomic(adapter_config, {**read_json(adapter_config), "base_model_name_or_path": base_model})
        write_json_atomic(tmp / METADATA, {"created_at": now_iso(), **metadata})
        make_public(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stage_sft_slots(config: PipelineConfig, run: Run) -> dict[str, Any]:
    from reranker.models import resolve_model
    from trainer.modeldir import resolve_device
    from trainer.slot_sft import SlotTrainConfig, train_slot_sft
    from trainer.synthesis import read_dataset

    stage = config.sft
    rows = read_dataset(run.outputs("synth")["dataset"])
    model, tokenizer = _load_slot_model(config.base_model, resolve_device(stage.device))
    examples = _slot_examples(tokenizer, rows, stage.max_length)
    batch_tokens, epochs = _batch_plan(examples, stage.batch_size, stage.max_steps * stage.grad_accumulation)
    slot_config = _stage_config(
        SlotTrainConfig, "sft", epochs=epochs, learning_rate=stage.learning_rate, batch_tokens=batch_tokens,
        grad_accumulation=stage.grad_accumulation, lora_r=stage.lora_r or SLOT_LORA_R, lora_alpha=stage.lora_alpha,
        freeze_fraction=stage.freeze_fraction, rank_weight=stage.rank_weight, tau=stage.tau,
        warmup_ratio=stage.warmup_ratio, seed=stage.seed)
    with progress_bar("slot SFT steps", stage.max_steps) as bar:
        model, info = train_slot_sft(model, tokenizer, examples, slot_config, lambda *_: bar.advance())
    out = run.path / "sft-model"
    _save_adapter(out, model, config.base_model, {
        "stage": "sft", "objective": "slots", "serving": {"slot_feed": "fixed"}, "base_model": config.base_model,
        "base_path": resolve_model(config.base_model), **_dataset_description(run, len(examples)),
        "config": stage.to_dict(), "slot_config": slot_config.to_dict(), "metrics": info["metrics"],
        "train_log": info["log"]})
    return {"model": str(out), "metrics": info["metrics"]}


def _sft_adapter_for_grpo(config: PipelineConfig, sft: str) -> tuple[Any, Any]:
    """The base model with the SFT stage's LoRA adapter, trainable, the adapter in float32 (bf16 adapters
    lose small updates); and the tokenizer."""
    from grouprank.errors import require
    from trainer.modeldir import resolve_device

    peft = require("peft", "train")
    base, tokenizer = _load_slot_model(config.base_model, resolve_device(config.grpo.device))
    with model_loading():
        model = peft.PeftModel.from_pretrained(base, sft, is_trainable=True)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model, tokenizer


def _stage_grpo_slots(config: PipelineConfig, run: Run) -> dict[str, Any]:
    from reranker.models import resolve_model
    from trainer.modeldir import read_metadata
    from trainer.slot_grpo import SlotGRPOConfig, train_slot_grpo
    from trainer.synthesis import read_dataset

    stage = config.grpo
    sft = run.outputs("sft")["model"]
    if stage.max_steps == 0:
        return {"model": sft, "skipped": "max_steps is 0"}
    rows = read_dataset(run.outputs("synth")["dataset"])
    model, tokenizer = _sft_adapter_for_grpo(config, sft)
    examples = _slot_examples(tokenizer, rows, config.sft.max_length)
    batch_tokens, epochs = _batch_plan(examples, stage.batch_size // stage.num_generations, stage.max_steps)
    slot_config = _stage_config(
        SlotGRPOConfig, "grpo", epochs=epochs, learning_rate=stage.learning_rate, batch_tokens=batch_tokens,
        num_samples=stage.num_generations, temperature=stage.temperature, kl_beta=stage.kl_beta,
        seed=stage.seed, reward=stage.reward)
    with progress_bar("slot GRPO steps", stage.max_steps) as bar:
        model, info = train_slot_grpo(model, tokenizer, examples, slot_config, lambda *_: bar.advance())
    parent = {k: v for k, v in (read_metadata(sft) or {}).items() if k != "train_log"}
    out = run.path / "grpo-model"
    _save_adapter(out, model, config.base_model, {
        "stage": "grpo", "objective": "slots", "serving": {"slot_feed": "fixed"}, "base_model": config.base_model,
        "base_path": resolve_model(config.base_model), "parent": parent, **_dataset_description(run, len(examples)),
        "config": stage.to_dict(), "slot_config": slot_config.to_dict(), "metrics": info["metrics"],
        "train_log": info["log"]})
    return {"model": str(out), "metrics": info["metrics"]}


# -- stages ----------------------------------------------------------------------------------------------


def _stage_sft(config: PipelineConfig, run: Run) -> dict[str, Any]:
    if config.objective == "readout":
        from trainer.readout_stages import stage_sft

        return stage_sft(config, run)
    if config.sft.max_steps == 0:
        return {"model": config.base_model, "skipped": "max_steps is 0"}
    if config.objective == "slots":
        return _stage_sft_slots(config, run)
    if config.objective == "likelihood":
        from trainer.likelihood_stages import stage_sft as likelihood_sft

        return likelihood_sft(config, run)
    from trainer.sft import train_sft

    out = run.path / "sft-model"
    metadata = train_sft(run.outputs("synth")["dataset"], config.base_model, out, config.sft)
    return {"model": str(out), "metrics": metadata["metrics"]}


def _stage_grpo(config: PipelineConfig, run: Run) -> dict[str, Any]:
    if config.objective == "readout":
        from trainer.readout_stages import stage_grpo

        return stage_grpo(config, run)
    if config.objective == "slots":
        return _stage_grpo_slots(config, run)
    if config.objective == "likelihood":
        from trainer.likelihood_stages import stage_grpo as likelihood_grpo

        return likelihood_grpo(config, run)
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
    from trainer.evaluation import calibrated_evaluation, candidate_sets, decide, evaluate_model
    from trainer.mining import read_mined

    qrels = read_qrels(config.qrels)
    sets = candidate_sets(read_mined(run.outputs("mine")["test"]))
    candidate_model = run.outputs("grpo")["model"]
    current_model = _current_model(config)
    slots = config.objective in ("slots", "likelihood", "readout")  # these calibrate the candidate's fusion
    settings = config.evaluation
    if config.objective == "readout":  # evaluated as the read-out model is served
        settings = replace(settings, group_size=config.readout.group_size, max_doc_chars=config.readout.max_doc_chars)
    if slots:  # a likelihood model: both parts read, the calibration picks what to serve
        def evaluate(model: str, *args: Any) -> dict[str, Any]:
            return calibrated_evaluation(model, *args, likelihood=config.objective == "likelihood")
    else:
        evaluate = evaluate_model
    candidate = evaluate(candidate_model, sets, qrels, settings)
    same = Path(candidate_model).resolve() == Path(current_model).resolve()  # nothing was trained
    current = candidate if same else evaluate(current_model, sets, qrels, settings)
    metric = config.evaluation.metric
    weight = candidate["fusion_weight"] if slots else None
    decision = decide(candidate[metric], current[metric], config.gate.margin, metric, weight=weight)
    if slots and Path(candidate_model).resolve().is_relative_to(run.path.resolve()):
        _store_calibration(Path(candidate_model), candidate)
    report = {"run_id": run.id, "objective": config.objective, "candidate": candidate, "current": current,
              "decision": decision.to_dict()}
    write_json_atomic(run.path / "evaluation.json", report)
    outputs = {"evaluation": str(run.path / "evaluation.json"), "candidate": candidate[metric],
               "current": current[metric], "retriever": candidate["retriever"].get(metric),
               "promote": decision.promote, "reason": decision.reason}
    if slots:
        outputs.update(fusion_weight=weight, current_fusion_weight=current["fusion_weight"])
    return outputs


def _fusion_metadata(evaluation: dict[str, Any], serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metadata.json`` fields of a calibrated model (``calibrated_evaluation``'s result): the dense
    share and, with the likelihood read, the likelihood weight it is served at join its ``serving``."""
    out = {"fusion_weight": evaluation["fusion_weight"], "calibration": evaluation["calibration"]}
    served = {k: evaluation[k] for k in ("likelihood_weight", "dense_weight") if k in evaluation}
    if "likelihood_weight" in evaluation:
        served["weight_without_likelihood"] = evaluation["calibration"].get("weight_without_likelihood")
    if served:
        out["serving"] = {**(serving or {}), **served}
    return out


def _store_calibration(model_dir: Path, evaluation: dict[str, Any]) -> None:
    """Write the calibrated fusion weight and table into a trained model's ``metadata.json``."""
    from trainer.modeldir import METADATA, read_metadata

    metadata = read_metadata(model_dir) or {}
    write_json_atomic(model_dir / METADATA, {**metadata, **_fusion_metadata(evaluation, metadata.get("serving"))})


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
        # The calibrated weight goes with the model (also when the candidate is a folder not written by this run).
        from trainer.modeldir import read_metadata

        serving = (read_metadata(run.outputs("grpo")["model"]) or {}).get("serving")
        metadata = _fusion_metadata(report["candidate"], serving) if "fusion_weight" in report["candidate"] else None
        version = registry.add(run.outputs("grpo")["model"], evaluation=report, metadata=metadata)
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
        "objective": config.objective,
        "metric": config.evaluation.metric,
        "candidate": stages["evaluate"]["candidate"],
        "current": stages["evaluate"]["current"],
        "retriever": stages["evaluate"]["retriever"],
        "fusion_weight": stages["evaluate"].get("fusion_weight"),
        "decision": stages["evaluate"]["reason"],
        "promoted": stages["promote"]["promoted"],
        "version": stages["promote"]["version"],
        "serving": stages["promote"]["current"],
        "seconds": {s: stages[s]["seconds"] for s in STAGES},
    }
