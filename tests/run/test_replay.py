"""The report's replay of a continuous-batching forecast with the true output lengths: on the
plan's step-time model, and on one fitted to the run's own engine steps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from plan_builders import llama_like, query

from uellm_cli.jobs.results import RowResult, StepRecord
from uellm_cli.plan.continuous import SimRequest, simulate
from uellm_cli.plan.planner import make_plan
from uellm_cli.plan.stream_forecast import plan_order
from uellm_cli.profile.hardware import parse_cluster_spec
from uellm_cli.run.finish import replay_error
from uellm_cli.run.planning import Planned, Target

T0 = 5.0  # the first row's real start on the run clock


def _machine(steps: list[StepRecord]):
    """The machine that "ran" the job: a linear step time unlike the plan's roofline, each
    step recorded as the vLLM engine records it."""
    def step(prefill, attention, decode_rows, context, sampled) -> float:
        seconds = 0.05 + 0.004 * decode_rows + 2e-6 * context + 3e-4 * prefill + 1e-9 * attention
        steps.append(StepRecord(prefill, attention, decode_rows, context, sampled, seconds))
        return seconds
    return step


def _ran_job():
    model = llama_like(layers=4, hidden=512, heads=8, kv_heads=8, inter=1376)
    cpu = parse_cluster_spec("cpu")
    rows = [query(i, prompt=300 + 110 * (i % 7), pred=20 + 9 * (i % 9)) for i in range(60)]
    plan = make_plan(rows, model, cpu, engine="vllm")
    planned = Planned(plan, {q.index: q for q in rows}, model, Target(cpu, "vllm", {}))
    steps: list[StepRecord] = []
    order = plan_order(plan.batches)
    by_index = {q.index: q for q in rows}
    sim = simulate([SimRequest(i, by_index[i].prompt_tokens, by_index[i].predicted_tokens, rank)
                    for rank, i in enumerate(order)], plan.stream[0], _machine(steps), start_s=T0)
    results = [RowResult(i, f"r{i}", "ok", output_tokens=by_index[i].predicted_tokens, replica=0,
                         started_s=sim.start_s[i], finished_s=sim.finish_s[i]) for i in order]
    return planned, results, steps


def test_the_replay_on_the_runs_own_steps_leaves_the_machine_out():
    planned, results, steps = _ran_job()
    out = replay_error(planned, results, steps)
    assert out["rows"] == 60
    assert abs(out["makespan_error"]) > 0.05  # the plan's roofline is not this machine
    own = out["own_steps"]
    assert own["rows"] == 60
    assert own["makespan_error"] == pytest.approx(0.0, abs=0.01)
    assert own["row_finish_error_median"] < 0.01


def test_without_steps_there_is_no_own_step_replay():
    planned, results, _ = _ran_job()
    out = replay_error(planned, results)
    assert "own_steps" not in out and out["row_finish_error_median"] is not None
    assert replay_error(planned, [RowResult(0, "r0", "error")]) is None  # nothing ran


def test_each_row_is_replayed_under_the_cap_of_the_plan_it_started_under():
    """A revision taken while the job ran held the rows left to 3 at once, where the first
    plan let them all in: the replay on the run's own step times must follow it (off by
    the revision's whole effect if it kept the first plan's limits)."""
    model = llama_like(layers=4, hidden=512, heads=8, kv_heads=8, inter=1376)
    cpu = parse_cluster_spec("cpu")
    rows = [query(i, prompt=300 + 110 * (i % 7), pred=20 + 9 * (i % 9)) for i in range(60)]
    by_index = {q.index: q for q in rows}
    first = make_plan(rows, model, cpu, engine="vllm")
    first.stream = {0: replace(first.stream[0], early_cap=None, early_rows=0)}
    ran_first = plan_order(first.batches)[:20]
    left = [q for q in rows if q.index not in ran_first]
    revised = make_plan(left, model, cpu, engine="vllm")
    revised.stream = {0: replace(revised.stream[0], early_cap=3, early_rows=len(left))}
    order = ran_first + plan_order(revised.batches)
    caps = {i: (first.stream[0].max_num_seqs if k < 20 else 3) for k, i in enumerate(order)}
    steps: list[StepRecord] = []
    sim = simulate([SimRequest(i, by_index[i].prompt_tokens, by_index[i].predicted_tokens, rank)
                    for rank, i in enumerate(order)], first.stream[0], _machine(steps),
                   start_s=T0, caps=caps)
    taken_s = max(sim.start_s[i] for i in ran_first)
    assert min(sim.start_s[i] for i in order[20:]) > taken_s  # the revision came between them
    results = [RowResult(i, f"r{i}", "ok", output_tokens=by_index[i].predicted_tokens, replica=0,
                         started_s=sim.start_s[i], finished_s=sim.finish_s[i]) for i in order]
    planned = Planned(first, by_index, model, Target(cpu, "vllm", {}))

    followed = replay_error(planned, results, steps, [(-math.inf, first), (taken_s, revised)])
    assert followed["own_steps"]["makespan_error"] == pytest.approx(0.0, abs=0.01)
    assert followed["own_steps"]["row_finish_error_median"] < 0.01
    first_only = replay_error(planned, results, steps)
    assert first_only["own_steps"]["makespan_error"] < -0.05  # all at once: sooner than it ran
