"""Fusion math on examples computed by hand: the retrievers' (indexer.fusion) and the rerank stage's
final scores (reranker.scoring.fuse)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouprank.scores import min_max
from indexer.fusion import ranks, rrf, weighted
from reranker.scoring import fuse as rerank_fuse


def test_rrf_sums_reciprocal_ranks():
    # k = 1: a = 1/(1+1); b = 1/(1+2) + 1/(1+1) = 5/6; c = 1/(1+3); d = 1/(1+2)
    fused = rrf({"bm25": [("a", 9.0), ("b", 5.0), ("c", 1.0)], "dense": [("b", 0.9), ("d", 0.2)]}, k=1)
    assert [doc for doc, _ in fused] == ["b", "a", "d", "c"]
    assert dict(fused) == pytest.approx({"b": 5 / 6, "a": 1 / 2, "d": 1 / 3, "c": 1 / 4})


def test_rrf_default_k_is_60_and_ignores_scores():
    fused = dict(rrf({"bm25": [("a", 100.0), ("b", -3.0)], "dense": [("b", 0.1)]}))
    assert fused == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 61})


def test_rrf_ties_break_by_best_rank_then_id():
    # k = 0: v = 1/1, w = 1/1, u = 1/2 + 1/2: all exactly 1.0. u's best rank is 2, so it comes last
    # even though its id sorts first; v and w (both best rank 1) are ordered by id.
    fused = rrf({"bm25": [("v", 3.0), ("u", 2.0)], "dense": [("w", 0.9), ("u", 0.8)]}, k=0)
    assert fused == [("v", 1.0), ("w", 1.0), ("u", 1.0)]


def test_rrf_with_one_retriever_empty_keeps_the_other_order():
    fused = rrf({"bm25": [], "dense": [("x", 0.3), ("y", 0.2)]}, k=60)
    assert [doc for doc, _ in fused] == ["x", "y"]
    assert rrf({"bm25": [], "dense": []}) == []


def test_min_max():
    assert min_max([1.0, 3.0, 2.0]) == [0.0, 1.0, 0.5]
    assert min_max([-0.5, 0.5]) == [0.0, 1.0]
    assert min_max([4.0, 4.0, 4.0]) == [1.0, 1.0, 1.0]  # all equal -> 1.0
    assert min_max([7.0]) == [1.0]
    assert min_max([]) == []


def test_weighted_normalises_then_sums_and_missing_docs_add_zero():
    # bm25 10, 6, 2 -> 1, 0.5, 0; dense 0.9, 0.5, 0.1 -> 1, 0.5, 0; weights bm25 0.75, dense 0.25:
    # a = 0.75*1 + 0.25*0 = 0.75; b = 0.75*0.5 + 0.25*1 = 0.625; d = 0.25*0.5 (absent from bm25); c = 0
    fused = weighted(
        {"bm25": [("a", 10.0), ("b", 6.0), ("c", 2.0)], "dense": [("b", 0.9), ("d", 0.5), ("a", 0.1)]},
        {"bm25": 0.75, "dense": 0.25},
    )
    assert [doc for doc, _ in fused] == ["a", "b", "d", "c"]
    assert dict(fused) == pytest.approx({"a": 0.75, "b": 0.625, "d": 0.125, "c": 0.0})


def test_weighted_all_equal_scores_count_fully():
    # bm25 scores all equal -> each normalises to 1.0; dense has a single candidate -> 1.0
    fused = weighted({"bm25": [("x", 3.0), ("y", 3.0)], "dense": [("y", 0.2)]}, {"bm25": 0.5, "dense": 0.5})
    assert fused == [("y", 1.0), ("x", 0.5)]


def test_weighted_ties_and_extreme_weights():
    # weight 1 on dense: bm25 adds nothing, and s normalises to 0, so q, p and s tie at 0. q has best
    # rank 1 (in bm25); p and s both have best rank 2, so they go by id.
    fused = weighted({"bm25": [("q", 2.0), ("p", 1.0)], "dense": [("r", 0.4), ("s", 0.3)]}, {"bm25": 0.0, "dense": 1.0})
    assert fused == [("r", 1.0), ("q", 0.0), ("p", 0.0), ("s", 0.0)]


def test_repeated_document_counts_once_at_its_best_position():
    assert ranks([("a", 3.0), ("b", 2.0), ("a", 1.0)]) == {"a": 1, "b": 2}
    fused = rrf({"bm25": [("a", 3.0), ("b", 2.0), ("a", 1.0)]}, k=0)
    assert dict(fused) == pytest.approx({"a": 1.0, "b": 0.5})
    fused = weighted({"bm25": [("a", 3.0), ("b", 2.0), ("a", 1.0)]}, {"bm25": 1.0})
    assert dict(fused) == pytest.approx({"a": 1.0, "b": 0.5})


# -- the rerank stage's final scores (reranker.scoring.fuse): always in [0, 1] ------------------------
RETRIEVER = [10.0, 8.0, 6.0, 4.0, 2.0]  # minmax: 1, .75, .5, .25, 0


def test_rerank_fusion_puts_fallbacks_below_in_zero_to_one():
    # weight .6: doc 0 fuses .6*.5 + .4*1 = .70 -> .5 + .5*.70 = .85; doc 2 .6*.9 + .4*.5 = .74 -> .87.
    # Fallbacks 1, 3, 4 score .4 * minmax: .30, .10, 0, in retriever order.
    fused = rerank_fuse(5, {0: 0.5, 2: 0.9}, RETRIEVER, weight=0.6)
    assert fused.order == [2, 0, 1, 3, 4] and fused.fallback == [1, 3, 4]
    assert fused.scores == pytest.approx([0.87, 0.85, 0.30, 0.10, 0.0])


def test_the_worst_reranked_document_beats_the_best_fallback():
    # doc 1: rerank 0 and the retriever's worst -> fused 0 -> 0.5; doc 0 (the retriever's best) fell back: .4.
    fused = rerank_fuse(2, {1: 0.0}, [5.0, 1.0], weight=0.6)
    assert fused.order == [1, 0] and fused.scores == pytest.approx([0.5, 0.4])


def test_rerank_fusion_without_retriever_scores_and_with_retriever_fallback():
    # No retriever scores: rerank alone (.1 -> .55), the rank stands in for fallbacks: .4 * (1, 2/3, 1/3).
    bottom = rerank_fuse(4, {3: 0.1}, None)
    assert bottom.order == [3, 0, 1, 2]
    assert bottom.scores == pytest.approx([0.55, 0.4, 0.4 * 2 / 3, 0.4 / 3])
    # "retriever": fallbacks keep minmax(retriever) and reranked documents their fused score, unmapped.
    kept = rerank_fuse(5, {0: 0.5, 2: 0.9}, RETRIEVER, weight=0.6, fallback="retriever")
    assert kept.order == [1, 2, 0, 3, 4] and kept.scores == pytest.approx([0.75, 0.74, 0.70, 0.25, 0.0])


def test_out_of_range_rerank_scores_are_clamped():
    fused = rerank_fuse(3, {0: 1.7, 1: -0.3}, None)
    assert fused.order == [0, 1, 2] and fused.scores == pytest.approx([1.0, 0.5, 0.0])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(0, 12), weight=st.floats(0.0, 1.0),
       fallback=st.sampled_from(["bottom", "retriever"]), with_retriever=st.booleans())
def test_rerank_fusion_range_properties(data, n, weight, fallback, with_retriever):
    scored = data.draw(st.sets(st.integers(0, n - 1))) if n else set()
    rerank = {i: data.draw(st.floats(0.0, 1.0)) for i in scored}
    retriever = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n)) if with_retriever else None
    fused = rerank_fuse(n, rerank, retriever, weight, fallback)
    assert all(0.0 <= s <= 1.0 for s in fused.scores)
    assert fused.scores == sorted(fused.scores, reverse=True)
    if fallback == "bottom":
        ranked = [s for i, s in zip(fused.order, fused.scores, strict=True) if i in scored]
        fell = [s for i, s in zip(fused.order, fused.scores, strict=True) if i not in scored]
        assert all(s >= 0.5 for s in ranked) and all(s <= 0.4 for s in fell)
        assert fused.order[: len(scored)] == [i for i in fused.order if i in scored]
        norm = min_max(retriever if retriever is not None else [float(n - i) for i in range(n)])
        assert fused.fallback == sorted(fused.fallback, key=lambda i: (-norm[i], i))  # retriever order
