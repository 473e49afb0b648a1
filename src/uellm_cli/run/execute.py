"""Load and execute: the plan's deployment loaded, its rows run, every batch written durably
as it ends (so a kill loses at most the batch in flight).

Three ways to run, one plan: static batches on one machine (hf: `Executor.run`, rescheduled
as the measured speed comes in), continuous batching fed in the plan's order (vllm:
`Executor.run_stream`), and replicas as Ray actors pulling planned batches (`--backend ray`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from uellm_cli.config import RunConfig
from uellm_cli.engine.loader import LoadOptions, load_engines
from uellm_cli.engine.rows import PreparedRow
from uellm_cli.jobs.results import BatchRecord, RowResult, StepRecord
from uellm_cli.plan.types import Plan
from uellm_cli.run.observer import RunObserver
from uellm_cli.run.outdir import RunFolder
from uellm_cli.run.planning import Planned
from uellm_cli.run.prepare import PreparedJob
from uellm_cli.run.replan import Replanner, RiskTracker
from uellm_cli.run.signals import Interrupts


@dataclass(slots=True)
class Executed:
    """What running the plan did: its batches (and a stream engine's steps), the utilisation
    samples, the load time, and whether an interrupt left rows unrun."""

    batches: list[BatchRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)  # engine steps (vllm, in-process)
    followed: list[tuple[float, Plan]] = field(default_factory=list)  # (taken at, plan)
    samples: list[dict] = field(default_factory=list)
    model_load_s: float | None = None  # None: no model was loaded (nothing left to run)
    ready_s: float | None = None  # the run clock when the engines were loaded
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def skip_hopeless(cfg: RunConfig, plan: Plan, todo: dict[int, PreparedRow]) -> dict[int, RowResult]:
    """With --on-miss skip, rows forecast to miss are taken out of `todo`; each becomes an
    error row (deadline_infeasible) without running."""
    if cfg.on_miss != "skip":
        return {}
    skipped: dict[int, RowResult] = {}
    for idx, fc in plan.forecast.items():
        if fc.slo_met is False and idx in todo:
            row = todo.pop(idx).row
            skipped[idx] = RowResult(
                index=idx, id=row.id, status="error", deadline_s=row.deadline_s, slo_met=False,
                error_code="deadline_infeasible",
                error_message=f"forecast to finish at {fc.finish_s:.1f}s, after its deadline "
                              f"{row.deadline_s:.1f}s (--on-miss skip)",
                passthrough=row.passthrough,
            )
    return skipped


def load_options(cfg: RunConfig, planned: Planned) -> LoadOptions:
    """What loading takes from the run: the dtype the plan was made for, the thread count."""
    return LoadOptions(dtype=planned.model.dtype, trust_remote_code=cfg.trust_remote_code,
                       raw_prompt=cfg.raw_prompt, threads=planned.target.threads,
                       max_batch_size=cfg.max_batch_size)


def run_plan(cfg: RunConfig, prepared: PreparedJob, planned: Planned,
             todo: dict[int, PreparedRow], folder: RunFolder, *, clock: Callable[[], float],
             interrupts: Interrupts, observer: RunObserver, ray=None) -> Executed:
    """Load the deployment (Ray actors, or engines here), then run every row of `todo`."""
    from uellm_cli.engine.executor import Executor
    from uellm_cli.report.sampler import UtilisationSampler

    plan, model = planned.plan, prepared.model
    observer.stage(f"loading {model.name}")
    load_start = clock()
    engines: dict[int, object] = {}
    if ray is not None:  # one actor per replica, each loading on its node
        ray.start(_worker_spec_for(cfg, prepared, planned), plan)
    else:
        engines = load_engines(planned.engine, model.resolved, model.tokenizer, plan,
                               load_options(cfg, planned), rows=todo, model_profile=planned.model)
    ready_s = clock()
    done = Executed(model_load_s=ready_s - load_start, ready_s=ready_s)

    executor = Executor(engines, clock=clock, stop=interrupts.stop, fail_fast=cfg.fail_fast)
    tracker = RiskTracker(plan, set(todo))
    replanner = Replanner(cfg, planned, clock, tracker)
    if ray is None and (from_start := replanner.at_start(set(todo))) is not None:
        plan = from_start  # loading ended off the plan's clock: the rows planned from now

    def on_batch(results: list[RowResult], record: BatchRecord) -> None:
        folder.record(results)
        done.batches.append(record)
        observer.batch_done(results, record, tracker.update(record, clock()))

    observer.started(plan, prepared.job.n_input, folder.skipped)
    sampler = UtilisationSampler(interval_s=cfg.sample_interval_s, clock=clock)
    with interrupts.gently(observer), sampler:
        if ray is not None:  # replicas pull batches in plan order
            ray.run(plan, todo, on_batch, clock=clock, stop=interrupts.stop, fail_fast=cfg.fail_fast)
        elif planned.engine == "vllm":  # continuous batching: rows queued in the plan's order
            executor.run_stream(plan, todo, on_batch, replan=replanner)
        else:
            executor.run(plan, todo, on_batch, replan=replanner)
    done.samples = sampler.samples()
    done.steps = executor.step_log
    done.followed = replanner.followed
    done.interrupted = interrupts.stop.is_set() and any(i not in folder.done for i in todo)
    if ray is not None:
        done.notes.extend(ray.notes)
    if (note := replanner.note()) is not None:
        done.notes.append(note)
    return done


def _worker_spec_for(cfg: RunConfig, prepared: PreparedJob, planned: Planned):
    """What each Ray actor loads: this run's model and options, its replica's device map."""
    from uellm_cli.ray_backend.worker import WorkerSpec

    base = load_options(cfg, planned)

    def spec(replica, placement) -> WorkerSpec:
        opts = LoadOptions(dtype=base.dtype, trust_remote_code=base.trust_remote_code,
                           raw_prompt=base.raw_prompt, threads=cfg.threads or placement.threads)
        return WorkerSpec(replica=replica.index, model=cfg.model, resolved=prepared.model.resolved,
                          device_map=placement.device_map, load=opts, fail_fast=cfg.fail_fast)

    return spec
