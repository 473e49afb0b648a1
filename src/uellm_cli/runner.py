"""`uellm run` as one function: read -> profile -> plan -> load -> execute -> write -> report.

The run clock starts when the command starts (model loading counts). Nothing here prints:
progress goes to a `RunObserver` the command supplies.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli import __version__
from uellm_cli.config import RunConfig
from uellm_cli.engine.executor import Executor, PreparedRow
from uellm_cli.engine.results import BatchRecord, RowResult
from uellm_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from uellm_cli.jobs.schema import Job, Row, RowError
from uellm_cli.plan.types import Plan, Query

# Tokens kept free at the end of the context so generation always has room for EOS.
MIN_NEW_TOKENS = 1


class RunObserver:
    """Progress hooks; the default does nothing (library code never prints)."""

    def stage(self, message: str) -> None: ...

    def started(self, plan: Plan, rows_total: int, rows_skipped: int) -> None: ...

    def batch_done(self, results: list[RowResult], record: BatchRecord, at_risk: int) -> None: ...

    def interrupted(self, second: bool) -> None: ...


@dataclass(slots=True)
class RunOutcome:
    exit_code: int
    out_dir: Path
    metrics: object | None = None  # report.metrics.RunMetrics
    state: str = "complete"  # "complete" | "interrupted"
    rows_total: int = 0
    rows_ok: int = 0
    rows_error: int = 0
    rows_rejected: int = 0
    report_html: Path | None = None
    results_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def run_job(cfg: RunConfig, *, observer: RunObserver | None = None,
            clock_origin: float | None = None) -> RunOutcome:
    """Run a job end to end. Raises UellmError subclasses for whole-run failures."""
    from uellm_cli.jobs.readers import read_job

    obs = observer or RunObserver()
    if cfg.engine == "vllm":  # a missing extra fails before any work
        from uellm_cli.engine.vllm_engine import require_vllm

        require_vllm()
    if cfg.backend == "ray":
        from uellm_cli.ray_backend import check_reachable, require_ray

        require_ray()
        check_reachable(cfg.ray_address)  # before the out folder is touched
    t0 = clock_origin if clock_origin is not None else time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    started_at = datetime.now(timezone.utc)
    obs.stage(f"reading {cfg.job}")
    job = read_job(cfg.job, fmt=cfg.input_format, default_max_new_tokens=cfg.max_new_tokens,
                   default_slo_s=cfg.slo_s, run_started_at=started_at)

    from uellm_cli.engine.models import load_config, load_tokenizer, resolve_model

    obs.stage(f"resolving model {cfg.model}")
    resolved = resolve_model(cfg.model)
    tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.trust_remote_code)
    hf_config = load_config(resolved, trust_remote_code=cfg.trust_remote_code)

    from uellm_cli.engine.hf_engine import HFEngine
    from uellm_cli.profile.model import profile_from_config

    dtype = cfg.dtype or "float32"
    model_profile = profile_from_config(hf_config, resolved.name, dtype)
    encoder = HFEngine(tokenizer, raw_prompt=cfg.raw_prompt)
    obs.stage("tokenising prompts")
    prepared, rejected = _prepare_rows(job, encoder, model_profile.max_context)

    from uellm_cli.jobs.lock import RunLock
    from uellm_cli.jobs.manifest import Manifest, fingerprint, prepare_out_dir

    options = cfg.output_options() | {
        "model_revision": resolved.revision,
        "chat_template": _template_hash(tokenizer, cfg.raw_prompt),
    }
    fp = fingerprint(job.file_sha256, options)
    stop = threading.Event()  # set by SIGINT/SIGTERM: no new batch starts
    with _interrupt_guard(stop), RunLock(cfg.out) as lock, contextlib.ExitStack() as backend:
        if lock.took_over_stale:
            obs.stage(f"took over a stale lock in {cfg.out} (its process is gone)")
        state = prepare_out_dir(cfg.out, fp, resume=cfg.resume, force=cfg.force,
                                retry_errors=cfg.retry_errors, file_sha256=job.file_sha256,
                                options=options)
        manifest = state.previous or Manifest(
            fingerprint=fp,
            input={"path": str(cfg.job), "sha256": job.file_sha256, "format": job.fmt,
                   "rows": job.n_input},
            model={"id": resolved.name, "path": str(resolved.path), "source": resolved.source,
                   "revision": resolved.revision},
            options=options, versions=_versions(), rows_total=job.n_input,
        )
        manifest.versions = _versions()
        manifest.start_attempt()
        manifest.set_counts(state.done)
        try:  # from the first save on: a signal arriving right after it must still be recorded
            manifest.save(cfg.out)
            ray_backend = None
            if cfg.backend == "ray":
                from uellm_cli.ray_backend.driver import RayBackend

                obs.stage(f"connecting to Ray{f' at {cfg.ray_address}' if cfg.ray_address else ''}")
                ray_backend = backend.enter_context(RayBackend(cfg.ray_address))
            return _run_locked(cfg, job, resolved, model_profile, encoder, prepared, rejected,
                               state, manifest, obs, clock, stop, ray_backend)
        except BaseException as exc:
            if manifest.state == "running":
                manifest.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            # Save also when the state was already set: the exception (a second Ctrl-C) may
            # have cut short the save that should have written it. Counts come from the log,
            # which may hold a batch the manifest had not counted yet.
            with contextlib.suppress(OSError):
                from uellm_cli.jobs.writers import read_log

                manifest.set_counts(read_log(cfg.out).records)
                manifest.save(cfg.out)
            raise


def _run_locked(cfg, job, resolved, model_profile, encoder, prepared, rejected, state,
                manifest, obs, clock, stop: threading.Event, ray_backend=None) -> RunOutcome:
    from uellm_cli.jobs.writers import ResultLog

    if cfg.backend == "local" and cfg.engine == "hf":
        # One thread count for the whole run: the plan's calibration, the loaded model and the
        # run calibration must agree, and the default follows the moving load average.
        from uellm_cli.engine.models import choose_cpu_threads

        cfg = replace(cfg, threads=choose_cpu_threads(cfg.threads))
    todo = {i: p for i, p in prepared.items() if i not in state.skip}
    queries = _profile_queries(cfg, resolved.name, todo)  # index -> Query
    for i, q in queries.items():
        todo[i].predicted_tokens = q.predicted_tokens

    obs.stage("planning")
    ray_cluster = None
    if ray_backend is not None:
        from uellm_cli.profile.hardware import detect_cpu

        ray_cluster = ray_backend.cluster(detect_cpu(), replicas=cfg.replicas)
    plan, cluster, calibrations = _make_plan(cfg, model_profile, list(queries.values()), clock(),
                                             ray_cluster)
    if ray_cluster is not None:
        plan.notes[:0] = ray_cluster.cluster.notes
    skipped_rows = _apply_on_miss(cfg, plan, todo)

    if stop.is_set():  # an interrupt swallowed by a finalizer: do not load the model for nothing
        raise KeyboardInterrupt
    obs.stage(f"loading {resolved.name}")
    load_start = clock()
    engines: dict = {}
    if ray_backend is not None:  # one actor per replica, each loading on its node
        ray_backend.start(_worker_spec_for(cfg, resolved), plan, ray_cluster)
    elif cfg.engine == "vllm":  # one vLLM instance per replica (CPU replicas share one)
        from uellm_cli.engine.vllm_engine import load_deployment

        engines = load_deployment(cfg, resolved, encoder, plan, rows=todo,
                                  model_profile=model_profile)
    else:
        engines = _load_engines(cfg, resolved, encoder, plan)
    model_load_s = clock() - load_start

    executor = Executor(engines, clock=clock, stop=stop, fail_fast=cfg.fail_fast)
    batches: list[BatchRecord] = []
    new_results: list[RowResult] = []
    done: dict[int, dict] = dict(state.done)
    log = ResultLog(cfg.out)
    tracker = _RiskTracker(plan, set(todo))
    replanner = _Replanner(cfg, plan, queries, model_profile, cluster, calibrations, clock, tracker)

    def on_batch(results: list[RowResult], record: BatchRecord) -> None:
        log.append(results)
        batches.append(record)
        new_results.extend(results)
        for r in results:
            done[r.index] = r.to_record() | {"index": r.index}
        manifest.set_counts(done)
        manifest.save(cfg.out)
        obs.batch_done(results, record, tracker.update(record, clock()))

    from uellm_cli.report.sampler import UtilisationSampler

    obs.started(plan, job.n_input, len(state.skip))
    sampler = UtilisationSampler(interval_s=cfg.sample_interval_s, clock=clock)
    with _signals(stop, obs), sampler, log:
        if ray_backend is not None:  # replicas pull batches in plan order
            ray_backend.run(plan, todo, on_batch, clock=clock, stop=stop, fail_fast=cfg.fail_fast)
        elif cfg.engine == "vllm":  # continuous batching: rows queued in the plan's order
            executor.run_stream(plan, todo, on_batch, replan=replanner)
        else:
            executor.run(plan, todo, on_batch, replan=replanner)
    interrupted = stop.is_set() and any(i not in done for i in todo)
    if ray_backend is not None:
        plan.notes.extend(ray_backend.notes)
    if replanner.replans:
        plan.notes.append(f"rescheduled {replanner.replans} time(s) while running; batches ran "
                          f"x{replanner.scale:.2f} the cost model's forecast")

    records = _final_records(job, rejected, done, skipped_rows)
    outcome = RunOutcome(exit_code=EXIT_OK, out_dir=cfg.out, rows_total=job.n_input)
    _count(outcome, records)
    if interrupted:
        manifest.finish("interrupted")
        manifest.save(cfg.out)
        outcome.state = "interrupted"
        outcome.exit_code = EXIT_INTERRUPTED
        return outcome

    from uellm_cli.jobs.writers import write_errors, write_results

    outcome.results_path = write_results(
        cfg.out, records, fmt=cfg.output_format, passthrough_columns=job.passthrough_columns,
        model_name=resolved.name,
    )
    write_errors(cfg.out, _error_records(job, records))
    outcome.metrics, outcome.report_html = _report(
        cfg, plan, queries, _as_results(records), batches, model_load_s, sampler.samples(),
        manifest,
    )
    manifest.set_counts({r["index"]: r for r in records})
    manifest.finish("complete")
    manifest.save(cfg.out)
    _learn_costs(cfg, plan, cluster, model_profile, batches)
    if cfg.record_history:
        _record_history(cfg, job, resolved, manifest, outcome, records)
    missed = any(r.get("slo_met") is False for r in records)
    if outcome.rows_error or outcome.rows_rejected or missed:
        outcome.exit_code = EXIT_PARTIAL
    return outcome


def _prepare_rows(job: Job, encoder, max_context: int) -> tuple[dict[int, PreparedRow], list[RowError]]:
    """Tokenise every valid row; reject prompts that do not fit the context, cap the budget."""
    prepared: dict[int, PreparedRow] = {}
    rejected: list[RowError] = []
    for row in job.rows:
        try:
            ids = encoder.encode(row)
        except Exception as exc:  # noqa: BLE001 - a template or tokenizer failure is the row's
            rejected.append(RowError(str(job.path), row.line, row.id, "messages" if row.messages
                                     else "prompt", "tokenize_failed", f"could not tokenise: {exc}"[:300],
                                     row.index))
            continue
        room = max_context - len(ids)
        if room < MIN_NEW_TOKENS:
            rejected.append(RowError(
                str(job.path), row.line, row.id, "messages" if row.messages else "prompt",
                "prompt_too_long",
                f"prompt is {len(ids)} tokens; the model's context is {max_context}", row.index,
            ))
            continue
        if row.max_new_tokens > room:
            row.warnings.append(
                f"max_new_tokens capped from {row.max_new_tokens} to {room} to fit the "
                f"{max_context}-token context"
            )
            row.max_new_tokens = room
        prepared[row.index] = PreparedRow(row=row, prompt_ids=ids, predicted_tokens=row.max_new_tokens)
    return prepared, rejected


def _profile_queries(cfg: RunConfig, model_name: str, todo: dict[int, PreparedRow]) -> dict[int, Query]:
    from uellm_cli.profile.lengths import LengthQuery, get_predictor

    predictor = get_predictor(cfg.predictor, model_name=model_name)
    items = list(todo.values())
    preds = predictor.predict([
        LengthQuery(text=_row_text(p.row), prompt_tokens=len(p.prompt_ids),
                    max_new_tokens=p.row.max_new_tokens)
        for p in items
    ])
    return {
        p.row.index: Query(
            index=p.row.index, id=p.row.id, prompt_tokens=len(p.prompt_ids),
            max_new_tokens=p.row.max_new_tokens, predicted_tokens=pred.tokens,
            predicted_upper=pred.upper, deadline_s=p.row.deadline_s, priority=p.row.priority,
            group=p.row.sampling.key(),
        )
        for p, pred in zip(items, preds, strict=False)
    }


def _row_text(row: Row) -> str:
    if row.prompt is not None:
        return row.prompt
    return "\n".join(str(m.get("content", "")) for m in row.messages or [])


def _make_plan(cfg: RunConfig, model_profile, queries: list[Query], now_s: float, ray_cluster=None):
    """The plan, and the cluster and calibrations it was made with (replanning reuses them).
    The cluster is Ray's when `ray_cluster` is given, else `--cluster` or this machine."""
    from uellm_cli.plan.planner import make_plan
    from uellm_cli.profile.calibrate import load_calibrations
    from uellm_cli.profile.hardware import resolve_cluster

    calibrations = load_calibrations(cfg.engine, model=model_profile.name)
    if ray_cluster is not None:
        cluster = ray_cluster.cluster
        calibrations = ray_cluster.with_slot_calibrations(calibrations)
    else:
        cluster = resolve_cluster(cfg.cluster)
        calibrations = _for_run_threads(cfg, cluster, calibrations)
    plan = make_plan(
        queries, model_profile, cluster, policy=cfg.policy, calibrations=calibrations,
        start_offset_s=now_s + expected_startup_s(model_profile, cfg.engine, cfg.backend),
        max_batch_size=cfg.max_batch_size, on_miss=cfg.on_miss, replicas=cfg.replicas,
    )
    return plan, cluster, calibrations


def _for_run_threads(cfg: RunConfig, cluster, calibrations: dict) -> dict:
    """A CPU calibration measured with more threads than this run will use is slowed to match
    (a run on a busy machine takes fewer threads: engine.models.choose_cpu_threads)."""
    from uellm_cli.engine.models import choose_cpu_threads

    threads = choose_cpu_threads(cfg.threads)
    out = dict(calibrations)
    for dev in cluster.devices:
        if dev.kind == "cpu" and dev.name in out:
            out[dev.name] = out[dev.name].for_threads(threads)
    return out


def expected_startup_s(model_profile, engine: str = "hf", backend: str = "local") -> float:
    """Seconds before the first batch can start (`uellm run` and `uellm plan` forecast with it):
    loading safetensors at roughly disk/memory speed (~1 GB/s is a fair CPU guess), plus what
    comes on top: a Ray actor starts a process that imports torch; vLLM starts an engine
    (import, KV allocation)."""
    load = 0.5 + model_profile.weight_bytes / 1e9
    if backend == "ray":
        from uellm_cli.ray_backend import EXPECTED_ACTOR_START_S

        return load + EXPECTED_ACTOR_START_S
    if engine == "vllm":
        from uellm_cli.engine.vllm_settings import EXPECTED_START_S

        return load + EXPECTED_START_S
    return load


def _apply_on_miss(cfg: RunConfig, plan: Plan, todo: dict[int, PreparedRow]) -> dict[int, RowResult]:
    """With --on-miss skip, rows forecast to miss are not run; they get status error/skipped."""
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


def _load_engines(cfg: RunConfig, resolved, encoder, plan: Plan) -> dict:
    """One model copy per replica, placed by the replica's device_map."""
    from uellm_cli.engine.hf_engine import HFEngine
    from uellm_cli.engine.models import load_model

    engines = {}
    for replica in plan.deployment.replicas:
        device_map = replica.device_map
        if set(device_map.values()) <= {"cpu"}:
            device_map = None  # a one-device CPU map is the plain load
        model = load_model(resolved, device_map=device_map, dtype=cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code, threads=cfg.threads)
        engines[replica.index] = HFEngine(encoder.tokenizer, model, raw_prompt=cfg.raw_prompt)
    return engines


def _worker_spec_for(cfg: RunConfig, resolved):
    """What each Ray actor loads: this run's model and options, its replica's device map."""
    from uellm_cli.ray_backend.worker import WorkerSpec

    def spec(replica, placement) -> WorkerSpec:
        return WorkerSpec(replica=replica.index, model=cfg.model, resolved=resolved,
                          device_map=placement.device_map, dtype=cfg.dtype,
                          trust_remote_code=cfg.trust_remote_code, raw_prompt=cfg.raw_prompt,
                          threads=cfg.threads or placement.threads, fail_fast=cfg.fail_fast)

    return spec


class _Replanner:
    """Keeps the schedule honest while it runs. After each batch it compares the batch's real
    duration with the cost model's (the median ratio of the last few batches is the speed
    factor); when the factor moves by more than 10%, or the run is off the plan's clock, the
    pending rows are rescheduled with it. Planning time is kept under 5% of the run."""

    WINDOW = 5
    TOLERANCE = 0.10
    MAX_PLANNING_SHARE = 0.05

    def __init__(self, cfg, plan: Plan, queries: dict[int, Query], model_profile, cluster,
                 calibrations, clock, tracker: _RiskTracker):
        self.cfg, self.plan, self.queries = cfg, plan, queries
        self.model_profile, self.cluster, self.calibrations = model_profile, cluster, calibrations
        self.clock, self.tracker = clock, tracker
        self.scale = 1.0
        self.ratios: list[float] = []
        self.next_batch = max((b.batch for b in plan.batches), default=-1) + 1
        self.planning_s = 0.0
        self.replans = 0

    def __call__(self, pending: set[int], record: BatchRecord) -> Plan | None:
        from uellm_cli.plan.planner import reschedule

        forecast = (record.forecast_finish_s or 0.0) - (record.forecast_start_s or 0.0)
        actual = record.finished_s - record.started_s
        if record.status != "ok" or forecast <= 0 or actual <= 0:
            return None
        self.ratios = (self.ratios + [actual * self.scale / forecast])[-self.WINDOW:]
        factor = sorted(self.ratios)[len(self.ratios) // 2]
        now = self.clock()
        nxt = min((b.start_s for b in self.plan.batches if any(i in pending for i in b.rows)),
                  default=now)
        off_clock = abs(now - nxt) > max(1.0, self.TOLERANCE * now)
        if abs(factor / self.scale - 1.0) <= self.TOLERANCE and not off_clock:
            return None
        if self.planning_s > self.MAX_PLANNING_SHARE * now:
            return None
        t = time.perf_counter()
        plan = reschedule([self.queries[i] for i in sorted(pending)], self.plan,
                          self.model_profile, self.cluster, calibrations=self.calibrations,
                          time_scale=factor, start_s=now, max_batch_size=self.cfg.max_batch_size)
        self.planning_s += time.perf_counter() - t
        self._renumber(plan)
        self.scale, self.plan = factor, plan
        self.tracker.plan = plan
        self.replans += 1
        return plan

    def _renumber(self, plan: Plan) -> None:
        """Batch numbers stay unique across replans (results and the Gantt chart use them)."""
        base = self.next_batch
        plan.batches = [replace(b, batch=b.batch + base) for b in plan.batches]
        plan.forecast = {i: replace(f, batch=f.batch + base) for i, f in plan.forecast.items()}
        self.next_batch = max((b.batch for b in plan.batches), default=base - 1) + 1


class _RiskTracker:
    """Rows at risk: not done yet, and their forecast finish, shifted by how late the run is
    against the plan so far, is past their deadline."""

    def __init__(self, plan: Plan, pending: set[int]):
        self.plan = plan
        self.pending = set(pending)
        self.drift = 0.0

    def update(self, record: BatchRecord, now: float) -> int:
        self.pending.difference_update(record.rows)
        if record.forecast_finish_s is not None:
            self.drift = record.finished_s - record.forecast_finish_s
        n = 0
        for i in self.pending:
            fc = self.plan.forecast.get(i)
            if fc is not None and fc.deadline_s is not None and fc.finish_s + self.drift > fc.deadline_s:
                n += 1
        return n


def _final_records(job: Job, rejected: list[RowError], done: dict[int, dict],
                   skipped: dict[int, RowResult]) -> list[dict]:
    """One record per input row, in input order: logged results, then rejections."""
    by_index: dict[int, dict] = dict(done)
    for r in skipped.values():
        by_index[r.index] = r.to_record() | {"index": r.index}
    for e in list(job.errors) + rejected:
        if e.index is None:
            continue
        by_index[e.index] = RowResult(
            index=e.index, id=e.id if e.id is not None else "", status="rejected",
            error_code=e.code, error_message=e.reason,
        ).to_record() | {"index": e.index, "_file": e.file, "_line": e.line, "_field": e.field}
    return [by_index[i] for i in sorted(by_index)]


def _error_records(job: Job, records: list[dict]) -> list[dict]:
    lines = {r.index: r.line for r in job.rows}
    out = []
    for r in records:
        if r["status"] == "ok":
            continue
        out.append({
            "file": r.get("_file", str(job.path)),
            "line": r.get("_line", lines.get(r["index"])),
            "id": r.get("id"),
            "field": r.get("_field"),
            "code": r.get("error_code"),
            "reason": r.get("error_message"),
            "status": r["status"],
        })
    return out


def _count(outcome: RunOutcome, records: list[dict]) -> None:
    for r in records:
        if r["status"] == "ok":
            outcome.rows_ok += 1
        elif r["status"] == "rejected":
            outcome.rows_rejected += 1
        else:
            outcome.rows_error += 1


def _report(cfg, plan, queries, results, batches, model_load_s, samples, manifest):
    """Metrics over every input row (this attempt's, resumed and rejected), forecast beside."""
    from uellm_cli.plan.planner import plan_to_dict
    from uellm_cli.report.metrics import forecast_summary, summarize
    from uellm_cli.report.render import write_report_html, write_report_json

    forecast = forecast_summary(plan, {i: q.predicted_tokens for i, q in queries.items()})
    metrics = summarize(results, batches, model_load_s=model_load_s, forecast=forecast,
                        utilisation=samples)
    common = dict(plan_dict=plan_to_dict(plan), options=manifest.options,
                  versions=manifest.versions, results=results, batches=batches,
                  utilisation=samples, title=f"uellm run {cfg.job.stem}")
    write_report_json(cfg.out, metrics, **common)
    html = write_report_html(cfg.out, metrics, **common)
    return metrics, html


def _learn_costs(cfg, plan: Plan, cluster, model_profile, batches: list[BatchRecord]) -> None:
    """Refit the cost model from this run's static batches (one-device replicas only), so the
    next forecast for this model and device comes from what the engine really did."""
    from uellm_cli.profile.run_calibration import record_batches

    replicas = plan.deployment.replicas
    if cfg.engine != "hf" or cfg.backend != "local" or len(replicas) != 1 or len(replicas[0].stages) != 1:
        return
    try:
        device = cluster.device(replicas[0].stages[0].device)
    except KeyError:
        return
    from uellm_cli.engine.models import choose_cpu_threads

    threads = choose_cpu_threads(cfg.threads) if device.kind == "cpu" else None
    with contextlib.suppress(OSError):  # an optimisation: a read-only home must not fail the run
        record_batches(batches, engine="hf", device_name=device.name, model=model_profile.name,
                       threads=threads)


def _as_results(records: list[dict]) -> list[RowResult]:
    """Final per-row records back into RowResults (passthrough columns left aside)."""
    names = set(RowResult.__slots__) - {"passthrough", "warnings"}
    return [RowResult(**{k: v for k, v in r.items() if k in names}) for r in records]


def _record_history(cfg, job, resolved, manifest, outcome, records) -> None:
    from uellm_cli import store

    store.record_run(out_dir=cfg.out, job_path=cfg.job, fingerprint=manifest.fingerprint,
                     model=resolved.name, options=manifest.options, versions=manifest.versions,
                     metrics=outcome.metrics, records=records, prompts=_prompts(job), rows=job.rows,
                     started_at=manifest.started_at, finished_at=manifest.finished_at)


def _prompts(job: Job) -> dict[int, str]:
    return {r.index: _row_text(r) for r in job.rows}


def _template_hash(tokenizer, raw_prompt: bool) -> str | None:
    import hashlib

    tpl = getattr(tokenizer, "chat_template", None)
    if raw_prompt or not tpl:
        return None
    return hashlib.sha256(str(tpl).encode()).hexdigest()[:16]


def _versions() -> dict:
    import importlib.metadata as md

    out = {"uellm": __version__}
    for pkg in ("torch", "transformers", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


@contextmanager
def _interrupt_guard(stop: threading.Event):
    """While the lock is held, SIGINT and SIGTERM stop the run as Ctrl-C does (before batches
    start, e.g. while loading): KeyboardInterrupt, so the manifest says interrupted, the lock
    is removed and the exit status is 130. (SIGTERM's default would kill the process with the
    manifest still "running".) The stop flag is set too: Python swallows a KeyboardInterrupt
    raised inside a finalizer (__del__, e.g. during an import), and the flag then still stops
    the run before its next batch; such a swallowed interrupt is not printed as a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def handler(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    def unraisable(args) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt):
            return  # recorded in `stop`
        previous_hook(args)

    for s in previous:
        signal.signal(s, handler)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _signals(stop: threading.Event, obs: RunObserver):
    """First SIGINT/SIGTERM: finish the current batch, write, exit 130. Second: stop at once
    (what is on disk stays valid: the log is append-only and fsynced per batch)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if stop.is_set():
            obs.interrupted(second=True)
            raise KeyboardInterrupt
        stop.set()
        obs.interrupted(second=False)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


ClockFn = Callable[[], float]
