"""HELR against a brute-force enumerator, replicas, memory, errors and device maps."""

from __future__ import annotations

import itertools
import random

import pytest
from plan_builders import GB, cluster, gpu, llama_like

from uellm_cli.errors import DoesNotFitError
from uellm_cli.plan.costmodel import CostModel
from uellm_cli.plan.deployer import PlacementSearch, deploy
from uellm_cli.plan.replicas import MEM_FRACTION, make_replica
from uellm_cli.profile.devices import Link

REF_B, REF_CTX = 4, 300


def compositions(total: int, parts: int):
    """Every way to write `total` as `parts` positive integers, in order."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(bounds[i + 1] - bounds[i] for i in range(parts))


def fits(model, cl, devices, layers, kv_reserve, act_reserve) -> bool:
    n = len(devices)
    for i, (d, k) in enumerate(zip(devices, layers, strict=True)):
        need = k * (model.layer_bytes + kv_reserve / model.num_layers) + act_reserve
        need += model.embed_bytes if i == 0 else 0
        need += model.head_bytes if i == n - 1 else 0
        if need > int(cl.device(d).memory_bytes * MEM_FRACTION):
            return False
    return True


def brute_force(model, cl, cost, kv_reserve, act_reserve, objective):
    """Best (key, devices, layers) over every ordered device subset and contiguous split."""
    best = None
    ids = [d.id for d in cl.devices]
    for r in range(1, len(ids) + 1):
        for order in itertools.permutations(ids, r):
            for layers in compositions(model.num_layers, r):
                if not fits(model, cl, order, layers, kv_reserve, act_reserve):
                    continue
                t = cost.decode_step_s(make_replica(0, model, cl, order, layers), REF_B, REF_CTX)
                key = (r, t) if objective == "he" else (t,)
                if best is None or key < best[0]:
                    best = (key, order, layers)
    return best


def random_cluster(rng: random.Random, model, n: int):
    per_layer = model.layer_bytes
    devs = [gpu(i, mem_gb=rng.uniform(1.5, 4.5) * per_layer / GB / MEM_FRACTION + model.embed_bytes / GB,
                tflops=rng.choice([20, 70, 150]), bw_gbs=rng.choice([300, 900, 2000]),
                name=f"g{i}") for i in range(n)]
    links = {}
    for a, b in itertools.combinations(range(n), 2):
        links[(f"cuda:{a}", f"cuda:{b}")] = rng.choice([
            Link("nvlink", 300e9, 2e-6), Link("pcie", 16e9, 1e-5), Link("sys", 4e9, 5e-4)])
    return cluster(devs, links)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objective", ["lr", "he"])
def test_helr_matches_brute_force(seed, objective):
    rng = random.Random(seed)
    model = llama_like(layers=7, hidden=512, heads=8, kv_heads=rng.choice([2, 8]), inter=1024, vocab=2000,
                       tied=seed % 2 == 1)
    cl = random_cluster(rng, model, 4)
    cost = CostModel(model, cl)
    kv_reserve = rng.choice([0, model.layer_bytes // 2])
    act_reserve = rng.choice([0, model.layer_bytes // 10])
    search = PlacementSearch(model, cl, cost, kv_reserve_bytes=kv_reserve, act_reserve_bytes=act_reserve,
                             ref_batch=REF_B, ref_context=REF_CTX)
    expected = brute_force(model, cl, cost, kv_reserve, act_reserve, objective)
    got = search.best(objective)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert fits(model, cl, got.devices, got.layers, kv_reserve, act_reserve)
    assert sum(got.layers) == model.num_layers and min(got.layers) >= 1
    measured = cost.decode_step_s(search.replica(0, got), REF_B, REF_CTX)
    assert measured == pytest.approx(got.per_token_s, rel=1e-9)  # the DP's objective is the cost model's
    if objective == "he":
        assert len(got.devices) == expected[0][0]
    assert got.per_token_s == pytest.approx(expected[0][-1], rel=1e-9)


def test_prefers_the_fast_link_when_it_must_split():
    model = llama_like(layers=8, hidden=512, heads=8, kv_heads=8, inter=1024, vocab=2000)
    half = (4 * model.layer_bytes + model.embed_bytes + model.head_bytes) / GB / MEM_FRACTION
    devs = [gpu(i, mem_gb=half * 1.01) for i in range(3)]
    slow, fast = Link("sys", 1e9, 1e-3), Link("nvlink", 300e9, 1e-6)
    cl = cluster(devs, {("cuda:0", "cuda:1"): slow, ("cuda:0", "cuda:2"): slow, ("cuda:1", "cuda:2"): fast})
    p = PlacementSearch(model, cl).best("lr")
    assert set(p.devices) == {"cuda:1", "cuda:2"}


def test_model_that_fits_one_device_becomes_one_replica_per_device():
    model = llama_like()  # ~13 GB in fp16
    cl = cluster([gpu(i, mem_gb=80) for i in range(4)])
    for objective in ("lr", "he"):
        dep = deploy(model, cl, objective=objective)
        assert len(dep.replicas) == 4
        assert sorted(r.devices for r in dep.replicas) == [(f"cuda:{i}",) for i in range(4)]
        assert all(r.stages[0].num_layers == model.num_layers for r in dep.replicas)


def test_heterogeneous_memory_is_respected():
    model = llama_like(layers=50)  # ~21 GB: more than the 24 GB device holds with the reserve
    cl = cluster([gpu(0, mem_gb=8), gpu(1, mem_gb=16), gpu(2, mem_gb=24, tflops=150, bw_gbs=2000), gpu(3, mem_gb=6)])
    reserve = 2 * GB
    dep = deploy(model, cl, objective="lr", kv_reserve_bytes=reserve, replicas=1)
    (rep,) = dep.replicas
    assert sum(s.num_layers for s in rep.stages) == 50 and len(rep.stages) > 1
    for s in rep.stages:
        assert s.weight_bytes + s.kv_reserve_bytes <= cl.device(s.device).memory_bytes * MEM_FRACTION
    # the fastest device takes as many layers as it can hold
    fast = next(s for s in rep.stages if s.device == "cuda:2")
    room = cl.device("cuda:2").memory_bytes * MEM_FRACTION
    extra = model.embed_bytes if fast.has_embed else 0
    extra += model.head_bytes if fast.has_head else 0
    assert (fast.num_layers + 1) * (model.layer_bytes + reserve / 50) + extra > room


def test_fits_nowhere_names_the_memory_it_needs():
    model = llama_like(layers=80, hidden=8192, heads=64, kv_heads=8, inter=28672)
    cl = cluster([gpu(i, mem_gb=24) for i in range(2)])
    with pytest.raises(DoesNotFitError) as err:
        deploy(model, cl, kv_reserve_bytes=GB)
    msg = str(err.value)
    assert str(model.weight_bytes + GB) in msg
    assert str(int(24 * GB * MEM_FRACTION)) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("tied", [False, True])
def test_device_map_covers_every_module_exactly_once(tied):
    model = llama_like(layers=10, tied=tied)
    cl = cluster([gpu(i) for i in range(3)])
    rep = make_replica(0, model, cl, ["cuda:2", "cuda:0", "cuda:1"], [3, 5, 2])
    dmap = rep.device_map
    layers = [f"{model.layers_prefix}.{i}" for i in range(10)]
    assert sorted(dmap) == sorted([*model.embed_modules, *model.head_modules, *layers])
    assert [dmap[name] for name in layers] == ["cuda:2"] * 3 + ["cuda:0"] * 5 + ["cuda:1"] * 2
    assert all(dmap[m] == "cuda:2" for m in model.embed_modules)
    assert dmap["model.norm"] == "cuda:1"
    assert dmap["lm_head"] == ("cuda:2" if tied else "cuda:1")  # a tied head stays with its embedding


def test_replicas_use_disjoint_devices():
    model = llama_like(layers=32)
    cl = cluster([gpu(i, mem_gb=10) for i in range(7)])  # each replica needs two devices
    dep = deploy(model, cl, objective="he")
    used = [d for r in dep.replicas for d in r.devices]
    assert len(used) == len(set(used))
    assert len(dep.replicas) == 3 and all(len(r.devices) == 2 for r in dep.replicas)
