"""A plan for a continuous-batching engine (vLLM): the order rows are given to the engine, how
many run at once, and each row's forecast from the step-level simulation (continuous.py).

With `--policy slo-odbs` the order is chosen by simulation. It starts from deadline order
(ties: priority, predicted length). While rows miss their deadline, rows are demoted by Moore
and Hodgson's rule generalised to batching: walking the rows in deadline order with the
finish times the simulation gave, each row that would still miss (its finish, less the time
freed by the rows demoted before it) demotes the row of most work seen so far, the one whose
removal frees most time for the others; then the order is simulated again (a few rounds).
Demoted rows run after the rest, shortest predicted first (or are skipped with `--on-miss
skip`). Then the concurrency: `max_num_seqs`, and how many of the on-time rows run at once
(few while the earliest deadlines run, then all), are picked among a few candidates by the
same simulation: most deadlines met, then the earliest end. Other policies keep the static
plan's order (batches by start, members in batch order), as baselines.

In the plan each row becomes a one-row "batch" with its simulated start and finish: in
continuous batching no row waits for another's end.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from uellm_cli.plan.continuous import SimRequest, SimResult, simulate, stream_limits
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.scheduler import edf_key
from uellm_cli.plan.steptime import StepTimer, step_timer
from uellm_cli.plan.types import PlannedBatch, Query, Replica, RowForecast, StreamLimits

INF = float("inf")
DEMOTION_ROUNDS = 8
SEQS_CANDIDATES = (256, 64, 16)  # max_num_seqs judged (vLLM's default first)
EARLY_CAPS = (None, 8)  # how many on-time rows run at once while they run (None: all)
JUDGE_WORK = 3_000_000  # above this many output tokens, concurrency is judged on vLLM's default only


@dataclass(slots=True)
class StreamPlan:
    """The rows as vLLM will run them: one-row batches, forecasts, each replica's limits,
    rows skipped (--on-miss skip) and notes."""

    batches: list[PlannedBatch] = field(default_factory=list)
    forecast: dict[int, RowForecast] = field(default_factory=dict)
    limits: dict[int, StreamLimits] = field(default_factory=dict)
    skipped: dict[int, RowForecast] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
                    limits: Mapping[int, StreamLimits] | None = None) -> StreamPlan:
    """The static plan `batches` as vLLM will run it (see the module docstring).

    While the job runs (a revised plan): `progress` gives the tokens each running row has
    generated (those rows go first, as they are), and `limits` the engine's limits, which can
    no longer change."""
    progress = progress or {}
    static_order = plan_order(batches)
    replica_of = {i: b.replica for b in batches for i in b.rows}
    largest: dict[int, int] = {}
    for b in batches:
        largest[b.replica] = max(largest.get(b.replica, 0), len(b.rows))
    out = StreamPlan()
    rank_base = 0
    for rep in replicas:
        mine = [queries[i] for i in static_order if replica_of[i] == rep.index]
        if not mine:
            continue
        step = step_timer(cost, rep)
        on_gpu = any(cost.cluster.device(d).kind == "gpu" for d in rep.devices)

        def limits_for(seqs: int | None, rows: Sequence[Query], on_gpu=on_gpu, rep=rep) -> StreamLimits:
            return stream_limits([(q.prompt_tokens, q.max_new_tokens) for q in rows],
                                 kv_bytes_per_token=cost.model.kv_bytes_per_token,
                                 max_context=cost.model.max_context,
                                 kv_budget_bytes=rep.kv_budget_bytes, max_num_seqs=seqs,
                                 on_gpu=on_gpu)

        mine = [_with_progress(q, progress.get(q.index, 0)) for q in mine]
        running = [q for q in mine if q.index in progress]
        fixed = (limits or {}).get(rep.index)
        if policy == "slo-odbs":
            rest = [q for q in mine if q.index not in progress]
            kept, late = _order_by_simulation(rest, fixed or limits_for(max_batch_size, mine), step,
                                              start_s, running, progress)
            kept = running + kept
            seqs_options = (max_batch_size,) if max_batch_size else _seqs_candidates(mine)
            lim, order, sim = (_concurrency(kept, late, seqs_options, limits_for, step, start_s,
                                            on_miss, progress) if fixed is None else
                               _fixed(kept, late, fixed, step, start_s, on_miss, progress))
            if late:
                out.notes.append(f"{len(late)} row(s) would miss their deadline in the simulation "
                                 "of continuous batching; they run after the rows that can "
                                 + ("(skipped: --on-miss skip)" if on_miss == "skip" else "(best effort)"))
        else:
            order = running + [q for q in mine if q.index not in progress]
            lim = fixed or limits_for(max_batch_size or largest.get(rep.index) or None, mine)
            sim = _simulate(order, lim, step, start_s, progress)
        out.limits[rep.index] = lim
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
    return out


def _with_progress(q: Query, generated: int) -> Query:
    """A running row still has at least one token to come, whatever was predicted."""
    if generated and q.predicted_tokens <= generated:
        return replace(q, predicted_tokens=generated + 1)
    return q


def _simulate(order: Sequence[Query], limits: StreamLimits, step: StepTimer, start_s: float,
              progress: Mapping[int, int] | None = None) -> SimResult:
    progress = progress or {}
    return simulate([SimRequest(q.index, q.prompt_tokens, max(1, q.predicted_tokens), r,
                                progress.get(q.index, 0))
                     for r, q in enumerate(order)], limits, step, start_s=start_s)


def _order_by_simulation(rows: Sequence[Query], limits: StreamLimits, step: StepTimer,
                         start_s: float, running: Sequence[Query] = (),
                         progress: Mapping[int, int] | None = None) -> tuple[list[Query], list[Query]]:
    """(rows in deadline order that the simulation says make it, rows demoted); `running`
    rows go first and are never demoted."""
    kept = sorted(rows, key=edf_key)
    late: list[Query] = []
    for _ in range(DEMOTION_ROUNDS):
        sim = _simulate([*running, *kept, *_late_order(late)], limits, step, start_s, progress)
        demote = _moore_hodgson(kept, sim)
        if not demote:
            break
        late.extend(q for q in kept if q.index in demote)
        kept = [q for q in kept if q.index not in demote]
    return kept, late


def _moore_hodgson(kept: Sequence[Query], sim: SimResult) -> set[int]:
    """One pass of the rule (module docstring): the rows to demote."""
    done = [q for q in kept if q.index in sim.finish_s]
    tokens = sum(max(1, q.predicted_tokens) for q in done)
    span = (sim.end_s or 0.0) - min(sim.start_s.values(), default=0.0)
    per_token = span / tokens if tokens and span > 0 else 0.0  # seconds freed per token removed
    seen: list[tuple[int, int]] = []  # (-work, index) of the rows kept so far
    freed = 0.0
    demote: set[int] = set()
    for q in kept:
        if q.deadline_s is None:
            continue
        heapq.heappush(seen, (-(q.prompt_tokens + max(1, q.predicted_tokens)), q.index))
        if sim.finish_s.get(q.index, INF) - freed > q.deadline_s:
            work, index = heapq.heappop(seen)
            demote.add(index)
            freed += -work * per_token
    return demote


def _late_order(late: Sequence[Query]) -> list[Query]:
    """Demoted rows: shortest predicted first (most rows done soonest)."""
    return sorted(late, key=lambda q: (q.priority, q.predicted_tokens, q.index))


def _seqs_candidates(rows: Sequence[Query]) -> tuple[int, ...]:
    work = sum(max(1, q.predicted_tokens) for q in rows)
    return SEQS_CANDIDATES[:1] if work > JUDGE_WORK else SEQS_CANDIDATES


def _fixed(kept, late, limits, step, start_s, on_miss, progress):
    order = list(kept) + ([] if on_miss == "skip" else _late_order(late))
    limits = replace(limits, early_rows=len(kept) if limits.early_cap else 0)
    return limits, order, _simulate(order, limits, step, start_s, progress)


def _concurrency(kept, late, seqs_options, limits_for, step, start_s, on_miss, progress):
    """The limits (max_num_seqs, and the on-time rows' cap) the simulation likes best, with
    the order and the simulation they give: most deadlines met, then the earliest end."""
    order = list(kept) + ([] if on_miss == "skip" else _late_order(late))
    rows = order or list(kept) + list(late)
    best = None
    for seqs in seqs_options:
        base = limits_for(seqs, rows)
        for early in EARLY_CAPS:
            if early is not None and (early >= base.max_num_seqs or not kept):
                continue
            lim = replace(base, early_cap=early, early_rows=len(kept) if early else 0)
            sim = _simulate(order, lim, step, start_s, progress)
            met = sum(1 for q in order if q.deadline_s is not None
                      and sim.finish_s.get(q.index, INF) <= q.deadline_s)
            key = (-met, sim.end_s or 0.0)
            if best is None or key < best[0]:
                best = (key, lim, sim)
    _, lim, sim = best
    return lim, order, sim


def replay(order: Sequence[int], replica_of: Mapping[int, int], queries: Mapping[int, Query],
           replicas: Sequence[Replica], cost: CostModel, limits: Mapping[int, StreamLimits], *,
           start_s: float) -> dict[int, float]:
    """Each row's finish when the rows run in `order` on their replicas, with the plan's
    limits and `queries` as they really turned out (their true output lengths): what is left
    of the forecast's error once the length predictor is out of it, i.e. the step-time
    model's and the scheduler rules'. Give the order the engine really started the rows in
    (a re-plan while running may have changed the plan's)."""
    finish: dict[int, float] = {}
    for rep in replicas:
        mine = [queries[i] for i in order if replica_of.get(i) == rep.index and i in queries]
        if mine and rep.index in limits:
            finish.update(_simulate(mine, limits[rep.index], step_timer(cost, rep), start_s).finish_s)
    return finish
