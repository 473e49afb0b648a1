"""Ray cluster -> planner Cluster and replica -> actor options, from hand-written `ray.nodes()`
dicts (no Ray import), plus the planner on such clusters (a replica never spans nodes)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from plan_builders import GB, llama_like, query

from uellm_cli.errors import ConfigError, DoesNotFitError, MissingExtraError
from uellm_cli.plan.deployer import deploy
from uellm_cli.plan.planner import make_plan
from uellm_cli.plan.types import Replica, Stage
from uellm_cli.profile import catalogue as cat
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Device
from uellm_cli.ray_backend import require_ray
from uellm_cli.ray_backend.cluster import (
    CPUS_PER_GPU_REPLICA,
    RayNode,
    actor_placement,
    cluster_from_nodes,
    nodes_from_ray,
)

GiB = 2**30
CPU = Device("cpu", "Test CPU", "cpu", 32 * GiB, 400e9, 40e9, total_memory_bytes=64 * GiB,
             cores=8, model="Test CPU", numbers_from="measured")


def ray_node(i: int, *, cpus: float = 16.0, gpus: int = 0, gpu_type: str | None = None,
             memory: float = 100e9, alive: bool = True) -> dict:
    """One entry of `ray.nodes()` as Ray 2.x returns it (extra keys included)."""
    ip = f"10.0.0.{i + 1}"
    res = {"CPU": cpus, "memory": memory, "object_store_memory": 2e10, f"node:{ip}": 1.0}
    if i == 0:
        res["node:__internal_head__"] = 1.0
    if gpus:
        res["GPU"] = float(gpus)
    if gpu_type:
        res[f"accelerator_type:{gpu_type}"] = 1.0
    return {"NodeID": f"{i:02d}" + "ab" * 27, "Alive": alive, "NodeManagerAddress": ip,
            "NodeManagerHostname": f"host{i}", "NodeName": ip, "MetricsExportPort": 59000 + i,
            "Resources": res if alive else {}, "Labels": {"ray.io/node_id": f"{i:02d}"}}


def node(i: int, cpus: float = 16, gpus: int = 0, gpu_type: str | None = None,
         memory: int = 100 * GB) -> RayNode:
    return RayNode(f"id{i}", f"10.0.0.{i + 1}", float(cpus), gpus, gpu_type, memory)


# ----------------------------------------------------------------------------- nodes_from_ray


def test_nodes_from_ray_skips_dead_nodes_and_reads_resources():
    raw = [ray_node(0, cpus=32, gpus=4, gpu_type="A100", memory=200e9),
           ray_node(1, alive=False, gpus=8, gpu_type="H100"),
           ray_node(2, cpus=8, memory=30e9)]
    nodes = nodes_from_ray(raw)
    assert [n.node_id for n in nodes] == [raw[0]["NodeID"], raw[2]["NodeID"]]
    gpu_node, cpu_node = nodes
    assert gpu_node.address == "10.0.0.1"
    assert (gpu_node.cpus, gpu_node.gpus, gpu_node.gpu_type) == (32.0, 4, "A100")
    assert gpu_node.memory_bytes == int(200e9)
    assert (cpu_node.cpus, cpu_node.gpus, cpu_node.gpu_type) == (8.0, 0, None)
    assert cpu_node.memory_bytes == int(30e9)


def test_node_without_resources_counts_as_empty():
    raw = [{"NodeID": "x", "Alive": True, "NodeManagerAddress": "10.0.0.9"}]
    (n,) = nodes_from_ray(raw)
    assert (n.cpus, n.gpus, n.gpu_type, n.memory_bytes) == (0.0, 0, None, 0)


# ----------------------------------------------------------------------------- GPU clusters


def test_gpu_nodes_give_one_device_per_gpu_tagged_with_their_node():
    nodes = nodes_from_ray([ray_node(0, gpus=2, gpu_type="L4"), ray_node(1, gpus=3, gpu_type="L4")])
    rc = cluster_from_nodes(nodes, CPU)
    ids = [d.id for d in rc.cluster.devices]
    assert ids == ["n0/cuda:0", "n0/cuda:1", "n1/cuda:0", "n1/cuda:1", "n1/cuda:2"]
    l4 = cat.gpu_from_name("L4")
    for d in rc.cluster.devices:
        assert d.kind == "gpu" and d.node == d.id.split("/")[0]
        assert d.memory_bytes == l4.memory_bytes and d.flops == l4.flops
    assert rc.cluster.source == "ray"
    # every device knows which Ray node holds it
    assert {rc.slots[i].node_id for i in ids[:2]} == {nodes[0].node_id}
    assert {rc.slots[i].node_id for i in ids[2:]} == {nodes[1].node_id}
    assert all(rc.slots[i].kind == "gpu" for i in ids)
    # GPUs of one node are linked faster than GPUs of two nodes
    same = rc.cluster.link("n1/cuda:0", "n1/cuda:2")
    across = rc.cluster.link("n0/cuda:0", "n1/cuda:0")
    assert same.bandwidth > across.bandwidth
    # "L4" names one catalogue entry: nothing was guessed
    assert not any("smallest" in n for n in rc.cluster.notes)


def test_ambiguous_gpu_type_is_planned_as_its_smallest_slowest_entry_with_a_note():
    h100s = [g for g in cat.GPUS if g.name.upper().startswith("H100")]
    assert len(h100s) > 1, "the catalogue must hold several H100 entries for this test"
    worst = min(h100s, key=lambda g: (g.memory_bytes, g.flops))
    rc = cluster_from_nodes(nodes_from_ray([ray_node(0, gpus=1, gpu_type="H100")]), CPU)
    (d,) = rc.cluster.devices
    assert d.name == worst.name
    assert d.memory_bytes == worst.memory_bytes and d.flops == worst.flops
    assert d.flops == min(g.flops for g in h100s)
    guessed = [n for n in rc.cluster.notes if "H100" in n and worst.name in n]
    assert guessed, rc.cluster.notes


@pytest.mark.parametrize("ray_type", [
    "A100", "V100", "H100", "A100-80G",
])
def test_an_ambiguous_ray_type_is_planned_no_bigger_or_faster_than_any_match(ray_type):
    """Ray's own type names (ray.util.accelerators: A100, A100-80G, V100, H100)."""
    _, matches = cat.gpu_matches(ray_type)
    assert len(matches) > 1
    (d,) = cluster_from_nodes([node(0, gpus=1, gpu_type=ray_type)], CPU).cluster.devices
    assert d.memory_bytes == min(g.memory_bytes for g in matches)
    assert d.flops == min(g.flops for g in matches)
    assert d.mem_bandwidth == min(g.mem_bandwidth for g in matches)


def test_a_specific_accelerator_type_added_by_the_user_wins_over_rays_generic_one():
    raw = ray_node(0, gpus=2, gpu_type="A100")  # what Ray detects on any A100 node
    raw["Resources"]["accelerator_type:A100-80GB"] = 1.0  # ray start --resources '{...: 1}'
    rc = cluster_from_nodes(nodes_from_ray([raw]), CPU)
    a100_80 = cat.gpu_from_name("A100-80GB")
    assert all(d.memory_bytes == a100_80.memory_bytes for d in rc.cluster.devices)


def test_unknown_gpu_type_is_a_config_error():
    with pytest.raises(ConfigError, match="Z9000"):
        cluster_from_nodes(nodes_from_ray([ray_node(0, gpus=1, gpu_type="Z9000")]), CPU)


def test_gpus_without_accelerator_type_are_a_config_error():
    with pytest.raises(ConfigError, match="accelerator_type"):
        cluster_from_nodes(nodes_from_ray([ray_node(0, gpus=2)]), CPU)


def test_cpu_only_nodes_are_left_out_when_the_cluster_has_gpus():
    nodes = nodes_from_ray([ray_node(0, cpus=64), ray_node(1, gpus=1, gpu_type="T4"),
                            ray_node(2, cpus=64)])
    rc = cluster_from_nodes(nodes, CPU)
    assert [d.kind for d in rc.cluster.devices] == ["gpu"]
    assert rc.cluster.devices[0].id == "n1/cuda:0"
    assert rc.slots["n1/cuda:0"].node_id == nodes[1].node_id
    assert any("2 CPU-only" in n for n in rc.cluster.notes), rc.cluster.notes


def test_no_alive_node_is_a_config_error():
    raw = [ray_node(0, alive=False), ray_node(1, alive=False)]
    with pytest.raises(ConfigError, match="no alive node"):
        cluster_from_nodes(nodes_from_ray(raw), CPU, address="10.0.0.1:6379")


# ----------------------------------------------------------------------------- CPU clusters


def test_cpu_only_cluster_gives_one_slot_per_node_by_default():
    nodes = [node(0, cpus=16, memory=64 * GB), node(1, cpus=4, memory=16 * GB)]
    rc = cluster_from_nodes(nodes, CPU)
    devs = rc.cluster.devices
    assert [d.id for d in devs] == ["n0/cpu:0", "n1/cpu:0"]
    assert [d.node for d in devs] == ["n0", "n1"]
    assert all(d.kind == "cpu" for d in devs)
    assert [d.memory_bytes for d in devs] == [64 * GB, 16 * GB]
    assert [rc.slots[d.id].cpus for d in devs] == [16.0, 4.0]
    assert [rc.slots[d.id].node_id for d in devs] == ["id0", "id1"]
    # speed scales with the node's CPUs against the driver's measured CPU (8 cores)
    assert devs[0].flops == pytest.approx(CPU.flops * 16 / CPU.cores)
    assert devs[1].flops == pytest.approx(CPU.flops * 4 / CPU.cores)
    assert any("no GPU" in n for n in rc.cluster.notes)


def test_replicas_deal_slots_splitting_a_nodes_cpus_memory_and_flops():
    nodes = [node(0, cpus=16, memory=64 * GB), node(1, cpus=16, memory=64 * GB)]
    rc = cluster_from_nodes(nodes, CPU, replicas=4)
    devs = rc.cluster.devices
    assert len(devs) == 4
    per_node = {t: [d for d in devs if d.node == t] for t in ("n0", "n1")}
    assert [len(v) for v in per_node.values()] == [2, 2]  # equal nodes share the slots evenly
    for tag, members in per_node.items():
        assert len({d.id for d in members}) == 2 and all(d.id.startswith(f"{tag}/cpu:") for d in members)
        assert sum(rc.slots[d.id].cpus for d in members) == pytest.approx(16)
        assert sum(d.memory_bytes for d in members) <= 64 * GB
        assert all(d.memory_bytes == 32 * GB for d in members)
        assert sum(d.flops for d in members) == pytest.approx(CPU.flops * 16 / CPU.cores)
    one_slot = cluster_from_nodes(nodes, CPU).cluster.devices[0]
    assert devs[0].flops == pytest.approx(one_slot.flops / 2)


def test_replicas_never_put_more_slots_on_a_node_than_it_has_cpus():
    nodes = [node(0, cpus=1), node(1, cpus=16)]
    rc = cluster_from_nodes(nodes, CPU, replicas=6)
    devs = rc.cluster.devices
    assert len(devs) == 6
    assert sum(d.node == "n0" for d in devs) <= 1
    for d in devs:
        assert rc.slots[d.id].cpus >= 1


def test_fewer_cpus_than_replicas_gives_only_as_many_slots_as_cpus():
    rc = cluster_from_nodes([node(0, cpus=1), node(1, cpus=2)], CPU, replicas=5)
    devs = rc.cluster.devices
    assert len(devs) == 3
    assert sum(d.node == "n0" for d in devs) == 1 and sum(d.node == "n1" for d in devs) == 2


def test_cpu_cluster_where_every_node_has_no_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="CPU"):
        cluster_from_nodes([node(0, cpus=0), node(1, cpus=0)], CPU)


# ----------------------------------------------------------------------------- actor placement


def _replica_on(index: int, devices: list[str], layers: int = 4) -> Replica:
    """A replica whose pipeline runs over `devices` in the given order (embeddings on the first)."""
    per = layers // len(devices)
    stages = tuple(Stage(d, k * per, (k + 1) * per, k == 0, k == len(devices) - 1, 1)
                   for k, d in enumerate(devices))
    dmap = {"model.embed_tokens": devices[0]}
    for s in stages:
        for i in range(s.first_layer, s.last_layer):
            dmap[f"model.layers.{i}"] = s.device
    dmap["model.norm"] = devices[-1]
    dmap["lm_head"] = devices[-1]
    return Replica(index, stages, dmap, 10**9)


def test_gpu_replica_gets_local_cuda_names_in_id_order_on_its_node():
    nodes = nodes_from_ray([ray_node(0, gpus=2, gpu_type="L4"), ray_node(1, gpus=4, gpu_type="L4")])
    rc = cluster_from_nodes(nodes, CPU)
    # pipeline order 3 -> 2: local names still follow the ids (Ray hands out cuda:0..k-1)
    rep = _replica_on(1, ["n1/cuda:3", "n1/cuda:2"])
    place = actor_placement(rep, rc)
    assert place.node_id == nodes[1].node_id
    assert place.num_gpus == 2
    assert place.num_cpus == CPUS_PER_GPU_REPLICA
    assert place.device_map is not None
    assert set(place.device_map) == set(rep.device_map)
    for name, dev in rep.device_map.items():
        assert place.device_map[name] == {"n1/cuda:2": "cuda:0", "n1/cuda:3": "cuda:1"}[dev]


def test_local_cuda_names_sort_device_numbers_as_numbers():
    rc = cluster_from_nodes([node(0, gpus=12, gpu_type="L4")], CPU)
    rep = _replica_on(0, ["n0/cuda:10", "n0/cuda:9"])
    place = actor_placement(rep, rc)
    assert place.device_map["model.embed_tokens"] == "cuda:1"  # cuda:10 comes after cuda:9
    assert place.device_map["lm_head"] == "cuda:0"


def test_cpu_replica_has_no_device_map_and_reserves_its_slot_share():
    rc = cluster_from_nodes([node(0, cpus=16), node(1, cpus=6)], CPU, replicas=3)
    for d in rc.cluster.devices:
        place = actor_placement(_replica_on(0, [d.id]), rc)
        assert place.device_map is None
        assert place.num_gpus == 0
        assert place.num_cpus == rc.slots[d.id].cpus
        assert place.node_id == rc.slots[d.id].node_id
        assert place.threads == max(1, int(rc.slots[d.id].cpus))


def test_replica_spanning_two_nodes_is_refused():
    rc = cluster_from_nodes([node(0, gpus=1, gpu_type="L4"), node(1, gpus=1, gpu_type="L4")], CPU)
    with pytest.raises(ValueError, match="spans 2"):
        actor_placement(_replica_on(0, ["n0/cuda:0", "n1/cuda:0"]), rc)


# ----------------------------------------------------------------------------- the planner


# ~26 GB of fp16 weights: more than one L4 (24 GiB x 0.9 usable) holds, less than two.
BIG = llama_like(layers=40, hidden=5120, heads=40, kv_heads=40, inter=13824, name="big-13b")
SMALL = llama_like(layers=4, hidden=512, heads=8, kv_heads=8, inter=1024, vocab=1000, name="small")
QUERIES = [query(i, prompt=50, pred=20) for i in range(6)]


def test_big_model_needs_two_l4s():
    usable = 0.9 * cat.gpu_from_name("L4").memory_bytes
    assert usable < BIG.weight_bytes < 2 * usable


def test_a_model_needing_two_gpus_never_spans_two_nodes():
    rc = cluster_from_nodes([node(0, gpus=1, gpu_type="L4"), node(1, gpus=1, gpu_type="L4")], CPU)
    with pytest.raises(DoesNotFitError):
        deploy(BIG, rc.cluster)
    with pytest.raises(DoesNotFitError):
        make_plan(QUERIES, BIG, rc.cluster)


def test_a_model_needing_two_gpus_fits_on_one_node_with_two():
    rc = cluster_from_nodes([node(0, gpus=2, gpu_type="L4")], CPU)
    plan = make_plan(QUERIES, BIG, rc.cluster)
    (rep,) = plan.deployment.replicas
    assert sorted(rep.devices) == ["n0/cuda:0", "n0/cuda:1"]
    place = actor_placement(rep, rc)
    assert place.num_gpus == 2 and sorted(set(place.device_map.values())) == ["cuda:0", "cuda:1"]


def test_every_planned_replica_of_a_multi_node_cluster_stays_on_one_node():
    rc = cluster_from_nodes([node(0, gpus=3, gpu_type="L4"), node(1, gpus=2, gpu_type="L4")], CPU)
    plan = make_plan(QUERIES, BIG, rc.cluster, objective="he")
    assert plan.deployment.replicas
    for rep in plan.deployment.replicas:
        assert len({rc.cluster.device(d).node for d in rep.devices}) == 1
        actor_placement(rep, rc)  # raises if it spans nodes


def test_replicas_on_a_gpu_cluster_are_exact_and_one_per_node_here():
    rc = cluster_from_nodes([node(0, gpus=1, gpu_type="L4"), node(1, gpus=1, gpu_type="L4")], CPU)
    plan = make_plan(QUERIES, SMALL, rc.cluster, replicas=2)
    assert sorted(r.devices for r in plan.deployment.replicas) == [("n0/cuda:0",), ("n1/cuda:0",)]
    assert {actor_placement(r, rc).node_id for r in plan.deployment.replicas} == {"id0", "id1"}
    with pytest.raises(ConfigError, match="only 2 replica"):
        make_plan(QUERIES, SMALL, rc.cluster, replicas=3)


def test_replicas_on_a_cpu_cluster_are_exact():
    rc = cluster_from_nodes([node(0, cpus=8), node(1, cpus=8)], CPU, replicas=2)
    plan = make_plan(QUERIES, SMALL, rc.cluster, replicas=2)
    assert len(plan.deployment.replicas) == 2
    assert {r.devices for r in plan.deployment.replicas} == {("n0/cpu:0",), ("n1/cpu:0",)}
    for rep in plan.deployment.replicas:
        assert actor_placement(rep, rc).device_map is None
    with pytest.raises(ConfigError, match="only 2 replica"):
        make_plan(QUERIES, SMALL, rc.cluster, replicas=5)


def test_more_replicas_than_cpus_names_how_many_fit():
    rc = cluster_from_nodes([node(0, cpus=1), node(1, cpus=2)], CPU, replicas=5)
    with pytest.raises(ConfigError, match="only 3 replica"):
        make_plan(QUERIES, SMALL, rc.cluster, replicas=5)


# ----------------------------------------------------------------------------- no Ray needed


def test_require_ray_says_how_to_install_when_ray_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # imports of ray fail, as when not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'uellm-cli\[ray\]'"):
        require_ray()


def test_plain_python_parts_do_not_import_ray():
    code = ("import sys\n"
            "import uellm_cli.ray_backend.cluster, uellm_cli.ray_backend.queue\n"
            "import uellm_cli.ray_backend.dispatch, uellm_cli.ray_backend.worker\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------------- slot calibrations


def _cal(device_name: str, threads: int | None) -> Calibration:
    fit = {"source": "runs"} | ({"threads": threads} if threads else {})
    return Calibration(device_name, "hf", "m", (0.01, 1e-5, 1e-9), (0.002, 1e-4, 1e-8), fit_error=fit)


def test_cpu_slots_get_the_drivers_calibration_slowed_by_their_share_of_its_threads():
    rc = cluster_from_nodes([node(0, cpus=8), node(1, cpus=4)], CPU, replicas=4)
    base = _cal(CPU.name, threads=8)
    cals = rc.with_slot_calibrations({CPU.name: base})
    assert cals[CPU.name] is base  # the driver's own stays
    for dev in rc.cluster.devices:
        slot = cals[dev.name]
        factor = 8 / dev.cores
        assert factor >= 2  # 4 slots over 12 CPUs: none has more than 4 of the 8 threads
        assert slot.prefill_s(4, 100) == pytest.approx(base.prefill_s(4, 100) * factor)
        assert slot.decode_s(4, 300) == pytest.approx(base.decode_s(4, 300) * factor)
        assert slot.fit_error["derived_from"] == CPU.name


def test_without_threads_on_record_the_calibration_counts_as_all_cores():
    rc = cluster_from_nodes([node(0, cpus=8)], CPU, replicas=2)  # CPU.cores == 8
    base = _cal(CPU.name, threads=None)
    (dev, _) = rc.cluster.devices
    assert rc.with_slot_calibrations({CPU.name: base})[dev.name].decode_s(1, 10) == pytest.approx(
        base.decode_s(1, 10) * 8 / dev.cores)


def test_a_slot_never_counts_faster_than_the_calibration_and_gpus_are_left_alone():
    rc = cluster_from_nodes([node(0, cpus=16)], CPU)  # one slot of 16 CPUs, measured at 2 threads
    base = _cal(CPU.name, threads=2)
    (dev,) = rc.cluster.devices
    assert rc.with_slot_calibrations({CPU.name: base})[dev.name].decode == base.decode
    gpu = cluster_from_nodes([node(0, gpus=2, gpu_type="L4")], CPU)
    assert gpu.with_slot_calibrations({CPU.name: base}) == {CPU.name: base}
    assert rc.with_slot_calibrations({}) == {}  # nothing measured: the roofline
