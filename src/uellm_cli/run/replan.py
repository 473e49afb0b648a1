"""Keeping the plan honest while it runs: the measured speed feeds the schedule of the rows
not started yet, and the rows at risk of missing their deadline are counted for the progress
bar."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from uellm_cli.config import RunConfig
from uellm_cli.jobs.results import BatchRecord, StepRecord
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.steptime import StepTimer, measured_over_modelled, step_timer
from uellm_cli.plan.types import Plan, PlannedBatch, Query
from uellm_cli.run.planning import Planned


class RiskTracker:
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
        at_risk = 0
        for i in self.pending:
            fc = self.plan.forecast.get(i)
            if fc is not None and fc.deadline_s is not None and fc.finish_s + self.drift > fc.deadline_s:
                at_risk += 1
        return at_risk


class Replanner:
    """After each batch (a stream engine: each group of rows written) it measures the speed
    against the cost model (the speed factor, see `_factor`); when the factor moves by more
    than 10%, or static batches run off the plan's clock, the pending rows are rescheduled with
    it on the deployment already loaded. Planning time is kept under 5% of the run.

    A stream is not revised for being off the clock: its rows end off their forecast by their
    lengths' errors, and a revision decides again on the same predicted lengths. On the
    1,000-row impossible job (2-core Xeon) such revisions met 57-60% of the deadlines at
    273-280 tok/s; without them, 62-66% at 281-295 (docs/planner.md, "While the job runs")."""

    WINDOW = 5  # batches whose median actual / forecast is the factor (static batches)
    STEP_WINDOW = 256  # engine steps the factor is measured over (a stream engine)
    # ... once it has run this many: the first steps run slow (x1.6 the step model over the
    # first 4 on a 2-core CPU, x1.1-1.3 the next 30), and a re-plan at x1.7 after 7 steps gave
    # up rows that could make it (alpaca-200 at 0.3 of its deadlines: that run met 45.5%)
    MIN_STEPS = 64
    TOLERANCE = 0.10
    START_TOLERANCE_S = 1.0
    START_SHARE = 0.02
    MAX_PLANNING_SHARE = 0.05
    # After a revision not taken, no re-plan for this long, doubled with each one in a row: on
    # a 1,000-row job 43 of 47 revisions were not taken, and their planning stalled the engine
    # for 10 s of its 236 (the steps' gaps); a revision taken starts the count again.
    QUIET_S = 2.0

    def __init__(self, cfg: RunConfig, planned: Planned, clock: Callable[[], float],
                 tracker: RiskTracker):
        self.cfg, self.planned, self.plan = cfg, planned, planned.plan
        self.clock, self.tracker = clock, tracker
        self.scale = 1.0
        self.ratios: list[float] = []
        self.next_batch = max((b.batch for b in self.plan.batches), default=-1) + 1
        self.planning_s = 0.0
        self.replans = 0
        self.kept = 0  # revisions not taken: they met no more deadlines than the plan kept
        self.quiet_s = 0.0  # the pause after the latest revision not taken (QUIET_S)
        self.quiet_until = 0.0
        # the plans the run followed, with when each was taken: the report's replay runs each
        # row under the limits it started under (stream_forecast.followed_caps)
        self.followed: list[tuple[float, Plan]] = [(-math.inf, self.plan)]

    def at_start(self, pending: set[int]) -> Plan | None:
        """The plan of `pending` again from the real start, when loading ended off the plan's
        clock by more than START_TOLERANCE_S or START_SHARE of the plan's span, whichever is
        more (start-up is a forecast too: on one job the first row was planned at 19.5 s and
        started at 25.0 s, which decides deadlines of 45-125 s; on a job of hours a few seconds
        are not worth planning 100,000 rows again); None when it ended on time."""
        now = self.clock()
        mine = self._batches_of(pending)
        if not mine:
            return None
        first = min(b.start_s for b in mine)
        span = max(b.finish_s for b in mine) - first
        if abs(now - first) <= max(self.START_TOLERANCE_S, self.START_SHARE * span):
            return None
        return self._reschedule(pending, self.scale, now, None)

    def __call__(self, pending: set[int], record: BatchRecord,
                 progress: dict[int, int] | None = None,
                 steps: Sequence[StepRecord] | None = None) -> Plan | None:
        """A revised plan of the `pending` rows, or None to keep going as planned. Stream
        engines: `progress` = tokens each running row has generated, the state it starts
        from; `steps` = the engine steps run so far, where the engine can tell them."""
        now = self.clock()
        if record.status != "ok" or now < self.quiet_until:
            return None
        factor = self._factor(record, steps)
        if factor is None:
            return None
        off_clock = False  # a stream: only its speed (class docstring)
        if not self.plan.stream:  # the next batch to start against its forecast start
            late_s = now - min((b.start_s for b in self._batches_of(pending)), default=now)
            off_clock = abs(late_s) > max(1.0, self.TOLERANCE * now)
        if abs(factor / self.scale - 1.0) <= self.TOLERANCE and not off_clock:
            return None
        if self.planning_s > self.MAX_PLANNING_SHARE * now:
            return None
        return self._reschedule(pending, factor, now, progress, judged=True)

    def _batches_of(self, pending: set[int]) -> list[PlannedBatch]:
        """The plan's batches that hold a row still to run."""
        return [b for b in self.plan.batches if any(i in pending for i in b.rows)]

    def _factor(self, record: BatchRecord, steps: Sequence[StepRecord] | None) -> float | None:
        """Actual / cost model. A stream engine that records its steps: their measured time
        against the step-time model's for what they held (measured_over_modelled). Not its
        rows' durations: those are the scheduler's as much as the machine's (a row running
        when a re-plan was made is forecast from then), and their ratios ran 0.2-127 on one
        job, which scaled a re-plan x4.8 and set rows aside that could make it. A stream
        engine without steps keeps the factor it has. Static batches: the median actual /
        forecast of the last WINDOW batches."""
        if steps and len(steps) < self.MIN_STEPS:
            return self.scale
        if steps:
            return measured_over_modelled(steps[-self.STEP_WINDOW:], self._timer(record.replica))
        if self.plan.stream:
            return self.scale
        forecast_s = (record.forecast_finish_s or 0.0) - (record.forecast_start_s or 0.0)
        actual_s = record.finished_s - record.started_s
        if forecast_s <= 0 or actual_s <= 0:
            return None
        self.ratios = (self.ratios + [actual_s * self.scale / forecast_s])[-self.WINDOW:]
        return sorted(self.ratios)[len(self.ratios) // 2]

    def _timer(self, replica: int) -> StepTimer:
        """The step-time model of `replica` as calibrated (time scale 1)."""
        target = self.planned.target
        cost = CostModel(self.planned.model, target.cluster, target.calibrations, target.roofline)
        replicas = self.plan.deployment.replicas
        return step_timer(cost, next((r for r in replicas if r.index == replica), replicas[0]))

    def _reschedule(self, pending: set[int], factor: float, now: float,
                    progress: dict[int, int] | None, *, judged: bool = False) -> Plan | None:
        """The revised plan; `judged` (a stream plan revised while it runs): None when it meets
        no more deadlines than the current one kept (plan/stream_forecast.still_met). The plan
        made again at the real start is taken as it is: it is the first plan, made knowing when
        the engine starts."""
        from uellm_cli.plan.planner import reschedule

        t = time.perf_counter()
        planned = self.planned
        queries = [planned.queries[i] for i in sorted(pending)]
        plan = reschedule(queries, self.plan, planned.model,
                          planned.target.cluster, calibrations=planned.target.calibrations,
                          time_scale=factor, start_s=now, max_batch_size=self.cfg.max_batch_size,
                          roofline=planned.target.roofline, progress=progress)
        worse = judged and self.plan.stream and not self._better(plan, queries, factor, now, progress or {})
        self.planning_s += time.perf_counter() - t
        if worse:
            self.scale = factor
            self.kept += 1
            self.quiet_s = max(self.QUIET_S, 2.0 * self.quiet_s)
            self.quiet_until = self.clock() + self.quiet_s
            return None
        self.quiet_s = 0.0
        self._renumber(plan)
        self.scale, self.plan = factor, plan
        self.followed.append((now, plan))
        self.tracker.plan = plan
        self.replans += 1
        return plan

    def _better(self, revised: Plan, queries: list[Query], factor: float, now: float,
                progress: dict[int, int]) -> bool:
        """Does `revised` meet more deadlines than the current plan kept, timed alike?"""
        from uellm_cli.plan.stream_forecast import still_met

        target = self.planned.target
        cost = CostModel(self.planned.model, target.cluster, target.calibrations, target.roofline,
                         time_scale=factor)
        kept = still_met(self.plan.batches, self.plan.stream, {q.index: q for q in queries},
                         self.plan.deployment.replicas, cost, start_s=now, progress=progress)
        return sum(1 for f in revised.forecast.values() if f.slo_met) > kept

    def note(self) -> str | None:
        """What the plan's notes say of the rescheduling, if any happened."""
        if not self.replans and not self.kept:
            return None
        kept = (f" ({self.kept} revision(s) not taken: they met no more deadlines than the plan "
                "kept)") if self.kept else ""
        return (f"rescheduled {self.replans} time(s) while running{kept}; batches ran "
                f"x{self.scale:.2f} the cost model's forecast")

    def _renumber(self, plan: Plan) -> None:
        """Batch numbers stay unique across replans (results and the Gantt chart use them)."""
        base = self.next_batch
        plan.batches = [replace(b, batch=b.batch + base) for b in plan.batches]
        plan.forecast = {i: replace(f, batch=f.batch + base) for i, f in plan.forecast.items()}
        self.next_batch = max((b.batch for b in plan.batches), default=base - 1) + 1
