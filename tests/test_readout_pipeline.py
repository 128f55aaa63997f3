"""``grouprank train pipeline`` with objective "readout": queries synthesized by SmolLM2 from a real index's
passages, round-trip filtered and mined through it, the teacher calibrated on the judged train queries, a
read-out head trained on the tiny model's states, GRPO, the calibrated gate and the registry; the promoted
folder is served in one pass per group. The judged queries never become training targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_readout_pipeline_trains_and_promotes_a_served_head(pipeline_config, tmp_path: Path) -> None:
    from reranker import load_reranker
    from reranker.models import HEAD_FILE
    from trainer import Registry, run_pipeline

    config = {**pipeline_config(tmp_path), "objective": "readout",
              "readout": {"queries": 12, "generator": "smollm2-135m-instruct", "keep_k": 8, "depth": 8,
                          "layers": 1, "group_size": 4, "max_doc_chars": 80, "epochs": 10, "grpo_epochs": 1}}
    summary = run_pipeline(config)
    assert summary["objective"] == "readout"
    # the margin is -1, so only a calibrated fusion weight of 0 (a random tiny model adds nothing) stops it
    assert summary["promoted"] == (summary["fusion_weight"] > 0)
    run = Path(summary["run_dir"])
    stages = json.loads((run / "state.json").read_text())["stages"]
    mine, synth = stages["mine"], stages["synth"]
    assert mine["synthesized"] == 12 and 0 < mine["kept"] <= 12 and mine["kept"] + mine["dropped"] == 12
    assert synth["rows"] == mine["kept"] and set(synth["teacher"]) == {"bm25", "dense"}
    test_rows = [json.loads(line) for line in (run / "mined-test.jsonl").read_text().splitlines()]
    qrels = [line.split() for line in Path(config["qrels"]).read_text().splitlines()]
    held_out = {d["id"] for row in test_rows for d in row["candidates"]}
    held_out |= {doc for q, _, doc, _ in qrels if q in {row["qid"] for row in test_rows}}
    sources = {json.loads(line)["doc_id"] for line in (run / "synthetic-queries.jsonl").read_text().splitlines()}
    assert sources and not sources & held_out  # no query was written from a test query's candidates
    judged = {line.split("\t")[0] for line in Path(config["queries"]).read_text().splitlines()}
    trained = {json.loads(line)["qid"] for line in (run / "readout-groups.jsonl").read_text().splitlines()}
    assert not trained & judged

    model = Path(stages["grpo"]["model"])
    if summary["promoted"]:
        assert Registry(config["registry_dir"]).current().path.name == summary["version"]
    assert (model / HEAD_FILE).is_file() and stages["grpo"]["steps"] == synth["rows"]
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["serving"]["decoding"] == "readout" and metadata["serving"]["layers"] == 1
    reranker = load_reranker("groupwise", model=str(model))
    ranking = reranker.rerank("what is a boundary layer", ["The boundary layer is thin.", "Bananas.", "Heat.",
                                                             "Wings and lift.", "Shock waves."])
    assert ranking.trace.decoding == "readout" and ranking.trace.llm_calls == 2  # 5 documents, groups of 4
    assert len(ranking.signals["groupwise"]) == 5


def test_readout_settings_are_checked_with_their_name(pipeline_config, tmp_path: Path) -> None:
    from grouprank.errors import InputError
    from trainer.config import PipelineConfig

    base = {**pipeline_config(tmp_path), "objective": "readout"}
    assert PipelineConfig.from_dict(base).readout.layers == 15
    with pytest.raises(InputError, match="must be <= depth") as info:
        PipelineConfig.from_dict({**base, "readout": {"keep_k": 50, "depth": 30}})
    assert info.value.field == "readout.keep_k"
    with pytest.raises(InputError) as info:
        PipelineConfig.from_dict({**base, "readout": {"layer": 4}})
    assert info.value.field == "readout.layer"
