"""The whole retraining pipeline end to end on a tiny random model over a slice of Cranfield: mine (real
hybrid index) -> synth (qrels teachers) -> SFT -> GRPO -> evaluate (the engine's eval rerank) -> promote;
a crash in GRPO, then a resumed run; and the registry through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.mark.slow
def test_pipeline_end_to_end_with_crash_and_resume(pipeline_config, tiny_model_path: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.grpo
    import trainer.sft
    from trainer import Registry, run_pipeline
    from trainer.modeldir import read_metadata

    config = pipeline_config(tmp_path)

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
