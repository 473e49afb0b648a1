"""Every metric on hand-built rows and batches; expected values worked out from the definitions."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.plan.types import Deployment, Plan, PlannedBatch, RowForecast
from uellm_cli.report import metrics as M


def ok(i, out=10, fin=1.0, dl=None, pred=None, rep=0, batch=0, lat="fin"):
    return RowResult(index=i, id=f"r{i}", status="ok", output_tokens=out, predicted_output_tokens=pred,
                     finished_s=fin, latency_s=fin if lat == "fin" else lat, deadline_s=dl,
                     replica=rep, batch=batch)


def bad(i, status="error", dl=None, out=None, lat=None):
    return RowResult(index=i, id=f"r{i}", status=status, deadline_s=dl, output_tokens=out, latency_s=lat)


def batch(b, start, end, rows=(0,), steps=1, out=1, rep=0, fs=None, ff=None):
    return BatchRecord(batch=b, replica=rep, rows=list(rows), started_s=start, finished_s=end, steps=steps,
                       prompt_width=8, output_tokens=out, forecast_start_s=fs, forecast_finish_s=ff)


# ------------------------------------------------------------------------- SLO attainment


def test_slo_attainment_counts_failed_rows_with_deadline_as_misses():
    rows = [
        ok(0, fin=5, dl=10),       # met
        ok(1, fin=12, dl=10),      # missed
        ok(2, fin=10, dl=10),      # met: finished_s <= deadline_s
        bad(3, "error", dl=5),     # error with a deadline: a miss
        bad(4, "rejected"),        # no deadline: not counted
        ok(5, fin=99),             # no deadline: not counted
    ]
    assert M.slo_attainment(rows) == 2 / 4
    assert [M.row_slo_met(r) for r in rows] == [True, False, True, False, None, None]


def test_slo_attainment_is_none_without_deadlines():
    assert M.slo_attainment([ok(0), bad(1)]) is None
    assert M.slo_attainment([]) is None


# ------------------------------------------------------------------------- time and tokens


def test_makespan_is_first_start_to_last_end():
    assert M.makespan([batch(0, 1, 4), batch(1, 2, 9), batch(2, 5, 7)]) == 8
    assert M.makespan([]) is None


def test_throughput_and_goodput():
    rows = [
        ok(0, out=10, fin=3, dl=5),     # met -> good
        ok(1, out=20, fin=6, dl=5),     # missed -> not good
        ok(2, out=30, fin=7),           # no deadline -> good (nothing to miss)
        bad(3, out=40),                 # errors never count as generated
    ]
    batches = [batch(0, 1.0, 3.0), batch(1, 3.0, 5.0)]  # makespan 4 s
    assert M.generated_tokens(rows) == 60
    assert M.throughput(rows, batches) == 60 / 4
    assert M.goodput(rows, batches) == 40 / 4
    assert M.throughput(rows, []) is None


def test_padding_waste_counts_slots_not_holding_output():
    batches = [batch(0, 0, 1, rows=(0, 1), steps=10, out=15), batch(1, 1, 2, rows=(2,), steps=4, out=4)]
    # slots: 2*10 + 1*4 = 24; real: 19
    assert M.padding_waste(batches) == pytest.approx(5 / 24)
    assert M.padding_waste([]) is None


def test_latency_stats_over_ok_rows_with_linear_percentiles():
    rows = [ok(i, fin=v) for i, v in enumerate([4.0, 1.0, 3.0, 2.0])] + [bad(9, lat=100.0)]
    s = M.latency_stats(rows)
    assert s.count == 4
    assert s.mean_s == pytest.approx(2.5)
    assert s.p50_s == pytest.approx(2.5)   # halfway between 2 and 3
    assert s.p90_s == pytest.approx(3.7)   # rank 0.9*3 = 2.7 -> 3 + 0.7*(4-3)
    assert s.p99_s == pytest.approx(3.97)  # rank 2.97 -> 3 + 0.97
    assert s.max_s == 4.0


def test_latency_falls_back_to_finished_s():
    r = ok(0, fin=7.0, lat=None)
    assert M.row_latency(r) == 7.0
    assert M.latency_stats([r]).mean_s == 7.0
    assert M.latency_stats([bad(0)]).count == 0


# ------------------------------------------------------------------------- predictor


@pytest.mark.parametrize(("tokens", "bucket"), [(0, 0), (7, 0), (8, 1), (15, 1), (16, 2), (1023, 7), (1024, 8)])
def test_length_bucket_powers_of_two(tokens, bucket):
    assert M.length_bucket(tokens) == bucket


def test_predictor_error():
    rows = [ok(0, out=12, pred=10), ok(1, out=64, pred=100), ok(2, out=7, pred=7), ok(3, out=15, pred=16),
            ok(4, out=5), bad(5)]
    p = M.predictor_error(rows)
    assert p.count == 4
    assert p.mae_tokens == pytest.approx((2 + 36 + 0 + 1) / 4)
    # buckets: 10|12 -> 1|1, 100|64 -> 4|4, 7|7 -> 0|0, 16|15 -> 2|1
    assert p.bucket_accuracy == 3 / 4
    assert M.predictor_error([ok(0)]).count == 0


def test_kendall_tau_b_small_cases():
    # pairs (0,1) and (0,2) concordant, (1,2) discordant
    assert M.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # x tie on (0,1); (0,2), (1,2) concordant: n0=3, n1=1, n2=0 -> 2 / sqrt(2*3)
    assert M.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert M.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.kendall_tau([1], [1]) is None
    assert M.kendall_tau([2, 2, 2], [1, 2, 3]) is None


def _tau_by_pairs(x, y):
    """Kendall tau-b straight from its definition, over all pairs."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
        if a == 0 and b == 0:
            continue
        if a == 0:
            tx += 1
        elif b == 0:
            ty += 1
        elif a == b:
            c += 1
        else:
            d += 1
    den = math.sqrt((c + d + tx) * (c + d + ty))
    return None if den == 0 else (c - d) / den


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=40))
def test_kendall_tau_matches_pairwise_definition(pairs):
    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    got, want = M.kendall_tau(x, y), _tau_by_pairs(x, y)
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------------- forecast, replicas


def test_forecast_errors():
    assert M.relative_error(10.0, 8.0) == pytest.approx(0.25)
    assert M.relative_error(None, 8.0) is None
    assert M.relative_error(1.0, 0.0) is None
    bs = [batch(0, 0, 4, ff=5.0), batch(1, 4, 6, ff=5.0), batch(2, 6, 7)]
    assert M.batch_forecast_mae(bs) == pytest.approx((1 + 1) / 2)


def test_forecast_summary_of_a_plan():
    plan = Plan(
        policy="slo-odbs",
        deployment=Deployment(strategy="single", replicas=[]),
        batches=[
            PlannedBatch(batch=0, replica=0, rows=[0, 1], max_new_tokens=10, start_s=2.0, finish_s=5.0,
                         padding_waste=0.5),
            PlannedBatch(batch=1, replica=0, rows=[2], max_new_tokens=20, start_s=5.0, finish_s=12.0,
                         padding_waste=0.0),
        ],
        forecast={
            0: RowForecast(0, 0, 0, 2.0, 5.0, deadline_s=6.0),    # met
            1: RowForecast(1, 0, 0, 2.0, 5.0, deadline_s=None),   # no deadline
            2: RowForecast(2, 0, 1, 5.0, 12.0, deadline_s=10.0),  # missed
        },
        start_offset_s=2.0,
    )
    f = M.forecast_summary(plan, predicted_tokens={0: 8, 1: 4, 2: 18})
    assert f["makespan_s"] == 10.0
    assert f["slo_attainment"] == 0.5
    assert f["throughput_tok_s"] == pytest.approx(30 / 10)
    # slots 2*10 + 1*20 = 40, wasted 0.5*20 = 10
    assert f["padding_waste"] == pytest.approx(10 / 40)
    assert M.forecast_summary(plan)["throughput_tok_s"] is None
    assert f["expected_makespan_s"] is None
    plan.summary["expected_makespan_s"] = 14.0
    assert M.forecast_summary(plan)["expected_makespan_s"] == 14.0
    assert "expected_slo_attainment" not in f  # a plan not simulated on drawn lengths
    plan.summary |= {"expected_slo_attainment": 0.4, "slo_attainment_range": [0.3, 0.5], "slo_draws": 16}
    drawn = M.forecast_summary(plan)
    assert (drawn["expected_slo_attainment"], drawn["slo_attainment_range"], drawn["slo_draws"]) == \
        (0.4, [0.3, 0.5], 16)


def test_the_forecast_error_is_of_the_expected_makespan_when_there_is_one():
    rows = [ok(0, out=10, fin=3, dl=5), ok(1, out=20, fin=6, dl=5)]
    bs = [batch(0, 1.0, 3.0, rows=(0,), steps=10, out=10), batch(1, 3.0, 6.0, rows=(1,), steps=20, out=20)]
    m = M.summarize(rows, bs, forecast={"makespan_s": 4.0, "expected_makespan_s": 5.5})
    assert m.makespan_forecast_error == pytest.approx((5.5 - 5.0) / 5.0)
    assert M.forecast_makespan({"makespan_s": 4.0, "expected_makespan_s": None}) == 4.0
    assert M.forecast_makespan(None) is None


def test_per_replica_breakdown():
    rows = [ok(0, out=10, fin=3, dl=5, rep=0), ok(1, out=20, fin=8, dl=5, rep=1), bad(2)]
    bs = [batch(0, 1, 3, rows=(0,), steps=10, out=10, rep=0), batch(1, 2, 8, rows=(1,), steps=20, out=20, rep=1)]
    reps = M.per_replica(rows, bs)
    assert [r.replica for r in reps] == [0, 1]
    r0, r1 = reps
    assert (r0.rows, r0.ok, r0.batches, r0.slo_attainment, r0.makespan_s) == (1, 1, 1, 1.0, 2)
    assert r0.throughput_tok_s == 10 / 2
    assert (r1.slo_attainment, r1.makespan_s, r1.busy_s, r1.padding_waste) == (0.0, 6, 6, 0.0)


def test_utilisation_summary():
    samples = [
        {"t_s": 0.0, "cpu_pct": None, "rss_bytes": 100, "gpus": [{"index": 0, "util_pct": 50.0, "mem_used_bytes": 7}]},
        {"t_s": 1.0, "cpu_pct": 80.0, "rss_bytes": 300, "gpus": [{"index": 0, "util_pct": 70.0, "mem_used_bytes": 9}]},
        {"t_s": 2.0, "cpu_pct": 40.0, "rss_bytes": 200, "gpus": []},
    ]
    u = M.utilisation_summary(samples)
    assert u["samples"] == 3
    assert u["cpu_mean_pct"] == 60.0
    assert u["rss_peak_bytes"] == 300
    assert u["gpus"] == [{"index": 0, "util_mean_pct": 60.0, "util_peak_pct": 70.0, "mem_peak_bytes": 9}]
    assert M.utilisation_summary([]) is None


# ------------------------------------------------------------------------- summarize


def test_summarize_puts_it_together_and_round_trips():
    rows = [ok(0, out=10, fin=3, dl=5, pred=12), ok(1, out=20, fin=6, dl=5, pred=16), bad(2, "rejected", dl=1)]
    bs = [batch(0, 1.0, 3.0, rows=(0,), steps=10, out=10, ff=2.5), batch(1, 3.0, 6.0, rows=(1,), steps=20, out=20)]
    m = M.summarize(rows, bs, model_load_s=1.0, forecast={"makespan_s": 4.0, "slo_attainment": 1.0},
                    utilisation=[{"t_s": 0.0, "cpu_pct": 10.0, "rss_bytes": 5, "gpus": []}])
    assert (m.rows, m.ok, m.errors, m.rejected) == (3, 2, 0, 1)
    assert (m.rows_with_deadline, m.slo_met, m.slo_attainment) == (3, 1, 1 / 3)
    assert m.makespan_s == 5.0
    assert m.throughput_tok_s == 30 / 5
    assert m.goodput_tok_s == 10 / 5
    assert m.padding_waste == 0.0
    assert m.makespan_forecast_error == pytest.approx((4.0 - 5.0) / 5.0)
    assert m.batch_finish_forecast_mae_s == pytest.approx(0.5)
    assert m.utilisation["cpu_mean_pct"] == 10.0
    d = json.loads(json.dumps(m.to_dict()))
    assert M.RunMetrics.from_dict(d) == m


def test_summarize_of_nothing():
    m = M.summarize([], [])
    assert (m.rows, m.slo_attainment, m.makespan_s, m.throughput_tok_s, m.padding_waste) == (0, None, None, None, None)
    assert m.latency.count == 0 and m.predictor.count == 0 and m.replicas == []
