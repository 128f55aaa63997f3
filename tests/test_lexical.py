"""BM25 over a real tantivy index: analysis, query sanitising, scores, replacing documents."""

import math

import pytest

from indexer.lexical import MAX_TOKEN_BYTES, LexicalIndex, query_terms


@pytest.fixture
def lexical(tmp_path):
    return LexicalIndex.create(tmp_path / "lexical")


def fill(lexical, bodies):
    with lexical.writer() as writer:
        for key, (doc_id, body) in enumerate(bodies.items(), start=1):
            writer.add(doc_id, key, body)


def test_analysis_lowercases_removes_stop_words_and_stems():
    assert query_terms("The Running DOGS and the cats, running!") == ["run", "dog", "cat"]
    assert query_terms("the of and to") == []
    assert query_terms("Flügel 日本語 naïve") == ["flügel", "日本語", "naïv"]


def test_bm25_matches_the_formula_by_hand(lexical):
    fill(lexical, {"d1": "apple banana", "d2": "apple apple cherry", "d3": "cherry date"})
    keys, scores = lexical.search("apple", 10)
    assert keys == [2, 1]  # d2 (tf 2) before d1
    # tantivy's BM25: idf * (k1 + 1) * tf / (tf + k1 * (1 - b + b * dl / avgdl)), k1 = 1.2, b = 0.75,
    # idf = ln(1 + (N - n + 0.5) / (n + 0.5)); N = 3 docs, n = 2 contain "apple", avgdl = 7 / 3 tokens.
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def bm25(tf, dl):
        return idf * 2.2 * tf / (tf + 1.2 * (0.25 + 0.75 * dl / (7 / 3)))

    assert scores == pytest.approx([bm25(2, 3), bm25(1, 2)], rel=1e-5)


def test_a_repeated_query_term_counts_once_per_occurrence(lexical):
    bodies = {"d1": "apple banana", "d2": "cherry date", "d3": "cherry fig plum", "d4": "grape lemon", "d5": "kiwi"}
    fill(lexical, bodies)

    # N = 5 docs, avgdl = 10 / 5; "apple" is in 1 doc, "cherry" in 2, every tf is 1 (formula as above).
    def bm25(n, dl):
        idf = math.log(1 + (5 - n + 0.5) / (n + 0.5))
        return idf * 2.2 / (1 + 1.2 * (0.25 + 0.75 * dl / (10 / 5)))

    apple_d1, cherry_d2, cherry_d3 = bm25(1, 2), bm25(2, 2), bm25(2, 3)
    assert cherry_d3 < cherry_d2 < apple_d1 < 2 * cherry_d3  # so saying "cherry" twice changes the order
    keys, scores = lexical.search("apple cherry", 10)
    assert keys == [1, 2, 3] and scores == pytest.approx([apple_d1, cherry_d2, cherry_d3], rel=1e-5)
    # Counted after analysis: "Cherries" and "cherry" are both "cherri"; "and", "the" are stop words.
    for query in ("apple cherry cherry", "Cherries, apple and the cherry"):
        keys, scores = lexical.search(query, 10)
        assert keys == [2, 3, 1]
        assert scores == pytest.approx([2 * cherry_d2, 2 * cherry_d3, apple_d1], rel=1e-5)
    # The same sum from tantivy's own single-term scores.
    single = {term: dict(zip(*lexical.search(term, 10), strict=True)) for term in ("apple", "cherry")}
    summed = {key: single["apple"].get(key, 0.0) + 2 * single["cherry"].get(key, 0.0) for key in (1, 2, 3)}
    assert dict(zip(keys, scores, strict=True)) == pytest.approx(summed, rel=1e-6)


def test_scores_equal_tantivys_own_query_parser(lexical):
    fill(lexical, {"a": "the quick brown fox jumps", "b": "a lazy brown dog sleeps", "c": "foxes and dogs play"})
    ours = dict(zip(*lexical.search("quick brown dogs", 10), strict=True))
    parsed = lexical._index.parse_query("quick brown dogs", ["body"])
    hits = lexical.searcher.search(parsed, 10).hits
    keys = lexical.searcher.fast_field_values("key", [address for _, address in hits])
    theirs = {key: score for key, (score, _) in zip(keys, hits, strict=True)}
    assert ours == pytest.approx(theirs)


def test_query_syntax_is_just_words(lexical):
    fill(lexical, {"a": "cats and dogs", "b": "birds sing", "c": "title of a book"})
    plain = lexical.search("dog cat bird title", 10)
    for messy in ['title:"dog" AND (cat OR -bird)^2 ~ *', "dog* cat? [bird TO title]", "+dog -cat {bird} title\\"]:
        assert lexical.search(messy, 10) == plain
    assert set(plain[0]) == {1, 2, 3}


def test_stop_words_only_or_empty_query_has_no_hits(lexical):
    fill(lexical, {"a": "to be or not to be", "b": "something else"})
    assert lexical.search("to be or not", 10) == ([], [])
    assert lexical.search("", 10) == ([], [])
    assert lexical.search("   ?!  ", 10) == ([], [])


def test_replacing_a_document_deletes_the_old_version(lexical):
    fill(lexical, {"a": "red apples", "b": "green pears"})
    with lexical.writer() as writer:
        writer.delete("a")
        writer.add("a", 10, "blue berries")
    assert lexical.search("apples", 10) == ([], [])
    assert lexical.search("berries", 10)[0] == [10]
    assert lexical.num_docs == 2
    with lexical.writer() as writer:
        writer.delete("b")
    assert lexical.search("pears", 10) == ([], [])
    assert lexical.num_docs == 1


def test_failed_write_rolls_back(lexical):
    fill(lexical, {"a": "red apples"})
    with pytest.raises(RuntimeError), lexical.writer() as writer:
        writer.delete("a")
        writer.add("b", 2, "green pears")
        raise RuntimeError("boom")
    assert lexical.search("apples pears", 10)[0] == [1]


def test_unicode_very_long_text_and_overlong_tokens(lexical):
    long_token = "x" * (MAX_TOKEN_BYTES + 1)
    fill(lexical, {"big": "filler " * 150_000 + "needle", "uni": f"Flügel 日本語 {long_token} naïve café"})
    assert lexical.search("needle", 10)[0] == [1]
    assert lexical.search("FLÜGEL", 10)[0] == [2]
    assert lexical.search(long_token, 10) == ([], [])


def test_reopen_keeps_documents_and_analyzer(tmp_path):
    first = LexicalIndex.create(tmp_path / "lex")
    fill(first, {"a": "running dogs"})
    del first
    reopened = LexicalIndex.open(tmp_path / "lex")
    assert reopened.search("run", 10)[0] == [1]
