"""Plan: prepared rows to a Plan, the one path `uellm run` and `uellm plan` both take.

The steps: where it runs (the target: this machine, a --cluster spec, or what Ray reports, with
the calibrations that apply to its devices), the model profiled for the dtype the engine will
load there, each row's output length predicted, then plan.make_plan with the start-up that
comes before the first batch (loading counts on the run clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from uellm_cli.config import RunConfig
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.plan.types import Deployment, Plan, Query
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile
from uellm_cli.run.prepare import PreparedJob


@dataclass(slots=True)
class Target:
    """Where a plan runs: the devices, the calibrations that apply to them, the CPU threads
    the run computes with (decided once: plan, model load and run calibration agree), and the
    notes that come with the cluster (e.g. from Ray)."""

    cluster: Cluster
    calibrations: dict[str, Calibration]
    threads: int | None = None


@dataclass(slots=True)
class Planned:
    """A plan with what it was made from (replanning while the run goes reuses them)."""

    plan: Plan
    queries: dict[int, Query]
    model: ModelProfile
    target: Target


def local_target(cfg: RunConfig, model_name: str) -> Target:
    """This machine (or the --cluster spec), with the run's thread count and the calibrations
    of this engine and model, a CPU one slowed to the threads the run will use."""
    from uellm_cli.profile.calibrate import load_calibrations
    from uellm_cli.profile.hardware import resolve_cluster
    from uellm_cli.profile.threads import choose_cpu_threads

    cluster = resolve_cluster(cfg.cluster)
    threads = choose_cpu_threads(cfg.threads)
    calibrations = for_cpu_threads(load_calibrations(cfg.engine, model=model_name), cluster, threads)
    return Target(cluster, calibrations, threads)


def ray_target(ray_cluster, cfg: RunConfig, model_name: str) -> Target:
    """The cluster Ray reports (ray_backend.cluster.RayCluster), each CPU slot with this
    machine's CPU calibration scaled to its share of the threads."""
    from uellm_cli.profile.calibrate import load_calibrations

    calibrations = ray_cluster.with_slot_calibrations(load_calibrations(cfg.engine, model=model_name))
    return Target(ray_cluster.cluster, calibrations, cfg.threads)


def for_cpu_threads(calibrations: Mapping[str, Calibration], cluster: Cluster,
                    threads: int) -> dict[str, Calibration]:
    """A CPU calibration measured with more threads than the run uses is slowed to match (a
    run on a busy machine takes fewer threads: profile/threads.py)."""
    out = dict(calibrations)
    for dev in cluster.devices:
        if dev.kind == "cpu" and dev.name in out:
            out[dev.name] = out[dev.name].for_threads(threads)
    return out


def expected_startup_s(model_profile: ModelProfile, engine: str = "hf",
                       backend: str = "local") -> float:
    """Seconds before the first batch can start: loading safetensors at roughly disk/memory
    speed (~1 GB/s is a fair CPU guess), plus what comes on top: a Ray actor starts a process
    that imports torch; vLLM starts an engine (import, KV allocation)."""
    load = 0.5 + model_profile.weight_bytes / 1e9
    if backend == "ray":
        from uellm_cli.ray_backend import EXPECTED_ACTOR_START_S

        return load + EXPECTED_ACTOR_START_S
    if engine == "vllm":
        from uellm_cli.engine.vllm_settings import EXPECTED_START_S

        return load + EXPECTED_START_S
    return load


def model_profile(prepared: PreparedJob, cluster: Cluster, dtype: str | None) -> ModelProfile:
    """The model as the engine will load it on `cluster`: the dtype asked for, float32 where
    there is no GPU (the CPU engines' default), else the checkpoint's."""
    from uellm_cli.profile.model import profile_of
    from uellm_cli.profile.model_profile import planning_dtype

    return profile_of(prepared.model.config, prepared.model.name, planning_dtype(cluster, dtype))


def predict(cfg: RunConfig, model_name: str, rows: Mapping[int, PreparedRow]) -> dict[int, Query]:
    """A Query per row: its tokens, deadline, and the predictor's output length (the point
    value for time, the upper quantile for memory), never past the row's budget."""
    from uellm_cli.profile.lengths import LengthQuery, get_predictor

    predictor = get_predictor(cfg.predictor, model_name=model_name)
    items = list(rows.values())
    predictions = predictor.predict([
        LengthQuery(text=p.row.text, prompt_tokens=len(p.prompt_ids),
                    max_new_tokens=p.row.max_new_tokens)
        for p in items
    ])
    queries = {}
    for p, pred in zip(items, predictions, strict=True):
        budget = p.row.max_new_tokens
        queries[p.row.index] = Query(
            index=p.row.index, id=p.row.id, prompt_tokens=len(p.prompt_ids), max_new_tokens=budget,
            predicted_tokens=min(pred.tokens, budget),
            predicted_upper=min(max(pred.upper, pred.tokens), budget),
            deadline_s=p.row.deadline_s, priority=p.row.priority, group=p.row.sampling.key(),
        )
    return queries


def plan_rows(cfg: RunConfig, prepared: PreparedJob, rows: Mapping[int, PreparedRow],
              target: Target, *, now_s: float = 0.0, objective: str = "helr",
              extra_deployments: Sequence[Deployment] = (),
              profile: ModelProfile | None = None) -> Planned:
    """The plan of `rows` (the prepared rows still to run) on `target`, starting after the
    engine's start-up from `now_s` on the run clock. `profile`: model_profile()'s, when the
    caller has it already."""
    from uellm_cli.plan.planner import make_plan

    profile = profile or model_profile(prepared, target.cluster, cfg.dtype)
    queries = predict(cfg, profile.name, rows)
    for i, q in queries.items():
        rows[i].predicted_tokens = q.predicted_tokens
    plan = make_plan(
        list(queries.values()), profile, target.cluster, policy=cfg.policy, objective=objective,
        calibrations=target.calibrations,
        start_offset_s=now_s + expected_startup_s(profile, cfg.engine, cfg.backend),
        max_batch_size=cfg.max_batch_size, extra_deployments=extra_deployments,
        on_miss=cfg.on_miss, replicas=cfg.replicas,
    )
    return Planned(plan, queries, profile, target)
