"""A Ray cluster as the planner's `Cluster`, and a planned replica as Ray actor options.

Plain Python, no Ray import: it reads what `ray.nodes()` returns (a list of dicts), so it is
tested with hand-written node lists for GPU, mixed and CPU-only clusters.

- GPU nodes: one device per GPU, typed from the node's `accelerator_type:<T>` resource through
  the catalogue (Ray does not report GPU memory: an ambiguous type such as `A100` is planned as
  its smallest catalogue entry, and a note says so). GPUs of one node share PCIe.
- CPU-only nodes are used only when the cluster has no GPU. Each becomes one or more CPU
  "slots" (one per replica to run there), each with its share of the node's CPUs and memory,
  and the speed of the driver's measured CPU scaled by that share.
- Device ids carry the node (`n0/cuda:1`, `n1/cpu:0`) and `Device.node` is the node's tag, so
  the deployer never splits a replica across machines (accelerate hooks cannot span hosts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from uellm_cli.errors import ConfigError
from uellm_cli.plan.types import Replica
from uellm_cli.profile import catalogue as cat
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.devices import Cluster, Device, Link

ACCELERATOR_PREFIX = "accelerator_type:"
NET_LINK = Link("net", 12.5e9, 20e-6, "between Ray nodes (assumed 100 Gb/s)")
PCIE_LINK = Link("pcie", 25e9, 10e-6, "GPUs of one Ray node (assumed PCIe 4)")
# One CPU of a GPU node stays with each GPU replica (tokenising, the Python loop).
CPUS_PER_GPU_REPLICA = 1.0


@dataclass(slots=True, frozen=True)
class RayNode:
    """One alive node, as Ray reports its resources."""

    node_id: str
    address: str
    cpus: float
    gpus: int
    gpu_type: str | None
    memory_bytes: int


@dataclass(slots=True, frozen=True)
class SlotInfo:
    """Where a planned device lives on the Ray cluster, and what an actor must reserve for it."""

    node_id: str
    kind: str  # "gpu" | "cpu"
    cpus: float  # CPUs reserved for this device (CPU slots); GPU devices reserve none themselves


@dataclass(slots=True)
class RayCluster:
    """The planner's view (`cluster`) and, per device id, where it is on Ray (`slots`).
    `cpu`: the driver's CPU that CPU slots were scaled from."""

    cluster: Cluster
    slots: dict[str, SlotInfo]
    cpu: Device | None = None

    def with_slot_calibrations(self, calibrations: dict[str, Calibration]) -> dict[str, Calibration]:
        """`calibrations` plus one per CPU slot, derived from the driver's CPU calibration: its
        times scaled by the threads it was measured with over the slot's CPUs (linear, so on
        the safe side for memory-bound steps; 2 one-CPU replicas were measured 2.5x slower each
        than one two-thread replica here). Without a CPU calibration the roofline applies."""
        out = dict(calibrations)
        base = calibrations.get(self.cpu.name) if self.cpu is not None else None
        if base is None:
            return out
        measured = base.threads or self.cpu.cores or 1
        for dev in self.cluster.devices:
            if dev.kind == "cpu" and dev.name != base.device_name:
                out[dev.name] = base.for_threads(max(1, dev.cores), measured=measured,
                                                 device_name=dev.name)
        return out


@dataclass(slots=True, frozen=True)
class ActorPlacement:
    """What one replica's actor asks Ray for, and its device map in the node's own names."""

    node_id: str
    num_cpus: float
    num_gpus: int
    device_map: dict[str, str] | None  # None: the plain CPU load
    threads: int


def nodes_from_ray(raw: list[dict]) -> list[RayNode]:
    """Alive nodes from `ray.nodes()`, in the order Ray lists them."""
    nodes = []
    for n in raw:
        if not (n.get("Alive") or n.get("alive")):
            continue
        res = n.get("Resources") or {}
        types = sorted(k[len(ACCELERATOR_PREFIX):] for k in res if k.startswith(ACCELERATOR_PREFIX))
        nodes.append(RayNode(
            node_id=str(n.get("NodeID", "")),
            address=str(n.get("NodeManagerAddress") or n.get("NodeName") or "?"),
            cpus=float(res.get("CPU", 0.0)),
            gpus=int(res.get("GPU", 0)),
            gpu_type=_most_specific(types),
            memory_bytes=int(res.get("memory", 0)),
        ))
    return nodes


def cluster_from_nodes(nodes: list[RayNode], cpu: Device, *, replicas: int | None = None,
                       address: str | None = None) -> RayCluster:
    """The cluster to plan for. `cpu` is the driver's measured CPU, the template for CPU
    slots; `replicas` (from --replicas) sets how many CPU slots a CPU-only cluster offers."""
    if not nodes:
        raise ConfigError(f"the Ray cluster at {address or 'the default address'} has no alive node")
    where = f"Ray cluster at {address}" if address else "Ray cluster"
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    devices: list[Device] = []
    slots: dict[str, SlotInfo] = {}
    notes: list[str] = []
    links: dict[tuple[str, str], Link] = {}
    if gpu_nodes:
        cpu_only = len(nodes) - len(gpu_nodes)
        if cpu_only:
            notes.append(f"{cpu_only} CPU-only Ray node(s) left out: the cluster has GPUs")
        for tag, node in _tagged(nodes):
            if node.gpus == 0:
                continue
            spec, note = _gpu_spec(node)
            if note:
                notes.append(note)
            ids = [f"{tag}/cuda:{k}" for k in range(node.gpus)]
            for k, dev_id in enumerate(ids):
                devices.append(Device(dev_id, spec.name, "gpu", spec.memory_bytes, spec.flops,
                                      spec.mem_bandwidth, node=tag, total_memory_bytes=spec.memory_bytes,
                                      model=node.gpu_type or "", numbers_from="catalogue"))
                slots[dev_id] = SlotInfo(node.node_id, "gpu", 0.0)
                for other in ids[:k]:
                    links[(other, dev_id)] = PCIE_LINK
    else:
        per_node = _cpu_slots(nodes, replicas)
        for (tag, node), count in zip(_tagged(nodes), per_node, strict=True):
            share = node.cpus / count if count else 0.0
            for j in range(count):
                dev_id = f"{tag}/cpu:{j}"
                fraction = share / cpu.cores if cpu.cores else 1.0 / count
                devices.append(replace(
                    cpu, id=dev_id, name=f"{cpu.name} (Ray slot, {share:g} CPUs)", node=tag,
                    memory_bytes=node.memory_bytes // count,
                    total_memory_bytes=node.memory_bytes, flops=cpu.flops * fraction,
                    mem_bandwidth=cpu.mem_bandwidth * min(1.0, fraction), cores=max(1, int(share)),
                    numbers_from="estimated",
                ))
                slots[dev_id] = SlotInfo(node.node_id, "cpu", share)
        if not devices:
            raise ConfigError(f"the {where} has no CPU to run on (every node reports 0 CPUs)")
        notes.append("no GPU in the Ray cluster: CPU replicas, speeds scaled from this machine's CPU")
    total_cpus = sum(n.cpus for n in nodes)
    total_gpus = sum(n.gpus for n in nodes)
    notes.insert(0, f"{where}: {len(nodes)} node(s), {total_cpus:g} CPUs, {total_gpus} GPUs")
    return RayCluster(Cluster(devices, links, NET_LINK, source="ray", notes=notes), slots,
                      cpu=None if gpu_nodes else cpu)


def actor_placement(replica: Replica, ray_cluster: RayCluster) -> ActorPlacement:
    """Ray options for the actor of `replica`: its node, CPUs and GPUs, and its device map with
    the planner's device ids turned into the names the actor sees (Ray hands an actor its GPUs
    as cuda:0..k-1, in the order of their ids; every CPU slot is `cpu`)."""
    infos = [ray_cluster.slots[d] for d in replica.devices]
    nodes = {i.node_id for i in infos}
    if len(nodes) != 1:
        raise ValueError(f"replica {replica.index} spans {len(nodes)} Ray nodes")
    gpu_ids = sorted({d for d in replica.devices if ray_cluster.slots[d].kind == "gpu"},
                     key=_device_number)
    local = {d: f"cuda:{k}" for k, d in enumerate(gpu_ids)}
    device_map = {name: local.get(dev, "cpu") for name, dev in replica.device_map.items()}
    cpu_share = sum({d: ray_cluster.slots[d].cpus for d in replica.devices}.values())
    num_cpus = cpu_share if not gpu_ids else CPUS_PER_GPU_REPLICA
    return ActorPlacement(
        node_id=nodes.pop(), num_cpus=num_cpus, num_gpus=len(gpu_ids),
        device_map=None if set(device_map.values()) <= {"cpu"} else device_map,
        threads=max(1, int(num_cpus)),
    )


def _most_specific(types: list[str]) -> str | None:
    """Ray adds its own generic type (`A100`); one the user added (`A100-80GB`) says more: a
    type the catalogue knows exactly wins, else the longest name."""
    if not types:
        return None
    exact = [t for t in types if cat.gpu_matches(t)[0]]
    return max(exact or types, key=lambda t: (len(t), t))


def _tagged(nodes: list[RayNode]) -> list[tuple[str, RayNode]]:
    return [(f"n{i}", n) for i, n in enumerate(nodes)]


def _device_number(device_id: str) -> int:
    return int(device_id.rsplit(":", 1)[1])


def _cpu_slots(nodes: list[RayNode], replicas: int | None) -> list[int]:
    """CPU slots per node: one per node by default; with `replicas`, that many in all, dealt
    out one at a time to the node with the most CPUs per slot (never more slots than CPUs)."""
    usable = [max(0, int(n.cpus)) for n in nodes]
    if replicas is None:
        return [1 if c else 0 for c in usable]
    counts = [0] * len(nodes)
    for _ in range(replicas):
        room = [(usable[i] / (counts[i] + 1), -i) for i in range(len(nodes)) if counts[i] < usable[i]]
        if not room:
            break  # fewer CPUs than replicas: the planner reports how many fit
        best = -max(room)[1]
        counts[best] += 1
    return counts


def _gpu_spec(node: RayNode) -> tuple[cat.GpuSpec, str | None]:
    """The catalogue entry for a node's GPUs, and a note when it had to be guessed."""
    if node.gpu_type is None:
        raise ConfigError(
            f"Ray node {node.address} has {node.gpus} GPU(s) but no accelerator_type resource",
            hint="start it with `ray start --resources '{\"accelerator_type:A100-80GB\": 1}'` "
                 "or a GPU type the catalogue knows",
        )
    exact, matches = cat.gpu_matches(node.gpu_type)
    if exact:
        return exact[0], None
    if not matches:
        return cat.gpu_from_name(node.gpu_type), None  # raises the catalogue's own message
    smallest = min(matches, key=lambda g: (g.memory_bytes, g.flops, g.mem_bandwidth, g.name))
    if len(matches) == 1:
        return smallest, None
    return smallest, (f"Ray reports GPU type {node.gpu_type} on {node.address} without its memory: "
                      f"planned as {smallest.name}, the smallest and slowest it can be")
