"""Finish: every input row's result in input order, written with the errors, the report and
the manifest; then what the run teaches (the cost model's run calibration, the history).

The metrics cover the whole job: rows of this attempt, rows a resume kept, rows rejected
before running and rows skipped as hopeless (`--on-miss skip`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

from uellm_cli.config import RunConfig
from uellm_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from uellm_cli.jobs.results import RowResult, StepRecord
from uellm_cli.plan.types import Plan
from uellm_cli.report.metrics import RunMetrics
from uellm_cli.run.execute import Executed
from uellm_cli.run.observer import RunOutcome
from uellm_cli.run.outdir import RunFolder
from uellm_cli.run.planning import Planned
from uellm_cli.run.prepare import PreparedJob


def finish(cfg: RunConfig, prepared: PreparedJob, planned: Planned | None, folder: RunFolder,
           executed: Executed, skipped: dict[int, RowResult]) -> RunOutcome:
    """Write what the run produced and return its outcome (exit status included). `planned`
    is None when nothing was left to run (a resume of a finished job): no plan, no engine."""
    results = final_results(prepared, folder.done, skipped)
    outcome = RunOutcome(exit_code=EXIT_OK, out_dir=cfg.out, rows_total=prepared.job.n_input)
    for r in results:
        if r.status == "ok":
            outcome.rows_ok += 1
        elif r.status == "rejected":
            outcome.rows_rejected += 1
        else:
            outcome.rows_error += 1
    if planned is not None:
        planned.plan.notes.extend(executed.notes)
    if executed.interrupted:
        folder.finish("interrupted")
        outcome.state, outcome.exit_code = "interrupted", EXIT_INTERRUPTED
        return outcome

    from uellm_cli.jobs.writers import write_errors, write_results

    outcome.results_path = write_results(
        cfg.out, [r.to_record() for r in results], fmt=cfg.output_format,
        passthrough_columns=prepared.job.passthrough_columns, model_name=prepared.model.name,
    )
    write_errors(cfg.out, error_entries(prepared, results))
    outcome.metrics, outcome.report_html = _report(cfg, planned, folder, executed, results)
    folder.finish("complete", {r.index: r for r in results})
    if planned is not None:  # something ran (a resume of a finished job recorded its rows)
        _learn_costs(cfg, planned, executed)
        _learn_stated_lengths(prepared, results)
    if cfg.record_history:
        _record_history(cfg, prepared, folder, outcome.metrics, results)
    missed = any(r.slo_met is False for r in results)
    if outcome.rows_error or outcome.rows_rejected or missed:
        outcome.exit_code = EXIT_PARTIAL
    return outcome


def final_results(prepared: PreparedJob, done: dict[int, RowResult],
                  skipped: dict[int, RowResult]) -> list[RowResult]:
    """One result per input row, in input order: logged results, skipped rows, rejections."""
    by_index = dict(done) | skipped
    for e in [*prepared.job.errors, *prepared.rejected]:
        if e.index is not None:  # a rejected row with a deadline misses it
            by_index[e.index] = RowResult(
                index=e.index, id=e.id, status="rejected", error_code=e.code, error_message=e.reason,
                deadline_s=e.deadline_s, slo_met=False if e.deadline_s is not None else None)
    return [by_index[i] for i in sorted(by_index)]


def error_entries(prepared: PreparedJob, results: list[RowResult]) -> list[dict]:
    """errors.jsonl: where each row that is not ok came from (file, line, field) and why."""
    job = prepared.job
    lines = {r.index: r.line for r in job.rows}
    where = {e.index: e for e in [*job.errors, *prepared.rejected] if e.index is not None}
    out = []
    for r in results:
        if r.status == "ok":
            continue
        src = where.get(r.index) if r.status == "rejected" else None
        out.append({
            "row": r.index,
            "file": src.file if src else str(job.path),
            "line": src.line if src else lines.get(r.index),
            "id": src.id if src else r.id,
            "field": src.field if src else None,
            "code": r.error_code,
            "reason": r.error_message,
        })
    return out


def _report(cfg: RunConfig, planned: Planned | None, folder: RunFolder, executed: Executed,
            results: list[RowResult]):
    """Metrics over every input row and every attempt (a resumed run's earlier batches laid
    before this attempt's), the forecast beside them; report.json and report.html."""
    from uellm_cli.plan.planner import plan_to_dict
    from uellm_cli.report.metrics import forecast_summary, summarize
    from uellm_cli.report.rundir import write_reports

    ran = planned.queries if planned is not None else {}
    first = min((b.started_s for b in executed.batches), default=None)
    batches = folder.earlier_batches(ran, end_s=first) + executed.batches
    forecast = plan_dict = None
    if planned is not None:
        plan = planned.plan
        forecast = forecast_summary(plan, {i: q.predicted_tokens for i, q in planned.queries.items()})
        if plan.stream:
            forecast["replay"] = replay_error(planned, results, executed.steps, executed.followed)
        plan_dict = plan_to_dict(plan)
        engine, note = planned.engine, planned.engine_note
    else:
        engine, note = folder.manifest.engine, "nothing left to run: every row has its result"
    metrics = summarize(results, batches, model_load_s=executed.model_load_s,
                        engine=engine, engine_note=note, forecast=forecast, utilisation=executed.samples)
    _, html = write_reports(cfg.out, metrics, results=results, batches=batches,
                            utilisation=executed.samples, plan_dict=plan_dict,
                            options=folder.manifest.options, versions=folder.manifest.versions,
                            title=f"uellm run {cfg.job.stem}")
    return metrics, html


def replay_error(planned: Planned, results: list[RowResult], steps: Sequence[StepRecord] = (),
                 followed: Sequence[tuple[float, Plan]] = ()) -> dict | None:
    """The continuous-batching forecast replayed with the rows' true output lengths, in the
    order they really started, from the first row's real start, each row under the in-flight
    cap of the plan the run followed when it started (`followed`: (taken at, plan); the first
    plan alone when not given): its makespan and per-row finish errors against what ran (the
    step-time model's and the scheduler rules' share of the forecast error). With the run's
    engine `steps`, `own_steps` replays it again on a step-time model fitted to those steps
    alone: what is left is the scheduler rules' and the model's form, without the machine's
    drift since its calibration (on a shared 2-core machine the same job ran 4x slower in the
    afternoon than in the morning)."""
    from dataclasses import replace

    from uellm_cli.plan.costmodel import CostModel
    from uellm_cli.plan.stream_forecast import followed_caps

    ran = {r.index: r for r in results if r.status == "ok" and r.started_s is not None
           and r.finished_s is not None and r.index in planned.queries}
    if not ran:
        return None
    queries = {i: replace(planned.queries[i], predicted_tokens=max(1, r.output_tokens or 1))
               for i, r in ran.items()}
    target = planned.target
    caps = followed_caps(followed or [(-math.inf, planned.plan)],
                         {i: r.started_s for i, r in ran.items()})
    out = _replayed(planned, ran, queries, caps, CostModel(planned.model, target.cluster,
                                                            target.calibrations, target.roofline))
    own = _own_step_model(planned, steps)
    if out is not None and own is not None:
        out["own_steps"] = _replayed(planned, ran, queries, caps, own)
    return out


def _replayed(planned: Planned, ran: dict[int, RowResult], queries: dict, caps: dict[int, int],
              cost) -> dict | None:
    """One replay of the rows that ran, timed by `cost`, and its errors against what ran."""
    from uellm_cli.plan.stream_forecast import plan_order, replay

    t0 = min(r.started_s for r in ran.values())
    plan = planned.plan
    rank = {i: k for k, i in enumerate(plan_order(plan.batches))}
    order = sorted(ran, key=lambda i: (ran[i].started_s, rank.get(i, len(rank))))
    replica_of = {i: r.replica if r.replica is not None else 0 for i, r in ran.items()}
    finish = replay(order, replica_of, queries, plan.deployment.replicas, cost, plan.stream,
                    start_s=t0, caps=caps)
    if not finish:
        return None
    actual_end = max(r.finished_s for r in ran.values())
    errors = sorted(abs(finish[i] - r.finished_s) / max(r.finished_s - t0, 1e-9)
                    for i, r in ran.items() if i in finish)
    return {"makespan_s": max(finish.values()) - t0,
            "makespan_error": (max(finish.values()) - actual_end) / max(actual_end - t0, 1e-9),
            "row_finish_error_median": errors[len(errors) // 2] if errors else None,
            "rows": len(errors)}


def _own_step_model(planned: Planned, steps: Sequence[StepRecord]):
    """A CostModel whose one device is timed by a step-time model fitted to `steps` alone, or
    None (several devices, or steps that cannot tell the model's terms apart)."""
    from uellm_cli.plan.costmodel import CostModel
    from uellm_cli.profile.run_calibration import fit_steps

    device = _single_device(planned) if steps else None
    if device is None:
        return None
    cal = fit_steps(steps, engine=planned.engine, device_name=device.name,
                    model=planned.model.name, source="this run")
    if cal is None:
        return None
    target = planned.target
    return CostModel(planned.model, target.cluster, {**target.calibrations, device.name: cal},
                     target.roofline)


def _single_device(planned: Planned):
    """The Device of a plan of one replica on one device, else None: only there do a run's
    measurements time the device alone."""
    replicas = planned.plan.deployment.replicas
    if len(replicas) != 1 or len(replicas[0].stages) != 1:
        return None
    try:
        return planned.target.cluster.device(replicas[0].stages[0].device)
    except KeyError:
        return None


def _startup_s(planned: Planned, executed: Executed, device) -> float:
    """The start-up a plan counts before its first row, as this run took it on `device`: from
    the moment planning began (vLLM is imported meanwhile: run/overlap.py) until the engines
    were loaded, per instance (they start one after the other), less the KV allocation the
    plan adds."""
    from uellm_cli.plan.stream_forecast import cpu_kv_alloc_s

    whole = executed.model_load_s or 0.0
    if executed.ready_s is not None:
        whole = executed.ready_s - planned.made_at_s
    start = whole / planned.target.instances
    if planned.engine == "vllm" and device.kind == "cpu" and planned.plan.stream:
        start -= cpu_kv_alloc_s(next(iter(planned.plan.stream.values())))
    return start


def _learn_costs(cfg: RunConfig, planned: Planned, executed: Executed) -> None:
    """Refit the cost model from what this run executed on a one-device replica (hf: its
    static batches; vllm: its engine steps), so the next forecast for this model and device
    comes from what the engine really did."""
    from uellm_cli.profile.run_calibration import record_batches, record_startup, record_steps

    device = _single_device(planned) if cfg.backend == "local" else None
    if device is None:
        return
    threads = planned.target.threads if device.kind == "cpu" else None
    where = dict(engine=planned.engine, device_name=device.name, model=planned.model.name,
                 threads=threads)
    with contextlib.suppress(OSError):  # an optimisation: a read-only home must not fail the run
        if executed.model_load_s:
            record_startup(max(0.5, _startup_s(planned, executed, device)),
                           engine=planned.engine, device_name=device.name, model=planned.model.name)
        if planned.engine == "vllm":
            record_steps(executed.steps, **where, instances=planned.target.instances)
        else:
            record_batches(executed.batches, **where)


def _learn_stated_lengths(prepared: PreparedJob, results: list[RowResult]) -> None:
    """Record how the model answered the rows whose prompt states a length (numbers only, no
    prompt: kept under --no-history too), for the next run's predictions of such rows."""
    from uellm_cli.profile.length_requests import observe, record_requests
    from uellm_cli.profile.lengths import requests_path

    seen = []
    for r in results:
        row = prepared.rows.get(r.index)
        if r.status == "ok" and row is not None:
            o = observe(row.row.text, r.output_tokens, row.row.max_new_tokens, r.finish_reason)
            if o is not None:
                seen.append(o)
    with contextlib.suppress(OSError):  # a read-only home must not fail the run
        record_requests(seen, requests_path(prepared.model.name))


def _record_history(cfg: RunConfig, prepared: PreparedJob, folder: RunFolder,
                    metrics: RunMetrics, results: list[RowResult]) -> None:
    from uellm_cli import store

    manifest = folder.manifest
    store.record_run(store.RunRecord(
        metrics=metrics, results=results, rows=prepared.job.rows, job_path=cfg.job,
        fingerprint=manifest.fingerprint, model=prepared.model.name, options=manifest.options,
        versions=manifest.versions, out_dir=cfg.out, started_at=manifest.started_at,
        finished_at=manifest.finished_at,
    ))
