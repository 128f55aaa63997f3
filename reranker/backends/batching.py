"""How rows of different lengths are grouped into padded batches (pure functions, tested by hand).

A padded batch costs ``rows * longest row`` tokens of compute. ``plan_batches`` packs generation prompts
greedily under a token budget (their key/value cache grows by ``max_new_tokens``). ``plan_forward_batches``
plans the forward-only passes that read scores: it splits the length-sorted rows where the padding saved
is worth one more call (``overhead`` token-equivalents per batch), the cheapest split found by dynamic
programming. For the shipped model's 20 DL19 likelihood rows (54-85 tokens) one padded batch wastes 23%
of its tokens; split, the OpenVINO pass is 1.15-1.2x faster (docs/results-engines.md).
"""

from __future__ import annotations

FORWARD_OVERHEAD_TOKENS = {"cpu": 48, "cuda": 4096}
"""What one more forward call costs, in padded tokens. CPU: picked by timing the OpenVINO pass on the
DL19 train and validation queries (0, 16, 48, 128; docs/results-engines.md: a reasonable pick within
noise). CUDA: not measured; large, so a GPU keeps one padded batch where the budget allows (a launch
costs more than padding there)."""


def forward_overhead(device: str) -> int:
    """``FORWARD_OVERHEAD_TOKENS`` for a torch device type (other accelerators as CUDA)."""
    return FORWARD_OVERHEAD_TOKENS.get(device, FORWARD_OVERHEAD_TOKENS["cuda"])


def plan_batches(
    lengths: list[int], max_new_tokens: int, max_batch_tokens: int, max_batch_size: int
) -> list[list[int]]:
    """Group prompt indices into batches, longest prompts first.

    A batch costs ``size * (longest prompt + max_new_tokens)`` tokens (the padded key/value cache
    it ends with); it grows while that stays within ``max_batch_tokens`` and ``max_batch_size``. A
    prompt too long for the budget on its own still gets a batch of one.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]] + max_new_tokens  # the first prompt of a batch is its longest
            if len(batch) < max_batch_size and (len(batch) + 1) * width <= max_batch_tokens:
                batch.append(index)
                continue
        batches.append([index])
    return batches


def plan_forward_batches(
    lengths: list[int], max_batch_tokens: int, max_batch_size: int, overhead: int
) -> list[list[int]]:
    """Row indices in batches (longest rows first) that minimise ``sum(size * longest) + overhead * batches``
    within ``max_batch_tokens`` (padded) and ``max_batch_size`` per batch; a row over the budget on its own
    gets a batch of one. Batches of consecutive rows in length order suffice (swapping rows between two
    batches never lowers both widths), so the search is over cut points: O(rows * max_batch_size)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    widths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest plan of the first j rows
    start = [0] * (n + 1)  # start[j]: where the last batch of that plan begins
    for j in range(1, n + 1):
        for i in range(max(0, j - max_batch_size), j):  # the last batch is rows i..j-1, widest first
            size = j - i
            if size > 1 and size * widths[i] > max_batch_tokens:
                continue
            cost = best[i] + size * widths[i] + overhead
            if cost < best[j]:
                best[j], start[j] = cost, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[start[j]:j])
        j = start[j]
    return batches[::-1]
