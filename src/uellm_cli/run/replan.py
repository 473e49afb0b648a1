"""Keeping the plan honest while it runs: the measured speed feeds the schedule of the rows
not started yet, and the rows at risk of missing their deadline are counted for the progress
bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from uellm_cli.config import RunConfig
from uellm_cli.jobs.results import BatchRecord
from uellm_cli.plan.types import Plan
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
    """After each batch it compares the batch's real duration with the cost model's (the
    median ratio of the last few batches is the speed factor); when the factor moves by more
    than 10%, or the run is off the plan's clock, the pending rows are rescheduled with it on
    the deployment already loaded. Planning time is kept under 5% of the run."""

    WINDOW = 5
    TOLERANCE = 0.10
    MAX_PLANNING_SHARE = 0.05

    def __init__(self, cfg: RunConfig, planned: Planned, clock: Callable[[], float],
                 tracker: RiskTracker):
        self.cfg, self.planned, self.plan = cfg, planned, planned.plan
        self.clock, self.tracker = clock, tracker
        self.scale = 1.0
        self.ratios: list[float] = []
        self.next_batch = max((b.batch for b in self.plan.batches), default=-1) + 1
        self.planning_s = 0.0
        self.replans = 0

    def __call__(self, pending: set[int], record: BatchRecord,
                 progress: dict[int, int] | None = None) -> Plan | None:
        """A revised plan of the `pending` rows, or None to keep going as planned. `progress`
        (stream engines): tokens each running row has generated, the state it starts from."""
        from uellm_cli.plan.planner import reschedule

        forecast_s = (record.forecast_finish_s or 0.0) - (record.forecast_start_s or 0.0)
        actual_s = record.finished_s - record.started_s
        if record.status != "ok" or forecast_s <= 0 or actual_s <= 0:
            return None
        self.ratios = (self.ratios + [actual_s * self.scale / forecast_s])[-self.WINDOW:]
        factor = sorted(self.ratios)[len(self.ratios) // 2]
        now = self.clock()
        next_start = min((b.start_s for b in self.plan.batches if any(i in pending for i in b.rows)),
                         default=now)
        off_clock = abs(now - next_start) > max(1.0, self.TOLERANCE * now)
        if abs(factor / self.scale - 1.0) <= self.TOLERANCE and not off_clock:
            return None
        if self.planning_s > self.MAX_PLANNING_SHARE * now:
            return None
        t = time.perf_counter()
        planned = self.planned
        plan = reschedule([planned.queries[i] for i in sorted(pending)], self.plan, planned.model,
                          planned.target.cluster, calibrations=planned.target.calibrations,
                          time_scale=factor, start_s=now, max_batch_size=self.cfg.max_batch_size,
                          roofline=planned.target.roofline, progress=progress)
        self.planning_s += time.perf_counter() - t
        self._renumber(plan)
        self.scale, self.plan = factor, plan
        self.tracker.plan = plan
        self.replans += 1
        return plan

    def note(self) -> str | None:
        """What the plan's notes say of the rescheduling, if any happened."""
        if not self.replans:
            return None
        return (f"rescheduled {self.replans} time(s) while running; batches ran "
                f"x{self.scale:.2f} the cost model's forecast")

    def _renumber(self, plan: Plan) -> None:
        """Batch numbers stay unique across replans (results and the Gantt chart use them)."""
        base = self.next_batch
        plan.batches = [replace(b, batch=b.batch + base) for b in plan.batches]
        plan.forecast = {i: replace(f, batch=f.batch + base) for i, f in plan.forecast.items()}
        self.next_batch = max((b.batch for b in plan.batches), default=base - 1) + 1
