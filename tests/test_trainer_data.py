"""Trainer data path: configuration, mining (on a real index), teachers, label fusion and the training rows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from grouprank.errors import InputError
from reranker.parsing import parse_group_scores
from reranker.prompts import ANSWER_PREFIX
from trainer.config import MiningConfig, PipelineConfig, SynthesisConfig
from trainer.mining import MinedDoc, MinedQuery, build_groups, mine, read_mined, split_queries, write_mined
from trainer.rewards import parse_answer
from trainer.synthesis import answer_text, fuse_targets, group_prompt, read_dataset, synthesize
from trainer.teachers import QrelsListwiseTeacher, QrelsPointwiseTeacher, TeacherGroup

QUERIES = {"q-paris": "capital city of France Paris", "q-planets": "largest planet in the solar system",
           "q-none": "programming languages for systems"}
QRELS = {"q-paris": {"paris": 2, "eiffel": 1, "louvre": 1, "berlin": 0},
         "q-planets": {"jupiter": 2, "mars": 1, "moon": 0, "everest": 1}}


# -- configuration -----------------------------------------------------------------------------------------

def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    base = {"work_dir": "w", "registry_dir": "r", "index_dir": "i", "queries": "q", "qrels": "qr"}
    config = PipelineConfig.from_dict({**base, "mining": {"depth": 5}, "grpo": {"reward": {"gamma": 0.3}}})
    assert config.mining.depth == 5 and config.grpo.reward.gamma == 0.3 and config.sft.max_steps == 20
    assert PipelineConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError) as err:
        PipelineConfig.from_dict({**base, "mining": {"depht": 5}})
    assert err.value.field == "mining.depht"
    with pytest.raises(InputError) as err:
        PipelineConfig.from_dict({**base, "grpo": {"reward": {"alpha": 2}}})
    assert err.value.field == "grpo.reward.alpha"
    with pytest.raises(InputError) as err:
        PipelineConfig.from_dict({**base, "grpo": {"batch_size": 6, "num_generations": 4}})
    assert err.value.field == "grpo.batch_size"
    with pytest.raises(InputError) as err:
        SynthesisConfig(a=0.7, b=0.4)
    assert err.value.field == "b"
    bad = tmp_path / "bad.json"
    bad.write_text('{"work_dir": "w",\n "mining": }')
    with pytest.raises(InputError) as err:
        PipelineConfig.load(bad)
    assert err.value.source == str(bad) and err.value.line == 2
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"work_dir": "w"}))
    with pytest.raises(InputError, match="registry_dir"):
        PipelineConfig.load(missing)


# -- mining ------------------------------------------------------------------------------------------------

def test_split_is_seeded_and_independent_of_order() -> None:
    qids = [f"q{i}" for i in range(20)]
    train, test = split_queries(qids, 0.25, seed=3)
    assert len(test) == 5 and len(train) == 15 and set(train).isdisjoint(test)
    shuffled = qids[:]
    random.Random(0).shuffle(shuffled)
    assert set(split_queries(shuffled, 0.25, seed=3)[1]) == set(test)
    assert set(split_queries(qids, 0.25, seed=4)[1]) != set(test)


def test_build_groups_mixes_positives_with_the_hardest_negatives() -> None:
    docs = [MinedDoc(id=f"d{r}", text="t", rank=r, label=1 if r in (4, 9) else 0) for r in range(1, 11)]
    docs.append(MinedDoc(id="missed", text="t", rank=None, label=2))  # a positive the retriever missed
    config = MiningConfig(group_size=4, groups_per_query=2, max_positives=2, shuffle=False)
    groups = build_groups(docs, config, random.Random(0))
    assert len(groups) == 2 and all(len(g) == 4 for g in groups)
    positives = {3, 8, 10}
    for g in groups:
        assert len(positives & set(g)) == 2
    negatives = [i for g in groups for i in g if i not in positives]
    assert negatives == [0, 1, 2, 4]  # ranks 1, 2, 3, 5: the best-ranked negatives, in order
    unlabelled = [MinedDoc(id=f"d{r}", text="t", rank=r) for r in range(1, 8)]
    assert build_groups(unlabelled, config, random.Random(0)) == [[0, 1, 2, 3], [4, 5, 6]]
    shuffled = build_groups(docs, MiningConfig(group_size=4, groups_per_query=2, max_positives=2), random.Random(0))
    assert [sorted(g) for g in shuffled] == [sorted(g) for g in groups]


def test_mine_uses_the_serving_search(service_index_template: Path, tmp_path: Path) -> None:
    from indexer.index import Index

    config = MiningConfig(depth=6, group_size=4, groups_per_query=2, max_positives=2, seed=1)
    with Index.open(service_index_template) as index:
        mined = mine(index, QUERIES, QRELS, config, progress=False)
        hits = index.search(QUERIES["q-paris"], k=6, mode="hybrid")
    paris = mined[0]
    assert [d.id for d in paris.retrieved] == [h.id for h in hits]
    assert [d.score for d in paris.retrieved] == pytest.approx([h.score for h in hits])
    labels = {d.id: d.label for d in paris.candidates}
    assert labels["paris"] == 2 and all(labels[d.id] == QRELS["q-paris"].get(d.id, 0) for d in paris.candidates)
    assert {"paris", "eiffel", "louvre"} <= {d.id for d in paris.candidates}  # missed positives were added
    positives = {i for i, d in enumerate(paris.candidates) if d.label}
    for g in paris.groups:  # up to 4 distinct documents, at most 2 positives (short when negatives run out)
        assert 2 <= len(g) == len(set(g)) <= 4 and 1 <= len(positives & set(g)) <= 2
    none = mined[2]
    assert all(d.label == 0 for d in none.candidates) and none.groups  # judged nothing: hard negatives only
    path = tmp_path / "mined.jsonl"
    write_mined(path, mined)
    assert read_mined(path) == mined
    with Index.open(service_index_template) as index:
        assert mine(index, QUERIES, QRELS, config, progress=False) == mined  # seeded: reproducible


def test_read_mined_names_the_bad_line(tmp_path: Path) -> None:
    good = MinedQuery("q", "query", [MinedDoc(id="a", text="x", rank=1)], [[0]]).to_dict()
    path = tmp_path / "mined.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "groups": [[0, 5]]}) + "\n")
    with pytest.raises(InputError) as err:
        read_mined(path)
    assert err.value.line == 2 and err.value.field == "groups"
    path.write_text(json.dumps({"qid": "q"}) + "\n")
    with pytest.raises(InputError) as err:
        read_mined(path)
    assert err.value.line == 1 and err.value.field == "candidates"


# -- teachers and fusion -----------------------------------------------------------------------------------

def test_fuse_targets_by_hand() -> None:
    # 4 documents; the listwise teacher orders them 2, 0, 3, 1 -> ranks 0..3; L = 1 - ln(rank + 1) / ln(4).
    pointwise = [5.0, 0.0, 10.0, 2.5]
    order = [2, 0, 3, 1]
    rank = {2: 0, 0: 1, 3: 2, 1: 3}
    expected = []
    for i in range(4):
        fused = 0.6 * pointwise[i] / 10 + 0.4 * (1 - math.log(rank[i] + 1) / math.log(4))
        expected.append(math.floor(10 * fused + 0.5))
    assert fuse_targets(pointwise, order) == expected == [5, 0, 10, 2]
    assert fuse_targets([0.0, 0.0], [1, 0], a=0.0, b=1.0) == [0, 10]
    assert fuse_targets([7.0], [0]) == [8]  # one document: its listwise part is 1
    with pytest.raises(InputError):
        fuse_targets([1.0, 2.0], [0, 0])


def test_qrels_teachers() -> None:
    docs = [MinedDoc("a", "t", rank=2, label=0), MinedDoc("b", "t", rank=None, label=2),
            MinedDoc("c", "t", rank=1, label=0), MinedDoc("d", "t", rank=3, label=1), MinedDoc("e", "t", rank=None)]
    group = TeacherGroup("q", docs)
    assert QrelsPointwiseTeacher(2).score([group]) == [[0.0, 10.0, 0.0, 5.0, 0.0]]
    # By grade; ties by retriever rank; unretrieved last.
    assert QrelsListwiseTeacher().rank([group]) == [[1, 3, 2, 0, 4]]
    with pytest.raises(InputError):
        QrelsPointwiseTeacher(0)


def test_synthesized_rows_match_the_serving_prompt(tiny_model_path: str) -> None:
    from reranker import GroupwiseReranker
    from reranker.backends.transformers_backend import TransformersBackend
    from reranker.types import Candidate

    docs = [MinedDoc(id=f"d{i}", text=f"Document {i} " + "about wings and lift " * 30, title=f"T{i}", rank=i + 1,
                     label=int(i == 2)) for i in range(4)]
    mined = [MinedQuery("q1", "lift of wings", docs, [[2, 0, 3, 1]])]
    config = SynthesisConfig(max_doc_chars=120)
    rows = synthesize(mined, QrelsPointwiseTeacher(1), QrelsListwiseTeacher(), config)
    assert len(rows) == 1
    row = rows[0]
    assert row["doc_ids"] == ["d2", "d0", "d3", "d1"]
    # Pointwise: only d2 is relevant; listwise: d2, then by retriever rank d0, d1, d3 (group positions 0, 1, 3, 2).
    assert row["targets"] == fuse_targets([10.0, 0.0, 0.0, 0.0], [0, 1, 3, 2])
    assert parse_answer(row["completion"][0]["content"], 4).scores == row["targets"]
    assert {i: int(s) for i, s in parse_group_scores(answer_text(row["targets"]), 4).scores.items()} \
        == {i + 1: t for i, t in enumerate(row["targets"])}

    # The prompt is byte for byte what the serving GroupwiseReranker sends for the same group, less the
    # answer prefix serving prefills (the training answer is whole and starts with that prefix).
    # Both decoding paths send the same prompt (slot decoding replaces the prefix by the skeleton).
    backend = TransformersBackend(tiny_model_path)
    sent = []
    generate, score_slots = backend.generate, backend.score_slots
    backend.generate = lambda prompts, cfg, deadline=None: (sent.extend(prompts), generate(prompts, cfg, deadline))[1]
    backend.score_slots = lambda prompts, sk, deadline=None, feed="greedy": (
        sent.extend(prompts), score_slots(prompts, sk, deadline, feed=feed))[1]
    reranker = GroupwiseReranker(backend, group_size=4, max_doc_chars=120, decoding="text")
    reranker.rerank("lift of wings", [Candidate(id=d.id, text=d.text, title=d.title) for d in
                                      (docs[2], docs[0], docs[3], docs[1])])
    group = [docs[2], docs[0], docs[3], docs[1]]
    assert [sent[0][:-1]] == [row["prompt"]] == [group_prompt("lift of wings", group, 120)]
    assert sent[0][-1] == {"role": "assistant", "content": ANSWER_PREFIX}
    assert row["completion"][0]["content"].startswith(ANSWER_PREFIX)
    GroupwiseReranker(backend, group_size=4, max_doc_chars=120).rerank(
        "lift of wings", [Candidate(id=d.id, text=d.text, title=d.title) for d in group])
    assert sent[-1] == sent[0]


def test_read_dataset_checks_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    row = {"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant", "content": "y"}],
           "targets": [1, 2]}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "targets": [1, 11]}) + "\n")
    with pytest.raises(InputError) as err:
        read_dataset(path)
    assert (err.value.line, err.value.field) == (2, "targets")
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_dataset(path)


def test_mine_and_synth_commands(service_index_template: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from grouprank.cli.main import app

    queries, qrels = tmp_path / "queries.tsv", tmp_path / "qrels.tsv"
    queries.write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    qrels.write_text("".join(f"{q} 0 {d} {r}\n" for q, docs in QRELS.items() for d, r in docs.items()))
    runner = CliRunner()
    mined = runner.invoke(app, ["train", "mine", "--index", str(service_index_template), "--queries", str(queries),
                                "--qrels", str(qrels), "--out", str(tmp_path / "mined"), "--depth", "5",
                                "--group-size", "3", "--test-fraction", "0.5"])
    assert mined.exit_code == 0, mined.output
    train = read_mined(tmp_path / "mined" / "mined-train.jsonl")
    test = read_mined(tmp_path / "mined" / "mined-test.jsonl")
    assert sorted(m.qid for m in train + test) == ["q-paris", "q-planets"]  # only judged queries, split 1/1
    synth = runner.invoke(app, ["train", "synth", "--mined", str(tmp_path / "mined" / "mined-train.jsonl"),
                                "--qrels", str(qrels), "--out", str(tmp_path / "data.jsonl")])
    assert synth.exit_code == 0, synth.output
    rows = read_dataset(tmp_path / "data.jsonl")
    assert len(rows) == sum(len(m.groups) for m in train) and all(len(r["targets"]) <= 3 for r in rows)
    bad = runner.invoke(app, ["train", "synth", "--mined", str(tmp_path / "nope.jsonl"), "--out",
                              str(tmp_path / "x.jsonl")])
    assert bad.exit_code != 0 and not (tmp_path / "x.jsonl").exists()
