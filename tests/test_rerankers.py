"""Groupwise, pointwise and listwise rerankers: grouping, fusion, fallback, deadlines, batching, bad input.

These tests drive the rerankers with a scripted backend. It stands in for an LLM because they need exact,
known model outputs (which scores, which failures, which deadline); the end-to-end tests with a real
tiny transformer live with the backends.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable

import pytest

from grouprank.errors import InputError
from reranker import (
    Candidate,
    GroupwiseReranker,
    ListwiseReranker,
    PointwiseReranker,
    PromptTemplate,
    RerankRequest,
    load_reranker,
)
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages

Answer = Callable[[Messages], "str | Completion"]


class ScriptedBackend(Backend):
    """Stands in for an LLM (see the module docstring): ``answer(prompt)`` gives each completion. It
    records every ``generate`` call and honours the deadline like a real backend."""

    name = "scripted"

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[list[Messages]] = []
        self.deadlines: list[float | None] = []

    def generate(
        self, prompts: list[Messages], config: GenerationConfig, deadline: float | None = None
    ) -> list[Completion]:
        self.calls.append(prompts)
        self.deadlines.append(deadline)
        out = []
        for prompt in prompts:
            if self.expired(deadline):
                out.append(Completion("", error="deadline"))
                continue
            answer = self.answer(prompt)
            if isinstance(answer, str):
                answer = Completion(answer, self.count_tokens(user_text(prompt)), self.count_tokens(answer))
            out.append(answer)
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def user_text(prompt: Messages) -> str:
    """The user message (a groupwise prompt ends with an answer prefix, which a real backend continues;
    the scripted answers are whole, as a real backend's completion text is)."""
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def docs_in(prompt: Messages) -> list[str]:
    """The document texts of a groupwise (``[i]. text``) or listwise (``[i] text``) prompt, in order."""
    return re.findall(r"^\[\d+\]\.? (.*)$", user_text(prompt), re.M)


def scores_json(scores: list[float | None]) -> str:
    """A groupwise answer; None leaves that document out."""
    return json.dumps({f"[{i}]": s for i, s in enumerate(scores, 1) if s is not None})


def by_table(table: dict[str, list[float]]) -> Answer:
    """Answer each group from ``table[doc]``: the score for the doc's 1st, 2nd, ... appearance."""
    seen: Counter[str] = Counter()

    def answer(prompt: Messages) -> str:
        scores = []
        for doc in docs_in(prompt):
            scores.append(table[doc][seen[doc]])
            seen[doc] += 1
        return "```json\n" + scores_json(scores) + "\n```"

    return answer


FIVE = [Candidate(name, name, score) for name, score in zip("abcde", [10.0, 8.0, 6.0, 4.0, 2.0], strict=True)]


# --- groupwise -----------------------------------------------------------------------------------


def test_groupwise_hand_computed_two_repeats():
    # 5 docs, G=2, R=2: each doc is scored twice (repeat 0 in retriever order, repeat 1 shuffled).
    table = {"a": [4, 6], "b": [8, 10], "c": [2, 2], "d": [10, 6], "e": [0, 4]}
    backend = ScriptedBackend(by_table(table))
    ranking = GroupwiseReranker(backend, group_size=2, repeats=2, seed=3).rerank("q", FIVE)
    # rerank = mean/10: a .5, b .9, c .2, d .8, e .2; minmax(retriever) = 1, .75, .5, .25, 0
    # final = .6 * rerank + .4 * minmax: a .70, b .84, c .32, d .58, e .12
    assert ranking.ids == ["b", "a", "d", "c", "e"]
    assert ranking.scores == pytest.approx([0.92, 0.85, 0.79, 0.66, 0.56])  # .5 + .5 * [.84, .70, .58, .32, .12]
    assert ranking.rerank_scores == pytest.approx({"a": 0.5, "b": 0.9, "c": 0.2, "d": 0.8, "e": 0.2})
    assert ranking.reranked == ranking.ids and ranking.fallback == []
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 6  # 3 groups x 2 repeats, one call
    assert [docs_in(p) for p in backend.calls[0][:3]] == [["a", "b"], ["c", "d"], ["e"]]
    trace = ranking.trace
    assert (trace.llm_calls, trace.critical_path_depth, trace.parse_failures, trace.errors) == (6, 1, 0, [])
    assert trace.prompt_tokens == sum(backend.count_tokens(user_text(p)) for p in backend.calls[0])
    assert trace.completion_tokens > 0 and trace.wall_ms >= 0


@pytest.mark.parametrize(("finish_reason", "scored"), [("stop", ["b", "a"]), ("length", ["a"]), (None, ["a"])])
def test_groupwise_keeps_the_last_score_of_an_answer_that_stopped(finish_reason, scored):
    """A backend strips the closing brace it stopped at: the last value is whole only if the model stopped."""
    answer = Completion('{"[1]": 4, "[2]": 10', 5, 8, finish_reason=finish_reason)
    backend = ScriptedBackend(lambda prompt: answer)
    ranking = GroupwiseReranker(backend, group_size=2, weight=1.0).rerank("q", FIVE[:2])
    assert ranking.reranked == scored
    assert ranking.trace.parse_failures == (0 if finish_reason == "stop" else 1)


def test_groupwise_batch_is_one_generate_call():
    backend = ScriptedBackend(lambda p: scores_json([5] * len(docs_in(p))))
    reranker = GroupwiseReranker(backend, group_size=20, repeats=2)
    big = [f"doc {i}" for i in range(45)]
    rankings = reranker.rerank_batch([("q1", big), RerankRequest("q2", ["x", "y"]), ("q3", [])])
    assert len(backend.calls) == 1
    assert len(backend.calls[0]) == (3 + 1) * 2  # 45 -> 3 groups of 15, 2 -> 1 group; 2 repeats
    assert [len(docs_in(p)) for p in backend.calls[0][:3]] == [15, 15, 15]
    assert [r.trace.llm_calls for r in rankings] == [6, 2, 0]
    assert [r.trace.critical_path_depth for r in rankings] == [1, 1, 1]
    assert len(rankings[0]) == 45 and rankings[1].ids in (["0", "1"], ["1", "0"]) and len(rankings[2]) == 0


def test_rerank_matches_the_same_request_in_a_batch():
    table = {c.id: [s, 10 - s] for c, s in zip(FIVE, [3, 9, 1, 7, 5], strict=True)} | {"z": [4, 4]}
    reranker = GroupwiseReranker(ScriptedBackend(by_table(table)), group_size=2, repeats=2)
    alone = reranker.rerank("q", FIVE)
    reranker.backend = ScriptedBackend(by_table(table))
    in_batch = reranker.rerank_batch([("other", [Candidate("z", "z", 1.0)]), ("q", FIVE)])[1]
    assert (alone.ids, alone.scores) == (in_batch.ids, in_batch.scores)


def test_no_retriever_scores_means_rerank_only():
    backend = ScriptedBackend(lambda p: scores_json([3, 9, 6][: len(docs_in(p))]))
    ranking = GroupwiseReranker(backend, weight=0.6).rerank("q", ["first", "second", "third"])
    assert ranking.ids == ["1", "2", "0"]  # plain strings get their position as id
    assert ranking.scores == pytest.approx([0.95, 0.8, 0.65])  # .5 + .5 * rerank


def test_failed_group_falls_to_the_bottom_in_retriever_order():
    def answer(prompt: Messages) -> str:
        docs = docs_in(prompt)
        return "I cannot score these." if "c" in docs else scores_json([9] * len(docs))

    ranking = GroupwiseReranker(ScriptedBackend(answer), group_size=2).rerank("q", FIVE)
    # Groups [a,b] [c,d] [e]; [c,d] failed. a: .5+.5*(.54+.4), b: .5+.5*(.54+.3), e: .5+.5*.54; c, d below:
    # .4 * minmax(retriever) = .4 * .5, .4 * .25.
    assert ranking.ids == ["a", "b", "e", "c", "d"]
    assert ranking.scores == pytest.approx([0.97, 0.92, 0.77, 0.2, 0.1])
    assert ranking.reranked == ["a", "b", "e"] and ranking.fallback == ["c", "d"]
    assert set(ranking.rerank_scores) == {"a", "b", "e"}
    assert ranking.trace.parse_failures == 1 and ranking.trace.errors == []


def test_failed_group_with_retriever_fallback_keeps_its_fused_position():
    def answer(prompt: Messages) -> str:
        docs = docs_in(prompt)
        return "no" if "c" in docs else scores_json([0] * len(docs))

    ranking = GroupwiseReranker(ScriptedBackend(answer), group_size=2, fallback="retriever").rerank("q", FIVE)
    # a: 0+.4, b: 0+.3, e: 0; c and d keep minmax(retriever): .5 and .25.
    assert ranking.ids == ["c", "a", "b", "d", "e"]
    assert ranking.scores == pytest.approx([0.5, 0.4, 0.3, 0.25, 0.0])
    assert ranking.fallback == ["c", "d"]


def test_partial_answer_and_a_second_repeat():
    # The model leaves out the document at position 2 in every answer of repeat 0; repeat 1 answers all.
    calls = Counter[str]()

    def answer(prompt: Messages) -> str:
        calls["n"] += 1
        docs = docs_in(prompt)
        if calls["n"] <= 3:  # repeat 0: groups [a,b] [c,d] [e]
            return scores_json([7 if i == 0 else None for i in range(len(docs))])
        return scores_json([1] * len(docs))

    ranking = GroupwiseReranker(ScriptedBackend(answer), group_size=2, repeats=2).rerank("q", FIVE)
    assert ranking.trace.parse_failures == 2  # [a,b] and [c,d] each missed one id
    assert ranking.fallback == []  # b and d got their score from repeat 1
    assert ranking.rerank_scores == pytest.approx({"a": 0.4, "b": 0.1, "c": 0.4, "d": 0.1, "e": 0.4})
    calls.clear()
    one_repeat = GroupwiseReranker(ScriptedBackend(answer), group_size=2).rerank("q", FIVE)
    # Without the second repeat b and d have no score: a .42+.4, c .42+.2, e .42+0, then b, d.
    assert one_repeat.ids == ["a", "c", "e", "b", "d"] and one_repeat.fallback == ["b", "d"]


def test_backend_error_is_reported_and_the_group_falls_back():
    def answer(prompt: Messages) -> str | Completion:
        docs = docs_in(prompt)
        return Completion("", error="CUDA out of memory") if "a" in docs else scores_json([5] * len(docs))

    ranking = GroupwiseReranker(ScriptedBackend(answer), group_size=2).rerank("q", FIVE)
    assert ranking.fallback == ["a", "b"] and ranking.ids[-2:] == ["a", "b"]
    assert ranking.trace.errors == ["repeat 0 group 0: CUDA out of memory"]
    assert ranking.trace.parse_failures == 0


def test_deadline_goes_to_the_backend_as_an_absolute_time():
    backend = ScriptedBackend(lambda p: scores_json([5] * len(docs_in(p))))
    reranker = GroupwiseReranker(backend, deadline_ms=60_000)
    before = time.monotonic()
    reranker.rerank("q", FIVE)
    reranker.rerank("q", FIVE, deadline_ms=30_000)
    after = time.monotonic()
    assert before + 60 <= backend.deadlines[0] <= after + 60
    assert before + 30 <= backend.deadlines[1] <= after + 30
    GroupwiseReranker(backend).rerank("q", FIVE)
    assert backend.deadlines[2] is None


def test_expired_deadline_keeps_retriever_order():
    backend = ScriptedBackend(lambda p: scores_json([10] * len(docs_in(p))))
    ranking = GroupwiseReranker(backend, group_size=2).rerank("q", FIVE[::-1], deadline_ms=0)
    assert ranking.ids == ["a", "b", "c", "d", "e"]  # retriever order (by score), not input order
    assert ranking.reranked == [] and ranking.fallback == ranking.ids
    assert ranking.trace.errors == [f"repeat 0 group {g}: deadline" for g in range(3)]


def test_deadline_in_the_middle_of_a_batch():
    # The backend finishes the first two prompts, then reports the deadline (as a real one would when
    # time runs out mid-batch).
    answered = Counter[str]()

    def answer(prompt: Messages) -> str | Completion:
        answered["n"] += 1
        docs = docs_in(prompt)
        return scores_json([2] * len(docs)) if answered["n"] <= 2 else Completion("", error="deadline")

    ranking = GroupwiseReranker(ScriptedBackend(answer), group_size=2).rerank("q", FIVE, deadline_ms=10_000)
    assert ranking.reranked == ["a", "b", "c", "d"] and ranking.fallback == ["e"]
    assert ranking.trace.errors == ["repeat 0 group 2: deadline"]


def test_truncation_is_counted_and_applied():
    long_doc = Candidate("long", "word " * 2000, 1.0)
    backend = ScriptedBackend(lambda p: scores_json([5] * len(docs_in(p))))
    ranking = GroupwiseReranker(backend, max_doc_chars=100).rerank("q", [long_doc, Candidate("s", "short", 0.5)])
    assert ranking.trace.truncated_docs == 1
    assert docs_in(backend.calls[0][0])[0] == "word " * 20
    by_tokens = GroupwiseReranker(backend, max_doc_chars=None, max_doc_tokens=7).rerank("q", [long_doc])
    assert by_tokens.trace.truncated_docs == 1
    assert backend.count_tokens(docs_in(backend.calls[1][0])[0]) == 7


def test_top_k_and_the_ranking_api():
    backend = ScriptedBackend(lambda p: scores_json([1, 9, 5, 3, 7][: len(docs_in(p))]))
    ranking = GroupwiseReranker(backend).rerank("q", FIVE, top_k=3)
    # b: .6*.9+.4*.75 = .84, c: .3+.2 = .50, a: .06+.4 = .46, e: .42+0 = .42, d: .18+.1 = .28
    assert len(ranking) == 3 and ranking.ids == ["b", "c", "a"]
    assert ranking.scores == pytest.approx([0.92, 0.75, 0.73])  # .5 + .5 * [.84, .50, .46]
    assert list(ranking) == list(zip(ranking.ids, ranking.scores, strict=True))
    assert ranking.top(2) == [("b", ranking.scores[0]), ("c", ranking.scores[1])]
    assert ranking.rerank_scores == pytest.approx({"b": 0.9, "c": 0.5, "a": 0.1})
    data = json.loads(json.dumps(ranking.to_dict()))
    assert data["ids"] == ["b", "c", "a"] and data["method"] == "groupwise"
    assert data["trace"]["llm_calls"] == 1 and data["trace"]["critical_path_depth"] == 1


def test_custom_template_is_used():
    template = PromptTemplate(system="", user="CUSTOM {query}\n{documents}", kind="groupwise")
    backend = ScriptedBackend(lambda p: scores_json([5] * len(docs_in(p))))
    GroupwiseReranker(backend, template=template).rerank("q", ["x"])
    assert backend.calls[0][0] == [{"role": "user", "content": "CUSTOM q\n[1]. x"}]
    with pytest.raises(InputError, match="listwise template"):
        GroupwiseReranker(backend, template=PromptTemplate("", "{query} {documents}", "listwise"))


# --- bad input -----------------------------------------------------------------------------------


def test_empty_candidates_make_no_llm_call():
    backend = ScriptedBackend(lambda p: "unused")
    for reranker in (GroupwiseReranker(backend), PointwiseReranker(backend), ListwiseReranker(backend)):
        ranking = reranker.rerank("q", [])
        assert ranking.ids == [] and ranking.trace.llm_calls == 0 and ranking.trace.critical_path_depth == 0
    assert backend.calls == []


@pytest.mark.parametrize(
    "candidates, message",
    [
        ([Candidate("a", "x"), Candidate("b", "y"), Candidate("a", "z")], "duplicate candidate id 'a'"),
        (["x", {"id": "0", "text": "y"}], "duplicate candidate id '0'"),
        ([Candidate("a", "x", 1.0), Candidate("b", "y")], "candidate 'b' has no retriever score"),
        ([{"text": "no id"}], "missing candidate id"),
        ([{"id": "a"}], "missing candidate text"),
        ([{"id": "a", "text": "x", "score": float("nan")}], "finite number"),
        ([{"id": "a", "text": "x", "dense": "high"}], "candidates[0].dense"),
        ([{"id": "a", "text": 3}], "must be a string"),
        ([42], "must be a Candidate, a string or a dict"),
    ],
)
def test_bad_candidates_are_named(candidates, message):
    backend = ScriptedBackend(lambda p: "unused")
    with pytest.raises(InputError, match=re.escape(message)):
        GroupwiseReranker(backend).rerank("q", candidates)
    assert backend.calls == []


def test_bad_input_error_names_the_field():
    backend = ScriptedBackend(lambda p: "unused")
    with pytest.raises(InputError) as err:
        GroupwiseReranker(backend).rerank_batch([("q", ["x"]), ("q", ["x", "y", {"id": "1", "text": "z"}])])
    assert err.value.field == "requests[1].candidates[2].id"
    with pytest.raises(InputError, match="use rerank"):
        GroupwiseReranker(backend).rerank_batch(("q", ["x"]))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="query must be a string"):
        GroupwiseReranker(backend).rerank(None, ["x"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="top_k"):
        GroupwiseReranker(backend).rerank("q", ["x"], top_k=-1)
    with pytest.raises(InputError, match="candidates must be a list"):
        GroupwiseReranker(backend).rerank("q", "one document")  # type: ignore[arg-type]
    assert backend.calls == []


@pytest.mark.parametrize(
    "cls, options, field",
    [
        (GroupwiseReranker, {"group_size": 0}, "group_size"),
        (GroupwiseReranker, {"repeats": 1.5}, "repeats"),
        (GroupwiseReranker, {"weight": 1.5}, "weight"),
        (GroupwiseReranker, {"fallback": "top"}, "fallback"),
        (GroupwiseReranker, {"deadline_ms": -1}, "deadline_ms"),
        (PointwiseReranker, {"max_doc_chars": 0}, "max_doc_chars"),
        (ListwiseReranker, {"stride": 0}, "stride"),
        (ListwiseReranker, {"window": 10, "stride": 11}, "stride"),
    ],
)
def test_bad_options_are_named(cls, options, field):
    with pytest.raises(InputError) as err:
        cls(ScriptedBackend(lambda p: ""), **options)
    assert err.value.field == field


# --- pointwise -----------------------------------------------------------------------------------


def test_pointwise_scores_every_document_in_one_call():
    scores = {"a": "Relevance score: 2", "b": "Relevance score: 9", "c": "no idea", "d": "Relevance score: 6",
              "e": '{"score": 4}', "x": "Relevance score: 1", "y": "Relevance score: 8"}

    def answer(prompt: Messages) -> str:
        return scores[re.search(r"Document:\n(\S+)", prompt[-1]["content"]).group(1)]

    backend = ScriptedBackend(answer)
    rankings = PointwiseReranker(backend).rerank_batch([("q", FIVE), ("q2", ["x", "y"])])
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 7
    first = rankings[0]
    # a: .6*.2+.4*1 = .52, b: .54+.3 = .84, d: .36+.1 = .46, e: .24+0 = .24; c unparsable -> bottom.
    assert first.ids == ["b", "a", "d", "e", "c"]
    assert first.scores[:4] == pytest.approx([0.92, 0.76, 0.73, 0.62])  # .5 + .5 * fused
    assert first.fallback == ["c"] and first.trace.parse_failures == 1
    assert first.trace.llm_calls == 5 and first.trace.critical_path_depth == 1
    assert rankings[1].ids == ["1", "0"]


# --- listwise ------------------------------------------------------------------------------------


def relevance_oracle(prompt: Messages) -> str:
    """Orders a window by the relevance hidden in each document text (``doc-<id> rel-<r>``)."""
    docs = docs_in(prompt)
    rel = [int(re.search(r"rel-(\d+)", d).group(1)) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: -rel[i])
    return " > ".join(f"[{i + 1}]" for i in order)


def hidden_relevance(n: int, seed: int) -> list[Candidate]:
    import random

    rels = list(range(n))
    random.Random(seed).shuffle(rels)
    return [Candidate(f"d{i}", f"doc-{i} rel-{r}", float(n - i)) for i, r in enumerate(rels)]


def test_listwise_sliding_window_rounds():
    backend = ScriptedBackend(relevance_oracle)
    hundred, thirty = hidden_relevance(100, 1), hidden_relevance(30, 2)
    rankings = ListwiseReranker(backend, window=20, stride=10).rerank_batch([("q", hundred), ("q2", thirty)])
    assert len(backend.calls) == 9  # 100 candidates: windows at 80, 70, ..., 0
    assert [len(c) for c in backend.calls] == [2, 2, 1, 1, 1, 1, 1, 1, 1]  # 30 candidates: 2 windows
    assert [r.trace.critical_path_depth for r in rankings] == [9, 9]
    assert [r.trace.llm_calls for r in rankings] == [9, 2]
    first_window = {d.split()[0] for d in docs_in(backend.calls[0][0])}
    assert first_window == {f"doc-{i}" for i in range(80, 100)}  # bottom first
    # Bottom-up windows carry the best documents to the top: the top 10 come out exactly right.
    for ranking, cands in zip(rankings, (hundred, thirty), strict=True):
        best = sorted(cands, key=lambda c: -int(c.text.split("rel-")[1]))
        assert ranking.ids[:10] == [c.id for c in best[:10]]
        assert sorted(ranking.ids) == sorted(c.id for c in cands)
        assert ranking.fallback == [] and ranking.trace.parse_failures == 0
        n = len(cands)
        assert ranking.scores == pytest.approx([(n - r) / n for r in range(n)])


def test_listwise_failed_window_keeps_its_order():
    def answer(prompt: Messages) -> str:
        return "garbage" if "doc-29" in prompt[-1]["content"] else relevance_oracle(prompt)

    cands = hidden_relevance(30, 3)
    ranking = ListwiseReranker(ScriptedBackend(answer)).rerank("q", cands)
    # Window 1 (docs 10-29) failed and stayed in place; window 2 (0-19) was reordered.
    assert ranking.ids[20:] == [f"d{i}" for i in range(20, 30)]
    assert ranking.fallback == [f"d{i}" for i in range(20, 30)]
    assert sorted(ranking.ids[:20]) == sorted(f"d{i}" for i in range(20))
    assert ranking.trace.parse_failures == 1


def test_listwise_deadline_stops_the_rounds():
    backend = ScriptedBackend(relevance_oracle)
    cands = hidden_relevance(40, 4)
    ranking = ListwiseReranker(backend).rerank("q", cands, deadline_ms=0)
    assert backend.calls == [] and ranking.ids == [c.id for c in cands]
    assert ranking.reranked == [] and ranking.trace.errors == ["deadline: windows 1-3 of 3 not run"]


# --- load_reranker -------------------------------------------------------------------------------


def test_load_reranker_with_a_backend_instance():
    backend = ScriptedBackend(lambda p: scores_json([5] * len(docs_in(p))))
    reranker = load_reranker("groupwise", backend=backend, group_size=3, repeats=2, weight=1.0)
    assert isinstance(reranker, GroupwiseReranker)
    assert (reranker.group_size, reranker.repeats, reranker.weight) == (3, 2, 1.0)
    assert isinstance(load_reranker("listwise", backend=backend, window=4, stride=2), ListwiseReranker)
    assert isinstance(load_reranker("pointwise", backend=backend), PointwiseReranker)
    with pytest.raises(InputError, match="unknown reranking method 'pairwise'"):
        load_reranker("pairwise", backend=backend)
    with pytest.raises(InputError, match="unknown option"):
        load_reranker("groupwise", backend=backend, window=4)


def test_load_reranker_names_an_unknown_backend():
    with pytest.raises(InputError, match="unknown backend 'nope'"):
        load_reranker("groupwise", backend="nope")


def test_a_models_serving_settings_apply_unless_given(tiny_model_path: str, tmp_path) -> None:
    """``load_reranker`` reads the group size, document length, slot feed and fusion weight a model was
    trained and calibrated with from its metadata.json; explicit options win."""
    import json
    import shutil

    from reranker import load_reranker

    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    (model / "metadata.json").write_text(json.dumps({
        "fusion_weight": 0.3, "serving": {"group_size": 5, "max_doc_chars": 250, "slot_feed": "fixed"}}))
    r = load_reranker("groupwise", model=str(model), dtype="float32")
    assert (r.group_size, r.truncator.max_chars, r.slot_feed, r.weight) == (5, 250, "fixed", 0.3)
    r = load_reranker("groupwise", model=str(model), group_size=8, slot_feed="greedy", weight=1.0, dtype="float32")
    assert (r.group_size, r.slot_feed, r.weight) == (8, "greedy", 1.0)


def test_the_cli_and_the_library_cut_documents_alike(tiny_model_path: str, tmp_path) -> None:
    """One default document length: a model without one in its metadata is cut at DEFAULT_MAX_DOC_CHARS by
    load_reranker and by the CLI (which used to pass 1,000 against the library's 3,000); a model's own
    length wins over both, an explicit option over everything."""
    import json
    import shutil

    from grouprank.cli.rerank_cmds import BackendName, Method, build_reranker
    from reranker import load_reranker
    from reranker.base import DEFAULT_MAX_DOC_CHARS

    def cut(model: str, given: int | None = None) -> tuple[int | None, int | None]:
        cli = build_reranker(Method.groupwise, model, BackendName.transformers, None, 1, None, given, None)
        library = load_reranker("groupwise", model=model, **({"max_doc_chars": given} if given else {}))
        return cli.truncator.max_chars, library.truncator.max_chars

    assert cut(tiny_model_path) == (DEFAULT_MAX_DOC_CHARS, DEFAULT_MAX_DOC_CHARS)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    (model / "metadata.json").write_text(json.dumps({"serving": {"max_doc_chars": 250}}))
    assert cut(str(model)) == (250, 250)
    assert cut(str(model), 400) == (400, 400)
