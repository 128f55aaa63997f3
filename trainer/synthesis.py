"""Label synthesis: fuse a pointwise and a listwise teacher into integer 0-10 targets per document, and write
the training conversations (the engine's own groupwise prompt, the target JSON as the answer).

The fusion follows the GroupRank reference release (``Reranker/rerank_merge_point_and_list.py``)::

    listwise_i  = -ln(rank_i + 1)            rank_i: 0-based position in the listwise teacher's order
    L_i         = min-max of listwise over the group   (= 1 - ln(rank_i + 1) / ln(n); 1 for the best)
    P_i         = pointwise_i / 10                      (the 0-10 teacher score, as a fraction)
    target_i    = round(10 * (a * P_i + b * L_i))       a = 0.6, b = 0.4 by default; halves round up

A dataset row (JSONL)::

    {"qid", "group", "doc_ids", "labels", "targets": [int], "prompt": [system, user messages],
     "completion": [{"role": "assistant", "content": "```json\\n{\\"[1]\\": 7, ...}\\n```"}]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.jsonl import iter_jsonl
from trainer.config import SynthesisConfig
from trainer.mining import MinedQuery
from trainer.teachers import ListwiseTeacher, PointwiseTeacher, TeacherGroup


def fuse_targets(pointwise: list[float], order: list[int], a: float = 0.6, b: float = 0.4) -> list[int]:
    """Integer 0-10 targets for one group (see the module docstring). ``order`` lists indices best first."""
    n = len(pointwise)
    if sorted(order) != list(range(n)):
        raise InputError(f"the listwise order {order} is not a permutation of 0..{n - 1}", field="order")
    rank = {doc: r for r, doc in enumerate(order)}
    listwise = [-math.log(rank[i] + 1) for i in range(n)]
    low, high = min(listwise, default=0.0), max(listwise, default=0.0)
    norm = [1.0 if high == low else (v - low) / (high - low) for v in listwise]
    out = []
    for p, lw in zip(pointwise, norm, strict=True):
        fused = a * min(max(p, 0.0), 10.0) / 10.0 + b * lw
        out.append(min(10, max(0, math.floor(10.0 * fused + 0.5 + 1e-9))))
    return out


def answer_text(targets: list[int]) -> str:
    """The answer the model is taught: the engine prompt's JSON, whole (serving prefills its first
    characters, ``reranker.prompts.ANSWER_PREFIX``, and the model continues from there)."""
    return json.dumps({f"[{i}]": t for i, t in enumerate(targets, start=1)})


def group_prompt(query: str, docs: list[Any], max_doc_chars: int) -> list[dict[str, str]]:
    """The groupwise prompt as ``GroupwiseReranker`` builds it when serving with ``max_doc_chars``, less
    the answer prefix: the training answer is the whole JSON."""
    from reranker.prompts import Truncator, document_text, groupwise_messages, groupwise_template
    from reranker.types import Candidate

    cut = Truncator(max_chars=max_doc_chars)
    texts = [cut(document_text(Candidate(id=d.id, text=d.text, title=d.title)))[0] for d in docs]
    return groupwise_messages(query, texts, groupwise_template(reasoning=False).without_prefix())


def synthesize(mined: list[MinedQuery], pointwise: PointwiseTeacher, listwise: ListwiseTeacher,
               config: SynthesisConfig) -> list[dict[str, Any]]:
    """One training row per mined group; both teachers see all groups in one batch."""
    keys: list[tuple[MinedQuery, int]] = []
    groups: list[TeacherGroup] = []
    for m in mined:
        for g, indices in enumerate(m.groups):
            keys.append((m, g))
            groups.append(TeacherGroup(m.query, [m.candidates[i] for i in indices]))
    if not groups:
        return []
    scores = pointwise.score(groups)
    orders = listwise.rank(groups)
    rows = []
    for (m, g), group, point, order in zip(keys, groups, scores, orders, strict=True):
        targets = fuse_targets(point, order, config.a, config.b)
        rows.append({
            "qid": m.qid,
            "group": g,
            "doc_ids": [d.id for d in group.docs],
            "labels": [d.label for d in group.docs],
            "targets": targets,
            "prompt": group_prompt(m.query, group.docs, config.max_doc_chars),
            "completion": [{"role": "assistant", "content": answer_text(targets)}],
        })
    return rows


def read_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Read a synthesized dataset, checking each row's fields (errors name file, line and field)."""
    rows = []
    for n, row in iter_jsonl(path):
        for name in ("prompt", "completion", "targets"):
            if not isinstance(row.get(name), list) or not row[name]:
                raise InputError("missing or empty list", source=path, line=n, field=name)
        if not all(isinstance(t, int) and 0 <= t <= 10 for t in row["targets"]):
            raise InputError("targets must be integers 0-10", source=path, line=n, field="targets")
        rows.append(row)
    if not rows:
        raise InputError("the dataset is empty", source=path)
    return rows
