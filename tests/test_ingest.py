"""Loading BEIR directories and JSONL corpora, and the errors bad files give."""

import json

import pytest

from grouprank.errors import InputError
from indexer.ingest import load_beir, load_documents


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_beir(root):
    root.mkdir()
    write_lines(root / "corpus.jsonl", [
        json.dumps({"_id": "1", "title": "Flügel", "text": "wing in a slipstream ✈"}),
        json.dumps({"_id": 2, "title": "", "text": "boundary layer " * 5000}),  # int id, empty title, long text
    ])
    write_lines(root / "queries.jsonl", [json.dumps({"_id": 7, "text": "wing"}), json.dumps({"_id": "8", "text": "x"})])
    (root / "qrels").mkdir()
    write_lines(root / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "7\t1\t2", "8\t2\t0"])
    return root


def test_load_beir(tmp_path):
    ds = load_beir(make_beir(tmp_path / "ds"))
    assert [d.id for d in ds.documents] == ["1", "2"]
    assert ds.documents[0].title == "Flügel" and ds.documents[1].title == ""
    assert ds.queries == {"7": "wing", "8": "x"}
    assert ds.qrels == {"7": {"1": 2}, "8": {"2": 0}}
    assert ds.judged_queries() == {"7": "wing"}


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "docs.jsonl", ['{"id": "a", "text": "ok"}', '{"id": "b", "text": ', '{"id": "c"}'])
    with pytest.raises(InputError) as err:
        load_documents(path)
    assert f"{path}:2" in str(err.value) and "malformed JSON" in str(err.value)


@pytest.mark.parametrize(
    ("record", "field"),
    [({"text": "no id"}, "_id"), ({"id": "a"}, "text"), ({"id": "a", "text": 3}, "text"),
     ({"id": "a", "text": "t", "title": ["x"]}, "title"), ({"id": "a", "text": "t", "metadata": "m"}, "metadata"),
     ({"id": "", "text": "t"}, "_id")],
)
def test_missing_or_bad_field_is_named(tmp_path, record, field):
    path = write_lines(tmp_path / "docs.jsonl", ['{"id": "ok", "text": "fine"}', json.dumps(record)])
    with pytest.raises(InputError) as err:
        load_documents(path)
    assert err.value.field == field and err.value.line == 2
    assert f"field {field!r}" in str(err.value)


def test_duplicate_ids_and_non_objects(tmp_path):
    dup = write_lines(tmp_path / "dup.jsonl", ['{"id": "a", "text": "1"}', '{"id": "a", "text": "2"}'])
    with pytest.raises(InputError, match="duplicate document id 'a'"):
        load_documents(dup)
    arr = write_lines(tmp_path / "arr.jsonl", ['["not", "an", "object"]'])
    with pytest.raises(InputError, match="expected a JSON object"):
        load_documents(arr)


def test_missing_paths(tmp_path):
    with pytest.raises(InputError, match="no such corpus file"):
        load_documents(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="not a directory"):
        load_beir(tmp_path / "nope")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "corpus.jsonl").write_text('{"id": "a", "text": "t"}\n')
    with pytest.raises(InputError, match=r"missing queries\.jsonl"):
        load_beir(tmp_path / "partial")
