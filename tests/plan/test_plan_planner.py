"""Joint planning: candidates, the choice between them, --on-miss skip and the JSON form."""

from __future__ import annotations

import json
import random

import pytest
from plan_builders import cluster, gpu, llama_like, query

from uellm_cli.errors import ConfigError, DoesNotFitError
from uellm_cli.plan.planner import MAKESPAN_TOL, make_plan, plan_to_dict
from uellm_cli.plan.replicas import make_replica
from uellm_cli.plan.types import Deployment, Replica

MODEL = llama_like()


def workload(n: int, seed: int = 0, deadline_hi: float = 400.0) -> list:
    rng = random.Random(seed)
    return [query(i, prompt=rng.randint(20, 400), pred=rng.randint(10, 250), deadline=rng.uniform(20, deadline_hi))
            for i in range(n)]


def test_every_row_gets_a_forecast_from_its_batch():
    qs = workload(150)
    plan = make_plan(qs, MODEL, cluster([gpu(i) for i in range(3)]), start_offset_s=3.0)
    assert set(plan.forecast) == {q.index for q in qs}
    rows = [i for b in plan.batches for i in b.rows]
    assert sorted(rows) == sorted(plan.forecast)
    assert min(b.start_s for b in plan.batches) == 3.0
    reps = {r.index for r in plan.deployment.replicas}
    assert {b.replica for b in plan.batches} <= reps


@pytest.mark.parametrize("objective", ["helr", "lr", "he"])
def test_the_choice_follows_the_objective(objective):
    qs = workload(200, seed=1, deadline_hi=150)
    plan = make_plan(qs, MODEL, cluster([gpu(i) for i in range(4)]), objective=objective)
    alts = plan.alternatives
    chosen = [a for a in alts if a["chosen"]]
    assert len(chosen) == 1
    (c,) = chosen
    best = max(a["slo_attainment"] for a in alts)
    assert c["slo_attainment"] == pytest.approx(best)
    pool = [a for a in alts if a["slo_attainment"] >= best - 1e-9]
    if objective == "lr":
        assert c["makespan_s"] <= min(a["makespan_s"] for a in pool) + 1e-9
    elif objective == "he":
        assert c["n_devices"] == min(a["n_devices"] for a in pool)
    else:
        shortest = min(a["makespan_s"] for a in pool)
        near = [a for a in pool if a["makespan_s"] <= shortest * (1 + MAKESPAN_TOL)]
        assert c["n_devices"] == min(a["n_devices"] for a in near)
    assert c["strategy"] == plan.deployment.strategy


def test_an_extra_deployment_wins_when_its_forecast_is_better():
    cl = cluster([gpu(0, mem_gb=16)])
    base = make_replica(0, MODEL, cl, ["cuda:0"], [MODEL.num_layers])
    roomy = Deployment("sequential", [Replica(0, base.stages, base.device_map, 10**15)], note="test")
    qs = [query(i, prompt=1000, pred=500, deadline=None) for i in range(64)]
    plan = make_plan(qs, MODEL, cl, objective="lr", extra_deployments=[roomy])
    assert plan.deployment is roomy  # its memory lets batches grow, so it finishes first
    names = [a["strategy"] for a in plan.alternatives]
    assert "sequential" in names and any(n.startswith("helr") for n in names)


def test_on_miss_skip_drops_rows_forecast_to_miss():
    qs = workload(120, seed=2, deadline_hi=60)
    run = make_plan(qs, MODEL, cluster([gpu(0)]), on_miss="run")
    missed = {i for i, f in run.forecast.items() if f.slo_met is False}
    assert missed, "the workload must overload one GPU for this test to mean anything"
    skip = make_plan(qs, MODEL, cluster([gpu(0)]), on_miss="skip")
    planned = {i for b in skip.batches for i in b.rows}
    assert skip.skipped and not planned & set(skip.skipped)
    assert planned | set(skip.skipped) == {q.index for q in qs}
    for i in skip.skipped:
        assert skip.forecast[i].slo_met is False and skip.forecast[i].batch == -1
    kept_missing = [i for i in planned if skip.forecast[i].slo_met is False]
    assert len(kept_missing) < len(missed)
    assert skip.summary["rows_missed"] == len(skip.skipped) + len(kept_missing)


def test_large_jobs_are_judged_on_a_sample_but_planned_in_full():
    qs = workload(600, seed=3)
    plan = make_plan(qs, MODEL, cluster([gpu(i) for i in range(2)]), judge_rows=100)
    assert sorted(i for b in plan.batches for i in b.rows) == list(range(600))
    assert any("judged on 1 row in 6" in n for n in plan.notes)
    chosen = next(a for a in plan.alternatives if a["chosen"])
    assert chosen["judged_rows"] == 600 and plan.summary["rows"] == 600


def test_plan_to_dict_is_json_and_complete():
    qs = workload(30)
    plan = make_plan(qs, llama_like(tied=True), cluster([gpu(0), gpu(1)]))
    doc = json.loads(json.dumps(plan_to_dict(plan)))
    assert len(doc["forecast"]) == 30
    assert doc["forecast_summary"]["makespan_s"] == pytest.approx(plan.summary["makespan_s"])
    assert doc["deployment"]["replicas"][0]["device_map"]["lm_head"]
    assert {"devices", "roofline"} <= set(doc["cost_model"])
    assert sum(len(b["rows"]) for b in doc["batches"]) == 30


def test_no_rows_still_gives_a_deployment():
    plan = make_plan([], MODEL, cluster([gpu(0)]))
    assert plan.batches == [] and plan.forecast == {} and plan.deployment.replicas


def test_errors_are_user_errors():
    with pytest.raises(DoesNotFitError):
        make_plan(workload(5), llama_like(layers=80, hidden=8192, heads=64, kv_heads=8, inter=28672),
                  cluster([gpu(0, mem_gb=24)]))
    with pytest.raises(ConfigError):
        make_plan(workload(5), MODEL, cluster([gpu(0)]), objective="fast")
    with pytest.raises(ConfigError):
        make_plan(workload(5), MODEL, cluster([gpu(0)]), on_miss="drop")
