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
- Prefix caching: a request whose prompt starts with tokens another row of the job has
  computed is admitted with the whole blocks of them already computed (never its last prompt
  token), and prefills the rest (SimRequest.cached_tokens, plan/prefixes.py). The first row of
  each shared prefix is counted as served too, and the shared blocks as its own (KV is
  counted as if unshared): a few rows' prefill, on the safe side for memory.
Left out: speculative decoding, the long-prefill threshold (0 by default), async scheduling and
multi-step overlap, pipeline-parallel bubbles, the eviction of cached blocks.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from uellm_cli.plan.steptime import StepTimer
from uellm_cli.plan.types import StreamLimits

KV_MIN_BYTES = 16 << 20  # vLLM refuses smaller KV caches; so do we
KV_MARGIN = 1.1  # vLLM rounds every request up to whole KV blocks
LEN_ALIGN = 16
CPU_BLOCK_SIZE = 128  # vLLM's CPU default; GPUs use 16
GPU_BLOCK_SIZE = 16
# Tokens per engine step: on a GPU, vLLM's offline (LLM class) default; on a CPU, 512, not
# vLLM's 4096. A CPU step of 4096 prompt tokens ran 1.4 ms a token against 0.9 ms in steps of
# a few hundred, and every decoding row waits the whole step for its next token: alpaca-200 at
# half its deadlines ran 433-447 tok/s against 386-398, the 1,000-row impossible job 280-289
# against 267-273 (docs/planner.md, "Token budget"). The linear step model does not see it,
# so the budget is set, not searched.
CPU_MAX_BATCHED_TOKENS = 512
GPU_MAX_BATCHED_TOKENS = 8192


def aligned_model_len(tokens: int, max_context: int) -> int:
    """The max_model_len an engine for requests of up to `tokens` (prompt and output) is
    started with: whole blocks of LEN_ALIGN, never past the model's context."""
    return min(max_context, -(-tokens // LEN_ALIGN) * LEN_ALIGN)


def stream_limits(replica_rows: Sequence[tuple[int, int]], *, kv_bytes_per_token: int,
                  max_context: int, kv_budget_bytes: int, max_num_seqs: int | None,
                  on_gpu: bool, block_size: int | None = None) -> StreamLimits:
    """Limits for one instance serving rows of (prompt tokens, max_new_tokens): at most
    `max_num_seqs` at once (None: vLLM's default 256), and a KV cache that holds that many of
    the longest rows at full length (no preemption), capped by the replica's KV budget, never
    below one whole request (vLLM refuses to start below it); KV blocks of `block_size`
    tokens (None: vLLM's default for the device)."""
    lengths = sorted((p + m for p, m in replica_rows), reverse=True)
    longest = lengths[0] if lengths else max_context
    max_len = aligned_model_len(longest, max_context)
    seqs = max_num_seqs or 256
    per_token = max(1, int(kv_bytes_per_token))
    want = sum(lengths[:seqs]) * per_token * KV_MARGIN
    budget = kv_budget_bytes or want
    one = max_len * per_token * KV_MARGIN
    kv = int(max(KV_MIN_BYTES, one, min(want, budget)))
    block = block_size or (GPU_BLOCK_SIZE if on_gpu else CPU_BLOCK_SIZE)
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
    the job goes), its KV in place. `cached_tokens`: prompt tokens the prefix cache serves."""

    index: int
    prompt_tokens: int
    output_tokens: int
    priority: int
    generated: int = 0
    cached_tokens: int = 0


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
    __slots__ = ("req", "computed", "generated", "blocks", "arrival", "entry", "lazy", "epoch",
                 "victim_key", "residue")

    def __init__(self, req: SimRequest, arrival: int):
        self.req, self.arrival = req, arrival
        self.victim_key = (req.priority, arrival)  # the largest running one is preempted first
        self.computed = req.cached_tokens  # served by the prefix cache when it is admitted
        self.generated = self.blocks = 0
        self.entry = (0, 0, 0)  # (step, computed, generated) when it joined the decoding set
        self.lazy = False  # in the decoding set: its counters follow from the step count
        self.epoch = 0  # times it joined the decoding set: older heap entries of it are stale
        self.residue = 0  # in the decoding set: it needs a block at the steps of this residue

    def current(self, epoch: int) -> bool:
        """Is a heap entry pushed at `epoch` about this stay in the decoding set?"""
        return self.lazy and self.epoch == epoch


def simulate(requests: Sequence[SimRequest], limits: StreamLimits, step: StepTimer, *,
             start_s: float = 0.0, max_running: int | None = None, fast: bool = True,
             caps: Mapping[int, int] | None = None) -> SimResult:
    """Run the scheduler's rules (module docstring) over `requests`, all waiting at `start_s`.
    `max_running`: our own cap on rows running at once (we feed the engine), at most
    limits.max_num_seqs; limits.early_cap holds the first limits.early_rows (by rank) to fewer,
    and rows ranked from limits.held_from on wait until at most limits.held_release of the rows
    ranked before them are left unfinished. `caps` (by row index) replaces the early cap: the
    cap each row was given to the engine under in a run whose plan was revised as it ran
    (a replay). `fast=False` runs every step through the rules one row at a time (the
    reference the fast path is tested against)."""
    top = min(limits.max_num_seqs, max_running or limits.max_num_seqs)
    cap_of_rank = {r.priority: caps[r.index] for r in requests if r.index in caps} if caps else {}

    def cap(rank: int) -> int:  # a held row waits for running rows: they rank before it
        allowed = limits.in_flight(rank, sim.held_left)
        return min(top, cap_of_rank.get(rank, allowed) if allowed else 0)

    sim = _Sim(limits, step, cap, start_s)
    if limits.held_from is not None:
        sim.held_rows = {r.index for r in requests if r.priority < limits.held_from}
        sim.held_left = len(sim.held_rows)
    for i, r in enumerate(requests):
        live = _Live(r, i)
        if not r.generated:
            sim.waiting.append((r.priority, i, live))
            continue
        # running: its prompt and tokens so far computed, all but the last
        live.generated = r.generated  # callers keep output_tokens > generated
        live.computed = r.prompt_tokens + r.generated - 1
        live.blocks = _blocks_for(live.computed, sim.block)
        sim.free -= live.blocks
        sim.running[live] = None
        sim.result.start_s[r.index] = start_s
    heapq.heapify(sim.waiting)
    sim.run(fast)
    return sim.result


class _Sim:
    """The simulation's state. Rows that are decoding (one token per step, nothing else) sit
    in a lazy set: their counters follow from the step count, the sum of their contexts is
    kept as one number, a heap says when each ends, and each sits under the residue (mod the
    block size) of the steps at which it needs a new KV block (one every block_size steps), so
    a step costs O(1) plus the rows that join, leave, prefill or cross a block, and a stretch
    of decode steps counts the blocks it needs from the residues alone. When the free
    blocks run short in a step of decoding rows alone, `_preempting_step` preempts as vLLM
    would without leaving the lazy set. Any other step the lazy set cannot take whole (the
    token budget runs short, or a row would preempt itself) runs through `_step`, row by row,
    in admission order."""

    def __init__(self, limits: StreamLimits, step: StepTimer, cap, start_s: float):
        self.limits, self.step, self.cap = limits, step, cap
        self.block = limits.block_size
        self.free = limits.kv_blocks
        self.now = start_s
        self.result = SimResult({}, {}, 0, 0)
        self.waiting: list = []
        # the rows ranked before limits.held_from, and how many of them are unfinished
        self.held_rows: set[int] = set()
        self.held_left = 0
        self.running: dict[_Live, None] = {}  # admission order (vLLM's running list)
        self.explicit: dict[_Live, None] = {}  # the running rows not in the lazy set
        self.steps = 0  # steps run so far: the clock of the lazy set
        self.lazy_rows = 0
        self.lazy_context = 0  # sum over lazy rows of (computed at entry - entry step)
        self.ends: list = []  # (steps after which it has its last token, arrival, epoch, live)
        # lazy rows by the residue mod block of the steps at which each needs its next block
        self.crossing_at: list[dict[_Live, None]] = [{} for _ in range(self.block)]

    def run(self, fast: bool) -> None:
        self.explicit = dict(self.running)
        while self.waiting or self.running:
            if fast and self._decode_run():
                continue
            if not fast or not self._fast_step():
                self._slow_step()
            if fast:
                self._lazify()

    def _decode_run(self) -> bool:
        """Every running row decodes and no waiting row can join until one of them ends (a
        slot or blocks free up only then): run all the steps until that end at once, if the
        free blocks cover every block the rows cross meanwhile. False: not such a stretch."""
        if self.explicit or not self.running or self.lazy_rows > self.limits.max_num_batched_tokens:
            return False
        if self.waiting and len(self.running) < self.cap(self.waiting[0][0]):
            head = self.waiting[0][2]
            budget = self.limits.max_num_batched_tokens - self.lazy_rows
            first = min(head.req.prompt_tokens + head.generated - head.computed, budget)
            if budget > 0 and _blocks_for(head.computed + first, self.block) <= self.free - self.limits.watermark_blocks:
                return False  # it joins in the next step (its first chunk fits)
        s, block = self.steps, self.block
        k = self.ends[0][0] - s
        if k <= 1:
            return False
        whole, part = divmod(k, block)  # every lazy row crosses once in each `block` steps
        need = whole * self.lazy_rows + sum(len(self.crossing_at[(s + j) % block]) for j in range(part))
        if need > self.free:  # blocks run out on the way: step by step
            return False
        self.free -= need
        rows, step, now = self.lazy_rows, self.step, self.now
        context = self.lazy_context + rows * s
        for j in range(k):
            now += step(0, 0.0, rows, float(context + rows * j), rows)
        self.now, self.steps = now, s + k
        self.result.steps += k
        self._end_lazy_rows()
        return True

    def _end_lazy_rows(self) -> None:
        """Lazy rows with their last token leave."""
        while self.ends and self.ends[0][0] <= self.steps:
            _, _, epoch, live = heapq.heappop(self.ends)
            if live.current(epoch):
                s0, c0, _ = live.entry
                live.computed = c0 + self.steps - s0
                live.blocks = _blocks_for(live.computed, self.block)
                self._unlazy(live)
                self._leave(live)

    # ---------------------------------------------------------------- the lazy set

    def _lazify(self) -> None:
        """Explicit rows that decode from now on join the lazy set."""
        joining = [live for live in self.explicit
                   if live.generated and live.computed == live.req.prompt_tokens + live.generated - 1]
        for live in joining:
            del self.explicit[live]
            s = self.steps
            live.lazy, live.entry = True, (s, live.computed, live.generated)
            live.epoch += 1
            self.lazy_rows += 1
            self.lazy_context += live.computed - s
            heapq.heappush(self.ends, (s + live.req.output_tokens - live.generated, live.arrival,
                                       live.epoch, live))
            live.residue = (s - live.computed) % self.block  # computing token `computed` % block == 0
            self.crossing_at[live.residue][live] = None

    def _unlazy(self, live: _Live) -> None:
        """A row leaves the lazy set (its counters set by the caller)."""
        s0, c0, _ = live.entry
        live.lazy = False
        self.lazy_rows -= 1
        self.lazy_context -= c0 - s0
        del self.crossing_at[live.residue][live]

    def _materialize(self) -> None:
        """Every lazy row back to explicit counters (before a row-by-row step)."""
        for live in self.running:
            if live.lazy:
                s0, c0, g0 = live.entry
                k = self.steps - s0
                live.computed, live.generated, live.lazy = c0 + k, g0 + k, False
                live.blocks = _blocks_for(live.computed, self.block)
        self.explicit = dict(self.running)
        self.lazy_rows = self.lazy_context = 0
        self.ends.clear()
        for rows in self.crossing_at:
            rows.clear()

    def _fast_step(self) -> bool:
        """One step with the lazy set taken whole; False (nothing done) when it cannot be."""
        limits, block, s = self.limits, self.block, self.steps
        explicit = list(self.explicit)
        demand = self.lazy_rows + sum(live.req.prompt_tokens + live.generated - live.computed
                                      for live in explicit)
        if not self.running or demand > limits.max_num_batched_tokens:
            return False
        crossing = self.crossing_at[s % block]  # each takes a block; the next in `block` steps
        need = len(crossing) + sum(_blocks_for(live.req.prompt_tokens + live.generated, block) - live.blocks
                                   for live in explicit)
        if need > self.free:  # else the row-by-row step materializes the lazy set, heaps and all
            return not explicit and self._preempting_step(list(crossing))
        self.free -= need
        scheduled = []
        for live in explicit:
            new = live.req.prompt_tokens + live.generated - live.computed
            live.blocks = _blocks_for(live.computed + new, block)
            scheduled.append((live, new))
        budget = limits.max_num_batched_tokens - demand
        while self.waiting and budget > 0 and len(self.running) < self.cap(self.waiting[0][0]):
            live = self.waiting[0][2]
            new = min(live.req.prompt_tokens + live.generated - live.computed, budget)
            need = _blocks_for(live.computed + new, block)
            if need > self.free - limits.watermark_blocks:  # something is scheduled: keep the watermark
                break
            heapq.heappop(self.waiting)
            self.free -= need
            live.blocks = need
            self.running[live] = self.explicit[live] = None
            scheduled.append((live, new))
            budget -= new
            self.result.start_s.setdefault(live.req.index, self.now)
        prefill_tokens = 0
        decode_rows = sampled = self.lazy_rows
        decode_context = float(self.lazy_context + self.lazy_rows * s)
        prefill_attention = 0.0
        for live, new in scheduled:
            if live.computed >= live.req.prompt_tokens + live.generated - 1 and new == 1:
                decode_rows += 1
                decode_context += live.computed
            else:
                prefill_tokens += new
                prefill_attention += new * (2 * live.computed + new)
            live.computed += new
            if live.computed >= live.req.prompt_tokens + live.generated:
                sampled += 1
        self.now += self.step(prefill_tokens, prefill_attention, decode_rows, decode_context, sampled)
        self.steps += 1
        self.result.steps += 1
        for live, _ in scheduled:
            if live.computed >= live.req.prompt_tokens + live.generated:
                live.generated += 1
                if live.generated >= live.req.output_tokens:
                    self._leave(live)
        self._end_lazy_rows()
        return True

    def _preempting_step(self, crossing: list[_Live]) -> bool:
        """A step of decoding rows alone in which `crossing` (the rows that need their next
        block now) want more blocks than are free: vLLM's rule, taken whole. In admission
        order each crossing row takes a block; when none is free the running row of lowest
        priority is preempted (recomputed later) until one is. False (nothing changed) when a
        row would preempt itself: the rows after it do not run this step, which the lazy set
        cannot express."""
        order = {live: n for n, live in enumerate(self.running)}
        crossing.sort(key=order.__getitem__)
        deficit = len(crossing) - self.free
        victims = iter(sorted(self.running, key=_VICTIM_KEY, reverse=True)[:deficit])
        s, block, free = self.steps, self.block, self.free
        granted: dict[_Live, None] = {}
        gone: dict[_Live, None] = {}
        for live in crossing:
            if live in gone:
                continue
            while free < 1:
                victim = next(victims, None)  # deficit victims free at least as many blocks
                if victim is None or victim is live:
                    return False
                gone[victim] = None
                s0, c0, _ = victim.entry
                free += _blocks_for(c0 + s - s0, block) + (victim in granted)
            free -= 1
            granted[live] = None
        for victim in gone:
            s0, _, g0 = victim.entry
            victim.generated, victim.computed, victim.blocks = g0 + s - s0, victim.req.cached_tokens, 0
            self._unlazy(victim)
            del self.running[victim]
            heapq.heappush(self.waiting, (victim.req.priority, victim.arrival, victim))
            self.result.preemptions += 1
        self.free = free
        rows = self.lazy_rows
        self.now += self.step(0, 0.0, rows, float(self.lazy_context + rows * s), rows)
        self.steps += 1
        self.result.steps += 1
        self._end_lazy_rows()
        return True

    def _leave(self, live: _Live) -> None:
        self.result.finish_s[live.req.index] = self.now
        if live.req.index in self.held_rows:
            self.held_left -= 1
        self.free += live.blocks
        live.blocks = 0
        del self.running[live]
        self.explicit.pop(live, None)

    # ---------------------------------------------------------------- row by row

    def _slow_step(self) -> None:
        self._materialize()
        running = list(self.running)
        done = len(self.result.finish_s)
        self.now, self.free = _step(running, self.waiting, self.cap, self.free, self.block,
                                    self.limits, self.step, self.now, self.result)
        if self.held_left and len(self.result.finish_s) > done:  # finish_s keeps insertion order
            self.held_left -= sum(1 for i in itertools.islice(self.result.finish_s, done, None)
                                  if i in self.held_rows)
        self.running = dict.fromkeys(running)
        self.explicit = dict(self.running)
        self.steps += 1


_VICTIM_KEY = attrgetter("victim_key")


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
            victim = max(running, key=_VICTIM_KEY)
            idx = running.index(victim)
            del running[idx]
            free += victim.blocks
            victim.blocks, victim.computed = 0, victim.req.cached_tokens
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


def _leave(live: _Live, running: list[_Live], now: float, result: SimResult) -> int:
    """A row has its last token: it finishes now; returns the blocks it frees."""
    result.finish_s[live.req.index] = now
    freed, live.blocks = live.blocks, 0
    running.remove(live)
    return freed
