"""Joint planning: candidate deployments x the scheduler, judged by one cost model.

Candidates: HELR placements (plan/deployer.py) for the objective's placement rule(s), at every
replica count and at a few KV reserves (room for batches of 1, 8 and max_batch_size rows at the
95th percentile of prompt + predicted_upper tokens), plus `extra_deployments` (accelerate's
auto/balanced/sequential, computed by the caller since they need torch). The scheduler runs on
each; the forecast decides:
- lr:   best SLO attainment, then shortest makespan, then fewest devices;
- he:   best SLO attainment, then fewest devices, then shortest makespan;
- helr: best SLO attainment, then, among candidates whose makespan is within MAKESPAN_TOL of the
        shortest, the fewest devices (a device that shortens the run by less than that is not
        worth holding), then the shortest makespan. Its pool holds both lr and he placements.
With more than `judge_rows` rows, candidates are judged on every k-th row in deadline order with
deadlines compressed by k around the start (the load shrinks by k, so does the time), and the
chosen one is then scheduled on every row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from uellm_cli.config import ON_MISS
from uellm_cli.errors import ConfigError, DoesNotFitError
from uellm_cli.plan.costmodel import CostModel, Roofline
from uellm_cli.plan.deployer import PlacementSearch
from uellm_cli.plan.parallel import vllm_shapes
from uellm_cli.plan.scheduler import get_scheduler, schedule
from uellm_cli.plan.simulate import ForecastMetrics, forecast_metrics, forecast_rows
from uellm_cli.plan.stream_forecast import judge_stream, stream_forecast
from uellm_cli.plan.types import (
    Deployment,
    Plan,
    PlannedBatch,
    Query,
    RowForecast,
    StreamLimits,
)
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile

OBJECTIVES = ("helr", "lr", "he")
MAKESPAN_TOL = 0.02
CPU_INSTANCES_STRATEGY = "cpu-instances"  # engine/vllm_settings.py starts one vLLM per replica
JUDGE_ROWS = 2000
STREAM_JUDGE_ROWS = 500  # continuous batching is judged by simulating every step: fewer rows
SKIP_ROUNDS = 10
INF = float("inf")


@dataclass(slots=True)
class _Judged:
    deployment: Deployment
    batches: list[PlannedBatch]
    forecast: dict[int, RowForecast]
    metrics: ForecastMetrics
    judged_rows: int
    notes: list[str]
    expected_end_s: float | None = None  # StreamPlan.expected_end_s
    met_draws: list[int] = field(default_factory=list)  # StreamPlan.met_draws

    @property
    def n_devices(self) -> int:
        return sum(len(set(r.devices)) for r in self.deployment.replicas)

    @property
    def attainment(self) -> float:
        a = self.metrics.slo_attainment
        return 1.0 if a is None else a

    @property
    def makespan(self) -> float:
        return self.metrics.makespan_s or 0.0


def make_plan(
    queries: list[Query],
    model: ModelProfile,
    cluster: Cluster,
    *,
    policy: str = "slo-odbs",
    objective: str = "helr",
    calibrations: dict[str, Calibration] | None = None,
    start_offset_s: float = 0.0,
    max_batch_size: int | None = None,
    extra_deployments: Sequence[Deployment] = (),
    on_miss: str = "run",
    policy_params: dict | None = None,
    judge_rows: int = JUDGE_ROWS,
    replicas: int | None = None,
    roofline: Roofline | None = None,
    engine: str = "hf",
    cpu_instances: int = 1,
) -> Plan:
    """Choose a deployment and a batch timeline for `queries` (see the module docstring).
    `replicas`: only deployments with exactly that many replicas (--replicas).
    `cpu_instances` > 1 (vLLM on a CPU): the model runs as that many instances on the CPU,
    each a replica with its share of the memory (and, in the calibrations, of the threads)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if on_miss not in ON_MISS:
        raise ConfigError(f"--on-miss {on_miss!r}: choose one of {', '.join(ON_MISS)}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ConfigError(f"max batch size must be >= 1, got {max_batch_size}")
    sched = get_scheduler(policy, policy_params)  # validates policy and params early
    cap = max_batch_size or getattr(sched, "max_batch_size", None) or getattr(sched, "batch_size", 16)
    cost = CostModel(model, cluster, calibrations, params=roofline)
    notes: list[str] = []

    candidates = helr_candidates(queries, model, cluster, cost, objective=objective, batch_cap=cap,
                                 replicas=replicas)
    if cpu_instances > 1:
        candidates = [cpu_instances_deployment(d, cpu_instances) for d in candidates
                      if len(d.replicas) == 1 and d.replicas[0].devices == ("cpu",)][:1] or candidates
    candidates.extend(d for d in extra_deployments  # listed even when equal to a HELR map
                      if d.replicas and replicas in (None, len(d.replicas)))
    if engine == "vllm" and cluster.has_gpu:  # vLLM's own shapes: tensor x pipeline parallel
        seen = {_dep_key(d) for d in candidates}
        longest = max((q.prompt_tokens + q.max_new_tokens for q in queries), default=None)
        candidates.extend(d for d in vllm_shapes(model, cluster, replicas=replicas, longest_row=longest)
                          if _dep_key(d) not in seen)

    sample, k = _judging_sample(queries, min(judge_rows, STREAM_JUDGE_ROWS) if engine == "vllm" else judge_rows,
                                start_offset_s)
    if k > 1:
        notes.append(f"candidates judged on 1 row in {k} ({len(sample)} rows, deadlines compressed by {k}); "
                     "the chosen one is scheduled on every row")
    pred = {q.index: q.predicted_tokens for q in queries}
    judged = []
    by_index = {q.index: q for q in sample}
    for dep in candidates:
        j_notes: list[str] = []
        batches = schedule(sample, dep.replicas, cost, policy=policy, start_s=start_offset_s,
                           max_batch_size=max_batch_size, params=policy_params, notes=j_notes)
        if engine == "vllm":  # judged as vLLM will run it: continuous batching, simulated
            streamed = judge_stream(batches, by_index, dep.replicas, cost, start_s=start_offset_s,
                                    max_batch_size=max_batch_size)
            batches, fc = streamed.batches, streamed.forecast
        else:
            fc = forecast_rows(batches, {q.index: q.deadline_s for q in sample})
        judged.append(_Judged(dep, batches, fc, forecast_metrics(batches, fc, pred), len(sample), j_notes))
    chosen = _pick(judged, objective)
    if len(judged) > 1:
        notes.append(_why(chosen, judged))

    skipped: dict[int, RowForecast] = {}
    stream: dict[int, StreamLimits] = {}
    if engine == "vllm":  # continuous batching: the chosen order, simulated step by step
        chosen, stream = _streamed(chosen, queries, cost, policy, start_offset_s, max_batch_size,
                                   policy_params, on_miss, skipped)
    elif k > 1 or on_miss == "skip":
        chosen = _full(chosen, queries, cost, policy, start_offset_s, max_batch_size, policy_params,
                       on_miss, skipped)
    notes.extend(chosen.notes)
    if skipped:
        notes.append(f"{len(skipped)} row(s) forecast to miss their deadline are skipped (--on-miss skip)")
    forecast = dict(chosen.forecast)
    forecast.update(skipped)
    metrics = forecast_metrics(chosen.batches, forecast, pred)
    alternatives = []
    for j in judged:
        is_chosen = j.deployment is chosen.deployment
        m = metrics if is_chosen else j.metrics
        alternatives.append(_alternative(j, m, cost, len(queries) if is_chosen else j.judged_rows, is_chosen))
    for dev in cost.describe()["devices"]:
        if "note" in dev:
            notes.append(f"{dev['device']}: {dev['note']}; using the roofline")
    return Plan(
        policy=policy,
        engine=engine,
        deployment=chosen.deployment,
        batches=chosen.batches,
        forecast=forecast,
        start_offset_s=start_offset_s,
        alternatives=alternatives,
        notes=notes,
        skipped=sorted(skipped),
        summary=metrics.to_dict() | _expected(chosen, metrics),
        cost_model=cost.describe(),
        stream=stream,
    )


def reschedule(
    queries: list[Query],
    plan: Plan,
    model: ModelProfile,
    cluster: Cluster,
    *,
    calibrations: dict[str, Calibration] | None = None,
    time_scale: float = 1.0,
    start_s: float = 0.0,
    max_batch_size: int | None = None,
    policy_params: dict | None = None,
    roofline: Roofline | None = None,
    progress: dict[int, int] | None = None,
) -> Plan:
    """Schedule the rows still to run on the deployment already loaded, with every time scaled
    by what the batches so far measured (`time_scale` = actual / forecast). The deployment is
    not reconsidered: the weights are in place. A continuous-batching plan (plan.stream) is
    simulated again from where the engine is: `progress` = tokens out of each running row,
    with the engine's limits as they were started."""
    cost = CostModel(model, cluster, calibrations, roofline, time_scale=time_scale)
    batches = schedule(queries, plan.deployment.replicas, cost, policy=plan.policy, start_s=start_s,
                       max_batch_size=max_batch_size, params=policy_params)
    stream: dict[int, StreamLimits] = {}
    if plan.stream:
        streamed = stream_forecast(batches, {q.index: q for q in queries}, plan.deployment.replicas,
                                   cost, start_s=start_s, max_batch_size=max_batch_size,
                                   policy=plan.policy, progress=progress, limits=plan.stream)
        batches, forecast, stream = streamed.batches, streamed.forecast, streamed.limits
    else:
        forecast = forecast_rows(batches, {q.index: q.deadline_s for q in queries})
    return Plan(policy=plan.policy, engine=plan.engine, deployment=plan.deployment, batches=batches,
                forecast=forecast, start_offset_s=start_s, stream=stream,
                notes=[f"rescheduled at {start_s:.1f}s, time x{time_scale:.2f}"])


def helr_candidates(queries: Sequence[Query], model: ModelProfile, cluster: Cluster, cost: CostModel, *,
                    objective: str = "helr", batch_cap: int = 64,
                    replicas: int | None = None) -> list[Deployment]:
    """HELR deployments for the objective's placement rule(s), every replica count (or only
    `replicas`) and KV reserve level; DoesNotFitError when not even one row at the
    95th-percentile length fits anywhere, ConfigError when fewer than `replicas` fit."""
    rules = ("lr", "he") if objective == "helr" else (objective,)
    n = len(queries)
    ctx = _p95([q.prompt_tokens + q.predicted_upper for q in queries], default=512)
    ctx = min(ctx, model.max_context) if model.max_context else ctx
    prompt = _p95([q.prompt_tokens for q in queries], default=128)
    ref_batch = max(1, min(batch_cap, n))
    ref_ctx = (int(sum(q.prompt_tokens + q.predicted_tokens / 2 for q in queries) / n) if n else 512) or 1
    levels = sorted({1, min(8, batch_cap), batch_cap} & set(range(1, max(1, n) + 1))) or [1]
    out: list[Deployment] = []
    seen: set = set()
    first_failure: DoesNotFitError | None = None
    most = 0
    for b in levels:
        search = PlacementSearch(model, cluster, cost, kv_reserve_bytes=cost.kv_bytes(b, ctx),
                                 act_reserve_bytes=cost.activation_bytes(b, prompt),
                                 ref_batch=ref_batch, ref_context=ref_ctx)
        found = False
        for rule in rules:
            for dep in search.deployments(rule, replicas):
                found = True
                most = max(most, len(dep.replicas))
                if replicas is not None and len(dep.replicas) != replicas:
                    continue
                key = _dep_key(dep)
                if key not in seen:
                    seen.add(key)
                    dep.note = f"{dep.note}, sized for batches of {b} x {ctx} tokens"
                    out.append(dep)
        if not found and first_failure is None:
            first_failure = search.does_not_fit()
    if not out and most:
        raise ConfigError(f"--replicas {replicas}: only {most} replica(s) of {model.name} fit on "
                          f"this cluster ({len(cluster.devices)} device(s))")
    if not out:
        raise first_failure or DoesNotFitError(f"{model.name} fits on no device")
    return out


def _full(chosen: _Judged, queries, cost, policy, start, max_batch_size, params, on_miss,
          skipped: dict[int, RowForecast]) -> _Judged:
    """Schedule every row on the chosen deployment; with on_miss=skip drop rows forecast to miss
    and reschedule the rest (a few rounds: dropping rows only moves the others earlier)."""
    deadlines = {q.index: q.deadline_s for q in queries}
    rows = list(queries)
    notes: list[str] = []
    for _ in range(SKIP_ROUNDS):
        notes = []
        batches = schedule(rows, chosen.deployment.replicas, cost, policy=policy, start_s=start,
                           max_batch_size=max_batch_size, params=params, notes=notes)
        fc = forecast_rows(batches, deadlines)
        if on_miss != "skip":
            break
        miss = {i for i, f in fc.items() if f.deadline_s is not None and f.finish_s > f.deadline_s}
        if not miss:
            break
        for i in miss:
            f = fc[i]
            skipped[i] = RowForecast(i, -1, -1, f.start_s, f.finish_s, f.deadline_s)
        rows = [q for q in rows if q.index not in miss]
    return _Judged(chosen.deployment, batches, fc, chosen.metrics, len(queries), notes)  # metrics: by the caller


def _streamed(chosen: _Judged, queries, cost, policy, start, max_batch_size, params, on_miss,
              skipped: dict[int, RowForecast]) -> tuple[_Judged, dict[int, StreamLimits]]:
    """The chosen deployment's schedule of every row, as vLLM will run it (stream_forecast:
    its order, concurrency and forecasts, by simulation; rows it skips go to `skipped`)."""
    notes: list[str] = []
    static = schedule(queries, chosen.deployment.replicas, cost, policy=policy, start_s=start,
                      max_batch_size=max_batch_size, params=params, notes=notes)
    streamed = stream_forecast(static, {q.index: q for q in queries}, chosen.deployment.replicas,
                               cost, start_s=start, max_batch_size=max_batch_size, policy=policy,
                               on_miss=on_miss, expected=True)
    skipped.update(streamed.skipped)
    if policy != "slo-odbs":
        streamed.notes[:0] = notes
    return (_Judged(chosen.deployment, streamed.batches, streamed.forecast, chosen.metrics,
                    len(queries), streamed.notes, streamed.expected_end_s, streamed.met_draws),
            streamed.limits)


def cpu_instances_deployment(dep: Deployment, k: int) -> Deployment:
    """A one-replica CPU deployment as k instances: each a replica with its own weights and
    1/k of the memory left after all k copies of them."""
    (rep,) = dep.replicas
    weights = sum(s.weight_bytes for s in rep.stages)
    budget = max(0, (rep.kv_budget_bytes - (k - 1) * weights) // k)
    replicas = [replace(rep, index=i, kv_budget_bytes=budget) for i in range(k)]
    return Deployment(CPU_INSTANCES_STRATEGY, replicas, note=f"{k} instances on the CPU, {dep.note}")


def _expected(chosen: _Judged, metrics: ForecastMetrics) -> dict:
    """What a continuous-batching plan expects beyond its rows' point lengths (stream_forecast's
    docstring): "expected_makespan_s", the makespan at the rows' mean lengths (when they have
    means); "expected_slo_attainment", the mean share of deadlines met over draws of the rows'
    lengths, with the least and most of any draw ("slo_attainment_range") and the number of
    draws. The rest of the summary, and every choice, stays at the point lengths."""
    out: dict = {}
    if chosen.expected_end_s is not None and metrics.start_s is not None:
        out["expected_makespan_s"] = chosen.expected_end_s - metrics.start_s
    with_deadline, draws = metrics.rows_with_deadline, chosen.met_draws
    if draws and with_deadline:
        out |= {"expected_slo_attainment": sum(draws) / len(draws) / with_deadline,
                "slo_attainment_range": [min(draws) / with_deadline, max(draws) / with_deadline],
                "slo_draws": len(draws)}
    return out


def _pick(judged: list[_Judged], objective: str) -> _Judged:
    best_att = max(j.attainment for j in judged)
    pool = [j for j in judged if j.attainment >= best_att - 1e-9]
    if objective == "he":
        return min(pool, key=lambda j: (j.n_devices, j.makespan))
    if objective == "lr":
        return min(pool, key=lambda j: (j.makespan, j.n_devices))
    shortest = min(j.makespan for j in pool)
    near = [j for j in pool if j.makespan <= shortest * (1 + MAKESPAN_TOL) + 1e-12]
    return min(near, key=lambda j: (j.n_devices, j.makespan))


def _why(chosen: _Judged, judged: list[_Judged]) -> str:
    """One line: the deployment chosen, its forecast, and the best of the others'."""
    def said(j: _Judged) -> str:
        d, m = j.deployment, j.metrics
        met = "" if m.slo_attainment is None else f"{m.slo_attainment:.0%} of deadlines met, "
        rate = f", {m.throughput_tok_s:.0f} tok/s" if m.throughput_tok_s else ""
        return f"{d.strategy} ({d.note}): {met}makespan {j.makespan:.0f} s{rate}"

    runner_up = min((j for j in judged if j is not chosen), key=lambda j: (-j.attainment, j.makespan))
    return (f"deployment {said(chosen)}, the best of {len(judged)} judged (on {chosen.judged_rows} "
            f"rows); next best {said(runner_up)}")


def _judging_sample(queries: Sequence[Query], limit: int, start: float) -> tuple[list[Query], int]:
    if len(queries) <= limit:
        return list(queries), 1
    k = math.ceil(len(queries) / limit)
    picked = sorted(queries, key=lambda q: INF if q.deadline_s is None else q.deadline_s)[::k]
    return [q if q.deadline_s is None else replace(q, deadline_s=start + (q.deadline_s - start) / k)
            for q in picked], k


def _p95(values: Sequence[int], default: int) -> int:
    if not values:
        return default
    s = sorted(values)
    return int(s[min(len(s) - 1, int(math.ceil(0.95 * len(s))) - 1)])


def _dep_key(d: Deployment) -> tuple:
    return tuple(tuple((s.devices, s.first_layer, s.last_layer) for s in r.stages) for r in d.replicas)


def _alternative(j: _Judged, m: ForecastMetrics, cost: CostModel, rows: int, chosen: bool) -> dict:
    reps = j.deployment.replicas
    return {
        "strategy": j.deployment.strategy,
        "note": j.deployment.note,
        "replicas": len(reps),
        "devices": [list(r.devices) for r in reps],
        "n_devices": j.n_devices,
        "per_token_s": cost.decode_step_s(reps[0], 1, 512) if reps else None,
        "kv_budget_bytes": min((r.kv_budget_bytes for r in reps), default=0),
        "makespan_s": m.makespan_s,
        "slo_attainment": m.slo_attainment,
        "throughput_tok_s": m.throughput_tok_s,
        "goodput_tok_s": m.goodput_tok_s,
        "judged_rows": rows,
        "chosen": chosen,
    }


def plan_to_dict(plan: Plan) -> dict:
    """The plan as JSON-ready data (for --json and report.json)."""
    dep = plan.deployment
    return {
        "policy": plan.policy,
        "engine": plan.engine,
        "start_offset_s": plan.start_offset_s,
        "deployment": {
            "strategy": dep.strategy,
            "note": dep.note,
            "replicas": [
                {
                    "index": r.index,
                    "devices": list(r.devices),
                    "kv_budget_bytes": r.kv_budget_bytes,
                    "stages": [asdict(s) for s in r.stages],
                    "device_map": dict(r.device_map),
                }
                for r in dep.replicas
            ],
        },
        "forecast_summary": dict(plan.summary) | {"start_offset_s": plan.start_offset_s},
        "batches": [asdict(b) for b in plan.batches],
        "forecast": [
            {"index": f.index, "replica": f.replica, "batch": f.batch, "start_s": f.start_s,
             "finish_s": f.finish_s, "deadline_s": f.deadline_s, "slo_met": f.slo_met}
            for f in sorted(plan.forecast.values(), key=lambda f: f.index)
        ],
        "skipped": list(plan.skipped),
        "stream": {str(r): asdict(lim) for r, lim in plan.stream.items()},
        "alternatives": [dict(a) for a in plan.alternatives],
        "cost_model": plan.cost_model,
        "notes": list(plan.notes),
    }
