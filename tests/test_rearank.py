"""REARANK as a listwise prompt (``reranker.rearank``): the release's chat, its answer parsing, a scripted
backend proving the permutation is applied, and a tiny random transformer end to end.

The expected strings are typed out from the release (lezhang7/Rearank ``rank_gpt.py``,
``create_permutation_instruction_rearank``), not imported, so a drift in the module's text fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from grouprank.errors import InputError
from reranker import (
    Candidate,
    ListwiseReranker,
    RearankTemplate,
    load_reranker,
    parse_permutation,
    parse_rearank,
    rearank_template,
)
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages
from reranker.prompts import listwise_messages, listwise_template

SYSTEM = (
    "You are DeepRerank, an intelligent assistant that can rank passages based on their relevancy to the search "
    "query. You first thinks about the reasoning process in the mind and then provides the user with the answer."
)
INSTRUCTION_TWO = (
    "I will provide you with passages, each indicated by number identifier []. Rank the passages based on their "
    "relevance to the search query.Search Query: how do wings lift. \nRank the 2 passages above based on their "
    "relevance to the search query.The passages should be listed in descending order using identifiers. The most "
    "relevant passages should be listed first. The output format should be <answer> [] > [] </answer>, e.g., "
    "<answer> [1] > [2] </answer>."
)
POST = """Please rank these passages according to their relevance to the search query: "how do wings lift"
            Follow these steps exactly:
            1. First, within <think> tags, analyze EACH passage individually:
            - Evaluate how well it addresses the query
            - Note specific relevant information or keywords

            2. Then, within <answer> tags, provide ONLY the final ranking in descending order of relevance \
using the format: [X] > [Y] > [Z]"""

TWO_DOCS_CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": INSTRUCTION_TWO},
    {"role": "assistant", "content": "Okay, please provide the passages."},
    {"role": "user", "content": "[1] Bernoulli: faster air above the wing lowers the pressure."},
    {"role": "assistant", "content": "Received passage [1]."},
    {"role": "user", "content": "[2] Heat conduction in composite slabs."},
    {"role": "assistant", "content": "Received passage [2]."},
    {"role": "user", "content": POST},
]
TWO_DOCS = ["Bernoulli:  faster air above\tthe wing lowers the pressure.", "Heat conduction in composite slabs."]


class ScriptedBackend(Backend):
    """Stands in for Rearank-7B: ``answer(prompt)`` is each completion; records calls and configs."""

    name = "scripted"

    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls: list[list[Messages]] = []
        self.configs: list[GenerationConfig] = []

    def generate(self, prompts, config, deadline=None):
        self.calls.append(prompts)
        self.configs.append(config)
        return [Completion(self.answer(p), 10, 10) for p in prompts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def window_docs(prompt: Messages) -> list[str]:
    """The passages of a REARANK chat, in order (the ``[i] text`` user turns)."""
    turns = [m["content"] for m in prompt if m["role"] == "user"]
    return [t.split(" ", 1)[1] for t in turns if re.match(r"\[\d+\] ", t)]


# --- (a) the prompt ----------------------------------------------------------------------------------


def test_two_document_window_is_the_releases_chat():
    assert rearank_template().messages("how do wings lift", TWO_DOCS) == TWO_DOCS_CHAT
    # The same chat through the generic listwise path and through the reranker.
    assert listwise_messages("how do wings lift", TWO_DOCS, rearank_template()) == TWO_DOCS_CHAT
    backend = ScriptedBackend(lambda p: "<answer>[1] > [2]</answer>")
    ListwiseReranker(backend, prompt="rearank").rerank("how do wings lift", TWO_DOCS)
    assert backend.calls == [[TWO_DOCS_CHAT]]


def test_passages_are_cut_to_400_characters_like_the_release():
    long = "word " * 200
    chat = rearank_template().messages("q", [long])
    assert chat[3]["content"] == "[1] " + " ".join(long.split())[:400]
    uncut = RearankTemplate(passage_chars=None).messages("q", [long])
    assert uncut[3]["content"] == "[1] " + long.strip()


def test_bad_templates_are_named():
    with pytest.raises(InputError, match="documents"):
        RearankTemplate(post="{query} {documents}")
    with pytest.raises(InputError, match="listwise"):
        RearankTemplate(kind="groupwise")
    with pytest.raises(InputError, match="integer >= 1"):
        RearankTemplate(max_new_tokens=0)
    with pytest.raises(InputError, match="integer >= 1"):
        RearankTemplate(passage_chars=0)
    with pytest.raises(InputError, match="one-line"):
        rearank_template().render(query="q", documents="[1] a\nsecond line\n[2] b", num=2)


# --- (b) the parser ----------------------------------------------------------------------------------


def release_order(text: str, n: int) -> list[int]:
    """What the release's ``clean_response`` + ``receive_permutation`` make of a completion (re-implemented
    from its description): the first closed answer, else the text after the last ``</think>``; every digit
    run; first occurrences of ids 1..n; the missing ids appended."""
    match = re.search(r"<answer>(.*?)</answer>", text, re.S)
    body = match.group(1) if match else text
    if "<think>" in body:
        body = body.split("</think>")[-1]
    given = list(dict.fromkeys(int(x) for x in re.findall(r"\d+", body)))
    given = [i for i in given if 1 <= i <= n]
    return given + [i for i in range(1, n + 1) if i not in given]


RELEASE_STYLE_ANSWER = """<think>
[1] Describes prenatal visits: physical exam, weight checks, urine sample. Directly answers the query.
[2] Cost of prenatal care in 2019, $1,700 to $3,000; not what care includes.
[3] Lists prenatal tests (ultrasound, amniocentesis, group B strep). Relevant.
</think>
<answer> [1] > [3] > [2] </answer>"""


@pytest.mark.parametrize(
    ("text", "n", "order"),
    [
        ("<answer> [1] > [2] </answer>", 2, [1, 2]),  # the example in the release's instruction
        (RELEASE_STYLE_ANSWER, 3, [1, 3, 2]),  # reasoning, then the answer (the post prompt's format)
        ("<think>\nshort\n</think>\n\n<answer>[20] > [3] > [1] > [2]</answer>", 20,
         [20, 3, 1, 2, *range(4, 20)]),
    ],
)
def test_well_formed_answers_agree_with_the_release(text, n, order):
    parse = parse_rearank(text, n)
    assert parse.order == order == release_order(text, n)
    assert parse.ok == (len(parse.given) == n)


@pytest.mark.parametrize(
    ("text", "order", "given", "unknown", "duplicates"),
    [
        # missing </answer> (cut off): the answer runs to the end; a cut id ("[1" of "[12]"?) is not trusted
        ("<think>[3] is about 1990.</think><answer> [2] > [3] > [1", [2, 3, 1], [2, 3], [], []),
        # extra text after the answer
        ("<think>x</think><answer>[3] > [1]</answer>\nI hope this helps! [2]", [3, 1, 2], [3, 1], [], []),
        # duplicates keep their first place; out-of-range ids (0, 7) are dropped; missing ids appended
        ("<answer>[2] > [2] > [0] > [7] > [1]</answer>", [2, 1, 3], [2, 1], [0, 7], [2]),
        # an answer echoed inside the thinking does not count, the real one does
        ("<think>format: <answer> [1] > [2] </answer>; [3] best</think><answer>[3] > [2] > [1]</answer>",
         [3, 2, 1], [3, 2, 1], [], []),
        # the model forgot </think>: its answer still counts
        ("<think>[1] weak, [3] strong <answer>[3] > [1] > [2]</answer>", [3, 1, 2], [3, 1, 2], [], []),
        # thinking cut off by the token limit: no answer, the window keeps its order
        ("<think>[1] mentions 1990 and [3] is about 2", [1, 2, 3], [], [], []),
        # no tags at all: a bare RankGPT answer still works
        ("[3] > [1] > [2]", [3, 1, 2], [3, 1, 2], [], []),
        ("", [1, 2, 3], [], [], []),
    ],
)
def test_malformed_answers(text, order, given, unknown, duplicates):
    parse = parse_rearank(text, 3)
    assert (parse.order, parse.given, parse.unknown, parse.duplicates) == (order, given, unknown, duplicates)


def test_where_the_release_reads_the_reasoning_we_do_not():
    cut_off = "<think>[1] mentions 1990 and [3] is about 2"  # thinking cut by the token limit
    assert release_order(cut_off, 3) == [1, 3, 2]  # numbers of the reasoning taken as a ranking
    assert parse_rearank(cut_off, 3).given == []
    echoed = "<think>format: <answer> [1] > [2] </answer>; [3] best</think><answer>[3] > [2] > [1]</answer>"
    assert release_order(echoed, 3) == [1, 2, 3] and parse_rearank(echoed, 3).order == [3, 2, 1]
    assert parse_rearank(None, 2).order == [1, 2]  # type: ignore[arg-type]


# --- (d) a scripted backend: the permutation is applied -----------------------------------------------


def reversing(prompt: Messages) -> str:
    """Reason about each passage, then answer the window reversed."""
    n = len(window_docs(prompt))
    thoughts = "\n".join(f"[{i}] seems {'good' if i % 2 else 'weak'}." for i in range(1, n + 1))
    return f"<think>\n{thoughts}\n</think>\n<answer> {' > '.join(f'[{i}]' for i in range(n, 0, -1))} </answer>"


@pytest.mark.parametrize(
    "answer",
    [
        "<think>[1] is weak, [2] answers it.</think>\n<answer>[2] > [1]</answer>",
        "<reason>[1] is weak.</reason><answer>[2] > [1]</answer>",
        "<think>[1] is weak, [2] answers it.\n<answer>[2] > [1]</answer>",  # forgot </think>: REARANK's parser
    ],
)
def test_scripted_answer_permutes_the_window(answer):
    backend = ScriptedBackend(lambda p: answer)
    cands = [Candidate("a", "A", 2.0), Candidate("b", "B", 1.0)]
    ranking = ListwiseReranker(backend, prompt="rearank").rerank("q", cands)
    assert ranking.ids == ["b", "a"] and ranking.trace.parse_failures == 0 and ranking.fallback == []
    assert backend.configs[0].max_new_tokens == 2048  # the release's max_tokens: room for the reasoning


def test_sliding_windows_with_the_rearank_prompt():
    backend = ScriptedBackend(reversing)
    cands = [Candidate(f"d{i}", f"doc {i}", float(100 - i)) for i in range(30)]
    ranking = ListwiseReranker(backend, prompt="rearank").rerank("q", cands)
    assert [len(window_docs(call[0])) for call in backend.calls] == [20, 20]  # windows at 10 and 0
    assert window_docs(backend.calls[0][0]) == [f"doc {i}" for i in range(10, 30)]
    # Window 1 reverses 10..29; window 2 takes 0..9 and 29..20 and reverses them.
    expected = [f"d{i}" for i in [*range(20, 30), *range(9, -1, -1), *range(19, 9, -1)]]
    assert ranking.ids == expected
    assert ranking.trace.critical_path_depth == 2 and ranking.trace.parse_failures == 0


def test_a_window_whose_thinking_was_cut_off_keeps_its_order():
    def answer(prompt: Messages) -> str:
        return "<think>[1] is" if "doc 29" in window_docs(prompt) else reversing(prompt)

    cands = [Candidate(f"d{i}", f"doc {i}", float(100 - i)) for i in range(30)]
    ranking = ListwiseReranker(ScriptedBackend(answer), prompt="rearank").rerank("q", cands)
    assert ranking.ids[20:] == [f"d{i}" for i in range(20, 30)] == ranking.fallback
    assert ranking.ids[:20] == [f"d{i}" for i in range(19, -1, -1)]
    assert ranking.trace.parse_failures == 1


def test_selection_and_defaults():
    backend = ScriptedBackend(reversing)
    default = ListwiseReranker(backend)
    assert default.template == listwise_template() and default.generation.max_new_tokens == 16 + 6 * 20
    assert (default.window, default.stride) == (20, 10)  # the release's window_size and step
    by_name = load_reranker("listwise", backend=backend, prompt="rearank")
    assert isinstance(by_name.template, RearankTemplate) and by_name.generation.max_new_tokens == 2048
    by_template = ListwiseReranker(backend, template=RearankTemplate(max_new_tokens=4096))
    assert by_template.generation.max_new_tokens == 4096  # an explicit template wins over prompt=
    explicit = ListwiseReranker(backend, prompt="rearank", generation=GenerationConfig(max_new_tokens=64))
    assert explicit.generation.max_new_tokens == 64 and isinstance(explicit.template, RearankTemplate)
    with pytest.raises(InputError, match="unknown listwise prompt 'rankzephyr'") as err:
        ListwiseReranker(backend, prompt="rankzephyr")
    assert err.value.field == "prompt"


# --- (c) a tiny random transformer end to end, and the CLI ----------------------------------------------


def test_tiny_model_end_to_end(tiny_model_path):
    reranker = load_reranker("listwise", model=tiny_model_path, prompt="rearank",
                             generation=GenerationConfig(max_new_tokens=24))  # the default 2048 is slow on CPU
    assert isinstance(reranker.template, RearankTemplate)
    cands = [Candidate(f"d{i}", f"passage {i} about topic {i % 4}", float(25 - i)) for i in range(25)]
    ranking = reranker.rerank("topic 3", cands)
    trace = ranking.trace
    assert trace.llm_calls == 2 and trace.critical_path_depth == 2 and trace.errors == []  # windows at 5, 0
    assert sorted(ranking.ids) == sorted(c.id for c in cands) and len(ranking.ids) == 25
    assert 0 < trace.completion_tokens <= 2 * 24
    assert sorted(ranking.reranked + ranking.fallback) == sorted(ranking.ids)
    # The multi-turn chat goes through the model's chat template whole: 20 passages, each acknowledged.
    backend = reranker.backend
    ids = backend.encode(listwise_messages("topic 3", [c.text for c in cands[:20]], reranker.template))
    text = backend.tokenizer.decode(ids)
    assert text.count("Received passage [") == 20 and "Received passage [20]." in text and SYSTEM in text
    assert trace.prompt_tokens > len(ids)  # two windows of about that size


def test_cli_option(tiny_model_path):
    from grouprank.cli.rerank_cmds import BackendName, ListwisePrompt, Method, build_reranker

    reranker = build_reranker(Method.listwise, tiny_model_path, BackendName.transformers, 20, 1, 0.6, 1000, None,
                              listwise_prompt=ListwisePrompt.rearank)
    assert isinstance(reranker.template, RearankTemplate) and reranker.generation.max_new_tokens == 2048
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GROUPRANK_PROGRESS": "0", "COLUMNS": "200"}
    args = ["rerank", "q", "--doc", "a", "--method", "listwise", "--listwise-prompt", "rankzephyr"]
    result = subprocess.run([sys.executable, "-m", "grouprank.cli.main", *args], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 2 and "rearank" in result.stdout + result.stderr
    assert parse_permutation("[2] > [1]", 2).order == [2, 1]  # the RankGPT parser is untouched
