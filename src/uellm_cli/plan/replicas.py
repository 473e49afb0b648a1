"""Replicas from placements: contiguous stages of layers, the accelerate device_map, and the
memory each replica leaves for KV. Shared by HELR (plan/deployer.py) and accelerate's own maps
(engine/accelerate_maps.py), so every deployment is described, and judged, alike."""

from __future__ import annotations

from collections.abc import Sequence

from uellm_cli.plan.types import Replica, Stage
from uellm_cli.profile.devices import Cluster
from uellm_cli.profile.model_profile import ModelProfile

MEM_FRACTION = 0.9  # usable share of a device's memory (CUDA context, allocator fragmentation)
INF = float("inf")


def usable_bytes(memory_bytes: int, mem_fraction: float = MEM_FRACTION) -> int:
    return int(memory_bytes * mem_fraction)


def make_stages(model: ModelProfile, devices: Sequence[str | tuple[str, ...]], layers: Sequence[int],
                kv_reserve_bytes: int = 0) -> tuple[Stage, ...]:
    """Contiguous blocks in order; embeddings on the first, norm/head on the last. A device
    given as a tuple of ids is a tensor-parallel group: the stage is split over all of them."""
    stages = []
    first = 0
    n = len(devices)
    kv_per_layer = kv_reserve_bytes / max(1, model.num_layers)
    for i, (dev, k) in enumerate(zip(devices, layers, strict=True)):
        emb, head = i == 0, i == n - 1
        w = k * model.layer_bytes + (model.embed_bytes if emb else 0) + (model.head_bytes if head else 0)
        group = tuple(dev) if isinstance(dev, tuple) and len(dev) > 1 else ()
        lead = dev[0] if isinstance(dev, tuple) else dev
        stages.append(Stage(lead, first, first + k, emb, head, int(w), int(k * kv_per_layer), group))
        first += k
    return tuple(stages)


def tied_head_modules(model: ModelProfile) -> tuple[str, ...]:
    """The head modules that carry the (tied) output projection: they live with the embeddings."""
    names = tuple(m for m in model.head_modules if m.rsplit(".", 1)[-1] in ("lm_head", "output_layer", "output"))
    return names or model.head_modules[-1:]


def device_map_for(model: ModelProfile, stages: Sequence[Stage]) -> dict[str, str]:
    """Accelerate device_map: every embed/head module and every decoder layer exactly once."""
    dmap: dict[str, str] = {}
    first, last = stages[0].device, stages[-1].device
    for name in model.embed_modules:
        dmap[name] = first
    for s in stages:
        for i in range(s.first_layer, s.last_layer):
            dmap[f"{model.layers_prefix}.{i}"] = s.device
    tied = set(tied_head_modules(model)) if model.tied_embeddings else set()
    for name in model.head_modules:
        dmap[name] = first if name in tied else last
    return dmap


def replica_kv_budget(model: ModelProfile, cluster: Cluster, stages: Sequence[Stage],
                      mem_fraction: float = MEM_FRACTION) -> int:
    """Memory left for KV + activations, scaled to the whole model, on the tightest stage."""
    budget = INF
    for s in stages:
        # a tensor-parallel stage: each device holds 1/tp of the weights and of the KV
        smallest = min(cluster.device(d).memory_bytes for d in s.devices)
        free = (usable_bytes(smallest, mem_fraction) - s.weight_bytes / s.tp) * s.tp
        if s.num_layers == 0:  # an embeddings/head-only stage holds no KV
            budget = 0 if free < 0 else budget
            continue
        budget = min(budget, free * model.num_layers / s.num_layers)
    return max(0, int(budget)) if budget != INF else 0


def make_replica(index: int, model: ModelProfile, cluster: Cluster,
                 devices: Sequence[str | tuple[str, ...]], layers: Sequence[int],
                 kv_reserve_bytes: int = 0, mem_fraction: float = MEM_FRACTION) -> Replica:
    """A replica over `devices` (one per stage; a tuple is a tensor-parallel group) with
    `layers` decoder layers on each."""
    stages = make_stages(model, devices, layers, kv_reserve_bytes)
    return Replica(index, stages, device_map_for(model, stages),
                   replica_kv_budget(model, cluster, stages, mem_fraction))


def stages_from_device_map(model: ModelProfile, cluster: Cluster, device_map: dict[str, str],
                           kv_reserve_bytes: int = 0) -> tuple[Stage, ...]:
    """Stages (runs of consecutive layers on one device) of any accelerate-style map.

    Keys may be coarser than layers ("model" or "" for everything): a module takes the device
    of its longest matching key. When the embeddings or the head sit on a device of their own,
    they become a zero-layer stage, so the cost model charges their hop and their memory."""
    def where(name: str) -> str | None:
        best, dev = -1, None
        for k, v in device_map.items():
            if (k == "" or name == k or name.startswith(k + ".")) and len(k) > best:
                best, dev = len(k), v
        return dev

    L = model.num_layers
    per_layer = [where(f"{model.layers_prefix}.{i}") for i in range(L)]
    if any(d is None for d in per_layer):
        raise ValueError("device map does not cover every layer")
    devices, layers = [], []
    for d in per_layer:
        if devices and devices[-1] == d:
            layers[-1] += 1
        else:
            devices.append(d)
            layers.append(1)
    embed_dev = where(model.embed_modules[0]) if model.embed_modules else devices[0]
    head_name = (tied_head_modules(model) or model.head_modules[-1:]) if model.head_modules else ()
    head_dev = where(head_name[0]) if head_name else devices[-1]
    kv_per_layer = kv_reserve_bytes / max(1, L)
    stages: list[Stage] = []
    if embed_dev not in (None, devices[0]):
        stages.append(Stage(embed_dev, 0, 0, True, False, model.embed_bytes))
    first = 0
    for i, (dev, k) in enumerate(zip(devices, layers, strict=True)):
        emb = not stages and i == 0
        head = i == len(devices) - 1 and head_dev in (None, dev)
        w = k * model.layer_bytes + (model.embed_bytes if emb else 0) + (model.head_bytes if head else 0)
        stages.append(Stage(dev, first, first + k, emb, head, int(w), int(k * kv_per_layer)))
        first += k
    if not stages[-1].has_head:
        stages.append(Stage(head_dev, L, L, False, True, model.head_bytes))
    return tuple(stages)
