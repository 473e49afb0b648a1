"""Re-planning while a vLLM run goes: the speed factor from the engine's steps (not from rows'
durations, which the scheduler decides as much as the machine), and a plan made again from the
real start when loading ends off the plan's clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from plan_builders import cluster, gpu, llama_like, query

from uellm_cli.config import RunConfig
from uellm_cli.jobs.results import BatchRecord, StepRecord
from uellm_cli.plan.costmodel import ENGINE_ROOFLINES, CostModel
from uellm_cli.plan.planner import make_plan, reschedule
from uellm_cli.plan.steptime import measured_over_modelled, step_timer
from uellm_cli.run.planning import Planned, Target
from uellm_cli.run.replan import Replanner, RiskTracker

MODEL = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
GPU = cluster([gpu(0, mem_gb=24)])
ROOF = ENGINE_ROOFLINES["vllm"]


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _replanner(start: float = 10.0, slack: float = 2.0, apart: float = 1.0) -> tuple[Replanner, Clock]:
    rows = [query(i, prompt=200, pred=100 + 20 * (i % 4), deadline=start + slack + apart * i)
            for i in range(40)]
    plan = make_plan(rows, MODEL, GPU, engine="vllm", start_offset_s=start, roofline=ROOF)
    planned = Planned(plan, {q.index: q for q in rows}, MODEL, Target(GPU, "vllm", {}))
    clock = Clock(start)
    return Replanner(RunConfig(job=Path("job.jsonl")), planned, clock,
                     RiskTracker(plan, set(planned.queries))), clock


def _steps(replanner: Replanner, slower: float, n: int = Replanner.MIN_STEPS) -> list[StepRecord]:
    """Decode steps of 32 rows over 300 tokens each, taking `slower` x the model's time."""
    timer = step_timer(CostModel(MODEL, GPU, None, ROOF), replanner.plan.deployment.replicas[0])
    return [StepRecord(0, 0.0, 32, 32 * 300.0, 32, slower * timer(0, 0.0, 32, 32 * 300.0, 32))
            for _ in range(n)]


def _record(replanner: Replanner, rows: list[int], *, late_s: float, started_s: float) -> BatchRecord:
    forecasts = [replanner.plan.forecast[i] for i in rows]
    finish = max(f.finish_s for f in forecasts)
    return BatchRecord(batch=0, replica=0, rows=rows, started_s=started_s, finished_s=finish + late_s,
                       steps=0, prompt_width=200, output_tokens=100 * len(rows),
                       forecast_start_s=min(f.start_s for f in forecasts), forecast_finish_s=finish)


def test_measured_over_modelled_is_the_ratio_of_summed_step_times():
    replanner, _ = _replanner()
    timer = step_timer(CostModel(MODEL, GPU, None, ROOF), replanner.plan.deployment.replicas[0])
    assert measured_over_modelled(_steps(replanner, 1.3), timer) == pytest.approx(1.3)
    assert measured_over_modelled([], lambda *a: 1.0) is None
    # the host's time between steps is time the job paid: it counts as the steps' own
    waited = [replace(s, seconds=s.seconds / 2, gap_s=s.seconds / 2) for s in _steps(replanner, 1.3)]
    assert measured_over_modelled(waited, timer) == pytest.approx(1.3)


def _first_rows_done(late_s: float, **deadlines) -> tuple[Replanner, Clock, BatchRecord, set[int]]:
    """A run whose first four rows to finish were just written, `late_s` after their forecast;
    they started at 0 s, long before their forecast start (as when a re-plan forecasts the rows
    running from when it is made), so their durations say nothing of the speed."""
    replanner, clock = _replanner(**deadlines)
    first = sorted(replanner.plan.forecast, key=lambda i: replanner.plan.forecast[i].finish_s)[:4]
    record = _record(replanner, first, late_s=late_s, started_s=0.0)
    clock.now = record.finished_s
    return replanner, clock, record, set(replanner.plan.forecast) - set(first)


TIGHT = {"slack": 0.5, "apart": 0.05}  # deadlines a row apart at one row at a time


def _capped(replanner: Replanner) -> None:
    """The plan as if it fed the engine one row at a time: kept, it misses most deadlines."""
    plan = replanner.plan
    replanner.plan = replace(plan, stream={0: replace(plan.stream[0], early_cap=1, early_rows=1000)})


def test_a_stream_is_rescheduled_at_the_speed_its_steps_ran():
    replanner, clock, record, pending = _first_rows_done(late_s=0.0, **TIGHT)
    _capped(replanner)
    first_plan = replanner.plan
    plan = replanner(pending, record, progress={}, steps=_steps(replanner, 1.3))
    assert plan is not None and replanner.scale == pytest.approx(1.3)
    assert set(plan.forecast) == pending
    as_calibrated = reschedule([replanner.planned.queries[i] for i in sorted(pending)], first_plan,
                               MODEL, GPU, start_s=clock.now, roofline=ROOF, progress={})

    def span(p):
        return max(f.finish_s for f in p.forecast.values()) - clock.now

    assert span(plan) == pytest.approx(1.3 * span(as_calibrated), rel=0.02)


def test_a_stream_at_the_plans_speed_is_left_alone_however_its_rows_end():
    """Rows of a stream that end off their forecast ended off their predicted lengths, which a
    revision would guess again: only the engine's speed re-plans a stream."""
    replanner, _, record, pending = _first_rows_done(late_s=0.2)
    assert replanner(pending, record, progress={}, steps=_steps(replanner, 1.05)) is None
    assert replanner(pending, record, progress={}) is None  # no steps: the factor stays
    replanner, _, late, pending = _first_rows_done(late_s=6.0, **TIGHT)
    _capped(replanner)  # a revision would meet more: it is not asked for
    assert replanner(pending, late, progress={}, steps=_steps(replanner, 1.05)) is None
    assert replanner(pending, late, progress={}) is None
    assert replanner.replans == replanner.kept == 0
    replanner(pending, late, progress={}, steps=_steps(replanner, 1.3))  # the speed moved
    assert replanner.replans + replanner.kept == 1 and replanner.scale == pytest.approx(1.3)


def test_too_few_steps_leave_the_speed_factor_where_it_is():
    """An engine's first steps run slow (warm-up, prefill-heavy): a factor from them gave up
    rows that made it."""
    replanner, _, record, pending = _first_rows_done(late_s=0.0)
    few = _steps(replanner, 1.7, n=Replanner.MIN_STEPS - 1)
    assert replanner(pending, record, progress={}, steps=few) is None and replanner.scale == 1.0


def test_a_revision_that_meets_no_more_deadlines_than_the_plan_kept_is_not_taken():
    replanner, clock, record, pending = _first_rows_done(late_s=0.0, **TIGHT)
    first_plan = replanner.plan
    assert replanner(pending, record, progress={}, steps=_steps(replanner, 1.3)) is None
    assert replanner.plan is first_plan and replanner.kept == 1 and replanner.scale == pytest.approx(1.3)
    assert "1 revision(s) not taken" in replanner.note()
    # the same revision of a plan that, kept, misses more is taken, once the pause is over
    _capped(replanner)
    replanner.scale = 1.0
    assert replanner(pending, record, progress={}, steps=_steps(replanner, 1.3)) is None
    assert replanner.kept == 1  # paused: not even planned
    replanner.quiet_until = clock.now
    assert replanner(pending, record, progress={}, steps=_steps(replanner, 1.3)) is not None
    assert replanner.quiet_s == 0.0  # a revision taken starts the pauses again


def test_revisions_not_taken_pause_re_planning_for_longer_each_time():
    """Planning stalls the engine: a run whose revisions keep meeting no more is planned
    again after 2 s, then 4, 8, ..."""
    replanner, clock, record, pending = _first_rows_done(late_s=0.0, **TIGHT)
    planned_at = []
    start = clock.now
    while clock.now < start + 30.0:
        kept = replanner.kept
        replanner(pending, record, progress={}, steps=_steps(replanner, 1.3))
        if replanner.kept > kept:
            planned_at.append(round(clock.now - start, 1))
        replanner.scale = 1.0  # so that every call would want a revision
        clock.now += 0.5
    assert planned_at == [0.0, 2.0, 6.0, 14.0]


def test_the_plan_is_made_again_from_the_real_start_when_loading_ends_off_its_clock():
    replanner, clock = _replanner(start=10.0)
    pending = set(replanner.plan.forecast)
    first = min(f.start_s for f in replanner.plan.forecast.values())
    clock.now = first + 0.5
    assert replanner.at_start(pending) is None
    clock.now = first + 6.0
    plan = replanner.at_start(pending)
    assert plan is not None and set(plan.forecast) == pending
    assert min(f.start_s for f in plan.forecast.values()) == pytest.approx(clock.now)
    assert plan.stream == replanner.planned.plan.stream  # the engine's limits are as loaded
    assert min(b.batch for b in plan.batches) > max(b.batch for b in replanner.planned.plan.batches)
    # on a long job the same few seconds are a small share of it: not worth planning again
    long_job, clock = _replanner(start=10.0)
    span = max(f.finish_s for f in long_job.plan.forecast.values()) - first
    clock.now = first + 6.0
    long_job.START_SHARE = 6.0 / span + 0.01
    assert long_job.at_start(pending) is None
