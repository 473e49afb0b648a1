"""The prompt prefixes rows share, what vLLM's prefix cache serves of them, the CPU block size
chosen for it, and what that does to a CPU plan."""

from __future__ import annotations

import random
from dataclasses import replace

from plan_builders import cluster, llama_like, query

from uellm_cli.plan.planner import make_plan
from uellm_cli.plan.prefixes import cached_tokens, cpu_block_size, shared_prefixes
from uellm_cli.profile.devices import Device


def _earlier_share(prompts: list[list[int]]) -> list[int]:
    """The definition, the slow way: the longest common prefix with any earlier prompt."""
    out = []
    for i, p in enumerate(prompts):
        best = 0
        for q in prompts[:i]:
            n = 0
            while n < min(len(p), len(q)) and p[n] == q[n]:
                n += 1
            best = max(best, n)
        out.append(best)
    return out


def test_each_prompt_shares_what_an_earlier_prompt_starts_with():
    prompts = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9], [7], [1, 2, 3, 4, 6], [7, 8]]
    # the first of each prefix pays for it: [1, 2, 3, 4] shares nothing with what came before
    assert shared_prefixes(prompts) == [0, 3, 2, 0, 4, 1]


def test_shared_prefixes_agree_with_the_definition_on_random_prompts():
    rng = random.Random(7)
    for _ in range(200):
        prompts = [[rng.randint(0, 2) for _ in range(rng.randint(0, 7))]
                   for _ in range(rng.randint(0, 14))]
        assert shared_prefixes(prompts) == _earlier_share(prompts)


def test_the_cache_serves_whole_blocks_and_never_the_last_prompt_token():
    assert cached_tokens(40, 100, 32) == 32
    assert cached_tokens(31, 100, 32) == 0
    assert cached_tokens(100, 100, 32) == 96  # the whole prompt shared: its last token is computed
    assert cached_tokens(64, 65, 32) == 64
    assert cached_tokens(5, 1, 32) == 0


def test_the_cpu_block_is_the_largest_that_serves_what_the_smallest_would():
    assert cpu_block_size([(100, 40)] * 10) == 32  # only blocks of 32 catch 40 shared tokens
    assert cpu_block_size([(100, 70)] * 10) == 64  # 64 of them in blocks of 64 as of 32
    assert cpu_block_size([(300, 130)] * 10) == 128
    assert cpu_block_size([(100, 0)] * 10) == 128  # nothing shared: vLLM's default
    assert cpu_block_size([]) == 128


def test_a_cpu_plan_of_rows_sharing_a_prefix_counts_on_the_cache():
    """Rows that share their first 48 prompt tokens: the plan starts vLLM in blocks of 32, and
    its forecast, which prefills 32 tokens fewer a row (all but the first), ends sooner."""
    model = llama_like(layers=4, hidden=512, heads=8, kv_heads=8, inter=1024, vocab=1000)
    cpu = cluster([Device("cpu", "test-cpu", "cpu", 24 * 10**9, 2e11, 4e10, "local")])
    rows = [query(i, prompt=400, pred=20, deadline=1000.0) for i in range(40)]
    alone = make_plan(rows, model, cpu, engine="vllm")
    shared = make_plan([replace(q, shared_prefix=48 if q.index else 0) for q in rows], model, cpu,
                       engine="vllm")
    assert alone.stream[0].block_size == 128 and shared.stream[0].block_size == 32
    assert shared.summary["makespan_s"] < alone.summary["makespan_s"]
