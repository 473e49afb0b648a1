"""The forecast timeline and its metrics."""

from __future__ import annotations

import random

import pytest
from plan_builders import cluster, gpu, llama_like, query

from uellm_cli.plan.replicas import make_replica
from uellm_cli.plan.scheduler import SCHEDULERS, schedule
from uellm_cli.plan.simulate import batch_shape, forecast_metrics, forecast_rows, place_in_order
from uellm_cli.plan.types import PlannedBatch, RowForecast

MODEL = llama_like()
CL = cluster([gpu(0), gpu(1, tflops=20, bw_gbs=300), gpu(2, tflops=150, bw_gbs=2000)])

def _setup():
    from uellm_cli.plan.costmodel import CostModel

    cost = CostModel(MODEL, CL)
    reps = [make_replica(i, MODEL, CL, [f"cuda:{i}"], [MODEL.num_layers]) for i in range(3)]
    return cost, reps


def test_the_next_batch_goes_to_the_replica_that_frees_first():
    cost, reps = _setup()
    rng = random.Random(0)
    qs = [query(i, prompt=rng.randint(10, 400), pred=rng.randint(5, 300)) for i in range(60)]
    groups = [qs[k:k + 4] for k in range(0, 60, 4)]
    batches = place_in_order(groups, reps, cost, start_s=5.0)
    free = {r.index: 5.0 for r in reps}
    for b, members in zip(batches, groups, strict=True):
        expected = min(free, key=lambda i: (free[i], i))
        assert b.replica == expected
        assert b.start_s == free[expected]
        n, prompt, pred, _ = batch_shape(members)
        assert b.finish_s == pytest.approx(b.start_s + cost.batch_time_s(reps[expected], n, prompt, pred))
        free[expected] = b.finish_s
    assert len({b.replica for b in batches}) == 3  # the slow replica gets work too, just less


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
def test_forecast_is_consistent_with_the_timeline(policy):
    cost, reps = _setup()
    rng = random.Random(1)
    qs = [query(i, prompt=rng.randint(10, 400), pred=rng.randint(5, 300), deadline=rng.uniform(1, 200)) for i in range(80)]
    batches = schedule(qs, reps, cost, policy=policy, start_s=2.0)
    fc = forecast_rows(batches, {q.index: q.deadline_s for q in qs})
    assert set(fc) == {q.index for q in qs}
    by_rep: dict[int, list[PlannedBatch]] = {}
    for b in batches:
        by_rep.setdefault(b.replica, []).append(b)
        for i in b.rows:
            assert (fc[i].start_s, fc[i].finish_s, fc[i].batch, fc[i].replica) == (b.start_s, b.finish_s, b.batch, b.replica)
    for rows in by_rep.values():
        rows.sort(key=lambda b: b.start_s)
        assert rows[0].start_s == 2.0
        for a, b in zip(rows, rows[1:], strict=False):
            assert b.start_s == pytest.approx(a.finish_s)  # back to back, never overlapping
    assert [b.batch for b in batches] == list(range(len(batches)))


def test_metrics_follow_the_design_definitions():
    batches = [PlannedBatch(0, 0, [0, 1], 100, 10.0, 20.0), PlannedBatch(1, 1, [2], 50, 12.0, 30.0)]
    deadlines = {0: 15.0, 1: 25.0, 2: None, 3: 5.0}
    fc = forecast_rows(batches, deadlines)
    fc[3] = RowForecast(3, -1, -1, 0.0, 40.0, 5.0)  # a skipped row: a miss
    pred = {0: 40, 1: 80, 2: 50, 3: 70}
    m = forecast_metrics(batches, fc, pred)
    assert m.makespan_s == 20.0  # first start 10 to last end 30
    assert m.slo_attainment == pytest.approx(1 / 3)  # row 1 meets; rows 0 and 3 miss; row 2 has none
    assert m.throughput_tok_s == pytest.approx((40 + 80 + 50) / 20.0)  # skipped row 3 generates nothing
    assert m.goodput_tok_s == pytest.approx((80 + 50) / 20.0)
    assert m.padding_waste == pytest.approx(1 - 170 / (2 * 80 + 1 * 50))
    assert (m.rows_with_deadline, m.rows_missed) == (3, 2)


def test_no_deadlines_means_no_attainment():
    batches = [PlannedBatch(0, 0, [0], 10, 0.0, 1.0)]
    m = forecast_metrics(batches, forecast_rows(batches, {0: None}), {0: 10})
    assert m.slo_attainment is None and m.rows_with_deadline == 0
