"""What continuous batching will do: a step-level simulation of vLLM's V1 scheduler as our
engine configures it (engine/vllm_settings.py starts vLLM with these StreamLimits).

Rules mirrored from `vllm/v1/core/sched/scheduler.py` (0.32), those that change timing:
- Each step has a token budget (`max_num_batched_tokens`). Running requests are scheduled
  first, in the order they were admitted: a decoding request takes 1 token, a prefilling one
  the rest of its prompt, cut to what the budget leaves (chunked prefill).
- A request needs KV blocks for every token it has computed plus the ones it computes in the
  step (`block_size` tokens per block). When blocks run out, the running request with the
  lowest priority (largest rank, then latest arrival) is preempted: its blocks are freed and
  it goes back to the waiting queue to be recomputed from scratch (prompt and the tokens it
  had generated). If it is the request being scheduled, that request waits.
- Then, unless the step preempted anything, waiting requests are admitted in priority order
  while the budget lasts, fewer than `max_num_seqs` run, and their blocks fit (keeping
  `watermark_blocks` free once something is scheduled); the first that does not fit stops
  admission (no request behind it jumps ahead).
- A request whose computed tokens catch up with its tokens samples one token in that step (the
  first at the end of its prefill); it leaves when it has its (predicted) output length,
  and its blocks are freed at the end of that step.
Left out: prefix caching (our prompts are distinct), speculative decoding, the long-prefill
threshold (0 by default), async scheduling and multi-step overlap, pipeline-parallel bubbles.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from uellm_cli.plan.steptime import StepTimer
from uellm_cli.plan.types import StreamLimits

KV_MIN_BYTES = 16 << 20  # vLLM refuses smaller KV caches; so do we
KV_MARGIN = 1.1  # vLLM rounds every request up to whole KV blocks
LEN_ALIGN = 16
CPU_BLOCK_SIZE = 128  # vLLM's CPU default; GPUs use 16
GPU_BLOCK_SIZE = 16
CPU_MAX_BATCHED_TOKENS = 4096  # vLLM's offline (LLM class) defaults: CPU, other GPUs
GPU_MAX_BATCHED_TOKENS = 8192


def stream_limits(replica_rows: Sequence[tuple[int, int]], *, kv_bytes_per_token: int,
                  max_context: int, kv_budget_bytes: int, max_num_seqs: int | None,
                  on_gpu: bool) -> StreamLimits:
    """Limits for one instance serving rows of (prompt tokens, max_new_tokens): at most
    `max_num_seqs` at once (None: vLLM's default 256), and a KV cache that holds that many of
    the longest rows at full length (no preemption), capped by the replica's KV budget, never
    below one whole request (vLLM refuses to start below it)."""
    lengths = sorted((p + m for p, m in replica_rows), reverse=True)
    longest = lengths[0] if lengths else max_context
    max_len = min(max_context, -(-longest // LEN_ALIGN) * LEN_ALIGN)
    seqs = max_num_seqs or 256
    per_token = max(1, int(kv_bytes_per_token))
    want = sum(lengths[:seqs]) * per_token * KV_MARGIN
    budget = kv_budget_bytes or want
    one = max_len * per_token * KV_MARGIN
    kv = int(max(KV_MIN_BYTES, one, min(want, budget)))
    block = GPU_BLOCK_SIZE if on_gpu else CPU_BLOCK_SIZE
    return StreamLimits(
        max_num_seqs=seqs,
        max_num_batched_tokens=GPU_MAX_BATCHED_TOKENS if on_gpu else CPU_MAX_BATCHED_TOKENS,
        kv_cache_bytes=kv, kv_blocks=max(1, kv // (per_token * block)), block_size=block,
        max_model_len=max_len,
    )


@dataclass(slots=True)
class SimRequest:
    """One row for the simulator: its prompt, how many tokens it will generate, its rank.
    `generated` > 0: it is already running with that many tokens out (a plan revised while
    the job goes), its KV in place."""

    index: int
    prompt_tokens: int
    output_tokens: int
    priority: int
    generated: int = 0


@dataclass(slots=True)
class SimResult:
    """When each row started (the step of its first prefill chunk) and finished (the step of
    its last token), in seconds on the run clock; steps run, preemptions."""

    start_s: dict[int, float]
    finish_s: dict[int, float]
    steps: int
    preemptions: int

    @property
    def end_s(self) -> float | None:
        return max(self.finish_s.values(), default=None)


class _Live:
    __slots__ = ("req", "computed", "generated", "blocks", "arrival")

    def __init__(self, req: SimRequest, arrival: int):
        self.req, self.arrival = req, arrival
        self.computed = self.generated = self.blocks = 0


def simulate(requests: Sequence[SimRequest], limits: StreamLimits, step: StepTimer, *,
             start_s: float = 0.0, max_running: int | None = None) -> SimResult:
    """Run the scheduler's rules (module docstring) over `requests`, all waiting at `start_s`.
    `max_running`: our own cap on rows running at once (we feed the engine), at most
    limits.max_num_seqs; limits.early_cap holds the first limits.early_rows (by rank) to fewer."""
    top = min(limits.max_num_seqs, max_running or limits.max_num_seqs)
    early = min(top, limits.early_cap or top)

    def cap(rank: int) -> int:
        return early if rank < limits.early_rows else top

    block, total_blocks = limits.block_size, limits.kv_blocks
    waiting = [(r.priority, i, _Live(r, i)) for i, r in enumerate(requests) if not r.generated]
    heapq.heapify(waiting)
    running: list[_Live] = []
    free = total_blocks
    now = start_s
    result = SimResult({}, {}, 0, 0)
    for i, r in enumerate(requests):
        if r.generated:  # running: its prompt and tokens so far computed, all but the last
            live = _Live(r, i)
            live.generated = r.generated  # callers keep output_tokens > generated
            live.computed = r.prompt_tokens + r.generated - 1
            live.blocks = _blocks_for(live.computed, block)
            free -= live.blocks
            running.append(live)
            result.start_s[r.index] = start_s
    while waiting or running:
        if _fast_forward_ok(running, waiting, cap, free, block, limits):
            k = _decode_steps(running, free, block)
            if k > 0:
                now, free = _decode_run(running, k, now, free, block, step, result)
                continue
        now, free = _step(running, waiting, cap, free, block, limits, step, now, result)
    return result


def _blocks_for(tokens: int, block: int) -> int:
    return -(-tokens // block)


def _step(running, waiting, cap, free, block, limits, step, now, result):
    """One engine step (module docstring); returns the new clock and free blocks."""
    budget = limits.max_num_batched_tokens
    scheduled: list[tuple[_Live, int]] = []
    preempted = False
    i = 0
    while i < len(running) and budget > 0:
        live = running[i]
        new = min(live.req.prompt_tokens + live.generated - live.computed, budget)
        need = _blocks_for(live.computed + new, block) - live.blocks
        while need > free:
            victim = max(running, key=lambda r: (r.req.priority, r.arrival))
            idx = running.index(victim)
            del running[idx]
            free += victim.blocks
            victim.blocks = victim.computed = 0
            heapq.heappush(waiting, (victim.req.priority, victim.arrival, victim))
            result.preemptions += 1
            preempted = True
            for j, (s, n) in enumerate(scheduled):
                if s is victim:  # already scheduled this step: give its tokens back
                    budget += n
                    del scheduled[j]
                    break
            if idx < i:
                i -= 1
            if victim is live:
                break
        else:
            free -= need
            live.blocks += need
            scheduled.append((live, new))
            budget -= new
            i += 1
            continue
        if victim is live:
            break
    if not preempted:
        while waiting and budget > 0 and len(running) < cap(waiting[0][0]):
            live = waiting[0][2]
            new = min(live.req.prompt_tokens + live.generated - live.computed, budget)
            need = _blocks_for(live.computed + new, block)
            keep = limits.watermark_blocks if scheduled else 0
            if need > free - keep:
                break
            heapq.heappop(waiting)
            free -= need
            live.blocks = need
            running.append(live)
            scheduled.append((live, new))
            budget -= new
            if live.req.index not in result.start_s:
                result.start_s[live.req.index] = now
    if not scheduled:  # nothing fits even alone: a row longer than the KV cache
        live = heapq.heappop(waiting)[2]
        result.start_s.setdefault(live.req.index, now)
        result.finish_s[live.req.index] = now
        return now, free
    prefill_tokens = decode_rows = sampled = 0
    prefill_attention = decode_context = 0.0
    for live, new in scheduled:
        if live.computed >= live.req.prompt_tokens + live.generated - 1 and new == 1:
            decode_rows += 1
            decode_context += live.computed
        else:
            prefill_tokens += new
            prefill_attention += new * (2 * live.computed + new)
    for live, new in scheduled:
        live.computed += new
        if live.computed >= live.req.prompt_tokens + live.generated:
            sampled += 1
    now += step(prefill_tokens, prefill_attention, decode_rows, decode_context, sampled)
    result.steps += 1
    for live, _ in scheduled:
        if live.computed >= live.req.prompt_tokens + live.generated:
            live.generated += 1
            if live.generated >= live.req.output_tokens:
                free += _leave(live, running, now, result)
    return now, free


def _fast_forward_ok(running, waiting, cap, free, block, limits) -> bool:
    """Every running row decodes and no waiting row can join before one of them ends."""
    if not running or len(running) > limits.max_num_batched_tokens:
        return False
    for live in running:
        if live.computed < live.req.prompt_tokens + live.generated - 1 or live.generated == 0:
            return False
    if waiting and len(running) < cap(waiting[0][0]):
        head = waiting[0][2]
        need = _blocks_for(head.req.prompt_tokens + head.generated, block)
        if need <= free - limits.watermark_blocks:
            return False
    return True


def _decode_steps(running, free, block) -> int:
    """How many decode-only steps can run before a row ends or the blocks run out."""
    k = min(live.req.output_tokens - live.generated for live in running)
    held = sum(live.blocks for live in running)
    while k > 0 and sum(_blocks_for(live.computed + k, block) for live in running) > held + free:
        k //= 2
    return k


def _decode_run(running, k, now, free, block, step, result):
    """k decode-only steps at once: the same rows, each context one token longer per step."""
    rows = len(running)
    context = float(sum(live.computed for live in running))
    for _ in range(k):
        now += step(0, 0.0, rows, context, rows)
        context += rows
    result.steps += k
    for live in list(running):
        live.computed += k
        live.generated += k
        need = _blocks_for(live.computed, block)
        free -= need - live.blocks
        live.blocks = need
        if live.generated >= live.req.output_tokens:
            free += _leave(live, running, now, result)
    return now, free


def _leave(live: _Live, running: list[_Live], now: float, result: SimResult) -> int:
    """A row has its last token: it finishes now; returns the blocks it frees."""
    result.finish_s[live.req.index] = now
    freed, live.blocks = live.blocks, 0
    running.remove(live)
    return freed
