"""Candidate files in RankGPT, rank_llm and TREC-run-plus-corpus forms."""

import json
from pathlib import Path

import pytest

from grouprank.errors import InputError
from reranker.candidate_files import load_candidates, load_run_candidates

DATA = Path(__import__("os").environ.get("GROUPRANK_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_rankgpt_form(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"query": "flea life", "hits": [
        {"qid": 7, "docid": "b", "content": "second", "score": 1.5, "rank": 2},
        {"qid": 7, "docid": "a", "content": "first", "score": 2.5, "rank": 1},
    ]}]))
    [qc] = load_candidates(path)
    assert (qc.qid, qc.query) == ("7", "flea life")
    assert [(c.id, c.text, c.score) for c in qc.candidates] == [("a", "first", 2.5), ("b", "second", 1.5)]
    assert len(load_candidates(path, depth=1)[0].candidates) == 1


def test_rank_llm_form_jsonl(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"query": {"text": "q one", "qid": 1},
             "candidates": [{"docid": 10, "score": 3.0, "doc": {"contents": "ten", "title": "T"}},
                            {"docid": 11, "score": 2.0, "doc": {"segment": "eleven"}}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    [qc] = load_candidates(path)
    assert qc.qid == "1" and [c.id for c in qc.candidates] == ["10", "11"]
    assert qc.candidates[0].title == "T" and qc.candidates[1].text == "eleven"


def test_trec_run_with_corpus(tmp_path):
    (tmp_path / "run.trec").write_text("q1 Q0 d2 1 5.0 x\nq1 Q0 d1 2 4.0 x\n")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "one"}\n{"_id": "d2", "title": "t", "text": "two"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "numbers"}\n')
    [qc] = load_run_candidates(tmp_path / "run.trec", tmp_path, tmp_path / "queries.jsonl")
    assert [(c.id, c.text, c.score) for c in qc.candidates] == [("d2", "two", 5.0), ("d1", "one", 4.0)]
    (tmp_path / "run.trec").write_text("q1 Q0 missing 1 5.0 x\n")
    with pytest.raises(InputError, match="'missing' of the run is not in the corpus"):
        load_run_candidates(tmp_path / "run.trec", tmp_path, tmp_path / "queries.jsonl")


def test_bad_candidate_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "hits": []}\n{"foo": 1}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: unknown candidate format"):
        load_candidates(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"query": "q", "hits": [')
    with pytest.raises(InputError, match="malformed JSON"):
        load_candidates(broken)


@pytest.mark.skipif(not (DATA / "trec-dl-2019").is_dir(), reason=f"TREC DL19 data not found under {DATA}")
def test_dl19_bm25_candidates():
    sets = load_candidates(DATA / "trec-dl-2019" / "candidates" / "BM25_top100.json")
    assert len(sets) == 43 and all(len(qc.candidates) == 100 for qc in sets)
    assert sets[0].qid == "264014"
