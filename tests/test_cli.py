"""The command line through its real entry point: happy paths and every bad input exiting with code 2."""

import json
import os
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


def test_eval_retrieval_writes_metrics(corpus, tmp_path):
    out = tmp_path / "m.json"
    result = grouprank("eval", "retrieval", "--data", str(corpus / "beir"), "--mode", "bm25", "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["mode"] == "bm25" and metrics["ndcg@10"] == pytest.approx(1.0)
    assert "recall@100" in metrics and "mrr@10" in metrics


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
