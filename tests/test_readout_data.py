"""Label-free training data for the read-out: query cleaning, resumable synthesis, the round-trip filter
through a real index, the teacher and its calibration, group sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grouprank.errors import InputError
from indexer.documents import Document
from trainer.readout_data import (
    Candidate,
    MinedSet,
    SyntheticQuery,
    calibrate_teacher,
    clean_query,
    read_sets,
    round_trip,
    sample_groups,
    synthesize_queries,
    teacher_scores,
    write_sets,
)


def test_clean_query() -> None:
    assert clean_query(" What causes tides? Answer: the moon\nmore") == "What causes tides?"
    assert clean_query('"how tall is the eiffel tower"') == "how tall is the eiffel tower"
    assert clean_query("Hi") is None  # too short
    assert clean_query("the the the the the the the the") is None  # a loop, not a query
    assert clean_query("123 456 789") is None


def test_synthesis_is_cached_and_resumes(tmp_path: Path) -> None:
    docs = [Document(id=f"d{i}", text=f"passage number {i} about a topic with enough words in it", title="",
                     metadata={}) for i in range(10)]
    calls: list[int] = []

    def generate(prompts: list[str]) -> list[str]:
        calls.append(len(prompts))
        return [" what is passage number " + p.split("passage number ")[1].split()[0] for p in prompts]

    cache = tmp_path / "synthetic.jsonl"
    first = synthesize_queries(generate, docs, 4, cache, seed=1, batch=2)
    assert len(first) == 4 and calls == [2, 2]
    again = synthesize_queries(generate, docs, 6, cache, seed=1, batch=2)
    assert again[:4] == first and len(again) == 6
    assert calls == [2, 2, 2]  # only the passages not tried yet
    for q in again:  # each query names its own passage
        assert q.query.endswith(q.doc_id[1:])


def test_round_trip_keeps_queries_that_find_their_passage(service_index_template: Path) -> None:
    from indexer.index import Index

    queries = [SyntheticQuery("paris", "capital city of France"), SyntheticQuery("paris", "largest desert on earth"),
               SyntheticQuery("penguin", "flightless birds of the southern hemisphere")]
    with Index.open(service_index_template) as index:
        kept, dropped = round_trip(index, queries, keep_k=2, depth=5)
    assert dropped == 1 and [k.query for k in kept] == ["capital city of France", queries[2].query]
    for k in kept:
        assert len(k.candidates) == 5 and sum(c.positive for c in k.candidates) == 1
        assert k.source_rank <= 2 and all(c.bm25 is not None or c.dense is not None for c in k.candidates)


def _set(qid: str, bm25: list[float], dense: list[float], positive: int | None = None) -> MinedSet:
    cands = [Candidate(f"{qid}-{i}", f"text {i}", "", b, d, i == positive)
             for i, (b, d) in enumerate(zip(bm25, dense, strict=True))]
    return MinedSet(qid, "q", cands, 1)


def test_teacher_scores_by_hand() -> None:
    s = _set("q", [4.0, 2.0, None, 0.0], [0.2, 0.9, 0.5, 0.1], positive=3)  # type: ignore[list-item]
    # bm25 min-max (a miss counts as the lowest): 1, .5, 0, 0; dense: .125, 1, .5, 0
    fused = [0.5 * 1 + 0.5 * 0.125, 0.5 * 0.5 + 0.5 * 1.0, 0.5 * 0.5, 0.0]
    want = [10 * (f - 0.0) / (0.75 - 0.0) for f in fused]
    want[3] = 10.0  # the passage the query was written for
    assert teacher_scores(s.candidates, {"bm25": 0.5, "dense": 0.5}) == pytest.approx(want)


def test_calibration_picks_the_signal_that_ranks() -> None:
    sets = [_set(f"q{k}", [1.0, 2.0, 3.0, 4.0], [0.9, 0.1, 0.2, 0.3]) for k in range(3)]
    qrels = {f"q{k}": {f"q{k}-0": 2} for k in range(3)}
    result = calibrate_teacher(sets, qrels)
    assert result["weights"]["dense"] >= 0.6 and result["ndcg@10"] == pytest.approx(1.0)
    assert result["table"]["0.0"] < 0.5  # BM25 alone puts the relevant document last


def test_groups_hold_the_positive_and_round_trip_through_files(tmp_path: Path) -> None:
    s = _set("q", [float(i) for i in range(30)], [0.0] * 30, positive=7)
    groups = sample_groups([s], {"bm25": 1.0, "dense": 0.0}, group_size=20, per_query=2, seed=3, max_doc_chars=6)
    assert len(groups) == 2
    for g in groups:
        assert len(g.texts) == 20 and "text 7" in g.texts and max(len(t) for t in g.texts) <= 6  # cut as served
        assert g.targets[g.texts.index("text 7")] == 10.0
    assert groups[0].texts != groups[1].texts  # shuffled draws
    write_sets(tmp_path / "mined.jsonl", [s])
    assert read_sets(tmp_path / "mined.jsonl") == [s]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"qid": "x"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: malformed mined set"):
        read_sets(tmp_path / "bad.jsonl")
