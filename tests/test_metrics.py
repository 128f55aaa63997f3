"""Metrics against hand-computed values (trec_eval semantics)."""

import math

import pytest

from grouprank.errors import InputError
from grouprank.metrics import evaluate, per_query
from grouprank.trec_files import read_qrels, read_run, write_run

QRELS = {
    "q1": {"d1": 3, "d2": 1, "d3": 0},
    "q2": {"a": 1},
    "q3": {"x": 0},  # no relevant document: not averaged over
}


def test_ndcg_hand_computed():
    run = {"q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0}}  # q2 missing -> counts as 0
    dcg = 0 + 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    values = per_query(QRELS, run, ["ndcg@10"])["ndcg@10"]
    assert set(values) == {"q1", "q2"}
    assert values["q1"] == pytest.approx(dcg / idcg, abs=1e-4)
    assert values["q2"] == 0.0
    assert evaluate(QRELS, run, ["ndcg@10"])["ndcg@10"] == pytest.approx(dcg / idcg / 2, abs=1e-4)


def test_ndcg_cutoff_ignores_lower_ranks():
    run = {"q2": {f"n{i}": 100.0 - i for i in range(10)} | {"a": 1.0}}  # relevant doc at rank 11
    assert evaluate(QRELS, run, ["ndcg@10"])["ndcg@10"] == 0.0
    assert evaluate(QRELS, run, ["ndcg@20"])["ndcg@20"] > 0.0


def test_ties_broken_by_docid_descending_like_trec_eval():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0}}  # trec_eval puts "b" first
    assert evaluate(qrels, run, ["ndcg@10"])["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == pytest.approx(0.5)


def test_mrr_and_recall():
    run = {
        "q1": {"d3": 3.0, "d2": 2.0, "d1": 1.0},  # first relevant (d2) at rank 2
        "q2": {f"n{i}": 100.0 - i for i in range(10)} | {"a": 1.0},  # rank 11: outside mrr@10
    }
    m = evaluate(QRELS, run, ["mrr@10", "recall@2", "recall@100"])
    assert m["mrr@10"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)  # q1: 1 of 2 relevant in top 2
    assert m["recall@100"] == pytest.approx(1.0)


def test_unknown_metric_is_an_input_error():
    with pytest.raises(InputError, match="unknown metric"):
        evaluate(QRELS, {}, ["bleu"])
    with pytest.raises(InputError, match="cut-off"):
        evaluate(QRELS, {}, ["ndcg"])


def test_run_roundtrip_and_qrels_formats(tmp_path):
    run = {"q1": {"d1": 0.5, "d2": 1.5}, "q2": {"z": -1.0}}
    path = tmp_path / "run.trec"
    write_run(path, run, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0].split()[:4] == ["q1", "Q0", "d2", "1"]
    assert read_run(path) == run  # 6 decimals are written: these values are exact

    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 d1 2\nq1 0 d2 0\n")
    beir = tmp_path / "test.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n")
    assert read_qrels(trec) == read_qrels(beir) == {"q1": {"d1": 2, "d2": 0}}


def test_bad_run_and_qrels_lines_name_the_line(tmp_path):
    bad_run = tmp_path / "bad.trec"
    bad_run.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 notanumber t\n")
    with pytest.raises(InputError) as err:
        read_run(bad_run)
    assert f"{bad_run}:2" in str(err.value)
    bad_qrels = tmp_path / "bad.txt"
    bad_qrels.write_text("q1 0 d1 1\nq1 d2\n")
    with pytest.raises(InputError, match=r"bad.txt:2"):
        read_qrels(bad_qrels)
