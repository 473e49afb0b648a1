"""`uellm run` as one function: prepare -> plan -> load and execute -> finish.

The run clock starts when the command starts (model loading counts). Nothing here prints:
progress goes to the RunObserver the command supplies.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone

from uellm_cli.config import RunConfig
from uellm_cli.run import prepare as prep
from uellm_cli.run.execute import Executed, run_plan, skip_hopeless
from uellm_cli.run.finish import finish
from uellm_cli.run.observer import RunObserver, RunOutcome
from uellm_cli.run.outdir import RunFolder, check_out_folder
from uellm_cli.run.overlap import plan_while
from uellm_cli.run.planning import Targets, local_targets, note_predictions, plan_rows, ray_targets
from uellm_cli.run.signals import Interrupts


def run_job(cfg: RunConfig, *, observer: RunObserver | None = None,
            clock_origin: float | None = None) -> RunOutcome:
    """Run a job end to end. Raises UellmError subclasses for whole-run failures."""
    obs = observer or RunObserver()
    check_extras(cfg)
    check_out_folder(cfg.out)  # a bad --out or a held lock: refused before reading the job
    origin = clock_origin if clock_origin is not None else time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - origin

    obs.stage(f"reading {cfg.job}")
    job = prep.read(cfg, started_at=datetime.now(timezone.utc))
    obs.stage(f"resolving model {cfg.model}")
    model = prep.model_for_run(cfg)
    obs.stage("tokenising prompts")
    prepared = prep.prepare(job, model)

    with Interrupts() as interrupts, RunFolder(cfg, prepared, obs) as folder, \
            contextlib.ExitStack() as backends:
        ray = _connect_ray(cfg, obs, backends)
        todo = folder.todo(prepared.rows)
        if not todo:  # a resume of a finished job (or only rejected rows): no plan, no weights
            obs.stage("nothing left to run: every row already has its result")
            return finish(cfg, prepared, None, folder, Executed(), {})
        obs.stage("planning")
        targets = (ray_targets(_ray_cluster(ray, cfg), cfg, prepared) if ray is not None
                   else local_targets(cfg, prepared, engines=folder.resumed_engines()))
        now_s = clock()
        planned = plan_while(lambda: plan_rows(cfg, todo, targets, now_s=now_s),
                             engine_imports(cfg, targets))
        note_predictions(todo, planned.queries)
        folder.record_engine(planned.engine, planned.engine_note)
        skipped = skip_hopeless(cfg, planned.plan, todo)
        interrupts.raise_if_stopped()  # a swallowed interrupt: do not load the model for nothing
        executed = run_plan(cfg, prepared, planned, todo, folder, clock=clock,
                            interrupts=interrupts, observer=obs, ray=ray)
        return finish(cfg, prepared, planned, folder, executed, skipped)


def engine_imports(cfg: RunConfig, targets: Targets):
    """What to import while the plan is made (run/overlap.py): vLLM (4 s on a 2-core CPU) when
    the run will load nothing else; None for hf (torch is in already), Ray (its actors load
    the engine) and `--engine auto` still choosing (vLLM imported for a run that then takes
    hf would cost it the difference)."""
    if cfg.backend != "local" or any(t.engine != "vllm" for t in targets.targets):
        return None
    from uellm_cli.engine.vllm_engine import prefetch_vllm

    return prefetch_vllm


def check_extras(cfg: RunConfig) -> None:
    """A missing extra or a Ray address nobody answers fails before any work."""
    if cfg.engine == "vllm":
        from uellm_cli.engine.vllm_engine import require_vllm

        require_vllm()
    if cfg.backend == "ray":
        from uellm_cli.ray_backend import check_reachable, require_ray

        require_ray()
        check_reachable(cfg.ray_address)  # before the out folder is touched


def _connect_ray(cfg: RunConfig, obs: RunObserver, backends: contextlib.ExitStack):
    """The Ray backend (connected, or a local Ray started) with --backend ray, else None."""
    if cfg.backend != "ray":
        return None
    from uellm_cli.ray_backend.driver import RayBackend

    obs.stage(f"connecting to Ray{f' at {cfg.ray_address}' if cfg.ray_address else ''}")
    return backends.enter_context(RayBackend(cfg.ray_address))


def _ray_cluster(ray, cfg: RunConfig):
    from uellm_cli.profile.hardware import detect_cpu

    return ray.cluster(detect_cpu(), replicas=cfg.replicas)
