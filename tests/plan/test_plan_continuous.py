"""The continuous-batching simulator against schedules worked out by hand (one second a step,
so a row's times count steps): admission up to max_num_seqs, a row leaving and its slot
refilled, a chunked prefill, a recompute preemption when KV blocks run out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from uellm_cli.plan.continuous import SimRequest, simulate, stream_limits
from uellm_cli.plan.types import StreamLimits


def _limits(seqs: int = 256, budget: int = 100, blocks: int = 10_000, block: int = 16) -> StreamLimits:
    return StreamLimits(max_num_seqs=seqs, max_num_batched_tokens=budget, kv_cache_bytes=0,
                        kv_blocks=blocks, block_size=block, max_model_len=4096)


class Steps:
    """A step timer of one second that records what each step held."""

    def __init__(self):
        self.held: list[tuple[int, int, int]] = []  # (prefill tokens, decode rows, sampled)

    def __call__(self, prefill_tokens, prefill_attention, decode_rows, decode_context, sampled):
        self.held.append((prefill_tokens, decode_rows, sampled))
        return 1.0


def _rows(*shapes: tuple[int, int]) -> list[SimRequest]:
    return [SimRequest(i, p, o, i) for i, (p, o) in enumerate(shapes)]


def test_rows_are_admitted_up_to_max_num_seqs_the_rest_wait_for_a_slot():
    steps = Steps()
    r = simulate(_rows((4, 3), (4, 3), (4, 3)), _limits(seqs=2), steps, start_s=10.0)
    # steps 1-3: rows 0 and 1 (prefill + first token, then two decodes); steps 4-6: row 2
    assert [r.start_s[i] for i in range(3)] == [10.0, 10.0, 13.0]
    assert [r.finish_s[i] for i in range(3)] == [13.0, 13.0, 16.0]
    assert steps.held[0] == (8, 0, 2) and steps.held[1] == (0, 2, 2) and steps.held[3] == (4, 0, 1)
    assert r.steps == 6 and r.preemptions == 0 and r.end_s == 16.0


def test_a_row_that_ends_frees_its_slot_for_the_next_in_order():
    steps = Steps()
    r = simulate(_rows((4, 2), (4, 5), (4, 1)), _limits(seqs=2), steps)
    # row 0 ends after step 2; row 2 joins in step 3 (its prefill beside row 1's decode) and is
    # done in it; row 1 goes on to its fifth token in step 5
    assert [r.start_s[i] for i in range(3)] == [0.0, 0.0, 2.0]
    assert [r.finish_s[i] for i in range(3)] == [2.0, 5.0, 3.0]
    assert steps.held[2] == (4, 1, 2)  # a mixed step: one prefill, one decode


def test_a_long_prompt_is_prefilled_in_chunks_of_the_token_budget():
    steps = Steps()
    r = simulate(_rows((10, 1)), _limits(budget=4), steps)
    assert [h[0] for h in steps.held] == [4, 4, 2]
    assert [h[2] for h in steps.held] == [0, 0, 1]  # its token comes with the last chunk
    assert r.finish_s[0] == 3.0


def test_a_row_whose_prompt_start_the_cache_holds_prefills_only_the_rest():
    steps = Steps()
    # a 10-token prompt in chunks of 4: 4, 4, 2 tokens; with 8 served by the prefix cache, the
    # last 2 in one step, which samples its only token
    r = simulate([SimRequest(0, 10, 1, 0, cached_tokens=8), SimRequest(1, 10, 1, 1)],
                 _limits(budget=4, seqs=1), steps)
    assert steps.held == [(2, 0, 1), (4, 0, 0), (4, 0, 0), (2, 0, 1)]
    assert r.finish_s == {0: 1.0, 1: 4.0}


def test_out_of_blocks_the_lowest_priority_row_is_preempted_and_recomputed():
    steps = Steps()
    # one token per block, 10 blocks: both rows fit their prompts and two tokens, not three
    r = simulate(_rows((4, 4), (4, 4)), _limits(blocks=10, block=1), steps)
    assert r.preemptions == 1
    # row 0 runs on alone and ends in step 4; row 1 (rank 1) recomputes its prompt and its two
    # tokens (6 tokens) in step 5 and ends in step 6
    assert r.finish_s == {0: 4.0, 1: 6.0}
    assert r.start_s == {0: 0.0, 1: 0.0}  # a start is the first time it ran
    assert steps.held[4] == (6, 0, 1)


def test_limits_hold_the_largest_rows_at_full_length_and_never_less_than_one():
    lim = stream_limits([(100, 50), (30, 200), (10, 10)], kv_bytes_per_token=1000,
                        max_context=2048, kv_budget_bytes=1 << 30, max_num_seqs=2, on_gpu=False)
    assert lim.max_num_seqs == 2 and lim.max_model_len == 240 and lim.block_size == 128
    assert lim.kv_cache_bytes >= 16 << 20  # vLLM's floor
    assert lim.kv_blocks == lim.kv_cache_bytes // (1000 * 128)
    tight = stream_limits([(1000, 1000)], kv_bytes_per_token=1000, max_context=2048,
                          kv_budget_bytes=1000, max_num_seqs=4, on_gpu=True)
    assert tight.kv_cache_bytes >= 2000 * 1000 and tight.block_size == 16  # one whole request


@pytest.mark.parametrize(("rows", "seqs", "budget", "blocks", "block", "early", "held"), [
    (50, 32, 512, 800, 16, None, None),  # plenty of blocks: the lazy set takes most steps
    (400, 32, 512, 800, 16, None, None),
    (300, 64, 256, 300, 16, None, None),  # blocks and budget tight: preemptions, rows going without
    (200, 16, 4096, 120, 128, 4, None),  # CPU-sized blocks, an early cap
    (120, 8, 64, 10_000, 16, None, None),  # prompts longer than the budget: chunked prefills
    (300, 128, 4096, 400, 16, None, None),  # decoding rows run out of blocks: preemptions in the set
    (200, 256, 4096, 60, 128, None, None),
    (200, 64, 4096, 300, 16, 8, (120, 0)),  # the last rows held until the rest have ended
    (300, 32, 512, 300, 16, None, (150, 10)),  # held until 10 are left, preemptions
])
def test_the_lazy_decoding_set_gives_the_row_by_row_schedule(rows, seqs, budget, blocks, block, early,
                                                             held):
    """Decoding rows are advanced as a set; the result must be what single steps give, row
    by row, whatever the limits (the reference is simulate(fast=False))."""
    import random

    rng = random.Random(rows)
    reqs = [SimRequest(i, rng.randint(5, 300), rng.randint(1, 200), rng.randint(0, rows),
                       generated=rng.choice([0, 0, 0, 3]) if i < 10 else 0) for i in range(rows)]
    reqs = [r if r.output_tokens > r.generated else replace(r, generated=0) for r in reqs]
    reqs = [replace(r, cached_tokens=(r.prompt_tokens - 1) // block * block) if r.index % 3 == 1 else r
            for r in reqs]  # the prefix cache serves some rows' prompts
    lim = replace(_limits(seqs=seqs, budget=budget, blocks=blocks, block=block),
                  early_cap=early, early_rows=rows // 3 if early else 0)
    if held is not None:
        lim = replace(lim, held_from=held[0], held_release=held[1])

    def timer(p, a, d, c, s):
        return 0.01 + 0.001 * d + 1e-6 * c + 1e-4 * p + 1e-8 * a + 1e-5 * s

    fast, slow = simulate(reqs, lim, timer), simulate(reqs, lim, timer, fast=False)
    assert fast.steps == slow.steps and fast.preemptions == slow.preemptions
    assert fast.finish_s == pytest.approx(slow.finish_s, rel=1e-9)
    assert fast.start_s == pytest.approx(slow.start_s, rel=1e-9)


def test_an_early_cap_holds_the_first_rows_to_fewer_at_once():
    steps = Steps()
    held = replace(_limits(seqs=8), early_cap=1, early_rows=2)
    r = simulate(_rows((4, 2), (4, 2), (4, 2), (4, 2)), held, steps)
    # rows 0 and 1 (the early ones) one at a time: row 1 waits for row 0; once row 1 is in,
    # the queue's head is a later row, and rows 2 and 3 join it at once
    assert [r.start_s[i] for i in range(4)] == [0.0, 2.0, 2.0, 2.0]
    assert [r.finish_s[i] for i in range(4)] == [2.0, 4.0, 4.0, 4.0]
    assert steps.held[0] == (4, 0, 1) and steps.held[2] == (12, 0, 3)


def test_caps_given_per_row_replace_the_early_cap():
    """A replay gives each row the cap it really ran under (a revised plan's): the same as an
    early cap where they agree, and a later row held to fewer where a revision held it."""
    rows = _rows((4, 2), (4, 2), (4, 2), (4, 2))
    early = simulate(rows, replace(_limits(seqs=8), early_cap=1, early_rows=2), Steps())
    same = simulate(rows, _limits(seqs=8), Steps(), caps={0: 1, 1: 1})
    assert same.start_s == early.start_s and same.finish_s == early.finish_s
    # a revision held rows 2 and 3 to two at once, where the first plan's early cap let all in
    revised = simulate(rows, replace(_limits(seqs=8), early_cap=1, early_rows=2), Steps(),
                       caps={0: 1, 1: 1, 2: 2, 3: 2})
    # row 2 joins row 1 (two at once); row 3 waits for them: under the first plan it did not
    assert [revised.start_s[i] for i in range(4)] == [0.0, 2.0, 2.0, 4.0]
    assert [early.start_s[i] for i in range(4)] == [0.0, 2.0, 2.0, 2.0]
    held = replace(_limits(seqs=8), held_from=3)  # a held row still waits, whatever its cap
    assert simulate(rows, held, Steps(), caps={3: 8}).start_s[3] == 2.0


def test_held_rows_wait_until_the_rows_before_them_have_ended():
    steps = Steps()
    held = replace(_limits(seqs=8), held_from=2)
    r = simulate(_rows((4, 5), (4, 2), (4, 2), (4, 2)), held, steps)
    # rows 0 and 1 start at once; rows 2 and 3 (held) wait for both, though slots are free
    assert [r.start_s[i] for i in range(4)] == [0.0, 0.0, 5.0, 5.0]
    assert [r.finish_s[i] for i in range(4)] == [5.0, 2.0, 7.0, 7.0]
    assert steps.held[2] == (0, 1, 1)  # row 0 decodes alone while the held rows wait


def test_held_rows_are_let_in_once_few_enough_of_the_others_are_left():
    held = replace(_limits(seqs=8), held_from=3, held_release=1)
    r = simulate(_rows((4, 6), (4, 2), (4, 3), (4, 2)), held, Steps())
    # row 3 waits while more than one of rows 0-2 is unfinished: it joins when row 2 ends
    assert r.start_s[3] == 3.0 and r.finish_s[3] == 5.0
    every = simulate(_rows((4, 6), (4, 2), (4, 3), (4, 2)), replace(held, held_release=3), Steps())
    assert every.start_s[3] == 0.0  # a release as large as the rows before it holds nothing


def test_rows_already_running_keep_their_kv_and_tokens():
    steps = Steps()
    reqs = [SimRequest(0, 4, 5, 0, generated=3), SimRequest(1, 4, 2, 1)]
    r = simulate(reqs, _limits(), steps)
    assert steps.held[0] == (4, 1, 2)  # row 0 decodes (no prefill again), row 1 prefills
    assert r.finish_s == {0: 2.0, 1: 2.0}


def test_decoding_rows_short_of_blocks_preempt_without_the_row_by_row_step(monkeypatch):
    """KV-bound decoding (a big job on a small cache) preempts every few steps; those steps
    stay in the lazy set (the parametrized test above checks they give the same schedule)."""
    import random

    from uellm_cli.plan import continuous

    slow_steps = []
    real = continuous._Sim._slow_step
    monkeypatch.setattr(continuous._Sim, "_slow_step",
                        lambda sim: (slow_steps.append(sim.steps), real(sim))[1])
    rng = random.Random(7)
    reqs = [SimRequest(i, rng.randint(20, 300), rng.randint(50, 400), i) for i in range(400)]
    r = simulate(reqs, _limits(seqs=128, budget=4096, blocks=400, block=16), lambda *a: 0.01)
    assert r.preemptions > 100
    assert len(slow_steps) < r.preemptions / 10
