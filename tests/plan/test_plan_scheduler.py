"""Each policy's defining property, checked on hand-made replicas and queries."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_builders import cluster, gpu, llama_like, query

from uellm_cli.errors import ConfigError
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.replicas import make_replica
from uellm_cli.plan.scheduler import SCHEDULERS, SloOdbsPaper, edf_key, schedule
from uellm_cli.plan.types import Replica

MODEL = llama_like()
CL = cluster([gpu(0), gpu(1)])
COST = CostModel(MODEL, CL)


def replica(index=0, device="cuda:0", budget=None) -> Replica:
    r = make_replica(index, MODEL, CL, [device], [MODEL.num_layers])
    return r if budget is None else Replica(r.index, r.stages, r.device_map, budget)


def flat(batches) -> list[int]:
    return [i for b in sorted(batches, key=lambda b: (b.start_s, b.batch)) for i in b.rows]


def test_slo_odbs_runs_rows_in_edf_order_ties_by_priority_then_length():
    rng = random.Random(1)
    qs = [query(i, pred=rng.choice([50, 80, 120]), deadline=rng.choice([1e4, 2e4, 3e4]),
                priority=rng.choice([0, 1])) for i in range(40)]
    batches = schedule(qs, [replica()], COST, max_batch_size=4, params={"max_waste": 1.0})
    by_index = {q.index: q for q in qs}
    keys = [edf_key(by_index[i]) for i in flat(batches)]
    assert keys == sorted(keys)
    assert all(len(b.rows) == 4 for b in batches)


def test_slo_odbs_growth_stops_when_a_member_would_miss():
    t1 = COST.batch_time_s(replica(), 1, 100, 100)
    t2 = COST.batch_time_s(replica(), 2, 100, 100)
    t3 = COST.batch_time_s(replica(), 3, 100, 100)
    assert t1 < t2 < t3
    tight = (t2 + t3) / 2  # a batch of 2 meets it, a batch of 3 does not
    qs = [query(0, deadline=tight)] + [query(i, deadline=None) for i in range(1, 10)]
    batches = schedule(qs, [replica()], COST, params={"safety": 0.0})
    first = min(batches, key=lambda b: b.start_s)
    assert first.rows[0] == 0 and len(first.rows) == 2
    assert first.finish_s <= tight
    loose = schedule([query(0, deadline=1e9)] + qs[1:], [replica()], COST)
    assert len(min(loose, key=lambda b: b.start_s).rows) == 10


def test_slo_odbs_keeps_a_safety_margin_before_deadlines():
    t2 = COST.batch_time_s(replica(), 2, 100, 100)
    t3 = COST.batch_time_s(replica(), 3, 100, 100)
    deadline = (t2 + t3) / 2  # a batch of 2 meets it, but with less than a 10% margin
    assert t2 < deadline < t2 * 1.1
    qs = [query(0, deadline=deadline)] + [query(i, deadline=None) for i in range(1, 10)]
    plain = min(schedule(qs, [replica()], COST, params={"safety": 0.0}), key=lambda b: b.start_s)
    safe = min(schedule(qs, [replica()], COST), key=lambda b: b.start_s)
    assert len(plain.rows) == 2
    assert safe.rows == [0] and safe.finish_s <= deadline


def test_a_row_that_cannot_make_it_does_not_delay_those_that_can():
    hopeless = query(0, deadline=0.001)
    others = [query(i, deadline=1e6) for i in range(1, 5)]
    batches = schedule([hopeless, *others], [replica()], COST, max_batch_size=2)
    order = flat(batches)
    assert order[-1] == 0


def test_slo_odbs_padding_waste_stays_under_the_bound():
    rng = random.Random(3)
    qs = [query(i, pred=rng.randint(5, 500)) for i in range(200)]
    for bound in (0.1, 0.3):
        batches = schedule(qs, [replica()], COST, params={"max_waste": bound})
        assert all(b.padding_waste <= bound + 1e-9 for b in batches)
        assert sorted(flat(batches)) == list(range(200))


@settings(max_examples=25, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 2000)), min_size=1, max_size=60),
    budget_tokens=st.integers(3000, 40000),
    policy=st.sampled_from(["slo-odbs", "sjf"]),
)
def test_memory_budget_never_exceeded(lens, budget_tokens, policy):
    qs = [query(i, prompt=p, pred=max(1, u // 2), upper=u, deadline=float(i)) for i, (p, u) in enumerate(lens)]
    budget = COST.batch_memory_bytes(1, 0, budget_tokens)
    reps = [replica(0, "cuda:0", budget), replica(1, "cuda:1", budget // 2)]
    batches = schedule(qs, reps, COST, policy=policy)
    by_index = {q.index: q for q in qs}
    budgets = {r.index: r.kv_budget_bytes for r in reps}
    for b in batches:
        if len(b.rows) == 1:
            continue  # a row alone always runs (the executor splits/fails it on OOM)
        ms = [by_index[i] for i in b.rows]
        need = COST.batch_memory_bytes(len(ms), max(q.prompt_tokens for q in ms), max(q.predicted_upper for q in ms))
        assert need <= budgets[b.replica] if policy == "slo-odbs" else need <= min(budgets.values())
    assert sorted(flat(batches)) == sorted(by_index)


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
def test_groups_never_share_a_batch(policy):
    rng = random.Random(7)
    groups = [("greedy", ()), ("sample", 0.7, 1.0, None, ()), ("sample", 0.7, 1.0, 5, ())]
    qs = [query(i, pred=rng.randint(10, 60), deadline=rng.uniform(1, 500), group=rng.choice(groups)) for i in range(120)]
    batches = schedule(qs, [replica(0), replica(1, "cuda:1")], COST, policy=policy)
    by_index = {q.index: q for q in qs}
    for b in batches:
        assert len({by_index[i].group for i in b.rows}) == 1
    assert sorted(flat(batches)) == list(range(120))


def test_fcfs_keeps_input_order_in_fixed_size_batches():
    qs = [query(i, pred=random.Random(i).randint(1, 300), deadline=1000.0 - i) for i in range(23)]
    batches = schedule(list(reversed(qs)), [replica()], COST, policy="fcfs", max_batch_size=5)
    assert [b.rows for b in sorted(batches, key=lambda b: b.batch)] == [list(range(k, min(k + 5, 23))) for k in range(0, 23, 5)]


def test_edf_is_deadline_order_with_fixed_size():
    rng = random.Random(5)
    qs = [query(i, deadline=rng.uniform(0, 100)) for i in range(30)] + [query(30, deadline=None)]
    batches = schedule(qs, [replica()], COST, policy="edf", max_batch_size=7)
    order = flat(batches)
    deadlines = [qs[i].deadline_s if qs[i].deadline_s is not None else float("inf") for i in order]
    assert deadlines == sorted(deadlines)
    assert [len(b.rows) for b in batches] == [7, 7, 7, 7, 3]


def test_sjf_sorted_by_predicted_length_and_packed_to_memory():
    rng = random.Random(9)
    qs = [query(i, prompt=200, pred=rng.randint(1, 400)) for i in range(80)]
    budget = COST.batch_memory_bytes(8, 200, 400)
    batches = schedule(qs, [replica(budget=budget)], COST, policy="sjf")
    lengths = [qs[i].predicted_tokens for i in flat(batches)]
    assert lengths == sorted(lengths)
    for b in batches:
        assert COST.batch_memory_bytes(len(b.rows), 200, max(qs[i].predicted_upper for i in b.rows)) <= budget


def _paper_queries():
    # (SLO, predicted length): sort key SLO + 0.5 * length -> order q1, q0, q4, q2, q3
    spec = {0: (10, 50), 1: (20, 20), 2: (5, 100), 3: (30, 120), 4: (40, 10)}
    return [query(i, pred=length, deadline=float(slo)) for i, (slo, length) in spec.items()]


def test_paper_formula_output_term_hand_example():
    # threshold 100, w2 = 1, L2 = 1:
    # [q1]; q0: (50-20)*2 = 60 ok; q4: (10-50)*3 < 0 ok; q2: (100-50)*4 = 200 > 100 -> close
    # [q2]; q3: (120-100)*2 = 40 ok
    params = {"threshold": 100.0, "l2": 1.0}
    batches = schedule(_paper_queries(), [replica()], COST, policy="slo-odbs-paper", params=params)
    assert [b.rows for b in sorted(batches, key=lambda b: b.batch)] == [[1, 0, 4], [2, 3]]


def test_paper_formula_slo_term_hand_example():
    # threshold 100, w1 = 1, w2 = 0, L1 = 1: T_l = (SLO_q + L_CM) * (n+1)
    # [q1] L_CM=20; q0: (10+20)*2 = 60 ok; q4: (40+20)*3 = 180 -> close
    # [q4] L_CM=40; q2: (5+40)*2 = 90 ok; q3: (30+40)*3 = 210 -> close; [q3]
    params = {"threshold": 100.0, "w1": 1.0, "w2": 0.0, "l1": 1.0}
    batches = schedule(_paper_queries(), [replica()], COST, policy="slo-odbs-paper", params=params)
    assert [b.rows for b in sorted(batches, key=lambda b: b.batch)] == [[1, 0], [4, 2], [3]]


def test_paper_defaults_are_the_published_codes():
    p = SloOdbsPaper()
    assert (p.a, p.b, p.w1, p.w2, p.l2, p.threshold, p.batch_size) == (1.0, 0.5, 0.0, 1.0, 1.2, 15000.0, 10)
    assert p.cost_terms(slo=0, length=1300, n=9, l_cm=0, o_cm=0) > p.threshold
    assert p.cost_terms(slo=0, length=1200, n=9, l_cm=0, o_cm=0) <= p.threshold


def test_unknown_policy_and_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="unknown policy"):
        schedule([query(0)], [replica()], COST, policy="nope")
    with pytest.raises(ConfigError, match="no parameter"):
        schedule([query(0)], [replica()], COST, params={"bogus": 1})


def test_max_batch_size_is_respected_by_every_policy():
    qs = [query(i, deadline=1e6) for i in range(50)]
    for policy in SCHEDULERS:
        batches = schedule(qs, [replica()], COST, policy=policy, max_batch_size=6)
        assert max(len(b.rows) for b in batches) <= 6
        assert sorted(flat(batches)) == list(range(50))


def _cpu_with_long_prompts():
    """A small CPU calibrated like SmolLM2-135M under transformers: a 5,864-token prompt takes
    about 90 s to prefill (attention's quadratic term), a 40-token one a twentieth of a second."""
    from uellm_cli.profile.calibration import Calibration
    from uellm_cli.profile.devices import Device

    model = llama_like(layers=30, hidden=576, heads=9, kv_heads=3, inter=1536, vocab=49152,
                       dtype_bytes=4, name="smollm2-like")
    cl = cluster([Device("cpu", "test-cpu", "cpu", 24 * 10**9, 2e11, 4e10, "local")])
    cal = Calibration("test-cpu", "hf", model.name, prefill=(0.02, 1.2e-3, 2.6e-6),
                      decode=(0.05, 5e-3, 2e-6))
    cost = CostModel(model, cl, {"test-cpu": cal})
    return make_replica(0, model, cl, ["cpu"], [model.num_layers]), cost


@pytest.mark.parametrize("deadline", [300.0, 3000.0, None])
def test_a_long_prompt_runs_alone_instead_of_holding_short_rows_hostage(deadline):
    """The issue's job: one 5,864-token prompt and four short ones, 8 new tokens each. Padded
    into one static batch, every row would prefill 5,864 tokens (about 8 minutes here)."""
    rep, cost = _cpu_with_long_prompts()
    rows = [query(0, prompt=5864, pred=8, deadline=deadline)]
    rows += [query(i, prompt=40, pred=8, deadline=deadline) for i in range(1, 5)]
    batches = schedule(rows, [rep], cost)
    long_batch = next(b for b in batches if 0 in b.rows)
    assert long_batch.rows == [0]
    assert sorted(i for b in batches if b is not long_batch for i in b.rows) == [1, 2, 3, 4]
    assert len(batches) == 2  # the short rows still share one batch
    assert max(b.finish_s for b in batches) < cost.batch_time_s(rep, 5, 5864, 8) / 2
    short = next(b for b in batches if b is not long_batch)
    assert short.finish_s <= long_batch.start_s  # the short rows do not wait for its prefill
    if deadline is not None:
        assert all(b.finish_s <= deadline for b in batches)
