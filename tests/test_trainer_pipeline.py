"""The whole retraining pipeline end to end on a tiny random model over a slice of Cranfield: mine (real
hybrid index) -> synth (qrels teachers) -> SFT -> GRPO -> evaluate -> promote. The text objective (trl
stages, the engine's eval rerank) with a crash in GRPO, a resumed run and the registry through the CLI;
the slots objective (slot SFT and GRPO of one LoRA adapter, a calibrated fusion weight that the promoted
model is served with, and a gate that never promotes a model with weight 0); and the config checks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grouprank.errors import InputError
from trainer.config import PipelineConfig
from trainer.pipeline import STAGES


@pytest.mark.slow
def test_pipeline_end_to_end_with_crash_and_resume(pipeline_config, tiny_model_path: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.grpo
    import trainer.sft
    from trainer import Registry, run_pipeline
    from trainer.modeldir import read_metadata

    config = {**pipeline_config(tmp_path), "objective": "text"}

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in GRPO")

    real_grpo = trainer.grpo.train_grpo
    monkeypatch.setattr(trainer.grpo, "train_grpo", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config)
    runs = list((tmp_path / "work" / "runs").iterdir())
    assert len(runs) == 1
    state = json.loads((runs[0] / "state.json").read_text())
    assert state["status"] == "failed" and state["failed_stage"] == "grpo"
    assert list(state["stages"]) == ["mine", "synth", "sft"]
    sft_model = runs[0] / "sft-model"
    assert read_metadata(sft_model)["stage"] == "sft" and read_metadata(sft_model)["config"]["lora_r"] == 4
    assert (sft_model / "model.safetensors").is_file() and not list(sft_model.glob("adapter_*"))  # merged
    sft_mtime = (sft_model / "metadata.json").stat().st_mtime_ns

    # The resumed run must not redo finished stages.
    monkeypatch.setattr(trainer.grpo, "train_grpo", real_grpo)
    monkeypatch.setattr(trainer.sft, "train_sft", lambda *a, **k: pytest.fail("SFT ran again"))
    summary = run_pipeline(config)
    assert summary["resumed"] and summary["run_id"] == runs[0].name
    assert summary["skipped"] == ["mine", "synth", "sft"]
    assert summary["ran"] == ["grpo", "evaluate", "promote"]
    assert (sft_model / "metadata.json").stat().st_mtime_ns == sft_mtime

    state = json.loads((runs[0] / "state.json").read_text())
    assert state["status"] == "done"
    mine = state["stages"]["mine"]
    assert mine["train_queries"] == 6 and mine["test_queries"] == 2 and mine["groups"] == 6
    assert state["stages"]["synth"]["rows"] == 6

    grpo = read_metadata(runs[0] / "grpo-model")
    assert grpo["stage"] == "grpo" and grpo["parent"]["stage"] == "sft"
    # The random model cannot write the JSON answer: every sampled completion scored the format floor.
    assert grpo["metrics"]["first_rewards/format/mean"] == -1.0
    assert grpo["metrics"]["first_reward"] == -1.0

    evaluation = json.loads((runs[0] / "evaluation.json").read_text())
    assert evaluation["candidate"]["queries"] == 2 and evaluation["current"]["model"] == tiny_model_path
    assert evaluation["decision"]["promote"] == (
        evaluation["candidate"]["ndcg@10"] > evaluation["current"]["ndcg@10"] - 1.0)
    assert summary["candidate"] == evaluation["candidate"]["ndcg@10"]

    registry = Registry(tmp_path / "registry")
    current = registry.current()
    assert summary["promoted"] and current is not None and current.version == summary["version"] == "v0001"
    assert read_metadata(current.path)["stage"] == "grpo"
    assert json.loads((current.path / "evaluation.json").read_text())["run_id"] == runs[0].name

    # A finished run is not resumed: the next call starts a new run (and the lock was released).
    monkeypatch.setattr(trainer.sft, "train_sft", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        run_pipeline(config)
    assert len(list((tmp_path / "work" / "runs").iterdir())) == 2

    # The registry from the command line: list, then roll back (nothing before v0001), then promote again.
    from grouprank.cli.main import app

    runner = CliRunner()
    listed = runner.invoke(app, ["train", "models", "--registry", str(tmp_path / "registry")])
    assert listed.exit_code == 0 and "v0001" in listed.output
    added = runner.invoke(app, ["train", "promote", "--registry", str(tmp_path / "registry"),
                                str(runs[0] / "sft-model")])
    assert added.exit_code == 0, added.output
    assert registry.current().version == "v0002"
    back = runner.invoke(app, ["train", "promote", "--registry", str(tmp_path / "registry"), "--rollback"])
    assert back.exit_code == 0 and registry.current().version == "v0001"


# -- the slots objective --------------------------------------------------------------------------------


def _ordered_by_the_model(queries):
    """Qrels under which the model's own order is perfect (graded by its rerank score): it can only help."""
    return {q.qid: {q.ids[i]: grade for grade, i in enumerate(sorted(q.rerank, key=q.rerank.get))}
            for q in queries}


def _retriever_top_only(queries):
    """Qrels under which the retriever's order is already perfect: the model cannot help."""
    return {q.qid: {q.ids[0]: 1} for q in queries}


def _calibrate_with(monkeypatch: pytest.MonkeyPatch, make_qrels) -> None:
    """Calibrate with the real ``calibrate_weight``, on qrels made from the reranked queries."""
    import trainer.calibration

    real = trainer.calibration.calibrate_weight
    monkeypatch.setattr(trainer.calibration, "calibrate_weight",
                        lambda queries, qrels, *a, **k: real(queries, make_qrels(queries), *a, **k))


@pytest.fixture(scope="module")
def slots_run(cranfield_slice: dict[str, str], tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    """One slots-objective pipeline run (the default objective) of the tiny model; the gate calibrates on
    qrels where the model helps, so its weight is > 0 and (margin -1) it is promoted."""
    from conftest import make_pipeline_config

    from trainer import run_pipeline

    root = tmp_path_factory.mktemp("slots-pipeline")
    config = make_pipeline_config(cranfield_slice, root, tiny_model_path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("GROUPRANK_CACHE", str(root / "cache"))  # merged adapters
        _calibrate_with(monkeypatch, _ordered_by_the_model)
        summary = run_pipeline(config)
    return {"root": root, "config": config, "summary": summary, "run": Path(summary["run_dir"])}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the module's pipeline run: ~1 min of CPU, far longer on a busy machine
def test_slots_pipeline_stores_the_calibrated_weight_and_serving_uses_it(
        slots_run, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from reranker import load_reranker
    from trainer import Registry
    from trainer.modeldir import read_metadata
    from worker.settings import Settings
    from worker.tasks import serving_reranker

    summary, run = slots_run["summary"], slots_run["run"]
    assert summary["objective"] == "slots" and summary["ran"] == list(
        ("mine", "synth", "sft", "grpo", "evaluate", "promote"))

    # Slot SFT and GRPO trained one LoRA adapter, saved as adapter folders naming the pipeline's base model.
    for stage, steps in (("sft", 2), ("grpo", 1)):
        folder = run / f"{stage}-model"
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_path
        meta = read_metadata(folder)
        assert meta["stage"] == stage and meta["objective"] == "slots" and meta["base_model"] == tiny_model_path
        assert meta["metrics"]["steps"] == steps and meta["data_rows"] == 6
    sft = read_metadata(run / "sft-model")
    assert sft["slot_config"]["lora_r"] == 4 and sft["slot_config"]["freeze_fraction"] == 0.33
    assert sft["slot_config"]["tau"] == 3.0 and sft["slot_config"]["rank_weight"] == 1.0
    grpo = read_metadata(run / "grpo-model")
    assert grpo["parent"]["stage"] == "sft" and grpo["slot_config"]["num_samples"] == 2

    # The gate calibrated both models; the candidate's weight is stored with it.
    evaluation = json.loads((run / "evaluation.json").read_text())
    candidate = evaluation["candidate"]
    weight = candidate["fusion_weight"]
    assert weight > 0 and weight == candidate["calibration"]["weight"] and candidate["calibration"]["adds_value"]
    grid = {f"{0.1 * i:.2f}" for i in range(11)}  # w, and the dense share: the hybrid tier's hits carry it
    assert candidate["queries"] == 2 and {key.split("/")[0] for key in candidate["calibration"]["table"]} == grid
    assert {key.split("/")[-1] for key in candidate["calibration"]["table"] if "/" in key} == grid - {"0.00"}
    assert evaluation["current"]["model"] == tiny_model_path and "fusion_weight" in evaluation["current"]
    assert evaluation["decision"]["promote"] and evaluation["decision"]["fusion_weight"] == weight
    assert summary["fusion_weight"] == weight and summary["promoted"] and summary["version"] == "v0001"

    registry = Registry(slots_run["root"] / "registry")
    current = registry.current()
    assert current is not None and current.version == "v0001"
    stored = read_metadata(current.path)
    assert stored["fusion_weight"] == weight and stored["calibration"] == candidate["calibration"]
    assert stored["serving"]["dense_weight"] == candidate["dense_weight"]  # served as calibrated
    assert (current.path / "adapter_config.json").is_file()

    # Serving the registry's model fuses with the stored weight, unless the caller gives one.
    monkeypatch.setenv("GROUPRANK_CACHE", str(slots_run["root"] / "cache"))
    assert load_reranker("groupwise", model=str(current.path), dtype="float32").weight == weight
    assert load_reranker("groupwise", model=str(current.path), weight=0.9, dtype="float32").weight == 0.9
    served, version = serving_reranker(Settings(registry_dir=slots_run["root"] / "registry",
                                                rerank_options={"dtype": "float32"}))
    assert version == "v0001" and served.weight == weight
    assert served.slot_feed == "fixed"  # trained without seeing earlier scores: read that way (metadata)
    greedy = load_reranker("groupwise", model=str(current.path), slot_feed="greedy", dtype="float32")
    assert greedy.slot_feed == "greedy"
    ranking = served.rerank("flow over a wing", ["lift of a wing in subsonic flow", "heat transfer in a pipe"])
    assert len(ranking.ids) == 2


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the module's pipeline run: ~1 min of CPU, far longer on a busy machine
def test_slots_gate_does_not_promote_a_model_that_adds_nothing(
        slots_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import Registry
    from trainer.modeldir import read_metadata
    from trainer.pipeline import Run, _stage_evaluate, _stage_promote

    # The finished run, copied (paths in its state rewritten), re-evaluated where the retriever is perfect.
    copy = tmp_path / "run"
    shutil.copytree(slots_run["run"], copy)
    state = json.loads((copy / "state.json").read_text().replace(str(slots_run["run"]), str(copy)))
    run = Run(copy, state)
    config = PipelineConfig.from_dict(slots_run["config"])
    monkeypatch.setenv("GROUPRANK_CACHE", str(slots_run["root"] / "cache"))
    _calibrate_with(monkeypatch, _retriever_top_only)
    registry = Registry(slots_run["root"] / "registry")
    before = read_metadata(registry.current().path)["fusion_weight"]

    outputs = _stage_evaluate(config, run)
    assert outputs["fusion_weight"] == 0.0 and outputs["current_fusion_weight"] == 0.0
    # The margin (-1) alone would promote it; the weight 0 does not.
    assert not outputs["promote"] and "adds nothing" in outputs["reason"] and " beats " in outputs["reason"]
    meta = read_metadata(copy / "grpo-model")
    assert meta["fusion_weight"] == 0.0 and meta["calibration"]["adds_value"] is False
    assert meta["calibration"]["weight"] == 0.0

    run.state["stages"]["evaluate"] = outputs
    assert _stage_promote(config, run) == {"promoted": False, "version": None, "current": "v0001"}
    assert registry.versions() == ["v0001"] and read_metadata(registry.current().path)["fusion_weight"] == before


# -- the likelihood objective (the shipped model's) ------------------------------------------------------


def _ordered_by_the_likelihood(queries):
    """Qrels under which the query likelihood's order is perfect: one pass of it needs no slots."""
    return {q.qid: {q.ids[i]: grade for grade, i in enumerate(sorted(q.likelihood, key=q.likelihood.get))}
            for q in queries}


@pytest.fixture(scope="module")
def likelihood_run(cranfield_slice: dict[str, str], tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    """One likelihood-objective pipeline run of the tiny model, calibrated where the likelihood is right."""
    from conftest import make_pipeline_config

    from trainer import run_pipeline

    root = tmp_path_factory.mktemp("likelihood-pipeline")
    config = {**make_pipeline_config(cranfield_slice, root, tiny_model_path), "objective": "likelihood"}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("GROUPRANK_CACHE", str(root / "cache"))
        _calibrate_with(monkeypatch, _ordered_by_the_likelihood)
        summary = run_pipeline(config)
    return {"root": root, "config": config, "summary": summary, "run": Path(summary["run_dir"])}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_likelihood_pipeline_trains_an_adapter_and_serves_the_calibrated_one_pass(
        likelihood_run, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import Registry
    from trainer.modeldir import read_metadata
    from worker.settings import Settings
    from worker.tasks import serving_reranker

    summary, run = likelihood_run["summary"], likelihood_run["run"]
    assert summary["objective"] == "likelihood" and summary["ran"] == list(STAGES)
    for stage in ("sft", "grpo"):
        folder = run / f"{stage}-model"
        assert (folder / "adapter_model.safetensors").is_file()
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_path
        meta = read_metadata(folder)
        assert meta["stage"] == stage and meta["objective"] == "likelihood" and meta["metrics"]["steps"] >= 1
    sft = read_metadata(run / "sft-model")
    assert sft["likelihood_config"]["lora_r"] == 4 and sft["likelihood_config"]["freeze_fraction"] == 0.33
    assert read_metadata(run / "grpo-model")["likelihood_config"]["num_samples"] == 2

    # The gate read both parts; the likelihood alone is right on these qrels, so one pass is served.
    candidate = json.loads((run / "evaluation.json").read_text())["candidate"]
    calibration = candidate["calibration"]
    assert calibration["one_pass"] is not None and any(k.endswith("/0.50") for k in calibration["table"])
    assert candidate["likelihood_weight"] == 1.0 == calibration["serve"]["likelihood_weight"]
    weight = candidate["fusion_weight"]
    assert weight > 0 and weight == calibration["serve"]["weight"] and summary["promoted"]

    current = Registry(likelihood_run["root"] / "registry").current()
    assert current is not None
    stored = read_metadata(current.path)
    assert stored["fusion_weight"] == weight and stored["serving"]["likelihood_weight"] == 1.0
    monkeypatch.setenv("GROUPRANK_CACHE", str(likelihood_run["root"] / "cache"))
    served, _ = serving_reranker(Settings(registry_dir=likelihood_run["root"] / "registry",
                                          rerank_options={"dtype": "float32"}))
    assert (served.weight, served.likelihood_weight) == (weight, 1.0)
    ranking = served.rerank("flow over a wing", ["lift of a wing in subsonic flow", "heat transfer in a pipe"])
    assert ranking.trace.decoding == "likelihood" and ranking.trace.likelihood and ranking.trace.llm_calls == 2


def test_pipeline_config_objective_and_slot_settings() -> None:
    base = {"work_dir": "w", "registry_dir": "r", "index_dir": "i", "queries": "q", "qrels": "qr"}
    config = PipelineConfig.from_dict(base)
    assert config.objective == "slots" and config.sft.lora_r is None  # slot SFT then uses SLOT_LORA_R
    assert (config.sft.freeze_fraction, config.sft.rank_weight, config.sft.tau) == (0.33, 1.0, 3.0)
    assert PipelineConfig.from_dict(config.to_dict()) == config
    assert PipelineConfig.from_dict({**base, "objective": "text", "sft": {"lora_r": 0}}).sft.lora_r == 0
    assert config.fingerprint() != PipelineConfig.from_dict({**base, "objective": "text"}).fingerprint()
    bad = [
        ({"objective": "json"}, "objective", "slots, likelihood, text"),
        ({"objective": "likelihood", "sft": {"lora_r": 0}}, "sft.lora_r", "objective 'likelihood'"),
        ({"sft": {"lora_r": 0}}, "sft.lora_r", "objective 'slots'"),
        ({"sft": {"max_steps": 0}}, "sft.max_steps", "GRPO trains the SFT adapter"),
        ({"sft": {"freeze_fraction": 1.0}}, "sft.freeze_fraction", "in [0.0, 0.99]"),
        ({"sft": {"rank_weight": -1}}, "sft.rank_weight", "in [0.0, 100.0]"),
        ({"sft": {"tau": 0}}, "sft.tau", "in [0.01, 100.0]"),
        ({"sft": {"lora_r": -2}}, "sft.lora_r", ">= 0"),
    ]
    for override, field, message in bad:
        with pytest.raises(InputError, match=re.escape(message)) as info:
            PipelineConfig.from_dict({**base, **override})
        assert info.value.field == field, override
    PipelineConfig.from_dict({**base, "sft": {"max_steps": 0}, "grpo": {"max_steps": 0}})  # nothing to train: fine


def test_pipeline_config_names_its_retrieval_tier() -> None:
    """Mining opens ``index_dir`` (embedded) or ``index`` (open_index settings, e.g. OpenSearch)."""
    base = {"work_dir": "w", "registry_dir": "r", "queries": "q", "qrels": "qr"}
    assert PipelineConfig.from_dict({**base, "index_dir": "i"}).index_target() == "i"
    remote = {"backend": "opensearch", "url": "http://search:9200", "alias": "docs"}
    config = PipelineConfig.from_dict({**base, "index_dir": "", "index": remote})
    assert config.index_target() == remote and PipelineConfig.from_dict(config.to_dict()) == config
    for override, field in (({"index_dir": "i", "index": remote}, "index_dir"), ({"index_dir": ""}, "index_dir"),
                            ({"index_dir": "", "index": {}}, "index")):
        with pytest.raises(InputError) as info:
            PipelineConfig.from_dict({**base, **override})
        assert info.value.field == field, override


def test_the_deployed_retraining_config_trains_the_shipped_kind_of_model() -> None:
    """deploy/train/pipeline.json (the compose train worker's config) is valid and trains what is shipped:
    a likelihood LoRA adapter on the shipped base model, served as the shipped model is."""
    from reranker.models import GROUPRANK_ALIAS, model_metadata

    config = PipelineConfig.load(Path(__file__).resolve().parents[1] / "deploy" / "train" / "pipeline.json")
    shipped = model_metadata(GROUPRANK_ALIAS)
    assert shipped is not None and config.objective == shipped["data"]["objective"] == "likelihood"
    assert config.base_model == shipped["base_model"] and config.sft.lora_r and config.sft.max_steps > 0
    assert config.evaluation.max_doc_chars == config.synthesis.max_doc_chars == shipped["serving"]["max_doc_chars"]
    assert config.evaluation.group_size == shipped["serving"]["group_size"]
    assert config.grpo.batch_size % config.grpo.num_generations == 0 and config.gate.margin > 0
