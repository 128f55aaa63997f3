"""The command line through its real entry point: happy paths and every bad input exiting with code 2."""

import json
import os
import re
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GROUPRANK_PROGRESS": "0", "COLUMNS": "200"}


def grouprank(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grouprank.cli.main", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, the message names the problem, and no Python traceback is shown."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    docs = [
        {"id": "wing", "title": "Wings", "text": "Lift of a wing in a propeller slipstream."},
        {"id": "heat", "title": "Heat", "text": "Heat conduction in composite slabs."},
        {"id": "ü", "title": "", "text": "Überschall — supersonic flow near a blunt body."},
    ]
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text((root / "docs.jsonl").read_text())
    (beir / "queries.jsonl").write_text('{"_id": "1", "text": "slipstream lift"}\n{"_id": "2", "text": "heat slab"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\twing\t2\n2\theat\t1\n")
    return root


@pytest.fixture(scope="module")
def built_index(corpus):
    result = grouprank("index", str(corpus / "idx"), "--data", str(corpus / "docs.jsonl"))
    assert result.returncode == 0, result.stdout + result.stderr
    return corpus / "idx"


def test_index_and_search(built_index):
    result = grouprank("search", str(built_index), "propeller slipstream", "-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert hits[0]["id"] == "wing" and len(hits) == 2
    assert set(hits[0]["scores"]) == {"bm25", "dense"}


def test_stats_and_reindex_take_the_same_target_as_search(built_index, tmp_path):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    stats = json.loads(grouprank("stats", str(copy)).stdout)
    assert stats["documents"] == 3 and stats["dense_index"] == "flat"
    result = grouprank("reindex", str(copy), "--hnsw-ef-search", "64")
    assert result.returncode == 0 and "now serving generation gen-000002" in result.stdout, result.stderr
    assert json.loads(grouprank("stats", str(copy)).stdout)["generation"] == "gen-000002"
    env_free = {k: v for k, v in ENV.items() if k != "GROUPRANK_OPENSEARCH_URL"}
    lone = subprocess.run([sys.executable, "-m", "grouprank.cli.main", "search", "wing"], capture_output=True,
                          text=True, env=env_free, timeout=300)
    assert_clean_error(lone, "give an index directory or --opensearch-url")
    assert_clean_error(grouprank("search", str(copy), "wing", "extra"), "expected [DIR] QUERY")


def test_eval_retrieval_writes_metrics(corpus, tmp_path):
    out = tmp_path / "m.json"
    result = grouprank("eval", "retrieval", "--data", str(corpus / "beir"), "--mode", "bm25", "--output", str(out),
                       "--encoder", "torch")
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["mode"] == "bm25" and metrics["ndcg@10"] == pytest.approx(1.0)
    assert "recall@100" in metrics and "mrr@10" in metrics


def test_unknown_encoder_is_refused(corpus):
    assert_clean_error(grouprank("eval", "retrieval", "--data", str(corpus / "beir"), "--encoder", "tensorrt"),
                       "tensorrt")


def test_empty_query(built_index):
    assert_clean_error(grouprank("search", str(built_index), "   "), "empty")


def test_unknown_mode(built_index):
    assert_clean_error(grouprank("search", str(built_index), "wing", "--mode", "fuzzy"), "fuzzy")


def test_missing_index_directory(tmp_path):
    assert_clean_error(grouprank("search", str(tmp_path / "nope"), "wing"), "nope")


def test_malformed_jsonl_names_file_and_line_and_stores_nothing(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    result = grouprank("index", str(tmp_path / "idx"), "--data", str(bad))
    assert_clean_error(result, f"{bad}:2", "malformed JSON")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"id": "a", "title": "t"}\n')
    assert_clean_error(grouprank("index", str(tmp_path / "idx"), "--data", str(missing)), "'text'")
    assert not (tmp_path / "idx").exists()  # nothing was created from a bad batch


def test_bad_data_keeps_what_was_stored(built_index, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "new", "text": "new doc"}\n{"id": 5.5, "text": "bad id"}\n')
    assert_clean_error(grouprank("index", str(built_index), "--data", str(bad)), "_id")
    result = grouprank("search", str(built_index), "supersonic", "-k", "3", "--json")
    ids = [h["id"] for h in json.loads(result.stdout)]
    assert "ü" in ids and "new" not in ids


def test_eval_retrieval_bad_directory(tmp_path):
    assert_clean_error(grouprank("eval", "retrieval", "--data", str(tmp_path / "none")), "not a directory")


# -- reranking commands (a tiny random model: these check the plumbing, not the quality) -----------


@pytest.fixture(scope="module")
def candidate_file(tmp_path_factory):
    """Two queries in RankGPT form and their qrels."""
    root = tmp_path_factory.mktemp("rerank-cli")
    sets = [{"query": "slipstream lift", "hits": [
                {"qid": "1", "docid": d, "content": f"document {d} about wings", "score": 10.0 - n, "rank": n + 1}
                for n, d in enumerate(["a", "b", "c", "d", "e"])]},
            {"query": "heat slab", "hits": [
                {"qid": "2", "docid": d, "content": f"document {d} about heat", "score": 5.0 - n, "rank": n + 1}
                for n, d in enumerate(["f", "g", "h"])]}]
    (root / "candidates.json").write_text(json.dumps(sets))
    (root / "qrels.txt").write_text("1 0 c 2\n1 0 a 1\n2 0 h 1\n")
    return root


@pytest.mark.parametrize("method", ["groupwise", "pointwise", "listwise"])
def test_eval_rerank_writes_run_and_metrics(candidate_file, tiny_model_path, tmp_path, method):
    out, run = tmp_path / "eval.json", tmp_path / "run.trec"
    result = grouprank("eval", "rerank", "--candidates", str(candidate_file / "candidates.json"),
                       "--qrels", str(candidate_file / "qrels.txt"), "--method", method, "--model", tiny_model_path,
                       "--group-size", "3", "--rubric", "reference", "--run", str(run), "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ndcg@10" in result.stdout and "prompt tokens" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["method"] == method and summary["queries"] == 2 and summary["rubric"] == "reference"
    assert 0.0 <= summary["ndcg@10"] <= 1.0 and summary["prompt_tokens"] > 0
    expected_calls = {"groupwise": (2 + 1) / 2, "pointwise": (5 + 3) / 2}.get(method)
    if expected_calls is not None:  # groups of 3: 5 docs -> 2 groups, 3 docs -> 1; pointwise: one per doc
        assert summary["llm_calls"] == expected_calls
    lines = [line.split() for line in run.read_text().splitlines()]
    assert sorted(line[2] for line in lines) == list("abcdefgh")
    assert {line[0] for line in lines} == {"1", "2"}


def test_rerank_one_query_prints_the_ranking(tiny_model_path):
    result = grouprank("rerank", "slipstream lift", "--model", tiny_model_path, "--doc", "wings and lift",
                       "--doc", "heat in slabs", "--doc", "propeller slipstream", "--group-size", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    for doc_id in ("0", "1", "2"):
        assert f" {doc_id} " in result.stdout
    assert "LLM calls" in result.stdout
    assert "query likelihood not read" in result.stdout


def test_rerank_with_the_query_likelihood(tiny_model_path):
    docs = ["--doc", "wings and lift", "--doc", "heat in slabs", "--doc", "propeller slipstream"]
    result = grouprank("rerank", "slipstream lift", "--model", tiny_model_path, *docs, "--likelihood-weight", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "query likelihood read" in result.stdout
    wrong = grouprank("rerank", "slipstream lift", "--model", tiny_model_path, *docs, "--method", "pointwise",
                      "--likelihood-weight", "0.5")
    assert_clean_error(wrong, "likelihood_weight")


def test_eval_rerank_bad_input(candidate_file, tiny_model_path, tmp_path):
    missing = grouprank("eval", "rerank", "--candidates", str(tmp_path / "nope.json"),
                        "--qrels", str(candidate_file / "qrels.txt"), "--model", tiny_model_path)
    assert_clean_error(missing, "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"query": "q", "hits": [{"docid": "a", "content": "x"}, {"content": "y"}]}]))
    broken = grouprank("eval", "rerank", "--candidates", str(bad), "--qrels", str(candidate_file / "qrels.txt"),
                       "--model", tiny_model_path)
    assert_clean_error(broken, "bad.json", "docid")


# -- quickstart: retrieval and GroupRank orders side by side -------------------------------------------

HIT_LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+(\d\.\d{4})\s+(\S+)\s+(↑\d+|↓\d+|=)\s+(\d\.\d\d|fallback)\s*$")


def test_quickstart_side_by_side_at_80_columns(tiny_model_path, tmp_path):
    """The real command at COLUMNS=80: each query shows both orders, full ids, moves and the rerank latency."""
    result = subprocess.run([sys.executable, "-m", "grouprank.cli.main", "quickstart", "--directory",
                             str(tmp_path / "qs"), "--model", tiny_model_path, "--max-chunks", "12", "-k", "3",
                             "--depth", "4"], capture_output=True, text=True, env={**ENV, "COLUMNS": "80"},
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    from grouprank.cli.quickstart import QUICKSTART_QUERIES

    assert all(q in out for q in QUICKSTART_QUERIES), out
    assert out.count("GroupRank") >= len(QUICKSTART_QUERIES) and out.count("retrieval") >= len(QUICKSTART_QUERIES)
    assert len(re.findall(r"rerank \d+ ms \(4 docs, 1 LLM call\)", out)) == len(QUICKSTART_QUERIES), out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    rows = [m for line in out.splitlines() if (m := HIT_LINE.match(line))]
    assert len(rows) == 3 * len(QUICKSTART_QUERIES), out
    for m in rows:  # both id columns show whole ids (topic#part), none squeezed to nothing
        assert re.fullmatch(r"[\w.-]+#\d+", m[2]) and re.fullmatch(r"[\w.-]+#\d+", m[4]), m[0]


def _hit(doc_id: str, score: float):
    from indexer.hits import Hit

    return Hit(id=doc_id, score=score, text=f"text of {doc_id}", title=doc_id.split("#")[0], metadata={})


@pytest.mark.parametrize("width", [80, 200])
def test_quickstart_table_marks_moves_and_fallback(width):
    import io

    from rich.console import Console

    from grouprank.cli.quickstart import side_by_side
    from reranker.types import Ranking, Trace

    ids = ["try#0", "bltin-ellipsis-object#3", "exceptions#1", "yield#0"]
    hits = [_hit(doc_id, 0.04 - n / 100) for n, doc_id in enumerate(ids)]
    reranked = ["exceptions#1", "try#0", "yield#0"]
    ranking = Ranking(query="q", method="groupwise", ids=[*reranked, "bltin-ellipsis-object#3"],
                      scores=[0.9, 0.5, 0.4, 0.1], rerank_scores=dict(zip(reranked, [0.9, 0.5, 0.4], strict=True)),
                      reranked=reranked, fallback=["bltin-ellipsis-object#3"], trace=Trace(llm_calls=1))
    console = Console(file=io.StringIO(), width=width)
    console.print(side_by_side("a query", hits, ranking, k=4, retrieval_ms=3.2, rerank_ms=1234.5))
    out = console.file.getvalue()
    rows = [HIT_LINE.match(line) for line in out.splitlines() if HIT_LINE.match(line)]
    assert [(m[2], m[4], m[5], m[6]) for m in rows] == [
        ("try#0", "exceptions#1", "↑2", "0.90"),
        ("bltin-ellipsis-object#3", "try#0", "↓1", "0.50"),
        ("exceptions#1", "yield#0", "↑1", "0.40"),
        ("yield#0", "bltin-ellipsis-object#3", "↓2", "fallback"),
    ], out
    assert "rerank 1234 ms (4 docs, 1 LLM call, 1 fell back)" in out and "retrieval 3 ms" in out
    assert max(len(line) for line in out.splitlines()) <= width
