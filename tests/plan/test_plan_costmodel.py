"""Cost model: the closed form equals the step-by-step sum, calibrations take over where they apply."""

from __future__ import annotations

import math

import pytest
from plan_builders import cluster, gpu, llama_like

from uellm_cli.plan.costmodel import CostModel, _sum_max_lines
from uellm_cli.plan.replicas import make_replica
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Device, Link


def _loop_time(cost: CostModel, replica, b: int, n: int, new: int) -> float:
    return cost.prefill_s(replica, b, n) + sum(cost.decode_step_s(replica, b, c) for c in range(n + 1, n + new))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layout", [((0,), (32,)), ((0, 1), (20, 12)), ((2, 0, 1), (5, 20, 7))])
@pytest.mark.parametrize("shape", [(1, 10, 1), (1, 100, 200), (16, 512, 300), (64, 2000, 50)])
def test_batch_time_closed_form_equals_the_sum_of_steps(tied, layout, shape):
    model = llama_like(tied=tied)
    cl = cluster([gpu(0), gpu(1, tflops=30, bw_gbs=400), gpu(2, tflops=300, bw_gbs=3000)],
                 links={("cuda:0", "cuda:1"): Link("nvlink", 100e9, 2e-6)})
    cost = CostModel(model, cl)
    order, layers = layout
    rep = make_replica(0, model, cl, [f"cuda:{i}" for i in order], layers)
    b, n, new = shape
    assert cost.batch_time_s(rep, b, n, new) == pytest.approx(_loop_time(cost, rep, b, n, new), rel=1e-9)


def test_calibrated_single_device_uses_the_calibration_exactly():
    model = llama_like()
    cal = Calibration("RTX-3090", "hf", model.name, prefill=(0.01, 2e-5, 1e-9), decode=(0.02, 1e-4, 3e-8))
    cl = cluster([gpu(0), gpu(1, name="other")])
    cost = CostModel(model, cl, {"RTX-3090": cal})
    rep = make_replica(0, model, cl, ["cuda:0"], [model.num_layers])
    assert cost.prefill_s(rep, 4, 300) == pytest.approx(cal.prefill_s(4, 300))
    assert cost.decode_step_s(rep, 4, 333) == pytest.approx(cal.decode_s(4, 333))
    expected = cal.prefill_s(4, 300) + sum(cal.decode_s(4, c) for c in range(301, 300 + 50))
    assert cost.batch_time_s(rep, 4, 300, 50) == pytest.approx(expected)
    sources = {d["device"]: d["source"] for d in cost.describe()["devices"]}
    assert sources == {"cuda:0": "calibration", "cuda:1": "roofline"}


def test_calibrated_stage_costs_its_share_of_layers():
    model = llama_like()
    cal = Calibration("RTX-3090", "hf", model.name, prefill=(0.0, 1e-5, 0.0), decode=(0.02, 1e-4, 0.0))
    cl = cluster([gpu(0), gpu(1, name="other")], default=Link("pcie", 1e30, 0.0))  # free hops
    cost = CostModel(model, cl, {"RTX-3090": cal})
    split = make_replica(0, model, cl, ["cuda:0", "cuda:1"], [24, 8])
    alone_other = make_replica(0, model, cl, ["cuda:1"], [32])
    other_layers = cost.decode_step_s(alone_other, 2, 100)
    head = cost.head_decode_s("cuda:1", 2) + cost.embed_decode_s("cuda:1", 2)
    per_layer_other = (other_layers - head) / 32
    expected = cal.decode_s(2, 100) * 24 / 32 + 8 * per_layer_other + cost.head_decode_s("cuda:1", 2)
    assert cost.decode_step_s(split, 2, 100) == pytest.approx(expected, rel=1e-9)


def test_calibration_of_another_model_is_ignored_and_said_so():
    model = llama_like(name="llama-like")
    cal = Calibration("RTX-3090", "hf", "some-other-model", prefill=(1.0, 0, 0), decode=(1.0, 0, 0))
    cl = cluster([gpu(0)])
    cost = CostModel(model, cl, {"RTX-3090": cal})
    (dev,) = cost.describe()["devices"]
    assert dev["source"] == "roofline" and "some-other-model" in dev["note"]
    folder = CostModel(model, cl, {"RTX-3090": Calibration("RTX-3090", "hf", "/models/Llama-Like/", (1.0, 0, 0), (1.0, 0, 0))})
    assert folder.describe()["devices"][0]["source"] == "calibration"


def test_roofline_is_memory_bound_at_batch_one_and_compute_bound_when_large():
    model = llama_like()
    cl = cluster([gpu(0)])
    cost = CostModel(model, cl)
    p = cost.params
    dev = cl.devices[0]
    t1 = cost.layer_decode_s("cuda:0", 1, 10) - p.layer_overhead_s
    assert t1 == pytest.approx(model.layer_bytes / (dev.mem_bandwidth * p.bandwidth_eff), rel=0.01)
    big = cost.layer_decode_s("cuda:0", 4096, 10) - p.layer_overhead_s
    flops = 4096 * (cost.layer_flops + cost.layer_attn * 10)
    assert big == pytest.approx(flops / (dev.flops * p.compute_eff), rel=1e-9)


def test_hops_cost_latency_plus_bytes_over_bandwidth():
    model = llama_like()
    link = Link("pcie", 8e9, 7e-6)
    cl = cluster([gpu(0), gpu(1)], default=link)
    cost = CostModel(model, cl)
    one = make_replica(0, model, cl, ["cuda:0"], [32])
    two = make_replica(0, model, cl, ["cuda:0", "cuda:1"], [16, 16])
    hop = link.latency + 8 * model.activation_bytes_per_token / link.bandwidth
    assert cost.decode_step_s(two, 8, 64) - cost.decode_step_s(one, 8, 64) == pytest.approx(hop, rel=1e-6)


def test_kv_bytes_exact_for_grouped_query_attention():
    gqa = llama_like(layers=80, hidden=8192, heads=64, kv_heads=8)
    cost = CostModel(gqa, cluster([gpu(0)]))
    assert cost.kv_bytes(3, 1000) == 3 * 1000 * 2 * 80 * 8 * 128 * 2
    assert cost.batch_memory_bytes(3, 900, 100) > cost.kv_bytes(3, 1000)


def test_sum_max_lines_matches_brute_force():
    for a, b, g, d, c0, c1 in [(1, 2, 50, 0.5, 0, 100), (5, 0, 1, 1, 3, 9), (0, 1, 0, 1, 1, 5), (-3, 1, 2, 0.2, 10, 10)]:
        brute = sum(max(a + b * c, g + d * c) for c in range(c0, c1 + 1))
        assert math.isclose(_sum_max_lines(a, b, g, d, c0, c1), brute, rel_tol=1e-12)


def test_cpu_device_works_without_links():
    model = llama_like(layers=4, hidden=256, heads=4, kv_heads=4, inter=512, vocab=1000)
    cpu = Device("cpu", "cpu", "cpu", 16 * 10**9, 2e11, 2e10)
    cl = cluster([cpu])
    cost = CostModel(model, cl)
    rep = make_replica(0, model, cl, ["cpu"], [4])
    assert cost.batch_time_s(rep, 2, 30, 20) > cost.prefill_s(rep, 2, 30) > 0
