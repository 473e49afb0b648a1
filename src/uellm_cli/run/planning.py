"""Plan: prepared rows to a Plan, the one path `uellm run` and `uellm plan` both take.

The steps: where it runs and on which engine (the target: this machine, a --cluster spec, or
what Ray reports, with the engine's calibrations for its devices), the model profiled for the
dtype the engine will load there, each row's output length predicted, then plan.make_plan with
the start-up that comes before the first batch (loading counts on the run clock). With
`--engine auto` every candidate engine gets a plan and the best forecast wins (run/engines.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from uellm_cli.config import RunConfig
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.plan.costmodel import ENGINE_ROOFLINES, Roofline
from uellm_cli.plan.prefixes import shared_prefixes
from uellm_cli.plan.types import Deployment, Plan, Query
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile
from uellm_cli.run.prepare import PreparedJob

# vLLM on a CPU: one instance with every thread, or the threads split into this many instances
# (the plan judges each by simulation, with a calibration of that many side by side).
CPU_INSTANCES = (1, 2, 4)


@dataclass(slots=True)
class Target:
    """Where a plan runs and on what: the devices, the engine, that engine's calibrations of
    them, and the CPU threads the run computes with (decided once: plan, model load and run
    calibration agree)."""

    cluster: Cluster
    engine: str
    calibrations: dict[str, Calibration]
    threads: int | None = None  # per engine instance
    instances: int = 1  # vLLM on a CPU: instances the threads are split into

    @property
    def roofline(self) -> Roofline:
        """The engine's roofline, for devices without a calibration."""
        return ENGINE_ROOFLINES[self.engine]


@dataclass(slots=True)
class Planned:
    """A plan with what it was made from (replanning while the run goes reuses them).
    `engine_note`: why `--engine auto` chose this engine (None when it was forced);
    `made_at_s`: the run clock when planning began, which the plan's start-up counts from."""

    plan: Plan
    queries: dict[int, Query]
    model: ModelProfile
    target: Target
    engine_note: str | None = None
    made_at_s: float = 0.0

    @property
    def engine(self) -> str:
        return self.target.engine

    @property
    def label(self) -> str:
        """The engine, and how its CPU instances share the threads when there are several."""
        t = self.target
        if t.instances == 1:
            return t.engine
        return f"{t.engine} ({t.instances} instances x {t.threads} thread{'s' if t.threads != 1 else ''})"


@dataclass(slots=True)
class Targets:
    """What a plan is made for: one target per engine to judge (one unless `--engine auto`),
    the model as those engines load it, why auto judges only one engine (`engine_note`), and
    notes that come with the cluster (Ray's)."""

    targets: list[Target]
    profile: ModelProfile
    notes: list[str]
    engine_note: str | None = None


def local_targets(cfg: RunConfig, prepared: PreparedJob, *,
                  engines: Sequence[str] | None = None) -> Targets:
    """This machine (or the --cluster spec) for each candidate engine (run/engines.py, or
    `engines` when given: a resumed run keeps its engine), with the run's thread count and each
    engine's calibrations of this model, a CPU one slowed to the threads the run will use."""
    from uellm_cli.profile.calibrate import load_calibrations
    from uellm_cli.profile.hardware import resolve_cluster
    from uellm_cli.profile.threads import choose_cpu_threads
    from uellm_cli.run.engines import candidates

    cluster = resolve_cluster(cfg.cluster)
    profile = model_profile(prepared, cluster, cfg.dtype)
    note = None
    if engines is None:
        engines, note = candidates(cfg, profile, cluster)
    elif cfg.engine == "auto":
        note = f"auto: {engines[0]} (the engine the run it resumes started on)"
    threads = choose_cpu_threads(cfg.threads)
    targets = []
    for engine in engines:
        split = CPU_INSTANCES if engine == "vllm" and not cluster.has_gpu and cfg.replicas is None else (1,)
        whole = for_cpu_threads(load_calibrations(engine, model=profile.name, threads=threads),
                                cluster, threads)
        targets.append(Target(cluster, engine, whole, threads, 1))
        for k in (k for k in split if k > 1 and threads % k == 0):
            side = load_calibrations(engine, model=profile.name, threads=threads // k, instances=k)
            targets.append(Target(cpu_share(cluster, k), engine,
                                  side_by_side(whole, side, cluster, threads // k, k), threads // k, k))
    return Targets(targets, profile, [], note)


def cpu_share(cluster: Cluster, instances: int) -> Cluster:
    """The cluster as each of `instances` CPU instances sees it: each CPU's peak compute and
    bandwidth split between them (its roofline, where no calibration applies)."""
    return replace(cluster, devices=[
        replace(d, flops=d.flops / instances, mem_bandwidth=d.mem_bandwidth / instances)
        if d.kind == "cpu" else d for d in cluster.devices])


def side_by_side(whole: Mapping[str, Calibration], measured: Mapping[str, Calibration],
                 cluster: Cluster, threads: int, instances: int) -> dict[str, Calibration]:
    """Calibrations for each of `instances` CPU instances of `threads` threads each: per CPU
    the one measured with that many instances of those threads side by side, else the
    one-instance calibration of all the threads (`whole`) slowed so that together they are no
    faster (Calibration.side_by_side). A 1-thread calibration measured alone would make two
    instances look twice as fast as they run: the plan chose them, and they ran at 0.2-0.5x."""
    out = dict(whole)
    for dev in cluster.devices:
        got = measured.get(dev.name)
        if dev.kind != "cpu":
            continue
        if got is not None and got.threads == threads:
            out[dev.name] = got
        elif dev.name in whole:
            out[dev.name] = whole[dev.name].side_by_side(instances)
    return out


def ray_targets(ray_cluster, cfg: RunConfig, prepared: PreparedJob) -> Targets:
    """The cluster Ray reports (ray_backend.cluster.RayCluster), each CPU slot with this
    machine's CPU calibration scaled to its share of the threads. Ray runs the hf engine."""
    from uellm_cli.profile.calibrate import load_calibrations

    profile = model_profile(prepared, ray_cluster.cluster, cfg.dtype)
    calibrations = ray_cluster.with_slot_calibrations(load_calibrations("hf", model=profile.name))
    return Targets([Target(ray_cluster.cluster, "hf", calibrations, cfg.threads)], profile,
                   list(ray_cluster.cluster.notes),
                   "auto: hf (Ray actors run the hf engine)" if cfg.engine == "auto" else None)


def for_cpu_threads(calibrations: Mapping[str, Calibration], cluster: Cluster,
                    threads: int) -> dict[str, Calibration]:
    """A CPU calibration measured with more threads than the run uses is slowed to match (a
    run on a busy machine takes fewer threads: profile/threads.py)."""
    out = dict(calibrations)
    for dev in cluster.devices:
        if dev.kind == "cpu" and dev.name in out:
            out[dev.name] = out[dev.name].for_threads(threads)
    return out


def expected_startup_s(model_profile: ModelProfile, engine: str = "hf", backend: str = "local",
                       *, cluster: Cluster | None = None, instances: int = 1) -> float:
    """Seconds before the first row can start: what this engine took to start here the last
    few times (run_calibration.measured_startup_s, per engine instance; several start one
    after the other), else a guess: loading safetensors at roughly disk/memory speed (~1 GB/s
    is a fair CPU guess), plus what comes on top: a Ray actor starts a process that imports
    torch; vLLM starts an engine (import, KV allocation)."""
    if backend == "ray":
        from uellm_cli.ray_backend import EXPECTED_ACTOR_START_S

        return 0.5 + model_profile.weight_bytes / 1e9 + EXPECTED_ACTOR_START_S
    if cluster is not None and cluster.devices:
        from uellm_cli.profile.run_calibration import measured_startup_s

        device = next((d for d in cluster.devices if d.kind == "gpu"), cluster.devices[0])
        measured = measured_startup_s(engine=engine, device_name=device.name, model=model_profile.name)
        if measured is not None:
            return measured * instances
    load = 0.5 + model_profile.weight_bytes / 1e9
    if engine == "vllm":
        from uellm_cli.engine.vllm_settings import EXPECTED_START_S

        return (load + EXPECTED_START_S) * instances
    return load


def model_profile(prepared: PreparedJob, cluster: Cluster, dtype: str | None) -> ModelProfile:
    """The model as the engine will load it on `cluster`: the dtype asked for, float32 where
    there is no GPU (the CPU engines' default), else the checkpoint's."""
    from uellm_cli.profile.model import profile_of
    from uellm_cli.profile.model_profile import planning_dtype

    return profile_of(prepared.model.config, prepared.model.name, planning_dtype(cluster, dtype))


def predict(cfg: RunConfig, model_name: str, rows: Mapping[int, PreparedRow]
            ) -> tuple[dict[int, Query], str]:
    """A Query per row: its tokens, deadline, and the predictor's output length (the point
    for order and deadlines, the mean for the job's time, the upper quantile for memory),
    never past the row's budget, and the leading tokens it shares with another row (vLLM's
    prefix cache); and the name of the predictor that made them (`auto` picks one)."""
    from uellm_cli.profile.lengths import LengthQuery, get_predictor

    predictor = get_predictor(cfg.predictor, model_name=model_name)
    items = list(rows.values())
    predictions = predictor.predict([
        LengthQuery(text=p.row.text, prompt_tokens=len(p.prompt_ids),
                    max_new_tokens=p.row.max_new_tokens)
        for p in items
    ])
    queries = {}
    shared = shared_prefixes([p.prompt_ids for p in items])
    for p, pred, prefix in zip(items, predictions, shared, strict=True):
        budget = p.row.max_new_tokens
        queries[p.row.index] = Query(
            index=p.row.index, id=p.row.id, prompt_tokens=len(p.prompt_ids), max_new_tokens=budget,
            predicted_tokens=min(pred.tokens, budget),
            predicted_upper=min(max(pred.upper, pred.tokens), budget),
            deadline_s=p.row.deadline_s, priority=p.row.priority, group=p.row.sampling.key(),
            expected_tokens=None if pred.mean is None else min(pred.mean, budget),
            shared_prefix=prefix,
        )
    return queries, predictor.name


def note_predictions(rows: Mapping[int, PreparedRow], queries: Mapping[int, Query]) -> None:
    """Each row's predicted length, as its result reports it (predicted_output_tokens). Not
    done by plan_rows, which changes nothing it is given: it may run in a child process."""
    for i, q in queries.items():
        rows[i].predicted_tokens = q.predicted_tokens


def plan_rows(cfg: RunConfig, rows: Mapping[int, PreparedRow], targets: Targets, *,
              now_s: float = 0.0, objective: str = "helr",
              extra_deployments: Sequence[Deployment] = ()) -> Planned:
    """The plan of `rows` (the prepared rows still to run), starting after the engine's
    start-up from `now_s` on the run clock. With several targets (one per candidate engine,
    `--engine auto`), each is planned and the best forecast is kept (run/engines.py); the
    plan's notes say which engine it is for, and why. A split of the CPU into vLLM instances
    is first planned in deadline order alone at vLLM's default concurrency (one simulation),
    as is one instance: only a split that then ends no later than the one is planned in full
    and judged by choose(); a slower one is set aside unsearched. The search of its order and
    concurrency was 1.5-1.7 s of a 1,000-row job's start-up, and a split pays k start-ups and
    runs slower side by side than any model of it shows (docs/planner.md)."""
    from uellm_cli.plan.planner import make_plan
    from uellm_cli.run.engines import choose, finish_s

    profile = targets.profile
    queries, predictor = predict(cfg, profile.name, rows)

    def plan_for(target: Target, policy: str) -> Planned:
        plan = make_plan(
            list(queries.values()), profile, target.cluster, policy=policy,
            objective=objective, calibrations=target.calibrations,
            start_offset_s=now_s + expected_startup_s(profile, target.engine, cfg.backend,
                                                      cluster=target.cluster, instances=target.instances),
            max_batch_size=cfg.max_batch_size, extra_deployments=extra_deployments,
            on_miss=cfg.on_miss, replicas=cfg.replicas, roofline=target.roofline,
            engine=target.engine, cpu_instances=target.instances,
        )
        return Planned(plan, queries, profile, target, targets.engine_note, made_at_s=now_s)

    planned: list[Planned] = []
    unsearched: list[tuple[Planned, Planned]] = []  # (split, one instance), in deadline order alone
    quick_one: dict[str, Planned] = {}  # per engine: one instance, in deadline order alone
    for target in targets.targets:
        one = next((t for t in targets.targets if t.engine == target.engine and t.instances == 1), None)
        if target.instances > 1 and one is not None and cfg.policy == "slo-odbs":
            if target.engine not in quick_one:
                quick_one[target.engine] = plan_for(one, "edf")
            quick = plan_for(target, "edf")
            if finish_s(quick) > finish_s(quick_one[target.engine]):
                unsearched.append((quick, quick_one[target.engine]))
                continue
        planned.append(plan_for(target, cfg.policy))
    best = choose(planned, unsearched) if len(planned) > 1 or unsearched else planned[0]
    lengths = f"output lengths: the {predictor} predictor" + (" (auto)" if cfg.predictor == "auto" else "")
    best.plan.notes[:0] = [n for n in (best.engine_note, *targets.notes, lengths) if n]
    return best
