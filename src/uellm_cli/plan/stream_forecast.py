"""A plan for a continuous-batching engine (vLLM): the rows in the scheduler's order, fed to the
engine as priorities, and each row's forecast from the step-level simulation (continuous.py)
instead of its static batch.

The order is the static plan's (batches by start, members in batch order), so SLO-ODBS's
deadline order and its demotion of rows that cannot make it carry over. Each replica is one
vLLM instance with the limits our engine starts it with (continuous.stream_limits): at most as
many rows at once as its largest planned batch (or --max-batch-size), a KV cache for that
many rows at full length. In the plan each row becomes a one-row "batch" with its simulated
start and finish: in continuous batching no row waits for another's end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from uellm_cli.plan.continuous import SimRequest, simulate, stream_limits
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.steptime import step_timer
from uellm_cli.plan.types import PlannedBatch, Query, Replica, RowForecast, StreamLimits


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
                    max_batch_size: int | None = None,
                    ) -> tuple[list[PlannedBatch], dict[int, RowForecast], dict[int, StreamLimits]]:
    """The static plan `batches` as vLLM will run it: one-row batches with simulated times,
    each row's forecast, and each replica's StreamLimits (what the engine is started with)."""
    order = plan_order(batches)
    rank = {i: r for r, i in enumerate(order)}
    replica_of = {i: b.replica for b in batches for i in b.rows}
    largest: dict[int, int] = {}
    for b in batches:
        largest[b.replica] = max(largest.get(b.replica, 0), len(b.rows))
    model = cost.model
    out_batches: list[PlannedBatch] = []
    forecast: dict[int, RowForecast] = {}
    limits: dict[int, StreamLimits] = {}
    for rep in replicas:
        mine = [i for i in order if replica_of[i] == rep.index]
        if not mine:
            continue
        on_gpu = any(cost.cluster.device(d).kind == "gpu" for d in rep.devices)
        lim = stream_limits([(queries[i].prompt_tokens, queries[i].max_new_tokens) for i in mine],
                            kv_bytes_per_token=model.kv_bytes_per_token,
                            max_context=model.max_context, kv_budget_bytes=rep.kv_budget_bytes,
                            max_num_seqs=max_batch_size or largest.get(rep.index) or None,
                            on_gpu=on_gpu)
        limits[rep.index] = lim
        sim = simulate([SimRequest(i, queries[i].prompt_tokens, max(1, queries[i].predicted_tokens),
                                   rank[i]) for i in mine],
                       lim, step_timer(cost, rep), start_s=start_s)
        for i in mine:
            q = queries[i]
            start, finish = sim.start_s[i], sim.finish_s[i]
            out_batches.append(PlannedBatch(rank[i], rep.index, [i], q.max_new_tokens, start, finish))
            forecast[i] = RowForecast(i, rep.index, rank[i], start, finish, q.deadline_s)
    out_batches.sort(key=lambda b: b.batch)
    return out_batches, forecast, limits
