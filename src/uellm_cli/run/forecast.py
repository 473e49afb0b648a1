"""`uellm plan`: the run's own prepare and plan steps, with no out folder and no weights, for
this machine, a --cluster spec, or the cluster a Ray cluster reports.

Beside HELR's deployments it judges accelerate's own maps (auto, balanced, sequential) when
asked: they are built on a meta model (torch), so `--no-baselines` skips them.
"""

from __future__ import annotations

from dataclasses import dataclass

from uellm_cli.config import RunConfig
from uellm_cli.run import prepare as prep
from uellm_cli.run.planning import Planned, Targets, local_targets, plan_rows, ray_targets


@dataclass(slots=True)
class Forecast:
    """A plan as `uellm plan` shows it, with the prepared job it was made from."""

    prepared: prep.PreparedJob
    planned: Planned


def forecast(cfg: RunConfig, *, objective: str = "helr", baselines: bool = True) -> Forecast:
    """Plan the job of `cfg` as `uellm run` would (its forecast starts after loading)."""
    job = prep.read(cfg)
    model = prep.model_for_plan(cfg)
    prepared = prep.prepare(job, model)
    targets = _ray_targets(cfg, prepared) if cfg.backend == "ray" else local_targets(cfg, prepared)
    notes = []
    extra = []
    if baselines and cfg.backend == "ray":
        notes.append("accelerate baselines skipped: they place one machine's devices")
    elif baselines:
        extra, note = _accelerate(prepared, targets)
        notes += [note] if note else []
    planned = plan_rows(cfg, prepared.rows, targets, objective=objective, extra_deployments=extra)
    plan = planned.plan
    if prepared.capped:
        plan.notes.append(f"{prepared.capped} row(s) had max_new_tokens capped to fit the "
                          f"{model.max_context}-token context")
    plan.notes.extend(notes)
    rejected = len(job.errors) + len(prepared.rejected)
    if rejected:
        plan.notes.append(f"{rejected} row(s) of {job.n_input} rejected (see `uellm validate`)")
    return Forecast(prepared, planned)


def _ray_targets(cfg: RunConfig, prepared: prep.PreparedJob) -> Targets:
    """The cluster a Ray cluster reports now (connects, reads ray.nodes(), disconnects).
    RayBackend refuses a missing Ray or a dead address in one line."""
    from uellm_cli.profile.hardware import detect_cpu
    from uellm_cli.ray_backend.driver import RayBackend

    with RayBackend(cfg.ray_address) as backend:
        return ray_targets(backend.cluster(detect_cpu(), replicas=cfg.replicas), cfg, prepared)


def _accelerate(prepared: prep.PreparedJob, targets: Targets):
    """accelerate's baselines on a meta model; (deployments, a note when they could not be built)."""
    try:
        from uellm_cli.engine.accelerate_maps import accelerate_deployments
        from uellm_cli.profile.model import build_meta_model

        profile = targets.profile
        meta = build_meta_model(prepared.model.config, profile.dtype)
        return accelerate_deployments(meta, profile, targets.targets[0].cluster), None
    except Exception as exc:  # noqa: BLE001 - baselines are for comparison only
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [], f"accelerate baselines skipped: {reason}"
