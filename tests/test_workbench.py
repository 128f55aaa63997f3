"""The relevance workbench (worker/ui.py, worker/judgments.py) through the API, in embedded mode: the
comparison page, judgments and their exports, and the loop into the training pipeline's mining and synthesis."""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from grouprank.trec_files import read_qrels, read_queries
from worker.api import create_app
from worker.judgments import JudgmentStore, query_id
from worker.settings import Settings

KEY = "alice:secret"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def settings(tmp_path_factory, service_index_template: Path, tiny_model_path: str) -> Settings:
    index_dir = tmp_path_factory.mktemp("workbench") / "index"
    shutil.copytree(service_index_template, index_dir)
    return Settings(index_dir=index_dir, rerank_model=tiny_model_path, rerank_options={"group_size": 4},
                    rerank_depth=6, api_keys=(KEY,), default_deadline_ms=60_000, max_query_chars=200, max_k=20,
                    max_experiment_queries=5)


@pytest.fixture(scope="module")
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        end = time.monotonic() + 120
        while client.get("/readyz").status_code != 200 and time.monotonic() < end:
            time.sleep(0.1)
        yield client


def column(html: str, name: str) -> list[str]:
    """The document ids of one column of the comparison page, in order."""
    section = re.search(rf'<section id="col-{name}".*?</section>', html, re.S)
    assert section, f"no column {name}"
    return re.findall(r'<li class="hit[^"]*" data-doc="([^"]+)"', section.group(0))


def chosen(html: str, doc_id: str) -> list[int]:
    """The grade marked chosen on ``doc_id`` in each column."""
    hits = re.findall(rf'<li class="hit[^"]*" data-doc="{doc_id}">.*?</li>', html, re.S)
    return [int(g) for h in hits for g in re.findall(r'class="grade chosen" data-grade="(\d)"', h)]


def test_page_compares_first_stage_and_grouprank_from_the_search_route(client: TestClient,
                                                                       settings: Settings) -> None:
    query = "capital of France"
    page = client.get("/ui", params={"q": query, "mode": "bm25", "k": 3})
    assert page.status_code == 200, page.text
    html = page.text
    search = client.post("/search", json={"query": query, "mode": "bm25", "k": settings.rerank_depth}).json()
    by_retrieval = sorted(search["hits"], key=lambda h: h["retriever_rank"])
    index_hits = client.app.state.services.index.search(query, k=3, mode="bm25")
    assert column(html, "first") == [h.id for h in index_hits] == [h["id"] for h in by_retrieval[:3]]
    assert len(column(html, "grouprank")) == 3
    if search["reranked"]:  # the tiny random model is deterministic: the same ranking as /search
        assert column(html, "grouprank") == [h["id"] for h in search["hits"][:3]]
        assert 'id="rerank-state" class="ok">reranked' in html
    else:
        assert "fell back: the reranker scored no document" in html
    assert settings.rerank_model in html and "unpromoted" in html  # the serving model and its version
    assert re.search(r"retrieval [\d.]+ ms · rerank [\d.]+ ms · total [\d.]+ ms", html)
    assert html.count("retriever ") >= 6 and "fused " in html and ("▲" in html or "▼" in html or "=" in html)


@pytest.mark.parametrize(("params", "message"), [
    ({"q": "   "}, "query is blank"),
    ({"q": "x" * 201}, "the limit is 200"),
    ({"q": "paris", "k": 21}, "the limit is 20 (max_k)"),
    ({"q": "paris", "mode": "fuzzy"}, "mode: Input should be"),
    ({"q": "paris", "deadline_ms": 10**9}, "max_deadline_ms"),
    ({"q": "paris", "k": 0}, "k: must be a whole number of at least 1, got 0"),
    ({"k": "ten"}, "k: must be a whole number"),
])
def test_page_explains_bad_input_with_a_4xx(client: TestClient, params: dict, message: str) -> None:
    page = client.get("/ui", params=params)
    assert page.status_code == 422
    assert re.search(r'<div id="status" class="error"[^>]*>[^<]*' + re.escape(message), page.text), page.text


def test_the_page_says_what_to_do_after_an_empty_query_or_a_fallback(client: TestClient) -> None:
    empty = client.get("/ui", params={"q": ""})  # the form sent with nothing typed
    assert empty.status_code == 200 and 'id="hint"' in empty.text and "Type a query" in empty.text
    assert 'id="hint"' not in client.get("/ui").text  # a first visit is not told off
    missed = client.get("/ui", params={"q": "capital of France", "deadline_ms": 1})  # no LLM answers in 1 ms
    assert missed.status_code == 200 and re.search(r"fell back: [^<]*deadline", missed.text)
    assert re.search(r'id="hint"[^>]*>[^<]*raise the deadline', missed.text)


def test_a_document_without_a_title_shows_its_id_once(client: TestClient) -> None:
    html = client.get("/ui", params={"q": "capital of France", "mode": "bm25", "k": 3}).text
    for item in re.findall(r'<li class="hit[^"]*" data-doc="([^"]+)">\s*<div class="title">(.*?)</div>', html, re.S):
        doc, title = item
        assert title.count(doc) == 1, title


def test_the_page_measures_each_column_on_the_judgments(client: TestClient) -> None:
    query = "a yellow fruit to eat"
    page = client.get("/ui", params={"q": query, "mode": "bm25", "k": 3}).text
    assert "judged: 0 of the" in page and "grade the hits" in page
    assert len(re.findall(r'<li class="hit unjudged"', page)) == 6  # every hit of both columns is unjudged
    first = column(page, "first")
    assert client.post("/judgments", json={"query": query, "doc_id": first[0], "grade": 3},
                       headers=AUTH).status_code == 200
    page = client.get("/ui", params={"q": query, "mode": "bm25", "k": 3}).text
    reranked = column(page, "grouprank")
    found = re.search(r"NDCG@10 first stage <b>([\d.]+)</b> → GroupRank\s*<b>([\d.]+)</b> · P@3 ([\d.]+) →\s*([\d.]+)",
                      page)
    assert found, page
    assert float(found.group(1)) == 1.0 and float(found.group(3)) == pytest.approx(1 / 3, abs=0.01)
    assert float(found.group(4)) == pytest.approx((first[0] in reranked) / 3, abs=0.01)
    if first[0] in reranked:  # NDCG of one relevant document at rank r: 1 / log2(r + 1)
        assert float(found.group(2)) == pytest.approx(1 / math.log2(2 + reranked.index(first[0])), abs=1e-3)
    assert "judged: 1 of the" in page and f'<li class="hit" data-doc="{first[0]}"' in page


def test_empty_page_has_the_form_and_the_model(client: TestClient, settings: Settings) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and '<form id="search"' in page.text and settings.rerank_model in page.text
    assert client.get("/ui/static/workbench.js").status_code == 200
    icon = client.get("/favicon.ico")  # every page links it; browsers fetch it with no key
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert '<link rel="icon" href="/favicon.ico"' in page.text
    form = client.get("/ui", params={"q": "paris", "mode": "bm25", "k": 2, "deadline_ms": ""})  # as the form sends it
    assert form.status_code == 200 and len(column(form.text, "first")) == 2


def test_judgments_are_upserted_kept_and_shown_on_the_page(client: TestClient) -> None:
    query = "which fruit is yellow"
    judge = {"query": query, "doc_id": "banana", "grade": 2}
    assert client.post("/judgments", json=judge).status_code == 401
    assert client.post("/judgments", json=judge, headers={"X-API-Key": "wrong"}).status_code == 401
    first = client.post("/judgments", json=judge, headers=AUTH)
    assert first.status_code == 200, first.text
    assert first.json()["who"] == "alice" and first.json()["query_id"] == query_id(query)
    again = client.post("/judgments", json={**judge, "grade": 3}, headers=AUTH).json()
    assert again["grade"] == 3
    assert [(j["doc_id"], j["grade"]) for j in client.get("/judgments", params={"query": query}).json()] \
        == [("banana", 3)]
    html = client.get("/ui", params={"q": query, "mode": "bm25", "k": 5}).text
    assert "banana" in column(html, "first")
    assert chosen(html, "banana") == [3, 3]  # in both columns


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"grade": 4}, 422, "grade must be an integer from 0 to 3"),
    ({"grade": -1}, 422, "grade must be an integer from 0 to 3"),
    ({"doc_id": "no-such-doc"}, 404, "no document with id 'no-such-doc'"),
    ({"query": " "}, 422, "query is blank"),
    ({"query": "y" * 201}, 422, "the limit is 200"),
])
def test_bad_judgments_are_refused_and_lose_nothing(client: TestClient, change: dict, status: int,
                                                    message: str) -> None:
    good = {"query": "coffee drink", "doc_id": "coffee", "grade": 1}
    assert client.post("/judgments", json=good, headers=AUTH).status_code == 200
    before = client.get("/judgments").json()
    response = client.post("/judgments", json={**good, **change}, headers=AUTH)
    assert response.status_code == status and message in response.text, response.text
    assert client.get("/judgments").json() == before


def test_a_failed_write_keeps_earlier_judgments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JudgmentStore.beside(tmp_path)
    store.upsert("q one", "a", 2, "bob")
    monkeypatch.setattr("worker.judgments.check", lambda *args: None)  # let a bad grade reach SQLite
    with pytest.raises(sqlite3.IntegrityError):
        store.upsert("q one", "a", 9, "bob")
    assert [(j.doc_id, j.grade) for j in store.all()] == [("a", 2)]


def test_exports_feed_the_training_pipeline(client: TestClient, settings: Settings, tmp_path: Path,
                                            tiny_model_path: str) -> None:
    """Judgments posted to the API -> exported over HTTP and by the CLI -> the pipeline's mining and
    synthesis read them as their qrels teacher -> slot SFT trains the tiny model on them."""
    from grouprank.cli.main import app as cli
    from trainer.config import PipelineConfig
    from trainer.modeldir import read_metadata
    from trainer.pipeline import Run, _stage_mine, _stage_sft, _stage_synth

    grades = {"capital of France": {"paris": 3, "berlin": 0, "eiffel": 1},
              "yellow fruit": {"banana": 3, "apple": 2, "cheese": 0}}
    for query, docs in grades.items():
        for doc_id, grade in docs.items():
            assert client.post("/judgments", json={"query": query, "doc_id": doc_id, "grade": grade},
                               headers=AUTH).status_code == 200
    qrels_file, queries_file = tmp_path / "judgments.qrels", tmp_path / "queries.jsonl"
    qrels_file.write_text(client.get("/ui/judgments.qrels").text)
    queries_file.write_text(client.get("/ui/judgments.queries.jsonl").text)
    qrels, queries = read_qrels(qrels_file), read_queries(queries_file)
    for query, docs in grades.items():
        assert queries[query_id(query)] == query and qrels[query_id(query)] == docs
    lines = [json.loads(line) for line in client.get("/ui/judgments.jsonl").text.splitlines()]
    assert {(r["query"], r["doc_id"]): r["grade"] for r in lines}.items() >= {
        (q, d): g for q, docs in grades.items() for d, g in docs.items()}.items()
    assert all(r["who"] == "alice" for r in lines)

    cli_qrels, cli_queries = tmp_path / "cli.qrels", tmp_path / "cli-queries.jsonl"
    result = CliRunner().invoke(cli, ["judgments", "export", "--index", str(settings.index_dir),
                                      "--qrels", str(cli_qrels), "--queries", str(cli_queries)])
    assert result.exit_code == 0, result.output
    assert cli_qrels.read_text() == qrels_file.read_text() and cli_queries.read_text() == queries_file.read_text()

    judged = {query_id(q) for q in grades}  # only these two: the other tests' judgments have no pair to split
    (tmp_path / "two.qrels").write_text("".join(line + "\n" for line in qrels_file.read_text().splitlines()
                                                if line.split()[0] in judged))
    index_dir = tmp_path / "index"
    shutil.copytree(settings.index_dir, index_dir, ignore=shutil.ignore_patterns("judgments.sqlite*"))
    config = PipelineConfig.from_dict({
        "work_dir": str(tmp_path / "work"), "registry_dir": str(tmp_path / "registry"),
        "index_dir": str(index_dir), "queries": str(queries_file), "qrels": str(tmp_path / "two.qrels"),
        "mining": {"depth": 6, "group_size": 3, "groups_per_query": 1, "test_fraction": 0.5},
        "synthesis": {"max_doc_chars": 80}, "base_model": tiny_model_path,
        "sft": {"max_steps": 2, "batch_size": 2, "lora_r": 4, "device": "cpu"}})
    run, _ = Run.resume_or_start(Path(config.work_dir), config)
    run.state["stages"]["mine"] = _stage_mine(config, run)
    assert run.outputs("mine")["train_queries"] == run.outputs("mine")["test_queries"] == 1
    synth = _stage_synth(config, run)
    rows = [json.loads(line) for line in Path(synth["dataset"]).read_text().splitlines()]
    assert synth["rows"] == len(rows) > 0
    train_query = next(q for q in grades if any(q in json.dumps(r) for r in rows))
    assert any(doc in json.dumps(rows) for doc, g in grades[train_query].items() if g == 3)
    run.state["stages"]["synth"] = synth
    sft = _stage_sft(config, run)  # the retraining learns from the judgments' rows
    trained = read_metadata(Path(sft["model"]))
    assert trained["stage"] == "sft" and sft["metrics"]["examples"] == len(rows) and sft["metrics"]["steps"] >= 1


def test_cli_export_without_judgments_is_an_error(tmp_path: Path) -> None:
    from grouprank.cli.main import app as cli

    result = CliRunner().invoke(cli, ["judgments", "export", "--index", str(tmp_path), "--qrels",
                                      str(tmp_path / "out.qrels")])
    assert result.exit_code != 0 and "no judgments" in str(result.exception)


def test_query_sets_and_experiments_measure_both_orders(client: TestClient) -> None:
    """A saved query set runs through the first stage and GroupRank; each query is scored against the
    judgments (NDCG@10, MRR@10, Recall@k), kept with the model version, listed, shown and plotted."""
    assert client.post("/query-sets", json={"name": "fruit", "queries": "x"}).status_code == 401
    for doc, grade in (("banana", 3), ("paris", 0)):
        assert client.post("/judgments", json={"query": "ripe yellow fruit", "doc_id": doc, "grade": grade},
                           headers=AUTH).status_code == 200
    text = "ripe yellow fruit\n\nred planet\nripe yellow fruit\n"
    saved = client.post("/query-sets", json={"name": "fruit", "queries": text}, headers=AUTH)
    assert saved.status_code == 200, saved.text
    assert saved.json()["queries"] == ["ripe yellow fruit", "red planet"]  # blank lines and repeats dropped
    run = client.post("/experiments", json={"query_set": "fruit", "mode": "bm25", "k": 5}, headers=AUTH)
    assert run.status_code == 200, run.text
    experiment = run.json()
    by_query = {q["query"]: q for q in experiment["queries"]}
    judged = by_query["ripe yellow fruit"]
    assert judged["judged"] == 2 and judged["first_stage"]["recall@k"] == 1.0  # bm25 finds the banana
    assert 0 < judged["first_stage"]["ndcg@10"] <= 1 and judged["grouprank"] is not None and judged["rerank_ms"] > 0
    assert by_query["red planet"]["first_stage"] is None  # nothing judged relevant: not measured
    assert experiment["totals"]["measured"] == 1 and experiment["settings"]["mode"] == "bm25"
    assert experiment["totals"]["first_stage"]["ndcg@10"] == pytest.approx(judged["first_stage"]["ndcg@10"], abs=1e-4)
    assert client.get("/experiments").json()[0]["id"] == experiment["id"]  # newest first
    page = client.get(f"/ui/experiments/{experiment['id']}")
    assert page.status_code == 200 and "ripe yellow fruit" in page.text and 'id="totals"' in page.text
    png = client.get(f"/ui/experiments/{experiment['id']}.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert "fruit" in client.get("/ui/experiments").text


def test_experiment_totals_leave_out_cached_and_fallen_back_queries(client: TestClient) -> None:
    """A query the rerank cache answers is flagged and not timed; one that fell back (a 1 ms deadline) is
    counted, with its reason, and left out of the quality means; by default an experiment waits for the
    reranker (the server's max_deadline_ms)."""
    assert client.post("/judgments", json={"query": "yellow fruit for breakfast", "doc_id": "banana", "grade": 3},
                       headers=AUTH).status_code == 200
    body = {"queries": ["yellow fruit for breakfast"], "mode": "bm25", "k": 5}
    first = client.post("/experiments", json=body, headers=AUTH).json()
    assert first["settings"]["deadline_ms"] == 60_000  # max_deadline_ms: waits for the reranker
    again = client.post("/experiments", json=body, headers=AUTH).json()
    if first["queries"][0]["reranked"]:  # the tiny model scored it: the second answer came from the cache
        assert not first["queries"][0]["cached"] and first["totals"]["timed"] == 1
        assert again["queries"][0]["cached"] and again["totals"]["cached"] == 1
        assert again["totals"]["timed"] == 0 and again["totals"]["rerank_ms"] is None
        assert again["totals"]["measured"] == 1  # cached answers still count for quality
        assert "cached: not timed" in client.get(f"/ui/experiments/{again['id']}").text
    late = client.post("/experiments", json={**body, "queries": ["ripe banana smoothie"], "deadline_ms": 1},
                       headers=AUTH).json()
    row = late["queries"][0]
    assert not row["reranked"] and row["reason"] and late["totals"]["fell_back"] == 1
    assert late["totals"]["measured"] == 0 and late["totals"]["grouprank"] is None
    assert "left out of the means" in client.get(f"/ui/experiments/{late['id']}").text
    too_long = client.post("/experiments", json={**body, "deadline_ms": 10**9}, headers=AUTH)
    assert too_long.status_code == 422 and "max_deadline_ms" in too_long.text


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"queries": "\n \n"}, 422, "no queries"),
    ({"queries": ["ok", "z" * 201]}, 422, "line 2 is 201 characters long"),
    ({"query_set": "no-such-set"}, 404, "no query set named 'no-such-set'"),
    ({}, 422, "give either query_set"),
    ({"queries": ["a"], "mode": "nonsense"}, 422, "bm25"),  # was a 500, found by schemathesis
    ({"queries": [f"q{n}" for n in range(6)]}, 422, "6 queries; the limit is 5"),
])
def test_bad_experiments_are_refused_with_the_reason(client: TestClient, body: dict, status: int,
                                                     message: str) -> None:
    before = len(client.get("/experiments").json())
    response = client.post("/experiments", json=body, headers=AUTH)
    assert response.status_code == status and message in response.text
    assert len(client.get("/experiments").json()) == before  # nothing stored


def test_side_by_side_means_only_the_queries_every_run_measured() -> None:
    """By hand: run 1 measured a and b, run 2 a, b (fell back) and c; the means use a alone."""
    from worker.experiments import Experiment, QueryResult, side_by_side

    def result(query: str, ndcg: float, reranked: bool = True) -> QueryResult:
        metrics = {"ndcg@10": ndcg, "mrr@10": ndcg, "recall@k": 1.0}
        return QueryResult(query=query, judged=2, first_stage={**metrics, "ndcg@10": 0.1}, grouprank=metrics,
                           retrieval_ms=1.0, rerank_ms=10.0, reranked=reranked)

    one = Experiment("before", "m", None, {}, [result("a", 0.5), result("b", 0.9)], id=1)
    two = Experiment("after", "m", "v0002", {}, [result("a", 0.7), result("b", 0.2, reranked=False),
                                                  result("c", 1.0)], id=2)
    c = side_by_side([one, two])
    assert [row["query"] for row in c["queries"]] == ["a", "b", "c"] and c["common"] == 1
    assert [t["grouprank"]["ndcg@10"] for t in c["totals"]] == [0.5, 0.7]
    assert c["queries"][2]["results"][0] is None  # c is not in run 1
    assert [r["name"] for r in c["runs"]] == ["before", "after"]


def test_several_runs_of_a_query_set_compare_side_by_side(client: TestClient) -> None:
    """Two runs of one saved set (e.g. before and after a promotion), compared by the JSON route and the
    page that the experiments list links with its check boxes; bad id lists are refused with the reason."""
    assert client.post("/judgments", json={"query": "sweet yellow fruit", "doc_id": "banana", "grade": 3},
                       headers=AUTH).status_code == 200
    assert client.post("/query-sets", json={"name": "pair", "queries": ["sweet yellow fruit", "red planet"]},
                       headers=AUTH).status_code == 200
    ids = [client.post("/experiments", json={"query_set": "pair", "mode": mode, "k": 5}, headers=AUTH).json()["id"]
           for mode in ("bm25", "hybrid")]
    compared = client.get("/experiments/compare", params={"ids": ids})
    assert compared.status_code == 200, compared.text
    c = compared.json()
    assert [r["id"] for r in c["runs"]] == ids and [r["settings"]["mode"] for r in c["runs"]] == ["bm25", "hybrid"]
    assert [row["query"] for row in c["queries"]] == ["sweet yellow fruit", "red planet"]
    assert all(len(row["results"]) == 2 for row in c["queries"])
    page = client.get("/ui/experiments/compare", params={"ids": ids})
    assert page.status_code == 200 and "2 runs side by side" in page.text and "sweet yellow fruit" in page.text
    assert 'name="ids"' in client.get("/ui/experiments").text  # the list's check boxes
    assert client.get("/experiments/compare", params={"ids": ids[:1]}).status_code == 422
    assert client.get("/experiments/compare", params={"ids": [ids[0], 10**6]}).status_code == 404
