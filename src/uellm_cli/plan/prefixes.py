"""Prompt prefixes the rows of a job share, and the KV block size that lets vLLM's prefix cache
serve them.

vLLM keeps the KV of every whole block of tokens it has computed and gives it to a later
request whose prompt starts with the same tokens, which then prefills only the rest (never
its last token: that one is computed to sample from). Jobs share more than one would think:
every row of a chat model starts with the same template and system prompt (24 tokens for
SmolLM2), many with the same instructions or context. Only whole blocks are served, and
vLLM's CPU backend uses blocks of 128 tokens, more than most shared prefixes: the 1,000-row
synthetic job (84 prompt tokens a row, 32 of them shared by 991 rows) ran 322-326 tok/s in
blocks of 32 against 263-275 in blocks of 128 on a 2-core Xeon, where a prefill token costs
about two thirds of a decoding row (docs/planner.md, "Shared prefixes").
"""

from __future__ import annotations

from collections.abc import Sequence

# Block sizes vLLM's CPU attention takes (multiples of 32), largest (its default) first.
CPU_BLOCK_SIZES = (128, 64, 32)


def shared_prefixes(prompts: Sequence[Sequence[int]]) -> list[int]:
    """For each prompt, how many of its leading tokens an earlier prompt of the job (in input
    order) starts with: what the prefix cache can hold for it, the first prompt of each shared
    prefix paying for it. In sorted order, the earlier prompt sharing most is the nearest one
    on either side with a smaller index, and its common prefix the least of the neighbours'
    between them."""
    order = sorted(range(len(prompts)), key=prompts.__getitem__)
    links = [_common(prompts[a], prompts[b]) for a, b in zip(order, order[1:], strict=False)]
    shared = [0] * len(prompts)
    for seq, seq_links in ((order, links), (order[::-1], links[::-1])):
        stack: list[list[int]] = []  # [index, least link from it to the current prompt]
        for pos, i in enumerate(seq):
            if stack:
                stack[-1][1] = min(stack[-1][1], seq_links[pos - 1])
            while stack and stack[-1][0] > i:  # a later prompt: this one shares as much with any after
                _, least = stack.pop()
                if stack:
                    stack[-1][1] = min(stack[-1][1], least)
            if stack:
                shared[i] = max(shared[i], stack[-1][1])
            stack.append([i, 1 << 62])
    return shared


def cached_tokens(shared: int, prompt_tokens: int, block_size: int) -> int:
    """The prompt tokens the prefix cache serves a row: its shared prefix in whole blocks,
    short of its last token."""
    return min(shared, prompt_tokens - 1) // block_size * block_size if prompt_tokens > 1 else 0


def cpu_block_size(rows: Sequence[tuple[int, int]]) -> int:
    """The block size for a CPU instance serving rows of (prompt tokens, shared prefix): the
    largest of CPU_BLOCK_SIZES through which the cache serves as many prompt tokens as
    through the smallest, so vLLM's default stays wherever smaller blocks gain nothing."""
    served = {b: sum(cached_tokens(s, p, b) for p, s in rows) for b in CPU_BLOCK_SIZES}
    most = served[CPU_BLOCK_SIZES[-1]]
    return next(b for b in CPU_BLOCK_SIZES if served[b] >= most)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
