"""Grouping, averaging and fusion math on hand-computed examples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouprank.scores import min_max as minmax
from reranker.scoring import (
    first_stage,
    fuse,
    make_groups,
    mean_rerank_scores,
    renormalised_weight,
    split_balanced,
    window_starts,
)

RETRIEVER = [10.0, 8.0, 6.0, 4.0, 2.0]  # minmax: 1, .75, .5, .25, 0


def test_split_balanced():
    assert split_balanced(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert [len(g) for g in split_balanced(list(range(21)), 20)] == [11, 10]
    assert [len(g) for g in split_balanced(list(range(40)), 20)] == [20, 20]
    assert [len(g) for g in split_balanced(list(range(45)), 20)] == [15, 15, 15]
    assert split_balanced(list(range(3)), 20) == [[0, 1, 2]]
    assert split_balanced([], 20) == []


def test_make_groups_repeat_zero_keeps_retriever_order():
    rounds = make_groups(5, 2, repeats=3, seed=7)
    assert rounds[0] == [[0, 1], [2, 3], [4]]
    for groups in rounds:
        assert sorted(i for g in groups for i in g) == list(range(5))  # each repeat is a partition
        assert [len(g) for g in groups] == [2, 2, 1]


def test_make_groups_is_seeded():
    assert make_groups(40, 20, 3, seed=1) == make_groups(40, 20, 3, seed=1)
    assert make_groups(40, 20, 3, seed=1)[1] != make_groups(40, 20, 3, seed=2)[1]
    rounds = make_groups(40, 20, 3, seed=1)
    assert rounds[1] != rounds[2] and rounds[1] != rounds[0]


def test_mean_rerank_scores_by_hand():
    # Repeat 0: groups [0,1], [2,3], [4]; repeat 1: [3,0], [4,1], [2]. Scores by prompt position.
    results = [
        ([0, 1], {1: 4, 2: 8}),
        ([2, 3], {1: 2, 2: 10}),
        ([4], {1: 0}),
        ([3, 0], {1: 6, 2: 6}),
        ([4, 1], {1: 4, 2: 10}),
        ([2], {}),  # a failed answer adds nothing
    ]
    means = mean_rerank_scores(results)
    assert means == pytest.approx({0: 0.5, 1: 0.9, 2: 0.2, 3: 0.8, 4: 0.2})


def test_minmax():
    assert minmax(RETRIEVER) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert minmax([3.0, 3.0]) == [1.0, 1.0]
    assert minmax([]) == []


def test_fuse_by_hand():
    fused = fuse(5, {0: 0.5, 1: 0.9, 2: 0.2, 3: 0.8, 4: 0.2}, RETRIEVER, weight=0.6)
    # 0: .6*.5+.4*1 = .70; 1: .54+.30 = .84; 2: .12+.20 = .32; 3: .48+.10 = .58; 4: .12+0 = .12
    assert fused.order == [1, 0, 3, 2, 4]
    assert fused.scores == pytest.approx([0.92, 0.85, 0.79, 0.66, 0.56])  # .5 + .5 * [.84, .70, .58, .32, .12]
    assert fused.fallback == []


def test_first_stage_mixes_the_dense_similarity_by_hand():
    # retriever minmax: 1, .75, .5, .25, 0; dense minmax over the present values (the missing one counts as
    # the lowest): .9 -> 1, .5 -> .5, None -> 0, .1 -> 0, .7 -> .75
    dense = [0.9, 0.5, None, 0.1, 0.7]
    assert first_stage(RETRIEVER, dense, 0.4) == pytest.approx([1.0, 0.65, 0.3, 0.15, 0.3])
    assert first_stage(RETRIEVER, dense, 0.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert first_stage(RETRIEVER, [None] * 5, 0.4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    fused = fuse(5, {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}, RETRIEVER, weight=0.5, dense=dense, dense_weight=1.0,
                 fallback="retriever")
    # reranked: .5 * minmax(dense); document 0 fell back to its first-stage part, minmax(dense) = 1
    assert fused.order == [0, 4, 1, 2, 3] and fused.fallback == [0]
    assert fused.scores == pytest.approx([1.0, 0.375, 0.25, 0.0, 0.0])
    # without similarities the dense share is spread in proportion: .4 / (.4 + .6 * (1 - 2/3)) = 2/3
    assert renormalised_weight(0.4, 2 / 3) == pytest.approx(2 / 3) and renormalised_weight(0.4, 0.0) == 0.4
    bm25_only = fuse(5, {0: 0.0, 4: 1.0}, RETRIEVER, weight=0.4, dense=None, dense_weight=2 / 3)
    plain = fuse(5, {0: 0.0, 4: 1.0}, RETRIEVER, weight=2 / 3)
    assert bm25_only.order == plain.order and bm25_only.scores == pytest.approx(plain.scores)


def test_fuse_rerank_only():
    fused = fuse(3, {0: 0.2, 1: 0.7, 2: 0.7}, [9.0, 5.0, 1.0], weight=1.0)
    assert fused.order == [1, 2, 0]  # the 0.7 tie keeps retriever order
    assert fused.scores == pytest.approx([0.85, 0.85, 0.6])
    no_retriever = fuse(3, {0: 0.2, 1: 0.7, 2: 0.9}, None, weight=0.6)
    assert no_retriever.order == [2, 1, 0]
    assert no_retriever.scores == pytest.approx([0.95, 0.85, 0.6])


def test_fuse_fallback_bottom():
    fused = fuse(5, {0: 0.5, 2: 0.9}, RETRIEVER, weight=0.6, fallback="bottom")
    # 0: .3 + .4 = .70; 2: .54 + .2 = .74; 1, 3, 4 unscored: below, in retriever order.
    assert fused.order == [2, 0, 1, 3, 4]
    assert fused.scores == pytest.approx([0.87, 0.85, 0.3, 0.1, 0.0])  # .5 + .5 * fused; fallbacks .4 * minmax
    assert fused.fallback == [1, 3, 4]


def test_fuse_fallback_retriever():
    fused = fuse(5, {0: 0.5, 2: 0.9}, RETRIEVER, weight=0.6, fallback="retriever")
    # Unscored documents keep their normalised retriever score: 1 -> .75, 3 -> .25, 4 -> 0.
    assert fused.order == [1, 2, 0, 3, 4]
    assert fused.scores == pytest.approx([0.75, 0.74, 0.70, 0.25, 0.0])
    assert fused.fallback == [1, 3, 4]


def test_fuse_fallback_without_retriever_scores_uses_rank():
    fused = fuse(4, {3: 0.1}, None, fallback="retriever")
    # Rank stands in for the score: minmax(4, 3, 2, 1) = 1, 2/3, 1/3, 0.
    assert fused.order == [0, 1, 2, 3]
    assert fused.scores == pytest.approx([1.0, 2 / 3, 1 / 3, 0.1])
    bottom = fuse(4, {3: 0.1}, None, fallback="bottom")
    assert bottom.order == [3, 0, 1, 2] and bottom.fallback == [0, 1, 2]


def test_fuse_rejects_unknown_fallback():
    with pytest.raises(ValueError, match="fallback"):
        fuse(2, {}, None, fallback="top")


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    n=st.integers(min_value=0, max_value=30),
    weight=st.floats(min_value=0.0, max_value=1.0),
    fallback=st.sampled_from(["bottom", "retriever"]),
    with_retriever=st.booleans(),
)
def test_fuse_properties(data, n, weight, fallback, with_retriever):
    scored = data.draw(st.sets(st.integers(min_value=0, max_value=max(n - 1, 0)), max_size=n)) if n else set()
    rerank = {i: data.draw(st.floats(min_value=0.0, max_value=1.0)) for i in scored}
    retriever = [data.draw(st.floats(min_value=-50, max_value=50)) for _ in range(n)] if with_retriever else None
    fused = fuse(n, rerank, retriever, weight, fallback)
    assert sorted(fused.order) == list(range(n))
    assert all(a >= b for a, b in zip(fused.scores, fused.scores[1:], strict=False))  # scores in ranked order
    assert set(fused.fallback) == set(range(n)) - scored
    if fallback == "bottom":  # every reranked document above every fallback one
        assert fused.order[: len(scored)] == [i for i in fused.order if i in scored]


def test_window_starts():
    assert window_starts(100, 20, 10) == [80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert window_starts(25, 20, 10) == [5, 0]
    assert window_starts(21, 20, 10) == [1, 0]
    assert window_starts(20, 20, 10) == [0]
    assert window_starts(3, 20, 10) == [0]
    assert window_starts(0, 20, 10) == []
